"""Tiny, offline judges and captioners for tests, demos and benchmarks.

Built from `modeling_maple.testing`'s tiny Qwen2-VL config and tokenizer: random weights, real
code paths. Their judgements and captions are meaningless, their plumbing is the real one.
"""

from __future__ import annotations

import torch
from transformers import Qwen2VLForConditionalGeneration

from modeling_maple.testing import tiny_image_processor, tiny_qwen2_vl_config, tiny_tokenizer

from .captioner import ContrastiveCaptioner
from .judge import MLLMJudge


def tiny_qwen2_vl(seed: int = 0, **config_overrides) -> Qwen2VLForConditionalGeneration:
    """A random tiny Qwen2-VL, deterministic in `seed`, in eval mode."""
    torch.manual_seed(seed)
    return Qwen2VLForConditionalGeneration(tiny_qwen2_vl_config(**config_overrides)).eval()


def tiny_judge(seed: int = 0, *, image_size: int = 32, **judge_kwargs) -> MLLMJudge:
    """An `MLLMJudge` on a random tiny Qwen2-VL; images are resized to about image_size^2 pixels."""
    return MLLMJudge(
        tiny_qwen2_vl(seed), tiny_tokenizer(), tiny_image_processor(image_size=image_size), name=f"tiny-judge-{seed}", **judge_kwargs
    )


def tiny_captioner(seed: int = 0, *, image_size: int = 32, **captioner_kwargs) -> ContrastiveCaptioner:
    """A `ContrastiveCaptioner` on a random tiny Qwen2-VL (its captions are gibberish)."""
    captioner_kwargs.setdefault("max_new_tokens", 8)
    return ContrastiveCaptioner(
        tiny_qwen2_vl(seed),
        tiny_tokenizer(),
        tiny_image_processor(image_size=image_size),
        name=f"tiny-captioner-{seed}",
        **captioner_kwargs,
    )
