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
import os

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    BertConfig,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    PreTrainedConfig,
    PreTrainedTokenizerBase,
    Qwen2Tokenizer,
    Qwen2VLImageProcessorPil,
)
from transformers.tokenization_utils_tokenizers import TokenizersBackend

from .configuration_maple import IDEFICS3_MLLMS, LLAVA_MLLMS, PIXTRAL_MLLMS, MapleConfig
from .modeling_maple import MapleModel
from .processing_maple import MapleProcessor, mllm_image_seq_length, mllm_spatial_merge_size

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
        _CORPUS, vocab_size=400, new_special_tokens=QWEN2_VL_SPECIAL_TOKENS, show_progress=False
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    tokenizer.model_max_length = 128  # the tiny BERT's position limit
    return tokenizer


def tiny_tokenizer() -> PreTrainedTokenizerBase:
    """A byte-level BPE tokenizer (about 300 tokens) with the Qwen2-VL special tokens and a chat template.

    Trained offline on a small corpus, so "Yes", " Yes", "No" and " No" are single tokens."""
    return copy.deepcopy(_trained_tokenizer())


INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<IMG_CONTEXT>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""The `-hf` InternVL checkpoints' chat template, less video: one `<IMG_CONTEXT>` line per image."""

SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}: {{ message['content'] }}"
    "{% else %}{% if message['content'][0]['type'] == 'image' %}:{% else %}: {% endif %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% elif part['type'] == 'image' %}<image>{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)
"""SmolVLM's chat template, less video: `<image>` where each image goes."""

GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<start_of_turn>{{ role }}\n"
    "{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<start_of_image>"
    "{% elif part['type'] == 'text' %}{{ part['text'] | trim }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
"""Gemma 3's chat template, less the system turn: it starts with the BOS, and writes `<start_of_image>` where each
image goes (its processor expands it into the image's soft tokens)."""

PIXTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}[INST]"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}[IMG]"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}[/INST]"
    "{% else %}{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{{ part['text'] }}{% endfor %}{% endif %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
)
"""pixtral-12b's and Mistral-Small-3.1's chat template, less the system prompt: it starts with the BOS, wraps each user
turn in `[INST]...[/INST]` (the answer follows directly: no generation prompt) and writes `[IMG]` where each image goes
(its processor expands it into the image's rows of `[IMG]` tokens)."""

# The image placeholder of each tiny family: the tiny LLaVA and LLaVA-NeXT share the Qwen-VL tokenizer and its pad.
TINY_IMAGE_TOKENS = {
    "qwen2_vl": "<|image_pad|>", "qwen2_5_vl": "<|image_pad|>", "qwen3_vl": "<|image_pad|>",
    "llava": "<|image_pad|>", "llava_next": "<|image_pad|>", "internvl": "<IMG_CONTEXT>", "idefics3": "<image>",
    "smolvlm": "<image>", "gemma3": "<image_soft_token>", "pixtral": "[IMG]", "mistral3": "[IMG]",
}
# llava-v1.6's pinpoints (336 x 672, ... up to 1008 x 336) scaled to the tiny 16-pixel tiles: 2 to 4 tiles.
TINY_LLAVA_NEXT_PINPOINTS = [[16, 32], [32, 16], [32, 32], [48, 16], [16, 48]]


def tiny_internvl_tokenizer() -> PreTrainedTokenizerBase:
    """`tiny_tokenizer()` plus InternVL's image tokens (`<img>`, `</img>`, `<IMG_CONTEXT>`) and chat template."""
    tokenizer = tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<img>", "</img>", "<IMG_CONTEXT>"]})
    tokenizer.chat_template = INTERNVL_CHAT_TEMPLATE
    return tokenizer


def tiny_idefics3_tokenizer() -> PreTrainedTokenizerBase:
    """`tiny_tokenizer()` plus Idefics3/SmolVLM's image tokens (`<image>`, `<fake_token_around_image>`,
    `<global-img>`, `<row_r_col_c>` up to 4 x 4) and SmolVLM's chat template."""
    tokenizer = tiny_tokenizer()
    grid_tags = [f"<row_{row}_col_{col}>" for row in range(1, 5) for col in range(1, 5)]
    special = ["<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>", *grid_tags]
    tokenizer.add_special_tokens({"additional_special_tokens": special})
    tokenizer.chat_template = SMOLVLM_CHAT_TEMPLATE
    return tokenizer


def _tiny_bos_tokenizer(bos: str, eos: str, pad: str, chat_template: str, special: list[str], **named) -> PreTrainedTokenizerBase:
    """`tiny_tokenizer()`'s vocabulary with a BOS added before every text, its `eos` and `pad`, the `special` tokens, the
    `named` special tokens (name: token) and `chat_template`, as Llama-style MLLM tokenizers are."""
    tokenizer = TokenizersBackend(
        tokenizer_object=copy.deepcopy(_trained_tokenizer().backend_tokenizer),
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        add_bos_token=True,
        extra_special_tokens=named,
        chat_template=chat_template,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": special}, replace_extra_special_tokens=False)
    return tokenizer


def tiny_gemma3_tokenizer() -> PreTrainedTokenizerBase:
    """`tiny_tokenizer()`'s vocabulary as Gemma 3's tokenizer uses it: a BOS (`<bos>`) before every text, `<eos>` and
    `<pad>`, the turn tokens, the image tokens named as `Gemma3Processor` reads them (`boi_token` `<start_of_image>`,
    `eoi_token` `<end_of_image>`, `image_token` `<image_soft_token>`) and Gemma 3's chat template."""
    return _tiny_bos_tokenizer(
        "<bos>", "<eos>", "<pad>", GEMMA3_CHAT_TEMPLATE, ["<start_of_turn>", "<end_of_turn>"],
        boi_token="<start_of_image>", eoi_token="<end_of_image>", image_token="<image_soft_token>",
    )


def tiny_pixtral_tokenizer() -> PreTrainedTokenizerBase:
    """`tiny_tokenizer()`'s vocabulary as Pixtral's and Mistral 3's tokenizers use it: a BOS (`<s>`) before every text,
    `</s>` and `<pad>`, `[INST]` and `[/INST]`, the image tokens (`[IMG]`, `[IMG_BREAK]`, `[IMG_END]`) and their chat
    template (`PIXTRAL_CHAT_TEMPLATE`)."""
    special = ["[INST]", "[/INST]", "[IMG]", "[IMG_BREAK]", "[IMG_END]"]
    return _tiny_bos_tokenizer("<s>", "</s>", "<pad>", PIXTRAL_CHAT_TEMPLATE, special)


def tiny_mllm_tokenizer(model_type: str = "qwen2_vl") -> PreTrainedTokenizerBase:
    """The tiny tokenizer of an MLLM family (see `MLLM_FAMILIES`): `tiny_tokenizer()`, with the
    family's image tokens and chat template for InternVL, Idefics3/SmolVLM, Gemma 3, Pixtral and Mistral 3."""
    if model_type == "internvl":
        return tiny_internvl_tokenizer()
    if model_type in IDEFICS3_MLLMS:
        return tiny_idefics3_tokenizer()
    if model_type == "gemma3":
        return tiny_gemma3_tokenizer()
    if model_type in PIXTRAL_MLLMS:
        return tiny_pixtral_tokenizer()
    _check_tiny_family(model_type)
    return tiny_tokenizer()


def tiny_mllm_image_processor(model_type: str = "qwen2_vl", image_size: int = 16):
    """The image processor of a tiny MLLM family: Qwen-VL resizes to about `image_size`^2 pixels;
    LLaVA sees 16x16 images; LLaVA-NeXT a 16x16 base view plus 2 to 4 tiles of 16x16
    (`TINY_LLAVA_NEXT_PINPOINTS`); InternVL tiles into at most 4 tiles of 16x16 plus a thumbnail;
    Idefics3/SmolVLM resize to at most 48 px and split into 16x16 tiles plus a global view; Gemma 3 sees 16x16
    images, without pan-and-scan; Pixtral and Mistral 3 see each image at its own aspect ratio, at most 32 px a side,
    in whole 4-pixel patches (Mistral 3: whole 8-pixel cells of 2x2 merged patches)."""
    from transformers import (
        Gemma3ImageProcessorPil,
        GotOcr2ImageProcessorPil,
        Idefics3ImageProcessorPil,
        LlavaNextImageProcessorPil,
        PixtralImageProcessorPil,
        SmolVLMImageProcessorPil,
    )

    if model_type == "llava":
        return CLIPImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    if model_type == "llava_next":
        return LlavaNextImageProcessorPil(
            size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}, image_grid_pinpoints=TINY_LLAVA_NEXT_PINPOINTS
        )
    if model_type == "internvl":
        return GotOcr2ImageProcessorPil(size={"height": 16, "width": 16}, max_patches=4)
    if model_type == "gemma3":
        return Gemma3ImageProcessorPil(size={"height": 16, "width": 16})
    if model_type in PIXTRAL_MLLMS:
        return PixtralImageProcessorPil(size={"longest_edge": 32}, patch_size=4)
    if model_type in IDEFICS3_MLLMS:
        image_processor_class = Idefics3ImageProcessorPil if model_type == "idefics3" else SmolVLMImageProcessorPil
        return image_processor_class(size={"longest_edge": 48}, max_image_size={"longest_edge": 16})
    _check_tiny_family(model_type)
    return tiny_image_processor(image_size=image_size)


def _check_tiny_family(model_type: str) -> None:
    if model_type not in TINY_IMAGE_TOKENS:
        raise ValueError(f"No tiny MLLM for {model_type!r}: expected one of {', '.join(TINY_IMAGE_TOKENS)}.")


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
    """A tiny MLLM config of a supported family: two text layers of width 32 and a two-layer vision
    tower with patch 4, matching `tiny_mllm_tokenizer(model_type)` and
    `tiny_mllm_image_processor(model_type)`. LLaVA, LLaVA-NeXT: CLIP vision, Qwen2 text; InternVL: Qwen2 text,
    4 tokens per 16x16 tile; Idefics3/SmolVLM: Llama text, 4 tokens per tile; Gemma 3: SigLIP vision, Gemma 3 text
    (a sliding-window layer, then a global one), 4 tokens per image; Pixtral (a `llava` config), Mistral 3: Pixtral
    vision (images up to 32 px a side), Mistral text, a token per patch (Mistral 3: per 2x2 merged patches). Keyword
    overrides go to the top-level config."""
    if model_type == "gemma3":
        return _tiny_gemma3_config(**overrides)
    if model_type in PIXTRAL_MLLMS:
        return _tiny_pixtral_config(model_type, **overrides)
    if model_type not in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl"):
        return _tiny_tiled_mllm_config(model_type, **overrides)
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
    else:  # qwen3_vl
        text_config.update(head_dim=8)
        text_config["rope_parameters"]["mrope_interleaved"] = True
        vision_config.update(
            depth=2, hidden_size=16, intermediate_size=32, out_hidden_size=32,
            num_position_embeddings=16, deepstack_visual_indexes=[0],
        )
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


def _tiny_tiled_mllm_config(model_type: str, **overrides) -> PreTrainedConfig:
    _check_tiny_family(model_type)
    tokenizer = tiny_mllm_tokenizer(model_type)
    vision = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 16, "patch_size": 4}
    text = {
        "model_type": "llama" if model_type in IDEFICS3_MLLMS else "qwen2", "vocab_size": len(tokenizer),
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "pad_token_id": tokenizer.pad_token_id,
    }
    kwargs = {
        "vision_config": {"model_type": "clip_vision_model", **vision} if model_type in LLAVA_MLLMS else vision,
        "text_config": text,
        "image_token_id": tokenizer.convert_tokens_to_ids(TINY_IMAGE_TOKENS[model_type]),
        "tie_word_embeddings": False,
    }
    if model_type in IDEFICS3_MLLMS:
        kwargs["scale_factor"] = 2
    if model_type == "llava_next":
        kwargs["image_grid_pinpoints"] = TINY_LLAVA_NEXT_PINPOINTS
    kwargs.update(overrides)
    return AutoConfig.for_model(model_type, **kwargs)


def _tiny_gemma3_config(**overrides) -> PreTrainedConfig:
    tokenizer = tiny_gemma3_tokenizer()
    text = {
        "vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "query_pre_attn_scalar": 8,
        # Gemma 3 mixes sliding-window and global layers; its 1024-token window is wider than an image prompt, and so
        # is this one than any tiny prompt
        "layer_types": ["sliding_attention", "full_attention"], "sliding_window": 128,
        "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
    }
    vision = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 16, "patch_size": 4}
    kwargs = {
        "text_config": text,
        "vision_config": vision,
        "mm_tokens_per_image": 4,  # the 4x4 patches pooled 2x2, as gemma-3's 64x64 are pooled into 256 tokens
        "image_token_id": tokenizer.image_token_id,
        "boi_token_index": tokenizer.boi_token_id,
        "eoi_token_index": tokenizer.eoi_token_id,
        "tie_word_embeddings": False,
    }
    kwargs.update(overrides)
    return AutoConfig.for_model("gemma3", **kwargs)


def _tiny_pixtral_config(model_type: str, **overrides) -> PreTrainedConfig:
    tokenizer = tiny_pixtral_tokenizer()
    vision = {"model_type": "pixtral", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
              "num_attention_heads": 2, "image_size": 32, "patch_size": 4}
    text = {
        "model_type": "mistral", "vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
        "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
    }
    kwargs = {
        "vision_config": vision,
        "text_config": text,
        "image_token_id": tokenizer.convert_tokens_to_ids("[IMG]"),
        "vision_feature_layer": -1,
        "tie_word_embeddings": False,
    }
    if model_type == "pixtral":  # pixtral-12b: a LLaVA whose every patch is an image token
        kwargs["vision_feature_select_strategy"] = "full"
    kwargs.update(overrides)
    return AutoConfig.for_model("llava" if model_type == "pixtral" else model_type, **kwargs)


def randomise_zero_initialised_weights(model: torch.nn.Module) -> None:
    """Draw, like transformers' other random weights (normal, std 0.02), those it initialises to zeros because a
    checkpoint always overwrites them: Gemma 3's image projection (`mm_input_projection_weight`), without which a
    random tiny Gemma 3 maps every image to zeros and ignores it."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("mm_input_projection_weight"):
                parameter.normal_(0.0, 0.02)


def save_tiny_mllm_backbone(folder: str | os.PathLike, model_type: str = "qwen2_vl", seed: int = 0) -> str:
    """A plain tiny checkpoint of the MLLM family `model_type` saved in `folder` as on the Hub (random weights drawn
    with `seed`, the family's tiny image processor and tokenizer), for `MapleModel.from_backbone` and `load_maple`;
    returns the folder as a string. Qwen2-VL's image processor resizes images to at most 256 pixels."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        AutoModel.from_config(tiny_mllm_config(model_type)).save_pretrained(folder)
    tiny_mllm_image_processor(model_type).save_pretrained(folder)
    tiny_mllm_tokenizer(model_type).save_pretrained(folder)
    return str(folder)


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
        backbone: `"mllm"` (a tiny MLLM used as a dual encoder, bidirectional attention, mean
            pooling) or `"dual_encoder"` (a tiny CLIP vision tower and a tiny BERT).
        seed: seeds the weight initialisation.
        mllm_type: the MLLM family for `backbone="mllm"`, one of `MLLM_FAMILIES` (`"qwen2_vl"`,
            `"qwen2_5_vl"`, `"qwen3_vl"`, `"llava"`, `"llava_next"`, `"internvl"`, `"idefics3"`, `"smolvlm"`, `"gemma3"`,
            `"pixtral"`, `"mistral3"`).
    """
    if backbone == "mllm":
        mllm_config = tiny_mllm_config(mllm_type)
        config = MapleConfig(backbone="mllm", mllm_config=mllm_config, pooling="mean")
        tokenizer = tiny_mllm_tokenizer(mllm_type)
        processor = MapleProcessor(
            image_processor=tiny_mllm_image_processor(mllm_type),
            tokenizer=tokenizer,
            backbone="mllm",
            mllm_type=mllm_type,
            image_token=TINY_IMAGE_TOKENS[mllm_type],
            image_seq_length=mllm_image_seq_length(mllm_config),
            spatial_merge_size=mllm_spatial_merge_size(mllm_config),
        )
    elif backbone == "dual_encoder":
        config = tiny_dual_encoder_config()
        image_processor = CLIPImageProcessorPil(
            size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}
        )
        processor = MapleProcessor(image_processor=image_processor, tokenizer=tiny_tokenizer(), backbone=backbone)
    else:
        raise ValueError(f"Unknown backbone {backbone!r}: expected 'mllm' or 'dual_encoder'.")
    torch.manual_seed(seed)
    model = MapleModel(config).eval()
    randomise_zero_initialised_weights(model)
    return model, processor
