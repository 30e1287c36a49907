"""How the builder asks the judge: both candidate lists of a shard in one `score` call, each source image once with
every text it is paired with, each (image, text) pair once, and every source row of a shard decoded once."""

import hashlib
from collections import Counter

import datasets
import pytest
import torch
from PIL import Image

import dataset_builders.builder as builder_module
from dataset_builders.builder import MaplePreferences
from dataset_builders.scoring import JudgeOutputError, check_judge_scores, score_both_directions
from dataset_builders.testing import ColourCaptioner, ColourJudge, colour_square_source, colour_squares, thumbnail_miner, tiny_judge


def _pixels(image: Image.Image) -> bytes:
    return image.convert("RGB").tobytes()


class _HashJudge:
    """alpha = a hash of (pixels, text): a score that belongs to one pair only, so a score in the wrong slot shows.
    Records every call. It has `score` alone, all that `PreferenceJudge` asks for (the protocol asked for
    `score_images` too, which the builder never calls)."""

    name = "hash-judge"

    def __init__(self) -> None:
        self.score_calls: list[tuple[list[Image.Image], list[list[str]]]] = []

    @staticmethod
    def alpha(image: Image.Image, text: str) -> float:
        digest = hashlib.sha256(_pixels(image) + text.encode()).digest()
        return int.from_bytes(digest[:3], "big") / 2**24  # exact in float32

    def score(self, images, texts):
        self.score_calls.append((list(images), [list(candidates) for candidates in texts]))
        return [torch.tensor([self.alpha(image, text) for text in candidates]) for image, candidates in zip(images, texts)]


def _builder(tmp_path, source, judge, config_name="corpus-captions", **kwargs) -> MaplePreferences:
    builder_kwargs = {
        "judge": judge,
        "captioner": ColourCaptioner(),
        "miner": thumbnail_miner(),
        "cache_dir": str(tmp_path / "cache"),
        "work_dir": tmp_path / "work",
        "shard_size": 4,
        "progress": False,
        "source_dataset": source,
        **kwargs,
    }
    return MaplePreferences(config_name=config_name, **builder_kwargs)


def _decoded(dataset: datasets.Dataset) -> list[dict]:
    return list(dataset)


@pytest.mark.parametrize(
    "config_name, overrides",
    [
        ("corpus-captions", {}),
        ("paper", {"semdedup_clusters": None}),  # generated captions
        ("paper", {"semdedup_clusters": None, "max_candidate_texts": 2}),
    ],
)
def test_every_score_lands_in_its_own_row_and_candidate_slot(tmp_path, config_name, overrides):
    """Scores are computed per image and gathered back into the anchors' slots: each stored score must be alpha of
    its own (candidate image, caption) or (image, candidate text), for rows with fewer hard negatives than K (a corpus
    of 3 gives 2 each), a capped text pool, generated captions and two rows holding the same image."""
    twin = colour_squares(1)["image"][0]  # the first square's image again, under another id and caption
    source = colour_square_source(6, id=["twin"], image=[twin], caption=["a twin square"])
    judge = _HashJudge()
    builder = _builder(tmp_path, source, judge, config_name, num_hard_negatives=3, **overrides)
    builder.download_and_prepare()
    rows = _decoded(builder.as_dataset(split="train"))
    assert len(rows) == 7
    for row in rows:
        assert len(row["candidate_images"]) == 4
        assert row["txt2img_scores"] == pytest.approx([judge.alpha(image, row["caption"]) for image in row["candidate_images"]], abs=0)
        assert row["img2txt_scores"] == pytest.approx([judge.alpha(row["image"], text) for text in row["candidate_texts"]], abs=0)
        assert row["txt2img_scores"][0] == row["img2txt_scores"][0]
        assert len(row["candidate_texts"]) <= overrides.get("max_candidate_texts", 6)

    small = _builder(tmp_path / "small", colour_square_source(3), _HashJudge(), config_name, num_hard_negatives=3, **overrides)
    small.download_and_prepare()
    for row in _decoded(small.as_dataset(split="train")):
        assert len(row["candidate_images"]) == 3, "two hard negatives in a corpus of three"
        assert row["txt2img_scores"] == pytest.approx([judge.alpha(image, row["caption"]) for image in row["candidate_images"]], abs=0)
        assert row["img2txt_scores"] == pytest.approx([judge.alpha(row["image"], text) for text in row["candidate_texts"]], abs=0)


def test_a_shard_asks_the_judge_once_with_each_image_once_and_each_pair_once(tmp_path):
    """Before, a shard called `score` (img2txt) and `score_images` (txt2img, one prompt per pair): the anchor's own
    (image, caption) pair was judged in both, and an image that was a hard negative of several anchors came once per
    anchor, so a prefix-sharing judge ran its prefix once per pair."""
    judge = _HashJudge()
    builder = _builder(tmp_path, colour_square_source(10), judge, shard_size=5)
    builder.download_and_prepare()
    assert len(judge.score_calls) == 2, "one call per shard"
    rows = _decoded(builder.as_dataset(split="train"))
    for shard, (images, texts) in enumerate(judge.score_calls):
        pixels = [_pixels(image) for image in images]
        assert len(set(pixels)) == len(pixels), "each source image is asked once per shard"
        for candidates in texts:
            assert len(set(candidates)) == len(candidates), "each (image, text) pair is scored once"
        pairs = {(image, text) for image, candidates in zip(pixels, texts) for text in candidates}
        shard_rows = rows[shard * 5 : (shard + 1) * 5]
        needed = {(_pixels(row["image"]), text) for row in shard_rows for text in row["candidate_texts"]}
        needed |= {(_pixels(image), row["caption"]) for row in shard_rows for image in row["candidate_images"]}
        assert pairs == needed, "no pair more, none fewer"
        # the anchors come first, each with its own pool first (so its prefix serves its captions too)
        assert pixels[:5] == [_pixels(row["image"]) for row in shard_rows]
        assert [candidates[: len(row["candidate_texts"])] for candidates, row in zip(texts, shard_rows)] == [
            row["candidate_texts"] for row in shard_rows
        ]


def test_every_source_row_of_a_shard_is_decoded_once(tmp_path, monkeypatch):
    """The shard decoded an image as an anchor and again for every anchor that listed it as a hard negative."""
    builder = _builder(tmp_path, colour_square_source(10), ColourJudge(), config_name="paper", semdedup_clusters=None, shard_size=5)
    builder.plan()
    decoded = []
    decode = builder_module.decode_image
    monkeypatch.setattr(builder_module, "decode_image", lambda payload, row: decoded.append(row) or decode(payload, row))
    fetched = []
    records = builder._records
    monkeypatch.setattr(builder, "_records", lambda rows: fetched.append(rows) or records(rows))
    builder.build_shards()
    assert len(fetched) == 2, "one source read per shard"
    for rows in fetched:
        assert len(set(rows)) == len(rows)
    assert sorted(decoded) == sorted(row for rows in fetched for row in rows), "each row fetched once, decoded once"


def test_score_both_directions_gathers_each_pair_from_its_image():
    red, green, blue = (Image.new("RGB", (4, 4), colour) for colour in ("red", "green", "blue"))
    images = {"r": red, "g": green, "b": blue}
    judge = _HashJudge()
    img2txt, txt2img = score_both_directions(
        judge,
        images,
        anchors=["r", "g"],
        candidate_texts=[["red", "a", "b"], ["green", "a"]],
        captions=["red", "green"],
        candidate_images=[["r", "b", "g"], ["g", "r"]],
    )
    (call_images, call_texts), = judge.score_calls
    assert call_images == [red, green, blue]
    assert call_texts == [["red", "a", "b", "green"], ["green", "a", "red"], ["red"]]
    assert [scores.tolist() for scores in img2txt] == [
        [judge.alpha(red, "red"), judge.alpha(red, "a"), judge.alpha(red, "b")],
        [judge.alpha(green, "green"), judge.alpha(green, "a")],
    ]
    assert [scores.tolist() for scores in txt2img] == [
        [judge.alpha(red, "red"), judge.alpha(blue, "red"), judge.alpha(green, "red")],
        [judge.alpha(green, "green"), judge.alpha(red, "green")],
    ]


class _ShortJudge(_HashJudge):
    def score(self, images, texts):
        return [scores[:-1] for scores in super().score(images, texts)]


def test_a_judge_answer_of_the_wrong_shape_names_the_image():
    images = {7: Image.new("RGB", (4, 4), "red")}
    with pytest.raises(JudgeOutputError, match=r"row 7: the judge returned scores of shape \(1,\) for 2 texts"):
        score_both_directions(
            _ShortJudge(), images, [7], [["a", "b"]], ["a"], [[7]], describe=lambda key: f"row {key}"
        )


class _ColumnJudge(_HashJudge):
    """Answers each image with a column, (texts, 1), as a judge that keeps its logits' last axis would."""

    def score(self, images, texts):
        return [scores[:, None] for scores in super().score(images, texts)]


class _ExtraRowJudge(_HashJudge):
    def score(self, images, texts):
        scores = super().score(images, texts)
        return scores + scores[:1]


@pytest.mark.parametrize(
    "judge, problem",
    [
        (_ColumnJudge(), r"row 7: the judge returned scores of shape \(2, 1\) for 2 texts"),
        (_ExtraRowJudge(), r"the judge returned 3 score rows for 2 images \(the first: row 7\)"),
    ],
)
def test_a_judge_answer_with_more_than_one_score_per_text_is_refused(judge, problem):
    """One score per (image, text) exactly: an answer of the right length but another shape, or with rows to spare,
    cannot be laid out on the candidates."""
    images = {7: Image.new("RGB", (4, 4), "red"), 8: Image.new("RGB", (4, 4), "blue")}
    with pytest.raises(JudgeOutputError, match=problem):
        score_both_directions(judge, images, [7], [["a", "b"]], ["a"], [[7, 8]], describe=lambda key: f"row {key}")


@pytest.mark.parametrize(
    "scores, candidate",
    [([0.5, -0.001], 1), ([1.001, 0.5], 0), ([0.5, float("nan"), 2.0], 1), ([float("inf")], 0), ([0.2, 0.3, -1.0, 2.0], 2)],
)
def test_a_score_outside_zero_to_one_is_refused_naming_the_first_bad_candidate(scores, candidate):
    with pytest.raises(JudgeOutputError, match=rf"shard 3, row id 'x': the judge's txt2img_scores\[{candidate}\] is "):
        check_judge_scores(3, ["ok", "x"], "txt2img_scores", [torch.tensor([0.5]), torch.tensor(scores)])


def test_alphas_of_exactly_zero_and_one_are_accepted():
    """A judge sure of a pair (a softmax that saturates, a stand-in) gives 0 or 1: valid alphas, not errors."""
    check_judge_scores(0, ["a", "b"], "img2txt_scores", [torch.tensor([0.0, 1.0]), torch.tensor([1.0])])


def test_txt2img_through_the_shared_prefix_equals_per_pair_scoring_for_an_mllm_judge(tmp_path, monkeypatch):
    """The builder scores txt2img pairs through the judge's prefix-sharing `score`; they must equal the per-pair
    `score_images` (and img2txt the per-pair `score`) up to float rounding, and each source image of a shard must be
    encoded (its prefix run) once."""
    judge = tiny_judge(seed=0, image_size=16, batch_size=3)
    builder = _builder(tmp_path, colour_square_source(7), judge, num_hard_negatives=2, shard_size=4)
    builder.plan()
    encoded = Counter()
    encode = judge.prompt_encoder.encode_images
    monkeypatch.setattr(
        judge.prompt_encoder, "encode_images", lambda images: encoded.update(_pixels(image) for image in images) or encode(images)
    )
    builder.download_and_prepare()
    rows = _decoded(builder.as_dataset(split="train"))
    distinct_per_shard = [
        {_pixels(image) for row in rows[start : start + 4] for image in row["candidate_images"]} for start in (0, 4)
    ]
    assert sum(encoded.values()) == sum(len(images) for images in distinct_per_shard)
    monkeypatch.undo()
    for row in rows:
        (per_pair_txt2img,) = judge.score_images([row["caption"]], [row["candidate_images"]])
        (per_pair_img2txt,) = judge.score([row["image"]], [row["candidate_texts"]], reuse_prefix=False)
        assert row["txt2img_scores"] == pytest.approx(per_pair_txt2img.tolist(), abs=1e-5)
        assert row["img2txt_scores"] == pytest.approx(per_pair_img2txt.tolist(), abs=1e-5)
