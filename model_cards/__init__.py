"""Model and dataset cards for MAPLE, filled from real run data (see `cards.py`)."""

from .cards import (
    base_model_license,
    dataset_card_from_stats,
    model_card_from_run,
    render_evaluation_section,
    with_eval_results,
)

__all__ = ["base_model_license", "dataset_card_from_stats", "model_card_from_run", "render_evaluation_section", "with_eval_results"]
