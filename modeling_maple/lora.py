"""The paper's parameter-efficient set-up for MAPLE embedders (arXiv 2506.06970, section 4.1).

LoRA (rank 32, alpha 32 in the paper) on the language model of an MLLM backbone; the vision
encoder and the vision-language connector stay frozen. For a dual encoder, LoRA goes on the
attention projections of both towers. MAPLE's own projection heads are trained in full and saved
with the adapter (`modules_to_save`).

```python
from modeling_maple.lora import get_maple_peft_model
from peft import PeftModel

peft_model = get_maple_peft_model(model)                      # or RPATrainer(..., peft_config=maple_lora_config(model))
peft_model.save_pretrained("adapter")                          # adapter + projection heads
reloaded = PeftModel.from_pretrained(base_model, "adapter")    # same embeddings
merged = reloaded.merge_and_unload()                            # a plain MapleModel, same embeddings
save_merged(peft_model, "merged")                               # the same, saved without touching peft_model
```
The two logit scales (InfoNCE temperature, RPA beta) are plain parameters, not modules, so an
adapter does not carry them; they do not change embeddings, and a merged model saves them.
"""

import torch
from peft import LoraConfig, PeftConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from peft.utils import ModulesToSaveWrapper
from torch import Tensor

from .configuration_maple import MapleConfig
from .modeling_maple import MapleModel

# Attention and MLP projections of the MLLM's language model (`language_model`; Idefics3/SmolVLM:
# `text_model`). Anchoring on it leaves out vision towers whose layers share these names (LLaVA's CLIP,
# InternVL's and Idefics3's ViTs) and the vision-language connectors.
MLLM_LORA_TARGETS = r".*\.(language_model|text_model)\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
# Attention projections of CLIP/SigLIP-style (`*_proj`), BERT-style (`query`/`key`/`value`), DeBERTa-v2 (`*_proj`
# after `query`/`key`/`value`), DistilBERT, XLM and FlauBERT (`*_lin`), MPNet (`attn.q`/`k`/`v`/`o`), ModernBERT and
# MPT (`attn.Wqkv`/`Wo`) towers. A tower whose projections no name here matches gets no adapter: it stays frozen, without a word.
# SigLIP's pooling head is excluded: its `head.attention` is a `torch.nn.MultiheadAttention`, which
# reads `out_proj.weight` directly, so a LoRA layer there would never be used or trained.
DUAL_ENCODER_LORA_TARGETS = (
    r".*(vision_tower|text_tower)\.(?!(.*\.)?head\.attention\.).*\."
    r"(q_proj|k_proj|v_proj|out_proj|query|key|value|query_proj|key_proj|value_proj|q_lin|k_lin|v_lin|out_lin"
    r"|attn\.(q|k|v|o|Wqkv|Wo))"
)
# MapleModel's own heads, top-level modules: the MLLM's, and the dual encoder's two.
MAPLE_HEADS = ("projection", "visual_projection", "text_projection")
# The paper's LoRA: rank and alpha 32 (its dropout is not stated)
LORA_RANK, LORA_ALPHA, LORA_DROPOUT = 32, 32, 0.05


def maple_lora_config(
    model_or_config: MapleModel | MapleConfig,
    r: int = LORA_RANK,
    lora_alpha: int = LORA_ALPHA,
    lora_dropout: float = LORA_DROPOUT,
    **lora_kwargs,
) -> LoraConfig:
    """A `peft.LoraConfig` for the paper's set-up (rank and alpha 32 by default; vision side frozen).

    Args:
        model_or_config: the MAPLE model (or its config) to adapt.
        r, lora_alpha, lora_dropout: LoRA rank, scaling numerator and dropout.
        lora_kwargs: any other `LoraConfig` field, overriding the defaults here.
    """
    # Not isinstance(MapleModel): a model loaded with trust_remote_code before this package is imported is of the
    # checkpoint's own copy of the class.
    config = getattr(model_or_config, "config", model_or_config)
    if config.backbone == "mllm":
        target_modules = MLLM_LORA_TARGETS
        heads = ["projection"] if config.projection_dim else []
    else:
        target_modules = DUAL_ENCODER_LORA_TARGETS
        heads = ["visual_projection", "text_projection"]
    options = {
        "r": r,
        "lora_alpha": lora_alpha,
        "lora_dropout": lora_dropout,
        "target_modules": target_modules,
        "modules_to_save": heads or None,
        "bias": "none",
    }
    options.update(lora_kwargs)
    return LoraConfig(**options)


def get_maple_peft_model(
    model: MapleModel, peft_config: PeftConfig | None = None, revision: str | None = None
) -> PeftModel:
    """`peft.get_peft_model(model, peft_config, revision=revision)` (default config: `maple_lora_config(model)`) whose
    only modules trained in full are the ones `peft_config` means: see [`freeze_backbone_modules_to_save`].

    `revision` is the Hub revision `model` was loaded at (a model does not record it): the adapter saves it beside its
    base's name (`base_model_name_or_path`), and `peft.AutoPeftModel` and `maple eval` load the base at it; None keeps
    `peft_config.revision` (by default None: the base's main branch)."""
    peft_config = peft_config if peft_config is not None else maple_lora_config(model)
    peft_model = get_peft_model(model, peft_config, revision=revision)
    freeze_backbone_modules_to_save(peft_model)
    return peft_model


def freeze_backbone_modules_to_save(peft_model: PeftModel) -> None:
    """Turns off PEFT's trainable copies of the backbone modules that it wrapped only because their names end as a
    MAPLE head's does.

    PEFT matches `modules_to_save` by name suffix (`key.endswith(name)`, peft 0.21, no full-name or regular expression
    form), and MAPLE's MLLM head is the top-level `projection`: so InternVL's `...patch_embeddings.projection` and
    Idefics3/SmolVLM's `connector.modality_projection` are wrapped too, and would be trained in full and saved,
    although the vision side stays frozen in the paper's set-up. The head keeps its name, which existing checkpoints
    and adapters use. Such a wrapper is set to no adapter: its forward is the frozen original's, and its copy
    stays, untrained, in the saved adapter (PEFT wraps the same modules when it loads one and expects it there).

    A wrapper whose copy differs from its original (a loaded adapter trained with a plain `get_peft_model`) is left
    as it is, as are modules that the config names other than by a MAPLE head's name: this never changes what the
    model computes. Call it after `get_peft_model`, or after `PeftModel.from_pretrained(..., is_trainable=True)`."""
    adapter = peft_model.active_adapter
    entries = peft_model.peft_config[adapter].modules_to_save or []
    requested = [entry for entry in entries if entry not in MAPLE_HEADS]
    for name, module in peft_model.get_base_model().named_modules():
        if not isinstance(module, ModulesToSaveWrapper) or name in MAPLE_HEADS or adapter not in module.modules_to_save:
            continue
        if any(name.endswith(entry) for entry in requested):
            continue
        copy, original = module.modules_to_save[adapter].state_dict(), module.original_module.state_dict()
        if all(torch.equal(copy[key], original[key]) for key in original):
            module.set_adapter([])  # the original's forward; the copy loses requires_grad


__all__ = [
    "maple_lora_config",
    "get_maple_peft_model",
    "freeze_backbone_modules_to_save",
    "save_merged",
    "check_mergeable",
    "MAPLE_HEADS",
    "MLLM_LORA_TARGETS",
    "DUAL_ENCODER_LORA_TARGETS",
]


def save_merged(model: PeftModel, output_dir: str) -> None:
    """Saves the PEFT model as the plain model it stands for (adapters merged, trained heads in place), equal to
    `merge_and_unload()` and loadable by `AutoModel`, without changing the live model's weights: merging in place and
    unmerging again would move the frozen base weights by rounding at every save (under DDP on the saving process
    only).
    Only the LoRA-targeted weights are new tensors, on the CPU; every other tensor of the saved state is the model's."""
    check_mergeable(model)
    base = model.get_base_model()
    prefix = getattr(model.base_model, "prefix", "lora_")
    adapter = model.active_adapter
    merged = {}
    for module_name, module in base.named_modules():
        # linear-like layers keep their adapter in `lora_A`, embeddings in `lora_embedding_A`
        if isinstance(module, LoraLayer) and (adapter in module.lora_A or adapter in module.lora_embedding_A):
            merged.update(_merged_lora_tensors(module, adapter, f"{module_name}.base_layer."))
    state_dict = {}
    for name, tensor in base.state_dict().items():
        if f".{prefix}" in name or name.startswith(prefix) or ".original_module." in name:
            continue  # adapter weights (merged) and the untrained copies of the trained heads
        tensor = merged.get(name, tensor)
        name = name.replace(".base_layer.", ".").replace(f".modules_to_save.{adapter}.", ".")
        state_dict[name] = tensor
    base.save_pretrained(output_dir, state_dict=state_dict)


def check_mergeable(model: PeftModel) -> None:
    """A ValueError when `save_merged` cannot merge `model`'s active adapter: `lora_bias=True` on layers whose base
    has no bias (Qwen2's `o_proj` and MLP layers, say), which PEFT's `merge_and_unload` refuses too. `RPATrainer`
    checks it before training, as its checkpoints of a PEFT model are merged ones."""
    adapter = model.active_adapter
    biasless = [
        name
        for name, module in model.get_base_model().named_modules()
        if isinstance(module, LoraLayer) and module.lora_bias.get(adapter) and getattr(module.get_base_layer(), "bias", None) is None
    ]
    if biasless:
        more = f" and {len(biasless) - 3} more" if len(biasless) > 3 else ""
        raise ValueError(
            f"lora_bias=True cannot be merged into layers without a bias ({', '.join(biasless[:3])}{more}): "
            "set lora_bias=False, or target only layers with a bias"
        )


@torch.no_grad()
def _merged_lora_tensors(layer: LoraLayer, adapter: str, key_prefix: str) -> dict[str, Tensor]:
    """The state-dict entries (``key_prefix`` + ``weight``, and ``bias`` with `lora_bias`) of `layer`'s base layer with
    `adapter` merged, as new CPU tensors computed as PEFT's unsafe `merge` (`merge_and_unload`'s) computes them."""
    base_layer = layer.get_base_layer()
    if adapter in layer.lora_variant:  # DoRA and other variants merge by their own rule, on the weight's device
        weight = base_layer.weight.detach().clone()
        layer.lora_variant[adapter].merge_unsafe(layer, adapter, weight)
        weight = weight.cpu()
    else:
        weight = base_layer.weight.detach().to("cpu", copy=True)
        delta = layer.get_delta_weight(adapter)
        if adapter in layer.lora_embedding_A:  # PEFT's Embedding.merge rounds the delta to the weight's dtype first
            delta = delta.to(weight.dtype)
        weight += delta.cpu()  # in place, as PEFT: computed in the promoted dtype, then cast
    merged = {f"{key_prefix}weight": weight}
    if layer.lora_bias[adapter]:
        bias = base_layer.bias.detach().to("cpu", copy=True)
        bias += (layer.lora_B[adapter].bias * layer.scaling[adapter]).cpu()
        merged[f"{key_prefix}bias"] = bias
    return merged
