"""The paper's parameter-efficient set-up for MAPLE embedders (arXiv 2506.06970, section 4.1).

LoRA (rank 32, alpha 32 in the paper) on the language model of an MLLM backbone; the vision
encoder and the vision-language connector stay frozen. For a dual encoder, LoRA goes on the
attention projections of both towers. MAPLE's own projection heads are trained in full and saved
with the adapter (`modules_to_save`).

```python
from modeling_maple.lora import maple_lora_config
from peft import PeftModel, get_peft_model

peft_model = get_peft_model(model, maple_lora_config(model))  # or RPATrainer(..., peft_config=...)
peft_model.save_pretrained("adapter")                          # adapter + projection heads
reloaded = PeftModel.from_pretrained(base_model, "adapter")    # same embeddings
merged = reloaded.merge_and_unload()                            # a plain MapleModel, same embeddings
```
The two logit scales (InfoNCE temperature, RPA beta) are plain parameters, not modules, so an
adapter does not carry them; they do not change embeddings, and a merged model saves them.
"""

from peft import LoraConfig

from .configuration_maple import MapleConfig
from .modeling_maple import MapleModel

# Attention and MLP projections of the MLLM's language model (`language_model`; Idefics3/SmolVLM:
# `text_model`). Anchoring on it leaves out vision towers whose layers share these names (LLaVA's CLIP,
# InternVL's and Idefics3's ViTs) and the vision-language connectors.
MLLM_LORA_TARGETS = r".*\.(language_model|text_model)\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
# Attention projections of CLIP/SigLIP-style (`*_proj`) and BERT-style (`query`/`key`/`value`) towers.
# SigLIP's pooling head is excluded: its `head.attention` is a `torch.nn.MultiheadAttention`, which
# reads `out_proj.weight` directly, so a LoRA layer there would never be used or trained.
DUAL_ENCODER_LORA_TARGETS = (
    r".*(vision_tower|text_tower)\.(?!(.*\.)?head\.attention\.).*\.(q_proj|k_proj|v_proj|out_proj|query|key|value)"
)


def maple_lora_config(
    model_or_config: MapleModel | MapleConfig,
    r: int = 32,
    lora_alpha: int = 32,
    lora_dropout: float = 0.05,
    **lora_kwargs,
) -> LoraConfig:
    """A `peft.LoraConfig` for the paper's set-up (rank and alpha 32 by default; vision side frozen).

    Args:
        model_or_config: the MAPLE model (or its config) to adapt.
        r, lora_alpha, lora_dropout: LoRA rank, scaling numerator and dropout.
        lora_kwargs: any other `LoraConfig` field, overriding the defaults here.
    """
    config = model_or_config.config if isinstance(model_or_config, MapleModel) else model_or_config
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


__all__ = ["maple_lora_config", "MLLM_LORA_TARGETS", "DUAL_ENCODER_LORA_TARGETS"]
