"""Training of MAPLE embedders: the RPA and InfoNCE losses, `RPAConfig` and `RPATrainer` (a `trl.DPOTrainer`).

The losses need only torch and are imported eagerly; the trainer side (TRL, transformers, datasets) is imported on
first use, so `from trainer.losses import ...` (e.g. in every process of a distributed test) stays cheap.
"""

import importlib

from .losses import (
    RPA_LOSSES,
    bidirectional_rpa_loss,
    contrastive_loss,
    maple_loss,
    preference_agreement,
    rpa_listwise_loss,
    rpa_pairwise_loss,
)

_LAZY_ATTRIBUTES = {
    "DataCollatorForEmbeddingPreference": ".collator",
    "PREFERENCE_COLUMNS": ".schema",
    "PREFERENCE_FEATURES": ".schema",
    "RPAConfig": ".rpa_config",
    "RPATrainer": ".rpa_trainer",
    "UndecodableImageError": ".schema",
    "validate_preference_dataset": ".schema",
}

__all__ = [
    "RPA_LOSSES",
    "bidirectional_rpa_loss",
    "contrastive_loss",
    "maple_loss",
    "preference_agreement",
    "rpa_listwise_loss",
    "rpa_pairwise_loss",
    *_LAZY_ATTRIBUTES,
]


def __getattr__(name: str):
    if name in _LAZY_ATTRIBUTES:
        return getattr(importlib.import_module(_LAZY_ATTRIBUTES[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    # the lazy names are not in the module's namespace until first used: list them for dir() and completion
    return sorted(__all__)
