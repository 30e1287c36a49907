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

import pyarrow as pa
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
# the columns the model embeds, with what each value (each entry, for the candidate lists) must be; None is not one
CONTENT_COLUMNS = {
    "caption": "a string",
    "image": "an image",
    "candidate_texts": "a string",
    "candidate_images": "an image",
}

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
    missing: dict[str, Sequence[int | None]],
    dataset_name: str,
) -> None:
    """Checks a batch of rows: every candidate list is non-empty, each score list is as long as its candidate list,
    every score is a number in [0, 1], and no caption, image or candidate is missing (None).

    Args:
        ids: the rows' `id` values.
        candidate_counts: per candidate column, the length of each row's list (None for a missing list).
        judge_scores: per score column, each row's scores.
        missing: per column of `CONTENT_COLUMNS`, each row's first missing entry: its position in a candidate list,
            0 for a missing caption or image, None when nothing is missing (see `first_missing`).
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
    for column, expected in CONTENT_COLUMNS.items():
        for row_id, position in zip(ids, missing[column]):
            if position is not None:
                entry = f"{column!r}[{position}]" if column in SCORED_CANDIDATES else repr(column)
                raise ValueError(
                    f"{dataset_name} dataset, row id {row_id!r}: column {entry} is None; expected {expected}."
                )


def first_missing(value: Any) -> int | None:
    """A row value's first missing entry for `check_rows`: the position of the first None in a list, 0 when the value
    itself is None, None when nothing is missing."""
    if value is None:
        return 0
    if isinstance(value, list):
        return next((position for position, item in enumerate(value) if item is None), None)
    return None


def validate_preference_dataset(dataset: Dataset | IterableDataset, dataset_name: str) -> None:
    """Checks the columns and, for a map-style `Dataset`, every row (without decoding images). Rows of an
    `IterableDataset` are checked batch by batch by the collator instead, as they stream in."""
    check_columns(dataset.column_names or next(iter(dataset)).keys(), dataset_name)
    if not isinstance(dataset, Dataset):
        return
    columns = ["id", *CONTENT_COLUMNS, *SCORED_CANDIDATES.values()]
    arrow_rows = dataset.select_columns(columns).with_format("arrow")
    for batch in arrow_rows.iter(batch_size=_ARROW_BATCH_ROWS):
        check_rows(
            ids=batch["id"].to_pylist(),
            candidate_counts={
                column: pc.list_value_length(batch[column]).to_pylist() for column in SCORED_CANDIDATES
            },
            judge_scores={column: batch[column].to_pylist() for column in SCORED_CANDIDATES.values()},
            missing={column: _first_missing(batch[column]) for column in CONTENT_COLUMNS},
            dataset_name=dataset_name,
        )


def _first_missing(column: pa.ChunkedArray) -> list[int | None]:
    """`first_missing` of each row of an Arrow column, without converting its values (images stay undecoded)."""
    if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)):
        return [0 if null else None for null in pc.is_null(column).to_pylist()]
    nulls = pc.is_null(pc.list_flatten(column))  # the entries of all rows, in order (a null list has none)
    if not pc.any(nulls).as_py():
        return [None] * len(column)
    nulls, start, first = nulls.to_pylist(), 0, []
    for length in pc.list_value_length(column).fill_null(0).to_pylist():
        entries = nulls[start : start + length]
        first.append(entries.index(True) if True in entries else None)
        start += length
    return first
