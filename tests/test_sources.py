"""Reading a preference build's source: errors on malformed data files name the file, and the line and column where
they can."""

import json
import re

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hub_server import run_client
from PIL import Image

from dataset_builders.builder import MaplePreferences, MaplePreferencesConfig, SkippedInput
from dataset_builders.sources import SourceError, load_source, open_source
from dataset_builders.testing import ColourJudge, thumbnail_miner


def _image_folder(folder, count: int = 2) -> None:
    folder.mkdir()
    for index in range(count):
        Image.new("RGB", (8, 8), (index * 80, 0, 0)).save(folder / f"{index}.png")


def test_a_data_file_that_does_not_read_is_named_among_the_files_of_its_folder(tmp_path):
    """pandas' and pyarrow's errors name a line or a row, but not the file: of a folder of many tables, the error
    said only that "its data files cannot be read"."""
    tables = tmp_path / "tables"
    _image_folder(tables, count=1)
    (tables / "part-0.csv").write_text("image,caption\n0.png,a red square\n")
    (tables / "part-1.csv").write_text('image,caption\n0.png,a red square\n0.png,"an unclosed quote\n')
    with pytest.raises(SourceError, match=rf"^source {tables}: its data file {tables / 'part-1.csv'} cannot be read "
                                          r"\(ParserError: .*EOF inside string"):
        load_source(str(tables), split="train", cache_dir=str(tmp_path / "cache"))
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "train-0.parquet").write_bytes(b"not parquet")
    with pytest.raises(SourceError, match=rf"^source {shards}: its data file {shards / 'train-0.parquet'} cannot be "
                                          r"read \(ArrowInvalid: .*magic bytes"):
        load_source(str(shards), split="train", cache_dir=str(tmp_path / "cache"))


def test_a_csv_file_whose_header_differs_is_named_with_both_headers(tmp_path):
    """The CSV tables were read with the columns of all files: the error blamed the first file, which lacked a column of
    another ("its data file part-0.csv cannot be read (KeyError: 'Field "text" does not exist in schema')")."""
    images = tmp_path / "images"
    _image_folder(images, count=1)
    table = tmp_path / "table"  # beside no images, or datasets would read the folder as an image folder
    table.mkdir()
    (table / "part-0.csv").write_text(f"image,caption\n{images / '0.png'},a red square\n")
    (table / "part-1.csv").write_text(f"caption,image\na red square,{images / '0.png'}\n")  # (another order reads)
    (table / "part-2.csv").write_text(f"image,text\n{images / '0.png'},a red square\n")
    with pytest.raises(SourceError, match=rf"^source {table}: its data file {table / 'part-2.csv'} has the columns "
                                          rf"\['image', 'text'\], but {table / 'part-0.csv'} has "
                                          r"\['image', 'caption'\]: datasets reads the CSV files of a split, and of "
                                          "the splits read together, with one set of columns; give them one header$"):
        load_source(str(table), split="train", cache_dir=str(tmp_path / "cache"))
    (table / "part-2.csv").unlink()
    assert load_source(str(table), split="train", cache_dir=str(tmp_path / "cache"))["caption"] == ["a red square"] * 2


def test_csv_splits_of_other_columns_are_read_one_split_at_a_time(tmp_path):
    """A train.csv with a label column beside a test.csv without (as Kaggle gives them) was refused whatever split was
    read, while a plain load_dataset reads its train split: datasets reads every split of a config with one set of
    columns (the first split's, a later split's file lacking one reads it as missing), which the build's split need not
    share with others."""
    images = tmp_path / "images"
    _image_folder(images, count=1)
    table = tmp_path / "table"
    table.mkdir()
    (table / "train.csv").write_text(f"image,caption,label\n{images / '0.png'},a red square,1\n")
    (table / "test.csv").write_text(f"caption,image\na dark square,{images / '0.png'}\n")
    cache = str(tmp_path / "cache")
    assert load_source(str(table), split="train", cache_dir=cache).remove_columns("image").to_list() == [
        {"caption": "a red square", "label": "1"}]
    assert load_source(str(table), split="test", cache_dir=cache).remove_columns("image").to_list() == [
        {"caption": "a dark square"}]
    with pytest.raises(SourceError, match=rf"^source {table}: its data file {table / 'test.csv'} has the columns "
                                          rf"\['caption', 'image'\], but {table / 'train.csv'} has \['image', "
                                          r"'caption', 'label'\]: datasets reads the CSV files of a split, and of the "
                                          "splits read together, with one set of columns; give them one header$"):
        load_source(str(table), split="train+test", cache_dir=cache)


def test_a_json_column_of_mixed_types_is_refused_naming_file_line_and_column(tmp_path):
    """datasets reads a JSON column of mixed types as JSON text: beside a first file of plain captions, every caption of
    a second file holding one list caption was read with quotes ('"a red square"'), without an error."""
    folder = tmp_path / "tables"
    _image_folder(folder, count=1)
    row = {"image": "0.png", "caption": "a red square"}
    (folder / "part-0.jsonl").write_text(json.dumps(row) + "\n")
    (folder / "part-1.jsonl").write_text("\n".join(json.dumps(line) for line in [row, row, {**row, "caption": ["a"]}]))
    config = MaplePreferencesConfig(name="paper", source=str(folder))
    with pytest.raises(SourceError, match=rf"^source {folder}: its data file {folder / 'part-1.jsonl'}, line 3: column "
                                          rf"'caption' holds a list \(\['a'\]\), but {folder / 'part-0.jsonl'}, line 1, "
                                          r"holds a string; datasets would read the column's values as JSON text \(in a "
                                          r"chunk of mixed types, strings quoted: \"a dog\"\) or fail: give it values of "
                                          r"one type \(or null\)$"):
        open_source(config, cache_dir=str(tmp_path / "cache"))
    # in a file of one JSON array, by its item
    (folder / "part-1.jsonl").unlink()
    (folder / "part-1.json").write_text(json.dumps([{**row, "caption": None}, {**row, "caption": 3}], indent=1))
    with pytest.raises(SourceError, match=rf"^source {folder}: its data file {folder / 'part-1.json'}, item 2: column "
                                          rf"'caption' holds a number \(3\), but {folder / 'part-0.jsonl'}, line 1, holds "
                                          "a string;"):
        open_source(config, cache_dir=str(tmp_path / "cache"))
    # so is a line that is no JSON, by its number (pyarrow counted rows from 0 in 10 MB chunks), in an image folder's
    # caption table too
    images = tmp_path / "images"
    _image_folder(images)
    (images / "metadata.jsonl").write_text('{"file_name": "0.png", "caption": "a"}\n{"file_name": "1.png", "caption": "b"\n')
    with pytest.raises(SourceError, match=rf"^source {images}: its data file {images / 'metadata.jsonl'}, line 2, is no "
                                          r"JSON \(Expecting ',' delimiter at column 38\)$"):
        load_source(str(images), split="train", cache_dir=str(tmp_path / "cache"), columns=["caption"])
    # a raw tab in a caption: json's message "Invalid control character at" read "... at at character 37"
    (images / "metadata.jsonl").write_text('{"file_name": "0.png", "caption": "a"}\n{"file_name": "1.png", "caption": "a\tb"}\n')
    with pytest.raises(SourceError, match=rf"^source {images}: its data file {images / 'metadata.jsonl'}, line 2, is no "
                                          r"JSON \(Invalid control character at column 37\)$"):
        load_source(str(images), split="train", cache_dir=str(tmp_path / "cache"), columns=["caption"])


def test_a_json_column_whose_type_changes_between_chunks_is_refused(tmp_path, monkeypatch):
    """pyarrow reads each file in datasets' chunks (10 MB, here a line each): a column of strings in one chunk and of
    lists in a later one is found as one that changes type inside a chunk is, and named by its line."""
    import dataset_builders.source_files

    monkeypatch.setattr(dataset_builders.source_files, "JSON_CHUNK_SIZE", 16)
    folder = tmp_path / "tables"
    _image_folder(folder, count=1)
    rows = [{"image": "0.png", "caption": caption} for caption in ("a", None, "b", ["c"])]
    (folder / "part-0.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    with pytest.raises(SourceError, match=r"part-0.jsonl, line 4: column 'caption' holds a list \(\['c'\]\), but line 1 "
                                          r"holds a string;"):
        load_source(str(folder), split="train", cache_dir=str(tmp_path / "cache"), columns=["caption"])


@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".xz", ".zst"])
def test_a_compressed_json_file_is_checked_as_the_file_inside(tmp_path, suffix):
    """datasets reads part-1.jsonl.gz as part-1.jsonl: beside a plain part-0.jsonl, its mixed captions were read as
    ['a dog', '"a dog"', '["x"]'], the check passing it by for its name; a file of one JSON array too."""
    folder = tmp_path / "tables"
    _image_folder(folder, count=1)
    row = {"image": "0.png", "caption": "a dog"}
    (folder / "part-0.jsonl").write_text(json.dumps({**row, "caption": None}) + "\n")
    compressed = folder / f"part-1.jsonl{suffix}"
    _write_compressed(compressed, "\n".join(json.dumps(line) for line in [row, {**row, "caption": ["x"]}]) + "\n")
    with pytest.raises(SourceError, match=rf"^source {folder}: its data file {compressed}, line 2: column 'caption' "
                                          r"holds a list \(\['x'\]\), but line 1 holds a string;"):
        load_source(str(folder), split="train", cache_dir=str(tmp_path / "cache"), columns=["caption"])
    compressed.unlink()
    compressed = folder / f"part-1.json{suffix}"
    _write_compressed(compressed, json.dumps([row, {**row, "caption": 3}], indent=1))
    with pytest.raises(SourceError, match=rf"^source {folder}: its data file {compressed}, item 2: column 'caption' "
                                          r"holds a number \(3\), but item 1 holds a string;"):
        load_source(str(folder), split="train", cache_dir=str(tmp_path / "cache"), columns=["caption"])


@pytest.mark.parametrize("table, damage, error", [
    ("part-0.jsonl.gz", "cut", "EOFError: Compressed file ended before the end-of-stream marker was reached"),
    ("part-0.jsonl.gz", "overwritten", "zlib.error: Error -3 while decompressing data"),
    ("part-0.jsonl.bz2", "overwritten", "OSError: Invalid data stream"),
    ("part-0.jsonl.xz", "overwritten", "LZMAError: Corrupt input data"),
    # (without columns to check, datasets reads it itself, which reads no zstd without the zstandard package)
    ("part-0.jsonl.zst", "cut", "(OSError: Truncated compressed stream|ValueError: Compression type zstd not supported)"),
    ("part-0.csv.gz", "cut", "EOFError: "),
])
@pytest.mark.parametrize("columns", [["caption"], []])
def test_a_damaged_compressed_data_file_is_named(tmp_path, table, damage, error, columns):
    """Reading it raised a bare EOFError, zlib.error, lzma.LZMAError or OSError traceback, naming no file. Without
    columns to check (no JSON file read before datasets reads it), and past a CSV table's first 10,000-row chunk,
    datasets reads it by a chained URL ("gzip://part-0.csv::/…/part-0.csv.gz"), which was taken for no data file."""
    folder = tmp_path / "tables"
    _image_folder(folder, count=1)
    rows = [{"image": "0.png", "caption": f"a red square {index}"} for index in range(20_000)]
    path = folder / table
    _write_compressed(path, "image,caption\n" + "".join(f"{row['image']},{row['caption']}\n" for row in rows)
                      if ".csv" in table else "".join(json.dumps(row) + "\n" for row in rows))
    data = path.read_bytes()
    (folder / table.replace("part-0", "part-1")).write_bytes(data)  # one of two files damaged
    path.write_bytes(data[: len(data) // 2] if damage == "cut" else data[:12] + b"\0" * 64 + data[76:])
    with pytest.raises(SourceError, match=rf"^source {folder}: its data file {path} cannot be read \({error}"):
        load_source(str(folder), split="train", cache_dir=str(tmp_path / "cache"), columns=columns)


@pytest.mark.parametrize("damage", ["garbage", "cut"])
def test_a_damaged_zip_archive_of_an_image_folder_is_named(tmp_path, damage):
    """imagefolder opens a zip archive beside the metadata.csv (which may hold more images and captions): one that is
    no zip escaped as a bare zipfile.BadZipFile traceback, naming no file."""
    import zipfile

    folder = tmp_path / "images"
    _image_folder(folder)
    (folder / "metadata.csv").write_text("file_name,caption\n0.png,a red square\n1.png,a dark square\n")
    archive = folder / "more.zip"
    if damage == "garbage":
        archive.write_bytes(b"no zip archive" * 8)
    else:
        with zipfile.ZipFile(archive, "w") as handle:
            handle.write(folder / "0.png", "2.png")
        archive.write_bytes(archive.read_bytes()[:-40])  # its central directory cut short
    with pytest.raises(SourceError, match=rf"^source {folder}: its data file {archive} cannot be read \(BadZipFile: "):
        load_source(str(folder), split="train", cache_dir=str(tmp_path / "cache"))


def test_a_damaged_zip_archive_datasets_opens_to_tell_the_folders_kind_is_named(tmp_path):
    """With as many zip archives as images, datasets opens an archive to tell what kind of data the folder holds, in
    load_dataset_builder: a damaged one escaped as a bare zipfile.BadZipFile traceback, naming no file."""
    folder = tmp_path / "images"
    _image_folder(folder, count=1)
    (folder / "metadata.csv").write_text("file_name,caption\n0.png,a red square\n")
    (folder / "more.zip").write_bytes(b"no zip archive" * 8)
    with pytest.raises(SourceError, match=rf"^source {folder}: its data file {folder / 'more.zip'} cannot be read "
                                          r"\(BadZipFile: "):
        load_source(str(folder), split="train", cache_dir=str(tmp_path / "cache"))


@pytest.mark.parametrize("table, text", [("metadata.csv", "file_name,caption,score\n"), ("metadata.jsonl", "\n")])
@pytest.mark.parametrize("filters", [None, "[[score, '>', 1]]"])
def test_a_caption_table_of_no_rows_in_a_zip_archive_is_named(tmp_path, table, text, filters):
    """imagefolder searches a zip archive for a caption table: one of no rows failed with a bare IndexError, or with
    README filters was said to be theirs ("its README's filters ... keep no row of its metadata files")."""
    import zipfile

    folder = tmp_path / "images"
    _image_folder(folder, count=1)
    with zipfile.ZipFile(folder / "data.zip", "w") as archive:
        archive.write(folder / "0.png", "1.png")
        archive.writestr(table, text)
    (folder / "0.png").unlink()
    if filters is not None:
        (folder / "README.md").write_text(
            f"---\nconfigs:\n- config_name: default\n  data_files: '*'\n  filters: {filters}\n---\n")
    with pytest.raises(SourceError, match=rf"^source {folder}: its caption table {table} in its archive "
                                          rf"{folder / 'data.zip'} has no rows$"):
        load_source(str(folder), split="train", cache_dir=str(tmp_path / "cache"))


@pytest.mark.parametrize("table, text", [("metadata.csv", "file_name,caption\n"), ("metadata.jsonl", ""),
                                         ("metadata.jsonl", "\n")])
@pytest.mark.parametrize("beside", ["folder", "split", "archive"])
def test_a_caption_table_of_no_rows_beside_one_with_rows_is_read_as_datasets_reads_it(tmp_path, table, text, beside):
    """A metadata.csv of a header alone, or a metadata.jsonl without a line, in another folder, split or zip archive
    than a caption table with rows: datasets reads the folder, load_source refused it ("has no rows"). Read alone, the
    split of no rows is still refused."""
    import zipfile

    folder = tmp_path / "images"
    rows = "file_name,caption\n0.png,a\n" if table.endswith(".csv") else '{"file_name": "0.png", "caption": "a"}\n'
    (folder / "train").mkdir(parents=True)
    _image_folder(folder / "train" / "a", count=1)
    (folder / "train" / "a" / table).write_text(rows)
    empty = {"folder": folder / "train" / "b", "split": folder / "test", "archive": folder / "train"}[beside]
    if beside == "archive":
        with zipfile.ZipFile(empty / "more.zip", "w") as archive:
            archive.writestr(table, text)
    else:
        _image_folder(empty, count=1)
        (empty / table).write_text(text)
    read = load_source(str(folder), split="train", cache_dir=str(tmp_path / "cache"))
    assert list(read["caption"]) == ["a"]
    if beside == "split":
        with pytest.raises(SourceError, match=rf"^source {folder}: its caption table {empty / table} has no rows$"):
            load_source(str(folder), split="test", cache_dir=str(tmp_path / "cache"))


@pytest.mark.parametrize("table, text", [("metadata.csv", ""), ("metadata.csv", "\n\n"), ("metadata.csv", "\ufeff\n")])
def test_a_caption_table_datasets_cannot_read_is_refused_beside_one_with_rows(tmp_path, table, text):
    """A metadata.csv without a header fails in datasets (pandas' "No columns to parse from file"), whatever the others
    hold."""
    folder = tmp_path / "images"
    folder.mkdir()
    _image_folder(folder / "a", count=1)
    (folder / "a" / table).write_text("file_name,caption\n0.png,a\n")
    (folder / "b").mkdir()
    (folder / "b" / table).write_text(text)
    with pytest.raises(SourceError, match=rf"^source {folder}: its caption table {folder / 'b' / table} has no rows "
                                          "and no header, which datasets cannot read: remove it$"):
        load_source(str(folder), split="train", cache_dir=str(tmp_path / "cache"))


def test_the_images_of_a_zip_archive_are_read_and_a_damaged_one_is_skipped_naming_member_and_archive(tmp_path):
    """imagefolder stores an image of a zip archive by a chained path ("zip://0.png::/.../data.zip"), which the input
    check read as a local file: every row was skipped ("No such file or directory"). A member whose bytes do not match
    their CRC is skipped, named: the load does not read every member (zipfile.testzip), which would read the whole
    archive at every start."""
    import io
    import zipfile

    folder = tmp_path / "images"
    folder.mkdir()
    with zipfile.ZipFile(folder / "data.zip", "w", compression=zipfile.ZIP_STORED) as archive:
        for index in range(3):
            image = io.BytesIO()
            Image.new("RGB", (8, 8), (index * 80, 0, 0)).save(image, "PNG")
            archive.writestr(f"{index}.png", image.getvalue())
        archive.writestr("metadata.csv", "file_name,caption\n0.png,a\n1.png,b\n2.png,c\n")
    with zipfile.ZipFile(folder / "data.zip") as archive:
        member = archive.getinfo("1.png")
        inside = member.header_offset + 30 + len(member.filename) + len(member.extra) + 40  # (in its image data)
    damaged = bytearray((folder / "data.zip").read_bytes())
    damaged[inside] ^= 0xFF
    (folder / "data.zip").write_bytes(bytes(damaged))
    builder = MaplePreferences(
        config_name="corpus-captions", source=str(folder), judge=ColourJudge(), miner=thumbnail_miner(),
        cache_dir=str(tmp_path / "cache"), work_dir=tmp_path / "work", progress=False,
    )
    assert builder.check_inputs() == (3, [0, 2], [SkippedInput(
        1, "000000001", "unreadable image", f"zip://1.png::{folder / 'data.zip'}: BadZipFile: Bad CRC-32 for file '1.png'"
    )])


def _write_compressed(path, text: str) -> None:
    """`text` written to `path`, compressed as its suffix says."""
    import bz2
    import gzip
    import lzma

    if path.suffix == ".zst":  # (the standard library writes no zstd)
        with pa.output_stream(str(path), compression="zstd") as stream:
            stream.write(text.encode())
    else:
        path.write_bytes({".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress}[path.suffix](text.encode()))


def test_only_the_json_files_of_the_splits_read_are_checked(tmp_path):
    """A mixed test-1.jsonl blocked a build of split train, which datasets reads as before: a split's values are JSON
    text in that split only. The first file of the first split is checked for any split: a mix in its first chunk
    makes the column a datasets.Json one in every split."""
    folder = tmp_path / "tables"
    _image_folder(folder, count=1)

    def write(name: str, *captions) -> None:
        (folder / name).write_text("".join(json.dumps({"image": "0.png", "caption": caption}) + "\n" for caption in captions))

    write("train-0.jsonl", "a")
    write("test-0.jsonl", "b")
    write("test-1.jsonl", "c", ["d"])
    for split in ("train", "train[:1]"):
        assert load_source(str(folder), split=split, cache_dir=str(tmp_path / "cache"), columns=["caption"])["caption"] == ["a"]
    test_1 = rf"^source {folder}: its data file {folder / 'test-1.jsonl'}, line 2: column 'caption' holds a list"
    for split in ("test", "test[:1]", "train+test"):
        with pytest.raises(SourceError, match=test_1):
            load_source(str(folder), split=split, cache_dir=str(tmp_path / "cache"), columns=["caption"])
    write("test-1.jsonl", "c")
    write("train-0.jsonl", "a", ["e"])
    with pytest.raises(SourceError, match=rf"^source {folder}: its data file {folder / 'train-0.jsonl'}, line 2:"):
        load_source(str(folder), split="test", cache_dir=str(tmp_path / "cache"), columns=["caption"])


def test_a_json_column_whose_type_changes_from_one_file_to_the_next_is_refused(tmp_path):
    """datasets keeps a column's type from the first file for every later file and split: part-0.jsonl "a dog" then
    part-1.jsonl {"en": "a cat"} read '{"en":"a cat"}', and so did test.jsonl beside train.jsonl with split test; an
    image folder's a/metadata.jsonl "a dog" beside b/metadata.jsonl ["a cat"] read "['a cat']" (or "a dog" as a list of
    its letters). The check compared each file's values with that file's first only."""
    tables = tmp_path / "tables"
    _image_folder(tables, count=1)

    def write(folder, name: str, caption) -> None:
        (folder / name).write_text(json.dumps({"image": "0.png", "file_name": "0.png", "caption": caption}) + "\n")

    write(tables, "part-0.jsonl", "a dog")
    write(tables, "part-1.jsonl", {"en": "a cat"})
    json_text = r"datasets would read the column's values as JSON text"
    with pytest.raises(SourceError, match=rf"^source {tables}: its data file {tables / 'part-1.jsonl'}, line 1: column "
                                          rf"'caption' holds an object \(\{{'en': 'a cat'\}}\), but "
                                          rf"{tables / 'part-0.jsonl'}, line 1, holds a string; {json_text}"):
        load_source(str(tables), split="train", cache_dir=str(tmp_path / "cache"), columns=["caption"])
    splits = tmp_path / "splits"
    _image_folder(splits, count=1)
    write(splits, "train.jsonl", "a dog")
    write(splits, "test.jsonl", {"en": "a cat"})
    with pytest.raises(SourceError, match=rf"^source {splits}: its data file {splits / 'test.jsonl'}, line 1: column "
                                          rf"'caption' holds an object .*, but {splits / 'train.jsonl'}, line 1, holds a "
                                          rf"string; {json_text}"):
        load_source(str(splits), split="test", cache_dir=str(tmp_path / "cache"), columns=["caption"])
    images = tmp_path / "images"
    images.mkdir()
    for folder, caption in (("a", "a dog"), ("b", ["a cat"])):
        _image_folder(images / folder, count=1)
        write(images / folder, "metadata.jsonl", caption)
    with pytest.raises(SourceError, match=rf"^source {images}: its data file {images / 'b' / 'metadata.jsonl'}, line 1: "
                                          rf"column 'caption' holds a list \(\['a cat'\]\), but "
                                          rf"{images / 'a' / 'metadata.jsonl'}, line 1, holds a string; datasets would "
                                          r"read values of one type as the other \(\['a cat'\] as the text "
                                          r"\"\['a cat'\]\", a string as a list of its letters\) or fail: give it "
                                          r"values of one type \(or null\)$"):
        load_source(str(images), split="train", cache_dir=str(tmp_path / "cache"), columns=["caption"])


def test_json_data_files_of_one_type_per_column_read_as_before(tmp_path):
    """Nulls go with any type, numbers of both kinds together, a column the build does not read may mix types, and a
    file of one JSON array or of one object over several lines is not read as JSON Lines."""
    folder = tmp_path / "tables"
    _image_folder(folder, count=1)
    rows = [{"image": "0.png", "caption": "a", "id": 1, "extra": "x"}, {"image": "0.png", "caption": None, "id": 2.5, "extra": [1]}]
    (folder / "part-0.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    (folder / "part-1.json").write_text(json.dumps(rows, indent=1))
    source = load_source(str(folder), split="train", cache_dir=str(tmp_path / "cache"), columns=["image", "caption", "id"])
    assert source["caption"] == ["a", None, "a", None]


# (id, caption) cells, as written; pandas' defaults read the ids as numbers and the captions as missing
CSV_CELLS = [("000123", "NA"), ("0123", "null"), ("123", "None"), ("1e3", "nan"), ("7.0", "N/A"), ("", "")]


@pytest.mark.parametrize("layout", ["table", "image folder"])
def test_csv_cells_are_read_as_the_text_written(tmp_path, layout):
    """Read with pandas' defaults, the ids `000123`, `0123` and `123` were the number 123 (two rows skipped as its
    duplicates, and the id written back unlike the user's) and captions `NA`, `null`, `None`, `nan`, `N/A` were missing
    (skipped as empty captions), in a CSV table as in an image folder's metadata.csv. Only an empty cell is missing:
    the caption is skipped as empty, as before, and the row's index is its id."""
    images = tmp_path / "images"
    _image_folder(images, count=len(CSV_CELLS))
    if layout == "table":  # beside no images, or datasets would read the folder as an image folder
        source = tmp_path / "table"
        source.mkdir()
        lines = [f"{row_id},{images / f'{index}.png'},{caption},NA" for index, (row_id, caption) in enumerate(CSV_CELLS)]
        (source / "part-0.csv").write_text("\n".join(["id,image,caption,score", *lines]) + "\n")
    else:
        source = images
        lines = [f"{index}.png,{row_id},{caption},NA" for index, (row_id, caption) in enumerate(CSV_CELLS)]
        (source / "metadata.csv").write_text("\n".join(["file_name,id,caption,score", *lines]) + "\n")
    rows, _ = open_source(MaplePreferencesConfig(name="corpus-captions", source=str(source)), cache_dir=str(tmp_path / "cache"))
    assert rows["id"] == [row_id or None for row_id, _ in CSV_CELLS]
    assert rows["caption"] == [caption or None for _, caption in CSV_CELLS]
    builder = MaplePreferences(
        config_name="corpus-captions", source=str(source), judge=ColourJudge(), miner=thumbnail_miner(),
        cache_dir=str(tmp_path / "cache"), work_dir=tmp_path / "work", progress=False,
    )
    assert builder.check_inputs() == (6, [0, 1, 2, 3, 4], [SkippedInput(5, "000000005", "empty caption")])


def test_a_csv_column_empty_for_a_whole_chunk_is_text_and_readme_features_are_kept(tmp_path):
    """pandas gave a column empty in all of a 10,000-row chunk the type float64, and a later chunk's text in it failed
    to read ("Failed to parse string: 'abc' as a scalar of type double"); the columns are declared text now, but those
    whose type the README declares."""
    images = tmp_path / "images"
    _image_folder(images, count=1)
    table = tmp_path / "table"
    table.mkdir()
    lines = [f"{images / '0.png'},{index:06d},a red square,," for index in range(10_000)]
    (table / "part-0.csv").write_text("\n".join(["image,id,caption,note,score", *lines, f"{images / '0.png'},x,a,abc,7"]) + "\n")
    source = load_source(str(table), split="train", cache_dir=str(tmp_path / "cache"))
    assert source[-1] == {"image": str(images / "0.png"), "id": "x", "caption": "a", "note": "abc", "score": "7"}
    assert source[0]["note"] is None and source[0]["id"] == "000000"
    (table / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files: '*.csv'\n  features:\n"
                                     "  - name: score\n    dtype: float32\n---\n")
    source = load_source(str(table), split="train", cache_dir=str(tmp_path / "cache"))
    assert source.features["score"] == datasets.Value("float32") and source.features["note"] == datasets.Value("string")
    assert source[-1]["score"] == 7.0 and source[-1]["id"] == "x"
    # read by a plain load_dataset first: the features of its cache, which pandas' defaults inferred, are no README's
    small = tmp_path / "small"
    small.mkdir()
    (small / "part-0.csv").write_text(f"image,id,caption\n{images / '0.png'},000123,NA\n")
    assert datasets.load_dataset(str(small), split="train", cache_dir=str(tmp_path / "cache"))[0]["id"] == 123
    assert load_source(str(small), split="train", cache_dir=str(tmp_path / "cache"))[0]["id"] == "000123"


@pytest.mark.parametrize("filters, ids", [
    ('[["id", "==", 1]]', ["01"]),  # a number: compared with the cells pandas' defaults read as numbers, as before
    ('[["id", "in", [2, 3]], ["score", ">", 2.5]]', ["2"]),  # (NA, no number, is kept by no comparison with one)
    ('[[["score", "==", 10]], [["flag", "==", false]]]', ["01", "2"]),
    ('[["id", "==", "01"]]', ["01"]),  # text: compared with the text written
    # a boolean compared with a number is 1 or 0, as pandas compares True == 1 (the text `True` was no number, kept by
    # no comparison; imagefolder failed on a bool column compared with an int)
    ('[["flag", "==", 1]]', ["01", "3"]),
    ('[["flag", "<", 1]]', ["2"]),
])
def test_readme_filters_of_an_image_folder_with_a_metadata_csv_compare_numbers_as_numbers(tmp_path, filters, ids):
    """A README's `filters` comparing a column with a number (or a boolean) raised pyarrow's ArrowNotImplementedError
    (large_string vs int8) once the metadata.csv cells were read as text; imagefolder compared the numbers pandas read."""
    folder = _filtered_image_folder(tmp_path, "metadata.csv", filters)
    assert load_source(str(folder), split="train", cache_dir=str(tmp_path / "cache"))["id"] == ids


def _filtered_image_folder(tmp_path, table: str, filters: str):
    """An image folder of three images, its caption table `table` (a metadata.csv, .jsonl or .parquet) of the columns
    id, score and flag, and a README whose config has the `filters` given (YAML)."""
    folder = tmp_path / "images"
    _image_folder(folder, count=3)
    rows = [("0.png", "01", 10, True), ("1.png", "2", 3, False), ("2.png", "3", None, True)]
    if table == "metadata.csv":
        (folder / table).write_text("file_name,id,score,flag\n0.png,01,10,True\n1.png,2,3,false\n2.png,3,NA,True\n")
    elif table == "metadata.parquet":
        pq.write_table(pa.Table.from_pylist([dict(zip(["file_name", "id", "score", "flag"], row)) for row in rows]),
                       folder / table)
    else:
        (folder / table).write_text("".join(json.dumps(dict(zip(["file_name", "id", "score", "flag"], row))) + "\n"
                                            for row in rows))
    (folder / "README.md").write_text(f"---\nconfigs:\n- config_name: default\n  data_files: '*'\n  filters: {filters}\n---\n")
    return folder


@pytest.mark.parametrize("filters, ids", [
    ("[[score, in, [1, null]]]", ["0", "1", "3"]),
    ("[[score, 'not in', [1]]]", ["1", "4"]),
    ("[[score, 'not in', [1, null]]]", ["4"]),
    ("[[[score, in, [1, null]]], [[id, '==', '2']]]", ["0", "1", "2", "3"]),  # (NA kept by the other conjunction)
    ("[[flag, in, [true, null]]]", ["0", "1", "4"]),
    ("[[flag, 'not in', [true]]]", ["1", "3"]),
])
def test_readme_filters_keep_the_empty_metadata_csv_cells_only_by_a_null_of_an_in_list(tmp_path, filters, ids):
    """A null in an `in` list matches a missing value, as pyarrow's isin (imagefolder's filters of a metadata.jsonl's
    nulls): of a metadata.csv, an empty cell. A cell that is no number (or no boolean) matched it too, read as null, and
    a `not in`: it matches no comparison with one."""
    folder = tmp_path / "images"
    _image_folder(folder, count=5)
    cells = [("1", "True"), ("", ""), ("NA", "yes"), ("01", "false"), ("2", "TRUE")]
    (folder / "metadata.csv").write_text("file_name,id,score,flag\n" + "".join(
        f"{index}.png,{index},{score},{flag}\n" for index, (score, flag) in enumerate(cells)))
    (folder / "README.md").write_text(f"---\nconfigs:\n- config_name: default\n  data_files: '*'\n  filters: {filters}\n---\n")
    assert load_source(str(folder), split="train", cache_dir=str(tmp_path / "cache"))["id"] == ids


@pytest.mark.parametrize("no_boolean", ["yes", "1"])
def test_readme_filters_compare_a_metadata_csv_chunk_of_no_boolean_with_one_as_matching_nothing(tmp_path, no_boolean):
    """A column compared with a boolean whose 10,000-row chunk held none (empty cells, `yes`, `1`) was a column of NaN,
    which pyarrow failed to compare with a boolean ("no kernel matching input types (double, bool)"), the metadata.csv
    named as unreadable; such cells match no comparison with a boolean, as in a chunk of some booleans."""
    folder = tmp_path / "images"
    _image_folder(folder, count=1)
    rows = [f"0.png,{index},{'True' if index == 0 else ''}" for index in range(10_000)] + [f"0.png,last,{no_boolean}"]
    (folder / "metadata.csv").write_text("\n".join(["file_name,id,flag", *rows]) + "\n")
    (folder / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files: '*'\n  filters: [[flag, '==', true]]\n---\n")
    assert load_source(str(folder), split="train", cache_dir=str(tmp_path / "cache"))["id"] == ["0"]
    (folder / "metadata.csv").write_text(f"file_name,id,flag\n0.png,0,{no_boolean}\n0.png,1,\n")
    with pytest.raises(SourceError, match=rf"^source {folder}: its README's filters .* keep no row of its metadata"):
        load_source(str(folder), split="train", cache_dir=str(tmp_path / "another cache"))


@pytest.mark.parametrize("table", ["metadata.csv", "metadata.jsonl"])
def test_readme_filters_that_keep_no_row_are_refused_naming_them(tmp_path, table):
    """imagefolder takes its columns from the first row its filters keep: of none, it failed with a bare IndexError."""
    folder = _filtered_image_folder(tmp_path, table, '[["score", ">", 100]]')
    with pytest.raises(SourceError, match=rf"^source {folder}: its README's filters \[\['score', '>', 100\]\] keep no "
                                          r"row of its metadata files: change them \(configs: filters: in its "
                                          r"README.md\)$"):
        load_source(str(folder), split="train", cache_dir=str(tmp_path / "cache"))


@pytest.mark.parametrize("table", ["metadata.csv", "metadata.jsonl"])
@pytest.mark.parametrize("filters, compared", [
    ('[[["score", "==", 10]], [["score", "==", "x"]]]', r"'score' with a number \(10\) and with text \('x'\)"),
    ('[["flag", "in", [true, 1]]]', r"'flag' with a boolean \(True\) and with a number \(1\)"),
])
def test_readme_filters_comparing_a_column_with_values_of_several_kinds_are_refused(tmp_path, table, filters, compared):
    """pyarrow compares a column with values of one type: it failed with "Function 'equal' has no kernel matching input
    types (double, string)", naming neither the column nor the filters."""
    folder = _filtered_image_folder(tmp_path, table, filters)
    with pytest.raises(SourceError, match=rf"^source {folder}: its README's filters .* compare column {compared}: "
                                          "compare each column with values of one kind$"):
        load_source(str(folder), split="train", cache_dir=str(tmp_path / "cache"))


@pytest.mark.parametrize("table", ["metadata.csv", "metadata.jsonl"])
@pytest.mark.parametrize("filters, problem", [
    ('[["flag", "=="]]', r"\[\['flag', '=='\]\] are malformed \(ValueError: not enough values to unpack"),
    # a predicate, not a list of them
    ('["flag", "==", true]', r"\['flag', '==', True\] are malformed \(ValueError: too many values"),
    ('[["flag", "~", true]]', r"\[\['flag', '~', True\]\] are malformed \(ValueError: \"~\" is not a valid operator"),
    # an empty predicate first (an IndexError escaped)
    ('[[]]', r"\[\[\]\] are malformed \(ValueError: not enough values to unpack \(expected 3, got 0\)"),
    ('[[], [["flag", "==", true]]]', r"\[\[\], \[\['flag', '==', True\]\]\] are malformed \(ValueError: not enough values"),
])
def test_malformed_readme_filters_are_refused_naming_them(tmp_path, table, filters, problem):
    """pyarrow reads filters of [column, op, value] predicates: a bare ValueError (or TypeError; an IndexError where the
    first was empty) escaped, naming neither the source nor its filters, and an unknown operator blamed the
    metadata.csv, as if it did not read."""
    folder = _filtered_image_folder(tmp_path, table, filters)
    with pytest.raises(SourceError, match=rf"^source {folder}: its README's filters {problem}.*\): give a list of "
                                          r"\[column, op, value\] \(all to hold\), or a list of such lists \(any to "
                                          r"hold\)$"):
        load_source(str(folder), split="train", cache_dir=str(tmp_path / "cache"))


@pytest.mark.parametrize("table, filters, refused", [
    # a metadata.jsonl is filtered by imagefolder itself, with its JSON types: pyarrow's bare error escaped
    ("metadata.jsonl", '[["id", ">", 1]]', r"cannot be applied to its metadata file {file} \(ArrowNotImplementedError: "
     r"Function 'greater' has no kernel matching input types \(string, int8\)\): compare columns the metadata files "
     r"hold, with values of their type \(configs: filters: in its README.md\)"),
    ("metadata.jsonl", '[["flag", "==", true], ["nope", "==", 1]]', r"cannot be applied to its metadata file {file} "
     r"\(ArrowInvalid: No match for FieldRef.Name\(nope\) in file_name: string"),
    # a metadata.parquet is filtered by imagefolder as it is read: pyarrow's bare error escaped, or (a column it lacks)
    # blamed the file as unreadable
    ("metadata.parquet", '[["id", ">", 1]]', r"cannot be applied to its metadata file {file} "
     r"\(ArrowNotImplementedError: Function 'greater' has no kernel matching input types \(string, int8\)\)"),
    ("metadata.parquet", '[["flag", "==", true], ["nope", "==", 1]]', r"cannot be applied to its metadata file {file} "
     r"\(ArrowInvalid: No match for FieldRef.Name\(nope\) in file_name: string"),
    # an `in` list of values of another type: pyarrow's ArrowTypeError escaped bare (found by a review)
    ("metadata.parquet", '[["id", "in", [1, 2]]]', r"cannot be applied to its metadata file {file} \(ArrowTypeError: "),
    ("metadata.jsonl", '[["id", "in", [1, 2]]]', r"cannot be applied to its metadata file {file} \(ArrowTypeError: "),
    # (pyarrow's error, which blamed the file as unreadable, listed columns the filtering adds, of no file)
    ("metadata.csv", '[["flag", "==", true], ["nope", "==", 1]]', r"compare the column\(s\) \['nope'\], which its "
     r"metadata file {file} lacks \(its columns: \['file_name', 'id', 'score', 'flag'\]\)"),
])
def test_readme_filters_that_cannot_be_applied_are_refused_naming_them_and_the_file(tmp_path, table, filters, refused):
    """Filters comparing a column with a value of another type than the file's, or a column the file lacks, are a
    SourceError naming the filters and the metadata file."""
    folder = _filtered_image_folder(tmp_path, table, filters)
    refused = refused.format(file=re.escape(str(folder / table)))
    with pytest.raises(SourceError, match=rf"^source {folder}: its README's filters .* {refused}"):
        load_source(str(folder), split="train", cache_dir=str(tmp_path / "cache"))


@pytest.mark.parametrize("values, where", [
    (('"1"', '"abc"'), r"line 2: column 'score' holds 'abc', which its declared type int64 \(features:\) cannot read "
                       r"\(ValueError: invalid literal for int\(\) with base 10: 'abc'\)$"),
    (("[1]", "[2]"), r"line 1: column 'score' holds \[1\], which its declared type int64 \(features:\) cannot read "
                     r"\(TypeError: int\(\) argument must be"),
])
def test_a_metadata_jsonl_value_its_declared_type_cannot_read_is_named_with_file_line_and_column(tmp_path, values, where):
    """datasets encodes an image folder's metadata.jsonl rows to the README's declared features: a value it cannot
    encode said "its data files cannot be read (ValueError: invalid literal for int() with base 10: 'abc')", naming
    neither file nor column. Other JSON Lines files of the folder, which imagefolder does not read, are not searched:
    the error named a_notes.jsonl, or its line that is no JSON (found by a review)."""
    folder = tmp_path / "images"
    _image_folder(folder, count=2)
    (folder / "a_notes.jsonl").write_text('{"score": "zzz"}\nnot json\n')
    (folder / "metadata.jsonl").write_text("".join(f'{{"file_name": "{index}.png", "score": {value}}}\n'
                                                   for index, value in enumerate(values)))
    (folder / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files: '*'\n  features:\n"
                                      "  - name: file_name\n    dtype: string\n  - name: score\n    dtype: int64\n---\n")
    with pytest.raises(SourceError, match=rf"^source {folder}: its data file {folder / 'metadata.jsonl'}, {where}"):
        load_source(str(folder), split="train", cache_dir=str(tmp_path / "cache"))


@pytest.mark.parametrize("filters, refused", [
    ('[["score", "<", 2]]', r"'score', declared string \(features:\), with a number \(2\): compare it with text"),
    ('[["flag", "==", 1]]', r"'flag', declared bool \(features:\), with a number \(1\): compare it with a boolean"),
    ('[["rank", "in", ["1"]]]', r"'rank', declared int64 \(features:\), with text \('1'\): compare it with a number"),
    ('[["flag", "==", false], ["rank", ">", 1], ["score", "==", "2"]]', None),  # (each as declared: row 1.png)
])
def test_readme_filters_compare_declared_metadata_csv_columns_with_values_of_their_type(tmp_path, filters, refused):
    """A metadata.csv column the README declares is read as declared, and pyarrow compares it with values of its type
    only: a string column compared with a number failed with a bare "Function 'less' has no kernel matching input types
    (string, int8)" traceback."""
    folder = tmp_path / "images"
    _image_folder(folder)
    (folder / "metadata.csv").write_text("file_name,score,flag,rank\n0.png,1,True,1\n1.png,2,false,2\n")
    features = {"image": "image", "score": "string", "flag": "bool", "rank": "int64"}
    declared = "".join(f"  - name: {name}\n    dtype: {dtype}\n" for name, dtype in features.items())
    (folder / "README.md").write_text(
        f"---\nconfigs:\n- config_name: default\n  data_files: '*'\n  features:\n{declared}  filters: {filters}\n---\n")
    if refused is None:
        assert load_source(str(folder), split="train", cache_dir=str(tmp_path / "cache"))["score"] == ["2"]
        return
    with pytest.raises(SourceError, match=rf"^source {folder}: its README's filters .* compare column {refused}$"):
        load_source(str(folder), split="train", cache_dir=str(tmp_path / "cache"))


@pytest.mark.parametrize("table", ["metadata.jsonl", "metadata.csv"])
def test_readme_filters_of_a_zip_archive_are_compared_as_its_caption_table_is_read(tmp_path, table):
    """Only a metadata.csv is read as declared, and its filters checked so (`TextCellsImageFolder`): the check was
    applied to any image folder with a zip archive, and refused filters datasets reads over an archive's metadata.jsonl
    (a number compared with a column declared text), which imagefolder itself now reads."""
    import zipfile

    folder = tmp_path / "images"
    _image_folder(folder)
    rows = '{"file_name": "0.png", "id": 1}\n{"file_name": "1.png", "id": 2}\n'
    with zipfile.ZipFile(folder / "data.zip", "w") as archive:
        for index in range(2):
            archive.write(folder / f"{index}.png", f"{index}.png")
            (folder / f"{index}.png").unlink()
        archive.writestr(table, rows if table == "metadata.jsonl" else "file_name,id\n0.png,1\n1.png,2\n")
    (folder / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files: '*'\n  features:\n  - name: image\n    dtype: image\n"
        "  - name: id\n    dtype: string\n  filters: [[id, in, [1]]]\n---\n")
    if table == "metadata.csv":
        with pytest.raises(SourceError, match=rf"^source {folder}: its README's filters .* compare column 'id', declared "
                                              r"string \(features:\), with a number \(1\): compare it with text$"):
            load_source(str(folder), split="train", cache_dir=str(tmp_path / "cache"))
        return
    read = load_source(str(folder), split="train", cache_dir=str(tmp_path / "cache"))
    assert read["id"] == ["1"] and read.info.builder_name == "imagefolder"


def test_readme_features_of_an_image_folder_with_a_metadata_csv_are_read_as_declared(tmp_path):
    """As a CSV table's (and as imagefolder read them): the metadata.csv cells were read as text and the declared types
    applied by datasets' cast, which read a bool column's `false` as True; a column declared text keeps `0123`."""
    folder = tmp_path / "images"
    _image_folder(folder)
    (folder / "metadata.csv").write_text("file_name,id,caption,score,flag\n0.png,0123,NA,10,false\n1.png,7,a,,True\n")
    features = {"image": "image", "id": "string", "caption": "string", "score": "float32", "flag": "bool"}
    declared = "".join(f"  - name: {name}\n    dtype: {dtype}\n" for name, dtype in features.items())
    (folder / "README.md").write_text(
        f"---\nconfigs:\n- config_name: default\n  data_files: '*'\n  features:\n{declared}---\n")
    rows = load_source(str(folder), split="train", cache_dir=str(tmp_path / "cache")).remove_columns("image")
    assert rows.features["score"] == datasets.Value("float32") and rows.features["flag"] == datasets.Value("bool")
    assert rows.to_list() == [{"id": "0123", "caption": "NA", "score": 10.0, "flag": False},
                              {"id": "7", "caption": "a", "score": None, "flag": True}]
    # a cell that is no value of its declared type is named by file, as in a CSV table (`NA` is no missing value)
    (folder / "metadata.csv").write_text("file_name,id,caption,score,flag\n0.png,0123,a,NA,false\n")
    with pytest.raises(SourceError, match=rf"^source {folder}: its data file {folder / 'metadata.csv'} cannot be read "
                                          r"\(ValueError: .*'NA'"):
        load_source(str(folder), split="train", cache_dir=str(tmp_path / "another cache"))


def test_an_image_folder_cache_an_older_reading_prepared_is_not_reused(tmp_path, monkeypatch):
    """A cache prepared before the columns a README declares were read as declared held a bool column's `false` as
    True, and was reused: its path (config id, version, hash) was the same. Its reading's version is in the path."""
    from collections import defaultdict

    from dataset_builders.text_cells_folder import TextCellsImageFolder

    folder = tmp_path / "images"
    _image_folder(folder)
    (folder / "metadata.csv").write_text("file_name,flag\n0.png,false\n1.png,True\n")
    (folder / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files: '*'\n  features:\n"
                                      "  - name: image\n    dtype: image\n  - name: flag\n    dtype: bool\n---\n")
    cache = str(tmp_path / "cache")
    with monkeypatch.context() as patch:  # the older reading: every cell as text, cast to the declared types after
        patch.setattr(TextCellsImageFolder, "VERSION", datasets.Version("0.0.0"), raising=False)
        patch.setattr(TextCellsImageFolder, "_csv_cell_types", lambda self: defaultdict(lambda: str))
        assert load_source(str(folder), split="train", cache_dir=cache)["flag"] == [True, True]
    assert load_source(str(folder), split="train", cache_dir=cache)["flag"] == [False, True]


def test_an_image_folder_without_a_csv_caption_table_is_read_by_datasets_imagefolder(tmp_path):
    """Its config id, and so its cache and a Hub source's fingerprint (which a build's manifest records), are those of
    datasets' imagefolder, as before CSV cells were read as text: a build begun then resumes. The subclass reading a
    metadata.csv as text had a config id of its own for every image folder."""
    folder = tmp_path / "images"
    _image_folder(folder)
    (folder / "metadata.jsonl").write_text('{"file_name": "0.png", "id": "01"}\n{"file_name": "1.png", "id": "1"}\n')
    read = load_source(str(folder), split="train", cache_dir=str(tmp_path / "cache"))
    plain = datasets.load_dataset(str(folder), split="train", cache_dir=str(tmp_path / "cache"))
    assert read.cache_files == plain.cache_files and read._fingerprint == plain._fingerprint


HUB_CSV_SOURCES = """
import gzip, json, zipfile
from pathlib import Path
import datasets
from huggingface_hub import HfApi
from PIL import Image
from dataset_builders.sources import load_source

api = HfApi()
table, images, plain = Path("table"), Path("images"), Path("plain")
table.mkdir()  # compressed, its separator in the README's config
(table / "data.csv.gz").write_bytes(gzip.compress(b"id;image;caption\\n000123;0.png;NA\\n123;1.png;\\n"))
(table / "README.md").write_text("---\\nconfigs:\\n- config_name: semicolons\\n  data_files: data.csv.gz\\n  sep: ';'\\n---\\n")
for config in ("a", "b"):  # an image folder of two configs
    (images / config).mkdir(parents=True)
    for index in range(2):
        Image.new("RGB", (8, 8)).save(images / config / f"{index}.png")
    (images / config / "metadata.csv").write_text(f"file_name,id,caption\\n0.png,0123{config},null\\n1.png,123,N/A\\n")
(images / "README.md").write_text("---\\nconfigs:\\n- config_name: a\\n  data_dir: a\\n- config_name: b\\n  data_dir: b\\n---\\n")
plain.mkdir()  # an image folder without CSV data
for index in range(2):
    Image.new("RGB", (8, 8)).save(plain / f"{index}.png")
(plain / "metadata.jsonl").write_text('{"file_name": "0.png", "id": "0123"}\\n{"file_name": "1.png", "id": "1"}\\n')
splits = Path("splits")  # a test split without the train split's label column: only the split read is read
splits.mkdir()
(splits / "train.csv").write_text("id,image,caption,label\\n01,0.png,a,1\\n")
(splits / "test.csv").write_text("id,image,caption\\n02,0.png,b\\n")
read = {}
api.create_repo("maple-org/jsonl-images", repo_type="dataset")
api.upload_folder(repo_id="maple-org/jsonl-images", folder_path=str(plain), repo_type="dataset")
# a build begun before CSV cells were read as text recorded datasets' fingerprint
fingerprint = datasets.load_dataset("maple-org/jsonl-images", split="train", cache_dir="cache")._fingerprint
read["fingerprint kept"] = load_source("maple-org/jsonl-images", split="train", cache_dir="cache")._fingerprint == fingerprint
# the image folder first: datasets patched the module of a builder it made (open, pandas.read_csv) for streaming, where
# the table's columns are read
for repo, folder, name, split in (("maple-org/csv-images", images, "b", "train"), ("maple-org/csv-table", table, None,
                                  "train"), ("maple-org/csv-splits", splits, None, "test")):
    api.create_repo(repo, repo_type="dataset")
    api.upload_folder(repo_id=repo, folder_path=str(folder), repo_type="dataset")
    rows = load_source(repo, split=split, name=name, cache_dir="cache")
    read[repo] = [list(rows["id"]), list(rows["caption"])]
print(json.dumps(read))
"""


def test_csv_cells_of_a_hub_source_are_read_as_the_text_written(hub_server, tmp_path):
    """On the Hub too: a CSV table (its columns read from the Hub, compressed, with its README's separator; a split of
    other columns than another's) and an image folder's metadata.csv, of the config named. An image folder without CSV
    data keeps datasets' fingerprint."""
    read = json.loads(run_client(hub_server, tmp_path, HUB_CSV_SOURCES).strip().splitlines()[-1])
    assert read == {"fingerprint kept": True, "maple-org/csv-table": [["000123", "123"], ["NA", None]],
                    "maple-org/csv-images": [["0123b", "123"], ["null", "N/A"]],
                    "maple-org/csv-splits": [["02"], ["b"]]}


HUB_CSV_SOURCES_READ = """
import json, os
from pathlib import Path
from huggingface_hub import HfApi
from PIL import Image
from dataset_builders.sources import SourceError, csv_cells_reading, load_source

table, images, splits = Path("table"), Path("images"), Path("splits")
if os.environ["HF_HUB_OFFLINE"] == "0":
    api = HfApi()
    table.mkdir()
    (table / "data.csv").write_text("id,image,caption\\n000123,0.png,NA\\n")
    images.mkdir()
    Image.new("RGB", (8, 8)).save(images / "0.png")
    (images / "metadata.csv").write_text("file_name,id,caption\\n0.png,0123,null\\n")
    splits.mkdir()  # splits of other columns: each read is cached apart
    (splits / "train.csv").write_text("id,image,caption,label\\n01,0.png,a,1\\n")
    (splits / "test.csv").write_text("id,image,caption\\n02,0.png,b\\n")
    for repo, folder in (("maple-org/offline-csv-table", table), ("maple-org/offline-csv-images", images),
                         ("maple-org/offline-csv-splits", splits)):
        api.create_repo(repo, repo_type="dataset")
        api.upload_folder(repo_id=repo, folder_path=str(folder), repo_type="dataset")
read = {}
for repo, split, name in (("maple-org/offline-csv-table", "train", None), ("maple-org/offline-csv-images", "train", None),
                          ("maple-org/offline-csv-splits", "train", None), ("maple-org/offline-csv-splits", "test", None),
                          ("maple-org/offline-csv-splits", "train", "default"),
                          ("maple-org/offline-csv-splits", "train+test", None),
                          ("maple-org/offline-csv-images", "train", "nonexistent")):
    try:
        rows = load_source(repo, split=split, name=name, cache_dir="cache")
    except SourceError as error:
        read[f"{repo} {split} {name}"] = str(error)
        continue
    read[f"{repo} {split} {name}"] = [list(rows["id"]), list(rows["caption"]), csv_cells_reading(rows), rows._fingerprint]
print(json.dumps(read))
"""


def test_a_hub_source_with_csv_data_read_online_is_read_offline(hub_server, tmp_path):
    """From the cache of its CSV cells read as text: datasets' look-up of the cache offline, which load_source made
    first, found only a plain load_dataset's ("Couldn't find cache for maple-org/offline-csv-table"). Of a table whose
    splits have other columns, from the cache of the split read: its caches (one a split) were taken for several configs
    ("name one with source_config="), and with the config named, the latest one's split only was found. A config not
    cached is refused naming the configs cached as source_config= names them: datasets named its config ids
    ('default-imagefolder_csv_text_cells')."""
    home = str(tmp_path / "hf_home")
    online = json.loads(run_client(hub_server, tmp_path, HUB_CSV_SOURCES_READ, HF_HOME=home).strip().splitlines()[-1])
    offline = run_client(hub_server, tmp_path, HUB_CSV_SOURCES_READ, HF_HOME=home, HF_HUB_OFFLINE="1")
    unknown = "maple-org/offline-csv-images train nonexistent"
    assert online.pop(unknown).startswith("source maple-org/offline-csv-images: BuilderConfig 'nonexistent' not found")
    as_text = "the text written, only an empty cell missing"
    assert {read: rows[:3] for read, rows in online.items() if not read.endswith("train+test None")} == {
        "maple-org/offline-csv-table train None": [["000123"], ["NA"], as_text],
        "maple-org/offline-csv-images train None": [["0123"], ["null"], as_text],
        "maple-org/offline-csv-splits train None": [["01"], ["a"], as_text],
        "maple-org/offline-csv-splits test None": [["02"], ["b"], as_text],
        "maple-org/offline-csv-splits train default": [["01"], ["a"], as_text],
    }
    offline = json.loads(offline.strip().splitlines()[-1])
    assert offline.pop(unknown) == (
        "source maple-org/offline-csv-images: the Hub is offline and its config 'nonexistent' is not cached (its cached "
        "configs are ['default']): read it online first, or name a cached config with source_config= (CLI "
        "--source-config)"
    )
    together = "maple-org/offline-csv-splits train+test None"
    assert online.pop(together).startswith("source maple-org/offline-csv-splits: its data file ")  # (other columns)
    assert offline.pop(together) == (
        "source maple-org/offline-csv-splits: the Hub is offline and no cache of it holds the split(s) ['train', "
        "'test'] (its caches hold [['test'], ['train']]): read them online first, or pick cached ones with "
        "source_split=... (CLI --source-split)"
    )
    assert offline == online


HUB_SOURCES_CACHED_OTHERWISE = """
import json, os
from pathlib import Path
import datasets
from huggingface_hub import HfApi
from PIL import Image
from dataset_builders.sources import load_source
from dataset_builders.text_cells_folder import TextCellsImageFolder

images, plain, table = Path("images"), Path("plain"), Path("table")
older, older_beside_plain = "maple-org/older-images", "maple-org/older-images-beside-plain"
if os.environ["HF_HUB_OFFLINE"] == "0":
    api = HfApi()
    for folder in (images, plain):
        folder.mkdir()
        Image.new("RGB", (8, 8)).save(folder / "0.png")
    (images / "metadata.csv").write_text("file_name,id\\n0.png,0123\\n")
    (plain / "metadata.jsonl").write_text('{"file_name": "0.png", "id": "0123"}\\n')
    table.mkdir()
    (table / "data.csv").write_text("id,image\\n0123,0.png\\n")
    for repo, folder in ((older, images), (older_beside_plain, images), ("maple-org/jsonl-images-read", plain),
                         ("maple-org/csv-table-loaded", table), ("maple-org/csv-images-loaded", images)):
        api.create_repo(repo, repo_type="dataset")
        api.upload_folder(repo_id=repo, folder_path=str(folder), repo_type="dataset")
    load_source("maple-org/jsonl-images-read", split="train", cache_dir="cache")  # (datasets' own imagefolder cache)
    for repo in (older_beside_plain, "maple-org/csv-table-loaded", "maple-org/csv-images-loaded"):
        datasets.load_dataset(repo, split="train", cache_dir="cache")
    TextCellsImageFolder.VERSION = datasets.Version("0.0.0")  # the reading of an older MAPLE
    for repo in (older, older_beside_plain):
        load_source(repo, split="train", cache_dir="cache")
else:
    read = {}
    for repo in (older, older_beside_plain, "maple-org/jsonl-images-read", "maple-org/csv-table-loaded",
                 "maple-org/csv-images-loaded"):
        try:
            read[repo] = list(load_source(repo, split="train", cache_dir="cache")["id"])
        except Exception as error:
            read[repo] = f"{type(error).__name__}: {error}"
    print(json.dumps(read))
"""


def test_a_hub_source_cached_otherwise_is_read_offline_or_refused_naming_why(hub_server, tmp_path):
    """An image folder an older MAPLE read (its metadata.csv cached by an older reading, which is not reused) said
    datasets' "Couldn't find cache ... Available configs in the cache: ['default-imagefolder_csv_text_cells']", naming
    the very config refused, or, beside a plain load_dataset's cache, failed with a bare TypeError: datasets' cache
    builder names no data files. A CSV table or an image folder cached so is refused saying why: such a cache holds a
    table's or a metadata.csv's cells as pandas' defaults read them (an id 0123 as 123), and an image folder's does not
    tell a metadata.csv from a metadata.jsonl, whose image folder load_source reads with datasets' own builder."""
    home = str(tmp_path / "hf_home")
    run_client(hub_server, tmp_path, HUB_SOURCES_CACHED_OTHERWISE, HF_HOME=home)
    offline = run_client(hub_server, tmp_path, HUB_SOURCES_CACHED_OTHERWISE, HF_HOME=home, HF_HUB_OFFLINE="1")
    older = ("the Hub is offline and its image folder is cached only as an older MAPLE read its metadata.csv (version "
             "0.0.0 of that reading; this one is 1.1.0, and does not reuse it): read it online once, to cache it anew")
    assert json.loads(offline.strip().splitlines()[-1]) == {
        "maple-org/older-images": f"SourceError: source maple-org/older-images: {older}",
        "maple-org/older-images-beside-plain": f"SourceError: source maple-org/older-images-beside-plain: {older}",
        **{repo: f"SourceError: source {repo}: the Hub is offline and its {kind} is cached only as datasets' "
           "load_dataset reads it (a metadata.csv's or a table's cells with pandas' defaults: an id 0123 as 123, a "
           "caption NA as missing), not as load_source reads it: read it online once"
           for repo, kind in (("maple-org/jsonl-images-read", "image folder"), ("maple-org/csv-table-loaded", "CSV table"),
                              ("maple-org/csv-images-loaded", "image folder"))},
    }
