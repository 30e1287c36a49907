"""`accelerate launch -m dataset_builders.cli` with two processes: each rank builds its own shards,
rank 0 assembles, and the rows equal a one-process build."""

from pathlib import Path

import datasets

from dataset_builders import cli
from dataset_builders.builder import MaplePreferences
from dataset_builders.testing import colour_squares
from launch import launch_two_processes

REPO_ROOT = Path(__file__).resolve().parents[1]
BUILD_OPTIONS = [
    "--judge", "dataset_builders.testing:ColourJudge",
    "--captioner", "dataset_builders.testing:ColourCaptioner",
    "--miner", "dataset_builders.testing:thumbnail_miner",
    "--shard-size", "2", "--semdedup-clusters", "0", "--no-progress",
]


def test_accelerate_launch_with_two_processes_equals_one_process(tmp_path):
    features = datasets.Features({"id": datasets.Value("string"), "image": datasets.Image(), "caption": datasets.Value("string")})
    source = str(tmp_path / "source.parquet")
    datasets.Dataset.from_dict(colour_squares(9), features=features).to_parquet(source)

    launched = launch_two_processes("-m", "dataset_builders.cli", source, "--output-dir", str(tmp_path / "two"),
                                    *BUILD_OPTIONS, cwd=REPO_ROOT)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert "rank 1: built shards [1, 3]" in launched.stdout
    # only rank 0 assembles and summarises the dataset (and would push it)
    assert launched.stdout.count("MAPLE preference build") == 1 and "anchors           9" in launched.stdout

    assert cli.main([source, "--output-dir", str(tmp_path / "one"), *BUILD_OPTIONS]) == 0
    two = MaplePreferences.from_pretrained(str(tmp_path / "two" / "work" / "shards"))
    one = MaplePreferences.from_pretrained(str(tmp_path / "one" / "work" / "shards"))
    assert two.to_dict() == one.to_dict()
