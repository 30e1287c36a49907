"""Judge throughput: prefix (KV-cache) reuse against per-pair scoring, side by side in one run.

The shape follows the paper's img2txt scoring: each anchor image (here 128x128 pixels -> 256 image
tokens after the 2x2 patch merge) is scored against 8 candidate captions of about 16 tokens. The
judge is a tiny random Qwen2-VL (`dataset_builders.testing.tiny_judge`) unless `--model` names a
real one. Both paths score the same pairs; the script checks that they agree within 1e-4.

`--shard` measures instead what the builder asks of the judge per shard: both candidate lists (img2txt: each
anchor against its `--candidates` texts, the first its own caption; txt2img: each anchor caption against the anchor
and `--negatives` hard-negative images), as the builder did before (`score` for img2txt, then `score_images`, one
full prompt per pair) and as it does now (`scoring.score_both_directions`: one `score` call, each image asked once
with every text it is paired with, each pair once). The hard negatives are other anchors of the shard (the common
case: neighbours in the same shard, one image prefix serving its own texts and the captions of every anchor listing
it), or with `--negatives-outside` images that are no anchor (each asked for one caption: the least sharing).

    OMP_NUM_THREADS=1 python benchmarks/bench_judge.py            # CPU, tiny judge
    OMP_NUM_THREADS=1 python benchmarks/bench_judge.py --shard --anchors 16 --candidates 6
    python benchmarks/bench_judge.py --device cuda --model Qwen/Qwen2-VL-2B-Instruct
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from dataset_builders.scoring import score_both_directions  # noqa: E402
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


def setting(judge: MLLMJudge, device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    """The report's first lines: what ran, where."""
    return {"judge": judge.name, "device": str(device), "dtype": args.dtype, "torch_threads": torch.get_num_threads(),
            "anchors": args.anchors}


def time_interleaved(runs: dict[str, Callable[[], Any]], repeats: int, device: torch.device) -> tuple[dict, dict]:
    """Runs each of `runs` `repeats` times, interleaved; returns their seconds per run and their last results, by
    name."""
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    results: dict[str, Any] = {}
    for _ in range(repeats):
        for name, run in runs.items():
            synchronise(device)
            started = time.perf_counter()
            results[name] = run()
            synchronise(device)
            seconds[name].append(time.perf_counter() - started)
    return seconds, results


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
    parser.add_argument("--shard", action="store_true", help="measure a builder shard's scoring, before and after (see above)")
    parser.add_argument("--negatives", type=int, default=3, help="--shard: hard-negative images per anchor (K)")
    parser.add_argument("--negatives-outside", action="store_true", help="--shard: hard negatives are no anchors of the shard")
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

    if args.shard:
        return shard_benchmark(args, judge, images, texts, device, prefix_tokens)

    judge.score(images[:1], texts[:1], reuse_prefix=True)  # warm-up both paths
    judge.score(images[:1], texts[:1], reuse_prefix=False)
    seconds, results = time_interleaved(
        {"reuse_prefix": lambda: judge.score(images, texts, reuse_prefix=True),
         "per_pair": lambda: judge.score(images, texts, reuse_prefix=False)},
        args.repeats, device,
    )
    pairs = args.anchors * args.candidates
    max_difference = max(float((a - b).abs().max()) for a, b in zip(results["reuse_prefix"], results["per_pair"]))
    throughput = {path: pairs / min(times) for path, times in seconds.items()}
    report = {
        **setting(judge, device, args),
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


def shard_benchmark(args, judge, images, texts, device, prefix_tokens: int) -> None:
    """A shard's img2txt and txt2img, the builder's former way (`score` + per-pair `score_images`) against
    `score_both_directions`, interleaved, fastest of `--repeats` each."""
    generator = torch.Generator().manual_seed(1)
    by_key = dict(enumerate(images))
    candidate_keys = []
    for anchor in range(args.anchors):
        if args.negatives_outside:
            extra, _ = make_inputs(args.negatives, 0, args.image_size, 0, seed=1000 + anchor)
            keys = list(range(len(by_key), len(by_key) + args.negatives))
            by_key.update(zip(keys, extra))
        else:
            keys = [other for other in torch.randperm(args.anchors, generator=generator).tolist() if other != anchor][: args.negatives]
        candidate_keys.append([anchor] + keys)
    captions = [candidates[0] for candidates in texts]
    candidate_images = [[by_key[key] for key in keys] for keys in candidate_keys]

    def before():
        return judge.score(images, texts), judge.score_images(captions, candidate_images)

    def after():
        return score_both_directions(judge, by_key, list(range(args.anchors)), texts, captions, candidate_keys)

    before(), after()  # warm-up
    seconds, results = time_interleaved({"before": before, "after": after}, args.repeats, device)
    max_difference = max(
        float((a - b).abs().max())
        for direction in (0, 1)
        for a, b in zip(results["before"][direction], results["after"][direction])
    )
    report = {
        **setting(judge, device, args),
        "candidate_texts_per_anchor": args.candidates,
        "candidate_images_per_anchor": 1 + args.negatives,
        "negatives": "outside the shard" if args.negatives_outside else "other anchors of the shard",
        "distinct_images": len(by_key),
        "prefix_tokens": prefix_tokens,
        "pairs_img2txt_plus_txt2img": args.anchors * (args.candidates + 1 + args.negatives),
        "seconds_before": round(min(seconds["before"]), 3),
        "seconds_after": round(min(seconds["after"]), 3),
        "speedup": round(min(seconds["before"]) / min(seconds["after"]), 2),
        "speedup_of_medians": round(statistics.median(seconds["before"]) / statistics.median(seconds["after"]), 2),
        "max_alpha_difference": max_difference,
    }
    print(json.dumps(report, indent=2))
    if max_difference > 1e-4:
        raise SystemExit(f"the two ways disagree by {max_difference:.2e} > 1e-4")


if __name__ == "__main__":
    main()
