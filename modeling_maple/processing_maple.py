"""MAPLE processor: turns texts and images into the inputs of `MapleModel`."""

from __future__ import annotations

import os
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from transformers import AutoImageProcessor, AutoTokenizer
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
        max_text_length (`int`, *optional*): truncate texts (not image prompts) to this many tokens.
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        backbone: str = "mllm",
        image_prompt: str | None = None,
        text_prompt: str | None = None,
        max_text_length: int | None = None,
        **kwargs,
    ):
        if backbone not in ("mllm", "dual_encoder"):
            raise ValueError(f"Unknown backbone {backbone!r}: expected 'mllm' or 'dual_encoder'.")
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
        prompts = [self.text_prompt.format(text=text) for text in texts]
        truncate = self.max_text_length is not None
        encoded = self.tokenizer(
            prompts, padding=True, truncation=truncate, max_length=self.max_text_length, return_tensors="pt"
        )
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def _images(self, images: Any) -> dict[str, torch.Tensor]:
        images = [images] if isinstance(images, (Image.Image, str, os.PathLike)) else list(images)
        if not images:
            raise ValueError("`images` is an empty list.")
        images = [load_image(image, index) for index, image in enumerate(images)]
        pixel_inputs = self.image_processor(images=images, return_tensors="pt")
        if self.backbone == "dual_encoder":
            return {"pixel_values": pixel_inputs["pixel_values"]}
        grid_thw = pixel_inputs["image_grid_thw"]
        tokens_per_image = grid_thw.prod(dim=-1) // (self.image_processor.merge_size**2)
        prompts = [
            self.image_prompt.format(image=VISION_START + IMAGE_PAD * int(count) + VISION_END)
            for count in tokens_per_image
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
        return cls(image_processor=image_processor, tokenizer=tokenizer, backbone=backbone, **kwargs)


__all__ = ["MapleProcessor"]
