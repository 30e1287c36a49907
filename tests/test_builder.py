"""MaplePreferences: the builder's rows, named configs, sources, bad inputs and config errors.
Judges and captioners are fast deterministic stand-ins, except in the end-to-end tiny-MLLM test."""

import concurrent.futures
import json
import math
import os
import re
import shutil
import threading
import time

import datasets
import numpy
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from dataset_builders.builder import (
    BUILD_ID_FILE,
    MANIFEST_FILE,
    PREFERENCE_FEATURES,
    SEED_RANGE,
    DamagedCheckpoint,
    MaplePreferences,
    MaplePreferencesConfig,
    WorkDirMismatch,
    _slice_bounds,
)
from dataset_builders.scoring import CaptionerOutputError, JudgeOutputError, text_pool
from dataset_builders.sources import SourceError, load_source
from dataset_builders.judge import MLLMJudge
from dataset_builders.miner import HardNegativeMiner
from dataset_builders.testing import (
    ColourCaptioner,
    ColourJudge,
    SOURCE_FEATURES,
    colour_square_source,
    colour_squares,
    nearest_colour_name,
    thumbnail_miner,
    tiny_captioner,
    tiny_judge,
)
from maple.dataset_layout import DatasetCardError, SplitLayoutError

# A rank waits for its peers' files 24 hours by default: a regression that leaves a file unwritten must fail the
# test with the builder's TimeoutError (naming what is missing), not hang the suite.
RANK_WAIT_SECONDS = 120.0


def _build(tmp_path, config_name="paper", **kwargs) -> MaplePreferences:
    """A finished build in tmp_path with the stand-in judge, captioner and miner; `kwargs` override
    builder arguments and config fields (the default source is `colour_square_source()`)."""
    builder_kwargs = {
        "judge": ColourJudge(),
        "captioner": ColourCaptioner(),
        "miner": thumbnail_miner(),
        "cache_dir": str(tmp_path / "cache"),
        "work_dir": tmp_path / "work",
        "shard_size": 3,
        "semdedup_clusters": None,
        "progress": False,
        "wait_timeout": RANK_WAIT_SECONDS,
    }
    if "source" not in kwargs:
        builder_kwargs["source_dataset"] = colour_square_source()
    builder_kwargs.update(kwargs)
    builder = MaplePreferences(config_name=config_name, **builder_kwargs)
    builder.download_and_prepare()
    return builder


def test_rows_follow_the_schema_with_one_score_per_candidate(tmp_path):
    builder = _build(tmp_path)
    dataset = builder.as_dataset(split="train")
    assert dataset.features == PREFERENCE_FEATURES
    assert len(dataset) == 10 and len(set(dataset["id"])) == 10
    source = colour_square_source()
    raw = dataset.cast_column("image", datasets.Image(decode=False)).cast_column(
        "candidate_images", datasets.Sequence(datasets.Image(decode=False))
    )
    for row in raw:
        position = source["id"].index(row["id"])
        assert row["caption"] == source[position]["caption"]
        assert row["image"]["bytes"] == source.cast_column("image", datasets.Image(decode=False))[position]["image"]["bytes"]
        assert row["candidate_images"][0]["bytes"] == row["image"]["bytes"]
        assert len(row["candidate_images"]) == 1 + 3
        assert len({image["bytes"] for image in row["candidate_images"]}) == 4, "self and duplicates excluded"
        assert row["candidate_texts"][0] == row["caption"]
        assert 1 < len(row["candidate_texts"]) <= 6
        assert len(row["txt2img_scores"]) == len(row["candidate_images"])
        assert len(row["img2txt_scores"]) == len(row["candidate_texts"])
        assert all(0.0 <= score <= 1.0 for score in row["txt2img_scores"] + row["img2txt_scores"])
    # Each score belongs to its candidate: rescoring the stored candidates gives the stored scores.
    judge = ColourJudge()
    for row in dataset.select(range(4)):
        expected_txt2img = judge.score_images([row["caption"]], [row["candidate_images"]])[0]
        expected_img2txt = judge.score([row["image"]], [row["candidate_texts"]])[0]
        assert row["txt2img_scores"] == pytest.approx(expected_txt2img.tolist())
        assert row["img2txt_scores"] == pytest.approx(expected_img2txt.tolist())
    # The stats count each list's candidates, and the histogram of its scores holds one count per candidate.
    stats = builder.stats
    assert stats["num_candidate_images"] == sum(map(len, dataset["candidate_images"])) == 40
    assert stats["num_candidate_texts"] == sum(map(len, dataset["candidate_texts"])) != 40
    assert sum(stats["score_histograms"]["txt2img_scores"]["counts"]) == stats["num_candidate_images"]
    assert sum(stats["score_histograms"]["img2txt_scores"]["counts"]) == stats["num_candidate_texts"]
    from trainer.schema import validate_preference_dataset

    validate_preference_dataset(dataset, "built")


def test_bad_inputs_are_skipped_counted_and_listed(tmp_path):
    good = colour_squares(8)
    source = colour_square_source(
        8,
        id=["broken", "blank", good["id"][0], "truncated"],
        image=[{"bytes": b"not an image", "path": None}, good["image"][1], good["image"][2], {"bytes": good["image"][3]["bytes"][:60], "path": None}],
        caption=["a red square", "   ", "a green square", "a yellow square"],
    )
    builder = _build(tmp_path, source_dataset=source)
    dataset = builder.as_dataset(split="train")
    assert sorted(dataset["id"]) == sorted(good["id"])
    stats = builder.stats
    assert stats["num_source_rows"] == 12 and stats["num_anchors"] == 8
    assert stats["skipped_by_reason"] == {"unreadable image": 2, "empty caption": 1, "duplicate id": 1}
    by_id = {(item["id"], item["kind"]): item for item in stats["skipped"]}
    assert "UnidentifiedImageError" in by_id[("broken", "unreadable image")]["detail"]
    # Decoded by modeling_maple's load_image, whose error names the source row.
    assert "images[11]: corrupt image data" in by_id[("truncated", "unreadable image")]["detail"]
    assert by_id[(good["id"][0], "duplicate id")]["detail"] == "row 0 has this id and is kept"
    assert by_id[("blank", "empty caption")]["row"] == 9


def test_rows_after_a_skipped_row_hold_their_own_image_and_caption(tmp_path):
    """Anchors are source rows, not positions among the valid ones: with the first row skipped, every later one
    must still carry its own id, image and caption (the tests above skip only rows at the end)."""
    good = colour_squares(6)
    source = datasets.Dataset.from_dict(
        {"id": ["broken", *good["id"]], "image": [{"bytes": b"not an image", "path": None}, *good["image"]],
         "caption": ["a red square", *good["caption"]]},
        features=SOURCE_FEATURES,
    )
    builder = _build(tmp_path, source_dataset=source)
    raw = builder.as_dataset(split="train").cast_column("image", datasets.Image(decode=False))
    assert sorted(raw["id"]) == good["id"]
    for row in raw:
        position = good["id"].index(row["id"])
        assert (row["image"]["bytes"], row["caption"]) == (good["image"][position]["bytes"], good["caption"][position])


def test_an_image_whose_judge_prompt_does_not_fit_the_context_is_skipped_with_the_inputs(tmp_path):
    """The judge's `score` refused it ("images[5]: the judge's prompt for this image takes 89 tokens ..."), naming its
    place in one `score` call, not its row, and the whole build stopped there."""
    import io

    judge = tiny_judge(seed=0, family="pixtral")
    encoder = judge.prompt_encoder
    judge.model.config.text_config.max_position_embeddings = 57  # a 16 px image's prompt fits, a 32 px one's not
    judge = MLLMJudge(judge.model, encoder.tokenizer, encoder.image_processor, name="short-context-judge")
    large = io.BytesIO()
    Image.new("RGB", (32, 32), "blue").save(large, format="PNG")
    source = colour_square_source(6, id=["large"], image=[{"bytes": large.getvalue(), "path": None}], caption=["a blue square"])
    builder = _unbuilt(tmp_path, source, judge=judge, shard_size=4, semdedup_clusters=None)
    builder.check_work_dir()
    _, valid_rows, skipped = builder.check_inputs()
    assert valid_rows == list(range(6))
    assert [(item.row, item.id, item.kind) for item in skipped] == [(6, "large", "image a model cannot take")]
    assert skipped[0].detail.startswith("the judge: the judge's prompt for this image takes 89 tokens before any candidate")
    builder.download_and_prepare()
    assert "large" not in builder.as_dataset(split="train")["id"]


def test_images_the_judge_cannot_take_are_skipped_with_the_inputs(tmp_path):
    """A Qwen-VL image processor refuses aspect ratios above 200:1; such a row used to pass the input check and
    fail its shard at every attempt, naming no row."""
    import io

    from PIL import Image

    strip = io.BytesIO()
    Image.new("RGB", (1000, 2), "red").save(strip, format="PNG")
    source = colour_square_source(6, id=["strip"], image=[{"bytes": strip.getvalue(), "path": None}], caption=["a red strip"])
    builder = MaplePreferences(
        config_name="paper", source_dataset=source, judge=tiny_judge(seed=0, image_size=16), captioner=ColourCaptioner(),
        miner=thumbnail_miner(), cache_dir=str(tmp_path / "cache"), work_dir=tmp_path / "work", semdedup_clusters=None,
        progress=False,
    )
    num_rows, valid_rows, skipped = builder.check_inputs()
    assert num_rows == 7 and valid_rows == list(range(6))
    assert [(item.id, item.kind) for item in skipped] == [("strip", "image a model cannot take")]
    assert skipped[0].detail == "the judge: aspect ratio 500:1 is above the 200:1 that qwen2_vl image processors accept"
    # the rule is the image processor's own: it refuses 500:1 and takes 200:1
    image_processor = builder.judge.prompt_encoder.image_processor
    with pytest.raises(ValueError, match="aspect ratio"):
        image_processor(images=[Image.new("RGB", (1000, 2))])
    image_processor(images=[Image.new("RGB", (400, 2))])
    assert builder.judge.image_problem((400, 2)) is None
    # a miner on a Qwen-VL MAPLE embedder refuses it too
    from modeling_maple.testing import build_tiny

    miner = HardNegativeMiner.from_maple(*build_tiny("mllm", seed=0))
    assert miner.image_problem((1000, 2)) == "aspect ratio 500:1 is above the 200:1 that qwen2_vl image processors accept"
    assert miner.image_problem((400, 2)) is None and thumbnail_miner().image_problem((1000, 2)) is None


@pytest.mark.parametrize("family", ["pixtral", "mistral3"])
def test_an_image_a_pixtral_embedders_miner_cannot_take_is_skipped_with_the_inputs(tmp_path, family):
    """A miner on a Pixtral or Mistral 3 MAPLE embedder, whose image processor fails on an image so elongated that its
    short side keeps no pixel once its long side is scaled to `longest_edge` (32 px for the tiny models): the builder
    skips such a row with the inputs, naming the miner, rather than fail mid-build when it embeds the row (the miner's
    check asked the family alone, which holds only Qwen-VL's aspect-ratio rule, not the image processor)."""
    import io

    from modeling_maple.testing import build_tiny

    strip = io.BytesIO()
    Image.new("RGB", (40, 1), "red").save(strip, format="PNG")
    source = colour_square_source(4, id=["strip"], image=[{"bytes": strip.getvalue(), "path": None}], caption=["a red strip"])
    model, processor = build_tiny("mllm", seed=0, mllm_type=family)
    miner = HardNegativeMiner.from_maple(model, processor)
    _, valid_rows, problems = _unbuilt(tmp_path, source, miner=miner, semdedup_clusters=None).check_inputs()
    detail = (f"the miner: aspect ratio 40:1 leaves no pixel of its short side once its long side is resized to 32 px, "
              f"as the {family} image processor does")
    assert [(item.id, item.kind, item.detail) for item in problems] == [("strip", "image a model cannot take", detail)]
    assert valid_rows == list(range(4))
    with pytest.raises(ValueError, match="leaves no pixel"):  # what embedding it would have met
        miner.embed([Image.new("RGB", (40, 1))])


@pytest.mark.parametrize(
    "refuser, config_name, skipped",
    [
        ("judge", "paper", True),
        ("miner", "paper", True),
        ("captioner", "paper", True),
        ("captioner", "corpus-captions", False),  # a captioner the recipe never calls refuses nothing
    ],
)
def test_each_model_that_sees_the_images_is_asked_whether_it_takes_them(tmp_path, refuser, config_name, skipped):
    import io

    strip = io.BytesIO()
    Image.new("RGB", (400, 2), "red").save(strip, format="PNG")
    source = colour_square_source(4, id=["strip"], image=[{"bytes": strip.getvalue(), "path": None}], caption=["a red strip"])
    models = {"judge": ColourJudge(), "miner": thumbnail_miner(), "captioner": ColourCaptioner()}
    models[refuser].image_problem = lambda size: "too wide" if size[0] > 100 * size[1] else None
    _, valid_rows, problems = _unbuilt(tmp_path, source, config_name=config_name, semdedup_clusters=None, **models).check_inputs()
    expected = [("strip", "image a model cannot take", f"the {refuser}: too wide")] if skipped else []
    assert [(item.id, item.kind, item.detail) for item in problems] == expected
    assert len(valid_rows) == 5 - len(expected)


def test_semdedup_drops_near_duplicates_with_a_reason(tmp_path):
    columns = colour_squares(6)
    source = colour_square_source(6, id=["copy"], image=[columns["image"][0]], caption=["a red square again"])
    builder = _build(tmp_path, source_dataset=source, semdedup_clusters=2, semdedup_epsilon=0.01)
    stats = builder.stats
    assert stats["skipped_by_reason"].get("near-duplicate", 0) >= 1
    removed = {item["id"] for item in stats["skipped"]}
    assert len(removed & {"copy", columns["id"][0]}) == 1, "exactly one of the identical pair survives"
    assert stats["num_anchors"] == 7 - stats["num_skipped"]
    # each record names the row dropped, and in its detail the one kept in its place
    kept = set(builder.as_dataset(split="train")["id"])
    [dropped] = removed & {"copy", columns["id"][0]}
    [survivor] = {"copy", columns["id"][0]} - {dropped}
    assert dropped not in kept and survivor in kept
    assert {item["id"]: item["detail"] for item in stats["skipped"]}[dropped] == f"of id {survivor} (SemDeDup)"


def test_hard_negatives_are_the_miners_top_k_neighbours_in_order(tmp_path):
    """Each row's candidate images after its anchor are the source images at the anchor's top-k neighbours, best
    first, computed here from the miner's own embeddings. No test looked at which images the negatives were: a build
    that took any other rows (the next anchors, say) passed. Shards of 3 over 10 anchors: the query rows of the
    later shards are offsets into all anchors."""
    import io

    from dataset_builders.miner import top_k_neighbours

    builder = _build(tmp_path)
    source = colour_square_source().cast_column("image", datasets.Image(decode=False))
    source_bytes = [image["bytes"] for image in source["image"]]
    miner = thumbnail_miner()
    embeddings = miner.embed(Image.open(io.BytesIO(payload)) for payload in source_bytes)
    neighbours = top_k_neighbours(embeddings, builder.config.num_hard_negatives, duplicate_threshold=miner.duplicate_threshold)
    assert (neighbours.indices >= 0).all() and neighbours.indices.shape == (10, 3)
    raw = builder.as_dataset(split="train").cast_column("candidate_images", datasets.Sequence(datasets.Image(decode=False)))
    for row in raw:
        position = source["id"].index(row["id"])
        expected = [source_bytes[position]] + [source_bytes[n] for n in neighbours.indices[position].tolist()]
        assert [image["bytes"] for image in row["candidate_images"]] == expected, row["id"]


def test_corpus_captions_config_uses_the_neighbours_captions(tmp_path):
    """The text candidates are the anchor's caption, then the caption of each hard negative, in the candidate
    images' order, repeats dropped (6 colours over 10 squares: neighbours often share the anchor's caption)."""
    builder = _build(tmp_path, config_name="corpus-captions", captioner=None)
    raw = builder.as_dataset(split="train").cast_column("candidate_images", datasets.Sequence(datasets.Image(decode=False)))
    source = colour_square_source().cast_column("image", datasets.Image(decode=False))
    caption_of = {image["bytes"]: caption for image, caption in zip(source["image"], source["caption"])}
    for row in raw:
        negatives = [caption_of[image["bytes"]] for image in row["candidate_images"][1:]]
        assert row["candidate_texts"] == list(dict.fromkeys([row["caption"], *negatives])), row["id"]
    assert builder.stats["captioner"].startswith("none")


def test_the_anchor_caption_is_stored_and_judged_without_surrounding_whitespace(tmp_path):
    """Caption files end in a newline: the stored caption, the first text candidate and the text the judge pairs with
    every candidate image are the caption stripped."""
    source = colour_square_source(6, id=["padded"], image=[colour_squares(1)["image"][0]], caption=["  a red square, padded\n"])
    judge = ColourJudge()
    asked = []
    score = judge.score
    judge.score = lambda images, texts: asked.extend(text for candidates in texts for text in candidates) or score(images, texts)
    row = _build(tmp_path, source_dataset=source, judge=judge).as_dataset(split="train").filter(lambda row: row["id"] == "padded")[0]
    assert row["caption"] == row["candidate_texts"][0] == "a red square, padded"
    assert "a red square, padded" in asked and not any(text != text.strip() for text in asked)


def test_config_errors_stop_before_any_work(tmp_path):
    # alone: captioned_negatives' range [1, num_hard_negatives] is then empty, which is not a second problem
    with pytest.raises(ValueError, match=r"num_hard_negatives must be at least 1, got 0$"):
        MaplePreferencesConfig(name="x", num_hard_negatives=0)
    with pytest.raises(ValueError, match=r"got 0; captioned_negatives must be in \[1, num_hard_negatives\], got 0$"):
        MaplePreferencesConfig(name="x", num_hard_negatives=0, captioned_negatives=0)
    with pytest.raises(ValueError, match="text_candidates"):
        MaplePreferences(config_name="paper", text_candidates="imagined", cache_dir=str(tmp_path / "cache"))
    builder = MaplePreferences(
        config_name="paper",
        source_dataset=colour_square_source(),
        judge=ColourJudge(),
        miner=thumbnail_miner(),
        cache_dir=str(tmp_path / "cache"),
        work_dir=tmp_path / "work",
    )
    with pytest.raises(ValueError, match="needs captioner="):
        builder.download_and_prepare()
    assert not (tmp_path / "work").exists()
    with pytest.raises(ValueError, match="no source"):
        MaplePreferences(
            judge=ColourJudge(), captioner=ColourCaptioner(), miner=thumbnail_miner(), cache_dir=str(tmp_path / "c2")
        ).build_shards()


class _RecordingCaptioner(ColourCaptioner):
    """Records the pixels of every (anchor, negative) pair it is asked to caption, in order."""

    def __init__(self) -> None:
        self.pairs: list[tuple[bytes, bytes]] = []

    def caption(self, anchors, negatives):
        self.pairs += [(anchor.tobytes(), negative.tobytes()) for anchor, negative in zip(anchors, negatives)]
        return super().caption(anchors, negatives)


def test_the_captioner_contrasts_each_anchor_with_its_first_captioned_negatives(tmp_path):
    """`captioned_negatives` of the K hard negatives, the most similar first, are each shown beside the anchor."""
    captioner = _RecordingCaptioner()
    rows = _build(tmp_path, captioner=captioner, captioned_negatives=2).as_dataset(split="train")
    assert captioner.pairs == [
        (row["image"].convert("RGB").tobytes(), negative.convert("RGB").tobytes())
        for row in rows for negative in row["candidate_images"][1:3]
    ]


class _SamplingCaptioner:
    """A captioner whose one caption per pair is a draw of torch's global generator, as sampling is."""

    name = "sampling-captioner"

    def caption(self, anchors, negatives):
        return [[f"sample {int(torch.randint(10**9, ()))}"] for _ in anchors]


def test_captions_are_sampled_from_a_seed_of_each_shard_leaving_the_callers_generator_alone(tmp_path):
    """A shard's samples depend only on the seed and the shard, so a resumed build or another rank redraws them
    alike; each shard draws its own (seeded alike, every shard would repeat the first one's samples), another seed
    others; the caller's random state is what it was."""
    state = torch.random.get_rng_state()
    built = _build(tmp_path, captioner=_SamplingCaptioner())
    texts = built.as_dataset(split="train")["candidate_texts"]
    assert torch.equal(torch.random.get_rng_state(), state)
    # rank 1 of 2, on the same work dir, redraws shard 1 (rows 3 to 5) as the one process drew it
    (built.shard_dir / "shard-000003-000006.parquet").unlink()
    rank_1 = MaplePreferences(config_name="paper", judge=ColourJudge(), captioner=_SamplingCaptioner(),
                              miner=thumbnail_miner(), source_dataset=colour_square_source(), cache_dir=str(tmp_path / "cache"),
                              work_dir=tmp_path / "work", shard_size=3, semdedup_clusters=None, progress=False, rank=1,
                              world_size=2)
    assert rank_1.build_shards().computed == [1]
    assert pq.read_table(built.shard_dir / "shard-000003-000006.parquet")["candidate_texts"].to_pylist() == texts[3:6]
    first_sample_of_each_shard = [texts[start][1] for start in range(0, 10, 3)]
    assert len(set(first_sample_of_each_shard)) == 4
    assert _build(tmp_path / "again", captioner=_SamplingCaptioner()).as_dataset(split="train")["candidate_texts"] == texts
    assert _build(tmp_path / "seed 1", captioner=_SamplingCaptioner(), seed=1).as_dataset(split="train")["candidate_texts"] != texts


@pytest.mark.parametrize(
    "setting, refused, accepted",
    [
        ("num_hard_negatives", {"num_hard_negatives": 0}, {"num_hard_negatives": 1, "captioned_negatives": 1}),
        ("captioned_negatives", {"captioned_negatives": 0}, {"captioned_negatives": 1}),
        ("captioned_negatives", {"num_hard_negatives": 2, "captioned_negatives": 3}, {"num_hard_negatives": 2, "captioned_negatives": 2}),
        ("max_candidate_texts", {"max_candidate_texts": 1}, {"max_candidate_texts": 2}),
        ("shard_size", {"shard_size": 0}, {"shard_size": 1}),
        ("semdedup_clusters", {"semdedup_clusters": 0}, {"semdedup_clusters": 1}),
        # below 1e-5 exact copies were duplicates only where float rounding made them so (found by reviews)
        ("semdedup_epsilon", {"semdedup_epsilon": 1.0}, {"semdedup_epsilon": 0.99}),
        ("semdedup_epsilon", {"semdedup_epsilon": 9.9e-6}, {"semdedup_epsilon": 1e-5}),
        # 2e13 overflowed a shard's sampling seed, a traceback once the inputs were embedded (found by a review helper)
        ("seed", {"seed": SEED_RANGE[1] + 1}, {"seed": SEED_RANGE[1]}),
        ("seed", {"seed": SEED_RANGE[0] - 1}, {"seed": SEED_RANGE[0]}),
    ],
)
def test_each_config_bound_refuses_the_value_just_outside_and_takes_the_edge(setting, refused, accepted):
    """Each bound of `validate`, pinned at its edge: a value just outside is refused, naming the setting; the edge
    itself is a valid recipe (one hard negative, a pool of two texts, shards of one anchor, epsilon 1e-5)."""
    with pytest.raises(ValueError, match=rf"invalid MaplePreferences config: {setting} must"):
        MaplePreferencesConfig(name="x", **refused)
    MaplePreferencesConfig(name="x", **accepted)


@pytest.mark.parametrize("setting, value, expected", [
    ("shard_size", 1e3, "an integer"), ("num_hard_negatives", 2.0, "an integer"), ("semdedup_clusters", 2.0, "an integer"),
    ("seed", 1.5, "an integer"), ("max_candidate_texts", "6", "an integer"), ("semdedup_epsilon", "0.07", "a number"),
])
def test_a_setting_of_the_wrong_type_is_refused_before_any_work(tmp_path, setting, value, expected):
    """A float count passed the bounds and failed once every image was embedded (shard_size=1e3: "'float' object
    cannot be interpreted as an integer", naming no setting); a string one failed in validate with a TypeError."""
    with pytest.raises(ValueError, match=re.escape(
            f"invalid MaplePreferences config: {setting} must be {expected}, got {value!r} ({type(value).__name__})")):
        _unbuilt(tmp_path, colour_square_source(), **{setting: value}).download_and_prepare()
    assert not (tmp_path / "work").exists()
    _unbuilt(tmp_path, colour_square_source(), shard_size=numpy.int64(4)).check_ready()  # numpy's integers are integers


def test_a_numpy_integer_setting_is_recorded_as_the_number_it_is(tmp_path):
    """The manifest wrote it as text: shard_size=numpy.int64(4) recorded '4', and a rerun with 4 was refused
    ("shard_size: '4' in the work dir, 4 now")."""
    _unbuilt(tmp_path, colour_square_source(), shard_size=numpy.int64(4)).check_work_dir()
    assert json.loads((tmp_path / "work" / "manifest.json").read_text())["shard_size"] == 4
    _unbuilt(tmp_path, colour_square_source(), shard_size=4).check_work_dir()


def test_a_work_dir_whose_numbers_an_older_builder_wrote_as_text_is_refused_saying_so(tmp_path):
    """A work dir begun with shard_size=numpy.int64(4) before the manifest wrote numbers as numbers recorded '4', and
    a rerun with 4 is refused: the refusal said only "shard_size: '4' in the work dir, 4 now"."""
    _unbuilt(tmp_path, colour_square_source(), shard_size=4).check_work_dir()
    path = tmp_path / "work" / "manifest.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"shard_size": "4"}))
    with pytest.raises(WorkDirMismatch, match=re.escape(
            "(shard_size: '4' in the work dir, 4 now) (builders before this one wrote numpy's numbers as text: "
            "numpy.int64(4) as '4'); reusing")):
        _unbuilt(tmp_path, colour_square_source(), shard_size=4).check_work_dir()
    # the text of another number is a change of the recipe, not of how it was written
    with pytest.raises(WorkDirMismatch, match=re.escape("(shard_size: '4' in the work dir, 8 now); reusing")):
        _unbuilt(tmp_path, colour_square_source(), shard_size=8).check_work_dir()
    path.write_text(json.dumps(json.loads(path.read_text()) | {"shard_size": 4}))
    with pytest.raises(WorkDirMismatch, match=re.escape("(shard_size: 4 in the work dir, 5 now); reusing")):
        _unbuilt(tmp_path, colour_square_source(), shard_size=5).check_work_dir()


def test_an_epsilon_too_large_for_a_float_is_refused_for_its_range():
    """validate made every epsilon a float before the range check: float(10**400) was a bare OverflowError."""
    with pytest.raises(ValueError, match=r"semdedup_epsilon must be in \[1e-05, 1\), got 1000"):
        MaplePreferencesConfig(name="x", semdedup_epsilon=10**400)


def test_numpy_number_settings_build_and_are_kept_as_python_numbers(tmp_path):
    """They passed validation, every shard was built, and the stats' json.dumps failed ("Object of type int64 is not
    JSON serializable"), on every rerun too; a numpy.int64 seed at the top of SEED_RANGE wrapped silently in
    seed * SHARD_SEED_STRIDE + shard."""
    from dataset_builders.builder import SHARD_SEED_STRIDE

    settings = {"num_hard_negatives": numpy.int64(2), "semdedup_clusters": numpy.int64(2),
                "semdedup_epsilon": numpy.float32(0.07), "seed": numpy.int64(SEED_RANGE[1])}
    builder = _build(tmp_path, **settings)
    assert json.loads((tmp_path / "work" / "stats.json").read_text())["semdedup"] == {"clusters": 2, "epsilon": float(numpy.float32(0.07))}
    kept = {name: getattr(builder.config, name) for name in settings}
    assert kept == {"num_hard_negatives": 2, "semdedup_clusters": 2, "semdedup_epsilon": float(numpy.float32(0.07)),
                    "seed": SEED_RANGE[1]}
    assert {type(value) for value in kept.values()} == {int, float}
    assert kept["seed"] * SHARD_SEED_STRIDE + 1 > 2**63  # as Python's int: no wrap


def test_the_seed_range_is_the_one_whose_every_shard_seed_torch_takes():
    """`SEED_RANGE` pinned to torch: seed * SHARD_SEED_STRIDE + shard for shards up to 2**32 at its edges, not past."""
    from dataset_builders.builder import SHARD_SEED_STRIDE

    low, high = SEED_RANGE
    torch.manual_seed(low * SHARD_SEED_STRIDE)
    torch.manual_seed(high * SHARD_SEED_STRIDE + 2**32 - 1)
    for outside in ((low - 1) * SHARD_SEED_STRIDE, (high + 1) * SHARD_SEED_STRIDE + 2**32 - 1):
        with pytest.raises((ValueError, RuntimeError, OverflowError)):
            torch.manual_seed(outside)
    torch.manual_seed(0)


@pytest.mark.parametrize("rank", [-1, 2])
def test_a_rank_outside_the_world_is_refused_when_the_builder_is_made(tmp_path, monkeypatch, rank):
    """Rank `world_size` would build the shards s % world_size == rank: none, and its peers would wait for it forever.
    The launcher's RANK / WORLD_SIZE are read the same way."""
    with pytest.raises(ValueError, match=rf"rank {rank} is not in \[0, world_size=2\)"):
        MaplePreferences(config_name="paper", cache_dir=str(tmp_path / "cache"), rank=rank, world_size=2)
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=rf"rank {rank} is not in \[0, world_size=2\), read from the environment "
                                         rf"variables RANK={rank} and WORLD_SIZE=2"):
        MaplePreferences(config_name="paper", cache_dir=str(tmp_path / "cache"))


def test_several_processes_without_a_rank_are_refused_when_the_builder_is_made(tmp_path, monkeypatch):
    """WORLD_SIZE=2 with RANK unset made every process rank 0: each built the same shards, and those of rank 1 were
    waited for until the build timed out (found by a review)."""
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"the environment variable WORLD_SIZE=2 says there are 2 processes but the "
                                         r"environment variable RANK is unset"):
        MaplePreferences(config_name="paper", cache_dir=str(tmp_path / "cache"))
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.raises(ValueError, match=r"world_size=2 says there are 2 processes but the environment variable RANK .*"
                                         r"for each, or pass rank=$"):
        MaplePreferences(config_name="paper", cache_dir=str(tmp_path / "cache"), world_size=2)
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process needs no rank
    assert MaplePreferences(config_name="paper", cache_dir=str(tmp_path / "cache")).rank == 0


@pytest.mark.parametrize("variable, value", [("RANK", "abc"), ("WORLD_SIZE", "2.0"), ("RANK", "")])
def test_a_launcher_variable_that_is_no_integer_is_named_when_the_builder_is_made(tmp_path, monkeypatch, variable, value):
    """It was int()'s `invalid literal for int() with base 10`, which named neither the variable nor the launcher."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError, match=rf"the environment variable {variable}={value!r} is not an integer"):
        MaplePreferences(config_name="paper", cache_dir=str(tmp_path / "cache"))


def test_sources_parquet_file_folder_and_imagefolder_give_the_same_rows(tmp_path):
    source = colour_square_source(7)
    source.to_parquet(str(tmp_path / "source.parquet"))
    # a folder named as Spark and pyarrow name their output, "*.parquet": read as one parquet file, it was a
    # FileNotFoundError traceback (found by a review helper)
    (tmp_path / "parquet_folder.parquet").mkdir()
    source.to_parquet(str(tmp_path / "parquet_folder.parquet" / "part-0.parquet"))
    image_folder = tmp_path / "image_folder"
    image_folder.mkdir()
    with open(image_folder / "metadata.jsonl", "w") as metadata:
        for row in source.cast_column("image", datasets.Image(decode=False)):
            (image_folder / f"{row['id']}.png").write_bytes(row["image"]["bytes"])
            metadata.write(json.dumps({"file_name": f"{row['id']}.png", "id": row["id"], "caption": row["caption"]}) + "\n")

    def rows(builder):
        return sorted(
            (row["id"], row["caption"], tuple(row["candidate_texts"]), tuple(row["img2txt_scores"]))
            for row in builder.as_dataset(split="train").select_columns(["id", "caption", "candidate_texts", "img2txt_scores"])
        )

    results = [
        rows(_build(tmp_path / name, source=str(path)))
        for name, path in [
            ("from_file", tmp_path / "source.parquet"),
            ("from_folder", tmp_path / "parquet_folder.parquet"),
            ("from_imagefolder", image_folder),
        ]
    ]
    assert results[0] == results[1] == results[2]
    assert len(results[0]) == 7


def test_a_source_of_several_configs_is_read_by_the_one_named(tmp_path):
    """A Hub or folder source with several configs (conceptual_captions, a MAPLE repo of two configs) could not be
    built at all: no option named the config, and the error advised a `load_dataset` call (found by a review)."""
    folder = tmp_path / "two-configs"
    for name, rows in (("small", 3), ("large", 5)):
        (folder / name).mkdir(parents=True)
        colour_square_source(rows).to_parquet(str(folder / name / "train-00000-of-00001.parquet"))
    (folder / "README.md").write_text(
        "---\nconfigs:\n- config_name: small\n  data_files: small/*.parquet\n"
        "- config_name: large\n  data_files: large/*.parquet\n---\n"
    )
    with pytest.raises(SourceError, match=r"Config name is missing.*: name it with source_config= \(CLI --source-config\)$"):
        load_source(str(folder), split="train")
    assert load_source(str(folder), split="train", name="large").num_rows == 5
    builder = MaplePreferences(config_name="corpus-captions", source=str(folder), source_config="small",
                               cache_dir=str(tmp_path / "cache"))
    assert builder.manifest()["source_config"] == "small"
    with pytest.raises(SourceError, match=r"is one parquet file, which has no configs: leave source_config out"):
        load_source(str(folder / "small" / "train-00000-of-00001.parquet"), split="train", name="small")


def test_an_image_file_whose_name_holds_two_colons_is_read_as_a_local_file(tmp_path):
    """An image folder's file named "shot 12::30.png" was read as a chained path (as a zip archive's member is named,
    "zip://0.png::/data.zip") and skipped as "no such file" (found by a review); a damaged one is skipped with its
    decoding error, not as "no such file" (`datasets` patches the builder's module, whose `Path` reads "::" as a
    chain)."""
    folder = tmp_path / "images"
    folder.mkdir()
    names = ["0.png", "shot 12::30.png", "cut 1::2.png"]
    for index, name in enumerate(names[:2]):
        Image.new("RGB", (8, 8), (index * 80, 0, 0)).save(folder / name)
    (folder / names[2]).write_bytes(b"not an image")
    rows = "".join(f"{name},c{index}\n" for index, name in enumerate(names))
    (folder / "metadata.csv").write_text(f"file_name,caption\n{rows}")
    builder = MaplePreferences(config_name="corpus-captions", source=str(folder), judge=ColourJudge(),
                               miner=thumbnail_miner(), cache_dir=str(tmp_path / "cache"), work_dir=tmp_path / "work",
                               progress=False)
    _, valid_rows, skipped = builder.check_inputs()
    assert valid_rows == [0, 1]
    decoding_error = "UnidentifiedImageError: cannot identify image file the image bytes"
    assert [(item.row, item.kind, item.detail) for item in skipped] == [
        (2, "unreadable image", f"{folder / names[2]}: {decoding_error}")
    ]


def test_text_that_names_no_file_is_said_to_be_text_read_as_an_image_path(tmp_path):
    """Text of an image column that cannot name a file (a caption too long for a file name, a file's path used as a
    folder's, a NUL character) is said to be text read as a file path, as a path to no file is: since 1ed6ba2 only a
    FileNotFoundError said so, and a caption of 300 characters was reported as an OSError quoting it whole, twice
    (found by a review)."""
    columns = colour_squares(5)
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "0.png").write_bytes(columns["image"][0]["bytes"])
    columns["image"] = [str(tmp_path / "imgs" / "0.png"), "a long caption of a red car " * 12,
                        str(tmp_path / "imgs" / "0.png" / "1.png"), "a red car\0", str(tmp_path / "imgs" / "9.png")]
    features = datasets.Features({**SOURCE_FEATURES, "image": datasets.Value("string")})
    pq.write_table(datasets.Dataset.from_dict(columns, features=features).data.table, tmp_path / "train.parquet")
    builder = MaplePreferences(config_name="corpus-captions", source=str(tmp_path / "train.parquet"),
                               judge=ColourJudge(), miner=thumbnail_miner(), cache_dir=str(tmp_path / "cache"),
                               work_dir=tmp_path / "work", progress=False)
    _, valid_rows, skipped = builder.check_inputs()
    assert valid_rows == [0]
    assert [item.row for item in skipped] == [1, 2, 3, 4]
    for item in skipped:
        assert item.detail.startswith("column 'image' holds the text ") and item.detail.endswith(
            ", read as an image file path, and there is no such file"), item.detail
        assert len(item.detail) < 200


@pytest.mark.parametrize("image_feature", [datasets.Value("string"), datasets.Image()], ids=["text", "image"])
def test_relative_image_paths_are_found_beside_the_source_table(tmp_path, monkeypatch, image_feature):
    """A parquet table of image paths relative to itself had every row skipped as "no such file" unless the build ran
    from the table's folder; `maple train` finds such paths (found by a review). The paths are made absolute, so a
    build resumed from another folder reads the same files. So are images stored as relative paths (a `datasets.Image`
    column without bytes, as `to_parquet` writes one cast from paths), which were read from the working folder only,
    and whose files the source digest left out (found by a review)."""
    columns = colour_squares(4)
    (tmp_path / "data" / "imgs").mkdir(parents=True)
    for index, image in enumerate(columns["image"]):
        (tmp_path / "data" / "imgs" / f"{index}.png").write_bytes(image["bytes"])
    columns["image"] = [f"imgs/{index}.png" for index in range(4)]
    columns["image"][3] = "imgs/missing.png"
    features = datasets.Features({**SOURCE_FEATURES, "image": image_feature})
    # with the features in the schema metadata, as `to_parquet` writes them (which stats every image file)
    pq.write_table(datasets.Dataset.from_dict(columns, features=features).data.table, tmp_path / "data" / "train.parquet")
    table = load_source(str(tmp_path / "data" / "train.parquet"), split="train", cache_dir=str(tmp_path / "cache"))
    assert table.features["image"] == image_feature
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    builder = MaplePreferences(config_name="corpus-captions", source=str(tmp_path / "data" / "train.parquet"),
                               judge=ColourJudge(), miner=thumbnail_miner(), cache_dir=str(tmp_path / "cache"),
                               work_dir=tmp_path / "work", progress=False)
    _, valid_rows, skipped = builder.check_inputs()
    assert valid_rows == [0, 1, 2]
    assert [(item.row, item.kind) for item in skipped] == [(3, "unreadable image")] and "imgs/missing.png" in skipped[0].detail
    rows = builder._load_source()
    assert rows[0]["image"]["path"] == str(tmp_path / "data" / "imgs" / "0.png")
    # the missing file put back: a new build finds it (datasets' cache of the located paths was reused, found by a
    # review)
    (tmp_path / "data" / "imgs" / "missing.png").write_bytes((tmp_path / "data" / "imgs" / "0.png").read_bytes())
    again = MaplePreferences(config_name="corpus-captions", source=str(tmp_path / "data" / "train.parquet"),
                             judge=ColourJudge(), miner=thumbnail_miner(), cache_dir=str(tmp_path / "cache"),
                             work_dir=tmp_path / "work-again", progress=False)
    assert again.check_inputs()[1] == [0, 1, 2, 3]
    # an image beside the table changed (in size: the digest reads every named file's size) is another source
    (tmp_path / "data" / "imgs" / "1.png").write_bytes((tmp_path / "data" / "imgs" / "1.png").read_bytes() + b"\0")
    edited = MaplePreferences(config_name="corpus-captions", source=str(tmp_path / "data" / "train.parquet"),
                              judge=ColourJudge(), miner=thumbnail_miner(), cache_dir=str(tmp_path / "cache"),
                              work_dir=tmp_path / "work-edited", progress=False)
    assert edited.manifest()["source_fingerprint"] != again.manifest()["source_fingerprint"]


def test_a_source_under_the_home_folder_is_a_local_one(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    colour_square_source(5).to_parquet(str(tmp_path / "source.parquet"))
    (tmp_path / "folder").mkdir()
    colour_square_source(5).to_parquet(str(tmp_path / "folder" / "part-0.parquet"))
    for source in ("~/source.parquet", "~/folder"):  # the folder was looked up on the Hub
        builder = _build(tmp_path / "builds" / source.strip("~/"), source=source)
        assert builder.manifest()["source"] == "local files" and builder.stats["num_anchors"] == 5


def test_a_parquet_file_source_honours_a_split_slice(tmp_path):
    colour_square_source(7).to_parquet(str(tmp_path / "source.parquet"))
    builder = _build(tmp_path, source=str(tmp_path / "source.parquet"), source_split="train[:4]")
    assert builder.stats["num_source_rows"] == 4  # the slice was ignored: 7


def test_stats_describe_this_build_when_the_dataset_comes_from_the_cache(tmp_path):
    """The datasets cache is keyed by the source licence, the work dir is not: going back to a cached licence used to
    leave the last build's licence in stats.json, hence in the pushed card."""
    for licence in ("cc0-1.0", "cc-by-4.0", "cc0-1.0"):
        builder = _build(tmp_path, source_license=licence)
    assert builder.stats["source_license"] == "cc0-1.0"
    # and the cached dataset is still returned without its shards (the first version re-read them, waiting 24 h)
    shutil.rmtree(tmp_path / "work" / "shards")
    assert len(_build(tmp_path, source_license="cc-by-4.0", wait_timeout=1).as_dataset(split="train")) == 10


def test_a_new_work_dir_builds_again_though_the_cache_holds_another_source_s_build(tmp_path, monkeypatch):
    """The cache key holds a path source's path, not its contents: after the work dir was deleted (as its
    WorkDirMismatch advises), the new build was checked against the cached build's split sizes and failed with a
    traceback, and the stats.json it had written then let the next build return (and push) the stale rows."""
    source = str(tmp_path / "source.parquet")
    colour_square_source(6).to_parquet(source)
    assert len(_build(tmp_path, source=source).as_dataset(split="train")) == 6
    colour_square_source(9).to_parquet(source)
    shutil.rmtree(tmp_path / "work")
    builder = _build(tmp_path, source=source)
    assert len(builder.as_dataset(split="train")) == builder.stats["num_anchors"] == 9
    # and so after a rebuild interrupted while `datasets` writes the cache: its stats.json, written before, marked the
    # old cache as the new build's (found by a review of the fix above)
    colour_square_source(7).to_parquet(source)
    shutil.rmtree(tmp_path / "work")

    def interrupted(self, shard_paths):
        raise KeyboardInterrupt
        yield

    with monkeypatch.context() as patch:
        patch.setattr(MaplePreferences, "_generate_examples", interrupted)
        with pytest.raises(KeyboardInterrupt):
            _build(tmp_path, source=source)
    assert not (tmp_path / "work" / "stats.json").exists()
    builder = _build(tmp_path, source=source)
    assert len(builder.as_dataset(split="train")) == builder.stats["num_anchors"] == 7


def test_a_cache_assembled_from_a_deleted_work_dir_is_not_reused_under_another_key(tmp_path):
    """Several cache keys share a work dir (here a source path spelled two ways): after the work dir was deleted (as a
    changed source's WorkDirMismatch advises) and built again under one key, the other key's cache, made from the
    deleted work dir, was reused with the new stats.json (found by a review): rows of the old source, stats of the
    new, and pushed so."""
    source = tmp_path / "data" / "source.parquet"
    source.parent.mkdir()
    other_spelling = f"{tmp_path}/data/./source.parquet"
    colour_square_source(6).to_parquet(str(source))
    assert len(_build(tmp_path, source=str(source)).as_dataset(split="train")) == 6
    colour_square_source(9).to_parquet(str(source))
    with pytest.raises(WorkDirMismatch, match="source_fingerprint"):
        _build(tmp_path, source=str(source))
    shutil.rmtree(tmp_path / "work")
    builder = _build(tmp_path, source=other_spelling)
    assert len(builder.as_dataset(split="train")) == builder.stats["num_anchors"] == 9
    builder = _build(tmp_path, source=str(source))
    assert len(builder.as_dataset(split="train")) == builder.stats["num_anchors"] == 9


def test_a_cache_given_as_a_home_folder_records_its_build_id_where_datasets_writes_it(tmp_path, monkeypatch):
    """`datasets` expands `~` in `download_and_prepare(output_dir=...)`; the build id was written to the literal path, a
    FileNotFoundError after the dataset was assembled, and so at every later run (found by a review)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    builder = MaplePreferences(config_name="paper", judge=ColourJudge(), captioner=ColourCaptioner(),
                               miner=thumbnail_miner(), source_dataset=colour_square_source(),
                               work_dir=tmp_path / "work", shard_size=3, semdedup_clusters=None, progress=False)
    builder.download_and_prepare(output_dir="~/prefs")
    assert (tmp_path / "home" / "prefs" / BUILD_ID_FILE).read_text() == (tmp_path / "work" / BUILD_ID_FILE).read_text()


def test_a_cache_on_another_filesystem_is_refused_before_any_work(tmp_path, monkeypatch):
    """Its build id was written to the local disk under the remote path: a FileNotFoundError after the dataset was
    assembled, at every run (found by a review)."""
    monkeypatch.setattr(ColourJudge, "score", lambda *args, **kwargs: pytest.fail("a shard was judged"))
    builder = MaplePreferences(config_name="paper", judge=ColourJudge(), captioner=ColourCaptioner(),
                               miner=thumbnail_miner(), source_dataset=colour_square_source(),
                               work_dir=tmp_path / "work", shard_size=3, semdedup_clusters=None, progress=False)
    with pytest.raises(ValueError, match=r"^output_dir memory://prefs: the preference dataset is built into a local folder"):
        builder.download_and_prepare(output_dir="memory://prefs")
    assert not (tmp_path / "work").exists()


def test_a_build_on_a_filesystem_without_hard_links_finishes(tmp_path, monkeypatch):
    """The work dir's build id is created with a hard link, which SMB, FAT and some FUSE mounts refuse (found by a
    review: every build then ended in a PermissionError traceback after judging everything)."""

    def no_hard_links(source, target):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_hard_links)
    builder = _build(tmp_path)
    assert len(builder.as_dataset(split="train")) == builder.stats["num_anchors"]
    assert sorted(path.name for path in (tmp_path / "work").glob(f"{BUILD_ID_FILE}*")) == [BUILD_ID_FILE]


def test_a_build_made_before_build_ids_is_assembled_again_from_its_shards(tmp_path, monkeypatch):
    """A work dir without a build id, and a cache that records none, came from before build ids: the
    cache cannot be told to be the work dir's, so the dataset is assembled again, from the shards, not judged again."""
    rows = _build(tmp_path).as_dataset(split="train").to_list()
    for build_id_file in tmp_path.rglob(BUILD_ID_FILE):  # the work dir's and the cache's
        build_id_file.unlink()
    assembled, build_stats = [], MaplePreferences.build_stats

    def counted_build_stats(self, shard_paths=None):
        assembled.append(shard_paths)
        return build_stats(self, shard_paths)

    monkeypatch.setattr(ColourJudge, "score", lambda *args, **kwargs: pytest.fail("a shard was judged again"))
    monkeypatch.setattr(MaplePreferences, "build_stats", counted_build_stats)
    builder = _build(tmp_path)
    assert len(assembled) == 1 and builder.as_dataset(split="train").to_list() == rows
    assert (tmp_path / "work" / BUILD_ID_FILE).is_file()
    _build(tmp_path)  # and the cache assembled now is the work dir's
    assert len(assembled) == 1


def test_an_unreadable_file_of_an_image_folder_is_named(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rows = list(colour_square_source(4).cast_column("image", datasets.Image(decode=False)))
    with open(folder / "metadata.jsonl", "w") as metadata:
        for row in rows:
            (folder / f"{row['id']}.png").write_bytes(row["image"]["bytes"])
            metadata.write(json.dumps({"file_name": f"{row['id']}.png", "id": row["id"], "caption": row["caption"]}) + "\n")
    (folder / f"{rows[1]['id']}.png").write_bytes(b"not a png")
    builder = MaplePreferences(
        config_name="corpus-captions", source=str(folder), judge=ColourJudge(), miner=thumbnail_miner(),
        cache_dir=str(tmp_path / "cache"), work_dir=tmp_path / "work", progress=False,
    )
    _, _, skipped = builder.check_inputs()
    assert [item.kind for item in skipped] == ["unreadable image"]
    assert skipped[0].detail.startswith(str(folder / f"{rows[1]['id']}.png") + ": ")  # was: <_io.BytesIO object at 0x...>


def test_corrupt_image_bytes_under_a_file_name_from_elsewhere_are_an_unreadable_image_not_text(tmp_path):
    """Parquet written from an image folder keeps each image's bytes beside its original file name, a path that need
    not exist here: the bytes are what was read, so their error is the detail, not "text read as a file path"."""
    corrupt = {"bytes": b"not an image", "path": "photos/0001.png"}
    source = colour_square_source(3, id=["corrupt"], image=[corrupt], caption=["a red square"])
    _, _, skipped = _unbuilt(tmp_path, source).check_inputs()
    assert [(item.id, item.kind) for item in skipped] == [("corrupt", "unreadable image")]
    assert skipped[0].detail.startswith("photos/0001.png: UnidentifiedImageError: cannot identify image file")


def test_a_folder_source_is_split_by_file_name_as_datasets_reads_it(tmp_path):
    """A Hub snapshot's layout (data/train-*, data/test-*): before the fix every parquet file under
    the folder was read as "train", test rows included, whatever `source_split` said."""
    (tmp_path / "snapshot" / "data").mkdir(parents=True)
    colour_square_source(6).to_parquet(str(tmp_path / "snapshot" / "data" / "train-00000-of-00001.parquet"))
    test_columns = colour_squares(4, seed=1)
    test_columns["id"] = [f"test-{index}" for index in range(4)]
    test_split = datasets.Dataset.from_dict(test_columns, features=SOURCE_FEATURES)
    test_split.to_parquet(str(tmp_path / "snapshot" / "data" / "test-00000-of-00001.parquet"))
    source = str(tmp_path / "snapshot")
    assert list(load_source(source, split="train")["id"]) == list(colour_square_source(6)["id"])
    assert list(load_source(source, split="test")["id"]) == test_columns["id"]
    assert load_source(source, split="train[:2]+test").num_rows == 6
    with pytest.raises(SourceError, match=r"has no split 'validation'; its splits are \['train', 'test'\]"):
        load_source(source, split="train+validation")
    with pytest.raises(SourceError, match=rf"source {re.escape(source)} has no split 'validation'; its splits are \['train', 'test'\]"):
        MaplePreferences(config_name="corpus-captions", source=source, source_split="validation", cache_dir=str(tmp_path / "cache")).manifest()


def test_from_pretrained_loads_a_local_build_or_snapshot(tmp_path):
    builder = _build(tmp_path)
    built = builder.as_dataset(split="train")
    loaded = MaplePreferences.from_pretrained(str(tmp_path / "work" / "shards"))
    assert loaded.features == PREFERENCE_FEATURES
    assert loaded.to_dict() == built.to_dict()
    # Shards past anchor 999,999 are read in anchor order, not name order (found by a review helper)
    (tmp_path / "large").mkdir()
    built.select(range(2)).to_parquet(str(tmp_path / "large" / "shard-999998-1000000.parquet"))
    built.select(range(2, 4)).to_parquet(str(tmp_path / "large" / "shard-1000000-1000002.parquet"))
    assert MaplePreferences.from_pretrained(str(tmp_path / "large"))["id"] == built["id"][:4]
    # A Hub snapshot keeps each config in its own folder.
    snapshot = tmp_path / "snapshot"
    (snapshot / "paper").mkdir(parents=True)
    built.to_parquet(str(snapshot / "paper" / "train-00000-of-00001.parquet"))
    assert MaplePreferences.from_pretrained(str(snapshot), config_name="paper").to_dict() == built.to_dict()
    with pytest.raises(FileNotFoundError, match="corpus-captions"):
        MaplePreferences.from_pretrained(str(snapshot), config_name="corpus-captions")
    # One config in the snapshot: it is the one loaded without naming it.
    assert MaplePreferences.from_pretrained(str(snapshot)).to_dict() == built.to_dict()
    # Several: naming none is an error listing them, not every config's rows merged into one split.
    (snapshot / "corpus-captions").mkdir()
    built.select(range(3)).to_parquet(str(snapshot / "corpus-captions" / "train-00000-of-00001.parquet"))
    with pytest.raises(ValueError, match=r"several configs \(corpus-captions, paper\).*config_name="):
        MaplePreferences.from_pretrained(str(snapshot))
    assert len(MaplePreferences.from_pretrained(str(snapshot), config_name="corpus-captions")) == 3
    # A config pushed with a test split: its files are split by name, as the Hub's are (every file was "train", the
    # held-out rows among them, and split="test" was unknown; found by a review helper)
    built.select(range(2)).to_parquet(str(snapshot / "paper" / "test-00000-of-00001.parquet"))
    assert MaplePreferences.from_pretrained(str(snapshot), config_name="paper").to_dict() == built.to_dict()
    assert MaplePreferences.from_pretrained(str(snapshot), config_name="paper", split="test")["id"] == built["id"][:2]
    assert len(MaplePreferences.from_pretrained(str(snapshot), config_name="paper", split="train+test")) == len(built) + 2
    # the splits are read within the config's folder (another config's split names left this one without files; found
    # by a review of the fix above), and a file naming none beside one that does, which datasets leaves out, is refused
    # by name: it was read as "train", whatever split its folder or name meant (heldout/ beside train/ was trained on)
    (snapshot / "mine").mkdir()
    built.select(range(3)).to_parquet(str(snapshot / "mine" / "shard-000000-000003.parquet"))
    assert MaplePreferences.from_pretrained(str(snapshot), config_name="mine")["id"] == built["id"][:3]
    built.select(range(1)).to_parquet(str(snapshot / "mine" / "eval.parquet"))
    with pytest.raises(SplitLayoutError, match=r"mine: datasets reads the splits of this folder \(test\) from the split "
                                               r"that its files' names give .* leaves out shard-000000-000003.parquet "
                                               r"\(its path names no split\): name every file's split in its name"):
        MaplePreferences.from_pretrained(str(snapshot), config_name="mine")
    (snapshot / "mine" / "shard-000000-000003.parquet").rename(snapshot / "mine" / "train-shard-000000-000003.parquet")
    assert MaplePreferences.from_pretrained(str(snapshot), config_name="mine")["id"] == built["id"][:3]
    assert MaplePreferences.from_pretrained(str(snapshot), config_name="mine", split="test")["id"] == built["id"][:1]
    shutil.rmtree(snapshot / "mine")
    # a split named by its folder (the Hub's refs/convert/parquet layout), and a custom split name in data/, as
    # datasets reads them within the config's folder (a review of the fix above found both lost)
    (snapshot / "converted" / "test").mkdir(parents=True)
    built.select(range(2)).to_parquet(str(snapshot / "converted" / "test" / "0000.parquet"))
    assert MaplePreferences.from_pretrained(str(snapshot), config_name="converted", split="test")["id"] == built["id"][:2]
    # push_to_hub(config_name=...)'s own layout, whose custom split names datasets reads only inside data/ (a review
    # found test_hard read as test), and the default config, which it writes to data/
    for folder in (snapshot / "custom", snapshot / "data"):
        folder.mkdir()
        built.to_parquet(str(folder / "train-00000-of-00001.parquet"))
        built.select(range(1)).to_parquet(str(folder / "test_hard-00000-of-00001.parquet"))
    for config in ("custom", "default"):
        assert len(MaplePreferences.from_pretrained(str(snapshot), config_name=config)) == len(built)
        assert MaplePreferences.from_pretrained(str(snapshot), config_name=config, split="test_hard")["id"] == built["id"][:1]
    # and without a config name, where the snapshot holds one config, or the config's folder is given (a review of the
    # fix below found test_hard read as test there)
    lone = tmp_path / "lone"
    shutil.copytree(snapshot / "custom", lone / "custom")
    for source in (lone, lone / "custom"):
        assert MaplePreferences.from_pretrained(str(source), split="test_hard")["id"] == built["id"][:1]
    # ... but a lone split folder's files are of its split, and a folder without parquet files is said to be one (a
    # review of that fix found both refused: "Unknown split 'train'", and an IndexError)
    shutil.rmtree(lone)
    built.to_parquet(str(lone / "train" / "prefs-00000-of-00001.parquet"))
    assert MaplePreferences.from_pretrained(str(lone))["id"] == built["id"]
    shutil.rmtree(lone)
    built.select(range(2)).to_parquet(str(lone / "validation" / "part-00000-of-00002.parquet"))
    assert MaplePreferences.from_pretrained(str(lone), split="validation")["id"] == built["id"][:2]
    (lone / "validation" / "part-00000-of-00002.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="no parquet files under"):
        MaplePreferences.from_pretrained(str(lone))
    for folder in ("converted", "custom", "data"):
        shutil.rmtree(snapshot / folder)
    # ... but only there: a plain folder's "prefs-00000-of-00001.parquet" is its train split, and a split folder's
    # file is of that folder's split, as datasets reads them (found by a review of the fix above)
    plain = tmp_path / "plain"
    (plain / "train").mkdir(parents=True)
    built.to_parquet(str(plain / "prefs-00000-of-00001.parquet"))
    assert MaplePreferences.from_pretrained(str(plain))["id"] == built["id"]
    from maple.dataset_layout import files_by_split

    (plain / "prefs-00000-of-00001.parquet").rename(plain / "train" / "test-00000-of-00001.parquet")
    (plain / "test").mkdir()
    built.select(range(2)).to_parquet(str(plain / "test" / "a.parquet"))
    assert files_by_split(plain, sorted(plain.rglob("*.parquet"))) == {
        "train": [plain / "train" / "test-00000-of-00001.parquet"], "test": [plain / "test" / "a.parquet"]}
    # A save_to_disk folder (`maple demo`'s preferences/data): "no parquet files" before.
    built.save_to_disk(str(tmp_path / "saved"))
    assert MaplePreferences.from_pretrained(str(tmp_path / "saved")).to_dict() == built.to_dict()
    datasets.DatasetDict({"train": built, "test": built.select(range(2))}).save_to_disk(str(tmp_path / "saved-splits"))
    assert len(MaplePreferences.from_pretrained(str(tmp_path / "saved-splits"), split="test")) == 2
    with pytest.raises(ValueError, match=r"holds the splits \['test', 'train'\]: split 'validation': Unknown split"):
        MaplePreferences.from_pretrained(str(tmp_path / "saved-splits"), split="validation")
    # splits sliced and joined as `datasets` reads them, a saved Dataset's rows as "train" (a slice of a saved
    # Dataset gave every row, another split too, and a DatasetDict's slice was refused; found by a review)
    sliced = MaplePreferences.from_pretrained(str(tmp_path / "saved-splits"), split="train[:3]+test[-1:]")
    assert sliced["id"] == built["id"][:3] + built["id"][1:2]
    assert MaplePreferences.from_pretrained(str(tmp_path / "saved"), split="train[:3]")["id"] == built["id"][:3]
    with pytest.raises(ValueError, match=r"holds the splits \['train'\]: split 'test': Unknown split"):
        MaplePreferences.from_pretrained(str(tmp_path / "saved"), split="test")
    datasets.DatasetDict({"train": built, "val-x": built.select(range(1))}).save_to_disk(str(tmp_path / "odd-name"))
    assert len(MaplePreferences.from_pretrained(str(tmp_path / "odd-name"), split="val-x")) == 1  # a name as saved
    with pytest.raises(ValueError, match="save_to_disk folder, which holds no configs"):
        MaplePreferences.from_pretrained(str(tmp_path / "saved"), config_name="paper")


def test_from_pretrained_refuses_local_parquet_files_of_other_columns_naming_the_file(tmp_path):
    """Read with the preference features, a file lacking a column (a source table given for the shards) gave rows of
    None in it, silently; one with an extra column, or no parquet at all, was datasets' DatasetGenerationError naming
    no file."""
    built = _build(tmp_path).as_dataset(split="train")
    (tmp_path / "source").mkdir()
    built.select_columns(["id", "image", "caption"]).to_parquet(str(tmp_path / "source" / "train.parquet"))
    with pytest.raises(ValueError, match=re.escape(
            f"{tmp_path / 'source' / 'train.parquet'} holds no preference rows: it lacks the columns 'candidate_images', "
            "'candidate_texts', 'txt2img_scores', 'img2txt_scores' (a preference dataset has the columns id, image, ")):
        MaplePreferences.from_pretrained(str(tmp_path / "source"))
    (tmp_path / "more").mkdir()
    built.add_column("note", ["x"] * len(built)).to_parquet(str(tmp_path / "more" / "train.parquet"))
    with pytest.raises(ValueError, match=r"more/train\.parquet holds no preference rows: it has the extra columns 'note'"):
        MaplePreferences.from_pretrained(str(tmp_path / "more" / "train.parquet"))
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 cut short")
    with pytest.raises(ValueError, match=r"broken\.parquet cannot be read as parquet: "):
        MaplePreferences.from_pretrained(str(tmp_path / "broken.parquet"))


def test_from_pretrained_expands_the_home_folder_as_the_builder_does(tmp_path, monkeypatch):
    """The builder expands work_dir="~/work", but from_pretrained("~/work/shards") was read as a Hub id."""
    monkeypatch.setenv("HOME", str(tmp_path))
    built = _build(tmp_path, work_dir="~/work").as_dataset(split="train")
    built.to_parquet(str(tmp_path / "prefs.parquet"))
    built.save_to_disk(str(tmp_path / "saved"))
    for path in ("~/work/shards", "~/prefs.parquet", "~/saved"):
        assert MaplePreferences.from_pretrained(path).to_dict() == built.to_dict()


def test_from_pretrained_refuses_a_config_name_for_a_file(tmp_path):
    """A file was read whatever config was named, as if it were that config's."""
    _build(tmp_path).as_dataset(split="train").to_parquet(str(tmp_path / "prefs.parquet"))
    with pytest.raises(ValueError, match=r"prefs\.parquet is a file, which holds no configs: leave config_name out"):
        MaplePreferences.from_pretrained(str(tmp_path / "prefs.parquet"), config_name="paper")


@pytest.mark.parametrize("names", [
    {"train": "train-00000-of-00001.parquet", "test": "test-00000-of-00001.parquet"},
    {"train": "part-00000-of-00002.parquet", "validation": "part-00000-of-00002.parquet"},
])
def test_a_folder_of_split_folders_is_one_config_with_those_splits_as_maple_train_reads_it(tmp_path, names):
    """`from_pretrained` refused a folder holding train/ and test/ as "several configs (test, train)", which `maple
    train` reads as one dataset with those splits; and a split's folder whose shards are named otherwise
    ("validation/part-00000-of-00002.parquet") was a config's to both (found by a review). Both tell configs apart
    with `maple.dataset_layout.snapshot_config_folders`."""
    from trainer.cli import DataArguments, TrainingInputError, load_preference_splits
    from trainer.testing import synthetic_preference_dataset

    rows = synthetic_preference_dataset(5)
    folder, ids = tmp_path / "splits", {}
    for (split, name), (start, end) in zip(names.items(), [(0, 3), (3, 5)]):
        (folder / split).mkdir(parents=True)
        rows.select(range(start, end)).to_parquet(str(folder / split / name))
        ids[split] = rows["id"][start:end]
    read_by_maple_train = load_preference_splits(DataArguments(dataset_name=str(folder)))
    assert {split: read_by_maple_train[split]["id"] for split in read_by_maple_train} == ids
    for split in names:
        assert MaplePreferences.from_pretrained(str(folder), split=split)["id"] == ids[split]
    # configs' folders beside them are still configs: naming none is refused by both
    for config in ("paper", "corpus-captions"):
        (folder / config).mkdir()
        rows.to_parquet(str(folder / config / "train-00000-of-00001.parquet"))
    with pytest.raises(ValueError, match=r"several configs \(corpus-captions, paper\): pass config_name="):
        MaplePreferences.from_pretrained(str(folder))
    with pytest.raises(TrainingInputError, match="holds the configs corpus-captions, paper of a Hub dataset"):
        load_preference_splits(DataArguments(dataset_name=str(folder)))


@pytest.mark.parametrize("files, read_as", [
    ({"train": "train/train-00000-of-00001.parquet", "test": "test/0000.parquet"}, None),
    ({"train": "train/0000.parquet", "test": "test/0000.parquet"}, None),
    ({"train": "data/train-00000-of-00001.parquet", "test": "data/test-00000-of-00001.parquet"}, None),
    ({"train": "data/train-00000-of-00001.parquet", "test": "test/0000.parquet"},
     r"\(train\) from the names of its shards in data/ alone .* leaves out test/0000.parquet \(its path names split "
     r"'test'\): put every split's files in data/, named as its shards are"),
    ({"train": "data/train-00000-of-00001.parquet", "test": "data/test/0000.parquet"},
     r"leaves out data/test/0000.parquet \(its path names split 'test'\)"),
    ({"train": "train/0000.parquet", "heldout": "heldout/0000.parquet"},
     r"\(train\) from its split folders alone .* leaves out heldout/0000.parquet \(its path names no split\): move every "
     r"split's files into its folder, .*; a split of another name is read from data/NAME-00000-of-00001.parquet"),
    ({"test": "test/0000.parquet", "heldout": "heldout/0000.parquet"},
     r"\(test\) from its split folders alone .* leaves out heldout/0000.parquet \(its path names no split\): move every "
     r"split's files into its folder, so that each file is read as its own split; a split of another name is read from "
     r"data/NAME-00000-of-00001.parquet, beside the other splits' shards named so$"),
    ({"train": "train/0000.parquet", "test": "test/0000.parquet", "validation": "train/val_subset/0000.parquet"},
     r"datasets reads train/val_subset/0000.parquet as the splits train and validation \(its path names each\)"),
    ({"train": "data/train-00000-of-00001.parquet", "test_hard": "data/test_hard/0000.parquet"},
     r"leaves out data/test_hard/0000.parquet \(its path names split 'test'\): put every split's files in data/, named "
     r"as its shards are \(data/test_hard-00000-of-00001.parquet for data/test_hard/0000.parquet\), so that each file "
     r"is read as its own split$"),
    ({"train": "prefs.parquet", "test": "eval.parquet"},
     r"\(test\) from the split that its files' names give .* leaves out prefs.parquet \(its path names no split\): "
     r"name every file's split in its name \(prefs_train.parquet for prefs.parquet\), or move every split's files into its "
     r"folder \(train/, test/...\), so that each file is read as its own split$"),
    ({"test": "test.parquet", "heldout": "heldout.parquet", "train": "prefs.parquet"},
     r"leaves out heldout.parquet \(its path names no split\), prefs.parquet \(its path names no split\): name every "
     r"file's split in its name, or move every split's files into its folder \(train/, test/...\), so that each file is "
     r"read as its own split; a split of another name is read from data/NAME-00000-of-00001.parquet"),
], ids=["split-folders-of-shards", "split-folders", "data-shards", "test-folder-beside-data-shards",
        "test-folder-in-data", "heldout-beside-train", "heldout-beside-test", "val-folder-in-train", "custom-split-folder-in-data",
        "unnamed-file-beside-test-only", "unnamed-files-beside-test-only"])
def test_a_file_is_read_as_its_own_split_by_both_loaders_or_refused_by_name(tmp_path, files, read_as):
    """A folder whose files `datasets` does not read each as the split its path names is refused by name, by
    `from_pretrained` and `maple train` alike: `from_pretrained` read a file `datasets` leaves out (test/0000.parquet
    beside data/'s shards, which `datasets` then reads alone; heldout/ beside train/) as "train", training on test
    rows, where `maple train` dropped it silently; and `maple train` trained on a file `datasets` reads as two splits
    (train/val_subset/: "train" and "validation"). Folders that `datasets` reads as their paths say are read so by both.
    The refusal names the file's new name where its split can be told (a review found data/test_hard/ told to be put
    "in data/", and a lone unnamed file beside a test split told of "a split of another name", which heldout/ beside
    test/ then was not told of; with heldout.parquet and prefs.parquet beside test.parquet, the first was told to be
    renamed heldout_train.parquet, training on held-out rows)."""
    from trainer.cli import DataArguments, TrainingInputError, load_preference_splits
    from trainer.testing import synthetic_preference_dataset

    rows = synthetic_preference_dataset(len(files))
    folder = tmp_path / "prefs"
    for row, path in enumerate(files.values()):
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        rows.select([row]).to_parquet(str(folder / path))
    if read_as is None:
        ids = {split: [rows["id"][row]] for row, split in enumerate(files)}
        read_by_maple_train = load_preference_splits(DataArguments(dataset_name=str(folder)))
        assert {split: read_by_maple_train[split]["id"] for split in read_by_maple_train} == ids
        assert {split: MaplePreferences.from_pretrained(str(folder), split=split)["id"] for split in files} == ids
        return
    with pytest.raises(SplitLayoutError, match=f"^{re.escape(str(folder))}: .*{read_as}"):
        MaplePreferences.from_pretrained(str(folder))
    with pytest.raises(TrainingInputError, match=f"^--dataset_name {re.escape(str(folder))}: .*{read_as}"):
        load_preference_splits(DataArguments(dataset_name=str(folder)))


def test_hidden_files_are_left_out_as_datasets_leaves_them_out(tmp_path):
    """`from_pretrained` read a notebook's hidden checkpoint copy (.ipynb_checkpoints/) as "train" rows beside the
    folder's own, which `datasets` and `maple train` leave out."""
    from trainer.testing import synthetic_preference_dataset

    rows = synthetic_preference_dataset(3)
    rows.select([0]).to_parquet(str(tmp_path / "train.parquet"))
    rows.select([1]).to_parquet(str(tmp_path / "test.parquet"))
    (tmp_path / ".ipynb_checkpoints").mkdir()
    rows.select([2]).to_parquet(str(tmp_path / ".ipynb_checkpoints" / "train-checkpoint.parquet"))
    assert MaplePreferences.from_pretrained(str(tmp_path))["id"] == rows["id"][:1]


def _write_rows(snapshot, files):
    """`files` (path in `snapshot` -> (first row, end row)) written from synthetic rows; the rows' ids by file."""
    from trainer.testing import synthetic_preference_dataset

    rows = synthetic_preference_dataset(max(end for _, end in files.values()))
    for path, (start, end) in files.items():
        (snapshot / path).parent.mkdir(parents=True, exist_ok=True)
        rows.select(range(start, end)).to_parquet(str(snapshot / path))
    return {path: rows["id"][start:end] for path, (start, end) in files.items()}


def test_a_config_named_as_a_split_keyword_is_a_config_to_both_loaders(tmp_path):
    """`push_to_hub(config_name="eval")` writes eval/train-00000-of-00001.parquet, whose folder, named as a split
    keyword, was taken for the test split (found by a review): the config alone failed with 'Unknown split "train"',
    and beside a config `paper` it was read as paper's test split, which `maple train --dataset_train_split test`
    trained on. It is a config: alone `from_pretrained` reads it (`maple train`, whose `datasets` would read it as the
    test split, asks for its folder), beside another both loaders refuse it."""
    from trainer.cli import DataArguments, TrainingInputError, load_preference_splits

    snapshot = tmp_path / "snapshot"
    ids = _write_rows(snapshot, {"eval/train-00000-of-00001.parquet": (0, 3), "eval/test-00000-of-00001.parquet": (3, 4)})
    read_by_maple_train = load_preference_splits(DataArguments(dataset_name=str(snapshot / "eval")))
    for split in ("train", "test"):
        assert MaplePreferences.from_pretrained(str(snapshot), split=split)["id"] == ids[f"eval/{split}-00000-of-00001.parquet"]
        assert read_by_maple_train[split]["id"] == ids[f"eval/{split}-00000-of-00001.parquet"]
    with pytest.raises(TrainingInputError, match=rf"holds the config eval .* e\.g\. --dataset_name {re.escape(str(snapshot / 'eval'))}$"):
        load_preference_splits(DataArguments(dataset_name=str(snapshot)))
    ids.update(_write_rows(snapshot, {"paper/train-00000-of-00001.parquet": (4, 6)}))
    for split in ("train", "test"):
        with pytest.raises(ValueError, match=r"several configs \(eval, paper\): pass config_name="):
            MaplePreferences.from_pretrained(str(snapshot), split=split)
        with pytest.raises(TrainingInputError, match="holds the configs eval, paper of a Hub dataset, without the README"):
            load_preference_splits(DataArguments(dataset_name=str(snapshot), dataset_train_split=split))
    assert MaplePreferences.from_pretrained(str(snapshot), config_name="eval")["id"] == ids["eval/train-00000-of-00001.parquet"]


def test_a_snapshots_card_is_followed_by_both_loaders(tmp_path):
    """`from_pretrained` read a local snapshot by its folders, where `maple train` (`datasets`) follows the `configs`
    of its README.md (found by a review): a config the card names otherwise than its folder was not found. Both follow
    the card."""
    from trainer.cli import DataArguments, load_preference_splits

    snapshot = tmp_path / "snapshot"
    ids = _write_rows(snapshot, {"eval/train-00000-of-00001.parquet": (0, 3), "eval/test-00000-of-00001.parquet": (3, 4),
                                 "paper/train-00000-of-00001.parquet": (4, 6)})
    (snapshot / "README.md").write_text(
        "---\nconfigs:\n- config_name: main\n  data_files:\n  - split: train\n    path: eval/train-*\n"
        "  - split: test\n    path: eval/test-*\n"
        "- config_name: paper\n  data_files:\n  - split: train\n    path: paper/train-*\n---\n"
    )
    read_by_maple_train = load_preference_splits(DataArguments(dataset_name=str(snapshot), dataset_config="main"))
    for split in ("train", "test"):
        path = f"eval/{split}-00000-of-00001.parquet"
        assert MaplePreferences.from_pretrained(str(snapshot), config_name="main", split=split)["id"] == ids[path]
        assert read_by_maple_train[split]["id"] == ids[path]
    with pytest.raises(ValueError, match=r"(?s)Config name is missing.*\['main', 'paper'\]"):
        MaplePreferences.from_pretrained(str(snapshot))


def test_a_snapshots_card_that_datasets_cannot_read_is_named(tmp_path):
    """A README.md whose YAML does not parse, or whose configs are not mappings, failed with the parser's traceback
    (found by a review): a `DatasetCardError` names the card, the problem and where; `maple train` says it as its
    usage error."""
    from trainer.cli import DataArguments, TrainingInputError, load_preference_splits

    snapshot = tmp_path / "snapshot"
    _write_rows(snapshot, {"data/train-00000-of-00001.parquet": (0, 2)})
    (snapshot / "README.md").write_text("---\nlicense: mit\nconfigs:\n  - config_name: default\n - data_dir: data\n---\n")
    with pytest.raises(DatasetCardError) as refused:
        MaplePreferences.from_pretrained(str(snapshot))
    assert str(refused.value) == (
        f"{snapshot / 'README.md'}: its YAML metadata (between the --- lines) does not parse: while parsing a block "
        "mapping, expected <block end>, but found '<block sequence start>' (line 5, column 2)"
    )
    with pytest.raises(TrainingInputError) as refused_by_maple_train:
        load_preference_splits(DataArguments(dataset_name=str(snapshot)))
    assert str(refused_by_maple_train.value) == f"--dataset_name {snapshot}: {refused.value}"
    (snapshot / "README.md").write_text("---\nconfigs:\n- 3\n---\n")
    with pytest.raises(DatasetCardError, match=r"README.md: configs is \[3\]; expected a list of mappings, one per config$"):
        MaplePreferences.from_pretrained(str(snapshot))
    (snapshot / "README.md").write_text("---\nconfigs:\n- data_dir: data\n---\n")
    with pytest.raises(DatasetCardError, match=r"README.md: Each config must include `config_name`"):
        MaplePreferences.from_pretrained(str(snapshot))
    for features, error in [("3", "TypeError: Expected a dict or a list but got <class 'int'>: 3"),
                            ("[{dtype: string}]", "KeyError: 'name'"),  # a feature without its name
                            ("{a: 3}", "TypeError: 'int' object is not a mapping"),
                            ("[3]", "AttributeError: 'int' object has no attribute 'pop'")]:
        (snapshot / "README.md").write_text(f"---\nconfigs:\n- config_name: default\n  features: {features}\n---\n")
        with pytest.raises(DatasetCardError, match=rf"README.md: datasets cannot read its configs .*: {re.escape(error)}$"):
            MaplePreferences.from_pretrained(str(snapshot))


def test_configs_laid_out_in_split_folders_are_refused_not_merged_by_both_loaders(tmp_path):
    """paper/train/0000.parquet beside corpus/train/0000.parquet was one train split of both configs' rows, to
    `from_pretrained` (which refused it before configs were told apart by their shards' names) and to `maple train`
    (found by a review). Both refuse it, naming the configs; a config named is read."""
    from trainer.cli import DataArguments, TrainingInputError, load_preference_splits

    snapshot = tmp_path / "snapshot"
    ids = _write_rows(snapshot, {"paper/train/0000.parquet": (0, 3), "corpus/train/0000.parquet": (3, 5),
                                 "paper/test/0000.parquet": (5, 6)})
    with pytest.raises(ValueError, match=r"several configs \(corpus, paper\): pass config_name="):
        MaplePreferences.from_pretrained(str(snapshot))
    with pytest.raises(TrainingInputError, match=rf"holds the configs corpus, paper of a Hub dataset, .* e\.g\. "
                                                 rf"--dataset_name {re.escape(str(snapshot / 'corpus'))}$"):
        load_preference_splits(DataArguments(dataset_name=str(snapshot)))
    assert MaplePreferences.from_pretrained(str(snapshot), config_name="paper")["id"] == ids["paper/train/0000.parquet"]
    assert MaplePreferences.from_pretrained(str(snapshot), config_name="paper", split="test")["id"] == ids["paper/test/0000.parquet"]
    read_by_maple_train = load_preference_splits(DataArguments(dataset_name=str(snapshot / "paper")))
    assert {split: rows["id"] for split, rows in read_by_maple_train.items()} == {
        "train": ids["paper/train/0000.parquet"], "test": ids["paper/test/0000.parquet"]}


def test_a_config_folder_given_is_read_by_its_files_not_by_its_name(tmp_path):
    """A config's folder given as the folder, named as a split keyword (SNAPSHOT/eval), was judged a split's folder by
    its name: its push_to_hub shards were split by `datasets`' patterns, and its custom split test_hard was unknown
    (found by a review). Only a snapshot's own folders are judged by their names."""
    config = tmp_path / "snapshot" / "eval"
    ids = _write_rows(config.parent, {"eval/train-00000-of-00001.parquet": (0, 3),
                                      "eval/test_hard-00000-of-00001.parquet": (3, 4)})
    for split in ("train", "test_hard"):
        assert MaplePreferences.from_pretrained(str(config), split=split)["id"] == ids[f"eval/{split}-00000-of-00001.parquet"]


@pytest.mark.parametrize("config, splits", [
    ("paper", ("train", "test_hard")),
    ("paper", ("train", "test", "test_hard")),
    ("paper", ("train", "train_extra")),
    (".", ("train", "test_hard")),
], ids=["test-hard", "test-and-test-hard", "train-extra", "config-folder-given"])
@pytest.mark.parametrize("name_end", ["", "-a3f1c0de5b7e9d24"], ids=["shard", "older-fingerprinted-shard"])
def test_a_configs_shard_of_a_custom_split_is_read_by_its_name_or_refused_never_merged(tmp_path, config, splits, name_end):
    """A snapshot of `push_to_hub(config_name="paper")` without its README.md: `datasets` reads
    paper/test_hard-00000-of-00001.parquet as "test" (and train_extra as "train"), and `maple train` merged it into
    that split, evaluating, or training, on its rows (found by a review), where `from_pretrained` reads it by its name.
    `maple train` refuses it, naming the file, both splits and the fix, which trains: the card, or the files in
    data/. Older `datasets` releases ended each shard's name with the shard's fingerprint
    (test_hard-00000-of-00001-a3f1c0de5b7e9d24.parquet), which `datasets` still reads in data/ as its split: such
    names were not known as shards, so `from_pretrained` too read test_hard as "test", and `maple train` merged it."""
    from trainer.cli import DataArguments, TrainingInputError, load_preference_splits

    snapshot = tmp_path / "snapshot"
    paths = {split: os.path.normpath(os.path.join(config, f"{split}-00000-of-00001{name_end}.parquet")) for split in splits}
    ids = _write_rows(snapshot, {path: (row, row + 1) for row, path in enumerate(paths.values())})
    for split, path in paths.items():
        assert MaplePreferences.from_pretrained(str(snapshot), split=split)["id"] == ids[path]
    custom = splits[-1]
    keyword = custom.split("_")[0]
    with pytest.raises(TrainingInputError) as refused:
        load_preference_splits(DataArguments(dataset_name=str(snapshot)))
    assert str(refused.value) == (
        f"--dataset_name {snapshot}: datasets reads {paths[custom]} as split {keyword!r}, not as split "
        f"{custom!r}, which its name gives as push_to_hub names a split's shards: without the README.md whose configs "
        "name each split's files, datasets reads a shard's own split name only in data/; add the dataset's README.md, "
        f"or move the config's files into a folder data/ (data/{custom}-00000-of-00001{name_end}.parquet) "
        "(MaplePreferences.from_pretrained reads them as they are)"
    )
    (snapshot / "data").mkdir()
    for path in paths.values():
        (snapshot / path).rename(snapshot / "data" / os.path.basename(path))
    read_by_maple_train = load_preference_splits(DataArguments(dataset_name=str(snapshot)))
    assert {split: rows["id"] for split, rows in read_by_maple_train.items()} == {
        split: ids[path] for split, path in paths.items()}


def test_end_to_end_with_a_tiny_mllm_judge_and_captioner(tmp_path):
    torch.manual_seed(0)
    captioner = tiny_captioner(seed=1, image_size=16, max_new_tokens=6)
    # A random model never ends an answer, and a cut answer's last caption is dropped; without an end-of-sequence
    # token the captioner cannot tell a cut, and takes answers as they are.
    captioner.model.generation_config.eos_token_id = None
    builder = _build(
        tmp_path,
        source_dataset=colour_square_source(4),
        judge=tiny_judge(seed=0, image_size=16),
        captioner=captioner,
        num_hard_negatives=2,
        shard_size=4,
    )
    dataset = builder.as_dataset(split="train")
    assert len(dataset) == 4
    for row in dataset:
        assert len(row["candidate_images"]) == 3 and len(row["txt2img_scores"]) == 3
        assert len(row["candidate_texts"]) >= 2, "the tiny captioner's gibberish still makes candidates"
        assert len(row["img2txt_scores"]) == len(row["candidate_texts"])
    assert builder.stats["judge"] == "tiny-judge-0"


def test_the_schema_is_the_trainers_one_definition():
    import dataset_builders
    import trainer.schema

    assert dataset_builders.PREFERENCE_FEATURES is PREFERENCE_FEATURES is trainer.schema.PREFERENCE_FEATURES


def test_text_pool_keeps_the_caption_first_and_drops_repeats():
    generated = [["a  red\ncube", "", "a red cube", "the caption", "a blue cube", "a green cube"]]
    assert text_pool("the caption", generated, size=3) == ["the caption", "a red cube", "a blue cube"]
    assert text_pool("the caption", [], size=6) == ["the caption"]
    assert text_pool("the caption", generated, size=1) == ["the caption"]
    with pytest.raises(ValueError, match="size must be at least 1"):  # 0 kept every text (found by a helper)
        text_pool("the caption", generated, size=0)


def test_text_pool_compares_the_caption_by_its_normalised_form():
    """Before the fix only candidates were normalised: a caption with a double space or a newline
    survived beside its normalised copy."""
    assert text_pool("a  red\nsquare", [["a red square", "a blue square"]], size=6) == ["a  red\nsquare", "a blue square"]


def test_text_pool_gives_every_captioned_negative_its_turn():
    """The pool was filled negative by negative: at 3 samples of 2 captions and a pool of 6 the first captioned
    negative filled it, and captioning more negatives cost prompts and added nothing."""
    by_negative = [[f"sample {sample} {who} {negative}" for sample in range(3) for who in ("anchor", "negative")]
                   for negative in "ABC"]
    assert text_pool("the caption", by_negative, size=6) == [
        "the caption", "sample 0 anchor A", "sample 0 negative A", "sample 0 anchor B", "sample 0 negative B",
        "sample 0 anchor C"]
    assert text_pool("the caption", by_negative[:1], size=6) == ["the caption", *by_negative[0][:5]]
    assert text_pool("the caption", [["a", "b"], ["c"], ["d", "e"]], size=6) == ["the caption", "a", "b", "c", "d", "e"]
    # a repeat keeps its first place and does not spend another negative's turn
    assert text_pool("the caption", [["x", "y"], ["x", "z"]], size=3) == ["the caption", "x", "z"]


def test_embedding_slices_cover_every_row_once_beyond_float32_precision():
    """Rank slices came from float32 torch.linspace, whose last bound for 2**24 + 1 rows is 2**24:
    the last row was embedded by no rank."""
    count, world_size = 2**24 + 1, 2
    slices = [_slice_bounds(count, rank, world_size) for rank in range(world_size)]
    assert slices[0][0] == 0 and slices[0][1] == slices[1][0] and slices[-1][1] == count
    assert [_slice_bounds(10, rank, 3) for rank in range(3)] == [(0, 3), (3, 6), (6, 10)]


def _unbuilt(tmp_path, source: datasets.Dataset, **kwargs) -> MaplePreferences:
    """A corpus-captions builder in tmp_path, nothing run yet; `kwargs` override its arguments."""
    settings = {
        "config_name": "corpus-captions", "judge": ColourJudge(), "miner": thumbnail_miner(),
        "cache_dir": str(tmp_path / "cache"), "work_dir": tmp_path / "work", "progress": False,
        "wait_timeout": RANK_WAIT_SECONDS,
    }
    return MaplePreferences(source_dataset=source, **{**settings, **kwargs})


def test_a_duplicate_id_keeps_its_first_valid_row(tmp_path, monkeypatch):
    """Before the fix an invalid first row claimed the id: it was skipped as unreadable, the valid
    row after it as its duplicate, and the id was lost. The id is checked first: a duplicate's image,
    the costly part of the check, is never decoded."""
    import dataset_builders.builder as builder_module

    decoded, decode = [], builder_module.decode_image
    monkeypatch.setattr(builder_module, "decode_image", lambda payload, row: decoded.append(row) or decode(payload, row))
    columns = colour_squares(4)
    columns["id"][:3] = ["a", "a", "a"]
    columns["image"][0] = {"bytes": b"not an image", "path": None}
    _, valid_rows, skipped = _unbuilt(tmp_path, datasets.Dataset.from_dict(columns, features=SOURCE_FEATURES)).check_inputs()
    assert valid_rows == [1, 3]
    assert [(item.row, item.kind, item.detail) for item in skipped if item.kind == "duplicate id"] == [
        (2, "duplicate id", "row 1 has this id and is kept")
    ]
    assert [item.row for item in skipped if item.kind == "unreadable image"] == [0]
    assert decoded == [0, 1, 3]


def test_ranks_check_a_slice_each_and_agree_with_one_process(tmp_path, monkeypatch):
    """Every rank decoded every source image (hours per rank for a large corpus). Each checks a third of the rows
    here, and the merge still finds the duplicate ids that cross slices: rows [0, 3), [3, 6) and [6, 9)."""
    columns = colour_squares(9)
    columns["id"][4] = "square-000"  # a duplicate of a row of the first slice
    columns["id"][6:8] = ["x", "x"]
    columns["image"][6] = {"bytes": b"not an image", "path": None}  # an unreadable row does not claim its id
    columns["id"][8], columns["caption"][8] = "square-003", ""  # an empty caption with a taken id: a duplicate id first
    source = datasets.Dataset.from_dict(columns, features=SOURCE_FEATURES)
    reference = _unbuilt(tmp_path / "one", source).check_inputs()
    checked, check = [], MaplePreferences._input_problem
    monkeypatch.setattr(MaplePreferences, "_input_problem",
                        lambda self, index, *args: checked.append((self.rank, index)) or check(self, index, *args))
    ranks = [_unbuilt(tmp_path, source, rank=rank, world_size=3) for rank in range(3)]
    with concurrent.futures.ThreadPoolExecutor(3) as pool:  # each waits for the others' slices
        results = list(pool.map(lambda builder: builder.check_inputs(), ranks))
    assert results == [reference] * 3
    assert sorted(checked) == [(rank, row) for rank in range(3) for row in range(3 * rank, 3 * rank + 3)]
    assert reference[1] == [0, 1, 2, 3, 5, 7]
    assert [(item.row, item.kind, item.detail) for item in reference[2]] == [
        (4, "duplicate id", "row 0 has this id and is kept"),
        (6, "unreadable image", "UnidentifiedImageError: cannot identify image file the image bytes"),
        (8, "duplicate id", "row 3 has this id and is kept"),
    ]


def test_a_caption_column_of_lists_is_refused_naming_column_and_type(tmp_path):
    """COCO-style sources hold several captions per image. Before a first fix such rows were skipped as
    "empty caption" with no detail; then every row was skipped as a "non-string caption" once all images had been
    read; now the column is refused as the source opens (found by a review)."""
    columns = colour_squares(3)
    columns["caption"] = [[caption, caption + " again"] for caption in columns["caption"]]
    source = datasets.Dataset.from_dict(
        columns,
        features=datasets.Features(
            {"id": datasets.Value("string"), "image": datasets.Image(), "caption": datasets.Sequence(datasets.Value("string"))}
        ),
    )
    with pytest.raises(SourceError, match=r"^source column 'caption' holds List\(Value\('string'\)\); expected captions "
                                          r"\(str\): give each caption of an image a row of its own$"):
        _unbuilt(tmp_path, source).build_shards()


def test_an_explicit_id_column_must_exist_but_the_default_one_may_be_absent(tmp_path):
    """Before the fix a misspelt id column was ignored and every id silently became the row index."""
    with pytest.raises(ValueError, match=r"source datasets.Dataset \(in memory\) lacks column\(s\) \['image_id'\].*--id-column"):
        _unbuilt(tmp_path, colour_square_source(3), id_column="image_id").check_inputs()
    without_ids = colour_square_source(3).remove_columns("id")
    builder = _build(tmp_path / "no_ids", config_name="corpus-captions", source_dataset=without_ids, captioner=None)
    assert builder.stats["skipped"] == []
    # the row index, zero-padded: the ids sort as the rows do
    assert builder.as_dataset(split="train")["id"] == ["000000000", "000000001", "000000002"]
    # a blank id is no id either (training refuses it)
    blank_ids = colour_square_source(3).map(lambda row, index: {"id": " " if index == 1 else row["id"]}, with_indices=True)
    builder = _build(tmp_path / "blank_ids", config_name="corpus-captions", source_dataset=blank_ids, captioner=None)
    assert builder.as_dataset(split="train")["id"][1] == "000000001"


def test_nan_ids_are_no_ids_and_no_row_is_lost(tmp_path):
    """A float id column with NaNs (pandas' missing values) gave every NaN row the id "nan", and all but the first
    were skipped as duplicates (found by a review); training refuses a NaN id."""
    ids = [1.0, math.nan, 3.0, math.nan]
    source = colour_square_source(4).remove_columns("id").add_column("id", ids)
    _, valid_rows, skipped = _unbuilt(tmp_path, source).check_inputs()
    assert valid_rows == [0, 1, 2, 3] and skipped == []
    builder = _build(tmp_path / "nan_ids", config_name="corpus-captions", source_dataset=source, captioner=None)
    assert builder.as_dataset(split="train")["id"] == ["1.0", "000000001", "3.0", "000000003"]


@pytest.mark.parametrize("format_type", ["torch", "numpy", "pandas", "arrow", "transform"])
def test_a_source_dataset_in_any_format_reads_as_python_rows(tmp_path, format_type):
    """A caller's format reached the rows: torch ids became "tensor(0)", pandas captions a Series (every row skipped),
    an arrow format an AttributeError (found by a review)."""
    from dataset_builders.sources import open_source

    source = colour_square_source(3).remove_columns("id").add_column("id", [0, 1, 2])
    if format_type == "transform":
        formatted = source.with_transform(lambda batch: {"id": [str(value) + "!" for value in batch["id"]]})
    else:
        formatted = source.with_format(format_type)
    builder = _unbuilt(tmp_path, formatted)
    rows, _ = open_source(builder.config, formatted)
    assert rows[:] == open_source(builder.config, source)[0][:]
    assert builder.check_inputs()[1] == [0, 1, 2] and builder._row_id(rows[0], 0) == "0"


def test_a_source_dataset_of_several_splits_or_streamed_is_refused_by_name(tmp_path):
    from dataset_builders.sources import SourceError, open_source

    splits = datasets.DatasetDict(train=colour_square_source(3), test=colour_square_source(2))
    config = _unbuilt(tmp_path, colour_square_source(3)).config
    with pytest.raises(SourceError, match=r"^source_dataset is a DatasetDict of the splits \['train', 'test'\]: pass "
                                          r"one split, e.g. source_dataset=dataset\['train'\]$"):
        open_source(config, splits)
    with pytest.raises(SourceError, match=r"^source_dataset is a streamed dataset \(IterableDataset\)"):
        open_source(config, colour_square_source(3).to_iterable_dataset())


@pytest.mark.parametrize("id_column, feature", [("image", "Image(mode=None, decode=True)"),
                                                 ("pair", "List(Value('int64'))"), ("flag", "Value('bool')")])
def test_an_id_column_of_no_str_or_int_is_refused_naming_column_and_type(tmp_path, id_column, feature):
    """The id column's type was never checked: --id-column image made every id the repr of an image dict, and a column
    of lists ids like '[1, 2]' and rows dropped as duplicate ids, and the build succeeded (found by a bug hunt). Floats
    stay ids: pandas makes an integer column with missing values float (`test_nan_ids_are_no_ids_and_no_row_is_lost`)."""
    source = colour_square_source(3)
    source = source.add_column("pair", [[1, 2]] * 3).add_column("flag", [True, False, True])
    with pytest.raises(SourceError, match=rf"^source column '{id_column}' holds {re.escape(feature)}; expected ids "
                                          r"\(str, int or float\): name the id column with id_column= \(CLI --id-column\)$"):
        _unbuilt(tmp_path, source, id_column=id_column).check_inputs()
    numbered = source.add_column("number", list(range(3)))
    assert _unbuilt(tmp_path / "int", numbered, id_column="number").check_inputs() is not None


def test_the_default_id_column_of_no_ids_says_how_to_do_without_it_and_one_of_nulls_is_no_ids(tmp_path):
    """The default id column is optional, so its refusal says how to do without it (no other name could be given to
    it); a column of nulls (pandas' all-None ids, JSON's "id": null) is no ids, each row's index its id, as a None id
    is (it was refused by the id type check, found by a review)."""
    source = colour_square_source(3).remove_columns("id")
    with pytest.raises(SourceError, match=r"^source column 'id' holds Value\('bool'\); expected ids \(str, int or "
                                          r"float\): name the id column with id_column= \(CLI --id-column\), or drop or "
                                          r"rename the column \(the row index is then the id\)$"):
        _unbuilt(tmp_path, source.add_column("id", [True, False, True])).check_inputs()
    nulls = source.add_column("id", [None] * 3)
    assert nulls.features["id"] == datasets.Value("null")
    builder = _unbuilt(tmp_path / "nulls", nulls)
    assert builder.check_inputs()[1] == [0, 1, 2]
    without = _unbuilt(tmp_path / "without", source)
    assert [builder._row_id(row, index) for index, row in enumerate(nulls)] == [
        without._row_id(row, index) for index, row in enumerate(source)]


def test_an_image_column_that_holds_no_images_names_column_and_type(tmp_path):
    columns = colour_squares(3)
    with pytest.raises(ValueError, match=r"source column 'image' holds Value\('int64'\); expected images"):
        _unbuilt(tmp_path, datasets.Dataset.from_dict({**columns, "image": [0, 1, 2]})).check_inputs()
    # {"bytes", "path"} structs, as in image parquet files written without datasets' metadata, are images.
    as_structs = colour_square_source(3).cast_column("image", datasets.Image(decode=False))
    as_structs = datasets.Dataset.from_dict(as_structs.to_dict())
    assert isinstance(as_structs.features["image"], dict)
    _, anchors, skipped = _unbuilt(tmp_path / "structs", as_structs).check_inputs()
    assert len(anchors) == 3 and skipped == []
    # encoded image bytes, as a binary column, are images; a struct of other fields is not
    as_bytes = datasets.Dataset.from_dict({**columns, "image": [image["bytes"] for image in columns["image"]]})
    assert as_bytes.features["image"] == datasets.Value("binary")
    _, anchors, skipped = _unbuilt(tmp_path / "bytes", as_bytes).check_inputs()
    assert len(anchors) == 3 and skipped == []
    as_links = datasets.Dataset.from_dict({**columns, "image": [{"path": "a.png", "url": "https://x/a.png"}] * 3})
    with pytest.raises(ValueError, match=r"source column 'image' holds \{'path': .*'url': .*\}; expected images"):
        _unbuilt(tmp_path / "links", as_links).check_inputs()


def test_columns_the_build_does_not_read_are_never_decoded(tmp_path):
    columns = colour_squares(3)
    columns["thumbnail"] = [{"bytes": b"not an image", "path": None}] * 3
    features = datasets.Features({**SOURCE_FEATURES, "thumbnail": datasets.Image()})
    _, anchors, skipped = _unbuilt(tmp_path, datasets.Dataset.from_dict(columns, features=features)).check_inputs()
    assert len(anchors) == 3 and skipped == []


def test_a_nan_embedding_is_an_error_naming_the_source_row_and_id(tmp_path):
    miner = thumbnail_miner()
    encode = miner.encode_images

    def encode_with_a_nan(images):
        embeddings = encode(images)
        embeddings[torch.tensor([nearest_colour_name(image) == "blue" for image in images])] = float("nan")
        return embeddings

    miner.encode_images = encode_with_a_nan
    # Rows 2 and 8 are the blue squares.
    with pytest.raises(ValueError, match=r"2 of the 10 images are not finite \(NaN or inf\): source row 2 \(id square-002\), source row 8 \(id square-008\)"):
        _unbuilt(tmp_path, colour_square_source(), miner=miner).build_shards()
    assert not list((tmp_path / "work").glob("embeddings*.pt")), "no checkpoint holds the NaN"


def test_the_papers_cluster_count_on_a_small_corpus_stops_before_embedding(tmp_path):
    """The paper config's 50,000 SemDeDup clusters on 10 images de-duplicated nothing, silently."""
    builder = _unbuilt(tmp_path, colour_square_source(), config_name="paper", captioner=ColourCaptioner())
    with pytest.raises(ValueError, match=r"50000 clusters on 10 rows"):
        builder.build_shards()
    assert not list((tmp_path / "work").glob("embeddings*.pt"))
    # The fix the error suggests runs in the same work dir (it was refused as another recipe: 50000 clusters)
    _unbuilt(tmp_path, colour_square_source(), config_name="paper", captioner=ColourCaptioner(), semdedup_clusters=2).build_shards()


def test_the_papers_cluster_count_on_a_small_corpus_leaves_the_work_dir_to_the_fix_from_download_and_prepare(tmp_path):
    """download_and_prepare claimed the work dir (its manifest) before the cluster count was checked, so the fix the
    error suggests was refused as another recipe (semdedup_clusters: 50000 in the work dir, 2 now)."""
    builder = _unbuilt(tmp_path, colour_square_source(), config_name="paper", captioner=ColourCaptioner())
    with pytest.raises(ValueError, match=r"50000 clusters on 10 rows"):
        builder.download_and_prepare()
    assert not (tmp_path / "work" / "manifest.json").exists()
    _unbuilt(tmp_path, colour_square_source(), config_name="paper", captioner=ColourCaptioner(), semdedup_clusters=2).download_and_prepare()


def test_a_rank_that_gives_up_before_embedding_does_not_leave_another_waiting(tmp_path, monkeypatch):
    """The rank that merged the input checks first raised the cluster-count error and removed every slice, so a rank
    still polling for them waited the whole wait_timeout (24 hours by default), then blamed a missing file."""
    check_slice = MaplePreferences._check_slice

    def rank_0_is_slower(self, *args):
        if self.rank == 0:
            time.sleep(1.0)  # rank 1 is polling when rank 0 writes its slice: one of them merges and gives up first
        return check_slice(self, *args)

    monkeypatch.setattr(MaplePreferences, "_check_slice", rank_0_is_slower)
    ranks = [_unbuilt(tmp_path, colour_square_source(), config_name="paper", captioner=ColourCaptioner(), rank=rank, world_size=2,
                      wait_timeout=30) for rank in range(2)]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(builder.build_shards) for builder in ranks]
        errors = [future.exception(timeout=120) for future in futures]
    assert not any(isinstance(error, TimeoutError) for error in errors), errors  # a rank waited out wait_timeout
    # whichever merges first says why; the other, waiting, is told another process gave up
    gave_up = [error for error in errors if isinstance(error, WorkDirMismatch)]
    assert len(gave_up) <= 1 and all("another process gave up the work dir" in str(error) for error in gave_up)
    assert all(re.search(r"50000 clusters on 10 rows", str(error)) for error in errors if error not in gave_up)


@pytest.mark.parametrize("given_up_slice, stage", [("inputs-1-of-2.json", "input checks"), ("embeddings-1-of-2.pt", "image embeddings")])
def test_a_rank_given_up_on_between_its_wait_and_its_read_says_so(tmp_path, monkeypatch, given_up_slice, stage):
    """CI caught the window the test above leaves to chance: rank 1 gave up (removing the manifest and the slices)
    after rank 0 saw every slice but before it read them, and rank 0 called the missing slice a damaged checkpoint.
    The embeddings stage did so still after the input checks were mended."""
    wait_for = MaplePreferences._wait_for

    def other_rank_writes_and_gives_up_after_the_wait(self, paths, *, what):
        for path in paths:  # rank 1's slices: no valid rows of its own, so no embeddings either
            if path.name == "inputs-1-of-2.json":
                path.write_text(json.dumps({"valid_rows": [], "valid_ids": [], "skipped": []}))
            elif path.name == "embeddings-1-of-2.pt":
                torch.save(torch.empty(0), path)
        wait_for(self, paths, what=what)
        if any(path.name == given_up_slice for path in paths):
            for path in (self.work_dir / MANIFEST_FILE, self.work_dir / given_up_slice):
                path.unlink()

    monkeypatch.setattr(MaplePreferences, "_wait_for", other_rank_writes_and_gives_up_after_the_wait)
    rank_0 = _unbuilt(tmp_path, colour_square_source(), rank=0, world_size=2)  # no SemDeDup: too few rows for it
    with pytest.raises(WorkDirMismatch, match=f"another process gave up the work dir .* while this one waited for {stage}"):
        rank_0.build_shards()


def test_a_rank_waiting_for_a_peer_that_gave_up_stops_at_its_next_poll(tmp_path, monkeypatch):
    """The test above leaves to chance whether a rank is still polling when its peer gives up. Here rank 1 never
    comes and its giving up (the manifest removed) happens during rank 0's first wait: rank 0 must stop and say so,
    not poll on until wait_timeout and blame a missing file."""
    import dataset_builders.builder as builder_module

    manifest = tmp_path / "work" / MANIFEST_FILE
    monkeypatch.setattr(builder_module.time, "sleep", lambda seconds: manifest.unlink(missing_ok=True))
    rank_0 = _unbuilt(tmp_path, colour_square_source(), rank=0, world_size=2, wait_timeout=5)
    with pytest.raises(WorkDirMismatch, match="another process gave up the work dir .* while this one waited for input checks"):
        rank_0.build_shards()


def test_a_peer_giving_up_between_this_ranks_slice_and_its_wait_stops_this_rank(tmp_path, monkeypatch):
    """The likely window of a CI failure of the give-up test above: rank 0, having merged every slice, gave up
    (removing the manifest and the slices) after rank 1 wrote its slice but before rank 1's wait began. Rank 1 then
    took the work dir for unclaimed and waited out wait_timeout for rank 0's slice. The work dir now counts as claimed
    from `check_work_dir` on. (Here the manifest goes as rank 1 finishes its check: the same window, made certain.)"""
    check_slice = MaplePreferences._check_slice

    def peer_gives_up_meanwhile(self, *args):
        checked = check_slice(self, *args)
        (self.work_dir / MANIFEST_FILE).unlink()
        return checked

    monkeypatch.setattr(MaplePreferences, "_check_slice", peer_gives_up_meanwhile)
    rank_1 = _unbuilt(tmp_path, colour_square_source(), rank=1, world_size=2, wait_timeout=5)
    with pytest.raises(WorkDirMismatch, match="another process gave up the work dir .* while this one waited for input checks"):
        rank_1.build_shards()


def test_a_peer_claiming_the_work_dir_during_this_ranks_claim_is_not_taken_for_leftovers(tmp_path):
    """A window a review found: rank 0 saw no manifest; before it looked for leftover checkpoints, rank 1 claimed the
    work dir and wrote its input-check slice. Rank 0 refused the slice as a checkpoint without a manifest and stopped
    without giving anything up, so rank 1 waited out wait_timeout for rank 0's slice."""
    rank_0, rank_1 = (_unbuilt(tmp_path, colour_square_source(), rank=rank, world_size=2) for rank in range(2))

    class PeerClaimsBeforeTheLeftoverCheck(type(rank_0.work_dir)):
        def glob(self, pattern):
            if not (self / MANIFEST_FILE).exists():
                rank_1.check_work_dir()
                (self / "inputs-1-of-2.json").write_text(json.dumps({"valid_rows": [], "valid_ids": [], "skipped": []}))
            return super().glob(pattern)

    rank_0.work_dir = PeerClaimsBeforeTheLeftoverCheck(rank_0.work_dir)
    rank_0.check_work_dir()
    assert rank_0._work_dir_claimed
    # A work dir that holds checkpoints and no manifest is still refused.
    (tmp_path / "work" / MANIFEST_FILE).unlink()
    with pytest.raises(WorkDirMismatch, match=r"holds checkpoints \(inputs-1-of-2.json\) but no manifest"):
        _unbuilt(tmp_path, colour_square_source(), rank=0, world_size=2).check_work_dir()


def test_every_rank_may_call_download_and_prepare(tmp_path):
    """The natural call from Python on every rank: before, the rank holding `datasets`' cache lock waited for shards
    of a rank stuck at that lock (until wait_timeout, 24 hours by default). Every rank now builds its shards before the
    lock; rank 0 assembles the dataset and the others load it from the cache, equal to one process's."""
    ranks = [_unbuilt(tmp_path, colour_square_source(), shard_size=3, rank=rank, world_size=2, wait_timeout=30)
             for rank in range(2)]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        for future in [pool.submit(builder.download_and_prepare) for builder in reversed(ranks)]:
            future.result(timeout=120)
    single = _unbuilt(tmp_path / "single", colour_square_source(), shard_size=3)
    single.download_and_prepare()
    expected = single.as_dataset(split="train").data.table
    assert expected.num_rows == 10
    for builder in ranks:
        assert builder.as_dataset(split="train").data.table.equals(expected)


@pytest.mark.parametrize("rank_caches", [("cache", "cache"), ("node-0-cache", "node-1-cache")])
def test_ranks_finding_a_cache_not_of_their_work_dir_assemble_it_once_per_cache_folder(tmp_path, monkeypatch,
                                                                                       rank_caches):
    """With the work dir's stats.json from an earlier build and the cache assembled from another work dir, every rank
    decided to assemble before taking `datasets`' lock, so each assembled the whole dataset again, in turn. The
    decision is now taken under the assembly's lock: the second rank reuses the first's cache. Ranks on nodes with a
    cache folder each (the work dir shared) still assemble one each."""
    import dataset_builders.builder as builder_module

    source = colour_square_source()
    _unbuilt(tmp_path, source).download_and_prepare()
    _unbuilt(tmp_path, source, work_dir=tmp_path / "other").download_and_prepare()  # the cache is now other's
    ids_read, both_read_the_id = [], threading.Event()
    created_once, split_generators = builder_module.created_once, MaplePreferences._split_generators

    def counted_created_once(path, text):
        ids_read.append(path)
        if len(ids_read) == 2:
            both_read_the_id.set()
        return created_once(path, text)

    assembled = []

    def counted_split_generators(self, dl_manager):
        # both ranks have the work dir's build id before either assembles: the old code had then decided for both
        assert both_read_the_id.wait(RANK_WAIT_SECONDS)
        assembled.append(self.rank)
        return split_generators(self, dl_manager)

    monkeypatch.setattr(builder_module, "created_once", counted_created_once)
    monkeypatch.setattr(MaplePreferences, "_split_generators", counted_split_generators)
    ranks = [_unbuilt(tmp_path, source, cache_dir=str(tmp_path / cache), rank=rank, world_size=2)
             for rank, cache in enumerate(rank_caches)]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        for future in [pool.submit(builder.download_and_prepare) for builder in ranks]:
            future.result(timeout=2 * RANK_WAIT_SECONDS)
    assert len(assembled) == len(set(rank_caches))
    build_id = (tmp_path / "work" / BUILD_ID_FILE).read_text()
    for cache in set(rank_caches):
        assert [path.read_text() for path in (tmp_path / cache).rglob(BUILD_ID_FILE)] == [build_id]
    rows = ranks[0].as_dataset(split="train").to_list()
    assert len(rows) == 10 and ranks[1].as_dataset(split="train").to_list() == rows


def test_only_rank_0_runs_semdedup_and_the_other_ranks_wait_for_its_anchors(tmp_path):
    """k-means on different GPUs need not round alike, so every rank must build from rank 0's anchors: another rank
    never de-duplicates itself, it waits for anchors.json."""
    calls = []

    def counting_miner(rank: int) -> HardNegativeMiner:
        miner = thumbnail_miner()
        deduplicate = miner.deduplicate
        miner.deduplicate = lambda *args, **kwargs: calls.append(rank) or deduplicate(*args, **kwargs)
        return miner

    def rank(rank: int, world_size: int = 2, **kwargs) -> MaplePreferences:
        return _unbuilt(tmp_path, colour_square_source(), semdedup_clusters=2, miner=counting_miner(rank), rank=rank,
                        world_size=world_size, **kwargs)

    one_process = rank(0, world_size=1)  # the input check and the embeddings, as the ranks would leave them
    one_process.check_work_dir()
    one_process.embed_inputs(one_process.check_inputs()[1])
    with pytest.raises(TimeoutError, match="for SemDeDup results from rank 0 .*: anchors.json"):
        rank(1, wait_timeout=0.5).plan()
    assert calls == [] and not (tmp_path / "work" / "anchors.json").exists()
    anchors = rank(0).plan().anchor_rows
    assert calls == [0] and rank(1).plan().anchor_rows == anchors


def test_a_none_override_turns_semdedup_off_even_for_the_paper_config(tmp_path):
    """`datasets` ignores keyword overrides that are None: semdedup_clusters=None (CLI
    --semdedup-clusters 0) left the paper config's 50,000 clusters in place."""
    off = MaplePreferences(config_name="paper", semdedup_clusters=None, cache_dir=str(tmp_path / "cache"))
    assert off.config.semdedup_clusters is None
    default = MaplePreferences(config_name="paper", cache_dir=str(tmp_path / "cache"))
    assert default.config.semdedup_clusters == 50_000
    assert off._cache_dir != default._cache_dir


class _PlaceholderJudge(ColourJudge):
    """A stand-in judge whose tokenizer has a literal `<image>` special token, as SmolVLM's does."""

    def special_token_in(self, text: str) -> str | None:
        return "<image>" if "<image>" in text else None

    def score(self, images, texts):
        assert not any("<image>" in text for candidates in texts for text in candidates)
        return super().score(images, texts)


class _PlaceholderCaptioner(ColourCaptioner):
    def caption(self, anchors, negatives):
        return [captions + ["an <image> of a square"] for captions in super().caption(anchors, negatives)]


def test_texts_holding_a_judge_special_token_are_skipped_or_dropped(tmp_path):
    """Before the fix such a caption reached the judge, which broke its prompt (or crashed naming
    no row): source rows with one are now skipped with a reason, generated captions dropped."""
    source = colour_square_source(10, id=["tagged"], image=[colour_squares(1)["image"][0]], caption=["a red <image> square"])
    builder = _build(tmp_path, source_dataset=source, judge=_PlaceholderJudge(), captioner=_PlaceholderCaptioner())
    stats = builder.stats
    assert stats["skipped_by_reason"] == {"special token in caption": 1}
    assert stats["skipped"][0]["id"] == "tagged"
    assert stats["skipped"][0]["detail"] == "column 'caption' holds the judge's special token '<image>'"
    dataset = builder.as_dataset(split="train")
    assert len(dataset) == 10
    assert not any("<image>" in text for texts in dataset["candidate_texts"] for text in texts)


class _OverflowingJudge(ColourJudge):
    """A judge whose scores of its second call (the second shard's: one call scores both of a shard's candidate lists)
    are NaN, as a float16 judge's overflowing activations give."""

    def score(self, images, texts):
        scores = super().score(images, texts)
        return [torch.full_like(row, float("nan")) for row in scores] if self.calls == 2 else scores


def test_a_judge_score_that_is_not_an_alpha_stops_the_build_naming_shard_row_and_candidate(tmp_path):
    """NaN scores were written and the build reported success; training then refused the row much later."""
    with pytest.raises(JudgeOutputError, match=r"shard 1, row id 'square-003': the judge's img2txt_scores\[0\] is nan; expected an alpha"):
        _build(tmp_path, config_name="corpus-captions", judge=_OverflowingJudge())
    assert [path.name for path in (tmp_path / "work" / "shards").glob("*.parquet")] == ["shard-000000-000003.parquet"]


class _FaultyCaptioner(ColourCaptioner):
    """`ColourCaptioner` until its `fault`: a flat list of captions, an answer short of one pair, or a None caption."""

    def __init__(self, fault: str):
        self.fault = fault

    def caption(self, anchors, negatives):
        captions = super().caption(anchors, negatives)
        if self.fault == "flat":
            return [pair[0] for pair in captions]
        if self.fault == "short":
            return captions[:-1]
        return [[pair[0], None] for pair in captions]


@pytest.mark.parametrize("fault, message", [
    # the flat list's captions were read letter by letter: each letter a candidate text
    ("flat", r"shard 0, anchor source row 0 \(id 'square-000'\) with hard negative source row \d+: the captioner "
             r"returned 'a \w+ image, not \w+'; expected a list of texts \(strings\)\. Shards finished"),
    # the last pairs got no texts
    ("short", r"shard 0: the captioner returned 2 answers for 3 \(anchor, hard negative\) pairs; expected one list of "
              r"texts per pair"),
    # None became the candidate text "None"
    ("none", r"shard 0, anchor source row 0 \(id 'square-000'\) with hard negative source row \d+: the captioner "
             r"returned \['a \w+ image, not \w+', None\]; expected a list of texts"),
])
def test_a_captioner_answer_that_is_not_a_list_of_texts_per_pair_stops_the_build(tmp_path, fault, message):
    """The judge's answers were checked, the captioner's not: each of these built without an error."""
    with pytest.raises(CaptionerOutputError, match=message):
        _build(tmp_path, captioner=_FaultyCaptioner(fault))


def test_an_interrupted_image_embedding_keeps_its_finished_parts(tmp_path, monkeypatch):
    """A kill while embedding lost every embedding of the rank's slice: the rerun embedded all of them again."""
    import dataset_builders.builder as builder_module

    monkeypatch.setattr(builder_module, "EMBEDDING_PART_ROWS", 4)
    embedded = []

    def counting_miner(fail_after: int | None = None, batch_size: int = 2) -> HardNegativeMiner:
        encode = thumbnail_miner().encode_images

        def encode_images(images):
            if fail_after is not None and len(embedded) >= fail_after:
                raise KeyboardInterrupt  # the kill
            embedded.append(len(images))
            return encode(images)

        return HardNegativeMiner(encode_images, name="thumbnail-4x4", batch_size=batch_size)

    builder = _unbuilt(tmp_path, colour_square_source(10), miner=counting_miner(fail_after=3))  # 3 batches: part 0 and half of 1
    valid_rows = builder.check_inputs()[1]
    with pytest.raises(KeyboardInterrupt):
        builder.embed_inputs(valid_rows)
    embedded.clear()
    resumed = _unbuilt(tmp_path, colour_square_source(10), miner=counting_miner())
    embeddings = resumed.embed_inputs(valid_rows)
    assert embedded == [2, 2, 2]  # rows 4-9 only, in 3 batches: part 0 (rows 0-3) was kept
    reference = _unbuilt(tmp_path / "reference", colour_square_source(10), miner=counting_miner())
    assert torch.equal(embeddings, reference.embed_inputs(reference.check_inputs()[1]))
    assert not list((tmp_path / "work").glob("*.rows-*.pt"))  # the parts are gone once the slice is saved

    # a rerun with another miner batch size cuts other parts: it must not read these (a review found 11 embeddings
    # for 10 rows, silently)
    (tmp_path / "work" / "embeddings.pt").unlink()
    (tmp_path / "work" / "embeddings-0-of-1.pt").unlink()
    embedded.clear()
    with pytest.raises(KeyboardInterrupt):
        _unbuilt(tmp_path, colour_square_source(10), miner=counting_miner(fail_after=3)).embed_inputs(valid_rows)
    embedded.clear()
    wider = _unbuilt(tmp_path, colour_square_source(10), miner=counting_miner(batch_size=3))
    assert torch.equal(wider.embed_inputs(valid_rows), reference.embed_inputs(valid_rows))
    # parts of 3 rows (4 rounded down to whole batches of 3): the batches of one pass, whatever the parts
    assert embedded == [3, 3, 3, 1]


def test_a_rank_that_saves_its_embeddings_leaves_another_ranks_parts_alone(tmp_path, monkeypatch):
    """Each rank removes its own parts once its slice is saved; a peer killed mid-slice resumes from its parts, even
    when the other rank finishes while it is down."""
    import dataset_builders.builder as builder_module

    monkeypatch.setattr(builder_module, "EMBEDDING_PART_ROWS", 2)
    one_process = _unbuilt(tmp_path, colour_square_source(10), miner=thumbnail_miner(batch_size=2))
    valid_rows = one_process.check_inputs()[1]
    # rank 1's first part of its slice, rows [5, 10), left by a kill
    part = tmp_path / "work" / "embeddings-1-of-2.rows-000000000-000000002.pt"
    torch.save(one_process._embed_rows(valid_rows[5:7]), part)
    rank_0 = _unbuilt(tmp_path, colour_square_source(10), miner=thumbnail_miner(batch_size=2), rank=0, world_size=2,
                      wait_timeout=0.5)
    with pytest.raises(TimeoutError, match="still missing: embeddings-1-of-2.pt"):
        rank_0.embed_inputs(valid_rows)
    assert (tmp_path / "work" / "embeddings-0-of-2.pt").exists() and part.exists()


def test_an_embedding_part_of_the_wrong_length_is_a_damaged_checkpoint(tmp_path, monkeypatch):
    """A part is reused only if it holds one embedding per row its name covers: a short one would shift every later
    embedding onto another row."""
    import dataset_builders.builder as builder_module

    monkeypatch.setattr(builder_module, "EMBEDDING_PART_ROWS", 4)
    builder = _unbuilt(tmp_path, colour_square_source(10), miner=thumbnail_miner(batch_size=2))
    valid_rows = builder.check_inputs()[1]
    torch.save(torch.zeros(3, 48), tmp_path / "work" / "embeddings-0-of-1.rows-000000000-000000004.pt")
    with pytest.raises(DamagedCheckpoint, match=r"rows-000000000-000000004\.pt cannot be read \(ValueError: 3 embeddings for 4 rows\)"):
        builder.embed_inputs(valid_rows)


def test_an_interrupted_input_check_resumes_where_it_stopped(tmp_path, monkeypatch):
    """The input check decodes every source image; a kill lost all of it."""
    import dataset_builders.builder as builder_module

    monkeypatch.setattr(builder_module, "INPUT_CHECK_PART_ROWS", 4)
    extra = colour_squares(2)
    source = colour_square_source(8, id=["square-001", "broken"], image=[extra["image"][0], {"bytes": b"junk", "path": None}],
                     caption=["a duplicate id", "a red square"])
    reference = _unbuilt(tmp_path / "reference", source).check_inputs()

    checked, check = [], MaplePreferences._input_problem

    def interrupted_after_six(self, index, *args):
        if len(checked) == 6:
            raise KeyboardInterrupt  # the kill
        checked.append(index)
        return check(self, index, *args)

    monkeypatch.setattr(MaplePreferences, "_input_problem", interrupted_after_six)
    with pytest.raises(KeyboardInterrupt):
        _unbuilt(tmp_path, source).check_inputs()
    assert (tmp_path / "work" / "inputs-0-of-1.partial.json").exists()
    checked.clear()
    monkeypatch.setattr(MaplePreferences, "_input_problem", lambda self, index, *args: checked.append(index) or check(self, index, *args))
    assert _unbuilt(tmp_path, source).check_inputs() == reference  # the duplicate id after the checkpoint is still caught
    assert checked == [4, 5, 6, 7, 8, 9]  # rows 0-3 were checkpointed
    assert not (tmp_path / "work" / "inputs-0-of-1.partial.json").exists()
    assert [item.kind for item in reference[2]] == ["duplicate id", "unreadable image"]


@pytest.mark.parametrize("source", ["./images", "~/images", "data/images/train", "captions.csv"])
def test_a_missing_source_that_can_only_be_local_is_not_looked_up_on_the_hub(tmp_path, monkeypatch, source):
    """A Hub dataset id is "name" or "org/name": a missing path of more parts (or relative, or a file) is a local typo,
    said so at once rather than after a Hub round trip that fails with the Hub's words."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(SourceError, match=rf"^source {re.escape(source)}: no such file or folder \(a Hub dataset id is 'name' or 'org/name'\)$"):
        load_source(source, split="train")


def test_a_mistyped_relative_source_under_an_existing_folder_is_called_that(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "imgs").mkdir()
    with pytest.raises(SourceError, match=r"\(nor is it a local folder: imgs/ exists here, but not imgs/goood\)$"):
        load_source("imgs/goood", split="train")


def test_a_malformed_caption_table_of_an_image_folder_is_a_source_error_naming_the_source(tmp_path):
    """A CSV row with an extra field was pandas' bare "Error tokenizing data", a raw ParserError from the Python API."""
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(3):
        Image.new("RGB", (8, 8), (index * 80, 0, 0)).save(folder / f"{index}.png")
    (folder / "metadata.csv").write_text("file_name,caption\n0.png,a red square\n1.png,a square, extra\n2.png,x\n")
    with pytest.raises(SourceError, match=rf"^source {folder}: its data file {folder / 'metadata.csv'} cannot be read "
                                          r"\(.*Expected 2 fields"):
        load_source(str(folder), split="train")


def test_an_empty_or_broken_parquet_file_source_is_a_source_error_naming_it(tmp_path):
    """A lone parquet file of 0 rows was a traceback of datasets' DatasetGenerationError (pyarrow: "BatchSize must be
    greater than 0"), and one that is no parquet file pyarrow's bare "Parquet magic bytes not found", naming no file."""
    empty, broken = tmp_path / "empty.parquet", tmp_path / "broken.parquet"
    colour_square_source(2).select([]).to_parquet(str(empty))
    broken.write_bytes(b"not parquet")
    with pytest.raises(SourceError, match=rf"^source {empty} has no rows$"):
        load_source(str(empty), split="train")
    with pytest.raises(SourceError, match=rf"^source {broken}: its data files cannot be read \(ArrowInvalid: .*magic bytes"):
        load_source(str(broken), split="train")


def test_a_folder_of_parquet_files_without_rows_is_a_source_without_rows(tmp_path):
    """It was datasets' bare "Instruction "train" corresponds to no data!", a ValueError naming no folder (found by
    a review); a lone file of no rows already said this."""
    folder = tmp_path / "empty"
    folder.mkdir()
    for name in ("part-0.parquet", "part-1.parquet"):
        colour_square_source(2).select([]).to_parquet(str(folder / name))
    with pytest.raises(SourceError, match=rf"^source {folder} has no rows$"):
        load_source(str(folder), split="train", cache_dir=str(tmp_path / "cache"))
    # written by pyarrow, with an empty row group, which datasets fails on: "its data files cannot be read" (found by a
    # review of the fix); alone, or beside files with rows
    for name in ("part-0.parquet", "part-1.parquet"):
        pq.write_table(colour_square_source(2).select([]).data.table, folder / name)
    with pytest.raises(SourceError, match=rf"^source {folder} has no rows$"):
        load_source(str(folder), split="train", cache_dir=str(tmp_path / "cache"))
    colour_square_source(2).to_parquet(str(folder / "part-2.parquet"))
    with pytest.raises(SourceError, match=rf"^source {folder}: its data file {folder / 'part-0.parquet'} has no rows, "
                                          r"which datasets cannot read: remove it$"):
        load_source(str(folder), split="train", cache_dir=str(tmp_path / "cache"))


@pytest.mark.parametrize("table, text", [
    ("metadata.jsonl", ""), ("metadata.jsonl", "\n \n"), ("metadata.csv", "file_name,caption\n"),
    # a header with a line break in quotes, a BOM alone (found by a review)
    ("metadata.csv", '"file_\nname",caption\n'), ("metadata.jsonl", "\ufeff\n"),
])
@pytest.mark.parametrize("with_images", [True, False])
def test_an_image_folder_whose_caption_table_has_no_rows_is_a_source_error_naming_it(tmp_path, table, text, with_images):
    """datasets' image folder builder failed on it with an IndexError traceback (with images; the json builder with a
    StopIteration without), found by a walk through the docs."""
    folder = tmp_path / "source"
    folder.mkdir()
    if with_images:
        Image.new("RGB", (8, 8)).save(folder / "000.png")
    (folder / table).write_text(text)
    with pytest.raises(SourceError, match=rf"^source {folder}: its caption table {folder / table} has no rows$"):
        load_source(str(folder), split="train", cache_dir=str(tmp_path / "cache"))


@pytest.mark.parametrize("layout", ["file", "folder"])
@pytest.mark.parametrize(
    "split, error",
    [
        ("train[:abc]", r"^source_split 'train\[:abc\]' is not a split expression \(Unrecognized instruction format: "
                        r"train\[:abc\]\); expected a split, a slice of one \('train\[:1000\]', 'train\[10%:20%\]'\) or "
                        r"several joined by \+ \('train\+test'\) \(CLI --source-split\)$"),
        ("train[:200%]", r"^source_split 'train\[:200%\]' is not a split expression \(Percent slice boundaries"),
        ("train + train[:2]", r"^source_split 'train \+ train\[:2\]' is not a split expression \(it holds a space\)"),
        ("train[5:2]", r"^source .*: source_split 'train\[5:2\]' selects no rows \(split 'train' has 5\): pick rows "
                       r"with source_split=\.\.\. \(CLI --source-split\)$"),
        ("train[10:]", r"^source .*: source_split 'train\[10:\]' selects no rows \(split 'train' has 5\)"),
        ("train[:50%](pct1_dropremainder)", r"^source .*: source_split 'train\[:50%\]\(pct1_dropremainder\)' cannot "
                                            r"select rows: Using \"pct1_dropremainder\" rounding on a split with less than 100"),
    ],
)
def test_a_split_expression_that_selects_nothing_is_named_as_such(tmp_path, layout, split, error):
    """A malformed --source-split was reported as "its data files cannot be read" of a parquet file and as datasets'
    bare ValueError of a folder, a slice past the end likewise ("corresponds to no data"), and a reversed slice built
    from no rows (found by a review)."""
    (tmp_path / "folder").mkdir()
    source = tmp_path / "folder" / "train.parquet"
    colour_square_source(5).to_parquet(str(source))
    with pytest.raises(SourceError, match=error):
        load_source(str(source if layout == "file" else source.parent), split=split, cache_dir=str(tmp_path / "cache"))
    assert len(load_source(str(source), split="train[-2:]", cache_dir=str(tmp_path / "cache"))) == 2


def test_a_published_source_is_named_by_what_the_build_read():
    """A Hub id as it is; local files by their name, whatever is there now; an in-memory dataset as such (a review
    found it published as "local files (in-memory datasets.Dataset)")."""
    from dataset_builders.builder import IN_MEMORY_SOURCE, _published_source

    assert _published_source("org/name", read_from_local_files=False) == "org/name"
    assert _published_source("org/name", read_from_local_files=True) == "local files (name)"  # a staged copy, gone
    assert _published_source("/gone/alice/coco.parquet", read_from_local_files=False) == "local files (coco.parquet)"
    assert _published_source(IN_MEMORY_SOURCE, read_from_local_files=False) == IN_MEMORY_SOURCE
    assert _published_source(None, read_from_local_files=False) is None
