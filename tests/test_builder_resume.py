"""Crash safety and multi-process builds, with real processes: a build killed by SIGKILL resumes
to the same rows as an uninterrupted build, and two ranks build the same rows as one process.

Subprocesses are started only where a separate process is the point (the one that gets killed,
the second rank); the reference build, the resumed build and rank 0 run in the test process."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import datasets
import pyarrow as pa
import pytest

from dataset_builders.builder import MaplePreferences
from dataset_builders.testing import ColourCaptioner, ColourJudge, colour_squares, thumbnail_miner

REPO_ROOT = Path(__file__).resolve().parents[1]
NUM_IMAGES, SHARD_SIZE = 16, 2
BUILD_SETTINGS = {"shard_size": SHARD_SIZE, "semdedup_clusters": 4, "semdedup_epsilon": 0.0008, "progress": False}

BUILD_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from dataset_builders.builder import MaplePreferences
    from dataset_builders.testing import ColourCaptioner, ColourJudge, thumbnail_miner

    source, out, delay, settings = sys.argv[1], sys.argv[2], float(sys.argv[3]), json.loads(sys.argv[4])
    builder = MaplePreferences(
        config_name="paper", source=source, cache_dir=out + "/cache", work_dir=out + "/work",
        judge=ColourJudge(delay=delay), captioner=ColourCaptioner(), miner=thumbnail_miner(), **settings,
    )
    report = builder.build_shards()
    print(json.dumps({"computed": report.computed, "reused": report.reused}), flush=True)
    """
)


def _builder(source_file: str, out: Path, **kwargs) -> MaplePreferences:
    return MaplePreferences(
        config_name="paper",
        source=source_file,
        cache_dir=str(out / "cache"),
        work_dir=out / "work",
        judge=ColourJudge(),
        captioner=ColourCaptioner(),
        miner=thumbnail_miner(),
        wait_timeout=180,
        **BUILD_SETTINGS,
        **kwargs,
    )


def _final_table(builder: MaplePreferences) -> pa.Table:
    builder.download_and_prepare()
    return builder.as_dataset(split="train").data.table


def _start(source_file: str, out: Path, *, delay: float = 0.0, rank: int = 0, world_size: int = 1) -> subprocess.Popen:
    env = {
        **os.environ,
        "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "OMP_NUM_THREADS": "1",
    }
    script = Path(source_file).parent / "build.py"
    return subprocess.Popen(
        [sys.executable, str(script), source_file, str(out), str(delay), json.dumps(BUILD_SETTINGS)],
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def source_file(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("source")
    features = datasets.Features({"id": datasets.Value("string"), "image": datasets.Image(), "caption": datasets.Value("string")})
    datasets.Dataset.from_dict(colour_squares(NUM_IMAGES), features=features).to_parquet(str(folder / "source.parquet"))
    (folder / "build.py").write_text(BUILD_SCRIPT)
    return str(folder / "source.parquet")


@pytest.fixture(scope="module")
def uninterrupted(source_file, tmp_path_factory) -> pa.Table:
    builder = _builder(source_file, tmp_path_factory.mktemp("uninterrupted"))
    table = _final_table(builder)
    assert table.num_rows >= 8, "SemDeDup keeps most anchors"
    assert builder.stats["skipped_by_reason"].get("near-duplicate", 0) > 0, "SemDeDup took part"
    return table


def test_sigkill_mid_build_then_rerun_equals_uninterrupted_build(source_file, uninterrupted, tmp_path):
    shard_dir = tmp_path / "work" / "shards"
    process = _start(source_file, tmp_path, delay=0.4)
    deadline = time.monotonic() + 180
    while len(list(shard_dir.glob("shard-*.parquet"))) < 2:
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "the build never wrote a shard"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    # shard-{start:06d}-{end:06d}.parquet: shard index = start // SHARD_SIZE
    finished_before_kill = sorted(int(path.name[6:12]) // SHARD_SIZE for path in shard_dir.glob("shard-*.parquet"))
    num_shards = -(-uninterrupted.num_rows // SHARD_SIZE)
    assert len(finished_before_kill) < num_shards, "the kill landed mid-build"

    resumed_builder = _builder(source_file, tmp_path)
    report = resumed_builder.build_shards()
    assert report.reused == finished_before_kill, "finished shards are not recomputed"
    assert sorted(report.computed + report.reused) == list(range(num_shards))
    resumed = _final_table(resumed_builder)
    assert resumed.equals(uninterrupted)
    assert len(set(resumed["id"].to_pylist())) == resumed.num_rows, "no duplicate anchors"
    assert not list(shard_dir.glob("*.tmp-*")), "half-written shards of the killed run are cleaned up"


# A killed run's temporary files of the checkpoints no process writes once every shard exists, which rank 0 removes
# then, whatever machine wrote them and whether or not the file system has locks
_KILLED_BEFORE_SHARDS = [
    "inputs-0-of-1.partial.json",
    "inputs-0-of-1.json",
    "embeddings-0-of-1.rows-000000000-000000008.pt",
    "embeddings-0-of-1.pt",
    "anchors.json",
    "shards/shard-000000-000004.parquet",
]


def test_a_rerun_removes_the_half_written_checkpoints_of_a_killed_run(source_file, uninterrupted, tmp_path):
    """Temporary files of a killed run's checkpoints (an embedding part's can be tens of MB) stayed in the work dir
    forever; only half-written shards went (found by a bug hunt). Then those of inputs.json, embeddings.pt (gigabytes)
    and stats.json stayed, which a slow rank may be writing still: the writer's lock (`maple.files.atomic_write`)
    now tells them apart, and a file being written stays. Only this machine's locks are tested, which it sees on any
    file system: another machine's inputs.json's and embeddings.pt's are kept, and its checkpoints' that no process
    writes once every shard exists go then, as they went before the locks (found by a review)."""
    import fcntl

    from maple.files import _host_label

    builder = _builder(source_file, tmp_path)
    builder.build_shards()
    work = tmp_path / "work"
    here, elsewhere = f".tmp-{_host_label()}-11-22", ".tmp-other-machine-11-22"
    killed = [
        *(name + here for name in [*_KILLED_BEFORE_SHARDS, "stats.json", "inputs.json", "embeddings.pt", "manifest.json"]),
        *(name + elsewhere for name in _KILLED_BEFORE_SHARDS),
    ]
    another_machine_writes = ["inputs.json" + elsewhere, "embeddings.pt" + elsewhere]
    for name in [*killed, *another_machine_writes]:
        (work / name).write_bytes(b"half")
    being_written = work / f"embeddings.pt.tmp-{_host_label()}-33-44"
    being_written.write_bytes(b"half")
    with open(being_written, "rb+") as writer:
        fcntl.flock(writer, fcntl.LOCK_EX)  # as a rank writing it holds it
        assert _final_table(_builder(source_file, tmp_path)).equals(uninterrupted)
    assert [name for name in killed if (work / name).exists()] == []
    assert being_written.exists()
    assert [name for name in another_machine_writes if (work / name).exists()] == another_machine_writes


def test_a_file_system_without_locks_has_a_killed_runs_shards_and_their_inputs_removed(source_file, uninterrupted,
                                                                                         tmp_path, monkeypatch):
    """Where `flock` fails (ENOSYS: some FUSE and network mounts), no temporary file can be told abandoned, and once
    the removal at assembly had given way to the locks, a killed run's half-written shards and pre-shard checkpoints
    stayed forever (found by a review). Once every shard exists no process writes them, locks or not."""
    import errno
    import fcntl
    import types

    import maple.files
    from maple.files import _host_label

    builder = _builder(source_file, tmp_path)
    builder.build_shards()
    work = tmp_path / "work"
    killed = [name + f".tmp-{_host_label()}-11-22" for name in _KILLED_BEFORE_SHARDS]
    for name in killed:
        (work / name).write_bytes(b"half")

    def no_locks(*args):
        raise OSError(errno.ENOSYS, "Function not implemented")

    # (maple.files' reference alone: `datasets` takes locks of its own)
    monkeypatch.setattr(maple.files, "fcntl", types.SimpleNamespace(flock=no_locks, LOCK_EX=fcntl.LOCK_EX, LOCK_NB=fcntl.LOCK_NB))
    assert _final_table(_builder(source_file, tmp_path)).equals(uninterrupted)
    assert [name for name in killed if (work / name).exists()] == []


def test_two_processes_build_the_same_rows_as_one(source_file, uninterrupted, tmp_path):
    rank1 = _start(source_file, tmp_path, rank=1, world_size=2)
    rank0 = _builder(source_file, tmp_path, rank=0, world_size=2)
    # rank 0 embeds its half of the images, waits for rank 1's half, builds the even shards,
    # waits for rank 1's odd shards and assembles the dataset.
    result = {}
    worker = threading.Thread(target=lambda: result.update(table=_final_table(rank0)))
    worker.start()
    stdout, stderr = rank1.communicate(timeout=240)
    worker.join(timeout=240)
    assert rank1.returncode == 0, stderr[-3000:]
    rank1_computed = json.loads(stdout.strip().splitlines()[-1])["computed"]
    assert rank1_computed and all(shard % 2 == 1 for shard in rank1_computed)
    assert (tmp_path / "work" / "embeddings-1-of-2.pt").exists(), "rank 1 embedded its half"
    assert (tmp_path / "work" / "anchors.json").exists(), "both ranks used rank 0's SemDeDup result"
    assert result["table"].equals(uninterrupted)
