"""Winoground text, image and group scores of image-text quadruples."""

import datasets
import evaluate

from evaluation.metrics import group_scores

_DESCRIPTION = """
Fine-grained matching on quadruples (I0, I1, T0, T1) where T0 describes I0 and T1 describes I1
(Winoground, NaturalBench, MMVP-VLM, BiVLC). With s(I, T) the model's image-text similarity:
text score = both images rank their own caption first, s(I0,T0) > s(I0,T1) and s(I1,T1) > s(I1,T0);
image score = both captions rank their own image first, s(I0,T0) > s(I1,T0) and s(I1,T1) > s(I0,T1);
group score = both. Reported as percentages (0-100) of quadruples; ties count as failures.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: per quadruple the 4 similarities [s(I0,T0), s(I0,T1), s(I1,T0), s(I1,T1)].
Returns:
    {"text_score": float, "image_score": float, "group_score": float}, each in [0, 100].
Example:
    >>> scores = evaluate.load("metrics/group_scores")
    >>> scores.compute(predictions=[[1.0, 0.0, 0.0, 1.0], [1.0, 2.0, 0.0, 3.0]])
    {'text_score': 50.0, 'image_score': 100.0, 'group_score': 50.0}
"""

_CITATION = """
@inproceedings{thrush2022winoground,
  title = {Winoground: Probing Vision and Language Models for Visio-Linguistic Compositionality},
  author = {Thrush, Tristan and Jiang, Ryan and Bartolo, Max and Singh, Amanpreet and Williams, Adina and Kiela, Douwe and Ross, Candace},
  booktitle = {CVPR},
  year = {2022}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class GroupScores(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("float64"), length=4)}),
        )

    def _compute(self, predictions):
        return group_scores(predictions)
