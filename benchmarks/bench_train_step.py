"""Training-step cost of MAPLE's loss against InfoNCE alone, on the same model and rows, in one run.

Three steps (forward, loss, backward, AdamW update), timed round-robin so machine load hits all alike:

- `infonce`: plain CLIP InfoNCE; only the anchors are embedded (the usual contrastive baseline).
- `infonce_expanded`: the MAPLE batch (anchors + candidates embedded in one forward), InfoNCE with expanded,
  de-duplicated negatives only.
- `rpa_infonce`: the full MAPLE step: the same batch and InfoNCE plus listwise RPA in both directions.

`rpa_infonce / infonce_expanded` is the cost of RPA itself on the same batch (target: at most 1.2x);
`rpa_infonce / infonce` adds the cost of embedding the candidates, which grows with their number.
Peak memory: CUDA's peak allocation on a GPU; on a CPU, each variant runs in a fresh process (the allocator keeps
freed memory) and reports its peak resident memory above what it held before the first step.

    python benchmarks/bench_train_step.py                          # small dual encoder on CPU
    python benchmarks/bench_train_step.py --width 512 --layers 6 --anchors 64 --device cuda

`--backbone qwen2-vl-2b` measures the paper's set-up instead: an embedder of Qwen2-VL-2B's shape (random weights: the
shape, not the values, sets the cost; its 151,936-row vocabulary too), LoRA of rank 32 on the language model (vision
tower frozen), activation checkpointing, bf16 autocast over float32 weights (as `maple train --use_peft true --bf16 true
--activation_checkpointing true` trains), images resized to `--image-size`^2 pixels (the paper's 384 px: 196 image
tokens). It needs a GPU:
    python benchmarks/bench_train_step.py --backbone qwen2-vl-2b --image-size 384 --anchors 96 --device cuda
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import resource
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402
from accelerate.utils import convert_outputs_to_fp32  # noqa: E402
from transformers import BertConfig, CLIPImageProcessorPil, CLIPVisionConfig  # noqa: E402

from modeling_maple import MapleConfig, MapleModel, MapleProcessor  # noqa: E402
from modeling_maple.lora import get_maple_peft_model, maple_lora_config  # noqa: E402
from modeling_maple.testing import TINY_IMAGE_TOKENS, tiny_dual_encoder_config, tiny_mllm_config, tiny_tokenizer  # noqa: E402
from trainer.collator import PREFERENCE_KEYS, DataCollatorForEmbeddingPreference  # noqa: E402
from trainer.losses import bidirectional_rpa_loss, contrastive_loss, maple_loss  # noqa: E402
from trainer.rpa_trainer import _candidate_similarities  # noqa: E402
from trainer.testing import synthetic_preference_dataset  # noqa: E402

VARIANTS = ("infonce", "infonce_expanded", "rpa_infonce")
RPA_WEIGHT = 0.2
# Qwen/Qwen2-VL-2B-Instruct's config.json, less what does not change the cost (token ids, rope base).
QWEN2_VL_2B_TEXT = {"vocab_size": 151936, "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                    "num_attention_heads": 12, "num_key_value_heads": 2}
QWEN2_VL_2B_MROPE_SECTION = [16, 24, 24]  # sums to head_dim / 2 = 64
QWEN2_VL_2B_VISION = {"depth": 32, "embed_dim": 1280, "hidden_size": 1536, "mlp_ratio": 4, "num_heads": 16,
                      "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2}


def build_model(width: int, layers: int, image_size: int, device: str) -> tuple[MapleModel, MapleProcessor]:
    """A randomly initialised CLIP-ViT + BERT dual encoder of the given width and depth."""
    tokenizer = tiny_tokenizer()
    heads = max(1, width // 64)
    config = tiny_dual_encoder_config(
        vision_config=CLIPVisionConfig(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                                       num_attention_heads=heads, image_size=image_size, patch_size=image_size // 8),
        text_config=BertConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=4 * width,
                               num_hidden_layers=layers, num_attention_heads=heads, pad_token_id=tokenizer.pad_token_id),
        projection_dim=width // 2,
    )
    torch.manual_seed(0)
    model = MapleModel(config).to(device).train()
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                            crop_size={"height": image_size, "width": image_size})
    return model, MapleProcessor(image_processor=image_processor, tokenizer=tokenizer, backbone="dual_encoder")


def build_qwen2_vl_2b(image_size: int, device: str) -> tuple[MapleModel, MapleProcessor]:
    """A MAPLE embedder of Qwen2-VL-2B's shape with random weights, made on `device`, and a processor that resizes
    every image to about `image_size`^2 pixels."""
    from transformers import AutoConfig, Qwen2VLImageProcessorPil

    mllm = tiny_mllm_config("qwen2_vl").to_dict()
    mllm["text_config"].pop("layer_types")  # one per layer of the tiny config: derived again from the layer count
    mllm["text_config"].update(QWEN2_VL_2B_TEXT)
    mllm["text_config"]["rope_parameters"]["mrope_section"] = QWEN2_VL_2B_MROPE_SECTION
    mllm["vision_config"].update(QWEN2_VL_2B_VISION)
    mllm_config = AutoConfig.for_model(**mllm)
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs: 2.2 B parameters are slow to initialise on a CPU
        model = MapleModel(MapleConfig(backbone="mllm", mllm_config=mllm_config, pooling="mean")).train()
    factor = QWEN2_VL_2B_VISION["patch_size"] * QWEN2_VL_2B_VISION["spatial_merge_size"]
    pixels = max(factor, round(image_size / factor) * factor) ** 2
    image_processor = Qwen2VLImageProcessorPil(patch_size=QWEN2_VL_2B_VISION["patch_size"], temporal_patch_size=2,
                                               merge_size=2, min_pixels=pixels, max_pixels=pixels)
    processor = MapleProcessor(image_processor=image_processor, tokenizer=tiny_tokenizer(), backbone="mllm",
                               mllm_type="qwen2_vl", image_token=TINY_IMAGE_TOKENS["qwen2_vl"])
    return model, processor


def make_batches(processor, anchors: int, candidates: int, device: str) -> tuple[dict, dict]:
    rows = [_made_distinct(row, index) for index, row in enumerate(synthetic_preference_dataset(anchors, candidates))]
    maple = DataCollatorForEmbeddingPreference(processor=processor)(rows)
    clip = processor(text=[row["caption"] for row in rows], images=[row["image"] for row in rows])
    return {k: v.to(device) for k, v in maple.items()}, {k: v.to(device) for k, v in clip.items()}


def _made_distinct(row: dict, index: int) -> dict:
    """The synthetic dataset reuses 8 scenes, which the collator would embed once each; real batches hold distinct
    images and captions, so mark every candidate (keeping each anchor equal to its candidate 0)."""
    def mark_image(image, position):
        image = image.copy()
        image.putpixel((position % image.width, 0), (index % 256, position, 7))
        return image

    images = [mark_image(image, position) for position, image in enumerate(row["candidate_images"])]
    texts = [f"{text} (row {index}, candidate {position})" for position, text in enumerate(row["candidate_texts"])]
    return {**row, "image": images[0], "caption": texts[0], "candidate_images": images, "candidate_texts": texts}


def loss_of(variant: str, model: MapleModel, maple_batch: dict, clip_batch: dict) -> torch.Tensor:
    """The variant's loss, from the trainer's own functions (`RPATrainer._compute_loss` without its bookkeeping)."""
    # `return_dict=True`, as the trainer passes it: the fields are read by name, whatever `config.return_dict` says
    if variant == "infonce":
        outputs = model(**clip_batch, return_dict=True)
        return contrastive_loss(outputs.image_embeds, outputs.text_embeds, outputs.inverse_temperature)
    outputs = model(**{k: v for k, v in maple_batch.items() if k not in PREFERENCE_KEYS}, return_dict=True)
    texts, images = outputs.text_embeds, outputs.image_embeds
    anchor_texts, anchor_images = texts[maple_batch["anchor_text_index"]], images[maple_batch["anchor_image_index"]]
    text_ids, image_ids = maple_batch["text_ids"], maple_batch["image_ids"]
    contrastive = contrastive_loss(
        anchor_images, anchor_texts, outputs.inverse_temperature, images, texts,
        image_ids=image_ids[maple_batch["anchor_image_index"]], text_ids=text_ids[maple_batch["anchor_text_index"]],
        negative_image_ids=image_ids, negative_text_ids=text_ids,
    )
    if variant == "infonce_expanded":
        return contrastive
    txt2img, img2txt = _candidate_similarities(texts, images, maple_batch)
    rpa = bidirectional_rpa_loss(
        (outputs.beta * txt2img, maple_batch["txt2img_scores"], maple_batch["candidate_image_mask"]),
        (outputs.beta * img2txt, maple_batch["img2txt_scores"], maple_batch["candidate_text_mask"]),
    )
    return maple_loss(rpa, contrastive, RPA_WEIGHT)


def train_step(variant, model, optimizer, maple_batch, clip_batch) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss_of(variant, model, maple_batch, clip_batch).backward()
    optimizer.step()


def setup(args):
    if args.backbone == "qwen2-vl-2b":
        model, processor = build_qwen2_vl_2b(args.image_size, args.device)
    else:
        model, processor = build_model(args.width, args.layers, args.image_size, args.device)
    if args.activation_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if args.lora_rank:
        model = get_maple_peft_model(model, maple_lora_config(model, r=args.lora_rank, lora_alpha=args.lora_rank))
    if args.bf16:  # as accelerate does for `RPATrainer`: the forward under autocast, its outputs (and the losses) float32
        model.forward = convert_outputs_to_fp32(torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16)(model.forward))
    optimizer = torch.optim.AdamW([parameter for parameter in model.parameters() if parameter.requires_grad], lr=1e-5)
    maple_batch, clip_batch = make_batches(processor, args.anchors, args.candidates, args.device)
    return model, optimizer, maple_batch, clip_batch


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_variants(args) -> dict[str, float]:
    """Median seconds per step of each variant, measured round-robin."""
    model, optimizer, maple_batch, clip_batch = setup(args)
    seconds = {variant: [] for variant in VARIANTS}
    for repeat in range(args.warmup + args.repeats):
        for variant in VARIANTS:
            synchronize(args.device)
            start = time.perf_counter()
            train_step(variant, model, optimizer, maple_batch, clip_batch)
            synchronize(args.device)
            if repeat >= args.warmup:
                seconds[variant].append(time.perf_counter() - start)
    return {variant: statistics.median(times) for variant, times in seconds.items()}


class _PeakResidentMemory:
    """Polls the resident set size in a thread (torch releases the GIL in its kernels) and keeps the maximum;
    `ru_maxrss` would not do, it includes every peak since the process started."""

    def __init__(self, interval_s: float = 0.0005):
        self.interval_s, self.peak, self._stop = interval_s, 0, threading.Event()

    @staticmethod
    def current() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * resource.getpagesize()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            time.sleep(self.interval_s)

    def __enter__(self):
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current())


def peak_memory_mib(args, variant: str) -> float:
    """Peak memory of two steps of `variant` above what the model and the batch hold (so it includes the AdamW
    state, the same for every variant)."""
    model, optimizer, maple_batch, clip_batch = setup(args)
    if args.device.startswith("cuda"):
        # The earlier variants' models, kept alive by the cycle through the autocast-wrapped forward (`--bf16`): freed
        # by the collector in the middle of a measured step, they would make it look 8 GiB smaller (qwen2-vl-2b).
        gc.collect()
        torch.cuda.synchronize()
        baseline = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        for _ in range(2):
            train_step(variant, model, optimizer, maple_batch, clip_batch)
        return (torch.cuda.max_memory_allocated() - baseline) / 2**20
    baseline = _PeakResidentMemory.current()
    with _PeakResidentMemory() as memory:
        for _ in range(2):
            train_step(variant, model, optimizer, maple_batch, clip_batch)
    return (memory.peak - baseline) / 2**20


def _peak_memory_in_fresh_process(args, variant, results):
    torch.set_num_threads(args.threads)
    results[variant] = peak_memory_mib(args, variant)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=int, default=128, help="hidden size of both towers")
    parser.add_argument("--layers", type=int, default=2, help="layers of each tower")
    parser.add_argument("--image-size", type=int, default=64, help="image side in pixels (patches of side/8)")
    parser.add_argument("--anchors", type=int, default=16, help="anchors per batch")
    parser.add_argument("--candidates", type=int, default=4, help="candidates per anchor and modality (paper: 1 + K=3)")
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backbone", default="dual_encoder", choices=["dual_encoder", "qwen2-vl-2b"],
                        help="a small CLIP-ViT + BERT dual encoder (--width, --layers) or the paper's 2B MLLM embedder")
    parser.add_argument("--lora-rank", type=int, default=None, help="LoRA rank, alpha alike (default: 32 for "
                        "qwen2-vl-2b, as the paper; none, all weights trained, for dual_encoder); 0 trains all weights")
    parser.add_argument("--activation-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                        help="default: on for qwen2-vl-2b (the paper's), off for dual_encoder")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                        help="bf16 autocast over the forward; default: on for qwen2-vl-2b (the paper's), off for dual_encoder")
    args = parser.parse_args()
    paper_scale = args.backbone == "qwen2-vl-2b"
    args.lora_rank = (32 if paper_scale else 0) if args.lora_rank is None else args.lora_rank
    args.activation_checkpointing = paper_scale if args.activation_checkpointing is None else args.activation_checkpointing
    args.bf16 = paper_scale if args.bf16 is None else args.bf16
    torch.set_num_threads(args.threads)

    step_seconds = time_variants(args)
    if args.device.startswith("cuda"):
        memory = {variant: peak_memory_mib(args, variant) for variant in VARIANTS}
    else:  # the CPU allocator keeps what it freed, so each variant gets a fresh process
        context = multiprocessing.get_context("spawn")
        results = context.Manager().dict()
        for variant in VARIANTS:
            process = context.Process(target=_peak_memory_in_fresh_process, args=(args, variant, results))
            process.start()
            process.join()
        memory = dict(results)
    report = {
        "config": vars(args),
        "step_seconds": step_seconds,
        "peak_step_memory_mib": memory,
        "rpa_overhead_same_batch": step_seconds["rpa_infonce"] / step_seconds["infonce_expanded"],
        "maple_step_vs_clip_step": step_seconds["rpa_infonce"] / step_seconds["infonce"],
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
