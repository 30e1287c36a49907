"""The MAPLE paper's modality-gap ratio (1-Wasserstein) on image-text quadruples."""

import datasets
import evaluate

from evaluation.metrics import modality_gap_from_quadruples
from maple import PAPER_CITATION

_DESCRIPTION = """
Modality gap of an embedder on quadruples (I0, I1, T0, T1), after MAPLE (arXiv 2506.06970).
With W the 1-Wasserstein distance between two 1-D score distributions:
w_dist = W(matched image-text scores {s(I0,T0), s(I1,T1)}, text-text scores {s(T0,T1)}),
w_disc = W(matched scores, mismatched scores {s(I0,T1), s(I1,T0)}),
delta_gap = w_dist / w_disc (lower is better: cross-modal scores look like intra-modal ones while
matched and mismatched pairs stay apart). W values are on the score scale (the paper prints
them x100); delta_gap is scale-free.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: per quadruple the 4 image-text similarities [s(I0,T0), s(I0,T1), s(I1,T0), s(I1,T1)].
    text_text_similarities: per quadruple the text-text similarity s(T0, T1).
Returns:
    {"w_dist": float, "w_disc": float, "delta_gap": float}.
Example:
    >>> gap = evaluate.load("metrics/modality_gap")
    >>> gap.compute(predictions=[[0.3, 0.1, 0.2, 0.5]], text_text_similarities=[0.9])
    {'w_dist': 0.5, 'w_disc': 0.25, 'delta_gap': 2.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ModalityGap(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=PAPER_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float64"), length=4),
                    "text_text_similarities": datasets.Value("float64"),
                }
            ),
        )

    def _compute(self, predictions, text_text_similarities):
        return modality_gap_from_quadruples(predictions, text_text_similarities)
