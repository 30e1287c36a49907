"""MAPLE embedder (arXiv 2506.06970): an MLLM used as a dual encoder, or a two-tower CLIP-style model,
producing L2-normalised image and text embeddings in one space."""

import os
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from transformers import AutoModel, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput, can_return_tuple

from .configuration_maple import (
    DUAL_ENCODER_MODEL_TYPES,
    IMAGE_TOKEN_TYPE_INPUTS,
    NAFLEX_VISION_TOWERS,
    PIXTRAL_MLLMS,
    QWEN_VL_MLLMS,
    SUPPORTED_MLLMS,
    CausalClsPoolingError,
    MapleConfig,
    mllm_family,
)


@dataclass
class MapleOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `return_loss=True`):
        Symmetric InfoNCE loss over the matched (image_i, text_i) pairs of the batch.
    logits_per_image (`torch.FloatTensor` of shape `(num_images, num_texts)`):
        `logit_scale.exp() * image_embeds @ text_embeds.T`.
    logits_per_text (`torch.FloatTensor` of shape `(num_texts, num_images)`):
        Transpose of `logits_per_image`.
    text_embeds (`torch.FloatTensor` of shape `(num_texts, embed_dim)`):
        Text embeddings (L2-normalised when `config.normalize`).
    image_embeds (`torch.FloatTensor` of shape `(num_images, embed_dim)`):
        Image embeddings (L2-normalised when `config.normalize`).
    inverse_temperature (`torch.FloatTensor` of shape `()`):
        `logit_scale.exp()`, the InfoNCE inverse temperature.
    beta (`torch.FloatTensor` of shape `()`):
        `preference_logit_scale.exp()`, RPA's scale of similarities. Returned by `forward` (as open_clip
        returns its logit scale) so that losses use parameters that went through the forward pass, which
        DistributedDataParallel requires.
    """

    loss: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    inverse_temperature: torch.FloatTensor | None = None
    beta: torch.FloatTensor | None = None


def masked_mean_pool(hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of `hidden_states` (B, L, H) over positions where `attention_mask` (B, L) is 1 -> (B, H), float32.

    Summed in float32: a float16 sum over a long prompt (Qwen2-VL image prompts reach thousands of tokens) overflows
    past 65504. Padding is zeroed rather than multiplied by 0, so that a NaN there (the state of a fully masked row
    under some attention kernels) stays out of the mean."""
    if attention_mask is None:
        return hidden_states.mean(dim=1, dtype=torch.float32)
    # the mask sits with the inputs, the states on the last layer's device (a model spread over GPUs)
    mask = attention_mask.to(hidden_states.device, torch.bool).unsqueeze(-1)
    return hidden_states.masked_fill(~mask, 0).sum(dim=1, dtype=torch.float32) / mask.sum(dim=1).clamp(min=1)


def last_token_pool(hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """State of the last non-padding token of each row (B, L, H) -> (B, H); works for left and right padding."""
    if attention_mask is None:
        return hidden_states[:, -1]
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    last_index = (attention_mask.to(torch.long) * positions).argmax(dim=1).to(hidden_states.device)
    return hidden_states[torch.arange(hidden_states.shape[0], device=hidden_states.device), last_index]


def clip_contrastive_loss(logits_per_text: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of CLIP (Radford et al., 2021) for a square (N, N) matrix whose diagonal holds the matches."""
    labels = torch.arange(logits_per_text.shape[0], device=logits_per_text.device)
    return (F.cross_entropy(logits_per_text, labels) + F.cross_entropy(logits_per_text.t(), labels)) / 2


class MaplePreTrainedModel(PreTrainedModel):
    config: MapleConfig
    base_model_prefix = "maple"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True
    # MAPLE's own heads and logit scales stay float32 when a checkpoint loads in bf16 or fp16: a bf16 log-scale
    # near log(1/0.07) moves in steps of 0.016, coarser than an optimiser step, so it would stop learning.
    # (Patterns are regular expressions searched in parameter names: anchored, to leave the backbones alone.)
    _keep_in_fp32_modules_strict = [
        r"^logit_scale$", r"^preference_logit_scale$", r"^projection\.", r"^visual_projection\.", r"^text_projection\."
    ]

    @torch.no_grad()
    def _init_weights(self, module):
        # Backbones are PreTrainedModels and initialise themselves; only MAPLE's own heads are set here.
        if isinstance(module, MapleModel):
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)
            init.constant_(module.preference_logit_scale, self.config.preference_logit_scale_init_value)
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)


class MapleModel(MaplePreTrainedModel):
    r"""
    An image-text embedder trained with MLLM preferences (MAPLE, arXiv 2506.06970).

    With `config.backbone == "mllm"` one multimodal LLM embeds both modalities: the processor wraps
    each input in a summarisation prompt, the causal mask is replaced by a bidirectional one, and the
    last layer's states are pooled. With `"dual_encoder"` a vision tower and a text tower are pooled
    and linearly projected into one space. Either way, `forward` embeds any number of texts and
    images *in one call* (distributed training needs exactly one forward per step).

    Pretrained backbone modules may be passed in (see [`MapleModel.from_backbone`]) so that loading
    a multi-billion parameter MLLM does not first initialise a random copy.
    """

    def __init__(
        self,
        config: MapleConfig,
        mllm: PreTrainedModel | None = None,
        vision_tower: PreTrainedModel | None = None,
        text_tower: PreTrainedModel | None = None,
    ):
        super().__init__(config)
        if config.backbone == "mllm":
            self.mllm = mllm if mllm is not None else AutoModel.from_config(config.mllm_config)
            hidden_size = config.mllm_config.get_text_config().hidden_size
            self._set_attention_direction(bidirectional=config.bidirectional)
            self.projection = (
                nn.Linear(hidden_size, config.projection_dim, bias=False, dtype=torch.float32) if config.projection_dim else None
            )
        else:
            self.vision_tower = vision_tower if vision_tower is not None else tower_from_config(config.vision_config)
            self.text_tower = text_tower if text_tower is not None else tower_from_config(config.text_config)
            refuse_causal_cls_pooling(config, self.text_tower)
            pooled_sizes = _pooled_size(config.vision_config, config.pooling), _pooled_size(config.text_config, config.pooling)
            self.visual_projection = nn.Linear(pooled_sizes[0], config.projection_dim, bias=False, dtype=torch.float32)
            self.text_projection = nn.Linear(pooled_sizes[1], config.projection_dim, bias=False, dtype=torch.float32)
        # float32 even under a bf16 default dtype (`from_pretrained(dtype=torch.bfloat16)` builds the model so): a
        # head the checkpoint lacks, such as a new `projection_dim`, is created, not loaded, and would stay bf16
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value, dtype=torch.float32))
        self.preference_logit_scale = nn.Parameter(torch.tensor(config.preference_logit_scale_init_value, dtype=torch.float32))
        self.post_init()

    def _set_attention_direction(self, bidirectional: bool) -> None:
        # Two switches: the language model's mask factory builds a bidirectional (padding-only) mask
        # when its config says `is_causal=False`, and SDPA falls back to each attention module's own
        # `is_causal` flag when no mask is materialised (an unpadded batch). Set both ways: a
        # bidirectional checkpoint saves `is_causal=False` in its language model's config, which
        # `bidirectional=False` must undo.
        language_model = self.mllm.get_decoder()  # `language_model`, or Idefics3's `text_model`
        language_model.config.is_causal = not bidirectional
        for module in language_model.modules():
            if hasattr(module, "is_causal"):
                module.is_causal = not bidirectional

    def _text_side(self) -> PreTrainedModel:
        # The backbone that embeds texts: its token embeddings are the model's input embeddings.
        return self.mllm if self.config.backbone == "mllm" else self.text_tower

    def get_input_embeddings(self) -> nn.Module:
        """The token embeddings of the text side (the MLLM's language model, or the text tower), which
        `resize_token_embeddings` and NEFTune act on."""
        return self._text_side().get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self._text_side().set_input_embeddings(value)

    def resize_token_embeddings(
        self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None, mean_resizing: bool = True
    ) -> nn.Embedding:
        """`PreTrainedModel.resize_token_embeddings` of the text side, which records the new vocabulary size in its
        own config (saved as `mllm_config` or `text_config`): transformers' would record it on MapleConfig itself,
        and the checkpoint would not load again."""
        return self._text_side().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)

    # ------------------------------------------------------------------ embeddings

    def _finish(self, pooled: torch.Tensor, projection: nn.Linear | None) -> torch.Tensor:
        # Embeddings are float32 whatever the backbone's weights dtype: similarities scaled by 1/0.07 and the
        # losses on them need more than bf16's three significant digits. (Under autocast the head and the
        # similarity matmuls run in autocast's dtype, as in open_clip's mixed-precision training.) A new head is
        # float32 on a bf16 backbone (`from_backbone` keeps the checkpoint's dtype), so the pooled states are cast
        # to the head's dtype.
        embeds = projection(pooled.to(projection.weight.dtype)) if projection is not None else pooled
        embeds = embeds.float()
        return F.normalize(embeds, dim=-1) if self.config.normalize else embeds

    def _pool(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, pooler_output=None):
        pooling = self.config.pooling
        if pooling == "mean":
            return masked_mean_pool(hidden_states, attention_mask)
        if pooling == "last":
            return last_token_pool(hidden_states, attention_mask)
        if pooling == "cls":
            return hidden_states[:, 0]
        if pooler_output is None:
            raise ValueError("pooling='pooler' needs a tower that returns `pooler_output`; use 'mean' or 'cls'.")
        return pooler_output

    def get_text_features(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None) -> torch.FloatTensor:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(num_texts, text_length)`): prompt-wrapped text tokens.
            attention_mask (`torch.Tensor` of shape `(num_texts, text_length)`): 1 for tokens, 0 for padding.

        Returns:
            `torch.FloatTensor` of shape `(num_texts, embed_dim)`.
        """
        if self.config.backbone == "mllm":
            hidden_states = self.mllm(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
            return self._finish(self._pool(hidden_states, attention_mask), self.projection)
        # A processor whose tokenizer records no `model_max_length` does not truncate: the tower's position table
        # would fail with a bare shape error. (XLNet's relative positions have no limit: -1.)
        positions = getattr(self.text_tower.config, "max_position_embeddings", None)
        if positions is not None and 0 < positions < input_ids.shape[1]:
            raise ValueError(
                f"texts of {input_ids.shape[1]} tokens, and the text tower has {positions} positions: set the processor's "
                f"`max_text_length`, or its tokenizer's `model_max_length` to {positions}"
            )
        outputs = self.text_tower(input_ids=input_ids, attention_mask=attention_mask)
        pooled = self._pool(outputs.last_hidden_state, attention_mask, getattr(outputs, "pooler_output", None))
        return self._finish(pooled, self.text_projection)

    def get_image_features(
        self,
        pixel_values: torch.FloatTensor,
        image_grid_thw: torch.LongTensor | None = None,
        image_input_ids: torch.LongTensor | None = None,
        image_attention_mask: torch.Tensor | None = None,
        image_mm_token_type_ids: torch.IntTensor | None = None,
        pixel_attention_mask: torch.Tensor | None = None,
        spatial_shapes: torch.LongTensor | None = None,
        image_sizes: torch.LongTensor | None = None,
    ) -> torch.FloatTensor:
        r"""
        Args:
            pixel_values (`torch.FloatTensor`): dual encoder, LLaVA and Gemma 3: `(num_images, channels, height,
                width)`; Pixtral, Mistral 3: `(num_images, channels, max_height, max_width)`, each image zero-padded to
                the largest; SigLIP2 (NaFlex) vision tower: `(num_images, max_num_patches, patch_dim)`, each image's
                patches padded to one length; Qwen-VL family: `(num_patches, patch_dim)`, the processor's flattened patches;
                LLaVA-NeXT, InternVL: `(num_tiles, channels, height, width)`, each image's tiles in turn; Idefics3/SmolVLM:
                `(1, num_tiles, channels, height, width)`, every tile of the batch as one sample's images.
            image_grid_thw (`torch.LongTensor` of shape `(num_images, 3)`, Qwen-VL only): patch grid per image.
            image_input_ids (`torch.LongTensor` of shape `(num_images, prompt_length)`, MLLM only):
                the image prompt with its image placeholder tokens.
            image_attention_mask (`torch.Tensor` of shape `(num_images, prompt_length)`, MLLM only).
            image_mm_token_type_ids (`torch.IntTensor` of shape `(num_images, prompt_length)`, Qwen-VL and Gemma 3
                only): 1 at image placeholder positions (needed for Qwen-VL's multimodal RoPE and Gemma 3's causal mask).
            pixel_attention_mask (`torch.Tensor`, Idefics3/SmolVLM and SigLIP2 only): 1 on what is real, not
                padding. Idefics3/SmolVLM: `(1, num_tiles, height, width)`, the pixels of each tile; SigLIP2:
                `(num_images, max_num_patches)`, the patches of each image.
            spatial_shapes (`torch.LongTensor` of shape `(num_images, 2)`, SigLIP2 only): each image's patch grid
                (rows, columns).
            image_sizes (`torch.LongTensor` of shape `(num_images, 2)`, LLaVA-NeXT, Pixtral and Mistral 3 only): each
                image's (height, width), LLaVA-NeXT's before processing, which sets its tiles and image tokens; Pixtral's
                and Mistral 3's after resizing, the part of its padded pixels the vision tower reads.

        Returns:
            `torch.FloatTensor` of shape `(num_images, embed_dim)`.
        """
        if self.config.backbone == "mllm":
            model_type = mllm_family(self.config.mllm_config)
            needed = {"image_input_ids": image_input_ids}
            if model_type in QWEN_VL_MLLMS:
                needed["image_grid_thw"] = image_grid_thw
            elif model_type == "llava_next" or model_type in PIXTRAL_MLLMS:
                needed["image_sizes"] = image_sizes
            elif model_type == "gemma3" and not self.config.bidirectional:
                needed["image_mm_token_type_ids"] = image_mm_token_type_ids
            if any(value is None for value in needed.values()):
                names = " and ".join(f"`{name}`" for name in needed)
                raise ValueError(
                    f"A {model_type} embedder needs {names} with `pixel_values`: prepare images with MapleProcessor."
                )
            # Only the family's own inputs: LLaVA and InternVL take none beside the pixels.
            vision_inputs = {
                "image_grid_thw": image_grid_thw,
                "pixel_attention_mask": pixel_attention_mask,
                "image_sizes": image_sizes,
            }
            # Gemma 3 takes its image-token mask only to let each image's tokens see one another in its causal mask;
            # bidirectional attention already does, and on its sliding-window layers the mask would make the window
            # one-sided (all later tokens, and only the window's earlier ones).
            if model_type in IMAGE_TOKEN_TYPE_INPUTS and not (model_type == "gemma3" and self.config.bidirectional):
                vision_inputs[IMAGE_TOKEN_TYPE_INPUTS[model_type]] = image_mm_token_type_ids
            hidden_states = self.mllm(
                input_ids=image_input_ids,
                attention_mask=image_attention_mask,
                pixel_values=pixel_values,
                use_cache=False,
                **{name: value for name, value in vision_inputs.items() if value is not None},
            ).last_hidden_state
            return self._finish(self._pool(hidden_states, image_attention_mask), self.projection)
        # A NaFlex tower (SigLIP2) sees each image at its own aspect ratio: its patches, padded to one length, need
        # the mask of the real ones and the patch grid they came from (its `forward` requires both).
        naflex_inputs = {"pixel_attention_mask": pixel_attention_mask, "spatial_shapes": spatial_shapes}
        tower_type = self.config.vision_config.model_type
        if tower_type in NAFLEX_VISION_TOWERS and any(value is None for value in naflex_inputs.values()):
            raise ValueError(
                f"A {tower_type} vision tower needs `pixel_attention_mask` and `spatial_shapes` "
                "with `pixel_values`: prepare images with MapleProcessor."
            )
        expected_rank = 3 if tower_type in NAFLEX_VISION_TOWERS else 4  # (images, patches, patch_dim) or (images, C, H, W)
        if pixel_values.dim() != expected_rank:
            raise ValueError(
                f"A {tower_type} vision tower takes `pixel_values` of {expected_rank} dimensions, got shape "
                f"{tuple(pixel_values.shape)}: prepare images with MapleProcessor."
            )
        outputs = self.vision_tower(
            pixel_values=pixel_values, **{name: value for name, value in naflex_inputs.items() if value is not None}
        )
        pooled = self._pool(outputs.last_hidden_state, pixel_attention_mask, getattr(outputs, "pooler_output", None))
        return self._finish(pooled, self.visual_projection)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        image_input_ids: torch.LongTensor | None = None,
        image_attention_mask: torch.Tensor | None = None,
        image_mm_token_type_ids: torch.IntTensor | None = None,
        pixel_attention_mask: torch.Tensor | None = None,
        spatial_shapes: torch.LongTensor | None = None,
        image_sizes: torch.LongTensor | None = None,
        return_loss: bool | None = None,
    ) -> MapleOutput | tuple:
        r"""
        Embeds the texts and the images of a batch in one call. Inputs are those of
        [`get_text_features`] and [`get_image_features`]; either side may be absent, and the numbers of
        texts and images may differ (anchors plus preference candidates).

        return_loss (`bool`, *optional*):
            Return the symmetric InfoNCE loss; needs as many images as texts, matched by index.
        return_dict (`bool`, *optional*):
            `False` returns a tuple of the non-`None` fields of `MapleOutput`; unset, `config.return_dict` decides
            (`can_return_tuple`, as transformers models do).
        """
        if input_ids is None and pixel_values is None:
            raise ValueError("MapleModel got neither texts (`input_ids`) nor images (`pixel_values`).")
        text_embeds = self.get_text_features(input_ids, attention_mask) if input_ids is not None else None
        image_embeds = None
        if pixel_values is not None:
            image_embeds = self.get_image_features(
                pixel_values,
                image_grid_thw,
                image_input_ids,
                image_attention_mask,
                image_mm_token_type_ids,
                pixel_attention_mask,
                spatial_shapes,
                image_sizes,
            )
        inverse_temperature = self.logit_scale.exp()
        logits_per_text = logits_per_image = loss = None
        if text_embeds is not None and image_embeds is not None:
            # As CLIPModel does: with a multi-GPU `device_map` the towers and the scale may sit on different GPUs.
            logits_per_text = inverse_temperature.to(text_embeds.device) * text_embeds @ image_embeds.t().to(text_embeds.device)
            logits_per_image = logits_per_text.t()
        if return_loss:
            if logits_per_text is None or logits_per_text.shape[0] != logits_per_text.shape[1]:
                raise ValueError("return_loss=True needs as many texts as images, matched by index.")
            loss = clip_contrastive_loss(logits_per_text)
        output = MapleOutput(
            loss=loss,
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            inverse_temperature=inverse_temperature,
            beta=self.preference_logit_scale.exp(),
        )
        return output

    @torch.no_grad()
    def encode(
        self,
        processor,
        texts: str | list[str] | None = None,
        images: Any = None,
        batch_size: int = 32,
        show_progress_bar: bool = False,
        first_index: int = 0,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Embed lists of texts and/or images (PIL images or image file paths) in batches; a single text, path
        or image counts as a list of one. `first_index`: the position of the first text and image in the caller's
        own lists (a miner's stream of images, embedded a batch at a time), by which error messages name an item.

        Returns float32 CPU tensors, L2-normalised unless `config.normalize` is False: `(num_texts, D)`
        and/or `(num_images, D)`; with both inputs, the tuple `(text_embeds, image_embeds)`.
        """
        if texts is None and images is None:
            raise ValueError("encode() needs `texts`, `images` or both.")
        # Sliced as a sequence, a lone string would be embedded in pieces of `batch_size` characters.
        if isinstance(texts, str):
            texts = [texts]
        if isinstance(images, (str, os.PathLike, Image.Image)):
            images = [images]
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        from tqdm.auto import tqdm

        was_training = self.training
        self.eval()
        results = []
        try:  # a bad item raises mid-way: the model goes back to training mode all the same
            for kind, items in (("text", texts), ("images", images)):
                if items is None:
                    continue
                chunks = range(0, len(items), batch_size)
                embeds = []
                for start in tqdm(chunks, desc=f"Embedding {kind}", disable=not show_progress_bar):
                    chunk = items[start : start + batch_size]
                    # `first_index`: errors name an item by its position in `texts`/`images`, not in its batch
                    inputs = {"text": chunk} if kind == "text" else {"images": chunk}
                    batch = processor(**inputs, first_index=first_index + start)
                    batch = {key: value.to(self.device) for key, value in batch.items()}
                    outputs = self(**batch, return_dict=True)  # whatever `config.return_dict` says
                    embeds.append((outputs.text_embeds if kind == "text" else outputs.image_embeds).float().cpu())
                results.append(torch.cat(embeds) if embeds else torch.empty(0, self.embed_dim))
        finally:
            self.train(was_training)
        return results[0] if len(results) == 1 else tuple(results)

    @property
    def dtype(self) -> torch.dtype:
        """The backbone's weights dtype (bf16 for Qwen2-VL checkpoints), which `save_pretrained` records and
        `dtype="auto"` restores. The float32 logit scales come first among the parameters, so transformers'
        default (the first parameter's dtype) would say float32 and reload a bf16 backbone in float32."""
        return (self.mllm if self.config.backbone == "mllm" else self.vision_tower).dtype

    @property
    def embed_dim(self) -> int:
        if self.config.projection_dim is not None:
            return self.config.projection_dim
        return self.config.mllm_config.get_text_config().hidden_size

    # ------------------------------------------------------------------ construction from backbones

    @classmethod
    def from_backbone(
        cls,
        name_or_path: str,
        backbone: str = "mllm",
        text_backbone: str | None = None,
        *,
        dtype: str | torch.dtype = "auto",
        attn_implementation: str | None = None,
        revision: str | None = None,
        token: str | None = None,
        **config_overrides: Any,
    ) -> "MapleModel":
        """Build a MAPLE embedder around pretrained backbone weights (every backbone tensor is kept as is).

        Args:
            name_or_path: Hub id or folder of the backbone. `"mllm"`: a checkpoint of a supported MLLM
                (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, LLaVA-1.5, LLaVA-NeXT, InternVL `-hf`, Idefics3, SmolVLM, Gemma 3,
                Pixtral (a LLaVA config with a Pixtral tower), Mistral 3).
                `"dual_encoder"`: a two-tower model (CLIP, SigLIP) whose towers and projections are
                reused, or a vision encoder (e.g. DINOv2) when `text_backbone` is given.
            backbone: `"mllm"` or `"dual_encoder"`.
            text_backbone: Hub id or folder of the text encoder (e.g. a BERT) for a dual encoder built
                from two single-modality models.
            dtype: weights dtype of the backbones, as in `from_pretrained` ("auto": as saved, e.g. bf16
                for Qwen2-VL). New heads and the logit scales stay float32.
            attn_implementation: attention of the backbones, as in `from_pretrained` (`None`: SDPA
                where available; `"flash_attention_2"` as in the paper).
            revision: the Hub revision (branch, tag or commit) of `name_or_path`, not of `text_backbone`.
            token: the Hub token the backbones are read with (None: HF_TOKEN or the saved login).
            config_overrides: other [`MapleConfig`] fields (`pooling`, `projection_dim`, ...).
        """
        unknown = sorted(set(config_overrides) - {field.name for field in fields(MapleConfig)})
        if unknown:
            # MapleConfig keeps any attribute: a typo or a loading option such as device_map would be saved, unused.
            raise TypeError(
                f"from_backbone() got {', '.join(unknown)}, which are not MapleConfig fields; its loading options "
                "are dtype, attn_implementation, revision and token."
            )
        loading = {"dtype": dtype, "attn_implementation": attn_implementation, "token": token}
        if backbone == "mllm":
            mllm = AutoModel.from_pretrained(name_or_path, revision=revision, **loading)
            model = cls._wrap("mllm", config_overrides, mllm_config=mllm)
        elif backbone != "dual_encoder":
            raise ValueError(f"Unknown backbone {backbone!r}: expected 'mllm' or 'dual_encoder'.")
        elif text_backbone is not None:
            vision_tower = _single_tower(name_or_path, "vision_config", {**loading, "revision": revision})
            text_tower = _single_tower(text_backbone, "text_config", loading)
            config_overrides.setdefault("projection_dim", _hidden_size(text_tower.config))
            model = cls._wrap("dual_encoder", config_overrides, vision_config=vision_tower, text_config=text_tower)
        else:
            model = cls._from_two_tower(name_or_path, {**loading, "revision": revision}, **config_overrides)
        # What the model was built from, as `from_pretrained` records a checkpoint's: model cards name it as the base
        # model (not saved in config.json), and PEFT saves adapters with it as their base.
        model.config._name_or_path = model.name_or_path = name_or_path
        return model

    @classmethod
    def _wrap(cls, backbone: str, config_overrides: dict[str, Any], **backbones: PreTrainedModel) -> "MapleModel":
        """A model around loaded `backbones`, keyed by their sub-config (`mllm_config`, or `vision_config`
        and `text_config`)."""
        config = _config_around(backbone, config_overrides, **{key: module.config for key, module in backbones.items()})
        modules = {"mllm_config": "mllm", "vision_config": "vision_tower", "text_config": "text_tower"}
        return cls(config, **{modules[key]: module for key, module in backbones.items()})

    @classmethod
    def _from_two_tower(cls, name_or_path: str, loading: dict[str, Any], **config_overrides: Any) -> "MapleModel":
        config = _backbone_config(name_or_path, loading)  # checked before any weights load
        _refuse_mllm(name_or_path, config)
        if not is_two_tower(config):
            raise ValueError(
                f"{name_or_path!r} ({config.model_type}) is not a two-tower image-text model; pass `text_backbone=` to "
                "pair a vision encoder with a text encoder."
            )
        # CLIP/SigLIP keep their towers under `vision_model.` / `text_model.`; their single-tower
        # classes use the same names, with or without that prefix depending on the family.
        two_tower = AutoModel.from_pretrained(name_or_path, **loading)
        projection_dim = getattr(two_tower.config, "projection_dim", None) or _pooled_size(two_tower.config.text_config, "pooler")
        config_overrides.setdefault("projection_dim", projection_dim)
        config_overrides.setdefault("pooling", "pooler")
        if hasattr(two_tower.config, "logit_scale_init_value"):
            config_overrides.setdefault("logit_scale_init_value", float(two_tower.logit_scale.detach()))
        config = _config_around(
            "dual_encoder",
            config_overrides,
            vision_config=two_tower.config.vision_config,
            text_config=two_tower.config.text_config,
        )
        model = cls(config)
        state = two_tower.state_dict()
        for tower, prefix in ((model.vision_tower, "vision_model."), (model.text_tower, "text_model.")):
            tower_state = {key: value for key, value in state.items() if key.startswith(prefix)}
            if not set(tower_state) <= set(tower.state_dict()):
                tower_state = {key.removeprefix(prefix): value for key, value in tower_state.items()}
            tower.load_state_dict(tower_state)
        for ours, theirs in ((model.visual_projection, "visual_projection"), (model.text_projection, "text_projection")):
            source = getattr(two_tower, theirs, None)
            with torch.no_grad():
                if isinstance(source, nn.Linear) and source.weight.shape == ours.weight.shape:
                    ours.weight.copy_(source.weight)
                elif ours.in_features == ours.out_features:
                    # SigLIP's towers already share one space (their heads sit inside the towers): an
                    # identity map keeps the pretrained alignment instead of scrambling it.
                    ours.weight.copy_(torch.eye(ours.out_features))
        model.vision_tower.to(two_tower.dtype)
        model.text_tower.to(two_tower.dtype)
        return model


def tower_from_config(config) -> PreTrainedModel:
    """A randomly initialised single-modality tower for `config`. `AutoModel` maps most towers (CLIP,
    SigLIP vision, DINOv2, BERT); text towers it does not map (SigLIP's) are found by name."""
    try:
        return AutoModel.from_config(config)
    except ValueError:
        return _tower_class(config)(config)


def _tower_class(config: PreTrainedConfig) -> type[PreTrainedModel]:
    """The single-modality model class of tower config `config`: `AutoModel`'s, else the one named after it."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    if type(config) in MODEL_MAPPING:
        return MODEL_MAPPING[type(config)]
    tower_class = getattr(transformers, type(config).__name__.removesuffix("Config") + "Model", None)
    if tower_class is None:
        raise ValueError(f"No model class for a {config.model_type!r} tower.")
    return tower_class


def refuse_causal_cls_pooling(config: MapleConfig, text_tower: PreTrainedModel | None = None) -> None:
    """A `CausalClsPoolingError` where a dual encoder of `config` pools its text tower's first token (`pooling="cls"`)
    and the tower attends causally as its attention modules tell (`_attends_causally`; `MapleConfig` refuses those whose
    config tells it). `text_tower`: the tower; None reads the modules of one built from `config.text_config` on the
    meta device, without weights, so that `load_maple` refuses such a checkpoint before any weights load."""
    if config.backbone != "dual_encoder" or config.pooling != "cls":
        return
    if text_tower is None:
        with torch.device("meta"):
            text_tower = tower_from_config(config.text_config)
    if _attends_causally(text_tower):
        raise CausalClsPoolingError(config.text_config.model_type)


def _attends_causally(tower: PreTrainedModel) -> bool:
    """Whether a transformers text tower lets each token see only those before it, as its masks do: its attention
    modules say so (`is_causal`: a decoder's, such as GPT-2, Llama or Qwen2, or a BERT configured with
    `is_decoder=True`; not an encoder's, nor Gemma 3's with `use_bidirectional_attention`, EmbeddingGemma), and its
    config does not make it bidirectional with `is_causal=False` (which those that do not honour it are refused for by
    `MapleConfig`, `config_tells_causal`)."""
    # transformers' mask factory (`masking_utils.create_causal_mask`) reads a config's `is_causal=False` as a padding-only
    # mask, and the model's forward passes it to the attention modules over their own `is_causal`
    if getattr(tower.config, "is_causal", True) is False:
        return False
    return any(getattr(module, "is_causal", False) is True for module in tower.modules())


def _backbone_config(name_or_path: str, loading: dict[str, Any]) -> PreTrainedConfig:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(name_or_path, revision=loading.get("revision"), token=loading.get("token"))


def _refuse_mllm(name_or_path: str, config: PreTrainedConfig) -> None:
    """A ValueError for an MLLM checkpoint given as a dual encoder's backbone (its config has a vision and a text config
    too, and its weights would load into towers that cannot use them)."""
    if config.model_type in SUPPORTED_MLLMS:
        raise ValueError(f"{name_or_path!r} is an MLLM ({config.model_type}), not a dual encoder's: build it with "
                         "backbone='mllm'.")


def is_two_tower(config: PreTrainedConfig) -> bool:
    """Whether `config`, not an MLLM's, is a two-tower image-text model's (CLIP, SigLIP), as `MapleModel.from_backbone`
    wraps without a `text_backbone`: a vision and a text config."""
    return getattr(config, "vision_config", None) is not None and getattr(config, "text_config", None) is not None


def _single_tower(name_or_path: str, side: str, loading: dict[str, Any]) -> PreTrainedModel:
    """The one-modality encoder of checkpoint `name_or_path` for the `side` ("vision_config" or "text_config") of a
    dual encoder built from two models: the model itself, or, from a CLIP or SigLIP checkpoint, its tower of that side,
    loaded with its weights alone. Any other checkpoint holding a vision and a text model (an MLLM, PaliGemma, BLIP,
    ...) is refused before any weights load: its tower's weights are named otherwise, and `from_pretrained` would leave
    the tower at random initialisation, silently."""
    config = _backbone_config(name_or_path, loading)
    _refuse_mllm(name_or_path, config)
    if config.model_type in DUAL_ENCODER_MODEL_TYPES:
        return _tower_class(getattr(config, side)).from_pretrained(name_or_path, **loading)
    if is_two_tower(config):
        raise ValueError(
            f"{name_or_path!r} ({config.model_type}) holds a vision and a text model; MAPLE takes one tower of a "
            f"{', '.join(DUAL_ENCODER_MODEL_TYPES)} checkpoint only: save the tower you want as a checkpoint of its own"
        )
    return AutoModel.from_pretrained(name_or_path, **loading)


def _config_around(backbone: str, config_overrides: dict[str, Any], **sub_configs: PreTrainedConfig) -> MapleConfig:
    """The MapleConfig of a `backbone` made of `sub_configs` (`mllm_config`, or `vision_config` and `text_config`)."""
    return MapleConfig(
        backbone=backbone,
        **sub_configs,
        # A sub-config given to a new config loses its attention implementation unless it is named here
        # (transformers 5), and a backbone without one applies no mask: padding would be attended to.
        attn_implementation={key: sub_config._attn_implementation for key, sub_config in sub_configs.items()},
        **config_overrides,
    )


def _pooled_size(config, pooling: str) -> int:
    """Width of a tower's pooled output: SigLIP's text pooler is a head to `projection_size` (the vision
    width, so that both towers share one space), which may differ from the text hidden size."""
    if pooling == "pooler" and getattr(config, "projection_size", None):
        return config.projection_size
    return _hidden_size(config)


def _hidden_size(config) -> int:
    # DINOv2/BERT/CLIP towers call it `hidden_size`; some vision encoders only have `embed_dim`.
    for name in ("hidden_size", "embed_dim", "projection_dim"):
        if getattr(config, name, None):
            return getattr(config, name)
    raise ValueError(f"Cannot tell the hidden size of a {config.model_type!r} tower.")


__all__ = ["MapleModel", "MaplePreTrainedModel", "MapleOutput"]
