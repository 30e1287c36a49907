"""MAPLE embedder configuration (arXiv 2506.06970)."""

import copyreg
import math
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig
from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec

BACKBONES = ("mllm", "dual_encoder")
POOLINGS = {"mllm": ("mean", "last"), "dual_encoder": ("mean", "cls", "pooler")}
# MLLM families whose image prompts the processor builds (`processing_maple.encode_mllm_images`).
# The Qwen-VL family shares one prompt format (dynamic-resolution vision tokens, multimodal RoPE).
QWEN_VL_MLLMS = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
# SmolVLM shares Idefics3's architecture and prompt format (a grid of tagged tiles plus a global view).
IDEFICS3_MLLMS = ("idefics3", "smolvlm")
# LLaVA-1.5 sees each image at one size; LLaVA-NeXT adds a grid of high-resolution tiles ("anyres").
LLAVA_MLLMS = ("llava", "llava_next")
SUPPORTED_MLLMS = (*QWEN_VL_MLLMS, *LLAVA_MLLMS, "internvl", *IDEFICS3_MLLMS, "gemma3", "mistral3")
# Pixtral's vision tower takes each image at its own size: rows of `[IMG]` tokens, each row ended by `[IMG_BREAK]`, the
# last by `[IMG_END]`. "pixtral" is a `llava` config with a Pixtral tower (pixtral-12b); "mistral3" adds a patch merger.
PIXTRAL_MLLMS = ("pixtral", "mistral3")
# The families MAPLE prompts by (`MapleProcessor.mllm_type`, `mllm_family`): the supported configs' model types, and
# "pixtral", a `llava` config whose prompts are Pixtral's.
MLLM_FAMILIES = (*SUPPORTED_MLLMS, "pixtral")
# Families whose model takes, beside a prompt's ids, a mask of its image tokens, and the name it takes it under: Qwen-VL's
# multimodal RoPE gives those tokens 2-D positions; Gemma 3's causal mask lets each image's tokens see one another.
IMAGE_TOKEN_TYPE_INPUTS = {**dict.fromkeys(QWEN_VL_MLLMS, "mm_token_type_ids"), "gemma3": "token_type_ids"}
# Two-tower checkpoints whose towers and projections `MapleModel.from_backbone` reuses as they are.
DUAL_ENCODER_MODEL_TYPES = ("clip", "siglip", "siglip2")
# Vision towers that take images at their own aspect ratio as padded patch sequences (SigLIP2's NaFlex): their image
# processor returns, and their forward needs, `pixel_attention_mask` and `spatial_shapes` beside `pixel_values`.
NAFLEX_VISION_TOWERS = ("siglip2_vision_model",)
# Text towers with causal attention, whose first token sees only itself (SigLIP's attend both ways), whatever their
# config says. Those whose attention modules do not tell it (`is_causal` False or missing): CLIP's and the CLIP-like
# ones build their causal mask themselves (AIMv2's, under SDPA, only for a padded batch), OpenAI GPT's attention applies
# a causal buffer of its own, MPT's takes transformers' causal mask (and fails with `is_causal=False`), Mamba, Mamba2,
# Falcon-Mamba and RWKV are recurrent. Decoders whose modules tell it but that do not honour a config's
# `is_causal=False` under every attention implementation: GPT-Neo applies its causal buffer, StableLM and Nemotron stay
# causal under SDPA, Llama 4 under eager, LongCat-Flash under both. (Checked on tiny models: token 0's state unchanged
# by changing later tokens.) Another decoder whose modules tell it is `MapleModel`'s to refuse.
CAUSAL_TEXT_TOWERS = (
    "clip_text_model",
    "clipseg_text_model",
    "groupvit_text_model",
    "metaclip_2_text_model",
    "owlvit_text_model",
    "owlv2_text_model",
    "xclip_text_model",
    "aimv2_text_model",
    "openai-gpt",
    "mpt",
    "gpt_neo",
    "mamba",
    "mamba2",
    "falcon_mamba",
    "rwkv",
    "stablelm",
    "nemotron",
    "llama4_text",
    "longcat_flash",
)
# Decoders whose attention modules do not tell their causal attention but whose masks honour a config's
# `is_causal=False` (transformers' `create_causal_mask`): causal unless their config says so.
FLAGLESS_DECODER_TEXT_TOWERS = ("bloom", "doge", "git", "gpt_neox_japanese", "xglm")
# Encoders whose config declares `is_decoder` but whose model ignores it, attending both ways: BLIP's text model (whose
# config defaults to True; its forward takes its own `is_decoder=False`), ConvBERT's and TAPAS's.
IS_DECODER_IGNORING_TEXT_TOWERS = ("blip_text_model", "convbert", "tapas")
# The special tokens MapleConfig shares with its text side (`text_side_token_ids`).
SPECIAL_TOKEN_IDS = ("pad_token_id", "bos_token_id", "eos_token_id")


def _field(config: Any, name: str) -> Any:
    """`config`'s `name`, `config` being a config or its `to_dict()` (None where it has none)."""
    return config.get(name) if isinstance(config, Mapping) else getattr(config, name, None)


def mllm_family(mllm_config: PreTrainedConfig | Mapping[str, Any]) -> str:
    """The family whose prompts an MLLM with config `mllm_config` (a config, or its `to_dict()` as a saved checkpoint's
    `mllm_config` holds it) takes, one of `MLLM_FAMILIES`: its `model_type`, but "pixtral" for a `llava` config whose
    vision tower is Pixtral's (`vision_config.model_type == "pixtral"`), which takes images at their own size and lays
    their tokens out in rows, unlike LLaVA-1.5's CLIP or SigLIP tower."""

    model_type = _field(mllm_config, "model_type")
    if model_type == "llava" and _field(_field(mllm_config, "vision_config"), "model_type") == "pixtral":
        return "pixtral"
    return model_type


def text_side_token_ids(maple_config: PreTrainedConfig | Mapping[str, Any]) -> dict[str, int | list[int] | None]:
    """The special token ids (`SPECIAL_TOKEN_IDS`) of the text side of a MapleConfig (or of its `to_dict()`, as a
    checkpoint saves it): its text tower's, or its MLLM's language model's (an MLLM keeps them in its nested
    `text_config`)."""
    backbone = _field(maple_config, "backbone") or "mllm"
    text_side = _field(maple_config, "mllm_config" if backbone == "mllm" else "text_config")
    language_model = _field(text_side, "text_config")
    text_side = language_model if language_model is not None else text_side
    return {name: _field(text_side, name) for name in SPECIAL_TOKEN_IDS}


def config_tells_causal(text_config: PreTrainedConfig) -> bool:
    """Whether a text tower of `text_config` attends causally, as its config alone tells: one of `CAUSAL_TEXT_TOWERS`
    (CLIP-like, recurrent, or a decoder deaf to `is_causal=False`), one of `FLAGLESS_DECODER_TEXT_TOWERS` unless its
    config sets `is_causal=False`, or one whose config sets `causal=True` (XLM's, FlauBERT's), `attn_type="uni"` (XLNet's)
    or `is_decoder=True` (an encoder configured as a decoder: BERT's, RoFormer's, Megatron-BERT's, BigBird's masks read
    it; ALBERT's, and those of `IS_DECODER_IGNORING_TEXT_TOWERS`, ignore it). Another decoder's causal attention is told
    by its attention modules (`MapleModel`)."""
    if text_config.model_type in CAUSAL_TEXT_TOWERS:
        return True
    if text_config.model_type in FLAGLESS_DECODER_TEXT_TOWERS and getattr(text_config, "is_causal", True) is not False:
        return True
    # `is_decoder` is a field of the configs whose models read it, but for a few; set on another (ALBERT's), it is ignored
    declares_is_decoder = text_config.model_type not in IS_DECODER_IGNORING_TEXT_TOWERS and (
        is_dataclass(text_config) and any(field.name == "is_decoder" for field in fields(text_config))
    )
    # XLNet's attention modules take their (bidirectional or causal) mask from the model, which builds it by `attn_type`
    uni_xlnet = text_config.model_type == "xlnet" and text_config.attn_type == "uni"
    return (
        getattr(text_config, "causal", False) is True
        or uni_xlnet
        or (declares_is_decoder and text_config.is_decoder is True)
    )


class CausalClsPoolingError(ValueError):
    """`pooling="cls"` asked of a causal text tower of model type `text_tower_type`: by `MapleConfig` where its config
    tells it (`config_tells_causal`), by `MapleModel` where its attention modules do (a decoder's)."""

    def __init__(self, text_tower_type: str):
        self.text_tower_type = text_tower_type
        super().__init__(
            f"pooling='cls' reads each text's first token, which a causal text tower ({text_tower_type}) lets see only "
            "itself: every text would embed alike. Use 'mean', or 'pooler' for a tower with a pooled output (CLIP's is "
            "its end-of-text token's state)."
        )

    def __reduce__(self) -> tuple:
        # Rebuilt from its message and attributes, without __init__ (which takes the tower's type): BaseException's own
        # would call the class with the message as the tower's type, a message quoting the whole message in a copy or
        # in pickle.loads (multiprocessing, a datasets map with num_proc).
        return copyreg.__newobj__, (type(self), *self.args), self.__dict__


def backbone_of(model_type: str | None) -> str | None:
    """The MAPLE backbone a checkpoint of `model_type` is wrapped as by `MapleModel.from_backbone`:
    "mllm" for a supported MLLM, "dual_encoder" for a CLIP/SigLIP two-tower model, None otherwise
    (a single-modality encoder such as DINOv2 needs `backbone="dual_encoder"` and a text backbone)."""
    if model_type in SUPPORTED_MLLMS:
        return "mllm"
    if model_type in DUAL_ENCODER_MODEL_TYPES:
        return "dual_encoder"
    return None


@strict
class MapleConfig(PreTrainedConfig):
    r"""
    Configuration of a [`MapleModel`]: an image-text embedder trained with MLLM preferences.

    Two backbone families:
    - `"mllm"`: one multimodal LLM (Qwen2-VL, Qwen2.5-VL and Qwen3-VL as in the paper; LLaVA-1.5, LLaVA-NeXT,
      InternVL, Idefics3/SmolVLM, Gemma 3, Pixtral (a LLaVA with a Pixtral tower), Mistral 3) used as a dual encoder;
      images and texts are wrapped in summarisation prompts and each gives one embedding (paper, section 3.1).
    - `"dual_encoder"`: a vision tower and a text tower (CLIP/SigLIP towers, or any transformers
      vision and text encoders such as DINOv2 + BERT) projected into one space.

    mllm_config (`dict` or `PreTrainedConfig`, *optional*):
        Config of the multimodal LLM (backbone `"mllm"`).
    vision_config (`dict` or `PreTrainedConfig`, *optional*):
        Config of the vision tower (backbone `"dual_encoder"`).
    text_config (`dict` or `PreTrainedConfig`, *optional*):
        Config of the text tower (backbone `"dual_encoder"`).
    backbone (`str`, defaults to `"mllm"`):
        `"mllm"` or `"dual_encoder"`.
    pooling (`str`, defaults to `"mean"`):
        How token states become one vector. `"mllm"`: `"mean"` over non-padding tokens (paper) or
        `"last"` non-padding token. `"dual_encoder"`: `"mean"`, `"cls"` (first token) or `"pooler"` (the tower's own
        `pooler_output`, as CLIP and SigLIP do). `"cls"` is refused for a causal text tower, whose first token sees only
        itself: here where its config tells it (`config_tells_causal`): CLIP's and the CLIP-like ones (OWL-ViT, OWLv2,
        MetaCLIP 2, ...), recurrent ones (Mamba, RWKV), OpenAI GPT, MPT, GPT-Neo and StableLM (even with
        `is_causal=False`, which they do not honour under every attention implementation), Bloom (unless
        `is_causal=False`), an XLM or FlauBERT with `causal=True`, an XLNet with `attn_type="uni"`, an encoder with
        `is_decoder=True` (BERT, RoFormer, Megatron-BERT); by `MapleModel` for one whose attention modules are causal,
        a decoder's such as GPT-2 or Qwen2 (unless its config sets `is_causal=False`).
    bidirectional (`bool`, defaults to `True`):
        Replace the MLLM's causal mask with a bidirectional one (paper). Ignored for dual encoders.
    projection_dim (`int`, *optional*):
        Size of the shared embedding space. Required for dual encoders (each tower gets a linear
        projection); for an MLLM, `None` keeps the hidden size and adds no projection.
    normalize (`bool`, defaults to `True`):
        L2-normalise embeddings (inferred from the paper's cosine scoring).
    logit_scale_init_value (`float | int`, defaults to `log(1/0.07)`):
        Initial log inverse temperature of the contrastive (InfoNCE) loss.
    preference_logit_scale_init_value (`float | int`, defaults to `log(1/0.07)`):
        Initial log of RPA's beta, the learnable scale of similarities in the preference loss.
    initializer_range (`float`, defaults to 0.02):
        Standard deviation of the normal initialisation of the projections MAPLE adds (the backbone keeps its own).
    """

    model_type = "maple"
    sub_configs_defaults = {
        "mllm_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2_vl", optional=True),
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_vision_model", optional=True),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="bert", optional=True),
    }

    mllm_config: dict | PreTrainedConfig | None = None
    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    backbone: str = "mllm"
    pooling: str = "mean"
    bidirectional: bool = True
    projection_dim: int | None = None
    normalize: bool = True
    # `| int`, as CLIPConfig's: a whole log scale (`0`, a temperature of 1) is a value too, not a type error
    logit_scale_init_value: float | int = math.log(1 / 0.07)
    preference_logit_scale_init_value: float | int = math.log(1 / 0.07)
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self._check_maple_fields()
        # The embedder shares its special tokens with the backbone's text side, which keeps
        # `Trainer`'s tokenizer/config alignment a no-op.
        for name, token_id in text_side_token_ids(self).items():
            if getattr(self, name, None) is None:
                setattr(self, name, token_id)

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> "MapleConfig | tuple[MapleConfig, dict[str, Any]]":
        """`PreTrainedConfig.from_dict`, whose keyword overrides (`from_pretrained(path, pooling="cls")`) are given to
        the constructor with the saved values where they are MapleConfig's own fields, so the result is the
        constructor's: transformers sets them once the config is built, after `__post_init__` checked the saved values
        (an MLLM read at a pad token under CLS pooling, and loaded without a word) and took the special token ids from
        the saved text side (an MLLM checkpoint's config loaded as a dual encoder,
        `from_pretrained(mllm_path, backbone="dual_encoder", vision_config=..., text_config=..., projection_dim=...)`,
        kept the MLLM's). Saved ids that are the saved text side's are taken again from the text side as overridden;
        ids set otherwise stay, like any saved value, unless given too. A sub-config override given as a dict updates
        the saved sub-config's fields, as transformers' composite configs (CLIPConfig) take it, or becomes a config of
        its `model_type` (else the spec's default) where the saved config has none."""
        config_dict = dict(config_dict)
        for name, token_id in text_side_token_ids(config_dict).items():
            if name in config_dict and config_dict[name] == token_id:
                del config_dict[name]
        maple_fields = {field.name for field in fields(cls)} - {field.name for field in fields(PreTrainedConfig)}
        for key in maple_fields & kwargs.keys():
            value, saved = kwargs.pop(key), config_dict.get(key)
            if key in cls.sub_configs_defaults and isinstance(value, Mapping) and isinstance(saved, Mapping):
                value = {**saved, **value}
            config_dict[key] = value
        return super().from_dict(config_dict, **kwargs)

    def _check_maple_fields(self):
        # Raised from `__post_init__` as plain ValueErrors (`@strict` validators wrap theirs), so bad
        # values fail at construction with a message that names the field.
        if self.backbone not in BACKBONES:
            raise ValueError(f"Unknown backbone {self.backbone!r}: expected one of {BACKBONES}.")
        if self.pooling not in POOLINGS[self.backbone]:
            raise ValueError(
                f"Unknown pooling {self.pooling!r} for backbone {self.backbone!r}: "
                f"expected one of {POOLINGS[self.backbone]}."
            )
        if self.backbone == "mllm":
            if self.mllm_config is None:
                raise ValueError("backbone='mllm' needs `mllm_config` (e.g. a Qwen2VLConfig).")
            if self.mllm_config.model_type not in SUPPORTED_MLLMS:
                raise ValueError(
                    f"Unsupported MLLM {self.mllm_config.model_type!r}: expected one of {SUPPORTED_MLLMS}."
                )
        else:
            if self.vision_config is None or self.text_config is None:
                raise ValueError("backbone='dual_encoder' needs both `vision_config` and `text_config`.")
            if self.pooling == "cls" and config_tells_causal(self.text_config):
                raise CausalClsPoolingError(self.text_config.model_type)
            if self.projection_dim is None:
                raise ValueError("backbone='dual_encoder' needs `projection_dim` (the shared embedding size).")
        if self.projection_dim is not None and self.projection_dim <= 0:
            raise ValueError(f"`projection_dim` must be positive, got {self.projection_dim}.")


__all__ = ["MapleConfig"]
