"""The keys of the metrics MAPLE reports, defined once for result dicts, tables, model cards and logs.

A light module (no torch), so the CLI and the model cards can import it cheaply.
"""

from collections.abc import Callable, Sequence

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)
# Recall@k in both directions, as `evaluation.protocols.evaluate_retrieval` names them
RETRIEVAL_METRICS: tuple[str, ...] = tuple(f"{direction}_r{k}" for direction in ("i2t", "t2i") for k in DEFAULT_KS)
# Winoground's scores, as `evaluation.metrics.group_score_hits` names them
QUADRUPLE_SCORES: tuple[str, ...] = ("text_score", "image_score", "group_score")
# The subset the results tables (`maple eval`'s results.md, the model card) name a quadruple benchmark's scores over all
# its quadruples, in the column of its categories: so no category may be named so, in any case
OVERALL_SUBSET = "all"


def refuse_overall_subset(categories: Sequence[str], place: Callable[[int], str], error: type[ValueError]) -> None:
    """Raise `error` naming (`place`) the first of `categories` that is `OVERALL_SUBSET` in any case ("All" too): the
    results tables would show it as a second row of all the quadruples' scores, or as one told from it by case alone
    (and a benchmark's categories, read lower-cased, would merge with it)."""
    row = next((row for row, category in enumerate(categories) if category.lower() == OVERALL_SUBSET), None)
    if row is not None:
        raise error(
            f"{place(row)}: category {categories[row]!r} is, in any case, the name of the results' row for all the "
            f"quadruples ({OVERALL_SUBSET!r}); rename the category"
        )
