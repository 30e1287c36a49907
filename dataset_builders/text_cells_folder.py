"""CSV cells read as the text written: the pandas options that read them so (`CSV_TEXT_CELLS`), and
`TextCellsImageFolder`, `datasets`' imagefolder reading a metadata.csv with them, its README filters comparing numbers
and booleans as imagefolder compared them.

A module of its own because `datasets` patches the module of every builder it makes, and of the builders it subclasses,
for streaming (`datasets.streaming.extend_module_for_streaming`): its `open`, `os.path`, `pathlib.Path`, `gzip.open`,
`pandas.read_csv`... become `datasets`' own (`xopen`, `xpandas_read_csv`, which read local paths as before and remote
ones with fsspec). Here that touches only `TextCellsImageFolder`'s reading of the metadata files `datasets` downloaded;
in `sources`, which reads a Hub CSV table's columns with `pandas.read_csv(..., storage_options=...)`, it broke them.
Nothing here imports `sources`, which imports this module."""

from __future__ import annotations

import dataclasses
import functools
import operator
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import datasets
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datasets.features.features import require_storage_cast
from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

from .source_files import SourceError

# pandas' defaults read a CSV cell `000123` as the number 123 (the ids `0123` and `123` collided, and were written back
# unlike the user's) and `NA`, `null`, `None`, `nan`, `N/A`... as missing (such a caption was skipped as empty). Every
# cell is read as the text written (these options, with each column's type text: `sources._csv_text_features`,
# `TextCellsImageFolder._csv_cell_types`; but a column whose type a README declares), and only an empty cell is missing:
# None, as before (an empty caption is skipped, a row without an id takes its zero-padded row index). Every column, not
# only the build's: a number column whose `NA` became text would be text in one 10,000-row chunk and numbers in the
# next, which `datasets` cannot write as one column.
CSV_TEXT_CELLS = {"keep_default_na": False, "na_values": [""]}


class TextCellsImageFolder(ImageFolder):
    """`datasets`' imagefolder, reading a metadata.csv with every cell as the text written, an empty one as missing
    (`CSV_TEXT_CELLS`), but in the columns whose type the README declares (`_csv_cell_types`): imagefolder reads it with
    pandas' defaults, and takes no pandas options. Other metadata files (.jsonl, .parquet) are read as imagefolder reads
    them; an image folder without a CSV caption table is read by imagefolder itself (`sources._holds_csv_metadata`),
    whose config id and cache, and so a Hub source's fingerprint, it keeps."""

    # Its `DatasetInfo.builder_name`, by which `sources.csv_cells_reading` tells a source it read (`datasets` would name
    # a builder after its module), and the end of its config ids: its cache is never imagefolder's, read with pandas'
    # defaults. Its cache directory (the source's dataset name, this config id) and so its datasets' fingerprints owe
    # nothing to its module's name (`DatasetBuilder.name`), which `from_builder`'s dataset name and config id leave
    # unused.
    NAME = "imagefolder_csv_text_cells"
    # The version of its reading, its config's: a level of its cache's path (`<config id>/<version>/<hash>`), and so of
    # a Hub source's fingerprint. Raised where what it reads changes, so that no cache an older reading prepared is
    # reused (offline, it is an error: `sources._text_cells_cache`), each cached image folder prepared again once.
    # 1.0.0: the columns the README declares read as declared (from the text, a bool column's `false` was True), a
    # boolean compared with a number by README filters as 1 or 0 (as no number before).
    # 1.1.0: a cell that is no number (or no boolean) matches no comparison of README filters with one, nor a `not in`
    # one, nor the null of an `in` list (read as null, it matched those).
    VERSION = datasets.Version("1.1.0")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.info.builder_name = self.NAME
        # how every metadata.csv is read and filtered (`_read_metadata`, called for each metadata file), once
        self._cell_types = self._csv_cell_types()
        declared = self.config.features or {}  # (a column of a declared type is compared as read)
        filters = self.config.filters  # as imagefolder applies them
        self._compared = {column: kind for column, kind in _filter_literal_types(filters).items()
                          if column not in declared} if isinstance(filters, list) else {}
        self._filter_expression = _filters_expression(filters, self._compared)
        self._filtered_columns = _filtered_columns(filters) if isinstance(filters, list) else []
        self.source = self.repo_id or self.base_path  # the source its errors name (`from_builder`'s: as given)

    @classmethod
    def from_builder(cls, builder: ImageFolder, source: str, cache_dir: str | None = None) -> TextCellsImageFolder:
        """The image folder `builder` reads (its data files, Hub repo and revision, and config: one named in the
        README included), read with CSV cells as text; its datasets cache in `cache_dir` (None: the default), of its
        reading's version (`VERSION`). `source`: the source as the user gave it, which its errors name."""
        settings = {field.name: getattr(builder.config, field.name) for field in dataclasses.fields(builder.config)}
        settings["version"] = cls.VERSION
        folder = cls(
            cache_dir=cache_dir, dataset_name=builder.dataset_name, config_name=settings.pop("name"), hash=builder.hash,
            base_path=builder.base_path, token=builder.token, repo_id=builder.repo_id,
            storage_options=builder.storage_options, config_id=f"{builder.config_id}-{cls.NAME}", **settings,
        )
        folder.source = source
        return folder

    def _csv_cell_types(self) -> defaultdict[str, Any]:
        """The pandas dtype each metadata.csv column is read with: as the README's config declares it (`features:`), as
        imagefolder reads a declared column (and `sources._csv_text_features` a CSV table's), and every other column as
        text. Declared types were otherwise applied to the text afterwards, by `datasets`' cast: a bool column's
        `false` was True."""
        declared = self.config.features
        return defaultdict(_text_cells, {} if declared is None else {
            name: object if require_storage_cast(feature) else field.type.to_pandas_dtype()
            for (name, feature), field in zip(declared.items(), declared.arrow_schema)
        })

    def _read_metadata(self, metadata_file: str, metadata_ext: str = "") -> Iterator[pa.Table]:
        if metadata_ext != ".csv":
            yield from super()._read_metadata(metadata_file, metadata_ext=metadata_ext)
            return
        # `datasets`' xpandas_read_csv once this module is patched: a downloaded or local file, opened by path
        chunks = pd.read_csv(metadata_file, iterator=True, chunksize=10_000, dtype=self._cell_types, **CSV_TEXT_CELLS)
        for frame in chunks:
            # pyarrow names a column the file lacks among the columns `_filtered` adds, which are no file's
            missing = [column for column in self._filtered_columns if column not in frame.columns]
            if missing:
                raise SourceError(
                    f"source {self.source}: its README's filters {self.config.filters} compare the column(s) "
                    f"{missing}, which its metadata file {metadata_file} lacks (its columns: {list(frame.columns)})"
                )
            table = pa.Table.from_pandas(frame)
            if self._filter_expression is not None:
                table = _filtered(table, frame, self._filter_expression, self._compared)
            if len(table) > 0:
                yield table


def _text_cells() -> type:
    """The pandas dtype of a metadata.csv column no README declares: text (`TextCellsImageFolder._csv_cell_types`'
    default; a function, not a lambda, as a builder pickles: `datasets` pickles one to prepare splits in several
    processes)."""
    return str


# The cells pandas' defaults read as booleans (in a column of nothing else), which a filter comparing a column with True
# or False compares
PANDAS_BOOLEANS = {"True": True, "TRUE": True, "true": True, "False": False, "FALSE": False, "false": False}


# The kinds of value a README filter compares a column with, as errors name them: a number (an int as a float), a
# boolean, text
FILTER_VALUE_KINDS = {float: "a number", bool: "a boolean", str: "text"}


def _filter_values(filters: list) -> dict[str, dict[type, Any]]:
    """Each column an image folder's `filters` compare with values (`value`, or the values of an `in`), and its first
    value of each kind (`FILTER_VALUE_KINDS`). `filters` as README `filters:` give them and
    `pyarrow.parquet.filters_to_expression` reads them: a list of `[column, op, value]` (all to hold), or a list of such
    lists (any to hold). A predicate that is none (`[]`, `[column, op]`) is a ValueError, as pyarrow's."""
    values: dict[str, dict[type, Any]] = {}
    for column, _, value in (predicate for conjunction in _conjunctions(filters) for predicate in conjunction):
        for literal in value if isinstance(value, (list, tuple, set)) else [value]:
            kind = bool if isinstance(literal, bool) else float if isinstance(literal, (int, float)) else type(literal)
            if kind in FILTER_VALUE_KINDS:
                values.setdefault(column, {}).setdefault(kind, literal)
    return values


def _conjunctions(filters: list) -> list[list]:
    """README `filters` as a list of conjunctions (any to hold), each a list of `[column, op, value]` (all to hold), as
    `pyarrow.parquet.filters_to_expression` reads them: one conjunction is given as its list of predicates."""
    # (an empty first item is read as a predicate: `[[]]` and `[[], [...]]` hold no [column, op, value] to unpack)
    return filters if filters and filters[0] and not isinstance(filters[0][0], str) else [filters]


def _filtered_columns(filters: list) -> list[str]:
    """The columns README `filters` (`_conjunctions`) compare, each once."""
    return list(dict.fromkeys(predicate[0] for conjunction in _conjunctions(filters) for predicate in conjunction))


def check_filter_values(source: str, filters: Any, declared: datasets.Features | None = None) -> None:
    """A `SourceError` naming `filters`, an image folder's README `filters:`, where pyarrow reads no filters in them (a
    predicate that is no `[column, op, value]`, an operator it lacks: a bare ValueError, or one blaming the metadata
    file being read), and naming the column too where they compare one column with values of several kinds (a number
    and text, a number and a boolean), or a column of `declared` features (those of a metadata.csv's README, read as
    declared: `TextCellsImageFolder`) with values of another kind than its type's (`_declared_kind`: a bool column
    with 1, a string column with 2): pyarrow compares a column with values of one type only (it failed with "Function
    'equal' has no kernel matching input types (double, string)"), and a metadata.csv column is read as numbers,
    booleans or text for its filters (`TextCellsImageFolder`)."""
    if not isinstance(filters, list):  # (a pyarrow expression, given in code)
        return
    try:
        values_by_column = _filter_values(filters)
        several_kinds = {column: values for column, values in values_by_column.items() if len(values) > 1}
        if not several_kinds:  # (pyarrow fails on an `in` of several kinds too, naming no column)
            pq.filters_to_expression(filters)
    except (ValueError, TypeError) as error:
        raise SourceError(
            f"source {source}: its README's filters {filters} are malformed ({type(error).__name__}: {error}): give a "
            "list of [column, op, value] (all to hold), or a list of such lists (any to hold)"
        ) from None
    for column, values in several_kinds.items():
        compared = " and with ".join(f"{FILTER_VALUE_KINDS[kind]} ({value!r})" for kind, value in values.items())
        raise SourceError(f"source {source}: its README's filters {filters} compare column {column!r} with "
                          f"{compared}: compare each column with values of one kind")
    for column, values in values_by_column.items():
        declared_kind = _declared_kind((declared or {}).get(column))
        for kind, value in values.items():
            if declared_kind not in (None, kind):
                raise SourceError(
                    f"source {source}: its README's filters {filters} compare column {column!r}, declared "
                    f"{declared[column].dtype} (features:), with {FILTER_VALUE_KINDS[kind]} ({value!r}): compare it "
                    f"with {FILTER_VALUE_KINDS[declared_kind]}"
                )


def _declared_kind(feature: Any) -> type | None:
    """The kind of filter value (`FILTER_VALUE_KINDS`) pyarrow compares a column of declared `feature` with: `bool`,
    `float` (a number) or `str` (text) for a `datasets.Value` of booleans, numbers or text; None for any other
    (timestamps, class labels: left to pyarrow) and an undeclared column."""
    dtype = feature.dtype if isinstance(feature, datasets.Value) else ""
    if dtype == "bool":
        return bool
    if dtype.startswith(("int", "uint", "float")):
        return float
    return str if dtype in ("string", "large_string") else None


def _filter_literal_types(filters: list) -> dict[str, type]:
    """The columns an image folder's `filters` compare with numbers or booleans (`_filter_values`), and which: `float`
    (a number) or `bool` (`check_filter_values` passed them: one kind a column)."""
    return {column: kind for column, values in _filter_values(filters).items() for kind in values if kind is not str}


def _unread_column(column: str) -> str:
    """The name of the column of `_filtered`'s rows telling the cells of `column` that are no number (or no boolean,
    as `column` is compared): no column of a CSV header."""
    return f"\0unread {column}"


def _filters_expression(filters: Any, compared: dict[str, type]) -> pc.Expression | None:
    """The pyarrow expression of an image folder's `filters` (README `filters:`, as `pq.filters_to_expression` reads
    them; an expression given in code as is; None: none), each predicate on a column compared with numbers or booleans
    (`compared`) holding only where the cell is one, or empty (`_unread_column`, `_filtered`): a cell that is no number
    (or no boolean) matches no comparison with one, nor a `not in` one, nor the null of an `in` list, which keeps the
    empty cells only, as pyarrow's `isin` keeps the nulls of a metadata.jsonl (`["score", "in", [1, null]]`)."""
    if not isinstance(filters, list):
        return filters
    if not compared:
        return pq.filters_to_expression(filters)
    conjunctions = []
    for conjunction in _conjunctions(filters):
        predicates = []
        for column, op, value in conjunction:
            predicate = pq.filters_to_expression([[column, op, value]])
            predicates.append(predicate & ~pc.field(_unread_column(column)) if column in compared else predicate)
        conjunctions.append(functools.reduce(operator.and_, predicates))
    return functools.reduce(operator.or_, conjunctions)


def _filtered(table: pa.Table, frame: pd.DataFrame, expression: Any, compared: dict[str, type]) -> pa.Table:
    """The rows of `table` (`frame`'s text cells) that filter `expression` (`_filters_expression`'s) keeps, a column it
    compares with numbers or booleans (`compared`) read as pandas' defaults read it, as imagefolder filtered it: `01` is
    the number 1, an empty cell is missing (null), and a cell that is no number (or no boolean, `PANDAS_BOOLEANS`)
    matches no such comparison (null, and marked in its `_unread_column`); compared with a number, a boolean is 1 or 0
    (`_numbers`). The rows are kept as text; a column compared with text is compared as the text
    written. The compared columns are of the type compared (a cell of neither kind null) in every chunk: one without a
    boolean cell was a column of NaN, which pyarrow does not compare with a boolean."""
    typed_cells = {
        column: _numbers(frame[column]) if kind is float else frame[column].map(PANDAS_BOOLEANS)
        for column, kind in compared.items() if column in frame.columns
    }
    if not typed_cells:
        return table.filter(expression)
    typed = {column: pa.array(cells, type=pa.float64() if compared[column] is float else pa.bool_(), from_pandas=True)
             for column, cells in typed_cells.items()}
    unread = {_unread_column(column): pa.array(frame[column].notna() & cells.isna(), type=pa.bool_())
              for column, cells in typed_cells.items()}
    row = "\0row"  # (no column of a CSV header)
    columns = {column: table[column] for column in table.column_names}
    rows = pa.table({**columns, **typed, **unread, row: pa.array(range(len(table)))})
    return table.take(rows.filter(expression)[row])


def _numbers(cells: pd.Series) -> pd.Series:
    """Text `cells` as numbers, for a comparison with a number as pandas makes it of the cells its defaults read: `01`
    is 1, a boolean (`PANDAS_BOOLEANS`) 1 or 0 (pandas' True == 1: the text `True` was no number, kept by no comparison,
    and imagefolder failed on a bool column compared with a number), any other cell NaN, kept by no comparison."""
    return pd.to_numeric(cells, errors="coerce").fillna(cells.map(PANDAS_BOOLEANS).astype(float))
