"""A small synthetic preference dataset for tests, benchmarks and offline smoke runs of the trainer.

Every image is a coloured square on the left or right of a white 16x16 canvas, captioned "a <colour> square on the
<side>". The "judge" scores a candidate by what it shares with the anchor (colour counts more than side) plus a
little noise, so the ranking it induces is learnable from pixels and words.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from datasets import Dataset
from PIL import Image, ImageDraw

from .schema import PREFERENCE_FEATURES

if TYPE_CHECKING:
    from .rpa_config import RPAConfig

COLOURS = {"red": (220, 30, 30), "green": (30, 190, 30), "blue": (30, 30, 220), "yellow": (230, 210, 20)}
SIDES = ("left", "right")


def draw_scene(colour: str, side: str, size: int = 16) -> Image.Image:
    image = Image.new("RGB", (size, size), "white")
    left = size // 16 if side == "left" else size // 2 + size // 16
    ImageDraw.Draw(image).rectangle([left, size // 4, left + size * 7 // 16, size * 3 // 4], fill=COLOURS[colour])
    return image


def describe_scene(colour: str, side: str) -> str:
    return f"a {colour} square on the {side}"


def smoke_config(output_dir: str, **overrides) -> RPAConfig:
    """An `RPAConfig` for short offline runs on the synthetic dataset (tests, smoke runs): a high learning rate without
    warm-up, lambda 0.5 so both losses move, no saving, no reporting, seed 0. `overrides` replace any field."""
    from .rpa_config import RPAConfig

    settings = dict(
        output_dir=output_dir,
        learning_rate=1e-3,
        warmup_steps=0,
        rpa_weight=0.5,
        save_strategy="no",
        report_to=[],
        seed=0,
    )
    return RPAConfig(**(settings | overrides))


def synthetic_preference_dataset(num_rows: int, num_candidates: int = 4, seed: int = 0) -> Dataset:
    """`num_rows` anchors cycling through the 8 scenes, each with itself plus `num_candidates - 1` other scenes as
    image and text candidates, scored by a noisy judge that prefers the same colour, then the same side."""
    rng = random.Random(seed)
    scenes = [(colour, side) for colour in COLOURS for side in SIDES]

    def judge(anchor: tuple[str, str], candidate: tuple[str, str]) -> float:
        shared = 0.55 * (anchor[0] == candidate[0]) + 0.3 * (anchor[1] == candidate[1])
        return min(1.0, 0.1 + shared + rng.uniform(0.0, 0.05))

    rows = []
    for index in range(num_rows):
        anchor = scenes[index % len(scenes)]
        candidates = [anchor, *rng.sample([scene for scene in scenes if scene != anchor], num_candidates - 1)]
        rows.append(
            {
                "id": f"scene-{index}",
                "image": draw_scene(*anchor),
                "caption": describe_scene(*anchor),
                "candidate_images": [draw_scene(*scene) for scene in candidates],
                "candidate_texts": [describe_scene(*scene) for scene in candidates],
                "txt2img_scores": [judge(anchor, scene) for scene in candidates],
                "img2txt_scores": [judge(anchor, scene) for scene in candidates],
            }
        )
    return Dataset.from_list(rows, features=PREFERENCE_FEATURES)
