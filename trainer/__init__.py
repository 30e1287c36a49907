"""Training of MAPLE embedders: the RPA and InfoNCE losses, `RPAConfig` and `RPATrainer` (a `trl.DPOTrainer`)."""

from .losses import contrastive_loss, rpa_listwise_loss, rpa_pairwise_loss

__all__ = ["contrastive_loss", "rpa_listwise_loss", "rpa_pairwise_loss"]
