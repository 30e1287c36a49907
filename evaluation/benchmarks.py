"""Benchmark loaders: by Hub id for users with the Hub, or from a local copy in the same schema.

Two kinds of benchmark, as in the paper (protocols and schemas: docs/evaluation.md):

- retrieval (`coco`, `flickr30k`): images, each with several captions;
- quadruples (`winoground`, `naturalbench`, `mmvp`, `bivlc`): (I0, I1, T0, T1) with T0 describing
  I0 and T1 describing I1, optionally with a category per quadruple.

A `source` is a Hub dataset id (the default is the benchmark's official one), a parquet file, or
a folder: a folder of parquet files (e.g. a snapshot of the Hub repo, read from the benchmark's split where its file
names tell splits apart) or the benchmark's native layout (NaturalBench-Retrieval: `metadata.json` + `images/`;
MMVP-VLM: `Questions.csv` + `MLLM_VLM Images/<category>/<id>.jpg`). Images stay on disk until embedded.
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import io
import itertools
import json
import os
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

from maple.dataset_layout import (
    DatasetCardError,
    SplitLayoutError,
    card_config_files,
    card_configs,
    files_by_split,
    snapshot_config_folders,
)
from maple.files import expanded_path, stored_images

from .lazy import LazySequence
from .metric_names import refuse_overall_subset


class BenchmarkFormatError(ValueError):
    """A benchmark source with missing columns, mismatched lengths or unreadable images."""


class BenchmarkSourceError(RuntimeError):
    """A benchmark source that cannot be read at all: a missing file or folder, a Hub repo that is
    not found or not cached while the Hub is offline or unreachable."""


class Quadruple(NamedTuple):
    """Two images and their two captions: `text0` describes `image0`, `text1` describes `image1`.
    Images are PIL images or file paths."""

    image0: Any
    image1: Any
    text0: str
    text1: str


@dataclass(frozen=True)
class RowLocator:
    """Names a row of a table read from `files` (in order; none for a Hub table) as the file holding it and the row
    within that file, for errors: a folder of parquet shards is one table, but a user fixes a file."""

    source: str
    files: tuple[str, ...] = ()
    offsets: tuple[int, ...] = ()  # the table row each file starts at

    def __call__(self, row: int) -> str:
        if not self.files:
            return f"{self.source}: row {row}"
        index = bisect.bisect_right(self.offsets, row) - 1
        return f"{self.files[index]}: row {row - self.offsets[index]}"


class LazyImages(LazySequence):
    """Images of one column of a table, decoded on access, so a 5k-image benchmark is never held decoded in memory."""

    def __init__(self, rows: Any, column: str, locate: RowLocator):
        import datasets

        rows = rows.select_columns([column])
        feature = rows.features[column]
        mode = feature.mode if isinstance(feature, datasets.Image) else None
        # Held undecoded ({bytes, path}): `_item` decodes, reading a local file from the path `_local_image_file`
        # gives, as the checks found it. Parquet written without datasets' metadata stores images as such structs.
        try:
            rows = rows.cast_column(column, datasets.Image(mode=mode, decode=False))
        # pyarrow's ArrowNotImplementedError (a NotImplementedError) for a column of numbers
        except (TypeError, ValueError, NotImplementedError) as error:
            raise BenchmarkFormatError(
                f"{locate(0)}, column {column!r}: {rows[0][column]!r:.80}; the column is {feature}, expected images "
                "(image bytes, a file path, or {'bytes', 'path'})"
            ) from error
        _check_image_files(rows, column, locate)
        self._rows, self._column, self._locate = rows, column, locate
        self._decoder = datasets.Image(mode=mode)

    def __len__(self) -> int:
        return len(self._rows)

    def content_keys(self) -> list[Any]:
        """One key per image, equal for images stored with equal bytes (or kept as paths to files of equal bytes, or
        as one URL), read from the column's arrow buffers: no image is decoded."""
        keys: list[Any] = []
        for raw, path in self._stored():
            if raw is None:  # a path: `_check_image_files` found the local ones
                file = _local_image_file(path)
                keys.append(("url", path) if file is None else file_key(file))
            else:
                keys.append(("bytes", content_digest(raw)))
        return keys

    def image_files(self) -> list[Path]:
        """The local files of the images kept as paths (no bytes), as `_local_image_file` gives them."""
        return [file for raw, path in self._stored() if raw is None and (file := _local_image_file(path)) is not None]

    def _stored(self) -> Iterator[tuple[bytes | None, str | None]]:
        """(bytes, path) of every image as the column stores it."""
        return stored_images(self._rows, self._column)

    def place(self, row: int) -> str:
        """Where image `row` is stored, for errors: its file, row and column."""
        return f"{self._locate(row)}, column {self._column!r}"

    def _item(self, row: int) -> Any:
        from modeling_maple.processing_maple import to_rgb  # transformers: only once images are read

        stored = self._rows[row][self._column]  # {bytes, path}; `_check_image_files` refused a null image
        file = _local_image_file(stored["path"]) if stored["bytes"] is None else None
        try:
            return to_rgb(self._decoder.decode_example(stored if file is None else {"bytes": None, "path": str(file)}))
        except Exception as error:  # PIL and datasets raise many types for corrupt bytes
            raise BenchmarkFormatError(f"{self.place(row)}: unreadable image ({error})") from error


def _check_image_files(rows: Any, column: str, locate: RowLocator) -> None:
    """Raise `BenchmarkFormatError` naming (`locate`) the file and row of the first image of `rows[column]` (an image
    column) that has no bytes and no path, or whose bytes are in a local file (a path and no bytes, as a column of
    file names is read) that is missing: found before any model loads, not when the batch holding it is embedded.
    Reads only the column's arrow buffers, and stats only the images kept as paths, so it costs little."""
    import pyarrow.compute as pc

    start = 0
    for chunk in rows.with_format("arrow")[:][column].chunks:  # struct<bytes, path>; zero-copy
        no_bytes = pc.or_kleene(chunk.is_null(), chunk.field("bytes").is_null())
        for row in pc.indices_nonzero(no_bytes).to_pylist():
            path = None if chunk[row].as_py() is None else chunk.field("path")[row].as_py()
            if path is None:
                raise BenchmarkFormatError(f"{locate(start + row)}, column {column!r}: no image (neither bytes nor a file path)")
            if (file := _local_image_file(path)) is not None and not file.is_file():  # a URL is fetched when decoded
                raise BenchmarkFormatError(f"{locate(start + row)}, column {column!r}: image file is missing: {path}")
        start += len(chunk)


def _local_image_file(path: str) -> Path | None:
    """The local file that an image a table keeps as `path` (and no bytes) is read from, None for a URL (fetched when
    decoded): `~` expanded, a relative path from the working folder, and a `file://` URL the file it names (one of
    another host names none here, so the checks report it missing). The checks and the decoding both read it so:
    `datasets` alone would open `~/x.png` as written, and a `file://` URL's path from the working folder."""
    if path.startswith("file://"):
        url = urllib.parse.urlsplit(path)
        return Path(urllib.request.url2pathname(url.path) if url.netloc in ("", "localhost") else path)
    return None if "://" in path else expanded_path(path)


def content_digest(data: bytes) -> bytes:
    """A 128-bit digest of `data`: equal stored images are told by it (`content_keys`, `file_key`)."""
    return hashlib.blake2b(data, digest_size=16).digest()


def file_key(path: str | os.PathLike) -> tuple[str, bytes]:
    """A key equal for files of equal bytes (`LazyImages.content_keys`, `evaluation.protocols`)."""
    return ("bytes", content_digest(expanded_path(path).read_bytes()))


def benchmark_image_files(benchmark: RetrievalBenchmark | QuadrupleBenchmark) -> list[Path]:
    """The local files `benchmark` reads its images from: those a table keeps as paths, and a folder layout's."""
    if isinstance(benchmark, RetrievalBenchmark):
        columns = [benchmark.images]
    else:
        columns = [getattr(benchmark.quadruples, name, None) for name in ("images0", "images1")]
    files = []
    for images in columns:
        if isinstance(images, LazyImageFiles):
            files += images.files
        elif isinstance(images, LazyImages):
            files += images.image_files()
    return files


class LazyImageFiles(LazySequence):
    """Image files of a benchmark's native folder layout, decoded on access. `places[i]` says where the benchmark
    lists file i (its metadata entry or CSV line), so that a file that does not decode is reported as a table row is,
    not by its place in a batch."""

    def __init__(self, files: Sequence[Path], places: Sequence[str]):
        if len(files) != len(places):
            raise ValueError(f"LazyImageFiles: {len(files)} files but {len(places)} places")
        self.files, self._places = list(files), list(places)

    def __len__(self) -> int:
        return len(self.files)

    def content_keys(self) -> list[Any]:
        """One key per image, equal for files of equal bytes (`file_key`), read without decoding any image."""
        keys = []
        for row, file in enumerate(self.files):
            try:
                keys.append(file_key(file))
            except OSError as error:  # gone since the benchmark was read
                raise BenchmarkFormatError(f"{self._places[row]}: unreadable image file {file} ({error})") from error
        return keys

    def place(self, row: int) -> str:
        """Where image `row` is listed and stored, for errors: its metadata entry or CSV line, and its file."""
        return f"{self._places[row]}, image file {self.files[row]}"

    def _item(self, row: int) -> Any:
        from modeling_maple.processing_maple import load_image  # transformers: only once images are read

        try:
            return load_image(self.files[row], row)
        except ValueError as error:  # load_image's, from PIL's OSError
            raise BenchmarkFormatError(
                f"{self._places[row]}: unreadable image file {self.files[row]} ({error.__cause__ or error})"
            ) from error


@dataclass
class RetrievalBenchmark:
    name: str
    images: Sequence[Any]  # PIL images or paths, one per image
    captions_per_image: list[list[str]]


@dataclass
class QuadrupleBenchmark:
    name: str
    quadruples: Sequence[Quadruple]
    categories: list[str] | None  # one per quadruple, or None


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    kind: Literal["retrieval", "quadruples"]
    hub_id: str
    description: str
    loader: Callable[[str, "BenchmarkSpec", str | None], RetrievalBenchmark | QuadrupleBenchmark]  # (source, spec, token)
    split: str = "test"
    columns: tuple[str, ...] = ()  # required columns of the table, in the real schema
    category_column: str | None = None


# -- tables ------------------------------------------------------------------------------------------
def _read_table(source: str, spec: BenchmarkSpec, token: str | None) -> tuple[Any, RowLocator]:
    """A `datasets.Dataset` from a Hub id (read with `token`), a parquet file or a folder of parquet files, with the
    spec's columns checked, and the `RowLocator` that names its rows in errors."""
    import datasets
    import pyarrow.parquet as pq

    from datasets.exceptions import DatasetGenerationError

    path = expanded_path(source)
    if path.is_file() or path.is_dir():
        files = [path] if path.is_file() else _split_files(path, spec)
        try:
            row_counts = [pq.ParquetFile(file).metadata.num_rows for file in files]
            # files without rows are not read: datasets refuses them in its own words ("Instruction 'train'
            # corresponds to no data")
            table = datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train") if sum(row_counts) else None
        # pyarrow's ArrowInvalid (a truncated file) is a ValueError
        except (ValueError, DatasetGenerationError) as error:
            detail = " ".join(str(error.__cause__ or error).split())
            raise BenchmarkFormatError(f"{path}: not a readable parquet table for benchmark {spec.name!r}: {detail}") from error
        if table is None:
            raise BenchmarkFormatError(f"{path}: benchmark {spec.name!r} has no rows")
        offsets = tuple(itertools.accumulate(row_counts[:-1], initial=0))
        locate = RowLocator(source, tuple(str(file) for file in files), offsets)
    else:
        try:
            table = datasets.load_dataset(source, split=spec.split, token=token)
        except ValueError as error:  # datasets' messages for a dataset laid out otherwise; other errors pass
            if "Unknown split" in str(error):
                advice = (f"is read from the {spec.split!r} split, which this dataset lacks ({error}); push a copy with "
                          f"push_to_hub(..., split={spec.split!r})")
            elif "Config name is missing" in str(error):
                advice = ("is read from a dataset's default config, and this one has several and no default; push a "
                          "copy of the benchmark alone (push_to_hub without config_name): "
                          + " ".join(str(error).split("Example of usage")[0].split()))
            else:
                raise
            raise BenchmarkFormatError(f"{source}: benchmark {spec.name!r} {advice}") from error
        locate = RowLocator(source)
    required = [*spec.columns, *([spec.category_column] if spec.category_column else [])]
    missing = [column for column in required if column not in table.column_names]
    if missing:
        raise BenchmarkFormatError(
            f"{source}: benchmark {spec.name!r} needs columns {required}; missing {missing} (got {table.column_names})"
        )
    if len(table) == 0:
        raise BenchmarkFormatError(f"{source}: benchmark {spec.name!r} has no rows")
    return table, locate


def _split_files(folder: Path, spec: BenchmarkSpec) -> list[Path]:
    """The parquet files of `folder`, in path order, less those of splits other than `spec.split` where several splits
    are told apart, as datasets tells them: by the `configs` of the folder's README.md (a pushed card: its default
    config's files, `maple.dataset_layout.card_config_files`), else by the files' names (`data/test-00000-of-00001.parquet`,
    `validation.parquet`, ...; a config's shards by their names, `paper/test_hard-00000-of-00001.parquet`): a snapshot
    of a Hub repo holds every split, and the Hub read takes the benchmark's alone. Files of one split, or of none, are
    all read. A `BenchmarkFormatError` for a folder without parquet files, whose card datasets cannot read
    (`DatasetCardError`) or names several configs and no default, whose splits lack the benchmark's, or holding a file of a split that datasets leaves out or reads as two
    (`files_by_split`)."""
    files = sorted(folder.rglob("*.parquet"))
    if not files:
        raise BenchmarkFormatError(f"{folder}: no parquet files for benchmark {spec.name!r}")
    try:
        named_configs = card_configs(folder)
    except DatasetCardError as error:  # a card that datasets cannot read either
        raise BenchmarkFormatError(str(error)) from error
    if named_configs:
        try:
            config_files = card_config_files(folder)
        except ValueError as error:  # several configs and no default, as the Hub read refuses them
            names = [config.get("config_name") for config in named_configs]
            config_folders = [folder / name for name in names if name and (folder / name).is_dir()]
            example = f" (e.g. {config_folders[0]})" if config_folders else ""
            raise BenchmarkFormatError(
                f"{error}: benchmark {spec.name!r} is read from a dataset's default config; pass the folder of one "
                f"config's files{example}"
            ) from error
        # A config's patterns match files of any format (a paper/notes.txt beside its parquet files): datasets reads
        # those of the format most of them have, and this reader parquet files.
        parquet_files = {os.path.abspath(file) for file in files}
        splits = {
            split: parquet
            for split, split_files in config_files.items()
            if (parquet := [file for file in split_files if os.path.abspath(file) in parquet_files])
        }
    else:
        # a benchmark's folder may be a config's, or a snapshot of one config, whose shards are split by their names
        configs = snapshot_config_folders(folder, files)
        config_folder = folder / configs[0] if len(configs) == 1 else folder
        try:
            splits = files_by_split(folder, files, config_folder=config_folder, leave_out_unnamed=True)
        except SplitLayoutError as error:  # a file of another split that datasets leaves out, or reads as two
            raise BenchmarkFormatError(str(error)) from error
        except ValueError as error:  # datasets': a file name that reads as no split name ("test-v2-00000-of-00001")
            raise BenchmarkFormatError(f"{folder}: {error}") from error
        if len(splits) < 2:
            return files
    if len(splits) == 1:
        return next(iter(splits.values()))
    if not splits:
        raise BenchmarkFormatError(f"{folder}: its README.md names no parquet files for benchmark {spec.name!r}")
    if spec.split not in splits:
        raise BenchmarkFormatError(
            f"{folder}: holds the splits {sorted(splits)} but not {spec.split!r}, the split benchmark {spec.name!r} is "
            "read from; pass its file or a folder of its files"
        )
    return splits[spec.split]


def _checked_texts(locate: Callable[[int], str], column: str, values: Sequence[Any]) -> list[str]:
    """`values` (one text per row) as a list, or a `BenchmarkFormatError` naming (`locate`) the file and row, and the
    column, of the first text that is not a non-blank string."""
    bad = next((row for row, value in enumerate(values) if not isinstance(value, str) or not value.strip()), None)
    if bad is not None:
        raise BenchmarkFormatError(f"{locate(bad)}, column {column!r}: {values[bad]!r:.80}; expected a non-empty string")
    return list(values)


def _categories(locate: Callable[[int], str], column: str, values: Sequence[Any]) -> list[str]:
    """The category of each row, lower-cased; a value that is not a non-blank string (None became the category
    "none", 3 the category "3") or that is `OVERALL_SUBSET` in any case is a `BenchmarkFormatError` naming the file,
    row and column."""
    categories = _checked_texts(locate, column, values)
    refuse_overall_subset(categories, lambda row: f"{locate(row)}, column {column!r}", BenchmarkFormatError)
    return [category.lower() for category in categories]


def _load_retrieval(source: str, spec: BenchmarkSpec, token: str | None) -> RetrievalBenchmark:
    table, locate = _read_table(source, spec, token)
    image_column, caption_column = spec.columns
    values = table[caption_column]
    # A string is a sequence too: list() would split one caption into characters.
    bad = [row for row, row_captions in enumerate(values)
           if isinstance(row_captions, str) or not isinstance(row_captions, Sequence) or not row_captions
           or not all(isinstance(caption, str) and caption.strip() for caption in row_captions)]
    if bad:
        raise BenchmarkFormatError(
            f"{locate(bad[0])}, column {caption_column!r}: {values[bad[0]]!r:.80}; expected a non-empty list of non-empty "
            f"strings per image ({len(bad)} such rows)"
        )
    captions = [list(row_captions) for row_captions in values]
    return RetrievalBenchmark(spec.name, LazyImages(table, image_column, locate), captions)


def _load_quadruple_table(source: str, spec: BenchmarkSpec, token: str | None) -> QuadrupleBenchmark:
    """Tables with one quadruple per row; `spec.columns` = (image0, image1, text0, text1)."""
    table, locate = _read_table(source, spec, token)
    image0, image1, text0, text1 = spec.columns
    images0, images1 = LazyImages(table, image0, locate), LazyImages(table, image1, locate)
    texts0, texts1 = (_checked_texts(locate, column, table[column]) for column in (text0, text1))
    quadruples = IndexedQuadruples(images0, images1, texts0, texts1)
    categories = _categories(locate, spec.category_column, table[spec.category_column]) if spec.category_column else None
    return QuadrupleBenchmark(spec.name, quadruples, categories)


class IndexedQuadruples(LazySequence):
    """Quadruples held as four columns, the images lazy (a loaded benchmark's `quadruples`): `evaluation.protocols`
    reads them by `columns()`, so that no image is decoded to read a text, and their texts, checked when loaded, are
    not checked again."""

    def __init__(self, images0: Sequence, images1: Sequence, texts0: list[str], texts1: list[str]):
        if not len(images0) == len(images1) == len(texts0) == len(texts1):
            raise BenchmarkFormatError(
                f"quadruples: columns have different lengths ({len(images0)}, {len(images1)}, {len(texts0)}, {len(texts1)})"
            )
        self.images0, self.images1, self.texts0, self.texts1 = images0, images1, texts0, texts1

    def __len__(self) -> int:
        return len(self.texts0)

    def _item(self, index: int) -> Quadruple:
        return Quadruple(self.images0[index], self.images1[index], self.texts0[index], self.texts1[index])

    def columns(self) -> tuple[Sequence, Sequence, list[str], list[str]]:
        """(images0, images1, texts0, texts1) as held: the evaluation reads the texts without decoding any image."""
        return self.images0, self.images1, self.texts0, self.texts1


# -- native folder layouts ---------------------------------------------------------------------------
def _hub_folder(source: str, allow_patterns: list[str], token: str | None, *, layout: str) -> Path:
    """A local folder for `source`: itself if it is one, else a snapshot of the Hub dataset repo, read with `token`.
    A local file is refused, naming the folder `layout` the benchmark needs (as a Hub id it would be a traceback)."""
    path = expanded_path(source)
    if path.is_dir():
        return path
    if path.exists():
        raise BenchmarkFormatError(f"{path}: a file; {layout}: give that folder (or a Hub dataset id)")
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(source, repo_type="dataset", allow_patterns=allow_patterns, token=token))


def _image_files(files: list[Path], places: list[str]) -> LazyImageFiles:
    """`files`, checked to exist, decoded on access; `places[i]` names where the benchmark lists file i."""
    missing = next((row for row, file in enumerate(files) if not file.is_file()), None)
    if missing is not None:
        raise BenchmarkFormatError(f"{places[missing]}: image file is missing: {files[missing]}")
    return LazyImageFiles(files, places)


NATURALBENCH_ARCHIVE = "NaturalBench-Retrieval.zip"


def _naturalbench_folder(folder: Path) -> Path:
    """The folder holding metadata.json: `folder` itself, its NaturalBench-Retrieval/ subfolder, or
    the archive in `folder` extracted under HF_HOME/maple (never inside the read-only Hub cache)."""
    for candidate in (folder, folder / "NaturalBench-Retrieval"):
        if (candidate / "metadata.json").exists():
            return candidate
    archive = folder / NATURALBENCH_ARCHIVE
    if not archive.exists():
        return folder  # reported by the caller
    import shutil

    from huggingface_hub import constants

    # One folder per archive file and version: another copy, or the archive replaced, never reads a stale folder.
    status = archive.stat()
    key = hashlib.sha256(f"{archive.resolve()}:{status.st_size}:{status.st_mtime_ns}".encode()).hexdigest()[:16]
    target = Path(constants.HF_HOME) / "maple" / "naturalbench" / key
    if not target.exists():  # unpacked beside it and renamed when complete, so an interrupted unpack is redone
        staging = target.with_name(f"{key}.partial-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.unpack_archive(archive, staging)
        try:
            staging.rename(target)
        except OSError:  # another process finished first
            shutil.rmtree(staging, ignore_errors=True)
    return target / "NaturalBench-Retrieval"


def _load_naturalbench(source: str, spec: BenchmarkSpec, token: str | None) -> QuadrupleBenchmark:
    """NaturalBench-Retrieval: `metadata.json` (a list of {index, image_0, image_1, caption_0,
    caption_1}) and `images/`, as in the zip of the Hub repo; parquet in the same columns also works."""
    path = expanded_path(source)
    # A snapshot of the Hub repo holds the VQA benchmark's parquet files beside the retrieval archive: the native
    # layout wins wherever it is present.
    native = ("metadata.json", "NaturalBench-Retrieval/metadata.json", NATURALBENCH_ARCHIVE)
    if path.suffix == ".parquet" or (path.is_dir() and not any((path / name).exists() for name in native) and any(path.rglob("*.parquet"))):
        return _load_quadruple_table(source, spec, token)
    layout = "NaturalBench-Retrieval needs a folder holding metadata.json and images/ (or its zip)"
    if not path.is_dir():
        snapshot = _hub_folder(source, [NATURALBENCH_ARCHIVE, "metadata.json", "images/**", "NaturalBench-Retrieval/**"],
                               token, layout=layout)
        if not any((snapshot / name).exists() for name in native):  # a copy in the parquet columns, read as a table
            return _load_quadruple_table(source, spec, token)
        path = snapshot
    folder = _naturalbench_folder(path)
    metadata_file = folder / "metadata.json"
    if not metadata_file.is_file():
        raise BenchmarkFormatError(f"{folder}: {layout}")
    try:
        items = json.loads(metadata_file.read_text())
    except json.JSONDecodeError as error:
        raise BenchmarkFormatError(f"{metadata_file}: not valid JSON: {error}") from None
    if not isinstance(items, list) or not items:
        raise BenchmarkFormatError(f"{metadata_file}: expected a non-empty list of entries with keys {list(spec.columns)}")
    for position, item in enumerate(items):
        missing = [key for key in spec.columns if not isinstance(item, dict) or key not in item]
        if missing:
            raise BenchmarkFormatError(f"{metadata_file}: entry {position} lacks {missing} (expected keys {list(spec.columns)})")
        for key in spec.columns:  # image file names and captions
            if not isinstance(item[key], str) or not item[key].strip():
                raise BenchmarkFormatError(f"{metadata_file}: entry {position}, {key!r} is {item[key]!r:.80}; expected a non-empty string")
    images0, images1 = (
        _image_files([folder / "images" / item[key] for item in items],
                     [f"{metadata_file}: entry {position}, {key!r}" for position in range(len(items))])
        for key in spec.columns[:2]
    )
    texts0, texts1 = ([item[key] for item in items] for key in spec.columns[2:])
    return QuadrupleBenchmark(spec.name, IndexedQuadruples(images0, images1, texts0, texts1), None)


MMVP_IMAGE_FOLDER = "MLLM_VLM Images"
MMVP_TEXT_PREFIX = "a photo of "  # the MMVP repository's scripts/evaluate_vlm.py puts it before every statement


def _load_mmvp(source: str, spec: BenchmarkSpec, token: str | None) -> QuadrupleBenchmark:
    """MMVP-VLM: `Questions.csv` with rows (Question ID, Type, Statement), consecutive rows forming
    a pair, and images `MLLM_VLM Images/<Type>/<Question ID>.jpg`. Texts are "a photo of <Statement>", as
    the benchmark's own evaluation script (`evaluate_vlm.py`) writes them."""
    layout = f"MMVP-VLM needs a folder holding Questions.csv and '{MMVP_IMAGE_FOLDER}/'"
    folder = _hub_folder(source, ["Questions.csv", f"{MMVP_IMAGE_FOLDER}/**"], token, layout=layout)
    questions_file = folder / "Questions.csv"
    if not questions_file.is_file():
        raise BenchmarkFormatError(f"{folder}: {layout}")
    raw = questions_file.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # UTF-8, with the byte-order mark Excel writes or without
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise BenchmarkFormatError(
            f"{questions_file}, line {line}: not UTF-8 ({error.reason} at byte {error.start}); save it as UTF-8"
        ) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        rows, lines = [], []  # lines[i]: the line row i starts on (a quoted statement may span several)
        while True:
            first_line = reader.line_num + 1
            row = next(reader, None)
            if row is None:
                break
            if not row:  # a blank line, which csv reads as no fields
                continue
            rows.append(row)
            lines.append(first_line)
    except csv.Error as error:  # e.g. a NUL byte
        raise BenchmarkFormatError(f"{questions_file}, line {reader.line_num}: not readable as CSV ({error})") from None
    if header is None or len(header) != 3:
        raise BenchmarkFormatError(f"{questions_file}: expected a header with 3 columns {list(spec.columns)}, got {header}")
    if not rows or len(rows) % 2:
        raise BenchmarkFormatError(f"{questions_file}: statements come in pairs; got {len(rows)} rows")
    for line, row in zip(lines, rows):
        if len(row) != 3 or not all(field.strip() for field in row):
            raise BenchmarkFormatError(
                f"{questions_file}, line {line}: expected 3 fields {list(spec.columns)}, none of them empty, got {row}"
            )
    # both images of a pair are in the folder of its first row's Type
    files = [folder / MMVP_IMAGE_FOLDER / first[1] / f"{row[0]}.jpg"
             for first, second in zip(rows[0::2], rows[1::2]) for row in (first, second)]
    places = [f"{questions_file}, line {line}" for line in lines]
    images0, images1 = _image_files(files[0::2], places[0::2]), _image_files(files[1::2], places[1::2])
    texts0, texts1 = ([MMVP_TEXT_PREFIX + statement for _, _, statement in rows[first::2]] for first in (0, 1))
    types = [category for _, category, _ in rows[0::2]]
    refuse_overall_subset(types, lambda pair: f"{questions_file}, line {lines[2 * pair]}, column 'Type'",
                          BenchmarkFormatError)
    categories = [category.lower() for category in types]
    return QuadrupleBenchmark(spec.name, IndexedQuadruples(images0, images1, texts0, texts1), categories)


BENCHMARKS: dict[str, BenchmarkSpec] = {
    spec.name: spec
    for spec in (
        BenchmarkSpec("coco", "retrieval", "nlphuji/mscoco_2014_5k_test_image_text_retrieval",
                      "MS-COCO 2014 Karpathy 5k test: 5,000 images, about 5 captions each", _load_retrieval,
                      columns=("image", "caption")),
        BenchmarkSpec("flickr30k", "retrieval", "nlphuji/flickr_1k_test_image_text_retrieval",
                      "Flickr30K Karpathy 1k test: 1,000 images, 5 captions each", _load_retrieval,
                      columns=("image", "caption")),
        BenchmarkSpec("winoground", "quadruples", "facebook/winoground",
                      "Winoground: 400 quadruples; categories = collapsed_tag", _load_quadruple_table,
                      columns=("image_0", "image_1", "caption_0", "caption_1"), category_column="collapsed_tag"),
        BenchmarkSpec("naturalbench", "quadruples", "BaiqiL/NaturalBench",
                      "NaturalBench-Retrieval: 1,200 quadruples", _load_naturalbench,
                      columns=("image_0", "image_1", "caption_0", "caption_1")),
        BenchmarkSpec("mmvp", "quadruples", "MMVP/MMVP_VLM",
                      "MMVP-VLM: 135 pairs in 9 visual-pattern categories", _load_mmvp,
                      columns=("Question ID", "Type", "Statement")),
        BenchmarkSpec("bivlc", "quadruples", "imirandam/BiVLC",
                      "BiVLC: 2,933 quadruples; categories = type (replace, swap, add)", _load_quadruple_table,
                      columns=("image", "negative_image", "caption", "negative_caption"), category_column="type"),
    )
}


def check_source(name: str, source: str) -> None:
    """Raise `BenchmarkSourceError` when `source` is empty, or can only be a local path (not a Hub id, or named as a
    file: `maple.hub.names_a_file`) and does not exist: a check that costs nothing, so a command can make it before
    loading any model."""
    from maple.hub import is_hub_id, names_a_file

    if not source.strip():  # Path("") is the current folder
        raise BenchmarkSourceError(f"benchmark {name!r}: the source is empty; expected a path or a Hub dataset id")
    if not expanded_path(source).exists() and (not is_hub_id(source) or names_a_file(source)):
        raise BenchmarkSourceError(f"benchmark {name!r}: no such file or folder: {source}")


def load_benchmark(
    name: str, source: str | None = None, token: str | None = None
) -> RetrievalBenchmark | QuadrupleBenchmark:
    """Load benchmark `name` (see `BENCHMARKS`) from `source` (default: its official Hub id); a Hub dataset is read
    with `token` (None: HF_TOKEN or the saved login).

    Raises `BenchmarkSourceError` naming the benchmark and the source when the source cannot be read
    (datasets and the Hub client raise FileNotFoundError, ConnectionError or HTTP errors, all OSErrors; for a Hub
    repo, what the Hub answered: `maple.hub.hub_read_failure`), `BenchmarkFormatError` when it is not in the
    benchmark's schema. A Hub source's `token` that cannot be sent (`maple.hub.token_problem`) is a
    `BenchmarkSourceError` saying why, without the token, before any request."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; expected one of {sorted(BENCHMARKS)}")
    spec = BENCHMARKS[name]
    source = spec.hub_id if source is None else source
    check_source(name, source)
    from maple.hub import hub_repo, token_problem

    # a Hub source only: httpx would refuse to send such a token (read as an unreachable Hub) or fail to encode it (a
    # UnicodeEncodeError naming no problem); huggingface_hub's token=True/False pass unchecked
    if not expanded_path(source).exists() and (problem := token_problem(token)) is not None:
        raise BenchmarkSourceError(f"benchmark {name!r}: token: {problem}; {hub_repo(source, 'dataset')} was not read")
    try:
        return spec.loader(source, spec, token)
    except OSError as error:
        from maple.hub import dataset_read_problem

        raise BenchmarkSourceError(
            f"benchmark {name!r}: cannot read source {source!r}: {dataset_read_problem(error, source, token)}"
        ) from error
    except RuntimeError as error:
        if "Dataset scripts are no longer supported" not in str(error):
            raise
        # Some official repos hold a loading script and raw files; datasets >= 4 runs no scripts.
        raise BenchmarkSourceError(
            f"benchmark {name!r}: {source!r} is a script-based dataset ({error}), which this datasets version cannot "
            f"load: pass a parquet copy in the schema of docs/evaluation.md with --source {name}=PATH"
        ) from error
