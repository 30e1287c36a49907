"""The image-caption source a preference build reads: a local folder, a parquet file, a Hub dataset id or a
`datasets.Dataset`, checked (columns, splits, images) before any model is needed, and fingerprinted by content so that
a copy of it resumes the same build."""

from __future__ import annotations

import hashlib
import io
import json
import os
import traceback
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
import pandas as pd
import PIL.Image
import pyarrow as pa
import pyarrow.parquet as pq
from datasets.exceptions import DatasetGenerationError
from datasets.naming import camelcase_to_snakecase
from datasets.packaged_modules.cache.cache import Cache
from datasets.packaged_modules.csv.csv import CsvConfig
from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder
from datasets.utils.file_utils import is_local_path, xopen

from maple.files import expanded_path, holds_relative_image_paths, located_image, stored_images
from maple.hub import names_a_file

from .source_files import (
    SourceError,
    all_data_files,
    check_caption_table_rows,
    check_json_value_types,
    check_parquet_row_groups,
    data_files_by_split,
    data_files_read,
    declared_value_problem,
    file_being_read,
    local_archive_members,
    local_parquet_metadata,
)
from .text_cells_folder import CSV_TEXT_CELLS, TextCellsImageFolder, check_filter_values

if TYPE_CHECKING:
    from .builder import MaplePreferencesConfig

DEFAULT_ID_COLUMN = "id"


def encoded_bytes(value: dict[str, Any]) -> bytes:
    """The encoded bytes of an undecoded `datasets.Image` value ({"bytes", "path"}). A path may name a member of a zip
    archive by a chained path, as `datasets`' imagefolder stores an image of one ("zip://0.png::/data/images.zip",
    `_is_chained_path`), read as `datasets` reads it (`xopen`): a damaged member is zipfile's BadZipFile ("Bad CRC-32
    for file '0.png'"). Any other path is a local file's, whose name may hold "::" ("shot 12::30.png"); a missing one
    is a FileNotFoundError."""
    if value.get("bytes"):
        return value["bytes"]
    path = value.get("path")
    if not path:
        raise ValueError("image has neither bytes nor a path")
    if _is_chained_path(path):
        with xopen(path, "rb") as member:
            return member.read()
    return Path(path).read_bytes()


def _is_chained_path(path: str) -> bool:
    """Whether `path` is an fsspec chained URL, a protocol's path then the file it reads ("zip://0.png::/data.zip"),
    as `datasets` names a file inside an archive: not a local file whose name holds "::" ("/data/shot 12::30.png")."""
    first, chained, _ = path.partition("::")
    return bool(chained) and "://" in first


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
    (`source_files.check_json_value_types`): `datasets` would read values of one type as text, or fail. CSV data
    (tables, an image folder's metadata.csv) is read with every cell as the text written, an empty cell as missing
    (`text_cells_folder.CSV_TEXT_CELLS`)."""
    path = expanded_path(source)
    # A path that can only be local (a Hub id is "name" or "org/name") is not sent to the Hub when missing.
    if not path.exists() and (names_a_file(source) or source.startswith((".", "/", "~")) or source.count("/") > 1):
        raise SourceError(f"source {source}: no such file or folder (a Hub dataset id is 'name' or 'org/name')")
    if path.suffix == ".parquet" and not path.is_dir():  # Spark and pyarrow write folders named "*.parquet"
        if name is not None:
            raise SourceError(f"source {source} is one parquet file, which has no configs: leave source_config out")
        _check_splits(source, split, available=["train"])  # datasets names a lone file's split "train"
        with data_files_read(source):
            # `datasets` fails on a file of no rows with "BatchSize must be greater than 0"
            _check_selects_rows(source, split, {"train": pq.read_metadata(path).num_rows})
            return datasets.load_dataset("parquet", data_files=str(path), split=split, cache_dir=cache_dir)
    if path.is_file():
        raise SourceError(f"unsupported source file {source}: give a folder, a parquet file or a Hub dataset id")
    location = str(path) if path.exists() else source
    # Offline, a Hub source read before is read from the cache of its CSV cells as text: datasets' own look-up of the
    # cache (with no options, as below) finds only a plain `load_dataset`'s, whose cells pandas' defaults read
    offline = not path.exists() and datasets.config.HF_HUB_OFFLINE
    cached = _text_cells_cache(source, name, split, cache_dir) if offline else None
    if cached is not None:
        return _prepared_split(source, split, cached)
    try:
        builder = datasets.load_dataset_builder(location, name, cache_dir=cache_dir, token=token)
    # ValueError: a Hub repo of several configs (the source must not leave it open), a folder without data files;
    # OSError: a Hub id not found, or not cached offline
    except (ValueError, OSError) as error:
        from maple.hub import dataset_read_problem, local_typo_hint

        if offline and name is not None and str(error).startswith("Couldn't find cache"):
            # datasets lists the configs cached by their config ids, `load_source`'s ending in its readings' names
            cached = sorted({info["config_name"] for info in _cached_dataset_infos(source, cache_dir).values()})
            raise SourceError(
                f"source {source}: the Hub is offline and its config {name!r} is not cached"
                + (f" (its cached configs are {cached})" if cached else "")
                + ": read it online first, or name a cached config with source_config= (CLI --source-config)"
            ) from None
        problem = dataset_read_problem(error, source, token)
        if "Config name is missing" in problem:  # `datasets`' advice is a `load_dataset` call
            problem = f"{problem.split('Example of usage')[0].strip()}: name it with source_config= (CLI --source-config)"
        raise SourceError(f"source {source}: {problem}{local_typo_hint(source)}") from None
    except zipfile.BadZipFile as error:  # datasets opens an archive to tell the kind of data a folder holds
        damaged = next((str(file) for file in sorted(path.rglob("*.zip")) if not zipfile.is_zipfile(file)), None)
        raise SourceError(
            f"source {source}: {'its data files' if damaged is None else f'its data file {damaged}'} cannot be read "
            f"(BadZipFile: {error})"
        ) from error
    if isinstance(builder, Cache):  # offline, datasets' own cache of a Hub source, which names no data files
        # (`_text_cells_cache` found none of ours.) An image folder's cache does not tell a metadata.csv's captions,
        # which such a cache holds as pandas' defaults read them, from a metadata.jsonl's
        if builder.info.builder_name in ("csv", "imagefolder"):
            kind = "CSV table" if builder.info.builder_name == "csv" else "image folder"
            raise SourceError(
                f"source {source}: the Hub is offline and its {kind} is cached only as datasets' load_dataset reads it "
                "(a metadata.csv's or a table's cells with pandas' defaults: an id 0123 as 123, a caption NA as "
                "missing), not as load_source reads it: read it online once"
            )
        _check_splits(source, split, available=list(builder.info.splits))
        return _prepared_split(source, split, builder)
    # Checked before any file is read; `datasets` would convert every split first.
    _check_splits(source, split, available=[str(name) for name in builder.config.data_files])
    data_files = all_data_files(builder.config.data_files)
    with data_files_read(source, data_files):  # (a zip archive's listing is read: a damaged one is named)
        archives = local_archive_members(data_files)
    csv_metadata = isinstance(builder, ImageFolder) and _holds_csv_metadata(builder, data_files, archives)
    if isinstance(builder, ImageFolder):  # (a metadata.csv's declared columns are read, and compared, as declared)
        check_filter_values(source, builder.config.filters, builder.config.features if csv_metadata else None)
    if path.exists():
        _check_local_parquet_rows(source, split, builder.config.data_files)
        check_caption_table_rows(source, builder.config.data_files, _split_names(split), archives)
        check_json_value_types(
            source, builder.config.data_files, _split_names(split), columns, caption_tables=isinstance(builder, ImageFolder)
        )
    with data_files_read(source, data_files):
        # CSV cells as the text written (`CSV_TEXT_CELLS`): the csv builder takes pandas' options, imagefolder does not
        if isinstance(builder.config, CsvConfig):
            builder = _csv_text_cells_builder(source, location, name, builder, _split_names(split), cache_dir, token)
        elif csv_metadata:
            builder = TextCellsImageFolder.from_builder(builder, source, cache_dir=cache_dir)
        try:
            builder.download_and_prepare()
        except IndexError as error:
            # imagefolder takes the columns from the first metadata row its README filters keep (of none: IndexError)
            if not (isinstance(builder, ImageFolder) and builder.config.filters is not None
                    and _raised_in(error, "_split_generators")):
                raise
            raise SourceError(f"source {source}: its README's filters {builder.config.filters} keep no row of its "
                              "metadata files: change them (configs: filters: in its README.md)") from None
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError, DatasetGenerationError) as error:
            cause = error.__cause__ or error  # (datasets wraps the errors of a split's generation)
            if not isinstance(builder, ImageFolder):
                raise
            if builder.config.features is not None and path.exists() and _raised_through(cause, "encode_example"):
                # a metadata.jsonl's value of a column the README declares, of a type datasets cannot encode it to:
                # its error named neither file nor column
                caption_tables = _caption_table_names(builder)
                problem = declared_value_problem(source, data_files, builder.config.features, caption_tables)
                if problem is not None:
                    raise problem from None
            # pyarrow's filtering of a metadata file (imagefolder's own, of the file's types: a metadata.jsonl's or a
            # metadata.parquet's, `METADATA_FILTERING`) failed: a column compared with a value of another type, or one
            # the file lacks
            if builder.config.filters is None or not any(_raised_through(cause, step) for step in METADATA_FILTERING):
                raise
            file = file_being_read(cause, set(data_files))
            raise SourceError(
                f"source {source}: its README's filters {builder.config.filters} cannot be applied to "
                f"{'its metadata files' if file is None else f'its metadata file {file}'} ({type(cause).__name__}: "
                f"{' '.join(str(cause).split())}): compare columns the metadata files hold, with values of their type "
                "(configs: filters: in its README.md)"
            ) from None
    return _prepared_split(source, split, builder)


# Where pyarrow applies an image folder's README filters to its metadata files, as imagefolder applies them (the
# functions of a traceback, Cython's by their qualified names): to each table of a metadata.jsonl (`Table.filter`),
# and to a metadata.parquet as it is read (`Fragment.to_batches(filter=...)`, which binds the filters to the file's
# columns first)
METADATA_FILTERING = ("_filter_table", "pyarrow._compute._bind")


def _raised_in(error: BaseException, function: str) -> bool:
    """Whether `error` was raised in a function named `function` (its traceback's innermost frame)."""
    frames = [frame for frame, _ in traceback.walk_tb(error.__traceback__)]
    return bool(frames) and frames[-1].f_code.co_name == function


def _raised_through(error: BaseException, function: str) -> bool:
    """Whether `error` was raised inside a function named `function` (a frame of its traceback)."""
    return any(frame.f_code.co_name == function for frame, _ in traceback.walk_tb(error.__traceback__))


def _prepared_split(source: str, split: str, builder: datasets.DatasetBuilder) -> datasets.Dataset:
    """Split expression `split` of `builder`'s prepared dataset, a `SourceError` where it selects no rows
    (`_check_selects_rows`)."""
    _check_selects_rows(source, split, {str(name): info.num_examples for name, info in builder.info.splits.items()})
    return builder.as_dataset(split=split)


# The end of the config id (and cache) of a CSV table read with its cells as text (`load_source`): the plain config id
# of the data files and README config it reads (then the splits read, where only those are: `_csv_text_cells_builder`),
# then this, as `TextCellsImageFolder` names its own. Not datasets' id of the options and features it is given: offline,
# those features (the columns of data files on the Hub) are unknown
CSV_TEXT_CELLS_CONFIG = "csv_text_cells"


def _text_cells_cache(
    source: str, name: str | None, split: str, cache_dir: str | None
) -> datasets.DatasetBuilder | None:
    """Offline, the builder of the latest cache in `cache_dir` of Hub dataset `source` (of its config `name`; None: of
    its one config cached so) that `load_source` wrote with CSV cells read as text (config ids ending in
    `CSV_TEXT_CELLS_CONFIG`, or in `TextCellsImageFolder.NAME`) and that holds the splits split expression `split`
    reads: a CSV table whose splits have other columns is cached one split at a time, each in a config id of its own
    (`_csv_text_cells_builder`), all of one config. Read as datasets reads a cache offline; None where there is none.
    A `SourceError` where `name` is None and several configs are cached so, where the config's image folder is cached
    by an older version of `TextCellsImageFolder`'s reading only (not reused; datasets' look-up of the cache, next,
    would read a plain load_dataset's beside it, its metadata.csv read with pandas' defaults), and where no cache of
    the config holds those splits (the split may exist on the Hub, and not be cached: `_check_splits`' "has no split"
    would not be true)."""
    infos = {
        cache: info for cache, info in _cached_dataset_infos(source, cache_dir).items()
        if cache.parts[-3].endswith((f"-{CSV_TEXT_CELLS_CONFIG}", f"-{TextCellsImageFolder.NAME}"))
    }
    cached_splits = {  # of the config named
        cache: list(info.get("splits") or {}) for cache, info in infos.items() if name in (None, info["config_name"])
    }
    if not cached_splits:
        return None
    configs = sorted({infos[cache]["config_name"] for cache in cached_splits})
    if len(configs) > 1 and name is None:
        raise SourceError(f"source {source}: the Hub is offline and several of its configs are cached ({configs}): "
                          "name one with source_config= (CLI --source-config)")
    reading = str(TextCellsImageFolder.VERSION)
    older = [cache for cache in cached_splits  # <config id>/<version>/<hash>
             if cache.parts[-3].endswith(TextCellsImageFolder.NAME) and cache.parts[-2] != reading]
    cached_splits = {cache: splits for cache, splits in cached_splits.items() if cache not in older}
    if not cached_splits:
        raise SourceError(
            f"source {source}: the Hub is offline and its image folder is cached only as an older MAPLE read its "
            f"metadata.csv (version {', '.join(sorted({cache.parts[-2] for cache in older}))} of that reading; this "
            f"one is {reading}, and does not reuse it): read it online once, to cache it anew"
        )
    _check_split_expression(split)
    holding = [cache for cache, splits in cached_splits.items() if set(_split_names(split)) <= set(splits)]
    if not holding:
        raise SourceError(
            f"source {source}: the Hub is offline and no cache of it holds the split(s) {_split_names(split)} (its "
            f"caches hold {sorted(cached_splits.values())}): read them online first, or pick cached ones with "
            "source_split=... (CLI --source-split)"
        )
    latest = max(holding, key=lambda cache: cache.stat().st_mtime)
    config_id, version, commit = latest.parts[-3:]
    return Cache(cache_dir=cache_dir, dataset_name=source.split("/")[-1], repo_id=source, config_name=config_id,
                 version=version, hash=commit)


def _cached_dataset_infos(source: str, cache_dir: str | None) -> dict[Path, dict[str, Any]]:
    """Each cache in `cache_dir` (None: datasets' default) of Hub dataset `source`, `datasets`' and `load_source`'s
    alike, by its folder (`<config id>/<version>/<hash>`), and its dataset info (`dataset_info.json`)."""
    *namespace, dataset_name = source.split("/")
    root = Path(cache_dir or datasets.config.HF_DATASETS_CACHE).expanduser()
    folder = root / "___".join([*namespace, camelcase_to_snakecase(dataset_name)])
    return {
        cache: json.loads((cache / "dataset_info.json").read_text(encoding="utf-8"))
        for cache in folder.glob("*/*/*") if (cache / "dataset_info.json").is_file()
    }


# How `load_source` reads CSV cells, as a build's manifest records it for a source with CSV data (`csv_cells_reading`):
# a work dir begun by an older builder, which read them with pandas' defaults, records none
CSV_CELLS_AS_TEXT = "the text written, only an empty cell missing"


def csv_cells_reading(source: datasets.Dataset) -> str | None:
    """How `load_source` read the cells of the CSV data behind `source`, a dataset it returned: `CSV_CELLS_AS_TEXT` for
    a CSV table, and for an image folder whose captions are a metadata.csv (beside its images or in a zip archive);
    None where it read no CSV data."""
    return CSV_CELLS_AS_TEXT if source.info.builder_name in ("csv", TextCellsImageFolder.NAME) else None


def _csv_text_cells_builder(
    source: str,
    location: str,
    name: str | None,
    builder: datasets.DatasetBuilder,
    splits: Sequence[str],
    cache_dir: str | None,
    token: str | None,
) -> datasets.DatasetBuilder:
    """The `datasets` csv builder reading the CSV tables of `source` (at `location`, its config `name`) that `builder`
    reads, with every cell as the text written (`CSV_TEXT_CELLS`) and the features `_csv_text_features` gives the
    columns of the files of `splits`, those read (`_csv_columns`).
    `datasets` prepares every split of a config, with one set of columns: that of the first split, in which a later
    split's file lacking a column reads it as missing, and one with another column fails ("Couldn't cast"), whatever
    split is read. Every split is read, as before, where all files have the columns of those read; where another split's
    files have others (a test.csv without the train.csv's label column), only `splits` are, in a cache of their own (a
    config id naming them), as the other splits may lack a column the build reads."""
    headers = _csv_headers(builder)
    columns = _csv_columns(source, headers, splits)
    # (the files of `splits` have `columns`: `_csv_columns`)
    others_differ = any(set(header) != set(columns) for files in headers.values() for header in files.values())
    data_files = None if not others_differ else {
        split: builder.config.data_files[split] for split in headers if split in splits
    }
    read = "" if data_files is None else f"{'+'.join(data_files)}-"
    return datasets.load_dataset_builder(
        location, name, cache_dir=cache_dir, token=token, data_files=data_files,
        features=_csv_text_features(builder, columns),
        config_id=f"{builder.config_id}-{read}{CSV_TEXT_CELLS_CONFIG}", **CSV_TEXT_CELLS,
    )


def _csv_text_features(builder: datasets.DatasetBuilder, columns: Iterable[str]) -> datasets.Features:
    """The features CSV tables of `columns` are read with by `builder`, a `datasets` csv builder: each column as text
    (`datasets.Value("string")`, which the csv builder reads as the text written), but those whose type the README's
    config declares (`features:`), as declared. A column's type is never inferred: one empty in a whole 10,000-row
    chunk was a float column, in which a later chunk's text failed to read ("Failed to parse string: 'abc' as a scalar
    of type double"). Not `builder.info.features`: beside a README's `dataset_info:`, they are those of a cache of the
    same files (a plain `load_dataset` one, whose types pandas' defaults inferred)."""
    declared = builder.config.features or {}
    return datasets.Features({**{column: datasets.Value("string") for column in columns}, **declared})


def _csv_headers(builder: datasets.DatasetBuilder) -> dict[str, dict[str, list[str]]]:
    """The column names of each CSV file (local, or on the Hub) of each split that `builder`, a `datasets` csv builder,
    reads, as it reads them: its separator, header and encoding (a folder's config in its README), compression inferred
    from the file name."""
    header = {**builder.config.pd_read_csv_kwargs, "nrows": 0, "chunksize": None}
    headers: dict[str, dict[str, list[str]]] = {}
    for split, files in data_files_by_split(builder.config.data_files).items():
        for file in files:
            hub = None if is_local_path(file) else {"token": builder.token}  # an hf:// file, read by fsspec
            headers.setdefault(split, {})[file] = list(pd.read_csv(file, storage_options=hub, **header).columns)
    return headers


def _csv_columns(source: str, headers: dict[str, dict[str, list[str]]], splits: Sequence[str]) -> list[str]:
    """The columns of the CSV files of `splits` of `source`, of `headers` (`_csv_headers`). A `SourceError` names a file
    whose columns are not the first file's, and both headers: `datasets` reads the files of the splits read with one set
    of columns (with the columns of all files, it failed on the first file, which lacked one). Columns in another order
    read: `datasets` reads them by name."""
    files = [(file, columns) for split in splits for file, columns in headers[split].items()]
    first_file, first_columns = files[0] if files else (None, [])
    for file, columns in files:
        if set(columns) != set(first_columns):
            raise SourceError(
                f"source {source}: its data file {file} has the columns {columns}, but {first_file} has "
                f"{first_columns}: datasets reads the CSV files of a split, and of the splits read together, with one "
                "set of columns; give them one header"
            )
    return first_columns


def _holds_csv_metadata(builder: ImageFolder, files: Iterable[str], archives: Mapping[str, list[str]]) -> bool:
    """Whether image folder `builder` reads a CSV caption table among `files` (its data files): a metadata.csv (or one
    of the config's `metadata_filenames`, by name), beside the images or in a zip archive, which it searches for one.
    A local archive's members (`archives`, `local_archive_members`) are read, its hidden files and folders and `__*`
    ones left out, as `datasets` leaves them out: an archive of a metadata.jsonl is no CSV data. A Hub archive counts
    as CSV data unread: its listing would be requested at every read, a cached source's too, and a Hub error while it
    is read is zipfile's "not a zip file"."""
    csv_names = {name for name in _caption_table_names(builder) if name.lower().endswith(".csv")}
    for file in files:
        members = [file]
        if file.lower().endswith(".zip"):
            if file not in archives:  # (on the Hub)
                return True
            members = [member for member in archives[file]
                       if not any(part.startswith((".", "__")) for part in member.split("/"))]
        if any(os.path.basename(member) in csv_names for member in members):
            return True
    return False


def _caption_table_names(builder: ImageFolder) -> list[str]:
    """The file names image folder `builder` reads as caption tables: its config's `metadata_filenames`, or
    imagefolder's (`CAPTION_TABLES`)."""
    return builder.config.metadata_filenames or builder.METADATA_FILENAMES


def _check_local_parquet_rows(source: str, split: str, data_files: Mapping[Any, Iterable[Any]]) -> None:
    """For a folder of parquet files only: `_check_selects_rows` from their metadata, then `check_parquet_row_groups`
    (a file of no rows that `datasets` cannot read)."""
    metadata = local_parquet_metadata(source, data_files)
    if metadata is not None:
        _check_selects_rows(source, split, {name: sum(meta.num_rows for meta in files.values()) for name, files in metadata.items()})
        check_parquet_row_groups(source, metadata)


def _check_splits(source: str, split: str, available: list[str]) -> None:
    """Raise `SourceError` when `split` ("train", "train[:1000]", "train+test") is no split expression
    (`_check_split_expression`), or names a split `source` lacks."""
    _check_split_expression(split)
    missing = [name for name in _split_names(split) if name not in available]
    if missing:
        raise SourceError(
            f"source {source} has no split {', '.join(map(repr, missing))}; its splits are {available}: "
            "pick one with source_split=... (CLI --source-split)"
        )


def _check_split_expression(split: str) -> None:
    """Raise `SourceError` when `split` is no split expression (`datasets`' error was taken for a file that does not
    read)."""
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
