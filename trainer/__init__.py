"""Training of MAPLE embedders: the RPA and InfoNCE losses, `RPAConfig` and `RPATrainer` (a `trl.DPOTrainer`)."""

from .collator import DataCollatorForEmbeddingPreference
from .losses import contrastive_loss, preference_agreement, rpa_listwise_loss, rpa_pairwise_loss
from .rpa_config import RPAConfig
from .rpa_trainer import RPATrainer
from .schema import PREFERENCE_COLUMNS, validate_preference_dataset

__all__ = [
    "PREFERENCE_COLUMNS",
    "DataCollatorForEmbeddingPreference",
    "RPAConfig",
    "RPATrainer",
    "contrastive_loss",
    "preference_agreement",
    "rpa_listwise_loss",
    "rpa_pairwise_loss",
    "validate_preference_dataset",
]
