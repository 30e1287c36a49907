"""The `evaluate` modules load offline from their folders and return the plain functions' values."""

import re

import pytest

evaluate = pytest.importorskip("evaluate")

from evaluation import load_metric  # noqa: E402
from metrics import metric_path  # noqa: E402


def test_retrieval_recall_module():
    recall = load_metric("retrieval_recall")
    result = recall.compute(
        predictions=[[0.1, 0.7, 0.8, 0.2], [0.9, 0.3, 0.2, 0.4]], references=[[0, 1], [2, 3]], ks=[1, 2]
    )
    assert result == pytest.approx({"recall@1": 0.0, "recall@2": 100.0, "mrr": 50.0})


def test_group_scores_module_accumulates_batches():
    scores = evaluate.load(str(metric_path("group_scores")))
    scores.add_batch(predictions=[[1.0, 0.0, 0.0, 1.0]])
    scores.add_batch(predictions=[[1.0, 2.0, 0.0, 3.0]])
    assert scores.compute() == {"text_score": 50.0, "image_score": 100.0, "group_score": 50.0}


def test_modality_gap_module():
    gap = load_metric("modality_gap")
    result = gap.compute(predictions=[[0.3, 0.1, 0.2, 0.5]], text_text_similarities=[0.9])
    assert result == {"w_dist": 0.5, "w_disc": 0.25, "delta_gap": 2.0}  # as the docstring example shows it


def test_unknown_metric_name():
    with pytest.raises(ValueError, match="unknown MAPLE metric 'recall'"):
        metric_path("recall")


def test_retrieval_recall_module_reports_recall_at_1_5_and_10_by_default():
    recall = load_metric("retrieval_recall")
    result = recall.compute(predictions=[[float(i) for i in range(12)]], references=[[6]])
    assert result == pytest.approx({"recall@1": 0.0, "recall@5": 0.0, "recall@10": 100.0, "mrr": 100 / 6})


@pytest.mark.parametrize("name, extra", [("group_scores", {}), ("modality_gap", {"text_text_similarities": [0.9]})])
def test_quadruple_modules_refuse_a_prediction_that_is_not_four_similarities_when_it_is_added(name, extra):
    module = load_metric(name)
    with pytest.raises(ValueError, match="don't match the expected format"):
        module.add_batch(predictions=[[0.3, 0.1, 0.2]], **extra)


@pytest.mark.parametrize("reference", [[1.5], [0.9], [-0.5], [True], ["1"], [1.0]])
def test_retrieval_recall_module_refuses_references_that_are_not_indices_before_datasets_casts_them(reference):
    """datasets cast each reference to int64 as it stored it: [0.9] (a relevance score, say) was candidate 0 and
    scored recall@1 100, [1.5] candidate 1, True candidate 1, silently; `retrieval_recall` refuses them all."""
    recall = load_metric("retrieval_recall")
    message = re.escape(f"relevant indices: query 1 has {reference!r}; expected a candidate index or a list of them")
    with pytest.raises(TypeError, match=message):
        recall.compute(predictions=[[0.9, 0.1], [0.9, 0.1]], references=[[0], reference])
    with pytest.raises(TypeError, match=r"^relevant indices: a query has "):
        recall.add(prediction=[0.9, 0.1], reference=reference)
    recall.add(prediction=[0.9, 0.1], reference=[1])
    assert recall.compute(ks=[1]) == {"recall@1": 0.0, "mrr": 50.0}


def test_retrieval_recall_module_names_predictions_added_without_references():
    """It failed with "object of type 'NoneType' has no len()" inside evaluate."""
    with pytest.raises(ValueError, match=r"^retrieval_recall: predictions without references"):
        load_metric("retrieval_recall").compute(predictions=[[0.9, 0.1]])
