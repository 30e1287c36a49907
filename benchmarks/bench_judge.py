"""Judge throughput: prefix (KV-cache) reuse against per-pair scoring, side by side in one run.

The shape follows the paper's img2txt scoring: each anchor image (here 128x128 pixels -> 256 image
tokens after the 2x2 patch merge) is scored against 8 candidate captions of about 16 tokens. The
judge is a tiny random Qwen2-VL (`dataset_builders.testing.tiny_judge`) unless `--model` names a
real one. Both paths score the same pairs; the script checks that they agree within 1e-4.

    OMP_NUM_THREADS=1 python benchmarks/bench_judge.py            # CPU, tiny judge
    python benchmarks/bench_judge.py --device cuda --model Qwen/Qwen2-VL-2B-Instruct
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from dataset_builders.judge import MLLMJudge  # noqa: E402
from dataset_builders.testing import tiny_judge  # noqa: E402

WORDS = "a the small large red green blue yellow circle square triangle star left right above below of next to and with".split()


def make_inputs(num_anchors: int, num_candidates: int, image_size: int, caption_words: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    images = [
        Image.fromarray(torch.randint(0, 256, (image_size, image_size, 3), generator=generator, dtype=torch.uint8).numpy())
        for _ in range(num_anchors)
    ]
    texts = [
        [" ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (caption_words,), generator=generator).tolist()) for _ in range(num_candidates)]
        for _ in range(num_anchors)
    ]
    return images, texts


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="Hub id or path of a real judge of a supported family (default: tiny random Qwen2-VL judge)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--anchors", type=int, default=8)
    parser.add_argument("--candidates", type=int, default=8, help="candidate texts per anchor (paper pool: 6-8)")
    parser.add_argument("--image-size", type=int, default=128, help="pixels per side; 128 -> 256 image tokens (Qwen-VL judges)")
    parser.add_argument("--caption-words", type=int, default=12, help="words per caption (about 16 tokens)")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs (or suffixes) per forward, both paths")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per path, interleaved; the fastest is reported (as timeit does: on a shared machine slower runs measure the neighbours)")
    args = parser.parse_args()

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    if args.model:
        from transformers import AutoConfig

        # Only Qwen-VL processors take a pixel budget; other families tile images their own way.
        qwen_vl = AutoConfig.from_pretrained(args.model).model_type in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
        pixels = {"min_pixels": args.image_size**2, "max_pixels": args.image_size**2} if qwen_vl else None
        judge = MLLMJudge.from_pretrained(
            args.model, batch_size=args.batch_size,
            loading_kwargs={"device": device, "dtype": dtype, "image_processor_kwargs": pixels},
        )
    else:
        judge = tiny_judge(seed=0, image_size=args.image_size, batch_size=args.batch_size)
        judge.model.to(device=device, dtype=dtype)
    images, texts = make_inputs(args.anchors, args.candidates, args.image_size, args.caption_words, seed=0)
    encoded = judge.prompt_encoder.encode_images(images[:1])
    prefix_tokens = len(judge.prefix_ids(encoded, 0))
    suffix_tokens = statistics.mean(len(ids) for ids in judge.suffix_ids(texts[0]))
    caption_tokens = statistics.mean(len(judge.prompt_encoder.tokenizer(text)["input_ids"]) for text in texts[0])

    judge.score(images[:1], texts[:1], reuse_prefix=True)  # warm-up both paths
    judge.score(images[:1], texts[:1], reuse_prefix=False)
    seconds = {"reuse_prefix": [], "per_pair": []}
    results = {}
    for _ in range(args.repeats):
        for path, reuse in (("reuse_prefix", True), ("per_pair", False)):
            synchronise(device)
            started = time.perf_counter()
            results[path] = judge.score(images, texts, reuse_prefix=reuse)
            synchronise(device)
            seconds[path].append(time.perf_counter() - started)
    pairs = args.anchors * args.candidates
    max_difference = max(float((a - b).abs().max()) for a, b in zip(results["reuse_prefix"], results["per_pair"]))
    throughput = {path: pairs / min(times) for path, times in seconds.items()}
    report = {
        "judge": judge.name,
        "device": str(device),
        "dtype": args.dtype,
        "torch_threads": torch.get_num_threads(),
        "anchors": args.anchors,
        "candidates_per_anchor": args.candidates,
        "prefix_tokens": prefix_tokens,
        "image_tokens": encoded.num_tokens[0],
        "caption_tokens_mean": round(caption_tokens, 1),
        "suffix_tokens_mean": round(suffix_tokens, 1),
        "pairs_per_s_reuse_prefix": round(throughput["reuse_prefix"], 2),
        "pairs_per_s_per_pair": round(throughput["per_pair"], 2),
        "speedup": round(throughput["reuse_prefix"] / throughput["per_pair"], 2),
        "speedup_of_medians": round(statistics.median(seconds["per_pair"]) / statistics.median(seconds["reuse_prefix"]), 2),
        "max_alpha_difference": max_difference,
    }
    print(json.dumps(report, indent=2))
    if max_difference > 1e-4:
        raise SystemExit(f"the two paths disagree by {max_difference:.2e} > 1e-4")


if __name__ == "__main__":
    main()
