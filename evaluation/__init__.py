"""MAPLE evaluation: the paper's metrics and benchmark protocols.

Light to import: `evaluate`, `datasets` and the model code are imported only by the functions
that need them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .metrics import (
    group_scores,
    modality_gap_from_quadruples,
    modality_gap_from_scores,
    retrieval_recall,
    wasserstein_1d,
)
from .retrieval import chunked_ranks, chunked_retrieval_recall, chunked_topk

if TYPE_CHECKING:
    import evaluate


def load_metric(name: str) -> "evaluate.EvaluationModule":
    """One of MAPLE's `evaluate` modules ("retrieval_recall", "group_scores", "modality_gap"),
    loaded offline from the installed `metrics` package."""
    import evaluate

    from metrics import metric_path

    return evaluate.load(str(metric_path(name)))


__all__ = [
    "chunked_ranks",
    "chunked_retrieval_recall",
    "chunked_topk",
    "group_scores",
    "load_metric",
    "modality_gap_from_quadruples",
    "modality_gap_from_scores",
    "retrieval_recall",
    "wasserstein_1d",
]
