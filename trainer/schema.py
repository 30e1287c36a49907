"""The preference dataset schema (shared with `dataset_builders`) and its validation.

One row per anchor::

    id: string
    image: Image                       # anchor image
    caption: string                    # anchor caption
    candidate_images: List(Image)      # anchor image first, then its hard-negative images
    candidate_texts: List(string)      # anchor caption first, then generated captions
    txt2img_scores: List(float32)      # judge alpha(caption, candidate_images[j])
    img2txt_scores: List(float32)      # judge alpha(image, candidate_texts[j])

`PREFERENCE_FEATURES` is the one definition of this schema: `dataset_builders` and `trainer.testing` import it.

Validation runs before training so a bad row fails in seconds, not hours in, and the error names the column, the
row id and what was expected.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import pyarrow.compute as pc
from datasets import Dataset, Features, Image, IterableDataset, List, Value

PREFERENCE_FEATURES = Features(
    {
        "id": Value("string"),
        "image": Image(),
        "caption": Value("string"),
        "candidate_images": List(Image()),
        "candidate_texts": List(Value("string")),
        "txt2img_scores": List(Value("float32")),
        "img2txt_scores": List(Value("float32")),
    }
)
"""The preference dataset schema, one row per anchor (see the module docstring)."""
PREFERENCE_COLUMNS = tuple(PREFERENCE_FEATURES)
# each candidate list and the judge scores that rank it
SCORED_CANDIDATES = {"candidate_images": "txt2img_scores", "candidate_texts": "img2txt_scores"}

_ARROW_BATCH_ROWS = 10_000


def check_columns(column_names: Iterable[str], dataset_name: str) -> None:
    """Raises if a column of the schema is missing."""
    missing = [column for column in PREFERENCE_COLUMNS if column not in set(column_names)]
    if missing:
        raise ValueError(
            f"The {dataset_name} dataset lacks column(s) {missing}; a MAPLE preference dataset has the columns "
            f"{list(PREFERENCE_COLUMNS)} (see trainer/schema.py)."
        )


def check_rows(
    ids: Sequence[Any],
    candidate_counts: dict[str, Sequence[int]],
    judge_scores: dict[str, Sequence[Sequence[float] | None]],
    dataset_name: str,
) -> None:
    """Checks a batch of rows: every candidate list is non-empty, each score list is as long as its candidate list,
    and every score is a number in [0, 1].

    Args:
        ids: the rows' `id` values.
        candidate_counts: per candidate column, the length of each row's list (None for a missing list).
        judge_scores: per score column, each row's scores.
        dataset_name: names the dataset in errors ("train", "eval", ...).
    """
    for candidate_column, score_column in SCORED_CANDIDATES.items():
        for row_id, count, scores in zip(ids, candidate_counts[candidate_column], judge_scores[score_column]):
            where = f"{dataset_name} dataset, row id {row_id!r}"
            if not count:
                raise ValueError(f"{where}: column {candidate_column!r} is empty; expected at least the anchor itself.")
            if scores is None or len(scores) != count:
                raise ValueError(
                    f"{where}: column {score_column!r} has {0 if scores is None else len(scores)} scores, expected "
                    f"{count} (one per entry of {candidate_column!r})."
                )
            for position, score in enumerate(scores):
                if score is None or not math.isfinite(score) or not 0.0 <= score <= 1.0:
                    raise ValueError(
                        f"{where}: column {score_column!r}[{position}] is {score}; expected a judge probability in "
                        "[0, 1]."
                    )


def validate_preference_dataset(dataset: Dataset | IterableDataset, dataset_name: str) -> None:
    """Checks the columns and, for a map-style `Dataset`, every row (without decoding images). Rows of an
    `IterableDataset` are checked batch by batch by the collator instead, as they stream in."""
    check_columns(dataset.column_names or next(iter(dataset)).keys(), dataset_name)
    if not isinstance(dataset, Dataset):
        return
    columns = ["id", *SCORED_CANDIDATES, *SCORED_CANDIDATES.values()]
    arrow_rows = dataset.select_columns(columns).with_format("arrow")
    for batch in arrow_rows.iter(batch_size=_ARROW_BATCH_ROWS):
        check_rows(
            ids=batch["id"].to_pylist(),
            candidate_counts={
                column: pc.list_value_length(batch[column]).to_pylist() for column in SCORED_CANDIDATES
            },
            judge_scores={column: batch[column].to_pylist() for column in SCORED_CANDIDATES.values()},
            dataset_name=dataset_name,
        )
