"""Offline judges, captioners, miners and sources for tests, demos and benchmarks.

- `tiny_judge`, `tiny_captioner`: the real `MLLMJudge` / `ContrastiveCaptioner` on a random tiny
  model of any supported family (configs, tokenizers and image processors from
  `modeling_maple.testing`): real code paths, meaningless judgements and captions.
- `ColourJudge`, `ColourCaptioner`, `thumbnail_miner`, `colour_squares`: deterministic stand-ins,
  cheap enough for builder tests that start several processes. The tiny-MLLM helpers import
  transformers only when called, so processes using just the stand-ins start fast.
"""

from __future__ import annotations

import io
import time
from typing import TYPE_CHECKING

import datasets
import numpy
import PIL.Image
import torch

from .miner import HardNegativeMiner

# The columns of an image-caption source, typed (see `colour_square_source`).
SOURCE_FEATURES = datasets.Features(
    {"id": datasets.Value("string"), "image": datasets.Image(), "caption": datasets.Value("string")}
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from .captioner import ContrastiveCaptioner
    from .judge import MLLMJudge


def tiny_image_text_model(family: str = "qwen2_vl", seed: int = 0, **config_overrides) -> PreTrainedModel:
    """A random tiny image-text-to-text model of `family` (`modeling_maple.testing.tiny_mllm_config`, with
    `config_overrides`), deterministic in `seed`, in eval mode; its tokenizer and image processor are
    `tiny_mllm_tokenizer(family)` and `tiny_mllm_image_processor(family)`."""
    from transformers import AutoModelForImageTextToText

    from modeling_maple.testing import randomise_zero_initialised_weights, tiny_mllm_config

    config = tiny_mllm_config(family, **config_overrides)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config).eval()
    randomise_zero_initialised_weights(model)
    return model


def tiny_thinking_tokenizer(*, answer_closes_think_block: bool = True):
    """`modeling_maple.testing.tiny_tokenizer()` with a Qwen3-VL-Thinking-style chat template: the generation prompt
    opens a think block ("<|im_start|>assistant\n<think>\n"), which a finished answer closes empty first ("<think>\n\n
    </think>\n\nYes"), or, with `answer_closes_think_block=False`, does not write (its answer no longer follows the
    generation prompt). A model of the tiny vocabulary needs `resize_token_embeddings(len(tokenizer))`."""
    from modeling_maple.testing import TINY_CHAT_TEMPLATE, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<think>", "</think>"]}, replace_extra_special_tokens=False)
    template = TINY_CHAT_TEMPLATE.replace("<|im_start|>assistant\n{% endif %}", "<|im_start|>assistant\n<think>\n{% endif %}")
    if answer_closes_think_block:
        template = template.replace(
            "<|im_start|>{{ message['role'] }}\n",
            "<|im_start|>{{ message['role'] }}\n{% if message['role'] == 'assistant' %}<think>\n\n</think>\n\n{% endif %}",
        )
    tokenizer.chat_template = template
    return tokenizer


def _tiny_model_tokenizer_and_image_processor(family: str, seed: int, image_size: int):
    from modeling_maple.testing import tiny_mllm_image_processor, tiny_mllm_tokenizer

    tokenizer = tiny_mllm_tokenizer(family)  # checks the family first
    return tiny_image_text_model(family, seed), tokenizer, tiny_mllm_image_processor(family, image_size=image_size)


def tiny_judge(seed: int = 0, *, family: str = "qwen2_vl", image_size: int = 32, **judge_kwargs) -> MLLMJudge:
    """An `MLLMJudge` on a random tiny model of `family` ("qwen2_vl", "llava", "internvl", "idefics3",
    "smolvlm", "gemma3", ...: `tiny_image_text_model`); Qwen2-VL resizes images to about image_size^2 pixels."""
    from .judge import MLLMJudge

    model, tokenizer, image_processor = _tiny_model_tokenizer_and_image_processor(family, seed, image_size)
    return MLLMJudge(model, tokenizer, image_processor, name=f"tiny-judge-{seed}", **judge_kwargs)


def tiny_captioner(seed: int = 0, *, family: str = "qwen2_vl", image_size: int = 32, **captioner_kwargs) -> ContrastiveCaptioner:
    """A `ContrastiveCaptioner` on a random tiny model of `family` (its captions are gibberish)."""
    from .captioner import ContrastiveCaptioner

    model, tokenizer, image_processor = _tiny_model_tokenizer_and_image_processor(family, seed, image_size)
    captioner_kwargs.setdefault("max_new_tokens", 8)
    return ContrastiveCaptioner(model, tokenizer, image_processor, name=f"tiny-captioner-{seed}", **captioner_kwargs)


COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 0.5, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "white": (1.0, 1.0, 1.0),
    "black": (0.0, 0.0, 0.0),
}


def mean_colour(image: PIL.Image.Image) -> torch.Tensor:
    """(3,) mean RGB of `image` in [0, 1]."""
    pixels = torch.from_numpy(numpy.asarray(image.convert("RGB").resize((8, 8)), dtype=numpy.float32))
    return pixels.mean(dim=(0, 1)) / 255.0


def nearest_colour_name(image: PIL.Image.Image) -> str:
    """The name in `COLOURS` closest to the image's mean colour."""
    mean = mean_colour(image)
    return min(COLOURS, key=lambda name: float((torch.tensor(COLOURS[name]) - mean).norm()))


class ColourJudge:
    """A deterministic stand-in judge: alpha = closeness of the image's mean colour to the colour
    words of the text (0.5 for a text without colour words). Implements `PreferenceJudge`.

    Args:
        delay: seconds to sleep per call, to make builds slow enough to interrupt in tests.
    """

    name = "colour-judge"
    prompt = "colour distance"

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls = 0

    def _alpha(self, image: PIL.Image.Image, text: str) -> float:
        named = [torch.tensor(rgb) for word, rgb in COLOURS.items() if word in text.lower().split()]
        if not named:
            return 0.5
        distance = min(float((rgb - mean_colour(image)).norm()) for rgb in named)
        return 1.0 - distance / 3.0**0.5

    def score(self, images, texts) -> list[torch.Tensor]:
        self.calls += 1
        time.sleep(self.delay)
        return [torch.tensor([self._alpha(image, text) for text in candidates]) for image, candidates in zip(images, texts)]

    def score_images(self, texts, images) -> list[torch.Tensor]:
        self.calls += 1
        time.sleep(self.delay)
        return [torch.tensor([self._alpha(image, text) for image in candidates]) for text, candidates in zip(texts, images)]


class ColourCaptioner:
    """A deterministic stand-in captioner naming the colours of both images. Implements
    `CandidateCaptioner`."""

    name = "colour-captioner"

    def caption(self, anchors, negatives) -> list[list[str]]:
        captions = []
        for anchor, negative in zip(anchors, negatives):
            mine, theirs = nearest_colour_name(anchor), nearest_colour_name(negative)
            captions.append([f"a {mine} image, not {theirs}", f"a {theirs} image, not {mine}"])
        return captions


def thumbnail_miner(**miner_kwargs) -> HardNegativeMiner:
    """A `HardNegativeMiner` whose image embedding is the flattened 4x4 RGB thumbnail, centred."""

    def encode_images(images) -> torch.Tensor:
        thumbnails = [numpy.asarray(image.convert("RGB").resize((4, 4)), dtype=numpy.float32) for image in images]
        return torch.from_numpy(numpy.stack(thumbnails)).flatten(1) / 255.0 - 0.5

    miner_kwargs.setdefault("name", "thumbnail-4x4")
    return HardNegativeMiner(encode_images, **miner_kwargs)


def colour_squares(num_images: int, *, seed: int = 0, size: int = 16) -> dict[str, list]:
    """An image-caption source as columns {"id", "image", "caption"}: squares of the `COLOURS`, each
    with a few random pixels so that no two images are identical; images as PNG {"bytes", "path"}."""
    generator = torch.Generator().manual_seed(seed)
    names = list(COLOURS)
    columns: dict[str, list] = {"id": [], "image": [], "caption": []}
    for index in range(num_images):
        name = names[index % len(names)]
        image = PIL.Image.new("RGB", (size, size), tuple(int(255 * value) for value in COLOURS[name]))
        for x, y, grey in torch.randint(0, size, (4, 3), generator=generator).tolist():
            image.putpixel((x, y), (grey * 16,) * 3)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        columns["id"].append(f"square-{index:03d}")
        columns["image"].append({"bytes": buffer.getvalue(), "path": None})
        columns["caption"].append(f"a {name} square")
    return columns


def colour_square_source(num_images: int = 10, **extra_rows: list) -> datasets.Dataset:
    """`colour_squares(num_images)` as a `datasets.Dataset` with typed features (`SOURCE_FEATURES`), plus the rows of
    `extra_rows` ({column: values}, e.g. malformed ones) appended."""
    columns = colour_squares(num_images)
    for column, values in extra_rows.items():
        columns[column] += values
    return datasets.Dataset.from_dict(columns, features=SOURCE_FEATURES)
