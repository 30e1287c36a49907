"""Reading a preference build's source: errors on malformed data files name the file, and the line and column where
they can."""

import pytest
from PIL import Image

from dataset_builders.sources import SourceError, load_source


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
