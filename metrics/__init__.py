"""`evaluate` modules for MAPLE's metrics, one folder each, loadable offline:

    import evaluate
    recall = evaluate.load(str(metric_path("retrieval_recall")))

or `evaluation.load_metric("retrieval_recall")`. Each module wraps the plain function of the same
name in `evaluation.metrics`, where the metric is defined.
"""

from pathlib import Path

METRIC_NAMES: tuple[str, ...] = ("retrieval_recall", "group_scores", "modality_gap")


def metric_path(name: str) -> Path:
    """The folder of the `evaluate` module `name` (pass it to `evaluate.load`)."""
    if name not in METRIC_NAMES:
        raise ValueError(f"unknown MAPLE metric {name!r}; expected one of {METRIC_NAMES}")
    return Path(__file__).parent / name
