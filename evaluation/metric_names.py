"""The keys of the metrics MAPLE reports, defined once for result dicts, tables, model cards and logs.

A light module (no torch), so the CLI and the model cards can import it cheaply.
"""

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)
# Recall@k in both directions, as `evaluation.protocols.evaluate_retrieval` names them
RETRIEVAL_METRICS: tuple[str, ...] = tuple(f"{direction}_r{k}" for direction in ("i2t", "t2i") for k in DEFAULT_KS)
# Winoground's scores, as `evaluation.metrics.group_score_hits` names them
QUADRUPLE_SCORES: tuple[str, ...] = ("text_score", "image_score", "group_score")
# The subset the results tables (`maple eval`'s results.md, the model card) name a quadruple benchmark's scores over all
# its quadruples, in the column of its categories: so no category may be named so
OVERALL_SUBSET = "all"
