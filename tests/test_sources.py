"""Reading a preference build's source: errors on malformed data files name the file, and the line and column where
they can."""

import json

import pytest
from PIL import Image

from dataset_builders.builder import MaplePreferencesConfig
from dataset_builders.sources import SourceError, load_source, open_source


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
                                          r"'caption' holds a list \(\['a'\]\), but line 1 holds a string; datasets "
                                          r"would read the column as JSON text, quoting each of its values: give it "
                                          r"values of one type \(or null\)$"):
        open_source(config, cache_dir=str(tmp_path / "cache"))
    # in a file of one JSON array, by its item
    (folder / "part-1.jsonl").unlink()
    (folder / "part-1.json").write_text(json.dumps([row, {**row, "caption": 3}], indent=1))
    with pytest.raises(SourceError, match=rf"^source {folder}: its data file {folder / 'part-1.json'}, item 2: column "
                                          r"'caption' holds a number \(3\), but item 1 holds a string;"):
        open_source(config, cache_dir=str(tmp_path / "cache"))
    # so is a line that is no JSON, by its number (pyarrow counted rows from 0 in 10 MB chunks), in an image folder's
    # caption table too
    images = tmp_path / "images"
    _image_folder(images)
    (images / "metadata.jsonl").write_text('{"file_name": "0.png", "caption": "a"}\n{"file_name": "1.png", "caption": "b"\n')
    with pytest.raises(SourceError, match=rf"^source {images}: its data file {images / 'metadata.jsonl'}, line 2, is no "
                                          r"JSON \(Expecting ',' delimiter at character 38\)$"):
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
