"""MAPLE processor: turns texts and images into the inputs of `MapleModel`."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

# Paper prompts (E5-V style summarisation, MAPLE section 3.1). `{image}` expands to the MLLM's
# vision placeholder tokens, `{text}` to the text itself.
MLLM_IMAGE_PROMPT = "{image} Describe this image in one word:"
MLLM_TEXT_PROMPT = "{text} Describe this text in one word:"
# Qwen2-VL / Qwen2.5-VL / Qwen3-VL vision placeholders.
VISION_START, IMAGE_PAD, VISION_END = "<|vision_start|>", "<|image_pad|>", "<|vision_end|>"


def load_image(image: Any, index: int) -> Image.Image:
    """An RGB PIL image from a PIL image or a file path; `index` names the item in error messages."""
    if isinstance(image, (str, os.PathLike)):
        try:
            with Image.open(image) as opened:
                return opened.convert("RGB")
        except (OSError, UnidentifiedImageError) as error:
            raise ValueError(f"images[{index}]: cannot read image file {os.fspath(image)!r}: {error}") from error
    if isinstance(image, Image.Image):
        try:
            return image.convert("RGB")
        except OSError as error:  # a lazily loaded, truncated file fails here
            raise ValueError(f"images[{index}]: corrupt image data: {error}") from error
    raise ValueError(f"images[{index}] is a {type(image).__name__}; expected a PIL image or an image file path.")


def qwen_vl_image_token_counts(image_grid_thw: torch.Tensor, merge_size: int) -> list[int]:
    """Number of vision tokens of each image in a Qwen2-VL family prompt: its patches `(t, h, w)` from
    `image_grid_thw` (num_images, 3), merged `merge_size` x `merge_size` into one token."""
    return (image_grid_thw.prod(dim=-1) // merge_size**2).tolist()


def fill_image_placeholders(prompt: str, image_texts: Iterable[str], placeholder: str = IMAGE_PAD) -> str:
    """Replace the i-th `placeholder` of `prompt` by `image_texts[i]` (a ValueError if the numbers of
    placeholders and images differ)."""
    pieces = prompt.split(placeholder)
    image_texts = list(image_texts)
    if len(pieces) - 1 != len(image_texts):
        raise ValueError(f"prompt has {len(pieces) - 1} {placeholder} placeholders but {len(image_texts)} images")
    return pieces[0] + "".join(image_text + piece for image_text, piece in zip(image_texts, pieces[1:]))


def expand_image_placeholders(prompt: str, token_counts: Iterable[int], placeholder: str = IMAGE_PAD) -> str:
    """Replace the i-th `placeholder` of `prompt` by `token_counts[i]` copies of it, as the MLLM expects."""
    return fill_image_placeholders(prompt, [placeholder * count for count in token_counts], placeholder)


class MapleProcessor(ProcessorMixin):
    r"""
    Prepares texts and images for [`MapleModel`]: one tokenizer and one image processor.

    For an MLLM backbone, every input is wrapped in a summarisation prompt (`image_prompt`,
    `text_prompt`; the paper's by default) and an image becomes a prompt whose `{image}` slot holds
    the vision placeholder tokens; its prompt tensors are returned as `image_input_ids`,
    `image_attention_mask` and `image_mm_token_type_ids`, so texts and images fit in one batch.
    For a dual encoder, texts are tokenised as they are (`text_prompt` defaults to `"{text}"`).

    Args:
        image_processor: the backbone's image processor.
        tokenizer: the backbone's tokenizer.
        backbone (`str`): `"mllm"` or `"dual_encoder"`, as in [`MapleConfig`].
        image_prompt (`str`, *optional*): template with an `{image}` slot (MLLM only).
        text_prompt (`str`, *optional*): template with a `{text}` slot.
        max_text_length (`int`, *optional*): truncate each text to this many tokens before it is put
            into `text_prompt`, so a long text never cuts off the instruction. Dual encoders
            otherwise truncate to the tokenizer's `model_max_length` (77 for CLIP).
        text_padding (`str`, defaults to `"longest"`): `"longest"` or `"max_length"` (every text
            prompt padded to the same length: `max_text_length` tokens plus the template's and the
            special tokens, or without `max_text_length` the tower's `model_max_length`; SigLIP's
            text tower pools the last position and needs it).
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        backbone: str = "mllm",
        image_prompt: str | None = None,
        text_prompt: str | None = None,
        max_text_length: int | None = None,
        text_padding: str = "longest",
        **kwargs,
    ):
        if backbone not in ("mllm", "dual_encoder"):
            raise ValueError(f"Unknown backbone {backbone!r}: expected 'mllm' or 'dual_encoder'.")
        if text_padding not in ("longest", "max_length"):
            raise ValueError(f"Unknown text_padding {text_padding!r}: expected 'longest' or 'max_length'.")
        if text_padding == "max_length" and backbone == "mllm" and max_text_length is None:
            raise ValueError("text_padding='max_length' with an MLLM needs `max_text_length`.")
        self.text_padding = text_padding
        self.backbone = backbone
        self.image_prompt = image_prompt or (MLLM_IMAGE_PROMPT if backbone == "mllm" else None)
        self.text_prompt = text_prompt or (MLLM_TEXT_PROMPT if backbone == "mllm" else "{text}")
        if self.image_prompt is not None and "{image}" not in self.image_prompt:
            raise ValueError(f"image_prompt must contain '{{image}}', got {self.image_prompt!r}.")
        if "{text}" not in self.text_prompt:
            raise ValueError(f"text_prompt must contain '{{text}}', got {self.text_prompt!r}.")
        self.max_text_length = max_text_length
        super().__init__(image_processor, tokenizer, **kwargs)

    def __call__(self, text: str | list[str] | None = None, images: Any = None, **kwargs) -> BatchFeature:
        """Returns a `BatchFeature` of PyTorch tensors: `input_ids`, `attention_mask` for texts, and
        `pixel_values` (+ `image_grid_thw`, `image_input_ids`, `image_attention_mask`,
        `image_mm_token_type_ids` for an MLLM) for images."""
        if text is None and images is None:
            raise ValueError("MapleProcessor needs `text`, `images` or both.")
        data: dict[str, torch.Tensor] = {}
        if text is not None:
            data.update(self._texts(text))
        if images is not None:
            data.update(self._images(images))
        return BatchFeature(data=data, tensor_type="pt")

    def _texts(self, texts: str | list[str]) -> dict[str, torch.Tensor]:
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise ValueError("`text` is an empty list.")
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"text[{index}] is a {type(text).__name__}; expected a string.")
            if not text.strip():
                raise ValueError(f"text[{index}] is an empty string.")
        if self.max_text_length is not None:
            texts = [self._truncate(text) for text in texts]
        prompts = [self.text_prompt.format(text=text) for text in texts]
        model_limit = self._text_tower_limit()
        encoded = self.tokenizer(prompts, truncation=model_limit is not None, max_length=model_limit)
        length = max(len(ids) for ids in encoded["input_ids"])
        if self.text_padding == "max_length":
            length = max(length, self._max_length_padding(model_limit))
        encoded = self.tokenizer.pad(encoded, padding="max_length", max_length=length, return_tensors="pt")
        inputs = {"input_ids": encoded["input_ids"]}
        # Towers trained without a text mask (SigLIP) have tokenizers that return none; follow them.
        if "attention_mask" in encoded:
            inputs["attention_mask"] = encoded["attention_mask"]
        return inputs

    def _text_tower_limit(self) -> int | None:
        # An MLLM reads long contexts; a dual encoder's text tower has a hard position limit, which its
        # tokenizer records (transformers' sentinel for "unset" is a huge integer).
        limit = self.tokenizer.model_max_length
        return limit if self.backbone == "dual_encoder" and limit < 1_000_000 else None

    def _max_length_padding(self, model_limit: int | None) -> int:
        """Length of every text prompt under `text_padding="max_length"`: the longest prompt a text
        of `max_text_length` tokens makes (the template and the special tokens included), capped by
        the tower's limit; without `max_text_length`, the tower's limit (64 for SigLIP)."""
        if self.max_text_length is None:
            return model_limit
        template_tokens = len(self.tokenizer(self.text_prompt.format(text=""))["input_ids"])
        length = self.max_text_length + template_tokens
        return length if model_limit is None else min(length, model_limit)

    def _truncate(self, text: str) -> str:
        token_ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(token_ids) <= self.max_text_length:
            return text
        return self.tokenizer.decode(token_ids[: self.max_text_length], skip_special_tokens=True)

    def _images(self, images: Any) -> dict[str, torch.Tensor]:
        images = [images] if isinstance(images, (Image.Image, str, os.PathLike)) else list(images)
        if not images:
            raise ValueError("`images` is an empty list.")
        images = [load_image(image, index) for index, image in enumerate(images)]
        pixel_inputs = self.image_processor(images=images, return_tensors="pt")
        if self.backbone == "dual_encoder":
            return {"pixel_values": pixel_inputs["pixel_values"]}
        grid_thw = pixel_inputs["image_grid_thw"]
        image_prompt = self.image_prompt.format(image=VISION_START + IMAGE_PAD + VISION_END)
        prompts = [
            expand_image_placeholders(image_prompt, [count])
            for count in qwen_vl_image_token_counts(grid_thw, self.image_processor.merge_size)
        ]
        encoded = self.tokenizer(prompts, padding=True, return_tensors="pt")
        image_token_id = self.tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        return {
            "pixel_values": pixel_inputs["pixel_values"],
            "image_grid_thw": grid_thw,
            "image_input_ids": encoded["input_ids"],
            "image_attention_mask": encoded["attention_mask"],
            "image_mm_token_type_ids": (encoded["input_ids"] == image_token_id).to(torch.int32),
        }

    @classmethod
    def from_backbone(
        cls, name_or_path: str, backbone: str = "mllm", text_backbone: str | None = None, **kwargs: Any
    ) -> "MapleProcessor":
        """The processor matching [`MapleModel.from_backbone`] with the same arguments."""
        image_processor = AutoImageProcessor.from_pretrained(name_or_path)
        tokenizer = AutoTokenizer.from_pretrained(text_backbone or name_or_path)
        if text_backbone is None and AutoConfig.from_pretrained(name_or_path).model_type in ("siglip", "siglip2"):
            kwargs.setdefault("text_padding", "max_length")  # SigLIP pools its text at the last position
        return cls(image_processor=image_processor, tokenizer=tokenizer, backbone=backbone, **kwargs)


__all__ = ["MapleProcessor", "expand_image_placeholders", "fill_image_placeholders", "load_image", "qwen_vl_image_token_counts"]
