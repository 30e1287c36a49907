"""The image-caption source a preference build reads: a local folder, a parquet file, a Hub dataset id or a
`datasets.Dataset`, checked (columns, splits, images) before any model is needed, and fingerprinted by content so that
a copy of it resumes the same build."""

from __future__ import annotations

import bz2
import contextlib
import csv
import dataclasses
import gzip
import hashlib
import io
import json
import lzma
import os
import reprlib
import traceback
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import datasets
import pandas as pd
import PIL.Image
import pyarrow as pa
import pyarrow.json as paj
import pyarrow.parquet as pq
from datasets.exceptions import DatasetGenerationError
from datasets.packaged_modules.csv.csv import CsvConfig
from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder
from datasets.packaged_modules.json.json import JsonConfig
from datasets.utils.file_utils import is_local_path

from maple.files import expanded_path, holds_relative_image_paths, located_image, stored_images
from maple.hub import names_a_file

if TYPE_CHECKING:
    from .builder import MaplePreferencesConfig

DEFAULT_ID_COLUMN = "id"


class SourceError(ValueError):
    """The source data (or the recipe applied to it) cannot be built; the message says what to change."""


def encoded_bytes(value: dict[str, Any]) -> bytes:
    """The encoded bytes of an undecoded `datasets.Image` value ({"bytes", "path"})."""
    if value.get("bytes"):
        return value["bytes"]
    if value.get("path"):
        return Path(value["path"]).read_bytes()
    raise ValueError("image has neither bytes nor a path")


def decode_image(payload: bytes, row: int) -> PIL.Image.Image:
    """The upright RGB image of encoded bytes (turned by its EXIF orientation), via
    `modeling_maple.processing_maple.load_image` (which names source row `row` when the data is corrupt)."""
    from modeling_maple.processing_maple import load_image  # transformers: only once images are decoded

    return load_image(PIL.Image.open(io.BytesIO(payload)), row)


# Text tables (an image folder's metadata.csv / .jsonl, caption files) are read in full by `local_source_digest`: a
# reordered or edited caption keeps the file's size and may miss every sampled block.
FULLY_HASHED_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".txt")
FULLY_HASHED_NAMES = ("metadata.parquet",)  # an image folder's captions as parquet


def local_source_digest(
    path: Path,
    image_files: Iterable[str | os.PathLike] = (),
    sampled_files: int = 64,
    sampled_blocks: int = 16,
    block_size: int = 4096,
) -> str:
    """A fingerprint of a local source by content, not by timestamps (which `datasets`' own fingerprint reads), so
    that the same files copied elsewhere (staged to a job's local disk, one copy per node) resume the same build
    (in one work dir: the default `work_dir` follows the source path).
    Every data file's path relative to `path` (a file's: to its folder) and size, with the image files a table names
    by path (`image_files`; those outside that folder by their absolute paths), and the bytes of `sampled_files` files
    spread over them (all of a few parquet shards; a sample of an image folder): each one's first and last 64 KiB and
    `sampled_blocks` evenly spaced blocks; and every caption table of an image folder (`FULLY_HASHED_SUFFIXES`,
    `metadata.parquet`) in full.
    Hidden files and folders (`.cache/`, written by `snapshot_download`) and `__*` ones are left out, as `datasets`
    leaves them out. An edit of an image or parquet file that keeps every size and misses the sampled bytes goes
    unseen: the price of not reading a corpus of images in full at every start."""
    if path.is_file():
        root, files = path.parent, [path]
    else:
        root = path
        files = [
            file for file in path.rglob("*")
            if file.is_file() and not any(part.startswith((".", "__")) for part in file.relative_to(path).parts)
        ]
    root = Path(os.path.abspath(root))
    named = {Path(os.path.abspath(file)) for file in image_files if os.path.isfile(file)}
    files = sorted({Path(os.path.abspath(file)) for file in files} | named)
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.relative_to(root) if file.is_relative_to(root) else file}\0{file.stat().st_size}\0".encode())
    count = min(sampled_files, len(files))  # spread from the first file to the last
    picked = sorted({round(index * (len(files) - 1) / max(1, count - 1)) for index in range(count)})
    for file in (files[index] for index in picked):
        size = file.stat().st_size
        offsets = [0, max(0, size - 65536)] + [size * (index + 1) // (sampled_blocks + 1) for index in range(sampled_blocks)]
        with file.open("rb") as handle:
            for offset, length in zip(offsets, [65536, 65536] + [block_size] * sampled_blocks):
                handle.seek(offset)
                digest.update(handle.read(length))
    for file in files:
        if file.suffix.lower() in FULLY_HASHED_SUFFIXES or file.name in FULLY_HASHED_NAMES:
            with file.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


def check_outside_source(source: str | None, **folders: str | os.PathLike | None) -> None:
    """Raise `SourceError` when one of `folders` (by option name) lies inside `source`, a local folder: `datasets`
    would read the build's own cache and shards there as source data at the next start (and the source fingerprint
    would change, so the build could never resume)."""
    if source is None or not expanded_path(source).is_dir():
        return
    source_path = expanded_path(source).resolve()
    for name, folder in folders.items():
        if folder is not None and expanded_path(folder).resolve().is_relative_to(source_path):
            raise SourceError(
                f"{name} {folder} is inside the source folder {source}: the build would read its own files as source "
                "data; put it outside"
            )


def open_source(
    config: MaplePreferencesConfig,
    source_dataset: datasets.Dataset | None = None,
    *,
    cache_dir: str | None = None,
    token: str | None = None,
) -> tuple[datasets.Dataset, str]:
    """The columns of the source a build reads (`config.source`, or `source_dataset`; a Hub dataset read with `token`,
    None: HF_TOKEN or the saved login), images left encoded, and the source's `datasets` fingerprint. Raises
    `SourceError` for a source that cannot be read, a missing column or a column that holds no images: all before any
    model is needed, so `maple build-preferences` checks it first."""
    source = source_dataset
    if source is None:
        source = load_source(config.source, split=config.source_split, name=config.source_config, cache_dir=cache_dir,
                             token=token, columns=[config.image_column, config.caption_column, config.id_column])
    elif isinstance(source, datasets.DatasetDict):
        raise SourceError(f"source_dataset is a DatasetDict of the splits {list(source)}: pass one split, e.g. "
                          f"source_dataset=dataset[{next(iter(source), 'train')!r}]")
    elif isinstance(source, datasets.IterableDataset):
        raise SourceError("source_dataset is a streamed dataset (IterableDataset): the build reads rows by index; "
                          "load it without streaming=True")
    elif not isinstance(source, datasets.Dataset):
        raise SourceError(f"source_dataset is a {type(source).__name__}; expected a datasets.Dataset")
    required = [config.image_column, config.caption_column]
    # An id column named explicitly is meant to exist: without it every id would silently be the row index.
    if config.id_column != DEFAULT_ID_COLUMN:
        required.append(config.id_column)
    missing = [column for column in required if column not in source.column_names]
    if missing:
        raise SourceError(
            f"source {config.source or 'datasets.Dataset (in memory)'} lacks column(s) {missing}; it has "
            f"{source.column_names}: name the columns to read with image_column=, caption_column=, id_column= "
            "(CLI --image-column, --caption-column, --id-column)"
        )
    image_feature = source.features[config.image_column]
    if not _readable_as_images(image_feature):  # pyarrow's cast would fail naming neither column nor type
        raise SourceError(
            f"source column {config.image_column!r} holds {image_feature!r}; expected images "
            "(datasets.Image), image file paths (str) or encoded image bytes"
        )
    caption_feature = source.features[config.caption_column]
    if not _holds_strings(caption_feature):  # every row would be skipped as "non-string caption", after a full input check
        several = isinstance(caption_feature, (datasets.List, datasets.LargeList, datasets.Sequence))
        raise SourceError(
            f"source column {config.caption_column!r} holds {caption_feature!r}; expected captions (str): "
            + ("give each caption of an image a row of its own" if several
               else "name the caption column with caption_column= (CLI --caption-column)")
        )
    id_feature = source.features.get(config.id_column)
    if id_feature is not None and not _holds_ids(id_feature):  # ids would be the repr of an image dict, of a list
        # the default id column is optional: without it the row index is the id
        other_ids = ", or drop or rename the column (the row index is then the id)" if config.id_column == DEFAULT_ID_COLUMN else ""
        raise SourceError(
            f"source column {config.id_column!r} holds {id_feature!r}; expected ids (str, int or float): name the id column "
            f"with id_column= (CLI --id-column){other_ids}"
        )
    fingerprint = source._fingerprint
    # Only the columns the build reads: others may be heavy, or images decoded on every row access. Rows as Python
    # objects: a torch, numpy, pandas or arrow format (or a transform) of the caller's would reach the ids and captions.
    used = dict.fromkeys([config.id_column, config.image_column, config.caption_column])
    source = source.with_format(None).select_columns([column for column in used if column in source.column_names])
    column = config.image_column
    source = source.cast_column(column, datasets.Image(decode=False))
    folder = None if source_dataset is not None else _local_folder(config.source)
    if folder is not None and holds_relative_image_paths(source, column):
        # relative image paths (a column of text, or images stored as paths) are found beside the table too, as
        # `maple train` finds them, and made absolute: a build resumed from another folder reads the files its input
        # check read, and the source digest reads those files. Never from datasets' cache: its key holds neither which
        # files exist now nor the folder the build runs in.
        source = source.map(lambda row: {column: located_image(row[column], folder)}, features=source.features,
                            load_from_cache_file=False, desc="locating image files")
    return source, fingerprint


def image_paths(source: datasets.Dataset, column: str) -> list[str]:
    """The files of the images `column` of `source` (images left encoded, `open_source`'s) holds by path, not bytes."""
    return [path for raw, path in stored_images(source, column) if raw is None and path is not None]


def _holds_strings(feature: Any) -> bool:
    """Whether a source column of this feature holds strings: file paths in an image column, captions in the other."""
    return isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")


def _holds_ids(feature: Any) -> bool:
    """Whether a source column of this feature holds row ids: strings or numbers (a row's id is their `str`; floats
    too: pandas makes an integer column with missing values float, and a NaN id is no id, `_row_id`), or only nulls
    (pandas' all-None column, JSON's `"id": null`: no ids, the row index is each row's)."""
    return _holds_strings(feature) or (isinstance(feature, datasets.Value)
                                       and feature.dtype.startswith(("int", "uint", "float", "null")))


def _local_folder(source: str | None) -> str | None:
    """The absolute folder of a local source (a parquet file's own folder), None for a Hub one."""
    if source is None or not (path := expanded_path(source)).exists():
        return None
    return str((path if path.is_dir() else path.parent).resolve())


def load_source(
    source: str,
    *,
    split: str,
    name: str | None = None,
    cache_dir: str | None = None,
    token: str | None = None,
    columns: Sequence[str] = (),
) -> datasets.Dataset:
    """Split `split` of the image-caption dataset behind `source`: a local folder, a parquet file, or
    a Hub dataset id (read with `token`; None: HF_TOKEN or the saved login); of its config `name` where it has several.

    A folder is read as `datasets.load_dataset(folder)` reads it: parquet files, or images with a
    metadata.csv / metadata.jsonl holding the captions, split by file name (a Hub snapshot's
    `data/train-*.parquet` and `data/test-*.parquet` are two splits; files whose names name no split
    are all "train"). A split the source lacks is a `SourceError` naming the source and the splits
    it has. `split` may slice or join splits as `datasets` does ("train[:1000]", "train+test"). In a local folder's
    JSON data files (compressed too; those of the splits read), a column of `columns` (the ones the build reads) holding
    values of several types, in one file or across files, is a `SourceError` naming file, line and column
    (`_check_json_value_types`): `datasets` would read values of one type as text, or fail. CSV data (tables, an image
    folder's metadata.csv) is read with every cell as the text written, an empty cell as missing (`CSV_TEXT_CELLS`)."""
    path = expanded_path(source)
    # A path that can only be local (a Hub id is "name" or "org/name") is not sent to the Hub when missing.
    if not path.exists() and (names_a_file(source) or source.startswith((".", "/", "~")) or source.count("/") > 1):
        raise SourceError(f"source {source}: no such file or folder (a Hub dataset id is 'name' or 'org/name')")
    if path.suffix == ".parquet" and not path.is_dir():  # Spark and pyarrow write folders named "*.parquet"
        if name is not None:
            raise SourceError(f"source {source} is one parquet file, which has no configs: leave source_config out")
        _check_splits(source, split, available=["train"])  # datasets names a lone file's split "train"
        with _data_files_read(source):
            # `datasets` fails on a file of no rows with "BatchSize must be greater than 0"
            _check_selects_rows(source, split, {"train": pq.read_metadata(path).num_rows})
            return datasets.load_dataset("parquet", data_files=str(path), split=split, cache_dir=cache_dir)
    if path.is_file():
        raise SourceError(f"unsupported source file {source}: give a folder, a parquet file or a Hub dataset id")
    location = str(path) if path.exists() else source
    try:
        builder = datasets.load_dataset_builder(location, name, cache_dir=cache_dir, token=token)
    # ValueError: a Hub repo of several configs (the source must not leave it open), a folder without data files;
    # OSError: a Hub id not found, or not cached offline
    except (ValueError, OSError) as error:
        from maple.hub import dataset_read_problem, local_typo_hint

        problem = dataset_read_problem(error, source, token)
        if "Config name is missing" in problem:  # `datasets`' advice is a `load_dataset` call
            problem = f"{problem.split('Example of usage')[0].strip()}: name it with source_config= (CLI --source-config)"
        raise SourceError(f"source {source}: {problem}{local_typo_hint(source)}") from None
    # Checked before any file is read; `datasets` would convert every split first.
    _check_splits(source, split, available=[str(name) for name in builder.config.data_files])
    if path.exists():
        _check_local_parquet_rows(source, split, builder.config.data_files)
        _check_caption_table_rows(source, builder.config.data_files)
        _check_json_value_types(source, builder.config.data_files, split, columns, isinstance(builder, ImageFolder))
    data_files = _all_data_files(builder.config.data_files)
    with _data_files_read(source, data_files):
        # CSV cells as the text written (`CSV_TEXT_CELLS`): the csv builder takes pandas' options, imagefolder does not
        if isinstance(builder.config, CsvConfig):
            builder = datasets.load_dataset_builder(
                location, name, cache_dir=cache_dir, token=token,
                features=_csv_text_features(builder, data_files), **CSV_TEXT_CELLS,
            )
        elif isinstance(builder, ImageFolder) and _holds_csv_metadata(builder, data_files):
            builder = _TextCellsImageFolder.from_builder(builder, cache_dir=cache_dir)
        builder.download_and_prepare()
    _check_selects_rows(source, split, {str(name): info.num_examples for name, info in builder.info.splits.items()})
    return builder.as_dataset(split=split)


# pandas' defaults read a CSV cell `000123` as the number 123 (the ids `0123` and `123` collided, and were written back
# unlike the user's) and `NA`, `null`, `None`, `nan`, `N/A`... as missing (such a caption was skipped as empty). Every
# cell is read as the text written (these options, with each column's type text: `_csv_text_features`, or dtype=str),
# and only an empty cell is missing: None, as before (an empty caption is skipped, a row without an id takes its
# zero-padded row index). Every column, not only the build's: a number column whose `NA` became text would be text in
# one 10,000-row chunk and numbers in the next, which `datasets` cannot write as one column.
CSV_TEXT_CELLS = {"keep_default_na": False, "na_values": [""]}
# How `load_source` reads CSV cells, as a build's manifest records it for a source with CSV data (`csv_cells_reading`):
# a work dir begun by an older builder, which read them with pandas' defaults, records none
CSV_CELLS_AS_TEXT = "the text written, only an empty cell missing"


def csv_cells_reading(source: datasets.Dataset) -> str | None:
    """How `load_source` read the cells of the CSV data behind `source`, a dataset it returned: `CSV_CELLS_AS_TEXT` for
    a CSV table, and for an image folder whose captions are a metadata.csv (or which holds a zip archive); None where it
    read no CSV data."""
    return CSV_CELLS_AS_TEXT if source.info.builder_name in ("csv", _TextCellsImageFolder.NAME) else None


def _csv_text_features(builder: datasets.DatasetBuilder, files: Iterable[str]) -> datasets.Features:
    """The features CSV `files` are read with by `builder`, a `datasets` csv builder: each column as text
    (`datasets.Value("string")`, which the csv builder reads as the text written), but those whose type the README's
    config declares (`features:`), as declared. A column's type is never inferred: one empty in a whole 10,000-row
    chunk was a float column, in which a later chunk's text failed to read ("Failed to parse string: 'abc' as a scalar
    of type double"). Not `builder.info.features`: beside a README's `dataset_info:`, they are those of a cache of the
    same files (a plain `load_dataset` one, whose types pandas' defaults inferred)."""
    declared = builder.config.features or {}
    return datasets.Features({**{column: datasets.Value("string") for column in _csv_columns(builder, files)}, **declared})


def _csv_columns(builder: datasets.DatasetBuilder, files: Iterable[str]) -> list[str]:
    """The column names of CSV `files` (local, or on the Hub) as `builder`, a `datasets` csv builder, reads them: its
    separator, header and encoding (a folder's config in its README), compression inferred from the file name."""
    header = {**builder.config.pd_read_csv_kwargs, "nrows": 0, "chunksize": None}
    columns: dict[str, None] = {}
    for file in files:
        hub = None if is_local_path(file) else {"token": builder.token}  # an hf:// file, read by fsspec
        columns.update(dict.fromkeys(pd.read_csv(file, storage_options=hub, **header).columns))
    return list(columns)


def _holds_csv_metadata(builder: ImageFolder, files: Iterable[str]) -> bool:
    """Whether image folder `builder` reads a CSV caption table among `files` (its data files): a metadata.csv (or one
    of the config's `metadata_filenames`, by name), or a zip archive, which it searches for one."""
    names = builder.config.metadata_filenames or builder.METADATA_FILENAMES
    return any(
        (os.path.basename(file) in names and file.lower().endswith(".csv")) or file.lower().endswith(".zip")
        for file in files
    )


# `datasets` patches the module of every builder it makes (`_TextCellsImageFolder`) for streaming: its `open`,
# `os.path`, `pathlib.Path`, `gzip.open`, `pandas.read_csv`... become `datasets`' own, and a Hub CSV table's columns
# (`_csv_columns`: pandas.read_csv with storage_options) then failed to read. Marked as patched, this module keeps the
# standard library's and pandas' functions; the builder reads only metadata files `datasets` downloaded.
_patched_for_streaming = True


class _TextCellsImageFolder(ImageFolder):
    """`datasets`' imagefolder, reading a metadata.csv with every cell as the text written, an empty one as missing
    (`CSV_TEXT_CELLS`): imagefolder reads it with pandas' defaults, and takes no pandas options. Other metadata files
    (.jsonl, .parquet) are read as imagefolder reads them; an image folder without a CSV caption table is read by
    imagefolder itself (`_holds_csv_metadata`), whose config id and cache, and so a Hub source's fingerprint, it
    keeps."""

    # Its `DatasetInfo.builder_name`, by which `csv_cells_reading` tells a source it read (`datasets` names a builder
    # after its module), and the end of its config ids: its cache is never imagefolder's, read with pandas' defaults
    NAME = "imagefolder_csv_text_cells"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.info.builder_name = self.NAME

    @classmethod
    def from_builder(cls, builder: ImageFolder, cache_dir: str | None = None) -> _TextCellsImageFolder:
        """The image folder `builder` reads (its data files, Hub repo and revision, and config: one named in the
        README included), read with CSV cells as text; its datasets cache in `cache_dir` (None: the default)."""
        settings = {field.name: getattr(builder.config, field.name) for field in dataclasses.fields(builder.config)}
        return cls(
            cache_dir=cache_dir, dataset_name=builder.dataset_name, config_name=settings.pop("name"), hash=builder.hash,
            base_path=builder.base_path, token=builder.token, repo_id=builder.repo_id,
            storage_options=builder.storage_options, config_id=f"{builder.config_id}-{cls.NAME}", **settings,
        )

    def _read_metadata(self, metadata_file: str, metadata_ext: str = "") -> Iterator[pa.Table]:
        if metadata_ext != ".csv":
            yield from super()._read_metadata(metadata_file, metadata_ext=metadata_ext)
            return
        filters = self.config.filters  # as imagefolder applies them
        expression = pq.filters_to_expression(filters) if isinstance(filters, list) else filters
        compared = _filter_literal_types(filters) if isinstance(filters, list) else {}
        for frame in pd.read_csv(metadata_file, iterator=True, chunksize=10_000, dtype=str, **CSV_TEXT_CELLS):
            table = pa.Table.from_pandas(frame)
            if expression is not None:
                table = _filtered(table, frame, expression, compared)
            if len(table) > 0:
                yield table


# The cells pandas' defaults read as booleans (in a column of nothing else), which a filter comparing a column with True
# or False compares
PANDAS_BOOLEANS = {"True": True, "TRUE": True, "true": True, "False": False, "FALSE": False, "false": False}


def _filter_literal_types(filters: list) -> dict[str, type]:
    """The columns an image folder's `filters` compare with numbers or booleans (`value`, or the values of an `in`),
    and which: `float` (a number) or `bool`. `filters` as README `filters:` give them and
    `pyarrow.parquet.filters_to_expression` reads them: a list of `[column, op, value]` (all to hold), or a list of such
    lists (any to hold)."""
    conjunctions = filters if filters and not isinstance(filters[0][0], str) else [filters]
    types: dict[str, type] = {}
    for column, _, value in (predicate for conjunction in conjunctions for predicate in conjunction):
        for literal in value if isinstance(value, (list, tuple, set)) else [value]:
            if isinstance(literal, (bool, int, float)):
                types[column] = bool if isinstance(literal, bool) else float
    return types


def _filtered(table: pa.Table, frame: pd.DataFrame, expression: Any, compared: dict[str, type]) -> pa.Table:
    """The rows of `table` (`frame`'s text cells) that filter `expression` keeps, a column it compares with numbers or
    booleans (`compared`) read as pandas' defaults read it, as imagefolder filtered it: `01` is the number 1, a cell that
    is no number (or no boolean, `PANDAS_BOOLEANS`) matches no such comparison, as an empty one. The rows are kept as
    text; a column compared with text is compared as the text written."""
    typed = {
        column: pd.to_numeric(frame[column], errors="coerce") if kind is float else frame[column].map(PANDAS_BOOLEANS)
        for column, kind in compared.items() if column in frame.columns
    }
    if not typed:
        return table.filter(expression)
    row = "\0row"  # (no column of a CSV header)
    rows = pa.Table.from_pandas(frame.assign(**typed)).append_column(row, pa.array(range(len(frame))))
    return table.take(rows.filter(expression)[row])


def _check_local_parquet_rows(source: str, split: str, data_files: dict[str, list[str]]) -> None:
    """For a folder of parquet files only: `_check_selects_rows` from their metadata, and a `SourceError` naming a file
    of no rows written with a row group (as pyarrow and pandas write one), which `datasets` fails on ("BatchSize must be
    greater than 0"; one written by `datasets`, without row groups, reads)."""
    files = _data_files_by_split(data_files)
    all_files = _all_data_files(files)
    if not all(file.endswith(".parquet") for file in all_files):
        return
    with _data_files_read(source, all_files):
        metadata = {file: pq.read_metadata(file) for file in all_files}
    _check_selects_rows(source, split, {name: sum(metadata[file].num_rows for file in names) for name, names in files.items()})
    empty = next((file for file, meta in metadata.items() if meta.num_rows == 0 and meta.num_row_groups > 0), None)
    if empty is not None:
        raise SourceError(f"source {source}: its data file {empty} has no rows, which datasets cannot read: remove it")


# An image folder's caption table (`datasets`' metadata file), by the names `datasets` reads
CAPTION_TABLES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")


def _check_caption_table_rows(source: str, data_files: dict[str, list[str]]) -> None:
    """A `SourceError` naming a folder's caption table (`CAPTION_TABLES`) that has no rows (empty, blank lines, a
    header alone), which `datasets` fails on with an IndexError or StopIteration traceback."""
    for file in _all_data_files(data_files):
        name = os.path.basename(file)
        if name not in CAPTION_TABLES:
            continue
        with _data_files_read(source, [file]):
            if name.endswith(".parquet"):
                has_rows = pq.read_metadata(file).num_rows > 0
            else:  # read up to its first row only: a table of millions of captions is not held in memory
                with open(file, encoding="utf-8-sig", newline="") as handle:  # "-sig": a leading BOM is no row
                    # a csv record may hold line breaks in quotes, and its first is the header
                    records = csv.reader(handle) if name.endswith(".csv") else ([line] for line in handle)
                    rows = (record for record in records if any(field.strip() for field in record))
                    has_rows = next(rows, None) is not None and (not name.endswith(".csv") or next(rows, None) is not None)
        if not has_rows:
            raise SourceError(f"source {source}: its caption table {file} has no rows")


# The names of JSON data files, and of compressed ones (`part-0.jsonl.gz`): `_is_json_data_file`
JSON_SUFFIXES = (".json", ".jsonl")
COMPRESSION_SUFFIXES = (".gz", ".gzip", ".bz2", ".xz", ".zst", ".zstd", ".lz4")
# The single-file compressions `datasets` reads a data file in, told by the file's first bytes (as
# `datasets.utils.extract` tells them), and how each is opened: zstd and lz4 by pyarrow, as the standard library reads
# neither. A compressed file is named as the file inside, and a suffix (`part-0.jsonl.gz`).
DATA_FILE_COMPRESSIONS: dict[bytes, Callable[[str], BinaryIO]] = {
    b"\x1f\x8b": gzip.open,
    b"BZh": bz2.open,
    b"\xfd7zXZ\x00": lzma.open,
    b"\x28\xb5\x2f\xfd": lambda file: io.BufferedReader(pa.input_stream(file, compression="zstd")),
    b"\x04\x22\x4d\x18": lambda file: io.BufferedReader(pa.input_stream(file, compression="lz4")),
}
# `datasets` reads JSON Lines in chunks of this many bytes (to the end of a line), each parsed by pyarrow in blocks of a
# 32nd of it
JSON_CHUNK_SIZE = JsonConfig.chunksize
# What `datasets` makes of a column whose values are of several types, by the builder reading the JSON files: the json
# builder, or an image folder's (a caption table, metadata.jsonl)
MIXED_TYPES_READ_AS = {
    False: "datasets would read the column's values as JSON text (in a chunk of mixed types, strings quoted: \"a dog\") "
           "or fail",
    True: "datasets would read values of one type as the other (['a cat'] as the text \"['a cat']\", a string as a "
          "list of its letters) or fail",
}


def _check_json_value_types(
    source: str, data_files: dict[str, list[str]], split: str, columns: Sequence[str], caption_tables: bool
) -> None:
    """Raise a `SourceError` where a column of `columns` holds values of several JSON types in the JSON data files
    (`_is_json_data_file`, compressed too) that `split` reads. It names the file, line and column of the first value
    whose type differs from the column's first value, and where that one is (a caption that is a list among strings).
    Nulls go with any type, integers with floats.

    Why: `datasets` reads JSON Lines in chunks (`JSON_CHUNK_SIZE`; a file of one JSON array as one chunk), and takes
    a column's type from the first chunk of the first file, for every later chunk, file and split:
    - a mix in that first chunk makes the column a `datasets.Json` one (`open_source` refuses it for each of the
      build's columns);
    - a mix in a later chunk makes it JSON text, each value serialised, from that chunk on, in every later file of the
      split too, without an error: beside plain captions before, every caption after is read with quotes (`a dog` as
      `"a dog"`);
    - a later chunk or file of values of another type is read as JSON text (`{"en": "a cat"}` as `{"en":"a cat"}`),
      or fails.
    An image folder's metadata.jsonl files (`caption_tables`) are read in no set order, the values of one as the type
    of another's; the error says what `datasets` would make of the column, by reader (`MIXED_TYPES_READ_AS`).

    Which files: only the build's `columns` are checked, in the files of the splits `split` reads (a mix across the
    files of one split leaves the others as they were), after the first file of the first split, which sets every
    split's column types.

    Cost: it runs at every start, so it is cheap where nothing is wrong. pyarrow reads each file as `datasets` does
    (`_json_lines_types`), and only a file it finds fault with is read line by line in Python, to name the line (or
    to pass it: a column the build does not read may mix types)."""
    if not columns:
        return
    files = _data_files_by_split(data_files)
    first_file = next(iter(files.values()))[:1]
    # column -> (JSON type, file, where) of its first non-null value; where is None until needed, for a file pyarrow read
    first: dict[str, tuple[str, str, str | None]] = {}
    for file in dict.fromkeys([*first_file, *(file for name in _split_names(split) for file in files[name])]):
        if not _is_json_data_file(file):
            continue
        with _data_files_read(source, [file]):  # (text that is no UTF-8)
            file_types = _json_lines_types(file, columns)
            if file_types is not None and all(first.get(column, (kind,))[0] == kind for column, kind in file_types.items()):
                for column, kind in file_types.items():
                    first.setdefault(column, (kind, file, None))
                continue
            for where, row in _json_rows(source, file):
                for column in columns:
                    if (value_type := _json_type(row.get(column))) is None:
                        continue
                    first_type, found_in, found_at = first.setdefault(column, (value_type, file, where))
                    if value_type != first_type:
                        if found_at is None:
                            found_at = next(place for place, earlier in _json_rows(source, found_in)
                                            if _json_type(earlier.get(column)) is not None)
                        raise SourceError(
                            f"source {source}: its data file {file}, {where}: column {column!r} holds {value_type} "
                            f"({reprlib.repr(row[column])}), but "
                            f"{found_at if found_in == file else f'{found_in}, {found_at},'} holds {first_type}; "
                            f"{MIXED_TYPES_READ_AS[caption_tables]}: give it values of one type (or null)"
                        )


def _is_json_data_file(file: str) -> bool:
    """Whether `file` is a JSON data file (`JSON_SUFFIXES`), compressed or not (`COMPRESSION_SUFFIXES`)."""
    return (os.path.splitext(file)[0] if file.endswith(COMPRESSION_SUFFIXES) else file).endswith(JSON_SUFFIXES)


def _open_data_file(file: str) -> BinaryIO:
    """The bytes of local data file `file` as `datasets` reads them: decompressed where its first bytes say it is
    compressed (`DATA_FILE_COMPRESSIONS`), whatever its name."""
    with open(file, "rb") as handle:
        start = handle.read(max(map(len, DATA_FILE_COMPRESSIONS)))
    opener = next((opener for magic, opener in DATA_FILE_COMPRESSIONS.items() if start.startswith(magic)), None)
    return open(file, "rb") if opener is None else opener(file)


def _json_lines_types(file: str, columns: Sequence[str]) -> dict[str, str] | None:
    """The JSON type (`_json_type`) of each of `columns` that holds a non-null value in JSON Lines `file`, as pyarrow
    reads it in `datasets`' chunks (`JSON_CHUNK_SIZE`); None where a column changes type inside a chunk ("changed from
    string to array") or from one chunk to the next, and where pyarrow reads no JSON Lines (a file of one JSON array, a
    line that is no JSON) or another column mixes types: a line-by-line read decides those. Chunk by chunk: a table of
    millions of captions is not held in memory."""
    types: dict[str, str] = {}  # column -> its type in the chunks read so far
    with _open_data_file(file) as handle:
        while chunk := handle.read(JSON_CHUNK_SIZE):
            chunk += handle.readline()
            try:
                schema = _json_lines_table(chunk).schema
            except pa.ArrowInvalid:
                return None
            for column in (column for column in columns if column in schema.names):
                chunk_type = _arrow_json_type(schema.field(column).type)
                if chunk_type is not None and types.setdefault(column, chunk_type) != chunk_type:
                    return None
    return types


def _json_lines_table(chunk: bytes) -> pa.Table:
    """pyarrow's table of `chunk`, JSON Lines, parsed as `datasets` parses it: in blocks of a 32nd of `JSON_CHUNK_SIZE`
    (on several threads), or in one where a line is longer than a block."""
    block_size = max(JSON_CHUNK_SIZE // 32, 16 << 10)
    try:
        return paj.read_json(io.BytesIO(chunk), read_options=paj.ReadOptions(block_size=block_size))
    except pa.ArrowInvalid as error:
        if "straddling" not in str(error) or len(chunk) <= block_size:
            raise
        return paj.read_json(io.BytesIO(chunk), read_options=paj.ReadOptions(block_size=len(chunk)))


def _arrow_json_type(arrow_type: pa.DataType) -> str | None:
    """The JSON type of the values pyarrow read into a column of `arrow_type`, as `_json_type` names it (None: nulls
    only): pyarrow reads strings such as "2020-01-01 10:00:00" as timestamps."""
    if pa.types.is_null(arrow_type):
        return None
    if pa.types.is_boolean(arrow_type):
        return "a boolean"
    if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type):
        return "a number"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or pa.types.is_timestamp(arrow_type):
        return "a string"
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return "a list"
    return "an object"  # a struct


def _json_rows(source: str, file: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, row) for each object of a JSON Lines file ("line N") or of a file holding one JSON array ("item N"), as
    `datasets` reads them (decompressed: `_open_data_file`). A file whose first non-blank line is no JSON (one object
    over several lines) yields nothing; a later line that is no JSON is a `SourceError` naming it."""
    with io.TextIOWrapper(_open_data_file(file), encoding="utf-8-sig") as handle:
        read_a_line = False
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            if not read_a_line and line.lstrip().startswith("["):  # one JSON array, the rest of the file
                items = json.loads(line + handle.read())
                yield from ((f"item {index}", item) for index, item in enumerate(items, start=1) if isinstance(item, dict))
                return
            try:
                row = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as error:
                if not read_a_line:
                    return
                # (some of json's messages end in "at", where its own message goes on with ": line L column C")
                raise SourceError(
                    f"source {source}: its data file {file}, line {number}, is no JSON "
                    f"({error.msg.removesuffix(' at')} at column {error.colno})"
                ) from None
            read_a_line = True
            if isinstance(row, dict):
                yield f"line {number}", row


def _json_type(value: Any) -> str | None:
    """The JSON type of a parsed value, as errors name it; None for null."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "an object"


# What reading a file raises, beside ValueErrors, where it is damaged (a compressed file cut short: EOFError; zlib's and
# lzma's errors; a bz2 or zstd stream: OSError) or cannot be read at all: a `SourceError` only where a data file was
# being read (a full disk or a lost connection elsewhere is no data file's fault)
FILE_READ_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError)


@contextlib.contextmanager
def _data_files_read(source: str, files: Iterable[str] = ()) -> Iterator[None]:
    """A data file of `source` that does not read inside (a malformed metadata.csv / .jsonl: pandas' and pyarrow's
    parse errors are ValueErrors, wrapped by `datasets` or not; a parquet file that is not one; a compressed file that
    is damaged, `FILE_READ_ERRORS`) is a `SourceError` naming the source, the file of `files` being read
    (`_file_being_read`), if known, and the cause."""
    try:
        yield
    except SourceError:
        raise
    except (ValueError, DatasetGenerationError, *FILE_READ_ERRORS) as error:
        cause = error.__cause__ or error
        file = _file_being_read(cause, set(files))
        if file is None and isinstance(error, FILE_READ_ERRORS):
            raise
        kind = "zlib.error" if isinstance(cause, zlib.error) else type(cause).__name__  # (not "error")
        raise SourceError(
            f"source {source}: {'its data files' if file is None else f'its data file {file}'} cannot be read "
            f"({kind}: {' '.join(str(cause).split())})"
        ) from error


def _file_being_read(error: BaseException, files: set[str]) -> str | None:
    """The one of `files` that was being read where `error` was raised: the innermost frame of its traceback that
    holds one of them in a variable, or None. pandas' and pyarrow's errors name a line or a row but not the file, and
    `datasets` names it in a log line only: of a folder of many tables, the error said where, but not in which file."""
    frames = [frame for frame, _ in traceback.walk_tb(error.__traceback__)]
    for frame in reversed(frames):
        for value in frame.f_locals.values():
            if isinstance(value, (str, os.PathLike)) and os.fspath(value) in files:
                return os.fspath(value)
    return None


def _data_files_by_split(data_files: Mapping[Any, Iterable[Any]]) -> dict[str, list[str]]:
    """A builder's `config.data_files` (split names and file paths of `datasets`' own types) as plain strings."""
    return {str(name): [str(file) for file in files] for name, files in data_files.items()}


def _all_data_files(data_files: Mapping[Any, Iterable[Any]]) -> list[str]:
    """Every file of `data_files` (`_data_files_by_split`), split after split, as `datasets` reads them."""
    return [file for files in _data_files_by_split(data_files).values() for file in files]


def _check_splits(source: str, split: str, available: list[str]) -> None:
    """Raise `SourceError` when `split` ("train", "train[:1000]", "train+test") is no split expression (`datasets`'
    error was taken for a file that does not read), or names a split `source` lacks."""
    try:
        datasets.ReadInstruction.from_spec(split)
        problem = "it holds a space" if any(character.isspace() for character in split) else None  # (read as a name)
    except ValueError as error:
        problem = str(error)
    if problem is not None:
        raise SourceError(
            f"source_split {split!r} is not a split expression ({problem}); expected a split, a slice of one "
            "('train[:1000]', 'train[10%:20%]') or several joined by + ('train+test') (CLI --source-split)"
        )
    missing = [name for name in _split_names(split) if name not in available]
    if missing:
        raise SourceError(
            f"source {source} has no split {', '.join(map(repr, missing))}; its splits are {available}: "
            "pick one with source_split=... (CLI --source-split)"
        )


def _split_names(split: str) -> list[str]:
    """The splits a split expression reads, each once: "train[:1000]+test" -> ["train", "test"]."""
    return list(dict.fromkeys(part.split("[")[0] for part in split.split("+")))


def _check_selects_rows(source: str, split: str, sizes: dict[str, int]) -> None:
    """Raise `SourceError` when `split` (a split expression `_check_splits` passed) selects no rows of `source`, whose
    splits hold `sizes` rows: a source without rows, or a slice past a split's end or reversed (`datasets` said
    "corresponds to no data", or read no rows)."""
    if not any(sizes.values()):
        raise SourceError(f"source {source} has no rows")
    try:
        selected = datasets.ReadInstruction.from_spec(split).to_absolute(sizes)
    except ValueError as error:  # pct1_dropremainder rounding of a split under 100 rows
        raise SourceError(f"source {source}: source_split {split!r} cannot select rows: {error}") from None
    if all(part.to <= part.from_ for part in selected):
        counts = ", ".join(f"split {name!r} has {sizes[name]}" for name in dict.fromkeys(part.splitname for part in selected))
        raise SourceError(f"source {source}: source_split {split!r} selects no rows ({counts}): pick rows with "
                          "source_split=... (CLI --source-split)")


def _readable_as_images(feature: Any) -> bool:
    """Whether `datasets.Image` can read a column of this feature: images, file paths, encoded
    bytes, or {"bytes", "path"} structs (image parquet files written without datasets' metadata)."""
    if isinstance(feature, datasets.Image):
        return True
    if isinstance(feature, dict):
        return bool(feature) and set(feature) <= {"bytes", "path"}
    return getattr(feature, "dtype", None) in ("string", "large_string", "binary", "large_binary")
