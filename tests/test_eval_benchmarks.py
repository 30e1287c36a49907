"""Benchmark loaders on small local fixtures in each benchmark's real schema (see conftest.py), and the protocols on
known cosines (`evaluation.testing.LookupEmbedder`)."""

import csv
import json
import re
import shutil
import sys

import datasets
import pytest
import torch
from PIL import Image

from evaluation.benchmarks import (
    BENCHMARKS, BenchmarkFormatError, BenchmarkSourceError, QuadrupleBenchmark, RetrievalBenchmark, load_benchmark,
)
from evaluation.testing import LookupEmbedder


def test_coco_parquet_with_five_and_six_captions(benchmark_sources):
    coco = load_benchmark("coco", str(benchmark_sources["coco"]))
    assert isinstance(coco, RetrievalBenchmark)
    assert [len(c) for c in coco.captions_per_image] == [5, 5, 6]
    assert coco.captions_per_image[2][5] == "photo 2 caption 5"
    assert len(coco.images) == 3
    first = coco.images[0]
    assert isinstance(first, Image.Image) and first.size == (24, 24) and first.mode == "RGB"
    assert [image.size for image in coco.images[1:3]] == [(24, 24), (24, 24)]


def test_flickr_from_a_hub_snapshot_folder(benchmark_sources):
    flickr = load_benchmark("flickr30k", str(benchmark_sources["flickr30k"]))
    assert flickr.captions_per_image[1] == [f"flickr 1 says {j}" for j in range(5)]


def test_winoground_quadruples_and_categories(benchmark_sources):
    winoground = load_benchmark("winoground", str(benchmark_sources["winoground"]))
    assert isinstance(winoground, QuadrupleBenchmark)
    assert len(winoground.quadruples) == 3
    assert winoground.categories == ["object", "relation", "object"]
    image0, image1, text0, text1 = winoground.quadruples[1]
    assert (text0, text1) == ("the dog chases the cat", "the cat chases the dog")
    assert image0.size == image1.size == (24, 24)
    # the pictures conftest drew in image_0 (seeds 20-22) and image_1 (30-32), in their places: the sizes alone let a
    # spec reading image_1 as I0 pass
    for index, (image0, image1, _, _) in enumerate(winoground.quadruples):
        assert _is_picture(image0, 20 + index) and _is_picture(image1, 30 + index)


def test_bivlc_types_are_the_categories(benchmark_sources):
    bivlc = load_benchmark("bivlc", str(benchmark_sources["bivlc"]))
    assert bivlc.categories == ["replace", "swap", "add"]
    assert bivlc.quadruples[2][2:] == ("a bowl of fruit", "a bowl of fruit and a knife")
    # I0 is the caption's image (seeds 60-62), I1 the negative image (70-72); only the texts were checked
    for index, (image0, image1, _, _) in enumerate(bivlc.quadruples):
        assert _is_picture(image0, 60 + index) and _is_picture(image1, 70 + index)


def test_naturalbench_native_layout(benchmark_sources):
    natural = load_benchmark("naturalbench", str(benchmark_sources["naturalbench"]))
    assert len(natural.quadruples) == 2 and natural.categories is None
    image0, image1, text0, text1 = natural.quadruples[1]
    assert _same_pixels(image0, benchmark_sources["naturalbench"] / "images" / "1_0.jpg")
    assert _same_pixels(image1, benchmark_sources["naturalbench"] / "images" / "1_1.jpg")
    assert (text0, text1) == ("scene 1 with a man", "scene 1 with a woman")


def test_a_naturalbench_repo_snapshot_reads_the_retrieval_archive_not_the_vqa_parquet(benchmark_sources, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "hf_home"))
    snapshot = tmp_path / "snapshot"
    (snapshot / "data").mkdir(parents=True)
    datasets.Dataset.from_dict({"Question_0": ["Is it red?"], "Image_0": ["x"]}).to_parquet(str(snapshot / "data" / "test.parquet"))
    shutil.make_archive(str(snapshot / "NaturalBench-Retrieval"), "zip", root_dir=benchmark_sources["naturalbench"].parent,
                        base_dir="NaturalBench-Retrieval")
    natural = load_benchmark("naturalbench", str(snapshot))  # was: BenchmarkFormatError, missing ['image_0', ...]
    assert [quadruple.text0 for quadruple in natural.quadruples] == ["scene 0 with a man", "scene 1 with a man"]


def test_mmvp_pairs_consecutive_rows(benchmark_sources):
    mmvp = load_benchmark("mmvp", str(benchmark_sources["mmvp"]))
    assert mmvp.categories == ["orientation and direction", "color and appearance"]
    image0, image1, text0, text1 = mmvp.quadruples[1]
    assert (text0, text1) == ("a photo of The car is red.", "a photo of The car is blue.")  # as evaluate_vlm.py writes them
    images = benchmark_sources["mmvp"] / "MLLM_VLM Images" / "Color and Appearance"
    assert _same_pixels(image0, images / "3.jpg") and _same_pixels(image1, images / "4.jpg")


def _same_pixels(image: Image.Image, file) -> bool:
    with Image.open(file) as expected:
        return image.mode == "RGB" and image.tobytes() == expected.convert("RGB").tobytes()


def _is_picture(image: Image.Image, seed: int) -> bool:
    """Whether `image` is conftest's `make_picture(seed)`, pixel for pixel (parquet fixtures hold it as PNG, lossless)."""
    from conftest import make_picture

    return image.mode == "RGB" and image.tobytes() == make_picture(seed).tobytes()


def test_an_empty_source_is_refused(tmp_path, monkeypatch):
    """An empty source read the official Hub dataset, as None does (and Path("") is the current folder)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BenchmarkSourceError, match=r"benchmark 'coco': the source is empty; expected a path or a Hub dataset id"):
        load_benchmark("coco", "")
    with pytest.raises(BenchmarkSourceError, match=r"the source is empty"):
        load_benchmark("coco", " ")


@pytest.mark.parametrize("source", ["test_sets/nope.parquet", "test_sets/Nope.PARQUET"])
def test_a_missing_source_named_as_a_file_is_reported_missing_not_looked_up_on_the_hub(source, tmp_path, monkeypatch):
    """'test_sets/nope.parquet' is a valid Hub id too: its file suffix (in any case) says it can only be a local file."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BenchmarkSourceError, match=rf"^benchmark 'winoground': no such file or folder: {source}$"):
        load_benchmark("winoground", source)


def test_a_parquet_file_without_rows_is_refused_in_those_words(tmp_path):
    """datasets refused it as "Instruction 'train' corresponds to no data", reported as a table that does not read."""
    from conftest import make_picture

    path = tmp_path / "empty.parquet"
    table = datasets.Dataset.from_dict({"image": [make_picture(0)], "caption": [["a dog"]]}).cast_column("image", datasets.Image())
    table.select([]).to_parquet(str(path))
    with pytest.raises(BenchmarkFormatError, match=rf"^{re.escape(str(path))}: benchmark 'coco' has no rows$"):
        load_benchmark("coco", str(path))


def test_a_hub_table_is_read_from_the_benchmarks_split_and_refused_without_rows(monkeypatch):
    """A Hub table without rows is refused too. It is read with the token given."""
    from conftest import make_picture

    read = []
    table = datasets.Dataset.from_dict({"image": [make_picture(0)], "caption": [["a dog"]]}).cast_column("image", datasets.Image())
    monkeypatch.setattr(datasets, "load_dataset", lambda source, split, token: read.append((source, split, token)) or table)
    assert load_benchmark("coco", "maple-org/coco-copy", token="hf_x").captions_per_image == [["a dog"]]
    assert read == [("maple-org/coco-copy", "test", "hf_x")]
    table = table.select([])
    with pytest.raises(BenchmarkFormatError, match=r"^maple-org/coco-copy: benchmark 'coco' has no rows$"):
        load_benchmark("coco", "maple-org/coco-copy")


def test_a_hub_dataset_without_the_benchmarks_split_says_how_to_push_one(monkeypatch):
    """datasets' ValueError for a missing split becomes a format error; any other ValueError is not disguised as one."""
    def load_dataset(source, split, token):
        raise ValueError("Unknown split \"test\". Should be one of ['train']." if source.endswith("train-only") else "bad config")

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    with pytest.raises(BenchmarkFormatError, match=r"^maple-org/train-only: benchmark 'bivlc' is read from the 'test' split, "
                                                   r"which this dataset lacks .*push_to_hub\(\.\.\., split='test'\)$"):
        load_benchmark("bivlc", "maple-org/train-only")
    with pytest.raises(ValueError, match="^bad config$"):
        load_benchmark("bivlc", "maple-org/other")


def test_every_benchmark_has_an_official_hub_id():
    assert {spec.name: spec.kind for spec in BENCHMARKS.values()} == {
        "coco": "retrieval", "flickr30k": "retrieval", "winoground": "quadruples",
        "naturalbench": "quadruples", "mmvp": "quadruples", "bivlc": "quadruples",
    }
    assert all("/" in spec.hub_id for spec in BENCHMARKS.values())


def test_missing_column_names_the_file_and_the_columns(benchmark_sources):
    with pytest.raises(BenchmarkFormatError, match=r"winoground\.parquet: benchmark 'bivlc' needs columns .*missing \['image', 'negative_image'"):
        load_benchmark("bivlc", str(benchmark_sources["winoground"]))


def test_unreadable_image_names_row_and_column(benchmark_sources, tmp_path):
    import datasets

    table = datasets.load_dataset("parquet", data_files=str(benchmark_sources["coco"]), split="train")
    broken = table.cast_column("image", datasets.Image(decode=False)).map(
        lambda row, index: {"image": {"bytes": b"not an image" if index == 1 else row["image"]["bytes"], "path": None}},
        with_indices=True,
    )
    broken.to_parquet(str(tmp_path / "broken.parquet"))
    coco = load_benchmark("coco", str(tmp_path / "broken.parquet"))
    assert coco.images[0].size == (24, 24)
    with pytest.raises(BenchmarkFormatError, match=r"broken\.parquet: row 1, column 'image': unreadable image"):
        coco.images[1]


def test_unreadable_image_file_of_a_folder_layout_names_the_file_and_its_entry(benchmark_sources, tmp_path):
    """Image files were handed to the processor as paths, whose ValueError named only the image's place in its batch
    (and `maple eval` printed a traceback); now they decode as table images do, with the entry that lists them."""
    natural = shutil.copytree(benchmark_sources["naturalbench"], tmp_path / "natural")
    (natural / "images" / "1_1.jpg").write_bytes(b"not an image")
    quadruples = load_benchmark("naturalbench", str(natural)).quadruples
    assert quadruples[0].image1.size == (24, 24)
    with pytest.raises(BenchmarkFormatError, match=r"metadata\.json: entry 1, 'image_1': unreadable image file \S*1_1\.jpg \(cannot identify"):
        quadruples[1]
    mmvp = shutil.copytree(benchmark_sources["mmvp"], tmp_path / "mmvp")
    (mmvp / "MLLM_VLM Images" / "Color and Appearance" / "3.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(BenchmarkFormatError, match=r"Questions\.csv, line 4: unreadable image file .*3\.jpg"):
        load_benchmark("mmvp", str(mmvp)).quadruples[1]


def test_empty_caption_list_is_reported(tmp_path):
    from conftest import make_picture, write_parquet

    path = write_parquet(tmp_path / "c.parquet", {"image": [make_picture(0), make_picture(1)], "caption": [["a"], []]}, ("image",))
    with pytest.raises(BenchmarkFormatError, match=r"c\.parquet: row 1, column 'caption': \[\]; expected a non-empty list of non-empty strings"):
        load_benchmark("coco", str(path))
    # One caption string per image (not a list) used to be split into its characters, silently.
    path = write_parquet(tmp_path / "s.parquet", {"image": [make_picture(0)], "caption": ["a dog"]}, ("image",))
    with pytest.raises(BenchmarkFormatError, match=r"s\.parquet: row 0, column 'caption': 'a dog'; expected a non-empty list"):
        load_benchmark("coco", str(path))


def test_mmvp_odd_rows_and_missing_images(benchmark_sources, tmp_path):
    odd = shutil.copytree(benchmark_sources["mmvp"], tmp_path / "odd")
    with (odd / "Questions.csv").open("a", newline="") as handle:
        csv.writer(handle).writerow(("5", "Texts", "A sign says stop."))
    with pytest.raises(BenchmarkFormatError, match=r"statements come in pairs; got 5 rows"):
        load_benchmark("mmvp", str(odd))
    natural = shutil.copytree(benchmark_sources["naturalbench"], tmp_path / "natural")
    (natural / "images" / "0_1.jpg").unlink()
    with pytest.raises(BenchmarkFormatError, match=r"metadata\.json: entry 0, 'image_1': image file is missing: \S*0_1\.jpg"):
        load_benchmark("naturalbench", str(natural))
    metadata = json.loads((natural / "metadata.json").read_text())
    del metadata[0]["caption_1"]
    (natural / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(BenchmarkFormatError, match=r"metadata\.json: entry 0 lacks \['caption_1'\]"):
        load_benchmark("naturalbench", str(natural))


def test_blank_lines_in_mmvp_questions_are_not_statements(benchmark_sources, tmp_path):
    """csv reads a blank line as a row of no fields: one at the end was counted as a fifth statement ("statements come
    in pairs; got 5 rows", naming no line)."""
    blank = shutil.copytree(benchmark_sources["mmvp"], tmp_path / "blank")
    lines = (blank / "Questions.csv").read_text().splitlines()
    (blank / "Questions.csv").write_text("\n".join([*lines[:3], "", *lines[3:], "", ""]))
    assert [q[2:] for q in load_benchmark("mmvp", str(blank)).quadruples] == [
        q[2:] for q in load_benchmark("mmvp", str(benchmark_sources["mmvp"])).quadruples
    ]


@pytest.mark.parametrize("name, file", [("mmvp", "Questions.csv"), ("naturalbench", "metadata.json")])
def test_a_file_where_a_benchmark_needs_its_folder_is_a_format_error(benchmark_sources, name, file):
    """The path exists, so it passed the source check, then went to the Hub client as a repo id: a traceback."""
    with pytest.raises(BenchmarkFormatError, match=rf"{re.escape(file)}: a file; .* needs a folder holding .*give that folder"):
        load_benchmark(name, str(benchmark_sources[name] / file))


def test_malformed_sources_are_format_errors_naming_file_row_and_column(benchmark_sources, tmp_path):
    """Each was a traceback before any model loaded (pyarrow, datasets, csv unpacking, json) or, for the texts, an
    error naming no file or row once the model had embedded the images."""
    from conftest import make_picture, write_parquet

    def error_of(name, source):
        with pytest.raises(BenchmarkFormatError) as raised:
            load_benchmark(name, str(source))
        return str(raised.value)

    quadruple = {"image_0": [make_picture(0), make_picture(1)], "image_1": [make_picture(2), make_picture(3)],
                 "caption_0": ["a dog", None], "caption_1": ["a cat", "a cow"], "collapsed_tag": ["Object", "Object"]}
    none_caption = write_parquet(tmp_path / "none.parquet", quadruple, ("image_0", "image_1"))
    assert "none.parquet: row 1, column 'caption_0': None; expected a non-empty string" in error_of("winoground", none_caption)
    untagged = write_parquet(tmp_path / "untagged.parquet", {key: value for key, value in quadruple.items() if key != "collapsed_tag"},
                             ("image_0", "image_1"))
    assert "missing ['collapsed_tag']" in error_of("winoground", untagged)
    blank = write_parquet(tmp_path / "blank.parquet", {"image": [make_picture(0)], "caption": [["a dog", " "]]}, ("image",))
    assert "blank.parquet: row 0, column 'caption': ['a dog', ' ']" in error_of("coco", blank)
    (tmp_path / "truncated.parquet").write_bytes(none_caption.read_bytes()[:100])
    assert "truncated.parquet: not a readable parquet table for benchmark 'winoground'" in error_of("winoground", tmp_path / "truncated.parquet")
    empty = write_parquet(tmp_path / "empty.parquet", {key: value[:0] for key, value in quadruple.items()}, ())
    assert "empty.parquet" in error_of("winoground", empty)

    mmvp = shutil.copytree(benchmark_sources["mmvp"], tmp_path / "mmvp")
    lines = (mmvp / "Questions.csv").read_text().splitlines()
    (mmvp / "Questions.csv").write_text("\n".join([lines[0], lines[1], "2,Texts"] + lines[3:]) + "\n")
    assert "Questions.csv, line 3: expected 3 fields" in error_of("mmvp", mmvp)
    (mmvp / "Questions.csv").write_text("\n".join([lines[0] + ",Answer"] + lines[1:]) + "\n")
    assert "Questions.csv: expected a header with 3 columns" in error_of("mmvp", mmvp)
    (mmvp / "Questions.csv").write_text(lines[0] + "\n")
    assert "statements come in pairs; got 0 rows" in error_of("mmvp", mmvp)

    natural = shutil.copytree(benchmark_sources["naturalbench"], tmp_path / "natural")
    metadata = json.loads((natural / "metadata.json").read_text())
    (natural / "metadata.json").write_text(json.dumps(metadata)[:-5])
    assert "metadata.json: not valid JSON" in error_of("naturalbench", natural)
    (natural / "metadata.json").write_text("[]")
    assert "metadata.json: expected a non-empty list of entries" in error_of("naturalbench", natural)
    metadata[0]["caption_0"] = None
    (natural / "metadata.json").write_text(json.dumps(metadata))
    assert "metadata.json: entry 0, 'caption_0' is None; expected a non-empty string" in error_of("naturalbench", natural)


def test_naturalbench_archives_unpack_per_copy_and_version(benchmark_sources, tmp_path, monkeypatch):
    """Extraction folders were keyed by the archive's file name: a second copy, or a replaced archive, read the first
    one's stale captions."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "hf_home"))

    def archive_in(folder_name, caption_prefix):
        source = shutil.copytree(benchmark_sources["naturalbench"], tmp_path / "src" / caption_prefix / "NaturalBench-Retrieval")
        metadata = json.loads((source / "metadata.json").read_text())
        for item in metadata:
            item["caption_0"] = f"{caption_prefix} {item['caption_0']}"
        (source / "metadata.json").write_text(json.dumps(metadata))
        (tmp_path / folder_name).mkdir(exist_ok=True)
        return shutil.make_archive(str(tmp_path / folder_name / "NaturalBench-Retrieval"), "zip", root_dir=source.parent, base_dir=source.name)

    archive_in("first", "OLD")
    archive_in("second", "NEW")
    first_texts = [q.text0 for q in load_benchmark("naturalbench", str(tmp_path / "first")).quadruples]
    second_texts = [q.text0 for q in load_benchmark("naturalbench", str(tmp_path / "second")).quadruples]
    assert all(text.startswith("OLD") for text in first_texts) and all(text.startswith("NEW") for text in second_texts)
    archive_in("first", "NEWER")  # replaced in place
    assert all(q.text0.startswith("NEWER") for q in load_benchmark("naturalbench", str(tmp_path / "first")).quadruples)


def test_unknown_benchmark():
    with pytest.raises(ValueError, match="unknown benchmark 'imagenet'"):
        load_benchmark("imagenet")


def test_errors_in_a_folder_of_parquet_shards_name_the_file_and_its_own_row(tmp_path):
    """Rows were counted across the shards and the folder named: row 4 of the folder, not row 1 of the second file."""
    from conftest import make_picture, write_parquet

    def shard(name, captions_0):
        count = len(captions_0)
        write_parquet(tmp_path / "shards" / name, {
            "image_0": [make_picture(i) for i in range(count)], "image_1": [make_picture(i + 9) for i in range(count)],
            "caption_0": captions_0, "caption_1": ["a cat"] * count, "collapsed_tag": ["Object"] * count,
        }, ("image_0", "image_1"))

    (tmp_path / "shards").mkdir()
    shard("test-00000-of-00002.parquet", ["a dog", "a cow", "a pig"])
    shard("test-00001-of-00002.parquet", ["a hen", "  "])
    with pytest.raises(BenchmarkFormatError, match=r"test-00001-of-00002\.parquet: row 1, column 'caption_0': '  '"):
        load_benchmark("winoground", str(tmp_path / "shards"))


@pytest.mark.parametrize("name", ["mmvp", "naturalbench", "winoground"])
def test_evaluating_a_benchmark_decodes_each_image_once(benchmark_sources, name, monkeypatch):
    """Texts were read through whole quadruples, which decode both images, and images through them again: three
    decodes per image (a review counted them for MMVP). Checking them (as `RPATrainer` does when it is made) decodes
    none."""
    from evaluation.protocols import check_quadruples, evaluate_quadruples
    from modeling_maple.testing import build_tiny

    benchmark = load_benchmark(name, str(benchmark_sources[name]))
    decoded = []
    for column in benchmark.quadruples.columns()[:2]:  # the lazy image columns
        monkeypatch.setattr(column, "_item", lambda row, decode=column._item: decoded.append(row) or decode(row))
    check_quadruples(benchmark.quadruples)
    assert decoded == []
    model, processor = build_tiny("dual_encoder")
    evaluate_quadruples(model, processor, benchmark.quadruples, benchmark.categories, batch_size=4)
    assert len(decoded) == 2 * len(benchmark.quadruples)


def _benchmark_with_copies(kind: str, benchmark_sources, tmp_path) -> tuple[QuadrupleBenchmark, int]:
    """A quadruple benchmark whose first quadruple's two images are one and whose second shares it, stored as a
    parquet table's image bytes ("table") or as a folder layout's files ("files"), and its number of distinct images."""
    from conftest import make_picture, write_parquet

    if kind == "table":
        table = datasets.Dataset.from_parquet(str(benchmark_sources["winoground"])).to_dict()
        table["image_0"] = [make_picture(20), make_picture(20), make_picture(22)]
        table["image_1"] = [make_picture(20), make_picture(31), make_picture(32)]
        source = write_parquet(tmp_path / "winoground.parquet", table, ("image_0", "image_1"))
        return load_benchmark("winoground", str(source)), 4
    folder = shutil.copytree(benchmark_sources["naturalbench"], tmp_path / "NaturalBench-Retrieval")
    for copy in ("0_1.jpg", "1_0.jpg"):
        shutil.copyfile(folder / "images" / "0_0.jpg", folder / "images" / copy)
    return load_benchmark("naturalbench", str(folder)), 2


@pytest.mark.parametrize("kind", ["table", "files"])
def test_copies_of_a_benchmarks_image_are_told_by_their_stored_bytes_and_embedded_once(benchmark_sources, tmp_path,
                                                                                       monkeypatch, kind):
    """A quadruple benchmark's images are keyed by the bytes a parquet column stores (`LazyImages.content_keys`) or by
    their files' (`LazyImageFiles.content_keys`), read without decoding: each distinct image is decoded once, to be
    embedded, and a quadruple whose two images are one ties exactly."""
    from evaluation.protocols import quadruple_similarities
    from modeling_maple.testing import build_tiny

    benchmark, num_distinct = _benchmark_with_copies(kind, benchmark_sources, tmp_path)
    decoded = []
    for column in benchmark.quadruples.columns()[:2]:  # the lazy image columns
        monkeypatch.setattr(column, "_item", lambda row, decode=column._item: decoded.append(row) or decode(row))
    model, processor = build_tiny("dual_encoder")
    image_text, _ = quadruple_similarities(model, processor, benchmark.quadruples, batch_size=2)
    assert len(decoded) == num_distinct
    s00, s01, s10, s11 = image_text[0].tolist()
    assert (s00, s01) == (s10, s11)  # image0 and image1 of quadruple 0 are one


def test_a_benchmark_image_file_gone_since_the_benchmark_was_read_is_named_before_anything_is_embedded(
    benchmark_sources, tmp_path
):
    """A folder layout's files are checked when the benchmark is read; one deleted since is found when the images are
    keyed by their bytes, and named by its metadata entry and file, as a row error is."""
    from evaluation.protocols import evaluate_quadruples

    folder = shutil.copytree(benchmark_sources["naturalbench"], tmp_path / "NaturalBench-Retrieval")
    benchmark = load_benchmark("naturalbench", str(folder))
    gone = folder / "images" / "1_1.jpg"
    gone.unlink()
    model = LookupEmbedder({})
    with pytest.raises(BenchmarkFormatError, match=rf"^{re.escape(str(folder / 'metadata.json'))}: entry 1, 'image_1': "
                                                   rf"unreadable image file {re.escape(str(gone))} \(\[Errno 2\] No such file"):
        evaluate_quadruples(model, None, benchmark.quadruples)
    assert model.calls == []


def test_a_loaded_benchmark_is_scored_by_evaluate_benchmark_and_refused_by_the_field_functions(benchmark_sources):
    """`evaluate_quadruples(model, processor, load_benchmark("winoground"))` failed with "object of type
    'QuadrupleBenchmark' has no len()"."""
    from evaluation import evaluate_benchmark, evaluate_quadruples, evaluate_retrieval
    from modeling_maple.testing import build_tiny

    model, processor = build_tiny("dual_encoder")
    wino, coco = (load_benchmark(name, str(benchmark_sources[name])) for name in ("winoground", "coco"))
    assert evaluate_benchmark(model, processor, wino) == evaluate_quadruples(model, processor, wino.quadruples,
                                                                             wino.categories)
    assert evaluate_benchmark(model, processor, coco) == evaluate_retrieval(model, processor, coco.images,
                                                                            coco.captions_per_image)
    with pytest.raises(TypeError, match=r"quadruples: got the winoground benchmark itself; score it with evaluate_benchmark"):
        evaluate_quadruples(model, processor, wino)
    with pytest.raises(TypeError, match=r"images: got the coco benchmark itself"):
        evaluate_retrieval(model, processor, coco, [])


def test_malformed_data_that_raised_tracebacks_is_a_format_error_naming_file_row_and_key(benchmark_sources, tmp_path):
    """A user-journey review found tracebacks: an image column of ints (pyarrow's ArrowNotImplementedError), a
    NaturalBench image name that is null or a number (TypeError), an MMVP Questions.csv in Latin-1
    (UnicodeDecodeError), and a statement holding a newline made later errors name the wrong line."""
    import datasets

    def error_of(name, source):
        with pytest.raises(BenchmarkFormatError) as raised:
            load_benchmark(name, str(source))
        return str(raised.value)

    datasets.Dataset.from_dict({"image": [7, 8], "caption": [["a"], ["b"]]}).to_parquet(str(tmp_path / "ints.parquet"))
    assert error_of("coco", tmp_path / "ints.parquet").startswith(
        f"{tmp_path / 'ints.parquet'}: row 0, column 'image': 7; the column is Value('int64'), expected images")

    natural = shutil.copytree(benchmark_sources["naturalbench"], tmp_path / "natural")
    metadata = json.loads((natural / "metadata.json").read_text())
    for bad in (None, 3):
        metadata[1]["image_1"] = bad
        (natural / "metadata.json").write_text(json.dumps(metadata))
        assert f"metadata.json: entry 1, 'image_1' is {bad}; expected a non-empty string" in error_of("naturalbench", natural)

    mmvp = shutil.copytree(benchmark_sources["mmvp"], tmp_path / "mmvp")
    rows = [("Question ID", "Type", "Statement"), ("1", "Orientation and Direction", "The bird faces left."),
            ("2", "Orientation and Direction", "The bird faces right."), ("3", "Color and Appearance", "The café is red."),
            ("4", "Color and Appearance", "The car is blue.")]
    with (mmvp / "Questions.csv").open("w", newline="", encoding="latin-1") as handle:
        csv.writer(handle).writerows(rows)
    assert f"{mmvp / 'Questions.csv'}, line 4: not UTF-8" in error_of("mmvp", mmvp)
    # a statement over two lines (quoted, as csv writes it): the row after it starts on line 4, not 3
    rows[1] = ("1", "Orientation and Direction", "The bird\nfaces left.")
    rows[3] = ("3", "", "The car is red.")
    with (mmvp / "Questions.csv").open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    assert f"{mmvp / 'Questions.csv'}, line 5: expected 3 fields" in error_of("mmvp", mmvp)


def test_a_utf8_questions_csv_with_a_byte_order_mark_reads(benchmark_sources, tmp_path):
    mmvp = shutil.copytree(benchmark_sources["mmvp"], tmp_path / "mmvp")
    (mmvp / "Questions.csv").write_bytes(b"\xef\xbb\xbf" + (mmvp / "Questions.csv").read_bytes())
    assert len(load_benchmark("mmvp", str(mmvp)).quadruples) == 2


def test_missing_image_files_of_a_parquet_table_are_reported_before_any_image_is_embedded(tmp_path, monkeypatch):
    """docs/evaluation.md lists missing image files among the checks made before any model loads, but a table
    naming its images by path reported a missing one only when its batch was embedded (a user-journey review)."""
    import datasets

    from conftest import make_picture

    monkeypatch.chdir(tmp_path)
    make_picture(0).save(tmp_path / "a.png")
    table = datasets.Dataset.from_dict({"image": ["a.png", "b.png"], "caption": [["a"], ["b"]]})
    table.to_parquet(str(tmp_path / "paths.parquet"))
    with pytest.raises(BenchmarkFormatError, match=r"paths\.parquet: row 1, column 'image': image file is missing: b\.png"):
        load_benchmark("coco", "paths.parquet")
    (tmp_path / "b.png").write_bytes(b"")  # datasets measures the files it writes as an Image column
    table.cast_column("image", datasets.Image()).to_parquet(str(tmp_path / "paths_image.parquet"))
    (tmp_path / "b.png").unlink()
    with pytest.raises(BenchmarkFormatError, match=r"paths_image\.parquet: row 1, column 'image': image file is missing: b\.png"):
        load_benchmark("coco", "paths_image.parquet")
    datasets.Dataset.from_dict({"image": ["a.png", None], "caption": [["a"], ["b"]]}).to_parquet(str(tmp_path / "none.parquet"))
    with pytest.raises(BenchmarkFormatError, match=r"none\.parquet: row 1, column 'image': no image"):
        load_benchmark("coco", "none.parquet")
    (tmp_path / "b.png").write_bytes((tmp_path / "a.png").read_bytes())
    assert load_benchmark("coco", "paths.parquet").images[1].size == (24, 24)


def test_image_paths_written_with_a_tilde_or_as_file_urls_are_read_where_the_checks_find_them(tmp_path, monkeypatch):
    """The check before any model loads expanded `~/a.png`, but `datasets` then opened it as written, and read a
    `file://` URL's path from the working folder: both failed only when their batch was embedded (a review)."""
    from conftest import make_picture

    from evaluation.benchmarks import benchmark_image_files

    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    make_picture(0).save(home / "a.png")
    make_picture(1).save(home / "b c.png")  # a URL writes the space as %20
    datasets.Dataset.from_dict({"image": ["~/a.png", (home / "b c.png").as_uri()], "caption": [["a"], ["b"]]}).to_parquet("paths.parquet")
    benchmark = load_benchmark("coco", "paths.parquet")
    assert _is_picture(benchmark.images[0], 0) and _is_picture(benchmark.images[1], 1)
    assert benchmark_image_files(benchmark) == [home / "a.png", home / "b c.png"]
    datasets.Dataset.from_dict({"image": [(home / "c.png").as_uri()], "caption": [["c"]]}).to_parquet("missing.parquet")
    with pytest.raises(BenchmarkFormatError, match=r"missing\.parquet: row 0, column 'image': image file is missing: file://\S*/c\.png"):
        load_benchmark("coco", "missing.parquet")


@pytest.mark.parametrize("bad", [None, 3, " "])
def test_a_category_that_is_not_a_string_names_file_row_and_column(bad, tmp_path):
    """A BiVLC `type` of None became the category "none", an int the category "3", silently (a user-journey review)."""
    from conftest import make_picture, write_parquet

    columns = {"image": [make_picture(0), make_picture(1)], "negative_image": [make_picture(2), make_picture(3)],
               "caption": ["a cat", "a dog"], "negative_caption": ["a dog", "a cat"], "type": ["Replace", bad]}
    if isinstance(bad, int):
        columns["type"] = [1, bad]  # a column holds one type
    source = write_parquet(tmp_path / "bivlc.parquet", columns, ("image", "negative_image"))
    row = 0 if isinstance(bad, int) else 1
    with pytest.raises(BenchmarkFormatError, match=rf"bivlc\.parquet: row {row}, column 'type': .*expected a non-empty string"):
        load_benchmark("bivlc", str(source))


def test_a_missing_image_file_in_a_later_shard_names_that_shard_and_its_own_row(tmp_path):
    """The image check counts rows across the table's chunks (one per shard), and the file holding a shard's first
    row is that shard, not the one before it: a missing image at row 0 of the third of three shards is reported there."""
    from conftest import make_picture

    make_picture(0).save(tmp_path / "a.png")
    (tmp_path / "shards").mkdir()
    for shard, images in enumerate([["a.png"] * 3, ["a.png"] * 2, ["missing.png", "a.png"]]):
        datasets.Dataset.from_dict({"image": [str(tmp_path / image) for image in images], "caption": [["a"]] * len(images)}).to_parquet(
            str(tmp_path / "shards" / f"test-{shard:05d}-of-00003.parquet"))
    with pytest.raises(BenchmarkFormatError, match=r"test-00002-of-00003\.parquet: row 0, column 'image': image file is missing: \S*missing\.png"):
        load_benchmark("coco", str(tmp_path / "shards"))


def test_mmvp_takes_both_images_and_the_category_of_a_pair_from_its_first_row(benchmark_sources, tmp_path):
    """The benchmark files both images of a pair under the first row's Type (docstring of `_load_mmvp`): a second row
    whose Type differs changes neither where its image is read nor the pair's category."""
    mmvp = shutil.copytree(benchmark_sources["mmvp"], tmp_path / "mmvp")
    questions = (mmvp / "Questions.csv").read_text().replace("2,Orientation and Direction", "2,Spatial")
    (mmvp / "Questions.csv").write_text(questions)
    loaded = load_benchmark("mmvp", str(mmvp))
    assert loaded.categories == ["orientation and direction", "color and appearance"]
    assert _same_pixels(loaded.quadruples[0].image1, mmvp / "MLLM_VLM Images" / "Orientation and Direction" / "2.jpg")


def test_naturalbench_reads_a_folder_holding_the_unpacked_retrieval_folder(benchmark_sources, tmp_path):
    """A snapshot whose archive was unpacked in place holds NaturalBench-Retrieval/metadata.json one level down."""
    shutil.copytree(benchmark_sources["naturalbench"], tmp_path / "snapshot" / "NaturalBench-Retrieval")
    natural = load_benchmark("naturalbench", str(tmp_path / "snapshot"))
    assert [quadruple.text1 for quadruple in natural.quadruples] == ["scene 0 with a woman", "scene 1 with a woman"]


def test_naturalbench_reads_a_parquet_file_in_the_metadata_columns(tmp_path):
    from conftest import make_picture, write_parquet

    source = write_parquet(tmp_path / "naturalbench.parquet", {
        "image_0": [make_picture(0)], "image_1": [make_picture(1)], "caption_0": ["a man"], "caption_1": ["a woman"],
    }, ("image_0", "image_1"))
    natural = load_benchmark("naturalbench", str(source))
    assert natural.quadruples[0][2:] == ("a man", "a woman") and _is_picture(natural.quadruples[0].image1, 1)


# s(I0,T0) = 0.89 and s(I1,T1) = 0.84 (matched) are above 0.5, s(I0,T1) = -0.17 and s(I1,T0) = -0.29 (mismatched)
# below 0, s(T0,T1) = 0.29 between them.
_TEXTS = {"t0": [1.0, 0.0, 0.0], "t1": [0.3, 1.0, 0.0]}
_RIGHT = ([1.0, -0.5, 0.0], [-0.3, 1.0, 0.0], "t0", "t1")
_WRONG = (_RIGHT[1], _RIGHT[0], "t0", "t1")  # images swapped: every hit fails


class _CountedQuadruples(torch.utils.data.Dataset):
    """Quadruples as a torch Dataset (a length and rows by position, not a `Sequence`) that counts the reads of each
    row in `reads`: those a lazy set decoding its images on access would pay for."""

    def __init__(self, rows):
        self.rows = list(rows)
        self.reads = [0] * len(self.rows)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        self.reads[index] += 1
        return self.rows[index]


def test_similarity_histograms_count_matched_mismatched_and_text_text_cosines_apart():
    """The model-card plot's three samples: matched are s(I0,T0) and s(I1,T1), mismatched s(I0,T1) and s(I1,T0),
    binned over the whole cosine range [-1, 1] (a negative cosine is counted, not dropped)."""
    from evaluation.protocols import HISTOGRAM_BINS, evaluate_quadruples

    histograms = evaluate_quadruples(LookupEmbedder(_TEXTS), None, [_RIGHT, _RIGHT])["similarity_histograms"]
    middle, three_quarters = HISTOGRAM_BINS // 2, 3 * HISTOGRAM_BINS // 4  # the bins starting at 0 and at 0.5
    assert sum(histograms["matched"][three_quarters:]) == sum(histograms["matched"]) == 4
    assert sum(histograms["mismatched"][:middle]) == sum(histograms["mismatched"]) == 4
    assert sum(histograms["text_text"][middle:three_quarters]) == sum(histograms["text_text"]) == 2


def test_per_category_scores_come_in_sorted_category_order():
    """A set's order changes from run to run (string hashing): results.json and the tables would list categories
    differently each time."""
    from evaluation.protocols import evaluate_quadruples

    categories = ["swap", "add", "replace", "negation", "counting", "add"]
    result = evaluate_quadruples(LookupEmbedder(_TEXTS), None, [_RIGHT, _WRONG, _RIGHT, _RIGHT, _RIGHT, _RIGHT], categories)
    assert list(result["per_category"]) == ["add", "counting", "negation", "replace", "swap"]
    assert result["per_category"]["add"] == {"text_score": 50.0, "image_score": 50.0, "group_score": 50.0, "num_quadruples": 2}


@pytest.mark.parametrize("quadruples, categories, message", [
    ([], None, r"^quadruples: got none$"),
    ([_RIGHT, _RIGHT], ["add"], r"^categories: expected one per quadruple \(2\), got 1$"),
    ([_RIGHT], ["add", "swap"], r"^categories: expected one per quadruple \(1\), got 2$"),
])
def test_quadruple_inputs_of_the_wrong_length_are_refused(quadruples, categories, message):
    from evaluation.protocols import evaluate_quadruples

    with pytest.raises(ValueError, match=message):
        evaluate_quadruples(LookupEmbedder(_TEXTS), None, quadruples, categories)


def test_each_protocol_embeds_with_the_batch_size_given_and_each_distinct_caption_once():
    from evaluation.protocols import evaluate_benchmark

    model = LookupEmbedder(_TEXTS)
    retrieval = RetrievalBenchmark("r", [_RIGHT[0], _RIGHT[1]], [["t0", "t1"], ["t1", "t1"]])
    result = evaluate_benchmark(model, None, retrieval, batch_size=3)
    evaluate_benchmark(model, None, QuadrupleBenchmark("q", [_RIGHT], None), batch_size=5)
    assert model.calls == [(["t0", "t1"], 3), (["t0", "t1"], 5)]
    assert (result["num_images"], result["num_captions"]) == (2, 4)  # captions are counted as written


def test_caption_errors_name_the_first_bad_row_count_them_all_and_refuse_a_one_word_string(tmp_path):
    """A one-word caption string has no space to fail the blank check letter by letter: only the string check keeps it
    from being read as a list of one-letter captions."""
    from conftest import make_picture, write_parquet

    pictures = [make_picture(seed) for seed in range(3)]
    path = write_parquet(tmp_path / "c.parquet", {"image": pictures, "caption": [["a"], [], [" "]]}, ("image",))
    with pytest.raises(BenchmarkFormatError, match=r"c\.parquet: row 1, column 'caption': \[\]; .* \(2 such rows\)"):
        load_benchmark("coco", str(path))
    path = write_parquet(tmp_path / "word.parquet", {"image": pictures[:1], "caption": ["dog"]}, ("image",))
    with pytest.raises(BenchmarkFormatError, match=r"word\.parquet: row 0, column 'caption': 'dog'; expected a non-empty list"):
        load_benchmark("coco", str(path))


def test_a_null_image_in_a_later_shard_names_that_shard_and_its_own_row(tmp_path):
    from conftest import make_picture

    make_picture(0).save(tmp_path / "a.png")
    (tmp_path / "shards").mkdir()
    for shard, images in enumerate([[str(tmp_path / "a.png")] * 2, [str(tmp_path / "a.png"), None]]):
        datasets.Dataset.from_dict({"image": images, "caption": [["a"]] * len(images)}).to_parquet(
            str(tmp_path / "shards" / f"test-{shard:05d}-of-00002.parquet"))
    with pytest.raises(BenchmarkFormatError, match=r"test-00001-of-00002\.parquet: row 1, column 'image': no image"):
        load_benchmark("coco", str(tmp_path / "shards"))


def test_naturalbench_entries_that_are_not_objects_blank_or_folders_are_named(benchmark_sources, tmp_path):
    natural = shutil.copytree(benchmark_sources["naturalbench"], tmp_path / "natural")
    metadata = json.loads((natural / "metadata.json").read_text())

    def error_with(entries):
        (natural / "metadata.json").write_text(json.dumps(entries))
        with pytest.raises(BenchmarkFormatError) as raised:
            load_benchmark("naturalbench", str(natural))
        return str(raised.value)

    assert "metadata.json: entry 1 lacks ['image_0', 'image_1', 'caption_0', 'caption_1']" in error_with([metadata[0], 3])
    assert "metadata.json: entry 1, 'caption_1' is ' '; expected a non-empty string" in error_with(
        [metadata[0], {**metadata[1], "caption_1": " "}])
    (natural / "images" / "folder").mkdir()
    assert "metadata.json: entry 0, 'image_0': image file is missing: " in error_with([{**metadata[0], "image_0": "folder"}])


def test_mmvp_rows_with_more_than_three_fields_or_a_blank_field_name_their_line(benchmark_sources, tmp_path):
    """A statement holding an unquoted comma splits into four fields; a blank statement would be the text
    "a photo of  "."""
    mmvp = shutil.copytree(benchmark_sources["mmvp"], tmp_path / "mmvp")
    lines = (mmvp / "Questions.csv").read_text().splitlines()
    for bad in ("2,Orientation and Direction,The bird, facing right.", "2,Orientation and Direction,  "):
        (mmvp / "Questions.csv").write_text("\n".join([*lines[:2], bad, *lines[3:]]) + "\n")
        with pytest.raises(BenchmarkFormatError, match=r"Questions\.csv, line 3: expected 3 fields"):
            load_benchmark("mmvp", str(mmvp))


def test_an_empty_folder_names_what_each_benchmark_needs(tmp_path):
    with pytest.raises(BenchmarkFormatError, match=r"no parquet files for benchmark 'coco'"):
        load_benchmark("coco", str(tmp_path))
    with pytest.raises(BenchmarkFormatError, match=r"NaturalBench-Retrieval needs a folder holding metadata\.json and images/"):
        load_benchmark("naturalbench", str(tmp_path))


def test_shards_are_read_in_file_name_order_whatever_order_the_folder_lists_them(tmp_path, monkeypatch):
    """A folder lists its files in no set order: the table's row order, and each row's file in errors, follow the
    shard names (test-00000-of-00002, test-00001-of-00002), as the Hub orders them."""
    from pathlib import Path

    from conftest import make_picture, write_parquet

    for shard in range(2):
        write_parquet(tmp_path / f"test-{shard:05d}-of-00002.parquet",
                      {"image": [make_picture(shard)], "caption": [[f"shard {shard}"]]}, ("image",))
    rglob = Path.rglob
    monkeypatch.setattr(Path, "rglob", lambda self, pattern: reversed(sorted(rglob(self, pattern))))
    assert load_benchmark("coco", str(tmp_path)).captions_per_image == [["shard 0"], ["shard 1"]]


def test_similarity_histograms_count_cosines_that_round_past_one():
    """The cosine of two equal unit vectors often rounds to 1 + 1 ulp, and `torch.histc` drops values past its range:
    here nearly half the matched cosines were missing, as they would be for a collapsed model (every embedding alike)
    from the plot meant to show the collapse."""
    from evaluation.protocols import evaluate_quadruples

    vectors = torch.randn(50, 64, generator=torch.Generator().manual_seed(0))
    model = LookupEmbedder({f"t{i}": vector.tolist() for i, vector in enumerate(vectors)})
    quadruples = [(vector.tolist(), vector.tolist(), f"t{i}", f"t{i}") for i, vector in enumerate(vectors)]
    histograms = evaluate_quadruples(model, None, quadruples)["similarity_histograms"]
    assert (sum(histograms["matched"]), sum(histograms["mismatched"]), sum(histograms["text_text"])) == (100, 100, 50)
    assert histograms["matched"][-1] == 100


def test_lookup_embedder_takes_vectors_of_integers():
    """Integer vectors made int64 tensors, which `F.normalize` refuses ("Expected a floating point ... Got Long")."""
    from evaluation.protocols import evaluate_quadruples

    model = LookupEmbedder({"t0": [1, 0], "t1": [0, 1]})
    assert evaluate_quadruples(model, None, [([1, 0], [0, 1], "t0", "t1")])["group_score"] == 100.0


@pytest.mark.parametrize("bad, message", [
    ((_RIGHT[0], _RIGHT[1], "t0"), r"^quadruples\[1\]: expected \(image0, image1, text0, text1\), got 3 fields$"),
    ((_RIGHT[0], _RIGHT[1], "t0", None), r"^quadruples\[1\]: text1 is None \(NoneType\); expected a string$"),
    ((_RIGHT[0], _RIGHT[1], 3, "t1"), r"^quadruples\[1\]: text0 is 3 \(int\); expected a string$"),
    # MAPLE's processor refuses a blank text, by its place in the interleaved texts ("text[2]")
    ((_RIGHT[0], _RIGHT[1], "t0", "  "), r"^quadruples\[1\]: text1 is '  ', blank; expected a text with words$"),
    ("abcd", r"^quadruples\[1\]: expected \(image0, image1, text0, text1\), got 'abcd'$"),
])
def test_a_malformed_quadruple_is_named_before_anything_is_embedded(bad, message):
    """A quadruple of three fields failed with "tuple index out of range", and a text of None reached the tokenizer:
    neither said which quadruple."""
    from evaluation.protocols import evaluate_quadruples

    model = LookupEmbedder(_TEXTS)
    with pytest.raises((TypeError, ValueError), match=message):
        evaluate_quadruples(model, None, [_RIGHT, bad, _RIGHT])
    assert model.calls == []


def test_quadruples_may_be_the_rows_of_a_numpy_array_of_objects():
    import numpy as np

    from evaluation.protocols import evaluate_quadruples

    rows = np.empty((2, 4), dtype=object)
    rows[:] = [_RIGHT, _WRONG]
    assert evaluate_quadruples(LookupEmbedder(_TEXTS), None, rows)["group_score"] == 50.0


def test_a_table_given_as_quadruples_is_a_type_error_saying_how_to_pass_its_rows():
    """A pandas DataFrame (Winoground's parquet read with pandas) failed with "'Index' object is not callable", and a
    datasets.Dataset named its first row, a dict, as a malformed quadruple. The error names no column: every benchmark
    calls them something else."""
    import pandas as pd

    from evaluation.protocols import evaluate_quadruples

    columns = {"image_0": [_RIGHT[0]], "image_1": [_RIGHT[1]], "caption_0": [_RIGHT[2]], "caption_1": [_RIGHT[3]]}
    tables = {"DataFrame": pd.DataFrame(columns), "Dataset": datasets.Dataset.from_dict(columns),
              "list of dict rows": pd.DataFrame(columns).to_dict("records")}
    for kind, table in tables.items():
        with pytest.raises(TypeError, match=rf"^quadruples: expected a list of \(image0, image1, text0, text1\), got a "
                                            rf"table \({kind}\); pass its rows: list\(zip\(table\[<image0 column>\], "
                                            r"table\[<image1 column>\], table\[<text0 column>\], table\[<text1 column>\]\)\)$"):
            evaluate_quadruples(LookupEmbedder(_TEXTS), None, table)
    # not a table: no hint about one
    with pytest.raises(TypeError, match=r"^quadruples: expected a list of \(image0, image1, text0, text1\), got a generator$"):
        evaluate_quadruples(LookupEmbedder(_TEXTS), None, (quadruple for quadruple in [_RIGHT]))


def test_a_pyarrow_table_or_a_polars_dataframe_is_refused_as_a_table_not_read_as_a_benchmark(monkeypatch):
    """Anything with a `columns` attribute was taken for a benchmark's quadruples and its `columns()` called: a pyarrow
    Table (a list of column names there) passed the check and failed with "'list' object is not callable"."""
    import types

    import pyarrow as pa

    from evaluation.protocols import evaluate_quadruples

    class DataFrame:  # polars' is not installed; it is looked up in sys.modules, as the check does, never imported
        columns = ["image_0", "image_1", "caption_0", "caption_1"]

        def __len__(self):
            return 1

        def __getitem__(self, column):
            return [_RIGHT[self.columns.index(column)]]

    monkeypatch.setitem(sys.modules, "polars", types.SimpleNamespace(DataFrame=DataFrame))
    texts = {"image_0": ["a.png"], "image_1": ["b.png"], "caption_0": ["t0"], "caption_1": ["t1"]}
    for table in (pa.table(texts), pa.RecordBatch.from_pydict(texts), DataFrame()):
        with pytest.raises(TypeError, match=rf"^quadruples: expected a list of \(image0, image1, text0, text1\), got a "
                                            rf"table \({type(table).__name__}\); pass its rows: list\(zip\("):
            evaluate_quadruples(LookupEmbedder(_TEXTS), None, table)


def test_quadruples_may_be_any_sequence_by_position_such_as_a_series_or_a_torch_dataset():
    """The table check refused all but a `Sequence` or NumPy array: a pandas Series of tuples and a torch Dataset of
    tuples (a length and items by position), which were scored before, were TypeErrors."""
    import pandas as pd

    from evaluation.protocols import evaluate_quadruples

    for quadruples in (pd.Series([_RIGHT, _WRONG]), _CountedQuadruples([_RIGHT, _WRONG])):
        assert evaluate_quadruples(LookupEmbedder(_TEXTS), None, quadruples)["group_score"] == 50.0


def test_the_number_of_categories_is_checked_before_any_quadruple_is_read():
    """It was checked after every quadruple had been read for its texts (a lazy dataset decoding its images to give
    each)."""
    from evaluation.protocols import evaluate_quadruples

    quadruples = _CountedQuadruples([_RIGHT, _RIGHT])
    with pytest.raises(ValueError, match=r"^categories: expected one per quadruple \(2\), got 1$"):
        evaluate_quadruples(LookupEmbedder(_TEXTS), None, quadruples, ["add"])
    assert quadruples.reads == [0, 0]


def test_a_series_of_quadruples_is_read_by_position_whatever_its_index():
    """Rows were read by label: a Series indexed from 1 failed with a bare KeyError: 0, and one indexed [1, 0] was
    scored with its texts and images in label order but its categories by position, so each category got the other's
    scores, silently."""
    import pandas as pd

    from evaluation.protocols import check_quadruples, evaluate_quadruples

    model = LookupEmbedder(_TEXTS)
    check_quadruples(pd.Series([_RIGHT, _WRONG], index=[1, 2]))
    assert evaluate_quadruples(model, None, pd.Series([_RIGHT, _WRONG], index=[1, 2]))["group_score"] == 50.0
    result = evaluate_quadruples(model, None, pd.Series([_WRONG, _RIGHT], index=[1, 0]), ["swapped", "right"])
    assert {category: scores["group_score"] for category, scores in result["per_category"].items()} == {
        "right": 100.0, "swapped": 0.0
    }


def test_quadruples_are_checked_and_read_once_per_evaluation():
    """evaluate_quadruples and quadruple_similarities both checked them, each reading the first quadruple: a lazy
    dataset's first quadruple was read (and its images decoded) two more times than any other."""
    from evaluation.protocols import evaluate_quadruples

    quadruples = _CountedQuadruples([_RIGHT, _WRONG])
    evaluate_quadruples(LookupEmbedder(_TEXTS), None, quadruples)
    assert quadruples.reads[0] == quadruples.reads[1]


def test_a_lazy_set_of_quadruples_is_read_twice_per_evaluation_to_check_it_then_to_embed_it():
    """Each quadruple was read five times (its texts; the keys of image0, then of image1; its image0, then its image1
    to embed them), each read decoding its images in a lazy set. It is read once to check it (texts and image keys),
    then once for both its images as they are embedded; the scores are the bits a list of the same quadruples gets."""
    import pandas as pd

    from evaluation.lazy import LazySequence
    from evaluation.protocols import evaluate_quadruples

    rows = [_RIGHT, _WRONG, (_RIGHT[0], [0.2, 0.9, 0.1], "t1", "t0"), _RIGHT]  # the last a copy of the first
    reads = [0] * len(rows)

    class Quadruples(LazySequence):
        def __len__(self):
            return len(rows)

        def _item(self, index):
            reads[index] += 1
            return rows[index]

    expected = evaluate_quadruples(LookupEmbedder(_TEXTS), None, rows, ["a", "b", "a", "b"], batch_size=3)
    lazy = evaluate_quadruples(LookupEmbedder(_TEXTS), None, Quadruples(), ["a", "b", "a", "b"], batch_size=3)
    assert reads == [2] * len(rows)
    assert lazy == expected
    by_label = pd.Series(rows, index=[3, 2, 1, 0])  # read by position, as before
    assert evaluate_quadruples(LookupEmbedder(_TEXTS), None, by_label, ["a", "b", "a", "b"], batch_size=3) == expected


@pytest.mark.parametrize("quadruples, error, message", [
    ([], ValueError, r"^eval_quadruples\['sides'\]: got none$"),
    ([_RIGHT[:3], _RIGHT], ValueError,
     r"^eval_quadruples\['sides'\]\[0\]: expected \(image0, image1, text0, text1\), got 3 fields$"),
    ([(_RIGHT[0], _RIGHT[1], "t0", " ")], ValueError, r"^eval_quadruples\['sides'\]\[0\]: text1 is ' ', blank; "),
])
def test_check_quadruples_refuses_what_evaluation_would_before_embedding_and_names_the_argument(quadruples, error,
                                                                                                message):
    """It refused only what was not quadruples at all: an empty set, or a quadruple of three fields, passed it and
    failed at the evaluation (after the training steps before it, for `RPATrainer`'s `eval_quadruples`)."""
    from evaluation.protocols import check_quadruples

    with pytest.raises(error, match=message):
        check_quadruples(quadruples, "eval_quadruples['sides']")


def test_check_quadruples_reads_only_the_first_quadruple_and_evaluation_checks_the_others():
    """It read every quadruple for its texts: a lazy set decoding its images on access (2,000 quadruples of 384-pixel
    PNGs) took 14.7 s to check, when `RPATrainer` was made. A later malformed quadruple is refused when scored,
    before anything is embedded."""
    from evaluation.protocols import check_quadruples, evaluate_quadruples

    quadruples = _CountedQuadruples([_RIGHT, _RIGHT, _RIGHT[:3]])
    check_quadruples(quadruples)
    assert quadruples.reads == [1, 0, 0]
    model = LookupEmbedder(_TEXTS)
    with pytest.raises(ValueError, match=r"^quadruples\[2\]: expected \(image0, image1, text0, text1\), got 3 fields$"):
        evaluate_quadruples(model, None, quadruples)
    assert model.calls == []


def test_a_folder_holding_several_splits_is_read_from_the_benchmarks_split_only(tmp_path, monkeypatch):
    """A snapshot of a Hub repo with a validation split beside the test split was read whole: the validation rows were
    scored as test rows. Splits are told by file name, as datasets tells them (and as the Hub read does)."""
    from conftest import make_picture, write_parquet

    def shard(path, captions):
        write_parquet(path, {"image": [make_picture(i) for i in range(len(captions))], "caption": captions}, ("image",))

    shard(tmp_path / "snapshot" / "data" / "test-00000-of-00001.parquet", [["a test caption"], ["another"]])
    shard(tmp_path / "snapshot" / "data" / "validation-00000-of-00001.parquet", [["a validation caption"]])
    # a custom split name, which datasets reads from data/ only (a review found it read as "test" once)
    shard(tmp_path / "snapshot" / "data" / "test_hard-00000-of-00001.parquet", [["a hard caption"]])
    coco = load_benchmark("coco", str(tmp_path / "snapshot"))
    assert coco.captions_per_image == [["a test caption"], ["another"]] and len(coco.images) == 2
    monkeypatch.chdir(tmp_path / "snapshot" / "data")  # a relative path, through ..
    assert load_benchmark("coco", "../../snapshot").captions_per_image == [["a test caption"], ["another"]]

    shard(tmp_path / "no_test" / "train.parquet", [["a training caption"]])
    shard(tmp_path / "no_test" / "validation.parquet", [["a validation caption"]])
    with pytest.raises(BenchmarkFormatError, match=r"no_test: holds the splits \['train', 'validation'\] but not "
                                                   r"'test', the split benchmark 'coco' is read from"):
        load_benchmark("coco", str(tmp_path / "no_test"))
    # a file name that reads as no split name is a format error, not datasets' ValueError (found by a review)
    shard(tmp_path / "bad_name" / "data" / "test-v2-00000-of-00001.parquet", [["a caption"]])
    shard(tmp_path / "bad_name" / "data" / "test-00000-of-00001.parquet", [["a caption"]])
    with pytest.raises(BenchmarkFormatError, match=r"bad_name: Split name should match"):
        load_benchmark("coco", str(tmp_path / "bad_name"))
    # files that name no split, or one, are all read (as before), a file that names none beside one that does too
    shard(tmp_path / "with_extra" / "test.parquet", [["the test caption"]])
    shard(tmp_path / "with_extra" / "extra.parquet", [["an extra caption"]])
    assert load_benchmark("coco", str(tmp_path / "with_extra")).captions_per_image == [["an extra caption"], ["the test caption"]]
    shard(tmp_path / "one_split" / "coco_train_copy.parquet", [["first"]])
    shard(tmp_path / "one_split" / "more" / "coco_train_more.parquet", [["second"]])
    assert load_benchmark("coco", str(tmp_path / "one_split")).captions_per_image == [["first"], ["second"]]
    # ... but a file of another split is never read as the benchmark's: a split's folder beside data/'s shards,
    # which datasets then reads alone, left that split's rows to be scored with the test split's (datasets read one
    # split, so every file was read); and a file that datasets reads as two splits
    shard(tmp_path / "beside" / "data" / "test-00000-of-00001.parquet", [["the test caption"]])
    shard(tmp_path / "beside" / "validation" / "0000.parquet", [["a validation caption"]])
    with pytest.raises(BenchmarkFormatError, match=r"^\S*beside: datasets reads the splits of this folder \(test\) from "
                                                   r"the names of its shards in data/ alone .* leaves out "
                                                   r"validation/0000.parquet \(its path names split 'validation'\)"):
        load_benchmark("coco", str(tmp_path / "beside"))
    shard(tmp_path / "twice" / "test" / "0000.parquet", [["the test caption"]])
    shard(tmp_path / "twice" / "test" / "train_copy" / "0000.parquet", [["a training caption"]])
    with pytest.raises(BenchmarkFormatError, match=r"datasets reads test/train_copy/0000.parquet as the splits train "
                                                   r"and test"):
        load_benchmark("coco", str(tmp_path / "twice"))


def _push_card(folder, configs):
    """The README.md that `push_to_hub` writes for `configs` (config -> its splits; "default" in data/, another in its
    own folder), as datasets reads it."""
    lines = ["---", "configs:"]
    for config, splits in configs.items():
        data_dir = "data" if config == "default" else config
        lines += [f"- config_name: {config}", "  data_files:"]
        lines += [f"  - split: {split}\n    path: {data_dir}/{split}-*" for split in splits]
    (folder / "README.md").write_text("\n".join([*lines, "---", ""]))


def test_a_folder_with_a_card_is_read_as_its_configs_say(tmp_path):
    """The local read ignored a README.md's `configs` (found by a review): it merged two configs' test splits, read a
    config's train rows with its test rows, and refused folders that push_to_hub writes itself (a default config beside
    a config `paper`, or a stray old/test.parquet), whose data/ shards datasets reads alone. A folder with a card is
    read as the Hub repo is: its default config's benchmark split; several configs and no default are refused, naming
    them, as the Hub read refuses them."""
    from conftest import make_picture, write_parquet

    def shard(path, caption):
        write_parquet(path, {"image": [make_picture(0)], "caption": [[caption]]}, ("image",))

    def captions(folder):
        return load_benchmark("coco", str(folder)).captions_per_image

    shard(tmp_path / "two" / "add_att" / "test-00000-of-00001.parquet", "add_att's")
    shard(tmp_path / "two" / "swap" / "test-00000-of-00001.parquet", "swap's")
    _push_card(tmp_path / "two", {"add_att": ["test"], "swap": ["test"]})
    with pytest.raises(BenchmarkFormatError) as refused:
        captions(tmp_path / "two")
    assert str(refused.value) == (
        f"{tmp_path / 'two'}: its README.md names the configs add_att, swap, and no default config: benchmark 'coco' "
        f"is read from a dataset's default config; pass the folder of one config's files "
        f"(e.g. {tmp_path / 'two' / 'add_att'})"
    )
    assert captions(tmp_path / "two" / "swap") == [["swap's"]]
    shard(tmp_path / "eval" / "eval" / "train-00000-of-00001.parquet", "a training caption")
    shard(tmp_path / "eval" / "eval" / "test-00000-of-00001.parquet", "the test caption")
    _push_card(tmp_path / "eval", {"eval": ["train", "test"]})
    assert captions(tmp_path / "eval") == [["the test caption"]]
    shard(tmp_path / "paper" / "data" / "train-00000-of-00001.parquet", "a training caption")
    shard(tmp_path / "paper" / "data" / "test-00000-of-00001.parquet", "the test caption")
    shard(tmp_path / "paper" / "paper" / "test-00000-of-00001.parquet", "paper's")
    shard(tmp_path / "paper" / "old" / "test.parquet", "an old one")
    _push_card(tmp_path / "paper", {"default": ["train", "test"], "paper": ["test"]})
    assert captions(tmp_path / "paper") == [["the test caption"]]
    # without the card, a config's shards are split by their names: test_hard is no test split
    shard(tmp_path / "hard" / "paper" / "train-00000-of-00001.parquet", "a training caption")
    shard(tmp_path / "hard" / "paper" / "test_hard-00000-of-00001.parquet", "a hard caption")
    with pytest.raises(BenchmarkFormatError, match=r"holds the splits \['test_hard', 'train'\] but not 'test'"):
        captions(tmp_path / "hard")
    shard(tmp_path / "hard" / "paper" / "test-00000-of-00001.parquet", "the test caption")
    assert captions(tmp_path / "hard") == [["the test caption"]]


def test_a_cards_config_is_read_from_its_parquet_files_and_a_card_datasets_cannot_read_is_named(tmp_path):
    """A card's config read every file its patterns match: paper/test_notes.txt beside `data_dir: paper`'s shard was
    a "test file" that failed as "not a readable parquet table"; and a README.md whose YAML does not parse, or is not
    a mapping, failed with the parser's traceback (found by a review)."""
    from conftest import make_picture, write_parquet

    folder = tmp_path / "notes"
    write_parquet(folder / "paper" / "test-00000-of-00001.parquet",
                  {"image": [make_picture(0)], "caption": [["the test caption"]]}, ("image",))
    (folder / "paper" / "test_notes.txt").write_text("how the captions were written")
    (folder / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_dir: paper\n---\n")
    assert load_benchmark("coco", str(folder)).captions_per_image == [["the test caption"]]

    (folder / "README.md").write_text("---\nconfigs: [\n---\n# COCO\n")
    with pytest.raises(BenchmarkFormatError) as refused:
        load_benchmark("coco", str(folder))
    assert str(refused.value) == (
        f"{folder / 'README.md'}: its YAML metadata (between the --- lines) does not parse: while parsing a flow node, "
        "expected the node content, but found '<stream end>' (line 2, column 11)"
    )
    (folder / "README.md").write_text("---\n- config_name: default\n---\n")
    with pytest.raises(BenchmarkFormatError, match=r"README.md: its YAML metadata .* cannot be read: .* should be a dict"):
        load_benchmark("coco", str(folder))
    (folder / "README.md").write_text("---\nconfigs:\n- paper\n---\n")
    with pytest.raises(BenchmarkFormatError, match=r"README.md: configs is \['paper'\]; expected a list of mappings"):
        load_benchmark("coco", str(folder))


def test_embeddings_a_model_returns_in_bfloat16_are_scored_in_float32():
    """bf16 cosines carry 8 bits: neighbours whose float32 cosines differ came out tied, and ties count against the
    model, so an embedder returning bf16 (the protocols take any `encode`) lost hits it had made."""
    from evaluation.protocols import evaluate_quadruples, evaluate_retrieval

    generator = torch.Generator().manual_seed(0)
    images = torch.randn(300, 64, generator=generator).bfloat16()
    texts = (images + 2.2 * torch.randn(300, 64, generator=generator)).bfloat16()

    class Embedder:
        def __init__(self, dtype):
            self.dtype = dtype

        def encode(self, processor, texts, images, batch_size):
            return (torch.stack([text_vectors[int(text)] for text in texts]).to(self.dtype),
                    torch.stack(list(images)).to(self.dtype))

    text_vectors = texts
    captions = [[str(i)] for i in range(300)]
    assert evaluate_retrieval(Embedder(torch.bfloat16), None, list(images), captions) == evaluate_retrieval(
        Embedder(torch.float32), None, list(images), captions)
    quadruples = [(images[i], images[i + 1], str(i), str(i + 1)) for i in range(0, 300, 2)]
    bf16, fp32 = (evaluate_quadruples(Embedder(dtype), None, quadruples) for dtype in (torch.bfloat16, torch.float32))
    assert bf16 == fp32


@pytest.mark.parametrize("dtype, scale", [
    *((dtype, scale) for dtype in (torch.float32, torch.bfloat16, torch.float64) for scale in (2.0 ** 100, 2.0 ** -100)),
    (torch.float64, 2.0 ** 1000),
])
def test_finite_embeddings_whose_norms_overflow_or_underflow_float32_score_as_their_directions(dtype, scale):
    """F.normalize squares float32 values: rows of ~1e30 had a norm of inf and became zero vectors, rows of ~1e-30 a
    norm of 0 and near-zero vectors, so every cosine was ~0, all tied, and every score 0 (float64 rows past 3e38 were
    inf once float32, and NaN normalised). Scaled by a power of two, every embedding scores the bits it scores
    unscaled."""
    from evaluation.protocols import evaluate_quadruples, evaluate_retrieval

    class Embedder:
        def __init__(self, scale):
            self.scale = scale

        def encode(self, processor, texts, images, batch_size):
            return ((torch.tensor([_TEXTS[text] for text in texts], dtype=torch.float64) * self.scale).to(dtype),
                    (torch.tensor([list(image) for image in images], dtype=torch.float64) * self.scale).to(dtype))

    quadruples = [_RIGHT, (_RIGHT[0], [0.2, 0.9, 0.1], "t1", "t0"), _WRONG]
    expected = evaluate_quadruples(Embedder(1.0), None, quadruples)
    assert expected["group_score"] > 0
    assert evaluate_quadruples(Embedder(scale), None, quadruples) == expected
    images, captions = [_RIGHT[0], _RIGHT[1]], [["t0"], ["t1"]]
    expected = evaluate_retrieval(Embedder(1.0), None, images, captions)
    assert expected["i2t_r1"] == 100.0 and evaluate_retrieval(Embedder(scale), None, images, captions) == expected

def test_a_category_that_is_not_a_string_is_named():
    """Sorting the categories failed: "'<' not supported between instances of 'NoneType' and 'str'"."""
    from evaluation.protocols import evaluate_quadruples

    with pytest.raises(TypeError, match=r"^categories\[1\]: None \(NoneType\); expected a category name \(a string\)$"):
        evaluate_quadruples(LookupEmbedder(_TEXTS), None, [_RIGHT, _RIGHT], ["add", None])


@pytest.mark.parametrize("category", ["all", "All", "ALL"])
def test_a_category_named_all_in_any_case_is_refused_naming_its_quadruple(category):
    """"all" names the results tables' row of all the quadruples: a category of that name was a second "all" row,
    shown with the overall modality gap in results.md, and told from the overall row by nothing. "All" was taken,
    a row told from it by case alone, though a benchmark's category "All" (read lower-cased) is refused."""
    from evaluation.protocols import evaluate_quadruples

    model = LookupEmbedder(_TEXTS)
    with pytest.raises(ValueError, match=rf"^categories\[1\] \(quadruple 1\): category '{category}' is, in any case, "
                                         r"the name of the results' row for all the quadruples \('all'\); rename the "
                                         r"category$"):
        evaluate_quadruples(model, None, [_RIGHT, _RIGHT], ["add", category])
    assert model.calls == []
    assert set(evaluate_quadruples(model, None, [_RIGHT, _RIGHT], ["add", "Alls"])["per_category"]) == {"add", "Alls"}


def test_a_benchmark_category_read_as_all_names_its_file_and_row(benchmark_sources, tmp_path):
    """A benchmark's categories are read lower-cased, so a type "All" is the category "all" (see the test above): it is
    refused when the benchmark is read, before any model loads, naming where it is written and as it is written."""
    from conftest import make_picture, write_parquet

    columns = {"image": [make_picture(0), make_picture(1)], "negative_image": [make_picture(2), make_picture(3)],
               "caption": ["a cat", "a dog"], "negative_caption": ["a dog", "a cat"], "type": ["Replace", "All"]}
    source = write_parquet(tmp_path / "bivlc.parquet", columns, ("image", "negative_image"))
    with pytest.raises(BenchmarkFormatError, match=r"bivlc\.parquet: row 1, column 'type': category 'All' is, in any "
                                                   r"case, the name of the results' row for all"):
        load_benchmark("bivlc", str(source))
    mmvp = shutil.copytree(benchmark_sources["mmvp"], tmp_path / "mmvp")
    (mmvp / "Questions.csv").write_text((mmvp / "Questions.csv").read_text().replace("Color and Appearance", "All"))
    (mmvp / "MLLM_VLM Images" / "Color and Appearance").rename(mmvp / "MLLM_VLM Images" / "All")
    with pytest.raises(BenchmarkFormatError, match=r"Questions\.csv, line 4, column 'Type': category 'All' is"):
        load_benchmark("mmvp", str(mmvp))



@pytest.mark.parametrize("categories", ["add", {"add": 1, "swap": 2, "replace": 3}, {"add", "swap", "replace"}])
def test_categories_given_as_a_string_a_dict_or_a_set_are_refused(categories):
    """A string of three letters was the categories "a", "d", "d" of three quadruples, a dict its keys, and a set was
    matched to the quadruples in its own order, silently."""
    from evaluation.protocols import evaluate_quadruples

    with pytest.raises(TypeError, match=rf"^categories: expected one category name per quadruple \(a list\), got a "
                                        rf"{type(categories).__name__} "):
        evaluate_quadruples(LookupEmbedder(_TEXTS), None, [_RIGHT] * 3, categories)
