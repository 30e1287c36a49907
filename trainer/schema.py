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

Validation runs before training so a bad column or row fails in seconds, not hours in, and the error names the
column, the row id and what was expected. What cannot be checked up front without decoding every image, an image
that does not decode when the data loader fetches it, becomes an `UndecodableImageError` pointing to
`first_undecodable_image`; rows that RPA can learn nothing from are counted and warned about.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import numbers
import os
import re
import reprlib
import traceback
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import PIL.Image
import pyarrow as pa
import pyarrow.compute as pc
from datasets import (
    Dataset,
    DatasetDict,
    Features,
    Image,
    IterableDataset,
    IterableDatasetDict,
    Json,
    LargeList,
    List,
    Value,
)
from transformers.utils import logging

logger = logging.get_logger(__name__)

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
# the columns the model embeds, with the type each value (each entry, for the candidate lists) must have, and its
# name in errors; None is not one, nor a blank string
CONTENT_COLUMNS = {
    "caption": (str, "a non-empty string"),
    "image": (PIL.Image.Image, "an image"),
    "candidate_texts": (str, "a non-empty string"),
    "candidate_images": (PIL.Image.Image, "an image"),
}

# the feature that turns a column of image file paths into images, for errors
_IMAGE_CASTS = {"image": "datasets.Image()", "candidate_images": "datasets.List(datasets.Image())"}
_ARROW_BATCH_ROWS = 10_000
# The map-style datasets whose rows passed, as objects (held weakly): `maple train` validates before loading the model
# and hands the same object to `RPATrainer`, which would read every row again. Not by fingerprint: `map` keeps one
# for other rows when its function reads outside state, or when the caller names it (`new_fingerprint`).
_VALIDATED_DATASETS: weakref.WeakSet[Dataset] = weakref.WeakSet()


def _missing_columns(column_names: Iterable[str]) -> str | None:
    """"lacks column(s) [...]; ..." naming the columns of the schema not among `column_names`, or None."""
    present = set(column_names)
    if missing := [column for column in PREFERENCE_COLUMNS if column not in present]:
        return (f"lacks column(s) {missing}; a MAPLE preference dataset has the columns {list(PREFERENCE_COLUMNS)} "
                "(see trainer/schema.py).")
    return None


def check_columns(column_names: Iterable[str], dataset_name: str) -> None:
    """Raises if a column of the schema is missing."""
    if problem := _missing_columns(column_names):
        raise ValueError(f"The {dataset_name} dataset {problem}")


def check_features(features: Features, dataset_name: str) -> None:
    """Raises if a column of the schema holds values of another type than `PREFERENCE_FEATURES` says. Any string type
    passes for text, any integer or float type for scores, integers for ids (the collator formats ids as strings),
    `LargeList` (as polars writes parquet lists) for `List`."""
    for column, expected in PREFERENCE_FEATURES.items():
        kind = _feature_kind(features[column])
        if kind == _feature_kind(expected) or (column == "id" and kind == "number"):
            if "image" in kind and not image_feature(features[column]).decode:
                raise ValueError(
                    f"The {dataset_name} dataset's column {column!r} has type {features[column]!r}: images left "
                    f"encoded; decode them: dataset.cast_column({column!r}, {_IMAGE_CASTS[column]})."
                )
            continue
        hint = ""
        if column in _IMAGE_CASTS:
            hint = f" If it holds image file paths, cast it: dataset.cast_column({column!r}, {_IMAGE_CASTS[column]})."
        if isinstance(image_feature(features[column]), Json):
            # `datasets` reads a JSON column of mixed types as Json and keeps no trace of the rows of the other type
            hint += (" Its rows hold values of more than one type (in a JSON Lines file, say, a score written as a "
                     "string in some rows): write every value as the expected type.")
        raise ValueError(
            f"The {dataset_name} dataset's column {column!r} has type {features[column]!r}; expected {expected!r} "
            f"(see trainer/schema.py).{hint}"
        )


def image_feature(feature: Any) -> Any:
    """The feature of each image a column holds: a list column's item feature (`List`, or `LargeList` as polars writes
    parquet lists), else the column's own feature (`None` too) as it is."""
    return feature.feature if isinstance(feature, (List, LargeList)) else feature


def with_image_decode(feature: Image | List | LargeList, decode: bool) -> Image | List | LargeList:
    """An image feature, or a list feature of images, that decodes its images or not, all else (the images' mode, the
    list's kind and length) kept."""
    if isinstance(feature, (List, LargeList)):
        return dataclasses.replace(feature, feature=dataclasses.replace(feature.feature, decode=decode))
    return dataclasses.replace(feature, decode=decode)


def _feature_kind(feature: Any) -> str:
    """What a column holds, as `check_features` compares it: "string", "number", "image", "list of ..." or, for any
    other feature, the feature itself."""
    if isinstance(feature, (List, LargeList)):
        return f"list of {_feature_kind(feature.feature)}"
    if isinstance(feature, Image):
        return "image"
    if isinstance(feature, Value):
        if any(is_type(feature.pa_type) for is_type in (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)):
            return "string"
        if pa.types.is_integer(feature.pa_type) or pa.types.is_floating(feature.pa_type):
            return "number"
    return repr(feature)


def check_rows(
    ids: Sequence[Any],
    candidate_counts: dict[str, Sequence[int]],
    judge_scores: dict[str, Sequence[Sequence[float] | None]],
    invalid: dict[str, Sequence[tuple[int, str] | None]],
    dataset_name: str,
    first_row: int | None = None,
    previous_id: Any = None,
) -> None:
    """Checks a batch of rows: every row has an id (not None, blank or NaN: it names the row in errors and seeds its
    candidate draws), every candidate list is non-empty, each score list is as long as its candidate list, every score
    is a number in [0, 1], and every caption, image and candidate is a string or an image (not None).

    Args:
        ids: the rows' `id` values.
        candidate_counts: per candidate column, the length of each row's list (None for a missing list).
        judge_scores: per score column, each row's scores.
        invalid: per column of `CONTENT_COLUMNS`, each row's first invalid entry, as its position in a candidate list
            (0 for a caption or image) and what it is ("None", ...); None when every entry is valid (see
            `first_invalid`).
        dataset_name: names the dataset in errors ("train", "eval", ...).
        first_row: the position of the first row in the dataset, to name a row without an id by its position (rows
            of a stream have none).
        previous_id: the id of the row before the first, if any.
    """
    for position, row_id in enumerate(ids):
        # a NaN id is no name either, and every NaN row would draw the same candidates ("nan" seeds them)
        blank = isinstance(row_id, str) and not row_id.strip()
        if row_id is None or blank or (isinstance(row_id, numbers.Real) and math.isnan(row_id)):
            before = ids[position - 1] if position else previous_id
            if before is None:
                where = "the first row" if first_row == 0 else "the first row of a batch"
            else:
                where = f"the row after id {before!r}"
            if first_row is not None:
                where = f"row {first_row + position} ({where})"
            raise ValueError(
                f"{dataset_name} dataset, {where}: column 'id' is {_described(row_id)}; expected a non-empty string "
                "or a number (not NaN), which names the row in errors and seeds its candidate draws."
            )
    for candidate_column, score_column in SCORED_CANDIDATES.items():
        for row_id, count, scores in zip(ids, candidate_counts[candidate_column], judge_scores[score_column]):
            where = f"{dataset_name} dataset, row id {row_id!r}"
            if not count:  # a null list is no list at all, not an empty one
                found = "None (no list)" if count is None else "empty"
                raise ValueError(f"{where}: column {candidate_column!r} is {found}; expected a list holding at least the "
                                 "anchor itself.")
            if scores is None or len(scores) != count:
                found = "is None (no list)" if scores is None else f"has {len(scores)} scores"
                raise ValueError(f"{where}: column {score_column!r} {found}, expected {count} scores (one per entry of "
                                 f"{candidate_column!r}).")
            for position, score in enumerate(scores):
                if (not isinstance(score, numbers.Real) or isinstance(score, bool) or not math.isfinite(score)
                        or not 0.0 <= score <= 1.0):
                    raise ValueError(
                        f"{where}: column {score_column!r}[{position}] is {score!r}; expected a judge probability "
                        "in [0, 1]."
                    )
    for column, (_, expected) in CONTENT_COLUMNS.items():
        for row_id, first in zip(ids, invalid[column]):
            if first is not None:
                position, found = first
                entry = f"{column!r}[{position}]" if column in SCORED_CANDIDATES else repr(column)
                raise ValueError(
                    f"{dataset_name} dataset, row id {row_id!r}: column {entry} is {found}; expected {expected}."
                )


def check_row_columns(examples: Sequence[dict[str, Any]], dataset_name: str) -> None:
    """Checks that rows the collator gets have every column of the schema and that their candidate and score columns
    hold lists (or None, which `check_rows` names): rows of a stream without features arrive untyped (its columns
    were checked on its first row only), and a lone string would be counted by its characters, a lone image or score
    fail in `len`."""
    for position, example in enumerate(examples):
        if problem := _missing_columns(example):
            if "id" in example:
                where = f"row id {example['id']!r}"
            else:
                where = f"the row after id {examples[position - 1]['id']!r}" if position else "a row without an id"
            raise ValueError(f"{dataset_name} dataset, {where}: {problem}")
        for column in (*SCORED_CANDIDATES, *SCORED_CANDIDATES.values()):
            value = example[column]
            if value is not None and not isinstance(value, list):
                raise ValueError(
                    f"{dataset_name} dataset, row id {example['id']!r}: column {column!r} is {_described(value)}; "
                    "expected a list, one entry per candidate (the anchor's own first)."
                )


def first_invalid(value: Any, column: str) -> tuple[int, str] | None:
    """A row value's first invalid entry for `check_rows`: in a column of `CONTENT_COLUMNS`, the first entry (the
    value itself for a caption or image) that is not a non-blank string / an image, as its position (0 for a caption
    or image) and what it is; None when every entry is valid."""
    entries = value if column in SCORED_CANDIDATES and isinstance(value, list) else [value]
    expected_type, _ = CONTENT_COLUMNS[column]
    for position, entry in enumerate(entries):
        if expected_type is str:
            valid = isinstance(entry, str) and bool(entry.strip())
        else:  # an image, decoded or left encoded (see `trainer.collator.with_images_left_encoded`)
            valid = isinstance(entry, expected_type) or _is_encoded_image(entry)
        if not valid:
            return position, _described(entry)
    return None


def _is_encoded_image(entry: Any) -> bool:
    """Whether a value is an image as an `Image(decode=False)` column gives it: {"bytes", "path"}, one of them set."""
    return (isinstance(entry, dict) and {"bytes", "path"} <= entry.keys()
            and (entry["bytes"] is not None or entry["path"] is not None))


def _described(entry: Any) -> str:
    """An invalid entry as errors show it."""
    if entry is None:
        return "None"
    if isinstance(entry, str) and not entry.strip():
        return f"a blank string {entry!r}" if entry else "an empty string"
    return f"{reprlib.repr(entry)} ({type(entry).__name__})"


def first_undecodable_image(dataset: Dataset | IterableDataset, dataset_name: str = "train") -> str | None:
    """Where the first image of `dataset` that does not decode is (corrupt or truncated bytes, a missing file), as
    "<dataset_name> dataset, row id ..., column ...: <error>"; None if every image decodes. Decodes every image, with
    the dataset's own image features (mode, Hub token): a diagnosis for a run that stopped on one, not a check to run
    before every training."""
    columns = ("image", "candidate_images")
    decoders = {column: _image_decoder(dataset.features[column] if dataset.features else None) for column in columns}
    undecoded = dataset.select_columns(["id", *columns])
    if isinstance(undecoded, IterableDataset):
        rows = iter(undecoded.decode(False) if undecoded.features else undecoded)
    else:  # Arrow rows: images as stored ({"bytes", "path"}), nothing decoded or copied
        rows = (row for batch in undecoded.with_format("arrow").iter(batch_size=1_000) for row in batch.to_pylist())
    previous_id = None
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return None
        except Exception as error:  # a stream without features decodes its images before they reach us
            where = "its first row" if previous_id is None else f"the row after id {previous_id!r}"
            return f"{dataset_name} dataset, {where}: {type(error).__name__}: {error}"
        previous_id = row["id"]
        for column, decoder in decoders.items():
            values = row[column] if column == "candidate_images" else [row[column]]
            for position, value in enumerate(values):
                if isinstance(value, PIL.Image.Image):  # a stream without features yields what its source holds
                    continue
                try:
                    decoder.decode_example(value)
                except Exception as error:  # PIL and file errors alike: this entry cannot be used
                    entry = f"{column!r}[{position}]" if column == "candidate_images" else repr(column)
                    return f"{dataset_name} dataset, row id {row['id']!r}, column {entry}: {type(error).__name__}: {error}"


class UndecodableImageError(ValueError):
    """An image of a split does not decode while the data loader fetches rows; `split` names the split, and
    `first_undecodable_image` its row."""

    def __init__(self, message: str, split: str):
        super().__init__(message)
        self.split = split

    def __reduce__(self):  # pickled with its split: a data-loader or demo worker sends it to the main process
        return type(self), (str(self), self.split), self.__dict__


@contextlib.contextmanager
def naming_undecodable_images(split: str):
    """Turns an error PIL raises while the data loader fetches rows (`datasets` decodes the images then, so the error
    names no row) into one that points to `first_undecodable_image`, which finds the row by decoding
    every image: too slow to run unasked on a large dataset. Other errors pass unchanged."""
    try:
        yield
    except (OSError, PIL.Image.DecompressionBombError) as error:
        # raised in PIL, here or (its traceback in the message) in a data loader worker
        in_pil = re.compile(r"[\\/]PIL[\\/]")
        from_pil = any(in_pil.search(frame.filename) for frame in traceback.extract_tb(error.__traceback__))
        if not (from_pil or in_pil.search(str(error))):
            raise
        raise UndecodableImageError(
            f"An image of the {split} dataset does not decode ({type(error).__name__}: {' '.join(str(error).split())[:300]}): "
            f"trainer.schema.first_undecodable_image(dataset, {split!r}) names the first such row.",
            split,
        ) from error


def _image_decoder(feature: Any) -> Image:
    """The `Image` feature that decodes a column's images as the dataset would: its own (its mode), decoding on."""
    image = image_feature(feature)
    return with_image_decode(image, True) if isinstance(image, Image) else Image()


def validate_preference_dataset(dataset: Dataset | IterableDataset, dataset_name: str) -> None:
    """Checks the columns and, for a map-style `Dataset`, every row (without decoding images), once per dataset object
    (datasets do not change in place). Rows of an `IterableDataset` are checked batch by batch by the collator instead,
    as they stream in."""
    if isinstance(dataset, (DatasetDict, IterableDatasetDict)):
        split = "train" if "train" in dataset else next(iter(dataset), "train")
        raise ValueError(
            f"The {dataset_name} dataset is a {type(dataset).__name__}: pass one split, e.g. dataset[{split!r}]; it "
            f"has splits {list(dataset)}."
        )
    check_columns(dataset.column_names or next(iter(dataset)).keys(), dataset_name)
    if dataset.features is not None:  # a stream may not know its features; its rows are typed by the collator
        check_features(dataset.features, dataset_name)
    if not isinstance(dataset, Dataset) or dataset in _VALIDATED_DATASETS:
        return
    columns = ["id", *CONTENT_COLUMNS, *SCORED_CANDIDATES.values()]  # images as stored: nothing is decoded
    arrow_rows = dataset.select_columns(columns).with_format("arrow")
    first_row, previous_id = 0, None
    for batch in arrow_rows.iter(batch_size=_ARROW_BATCH_ROWS):
        ids = batch["id"].to_pylist()
        check_rows(
            ids=ids,
            candidate_counts={
                column: pc.list_value_length(batch[column]).to_pylist() for column in SCORED_CANDIDATES
            },
            judge_scores={column: batch[column].to_pylist() for column in SCORED_CANDIDATES.values()},
            invalid={column: _first_missing(batch[column]) for column in CONTENT_COLUMNS},
            dataset_name=dataset_name,
            first_row=first_row,
            previous_id=previous_id,
        )
        first_row, previous_id = first_row + len(ids), ids[-1]
        _check_anchor_first(batch, dataset.features, dataset_name)
        _check_image_files(batch, dataset_name)
    _VALIDATED_DATASETS.add(dataset)


def rows_without_preference(
    dataset: Dataset, num_text_candidates: int | None = None, num_image_candidates: int | None = None
) -> dict[str, int]:
    """How many rows of a validated map-style dataset give RPA nothing to learn, per direction, as
    `DataCollatorForEmbeddingPreference` hands them to the losses when it draws `num_image_candidates` /
    `num_text_candidates` per row (None: all): no draw of the row holds two distinct candidates with different judge
    scores, among the candidate images (``"text_to_image"``), among the candidate texts (``"image_to_text"``), and in
    both (``"both"``). That is a row of one candidate, of equal scores, or whose scores differ only between repeats of
    one item: the collator masks a repeat, keeping the first occurrence it draws with its score. Scores compare in
    float32, as the losses rank them.

    Reads the score and candidate columns, decoding no image: texts are repeats when equal, images when stored alike
    (the same bytes, or the same path and no bytes). One picture stored twice otherwise (as bytes and by path, or
    encoded twice) is one item to the collator, which compares pixels, and two here."""
    directions = {
        "text_to_image": ("candidate_images", "txt2img_scores", num_image_candidates),
        "image_to_text": ("candidate_texts", "img2txt_scores", num_text_candidates),
    }
    columns = [column for candidates, scores, _ in directions.values() for column in (candidates, scores)]
    counts = dict.fromkeys([*directions, "both"], 0)
    for batch in dataset.select_columns(columns).with_format("arrow").iter(_ARROW_BATCH_ROWS):
        without = {}
        for direction, (candidates_column, scores_column, limit) in directions.items():
            # a row's candidates as one flat run of entries: validation refuses empty lists, so every row has one
            lengths = pc.list_value_length(batch[scores_column]).to_numpy()
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
            rows = np.repeat(np.arange(len(lengths)), lengths)
            candidates = pc.list_flatten(batch[candidates_column])
            if candidates_column == "candidate_texts":
                keys = pc.dictionary_encode(pc.cast(candidates, pa.large_string()).combine_chunks()).indices.to_numpy()
            else:
                keys = _stored_image_keys(candidates, rows)
            scores = pc.list_flatten(batch[scores_column]).to_numpy().astype(np.float32)
            copies_before = _earlier_copies(keys, rows)
            # The row ranks in some draw when a candidate that is no repeat of candidate 0 (the anchor's own, always
            # drawn and kept) scores otherwise and can be drawn without its earlier copies: at most as many of those
            # as the draw leaves out.
            left_out = lengths - (lengths if limit is None else np.minimum(lengths, limit))
            ranks = (keys != keys[starts][rows]) & (scores != scores[starts][rows]) & (copies_before <= left_out[rows])
            without[direction] = ~np.logical_or.reduceat(ranks, starts)
            counts[direction] += int(without[direction].sum())
        counts["both"] += int((without["text_to_image"] & without["image_to_text"]).sum())
    return counts


def _earlier_copies(keys: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Per entry, how many earlier entries of its row (`rows`, non-decreasing) have its key."""
    positions = np.arange(len(keys))
    order = np.lexsort((positions, keys, rows))  # by row, then key, then position
    group_starts = np.ones(len(keys), dtype=bool)
    group_starts[1:] = (rows[order][1:] != rows[order][:-1]) | (keys[order][1:] != keys[order][:-1])
    first_of_group = np.maximum.accumulate(np.where(group_starts, positions, 0))
    copies = np.empty(len(keys), dtype=np.int64)
    copies[order] = positions - first_of_group
    return copies


def _stored_image_keys(images: pa.ChunkedArray, rows: np.ndarray) -> np.ndarray:
    """Per image of `images` ({"bytes", "path"} structs of a batch's candidate lists, flattened; `rows` their rows),
    an int64 key that two images of one row share exactly when they are stored alike: the same bytes, or the same path
    and no bytes, which decode alike. Bytes are read only where a row holds two images of one byte length: the image
    data of a dataset is not read through for a warning."""
    data, paths = pc.struct_field(images, "bytes"), pc.struct_field(images, "path")
    keys = np.arange(len(images), dtype=np.int64)  # each image its own, unless found stored alike below
    has_bytes = pc.is_valid(data).to_numpy()
    sizes = pc.binary_length(data).fill_null(-1).to_numpy()
    _, size_group, group_counts = np.unique(np.stack([rows, sizes]), axis=1, return_inverse=True, return_counts=True)
    next_key = len(images)
    # with 64-bit offsets (the data buffers are kept, not copied): a batch's selected images may hold more than the
    # 2 GiB that binary's 32-bit offsets reach, which `take` and `combine_chunks` would join into one array
    for selected, values in (
        (np.flatnonzero(has_bytes & (group_counts[size_group] > 1)), pc.cast(data, pa.large_binary())),
        (np.flatnonzero(~has_bytes), pc.cast(paths, pa.large_string())),  # validation refuses an image with neither
    ):
        if len(selected):
            codes = pc.dictionary_encode(pc.take(values, selected).combine_chunks()).indices.to_numpy()
            keys[selected] = next_key + codes
            next_key += len(selected)
    return keys


# why a row has no strict preference, in the warnings of `warn_about_rows_without_preference`
_NO_PREFERENCE = "one candidate, equal judge scores, or scores that differ only between repeats of one item"


def warn_about_rows_without_preference(
    dataset: Dataset, rpa_weight: float, num_text_candidates: int | None = None, num_image_candidates: int | None = None
) -> None:
    """Warn about rows that give RPA nothing to learn in a direction (`rows_without_preference`, drawing
    `num_*_candidates` as the collator does), where its loss is zero. Nothing else would show it: a dataset of only
    such rows trains with a zero RPA loss, and one where a direction never ranks trains with half of `rpa_weight`
    (`bidirectional_rpa_loss` averages the two directions)."""
    counts = rows_without_preference(dataset, num_text_candidates, num_image_candidates)
    if counts["both"]:
        hint = "; that is every row: set rpa_weight=0 to train with InfoNCE only" if counts["both"] == len(dataset) else ""
        logger.warning(
            f"{counts['both']} of {len(dataset)} train rows have no strict preference ({_NO_PREFERENCE}): RPA learns "
            f"nothing from them{hint}."
        )
    if counts["both"] == len(dataset):
        return
    for direction, candidates in (("text_to_image", "images"), ("image_to_text", "texts")):
        if counts[direction] == len(dataset):
            logger.warning(
                f"No train row has a strict preference among its candidate {candidates} ({_NO_PREFERENCE}): the "
                f"{direction.replace('_', ' ')} half of the RPA loss is zero throughout, so RPA trains with half of "
                f"rpa_weight={rpa_weight}."
            )


def _check_anchor_first(batch: pa.Table, features: Features, dataset_name: str) -> None:
    """Raises for the first row whose candidate 0 is not its own caption / image (the collator would, hours into a
    run). Texts compare as strings; images by stored bytes (else path), and only those that differ are decoded, with
    the dataset's own image features, and compared by content as the collator compares them (the same picture may be
    stored twice, encoded differently)."""
    from maple.content import content_id

    for anchor_column, candidates_column in (("caption", "candidate_texts"), ("image", "candidate_images")):
        anchors, firsts = batch[anchor_column], pc.list_element(batch[candidates_column], 0)
        if anchor_column == "image":
            anchor_bytes, first_bytes = pc.struct_field(anchors, "bytes"), pc.struct_field(firsts, "bytes")
            # comparisons with a null are null, not False: filled, or every path-only image would be decoded
            same_path = pc.equal(pc.struct_field(anchors, "path"), pc.struct_field(firsts, "path")).fill_null(False)
            same = pc.or_(
                pc.equal(anchor_bytes, first_bytes).fill_null(False),
                pc.and_(pc.and_(pc.is_null(anchor_bytes), pc.is_null(first_bytes)), same_path),
            )
        else:  # one string type for both (string, large_string and string_view all pass `check_features`)
            same = pc.equal(pc.cast(anchors, pa.large_string()), pc.cast(firsts, pa.large_string())).fill_null(False)
        for row in pc.indices_nonzero(pc.invert(same)).to_pylist():
            where = f"{dataset_name} dataset, row id {batch['id'][row].as_py()!r}"
            if anchor_column == "image":
                try:
                    anchor = _image_decoder(features["image"]).decode_example(anchors[row].as_py())
                    first = _image_decoder(features["candidate_images"]).decode_example(firsts[row].as_py())
                except Exception as error:  # PIL and file errors alike
                    raise ValueError(
                        f"{where}: column 'image' or 'candidate_images'[0] does not decode ({type(error).__name__}: {error})."
                    ) from None
                if content_id(anchor) == content_id(first):
                    continue
            raise anchor_not_first_error(where, anchor_column, candidates_column)


def anchor_not_first_error(where: str, anchor_column: str, candidates_column: str) -> ValueError:
    """The error for a row whose candidate 0 (in `candidates_column`) is not its anchor (`anchor_column`): the anchor
    itself must come first. `where` names the dataset and the row ("train dataset, row id 'a'"). Raised by
    `validate_preference_dataset` before a run and by the collator during one."""
    return ValueError(
        f"{where}: column {candidates_column!r}[0] differs from the row's {anchor_column!r}; expected the anchor "
        "itself first, then its other candidates."
    )


def _check_image_files(batch: pa.Table, dataset_name: str) -> None:
    """Raises for the first row holding an image stored as the path of a local file that does not exist or is a
    folder (`datasets` opens it only when the row is batched, hours into a run). Each distinct path is looked up once;
    paths with a scheme (hf://, https://) are left to that read."""
    for column in ("image", "candidate_images"):
        entries = pc.list_flatten(batch[column]) if column == "candidate_images" else batch[column]
        paths = pc.struct_field(entries, "path")
        by_path_only = pc.filter(paths, pc.and_(pc.is_null(pc.struct_field(entries, "bytes")), pc.is_valid(paths)))
        missing = {path for path in set(by_path_only.to_pylist()) if "://" not in path and not os.path.isfile(path)}
        if not missing:
            continue
        for row, value in enumerate(batch[column].to_pylist()):
            values = value if column == "candidate_images" else [value]
            position = next((i for i, image in enumerate(values) if image and image["bytes"] is None
                             and image["path"] in missing), None)
            if position is not None:
                entry = f"{column!r}[{position}]" if column == "candidate_images" else repr(column)
                path = values[position]["path"]
                problem = "is a folder" if os.path.isdir(path) else "does not exist"
                raise ValueError(
                    f"{dataset_name} dataset, row id {batch['id'][row].as_py()!r}: column {entry} is the file "
                    f"{path!r}, which {problem} (relative paths are read from {os.getcwd()}; by `maple train`, "
                    "also from the data file's folder)."
                )


def _first_missing(column: pa.ChunkedArray) -> list[tuple[int, str] | None]:
    """`first_invalid` of each row of an Arrow column whose type `check_features` has checked, so only a None, a blank
    string or an image with neither bytes nor path can be invalid, without converting valid values (images stay
    undecoded)."""
    if not any(is_list(column.type) for is_list in (pa.types.is_list, pa.types.is_large_list, pa.types.is_fixed_size_list)):
        bad = _invalid_entries(column).to_pylist()
        return [(0, _described(column[row].as_py())) if is_bad else None for row, is_bad in enumerate(bad)]
    entries = pc.list_flatten(column)  # the entries of all rows, in order (a null list has none)
    bad_entries = _invalid_entries(entries)
    if not pc.any(bad_entries).as_py():
        return [None] * len(column)
    bad, start, first = bad_entries.to_pylist(), 0, []
    for length in pc.list_value_length(column).fill_null(0).to_pylist():
        row = bad[start : start + length]
        first.append((row.index(True), _described(entries[start + row.index(True)].as_py())) if True in row else None)
        start += length
    return first


def _invalid_entries(values: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Per entry, whether it is None, a blank string, or an image struct with neither bytes nor path."""
    bad = pc.is_null(values)
    if pa.types.is_struct(values.type):
        no_data = pc.and_(pc.is_null(pc.struct_field(values, "bytes")), pc.is_null(pc.struct_field(values, "path")))
        bad = pc.or_(bad, no_data)
    elif not pa.types.is_null(values.type):  # strings: `check_features` admits no other type here
        strings = values if not pa.types.is_string_view(values.type) else pc.cast(values, pa.large_string())
        bad = pc.or_(bad, pc.equal(pc.utf8_trim_whitespace(strings), ""))
    return bad.fill_null(True)  # a null entry's comparisons are null: it is invalid anyway
