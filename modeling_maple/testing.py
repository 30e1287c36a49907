"""Tiny, offline MAPLE models for tests (ours and yours).

Nothing here touches the Hub: configs are tiny, weights are random, and the tokenizer is a byte-level
BPE trained in well under a second on a small built-in corpus. Every builder is deterministic in
its `seed`.

```python
from modeling_maple.testing import build_tiny

model, processor = build_tiny(backbone="mllm", seed=0)  # or backbone="dual_encoder"
embeddings = model.encode(processor, texts=["a red circle"])
```
"""

from __future__ import annotations

import copy
import functools

import torch
from transformers import (
    AutoConfig,
    BertConfig,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    PreTrainedConfig,
    PreTrainedTokenizerBase,
    Qwen2Tokenizer,
    Qwen2VLImageProcessorPil,
)

from .configuration_maple import MapleConfig
from .modeling_maple import MapleModel
from .processing_maple import MapleProcessor

# The special tokens of the Qwen2-VL family, so tiny tokenizers accept the real prompt formats.
QWEN2_VL_SPECIAL_TOKENS = [
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# A minimal Qwen-style chat template: enough for judges and captioners to build their prompts.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS_WORDS = (
    "a an the one two three small large big red green blue yellow purple orange black white circle "
    "square triangle star left right above below of on next to and with image text photo picture "
    "Describe this in word Does align Answer Yes or No yes no The shows a an is are there"
)
_CORPUS = [
    _CORPUS_WORDS,
    'Describe this image in one word: Describe this text in one word:',
    'Does the image align with the text "a red circle left of a blue square"? Answer Yes or No.',
    "Yes No Yes. No. yes no",
] * 4


@functools.lru_cache(maxsize=1)
def _trained_tokenizer() -> PreTrainedTokenizerBase:
    tokenizer = Qwen2Tokenizer().train_new_from_iterator(
        _CORPUS, vocab_size=400, new_special_tokens=QWEN2_VL_SPECIAL_TOKENS
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    tokenizer.model_max_length = 128  # the tiny BERT's position limit
    return tokenizer


def tiny_tokenizer() -> PreTrainedTokenizerBase:
    """A byte-level BPE tokenizer (about 300 tokens) with the Qwen2-VL special tokens and a chat template.

    Trained offline on a small corpus, so "Yes", " Yes", "No" and " No" are single tokens."""
    return copy.deepcopy(_trained_tokenizer())


def tiny_image_processor(image_size: int = 16, patch_size: int = 4) -> Qwen2VLImageProcessorPil:
    """A Qwen2-VL image processor that resizes every image to about `image_size` x `image_size` pixels."""
    factor = patch_size * 2  # patch size x spatial merge size
    return Qwen2VLImageProcessorPil(
        patch_size=patch_size,
        temporal_patch_size=2,
        merge_size=2,
        min_pixels=factor * factor,
        max_pixels=image_size * image_size,
    )


def tiny_mllm_config(model_type: str = "qwen2_vl", **overrides) -> PreTrainedConfig:
    """A tiny MLLM config of the Qwen2-VL family (`"qwen2_vl"`, `"qwen2_5_vl"` or `"qwen3_vl"`): two
    text layers of width 32 and a vision tower with patch 4, matching `tiny_tokenizer()` and
    `tiny_image_processor()`. Keyword overrides go to the top-level config."""
    tokenizer = _trained_tokenizer()
    special = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN2_VL_SPECIAL_TOKENS}
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        # multimodal RoPE: the (temporal, height, width) sections sum to head_dim / 2 = 4
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]},
        # the tokenizer's own special tokens (no BOS), so Trainer's token alignment has nothing to change
        "bos_token_id": None,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision_config = {"depth": 1, "num_heads": 2, "patch_size": 4, "spatial_merge_size": 2, "temporal_patch_size": 2}
    if model_type == "qwen2_vl":
        vision_config.update(embed_dim=16, hidden_size=32, mlp_ratio=2)
    elif model_type == "qwen2_5_vl":
        vision_config.update(
            hidden_size=16, intermediate_size=32, out_hidden_size=32, window_size=16, fullatt_block_indexes=[0]
        )
    elif model_type == "qwen3_vl":
        text_config.update(head_dim=8)
        text_config["rope_parameters"]["mrope_interleaved"] = True
        vision_config.update(
            depth=2, hidden_size=16, intermediate_size=32, out_hidden_size=32,
            num_position_embeddings=16, deepstack_visual_indexes=[0],
        )
    else:
        raise ValueError(f"No tiny config for {model_type!r}: expected 'qwen2_vl', 'qwen2_5_vl' or 'qwen3_vl'.")
    kwargs = {
        "text_config": text_config,
        "vision_config": vision_config,
        "image_token_id": special["<|image_pad|>"],
        "video_token_id": special["<|video_pad|>"],
        "vision_start_token_id": special["<|vision_start|>"],
        "vision_end_token_id": special["<|vision_end|>"],
        "tie_word_embeddings": False,
    }
    kwargs.update(overrides)
    return AutoConfig.for_model(model_type, **kwargs)


def tiny_qwen2_vl_config(**overrides) -> PreTrainedConfig:
    """`tiny_mllm_config("qwen2_vl", **overrides)`: a tiny Qwen2VLConfig."""
    return tiny_mllm_config("qwen2_vl", **overrides)


def tiny_dual_encoder_config(**overrides) -> MapleConfig:
    """A MAPLE dual-encoder config: a two-layer CLIP ViT (16x16 images, patch 4) and a two-layer BERT."""
    tokenizer = _trained_tokenizer()
    vision_config = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=16, patch_size=4
    )
    text_config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    kwargs = {
        "backbone": "dual_encoder",
        "vision_config": vision_config,
        "text_config": text_config,
        "projection_dim": 16,
        "pooling": "mean",
    }
    kwargs.update(overrides)
    return MapleConfig(**kwargs)


def build_tiny(
    backbone: str = "mllm", seed: int = 0, mllm_type: str = "qwen2_vl"
) -> tuple[MapleModel, MapleProcessor]:
    """A tiny random MAPLE embedder and its processor, offline and deterministic in `seed`.

    Args:
        backbone: `"mllm"` (a tiny Qwen2-VL-family model used as a dual encoder, bidirectional
            attention, mean pooling) or `"dual_encoder"` (a tiny CLIP vision tower and a tiny BERT).
        seed: seeds the weight initialisation.
        mllm_type: the MLLM family for `backbone="mllm"`: `"qwen2_vl"`, `"qwen2_5_vl"` or `"qwen3_vl"`.
    """
    if backbone == "mllm":
        config = MapleConfig(backbone="mllm", mllm_config=tiny_mllm_config(mllm_type), pooling="mean")
        image_processor = tiny_image_processor()
    elif backbone == "dual_encoder":
        config = tiny_dual_encoder_config()
        image_processor = CLIPImageProcessorPil(
            size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}
        )
    else:
        raise ValueError(f"Unknown backbone {backbone!r}: expected 'mllm' or 'dual_encoder'.")
    torch.manual_seed(seed)
    model = MapleModel(config).eval()
    processor = MapleProcessor(image_processor=image_processor, tokenizer=tiny_tokenizer(), backbone=backbone)
    return model, processor
