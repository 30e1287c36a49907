"""Checks of a local source's data files before `datasets` reads them, each a `SourceError` naming the file (and the
line and column where it can): a data file that does not read (`data_files_read`), a parquet file of no rows that
`datasets` cannot read (`local_parquet_metadata`, `check_parquet_row_groups`), an image folder's caption table that
`datasets` cannot read for want of rows or a header (`check_caption_table_rows`), and a JSON column of values of several
types, which `datasets` would read as text (`check_json_value_types`). `sources.load_source` runs them; `SourceError`
is defined here, and raised by both."""

from __future__ import annotations

import bz2
import contextlib
import csv
import gzip
import io
import json
import lzma
import os
import reprlib
import traceback
import zipfile
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.json as paj
import pyarrow.parquet as pq
from datasets.exceptions import DatasetGenerationError
from datasets.features.features import encode_nested_example
from datasets.packaged_modules.json.json import JsonConfig
from datasets.utils.file_utils import is_local_path


class SourceError(ValueError):
    """The source data (or the recipe applied to it) cannot be built; the message says what to change. (Imported by
    `sources` too, whose checks raise it as these do.)"""


def data_files_by_split(data_files: Mapping[Any, Iterable[Any]]) -> dict[str, list[str]]:
    """A builder's `config.data_files` (split names and file paths of `datasets`' own types) as plain strings."""
    return {str(name): [str(file) for file in files] for name, files in data_files.items()}


def all_data_files(data_files: Mapping[Any, Iterable[Any]]) -> list[str]:
    """Every file of `data_files` (`data_files_by_split`), split after split, as `datasets` reads them."""
    return [file for files in data_files_by_split(data_files).values() for file in files]


# What reading a file raises, beside ValueErrors, where it is damaged (a compressed file cut short: EOFError; zlib's and
# lzma's errors; a bz2 or zstd stream: OSError; an image folder's zip archive: BadZipFile) or cannot be read at all: a
# `SourceError` only where a data file was being read (a full disk or a lost connection elsewhere is no data file's
# fault)
FILE_READ_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError, zipfile.BadZipFile)


@contextlib.contextmanager
def data_files_read(source: str, files: Iterable[str] = ()) -> Iterator[None]:
    """A data file of `source` that does not read inside (a malformed metadata.csv / .jsonl: pandas' and pyarrow's
    parse errors are ValueErrors, wrapped by `datasets` or not; a parquet file that is not one; a compressed file that
    is damaged, `FILE_READ_ERRORS`) is a `SourceError` naming the source, the file of `files` being read
    (`file_being_read`), if known, and the cause."""
    try:
        yield
    except SourceError:
        raise
    except (ValueError, DatasetGenerationError, *FILE_READ_ERRORS) as error:
        cause = error.__cause__ or error
        file = file_being_read(cause, set(files))
        if file is None and isinstance(error, FILE_READ_ERRORS):
            raise
        kind = "zlib.error" if isinstance(cause, zlib.error) else type(cause).__name__  # (not "error")
        raise SourceError(
            f"source {source}: {'its data files' if file is None else f'its data file {file}'} cannot be read "
            f"({kind}: {' '.join(str(cause).split())})"
        ) from error


def file_being_read(error: BaseException, files: set[str]) -> str | None:
    """The one of `files` that was being read where `error` was raised: the innermost frame of its traceback that
    holds one of them in a variable, or None. pandas' and pyarrow's errors name a line or a row but not the file, and
    `datasets` names it in a log line only: of a folder of many tables, the error said where, but not in which file."""
    frames = [frame for frame, _ in traceback.walk_tb(error.__traceback__)]
    for frame in reversed(frames):
        for value in frame.f_locals.values():
            # a compressed file is read by a chained URL ending in its path: "gzip://part-0.csv::/data/part-0.csv.gz"
            if isinstance(value, (str, os.PathLike)) and (file := os.fspath(value).rsplit("::", 1)[-1]) in files:
                return file
    return None


def local_parquet_metadata(
    source: str, data_files: Mapping[Any, Iterable[Any]]
) -> dict[str, dict[str, pq.FileMetaData]] | None:
    """For a folder of parquet files only (None where a data file is not one): each split's files and their parquet
    metadata (footers only), read as data files (`data_files_read`: a file that is no parquet is named)."""
    files = data_files_by_split(data_files)
    every_file = all_data_files(files)
    if not all(file.endswith(".parquet") for file in every_file):
        return None
    with data_files_read(source, every_file):
        return {name: {file: pq.read_metadata(file) for file in names} for name, names in files.items()}


def check_parquet_row_groups(source: str, metadata: dict[str, dict[str, pq.FileMetaData]]) -> None:
    """A `SourceError` naming a parquet file of no rows written with a row group (as pyarrow and pandas write one), of
    `metadata` (`local_parquet_metadata`), which `datasets` fails on ("BatchSize must be greater than 0"; one written by
    `datasets`, without row groups, reads)."""
    empty = next((file for files in metadata.values() for file, meta in files.items()
                  if meta.num_rows == 0 and meta.num_row_groups > 0), None)
    if empty is not None:
        raise SourceError(f"source {source}: its data file {empty} has no rows, which datasets cannot read: remove it")


# An image folder's caption table (`datasets`' metadata file), by the names `datasets` reads
CAPTION_TABLES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")


def local_archive_members(files: Iterable[str]) -> dict[str, list[str]]:
    """The member names of each local zip archive of `files` (data files: an image folder's archives, which it searches
    for images and a caption table), each archive's listing read once for every check of a load."""
    members = {}
    for file in (file for file in files if file.lower().endswith(".zip") and is_local_path(file)):
        with zipfile.ZipFile(file) as archive:
            members[file] = archive.namelist()
    return members


def check_caption_table_rows(
    source: str, data_files: Mapping[Any, Iterable[Any]], splits: Sequence[str], archives: Mapping[str, list[str]]
) -> None:
    """A `SourceError` naming a folder's caption table (`CAPTION_TABLES`) that `datasets` cannot read, of any split (it
    prepares every split): a metadata.csv without a header (empty, blank lines, a BOM alone: pandas' "No columns to
    parse from file") or a metadata.parquet of no rows ("BatchSize must be greater than 0"); and, where no caption table
    of `splits` (those a build reads) has a row (empty, blank lines, a header alone), the first of them, which
    `datasets` failed on with an IndexError or StopIteration traceback (of a zip archive's, which imagefolder searches
    for one: with README filters, said to be theirs, since they kept no row). A table of no rows that `datasets` reads
    beside one with rows (a metadata.csv's header alone, a metadata.jsonl without a line) is read. `archives`: the
    members of the local zip archives (`local_archive_members`), of which only one holding a caption table is opened
    again."""
    files_by_split = data_files_by_split(data_files)
    read = {file for name in splits for file in files_by_split[name]}
    tables_read: dict[str, bool] = {}  # each caption table of `splits`, where errors name it: whether it has rows
    for file in all_data_files(data_files):
        with data_files_read(source, [file]):
            if file in archives:
                members = [member for member in archives[file] if os.path.basename(member) in CAPTION_TABLES]
                with zipfile.ZipFile(file) if members else contextlib.nullcontext() as archive:
                    starts = {f"{member} in its archive {file}": _caption_table_start(member, archive.open)
                              for member in members}
            else:
                starts = {file: _caption_table_start(file, lambda path: open(path, "rb"))}
        for where, start in starts.items():
            if start is None:
                continue
            readable, has_rows = start
            if not readable:
                raise SourceError(f"source {source}: its caption table {where} has no rows"
                                  f"{'' if where.endswith('.parquet') else ' and no header'}, which datasets cannot "
                                  "read: remove it")
            if file in read:
                tables_read[where] = has_rows
    if tables_read and not any(tables_read.values()):
        raise SourceError(f"source {source}: its caption table {next(iter(tables_read))} has no rows")


def _caption_table_start(file: str, opener: Callable[[str], BinaryIO]) -> tuple[bool, bool] | None:
    """Whether `file`, opened for reading bytes by `opener` (a zip archive's member too), is read by `datasets` and has
    rows, where it is a caption table (`CAPTION_TABLES`, by name); None for any other file. A metadata.csv without a
    header and a metadata.parquet of no rows are not read."""
    name = os.path.basename(file)
    if name not in CAPTION_TABLES:
        return None
    with opener(file) as handle:
        if name.endswith(".parquet"):
            has_rows = pq.read_metadata(handle).num_rows > 0
            return has_rows, has_rows
        # read up to its first row only: a table of millions of captions is not held in memory
        with io.TextIOWrapper(handle, encoding="utf-8-sig", newline="") as text:  # "-sig": a leading BOM is no row
            # a csv record may hold line breaks in quotes, and its first is the header
            records = csv.reader(text) if name.endswith(".csv") else ([line] for line in text)
            rows = (record for record in records if any(field.strip() for field in record))
            if not name.endswith(".csv"):
                return True, next(rows, None) is not None
            has_header = next(rows, None) is not None
            return has_header, has_header and next(rows, None) is not None


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


def check_json_value_types(
    source: str,
    data_files: Mapping[Any, Iterable[Any]],
    splits: Sequence[str],
    columns: Sequence[str],
    *,
    caption_tables: bool,
) -> None:
    """Raise a `SourceError` where a column of `columns` holds values of several JSON types in the JSON data files
    (`_is_json_data_file`, compressed too) of `splits`, those a build reads. It names the file, line and column of the
    first value whose type differs from the column's first value, and where that one is (a caption that is a list
    among strings). Nulls go with any type, integers with floats.

    Why: `datasets` reads JSON Lines in chunks (`JSON_CHUNK_SIZE`; a file of one JSON array as one chunk), and takes
    a column's type from the first chunk of the first file, for every later chunk, file and split:
    - a mix in that first chunk makes the column a `datasets.Json` one (`sources.open_source` refuses it for each of
      the build's columns);
    - a mix in a later chunk makes it JSON text, each value serialised, from that chunk on, in every later file of the
      split too, without an error: beside plain captions before, every caption after is read with quotes (`a dog` as
      `"a dog"`);
    - a later chunk or file of values of another type is read as JSON text (`{"en": "a cat"}` as `{"en":"a cat"}`),
      or fails.
    An image folder's metadata.jsonl files (`caption_tables`) are read in no set order, the values of one as the type
    of another's; the error says what `datasets` would make of the column, by reader (`MIXED_TYPES_READ_AS`).

    Which files: only the build's `columns` are checked, in the files of `splits` (a mix across the files of one split
    leaves the others as they were), after the first file of the first split, which sets every split's column types.

    Cost: it runs at every start, so it is cheap where nothing is wrong. pyarrow reads each file as `datasets` does
    (`_json_lines_types`), and only a file it finds fault with is read line by line in Python, to name the line (or
    to pass it: a column the build does not read may mix types)."""
    if not columns:
        return
    files = data_files_by_split(data_files)
    first_file = next(iter(files.values()))[:1]
    # column -> (JSON type, file, where) of its first non-null value; where is None until needed, for a file pyarrow read
    first: dict[str, tuple[str, str, str | None]] = {}
    for file in dict.fromkeys([*first_file, *(file for name in splits for file in files[name])]):
        if not _is_json_data_file(file):
            continue
        with data_files_read(source, [file]):  # (text that is no UTF-8)
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


def declared_value_problem(
    source: str, files: Iterable[str], features: Mapping[str, Any], caption_table_names: Collection[str]
) -> SourceError | None:
    """The `SourceError` naming the first value of an image folder's JSON Lines caption table among `files` (its data
    files) that the feature a README declares for its column (`features`) cannot encode, as `datasets` encodes each row
    (`encode_nested_example`: an int64 column's "abc", a list), and the file, line and column; None where there is
    none. A caption table is a file named as one of `caption_table_names` (the config's `metadata_filenames`, or
    `CAPTION_TABLES`), read as JSON Lines where its suffix is .jsonl (`_json_rows`), as imagefolder reads them: not
    any other JSON file of the folder (notes.jsonl). Only once `datasets` failed: every line is read in Python."""
    tables = [file for file in files
              if os.path.basename(file) in caption_table_names and os.path.splitext(file)[1] == ".jsonl"]
    for file in tables:
        for where, row in _json_rows(source, file):
            for column, feature in features.items():
                if row.get(column) is None:
                    continue
                try:
                    encode_nested_example(feature, row[column])
                except (ValueError, TypeError) as error:
                    declared = getattr(feature, "dtype", None) or type(feature).__name__
                    return SourceError(
                        f"source {source}: its data file {file}, {where}: column {column!r} holds "
                        f"{reprlib.repr(row[column])}, which its declared type {declared} (features:) cannot read "
                        f"({type(error).__name__}: {error})"
                    )
    return None


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
