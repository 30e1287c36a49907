"""Fetching and collating a training batch: images decoded by `datasets` vs left encoded for the collator.

`datasets` decodes every image of a row it hands out: the anchor image, and all of `candidate_images`, the anchor's
own again among them. `DataCollatorForEmbeddingPreference` keeps `num_image_candidates` of them. `RPATrainer` leaves
the image columns encoded (`trainer.collator.with_images_left_encoded`) and the collator decodes the anchor image
once and the candidates it draws. Builds rows of random 384 px JPEGs (16 candidates, as a build with many hard
negatives), then times, side by side and interleaved, fetching `--batch` rows by index and collating them with a
tiny dual-encoder processor (224 px), for `--used` candidates per row and for all of them, the two variants in
alternating order. Checks that both give the same batch, tensor for tensor.

    OMP_NUM_THREADS=1 python benchmarks/bench_collate_images.py
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import CLIPImageProcessorPil  # noqa: E402

from modeling_maple import MapleProcessor  # noqa: E402
from modeling_maple.testing import tiny_tokenizer  # noqa: E402
from trainer.collator import DataCollatorForEmbeddingPreference, with_images_left_encoded  # noqa: E402
from trainer.schema import PREFERENCE_FEATURES  # noqa: E402


def preference_rows(rows: int, candidates: int, size: int, seed: int = 0) -> Dataset:
    """`rows` rows of `candidates` random JPEG images (smooth noise, quality 90) and texts each."""
    rng = np.random.default_rng(seed)

    def jpeg() -> dict:
        pixels = (rng.random((size // 8, size // 8, 3)) * 255).astype("uint8")
        buffer = io.BytesIO()
        Image.fromarray(pixels).resize((size, size), Image.BILINEAR).save(buffer, format="JPEG", quality=90)
        return {"bytes": buffer.getvalue(), "path": None}

    table = []
    for row in range(rows):
        images = [jpeg() for _ in range(candidates)]
        texts = [f"caption {row} candidate {j} with a few words about objects" for j in range(candidates)]
        table.append(dict(id=f"r{row}", image=images[0], caption=texts[0], candidate_images=images, candidate_texts=texts,
                          txt2img_scores=rng.random(candidates).tolist(), img2txt_scores=rng.random(candidates).tolist()))
    return Dataset.from_list(table, features=PREFERENCE_FEATURES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--candidates", type=int, default=16, help="candidate images (and texts) per row")
    parser.add_argument("--used", type=int, default=4, help="num_image_candidates (and num_text_candidates)")
    parser.add_argument("--size", type=int, default=384, help="image side in pixels")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="passes over the rows")
    args = parser.parse_args()
    decoded = preference_rows(args.rows, args.candidates, args.size)
    encoded = with_images_left_encoded(decoded)
    processor = MapleProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}),
        tokenizer=tiny_tokenizer(), backbone="dual_encoder",
    )
    for used in (args.used, None):
        collator = DataCollatorForEmbeddingPreference(processor, num_image_candidates=used, num_text_candidates=args.used)
        variants = (("decoded by datasets", decoded), ("left encoded", encoded))
        seconds: dict[str, list[float]] = {name: [] for name, _ in variants}  # wall clock
        cpu: dict[str, list[float]] = {name: [] for name, _ in variants}  # this process's CPU time: less hit by others
        for repeat in range(args.repeats):
            for start in range(0, args.rows - args.batch + 1, args.batch):
                batches = {}
                for name, dataset in variants[::-1] if (repeat + start // args.batch) % 2 else variants:
                    started, started_cpu = time.perf_counter(), time.process_time()
                    batches[name] = collator([dataset[i] for i in range(start, start + args.batch)])
                    seconds[name].append(time.perf_counter() - started)
                    cpu[name].append(time.process_time() - started_cpu)
                first, second = batches.values()
                assert first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)
        label = f"{used} of {args.candidates}" if used else f"all {args.candidates}"
        print(f"{label} candidate images per row, {args.batch} rows per batch, {len(seconds['left encoded'])} batches "
              "each (identical), fetch + collate:")
        for measure, times in (("wall best", min), ("wall median", statistics.median), ("CPU best", min)):
            values = seconds if measure.startswith("wall") else cpu
            before, after = (times(values[name]) for name, _ in variants)
            print(f"  {measure:11} {before:.3f} s -> {after:.3f} s ({before / after:.2f}x)")


if __name__ == "__main__":
    main()
