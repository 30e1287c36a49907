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
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import statistics
import threading
import time

import torch
from transformers import BertConfig, CLIPImageProcessorPil, CLIPVisionConfig

from modeling_maple import MapleModel, MapleProcessor
from modeling_maple.testing import tiny_dual_encoder_config, tiny_tokenizer
from trainer.collator import PREFERENCE_KEYS, DataCollatorForEmbeddingPreference
from trainer.losses import contrastive_loss, rpa_listwise_loss
from trainer.testing import synthetic_preference_dataset

VARIANTS = ("infonce", "infonce_expanded", "rpa_infonce")
RPA_WEIGHT = 0.2


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
    inverse_temperature = model.logit_scale.exp()
    if variant == "infonce":
        outputs = model(**clip_batch)
        return contrastive_loss(outputs.image_embeds, outputs.text_embeds, inverse_temperature)
    outputs = model(**{k: v for k, v in maple_batch.items() if k not in PREFERENCE_KEYS})
    texts, images = outputs.text_embeds, outputs.image_embeds
    anchor_texts, anchor_images = texts[maple_batch["anchor_text_index"]], images[maple_batch["anchor_image_index"]]
    text_ids, image_ids = maple_batch["text_ids"], maple_batch["image_ids"]
    loss = contrastive_loss(
        anchor_images, anchor_texts, inverse_temperature, images, texts,
        image_ids=image_ids[maple_batch["anchor_image_index"]], text_ids=text_ids[maple_batch["anchor_text_index"]],
        negative_image_ids=image_ids, negative_text_ids=text_ids,
    )
    if variant == "infonce_expanded":
        return loss
    beta = model.preference_logit_scale.exp()
    txt2img = beta * torch.einsum("nd,ncd->nc", anchor_texts, images[maple_batch["candidate_image_index"]])
    img2txt = beta * torch.einsum("nd,ncd->nc", anchor_images, texts[maple_batch["candidate_text_index"]])
    rpa = (rpa_listwise_loss(txt2img, maple_batch["txt2img_scores"], maple_batch["candidate_image_mask"])
           + rpa_listwise_loss(img2txt, maple_batch["img2txt_scores"], maple_batch["candidate_text_mask"])) / 2
    return RPA_WEIGHT * rpa + (1 - RPA_WEIGHT) * loss


def train_step(variant, model, optimizer, maple_batch, clip_batch) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss_of(variant, model, maple_batch, clip_batch).backward()
    optimizer.step()


def setup(args):
    model, processor = build_model(args.width, args.layers, args.image_size, args.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
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
    args = parser.parse_args()
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
