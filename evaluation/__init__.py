"""MAPLE evaluation: the paper's metrics and benchmark protocols.

Light to import: names are resolved on first use (PEP 562), so `import evaluation.models` or
`maple eval --help` do not pay for torch, and `evaluate` is imported only by `load_metric`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import evaluate

# public name -> submodule defining it
_EXPORTS = {
    "group_scores": "metrics",
    "modality_gap_from_quadruples": "metrics",
    "modality_gap_from_scores": "metrics",
    "retrieval_recall": "metrics",
    "wasserstein_1d": "metrics",
    "chunked_ranks": "retrieval",
    "chunked_retrieval_recall": "retrieval",
    "chunked_topk": "retrieval",
    "evaluate_benchmark": "protocols",
    "evaluate_quadruples": "protocols",
    "evaluate_retrieval": "protocols",
    "quadruple_similarities": "protocols",
    "load_benchmark": "benchmarks",
    "load_embedder": "models",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'evaluation' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


def load_metric(name: str) -> "evaluate.EvaluationModule":
    """One of MAPLE's `evaluate` modules ("retrieval_recall", "group_scores", "modality_gap"),
    loaded offline from the installed `metrics` package."""
    import evaluate

    from metrics import metric_path

    return evaluate.load(str(metric_path(name)))


__all__ = sorted([*_EXPORTS, "load_metric"])
