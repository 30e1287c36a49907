"""Offline judges, captioners, miners and sources for tests, demos and benchmarks.

- `tiny_judge`, `tiny_captioner`: the real `MLLMJudge` / `ContrastiveCaptioner` on a random tiny
  Qwen2-VL (from `modeling_maple.testing`): real code paths, meaningless judgements and captions.
- `ColourJudge`, `ColourCaptioner`, `thumbnail_miner`, `colour_squares`: deterministic stand-ins,
  cheap enough for builder tests that start several processes. The tiny-MLLM helpers import
  transformers only when called, so processes using just the stand-ins start fast.
"""

from __future__ import annotations

import io
import time
from typing import TYPE_CHECKING

import numpy
import PIL.Image
import torch

from .miner import HardNegativeMiner

if TYPE_CHECKING:
    from transformers import InternVLForConditionalGeneration, LlavaForConditionalGeneration, Qwen2VLForConditionalGeneration

    from .captioner import ContrastiveCaptioner
    from .judge import MLLMJudge


def tiny_qwen2_vl(seed: int = 0, **config_overrides) -> Qwen2VLForConditionalGeneration:
    """A random tiny Qwen2-VL, deterministic in `seed`, in eval mode."""
    from transformers import Qwen2VLForConditionalGeneration

    from modeling_maple.testing import tiny_qwen2_vl_config

    torch.manual_seed(seed)
    return Qwen2VLForConditionalGeneration(tiny_qwen2_vl_config(**config_overrides)).eval()


def _tiny_image_text_model(model_type: str, tokenizer, image_token: str, seed: int, *, vision_type: str | None = None, text_type: str, **config):
    """A random image-text-to-text model of `model_type`, deterministic in `seed`, in eval mode: a
    two-layer vision tower on 16x16 images (or tiles) of 4x4 patches and a two-layer text model of
    width 32 over `tokenizer`'s vocabulary, whose `image_token` is the image placeholder."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    vision = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 16, "patch_size": 4}
    text = {
        "model_type": text_type, "vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "pad_token_id": tokenizer.pad_token_id,
    }
    config = AutoConfig.for_model(
        model_type,
        vision_config={"model_type": vision_type, **vision} if vision_type else vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids(image_token),
        tie_word_embeddings=False,
        **config,
    )
    torch.manual_seed(seed)
    return AutoModelForImageTextToText.from_config(config).eval()


def tiny_llava(seed: int = 0) -> LlavaForConditionalGeneration:
    """A random tiny LLaVA (CLIP ViT, Qwen2 text model) sharing `modeling_maple.testing.tiny_tokenizer()`,
    whose <|image_pad|> is its image token."""
    from modeling_maple.testing import tiny_tokenizer

    return _tiny_image_text_model("llava", tiny_tokenizer(), "<|image_pad|>", seed, vision_type="clip_vision_model", text_type="qwen2")


INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<IMG_CONTEXT>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""The `-hf` InternVL checkpoints' chat template, less video: one `<IMG_CONTEXT>` line per image."""


def tiny_internvl_tokenizer():
    """`modeling_maple.testing.tiny_tokenizer()` plus InternVL's image tokens (`<img>`, `</img>`,
    `<IMG_CONTEXT>`) and chat template."""
    from modeling_maple.testing import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<img>", "</img>", "<IMG_CONTEXT>"]})
    tokenizer.chat_template = INTERNVL_CHAT_TEMPLATE
    return tokenizer


def tiny_internvl(seed: int = 0) -> InternVLForConditionalGeneration:
    """A random tiny InternVL (4 tokens per 16x16 tile after the pixel shuffle; Qwen2 text model)
    matching `tiny_internvl_tokenizer()`."""
    return _tiny_image_text_model("internvl", tiny_internvl_tokenizer(), "<IMG_CONTEXT>", seed, text_type="qwen2")


SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}: {{ message['content'] }}"
    "{% else %}{% if message['content'][0]['type'] == 'image' %}:{% else %}: {% endif %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% elif part['type'] == 'image' %}<image>{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)
"""SmolVLM's chat template, less video: `<image>` where each image goes."""


def tiny_idefics3_tokenizer():
    """`modeling_maple.testing.tiny_tokenizer()` plus Idefics3/SmolVLM's image tokens (`<image>`,
    `<fake_token_around_image>`, `<global-img>`, `<row_r_col_c>` up to 4 x 4) and SmolVLM's chat template."""
    from modeling_maple.testing import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    grid_tags = [f"<row_{row}_col_{col}>" for row in range(1, 5) for col in range(1, 5)]
    special = ["<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>", *grid_tags]
    tokenizer.add_special_tokens({"additional_special_tokens": special})
    tokenizer.chat_template = SMOLVLM_CHAT_TEMPLATE
    return tokenizer


def tiny_idefics3(seed: int = 0, *, model_type: str = "smolvlm"):
    """A random tiny SmolVLM (or Idefics3, `model_type="idefics3"`): 4 tokens per 16x16 tile after
    the pixel shuffle, Llama text model; matching `tiny_idefics3_tokenizer()`."""
    return _tiny_image_text_model(model_type, tiny_idefics3_tokenizer(), "<image>", seed, text_type="llama", scale_factor=2)


def _tiny_model_tokenizer_and_image_processor(family: str, seed: int, image_size: int):
    from transformers import CLIPImageProcessorPil, GotOcr2ImageProcessorPil, SmolVLMImageProcessorPil

    from modeling_maple.testing import tiny_image_processor, tiny_tokenizer

    if family == "qwen2_vl":
        return tiny_qwen2_vl(seed), tiny_tokenizer(), tiny_image_processor(image_size=image_size)
    if family == "llava":
        # LLaVA sees fixed 16x16 images whatever `image_size` is.
        processor = CLIPImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
        return tiny_llava(seed), tiny_tokenizer(), processor
    if family == "internvl":
        # Tiles of 16x16, at most 4 per image plus a thumbnail, whatever `image_size` is.
        processor = GotOcr2ImageProcessorPil(size={"height": 16, "width": 16}, max_patches=4)
        return tiny_internvl(seed), tiny_internvl_tokenizer(), processor
    if family in ("idefics3", "smolvlm"):
        # Images resized to at most 48 px, then split into 16x16 tiles (at most 3 x 3) plus a global view.
        processor = SmolVLMImageProcessorPil(size={"longest_edge": 48}, max_image_size={"longest_edge": 16})
        return tiny_idefics3(seed, model_type=family), tiny_idefics3_tokenizer(), processor
    raise ValueError(
        f"unknown tiny model family {family!r}: expected 'qwen2_vl', 'llava', 'internvl', 'idefics3' or 'smolvlm'"
    )


def tiny_judge(seed: int = 0, *, family: str = "qwen2_vl", image_size: int = 32, **judge_kwargs) -> MLLMJudge:
    """An `MLLMJudge` on a random tiny model of `family` ("qwen2_vl", "llava", "internvl", "idefics3"
    or "smolvlm"); Qwen2-VL resizes images to about image_size^2 pixels."""
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

    def score(self, images, texts, *, reuse_prefix: bool = True) -> list[torch.Tensor]:
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
