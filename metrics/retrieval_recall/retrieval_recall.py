"""Recall@k and MRR of similarity rows against the indices of the relevant candidates."""

import datasets
import evaluate

from evaluation.metrics import DEFAULT_KS, relevant_entry_indices, retrieval_recall
from maple import PAPER_CITATION

_DESCRIPTION = """
Cross-modal retrieval recall. Each prediction is one query's similarity row over all candidates
(higher = more similar); its reference lists the indices of the relevant candidates (one image
for text->image, the 5 captions of an image for image->text on COCO). recall@k is the percentage
(0-100) of queries with a relevant candidate among the k best; mrr is 100 x the mean reciprocal
rank of the best-ranked relevant candidate. Ties count against the query: a relevant candidate
that ties with an irrelevant one ranks after it.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of similarity rows, one per query, each of length num_candidates.
    references: list of lists of relevant candidate indices, one list per query.
    ks: the cut-offs k to report (default 1, 5, 10).
Returns:
    {"recall@1": float, "recall@5": float, "recall@10": float, "mrr": float}, each in [0, 100].
Example:
    >>> recall = evaluate.load("metrics/retrieval_recall")
    >>> recall.compute(predictions=[[0.9, 0.1], [0.3, 0.8]], references=[[0], [1]], ks=[1])
    {'recall@1': 100.0, 'mrr': 100.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RetrievalRecall(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=PAPER_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float64")),
                    "references": datasets.Sequence(datasets.Value("int64")),
                }
            ),
        )

    # datasets casts each reference to int64 as it stores it: 1.5, 0.9, -0.5, True and "1" were the indices 1, 0, 0, 1
    # and 1, silently, where `retrieval_recall` refuses them. So they are checked as they are added (`compute` with
    # inputs adds them too), each query named by its place in its batch.
    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Add a batch of similarity rows and their relevant candidate indices, checked to be indices."""
        _check_references_given(predictions, references)
        if references is not None:
            for query, entry in enumerate(references.tolist() if hasattr(references, "tolist") else references):
                relevant_entry_indices(entry, query)
        super().add_batch(predictions=predictions, references=references, **kwargs)

    def add(self, *, prediction=None, reference=None, **kwargs):
        """Add one similarity row and its relevant candidate indices, checked to be indices."""
        _check_references_given(prediction, reference)
        if reference is not None:
            relevant_entry_indices(reference)
        super().add(prediction=prediction, reference=reference, **kwargs)

    def _compute(self, predictions, references, ks=DEFAULT_KS):
        return retrieval_recall(predictions, references, ks=ks)


def _check_references_given(predictions, references) -> None:
    """A ValueError for predictions added without their references: evaluate failed with "object of type 'NoneType'
    has no len()", or, for one added by `add`, only at `compute`."""
    if predictions is not None and references is None:
        raise ValueError("retrieval_recall: predictions without references (the relevant candidate indices of each query)")
