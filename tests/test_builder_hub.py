"""The Hub side, against the local Hub server: the builder reads its source by Hub id, publishes the
preference dataset with its card, and the dataset comes back identical, images included, through
`datasets.load_dataset` in a process that cannot import this project and through
`MaplePreferences.from_pretrained`."""

import json

from hub_server import CLIENT_TOKEN, run_client

REPO = "maple-org/colour-preferences"
SOURCE_REPO = "maple-org/colour-squares"

# Prints a digest of every row: ids, texts and scores as they are, images as SHA-256 of their pixels.
DIGEST = """
import hashlib, json
import numpy as np

def pixels(image):
    return hashlib.sha256(np.asarray(image.convert("RGB")).tobytes()).hexdigest()

def digest(dataset):
    return [
        [row["id"], row["caption"], pixels(row["image"]), [pixels(image) for image in row["candidate_images"]],
         row["candidate_texts"], row["txt2img_scores"], row["img2txt_scores"]]
        for row in dataset
    ]
"""

BUILD_AND_PUSH = DIGEST + """
import datasets
from dataset_builders import MaplePreferences
from dataset_builders.testing import ColourCaptioner, ColourJudge, colour_squares, thumbnail_miner

features = datasets.Features({"id": datasets.Value("string"), "image": datasets.Image(), "caption": datasets.Value("string")})
columns = colour_squares(6)
columns["id"].append("broken"); columns["image"].append({"bytes": b"junk", "path": None}); columns["caption"].append("x")
# The source itself comes from the Hub, by repo id.
datasets.Dataset.from_dict(columns, features=features).push_to_hub("%s")
builder = MaplePreferences(
    config_name="paper", source="%s",
    judge=ColourJudge(), captioner=ColourCaptioner(), miner=thumbnail_miner(),
    cache_dir="cache", work_dir="work", shard_size=4, semdedup_clusters=None, progress=False, source_license="cc0-1.0",
)
builder.download_and_prepare()
builder.push_to_hub("%s")
print(json.dumps(digest(builder.as_dataset(split="train"))))
""" % (SOURCE_REPO, SOURCE_REPO, REPO)

LOAD_WITH_DATASETS = DIGEST + """
from datasets import load_dataset
from huggingface_hub import DatasetCard

print(json.dumps({"rows": digest(load_dataset("%s", split="train")), "card": DatasetCard.load("%s").text}))
""" % (REPO, REPO)

LOAD_WITH_BUILDER = DIGEST + """
from dataset_builders import MaplePreferences

print(json.dumps(digest(MaplePreferences.from_pretrained("%s"))))
""" % REPO


def _last_json(output: str):
    return json.loads(output.strip().splitlines()[-1])


def test_push_then_load_back_gives_the_same_rows_images_and_card(hub_server, tmp_path):
    built = _last_json(run_client(hub_server, tmp_path, BUILD_AND_PUSH))
    files = hub_server.files(REPO, repo_type="dataset")
    assert any(path.startswith("paper/train-") and path.endswith(".parquet") for path in files)
    assert {"stats/paper/score_histograms.png", "stats/paper/stats.json"} <= set(files)
    assert hub_server.state.repo("dataset", REPO).summaries[-1] == "Describe config paper"

    published = _last_json(run_client(hub_server, tmp_path, LOAD_WITH_DATASETS, isolated=True))
    assert published["rows"] == built and len(built) == 6
    assert sorted(row[0] for row in built) == [f"square-{index:03d}" for index in range(6)]
    card = published["card"]
    assert "colour-judge" in card and "colour-captioner" in card
    assert "| unreadable image | 1 |" in card
    assert "![Histograms of the judge scores](stats/paper/score_histograms.png)" in card
    published_stats = json.loads(files["stats/paper/stats.json"])
    assert "skipped" not in published_stats and published_stats["skipped_by_reason"] == {"unreadable image": 1}

    assert _last_json(run_client(hub_server, tmp_path, LOAD_WITH_BUILDER)) == built


PUSH_TWO_CONFIGS = """
import os
import datasets
from dataset_builders import MaplePreferences
from dataset_builders.testing import ColourCaptioner, ColourJudge, colour_squares, thumbnail_miner

features = datasets.Features({"id": datasets.Value("string"), "image": datasets.Image(), "caption": datasets.Value("string")})
source = datasets.Dataset.from_dict(colour_squares(6), features=features)
token, built = os.environ["MAPLE_TEST_TOKEN"], {}
for name in ("corpus-captions", "paper"):
    builder = MaplePreferences(
        config_name=name, source_dataset=source, judge=ColourJudge(), captioner=ColourCaptioner(), miner=thumbnail_miner(),
        cache_dir="cache", work_dir="work-" + name, shard_size=4, semdedup_clusters=None, progress=False,
    )
    builder.download_and_prepare()
    builder.push_to_hub("%s", token=token)
    built[name] = builder.as_dataset(split="train")["candidate_texts"]
# each config loads back by its name, as built (the two differ in their text candidates)
assert built["corpus-captions"] != built["paper"]
for name in ("corpus-captions", "paper"):
    assert MaplePreferences.from_pretrained("%s", config_name=name, token=token)["candidate_texts"] == built[name], name
""" % (REPO + "-two", REPO + "-two")

LOAD_TWO_CONFIGS = """
import json
from datasets import load_dataset

from huggingface_hub import DatasetCard

rows = {name: list(load_dataset("%s", name, split="train")["id"]) for name in ("corpus-captions", "paper")}
print(json.dumps({"rows": rows, "card": DatasetCard.load("%s").text}))
""" % (REPO + "-two", REPO + "-two")


def test_a_second_config_pushed_to_the_repo_keeps_the_first_loadable_and_described(hub_server, tmp_path):
    """Before the fix the second push replaced README.md with a card holding only its own
    `configs` entry, and `load_dataset(repo, "corpus-captions")` failed; later the card still
    described only the last config pushed. Both pushes get their token as `push_to_hub(token=...)`, with no HF_TOKEN:
    every request (the second's read of the first config's stats too) must carry it. `MaplePreferences.from_pretrained`
    loads each config by its name."""
    hub_server.require_token(CLIENT_TOKEN)
    try:
        run_client(hub_server, tmp_path, PUSH_TWO_CONFIGS, HF_TOKEN="", MAPLE_TEST_TOKEN=CLIENT_TOKEN)
    finally:
        hub_server.require_token(None)
    loaded = _last_json(run_client(hub_server, tmp_path, LOAD_TWO_CONFIGS, isolated=True))
    assert sorted(loaded["rows"]) == ["corpus-captions", "paper"]
    assert all(sorted(ids) == [f"square-{index:03d}" for index in range(6)] for ids in loaded["rows"].values())
    card = loaded["card"]
    assert "This repo holds 2 configs: `corpus-captions`, `paper`." in card
    sections = card.split("## Config `")[1:]
    assert [section.split("`")[0] for section in sections] == ["corpus-captions", "paper"]
    # each section is its own config's: the first was built from the corpus captions, the second generated them
    assert "| Text candidates | corpus |" in sections[0] and "| Text candidates | generated |" in sections[1]
    assert "(stats/corpus-captions/score_histograms.png)" in sections[0] and "(stats/paper/score_histograms.png)" in sections[1]
    files = set(hub_server.files(REPO + "-two", repo_type="dataset"))
    assert {f"stats/{name}/score_histograms.png" for name in ("corpus-captions", "paper")} <= files


# A small corpus-captions build, ready to push (`builder`)
BUILT = """
import datasets
from dataset_builders import MaplePreferences
from dataset_builders.testing import ColourJudge, colour_squares, thumbnail_miner

features = datasets.Features({"id": datasets.Value("string"), "image": datasets.Image(), "caption": datasets.Value("string")})
builder = MaplePreferences(
    config_name="corpus-captions", source_dataset=datasets.Dataset.from_dict(colour_squares(6), features=features),
    judge=ColourJudge(), miner=thumbnail_miner(), cache_dir="cache", work_dir="work", shard_size=4, semdedup_clusters=None,
    progress=False,
)
builder.download_and_prepare()
"""

PUSH_UNDER_A_BARE_NAME = BUILT + """
print(builder.push_to_hub("bare-prefs", private=True))
"""


def test_a_bare_repo_name_is_pushed_under_the_users_namespace_private_if_asked(hub_server, tmp_path):
    """`create_repo("bare-prefs")` makes `<user>/bare-prefs`; every later call used the bare name and failed (404)."""
    from hub_server import USER

    assert run_client(hub_server, tmp_path, PUSH_UNDER_A_BARE_NAME).strip().splitlines()[-1] == f"{USER}/bare-prefs"
    assert hub_server.state.repo("dataset", f"{USER}/bare-prefs").private
    files = hub_server.files(f"{USER}/bare-prefs", repo_type="dataset")
    assert "README.md" in files and any(path.endswith(".parquet") for path in files)
    assert f'load_dataset("{USER}/bare-prefs"' in files["README.md"].decode()


PUSH_WHOSE_DATA_FAILS = BUILT + """
def fail(*args, **kwargs):
    raise ConnectionError("the data push broke off")

push = datasets.DatasetDict.push_to_hub
datasets.DatasetDict.push_to_hub = fail
try:
    builder.push_to_hub("%s")
except ConnectionError as error:
    print("failed:", error)
datasets.DatasetDict.push_to_hub = push
""" % (REPO + "-broken",)


def test_a_push_whose_data_fails_leaves_no_stats_or_card_for_the_config(hub_server, tmp_path):
    """Stats and card were pushed before the data: a failed data push left a card naming a config that was not there,
    with a `load_dataset` line that failed, and its stats made every later card name it again."""
    assert "failed: the data push broke off" in run_client(hub_server, tmp_path, PUSH_WHOSE_DATA_FAILS)
    files = hub_server.files(REPO + "-broken", repo_type="dataset")
    assert not [path for path in files if path.startswith("stats/")] and "README.md" not in files


PUSH_A_LOCAL_SOURCE = """
import datasets, json, os, shutil
from dataset_builders import JudgeEnsemble, MaplePreferences
from dataset_builders.testing import ColourJudge, colour_square_source, thumbnail_miner

os.makedirs("alice-private/staged")
colour_square_source(4).to_parquet("alice-private/staged/part-0.parquet")
local_judge = ColourJudge()
local_judge.name = os.path.abspath("alice-private/qwen-judge")  # an MLLMJudge loaded from a local folder is so named
local_judge.prompt = "Does the image show {text}?"  # members asking two questions: one "name: prompt" line each
builder = MaplePreferences(  # a relative folder, which reads like a Hub id once it is gone
    config_name="corpus-captions", source="alice-private/staged", judge=JudgeEnsemble([local_judge, ColourJudge()]),
    miner=thumbnail_miner(), cache_dir="cache", work_dir="work", semdedup_clusters=None, progress=False,
)
builder.download_and_prepare()
shutil.rmtree("alice-private")  # a staged copy, deleted once built: its path was published (found by a review helper)
builder.push_to_hub("maple-org/from-local")
print(json.dumps([builder.stats["source"], builder.stats["judge"]]))
"""


def test_a_pushed_build_names_a_local_source_by_its_name_only(hub_server, tmp_path):
    """The card and the published stats.json showed the source's full local path (a home folder, a user name), and
    so a judge's, loaded from a local folder, until a later fix."""
    local_source, local_judge = _last_json(run_client(hub_server, tmp_path, PUSH_A_LOCAL_SOURCE))
    assert local_source == "alice-private/staged"  # the local stats keep them
    assert local_judge == f"{tmp_path}/alice-private/qwen-judge + colour-judge"
    files = hub_server.files("maple-org/from-local", repo_type="dataset")
    card, stats = files["README.md"].decode(), json.loads(files["stats/corpus-captions/stats.json"])
    assert "alice-private" not in card and "alice-private" not in json.dumps(stats)
    assert stats["source"] == "local files (staged)" and "| Source images and captions | local files (staged) |" in card
    assert stats["judge"] == "local folder (qwen-judge) + colour-judge"
    assert stats["judge_prompt"] == "local folder (qwen-judge): Does the image show {text}?\ncolour-judge: colour distance"
    assert "| Judge | local folder (qwen-judge) + colour-judge |" in card
