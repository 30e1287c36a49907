"""Model inputs for chat prompts with images, for the Qwen2-VL family, built without AutoProcessor.

Qwen2-VL processors insist on a torchvision video processor; the judge and the captioner need
only the tokenizer, the (PIL) image processor and the chat template, and the judge must see the
token boundary between the image prefix and the text suffix anyway to reuse the prefix's KV cache.
So this module renders the chat template, expands the single image placeholder the template emits
into one token per merged vision patch, and builds the extra tensors the model needs
(`image_grid_thw`, `mm_token_type_ids`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import PIL.Image
import torch

SUPPORTED_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl")

Message = dict[str, object]
"""One chat message: {"role": ..., "content": [{"type": "image"} | {"type": "text", "text": ...}]}."""


@dataclass(frozen=True)
class EncodedImages:
    """Output of the image processor for a batch of images.

    pixel_values: (total_patches, channels * temporal_patch * patch * patch) flattened patches.
    grid_thw: (num_images, 3) patch grid (time, height, width) of each image.
    num_tokens: number of image placeholder tokens each image takes in the prompt.
    """

    pixel_values: torch.Tensor
    grid_thw: torch.Tensor
    num_tokens: list[int]


class QwenVLPromptEncoder:
    """Turns chat messages and images into Qwen2-VL / Qwen2.5-VL model inputs.

    Args:
        tokenizer: the model's tokenizer; must carry a chat template (or pass `chat_template`).
        image_processor: a Qwen2-VL image processor (the PIL class is fine).
        chat_template: overrides the tokenizer's template.
        image_token: the placeholder the template emits once per image.
    """

    def __init__(self, tokenizer, image_processor, *, chat_template: str | None = None, image_token: str = "<|image_pad|>"):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.chat_template = chat_template or tokenizer.chat_template
        if not self.chat_template:
            raise ValueError("the tokenizer has no chat template; pass chat_template=... explicitly")
        self.image_token = image_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        if self.image_token_id is None or self.image_token_id == tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no image placeholder token {image_token!r}")
        self.merge_size = image_processor.merge_size

    def render(self, messages: list[Message], *, add_generation_prompt: bool) -> str:
        """The chat template applied to `messages`, as text with one placeholder per image."""
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.chat_template, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def encode_images(self, images: Sequence[PIL.Image.Image]) -> EncodedImages:
        """Patches and grids of `images`, in order."""
        processed = self.image_processor(images=[image.convert("RGB") for image in images], return_tensors="pt")
        grid_thw = processed["image_grid_thw"]
        num_tokens = (grid_thw.prod(dim=-1) // self.merge_size**2).tolist()
        return EncodedImages(pixel_values=processed["pixel_values"], grid_thw=grid_thw, num_tokens=num_tokens)

    def tokenize(self, text: str, image_token_counts: Sequence[int] = ()) -> list[int]:
        """Token ids of rendered `text`, its k-th image placeholder expanded to image_token_counts[k] tokens."""
        return self.expand_images(self.tokenizer(text, add_special_tokens=False)["input_ids"], image_token_counts)

    def expand_images(self, ids: Sequence[int], image_token_counts: Sequence[int]) -> list[int]:
        """`ids` with its k-th image placeholder repeated image_token_counts[k] times."""
        placeholders = [position for position, token in enumerate(ids) if token == self.image_token_id]
        if len(placeholders) != len(image_token_counts):
            raise ValueError(
                f"prompt has {len(placeholders)} image placeholders but {len(image_token_counts)} images were given"
            )
        expanded: list[int] = []
        previous = 0
        for position, count in zip(placeholders, image_token_counts):
            expanded += list(ids[previous:position]) + [self.image_token_id] * count
            previous = position + 1
        return expanded + list(ids[previous:])

    def pad(self, sequences: Sequence[Sequence[int]], *, padding_side: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask), both (batch, longest), padded on `padding_side`."""
        longest = max(len(sequence) for sequence in sequences)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
        for row, sequence in enumerate(sequences):
            span = slice(0, len(sequence)) if padding_side == "right" else slice(longest - len(sequence), longest)
            input_ids[row, span] = torch.tensor(sequence, dtype=torch.long)
            attention_mask[row, span] = 1
        return input_ids, attention_mask

    def model_inputs(
        self, sequences: Sequence[Sequence[int]], images: EncodedImages, *, padding_side: str
    ) -> dict[str, torch.Tensor]:
        """Everything a Qwen2-VL forward or `generate` needs for a padded batch of prompts whose
        images, in reading order, are `images`."""
        input_ids, attention_mask = self.pad(sequences, padding_side=padding_side)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "pixel_values": images.pixel_values,
            "image_grid_thw": images.grid_thw,
            "mm_token_type_ids": (input_ids == self.image_token_id).int(),
        }


def check_supported(config) -> None:
    """Raise a clear error for a model family the prompt encoder cannot drive."""
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise NotImplementedError(
            f"model type {config.model_type!r} is not supported yet; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
