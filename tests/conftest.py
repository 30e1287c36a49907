"""Test-wide settings. The Hub is unreachable here: every test runs offline, and the Hub round
trips go to a local Hub-compatible server (see `hub_server.py`). These variables are read by
huggingface_hub at import time, so they are set before any test module imports HF libraries."""

import csv
import json
import os
import subprocess
import sys
import sysconfig
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from hub_server import HubServer  # standard library only: imports nothing from HF

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
# Top-level packages of this project: an "isolated" child process must not be able to import any.
PROJECT_PACKAGES = ("modeling_maple", "trainer", "dataset_builders", "evaluation", "metrics", "model_cards", "maple")
HUB_TOKEN = "hf_maple_test_token"


@pytest.fixture(scope="session")
def hub_server():
    """A Hub-compatible server on 127.0.0.1 (see `hub_server.py`), shared by the session."""
    server = HubServer().start()
    yield server
    server.stop()


@pytest.fixture
def hub_python(hub_server, tmp_path) -> Callable[..., str]:
    """Run Python code in a child process that talks to `hub_server`; returns its stdout.

    HF_* variables are read when huggingface_hub is imported, so Hub traffic runs in children.
    Each call gets its own HF_HOME, so a loading process downloads everything afresh.
    `isolated=True` starts `python -I -S` with only the interpreter's site-packages on sys.path and
    no `.pth` files processed: neither the working tree nor the editable install is importable, as
    for a user who only has transformers and the Hub. A failing child fails the test with its stderr.
    """
    calls = iter(range(1_000_000))

    def run(code: str, isolated: bool = False, expect_failure: bool = False, **env_overrides: str) -> str:
        call = next(calls)
        env = {
            key: value for key, value in os.environ.items() if not key.startswith(("HF_", "PYTHON"))
        } | {
            "HF_ENDPOINT": hub_server.url,
            "HF_HUB_OFFLINE": "0",
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "HF_TOKEN": HUB_TOKEN,
            "HF_HOME": str(tmp_path / f"hf_home_{call}"),
            "OMP_NUM_THREADS": "1",
        } | env_overrides
        code = textwrap.dedent(code)
        if isolated:
            prelude = textwrap.dedent(
                f"""
                import importlib.util, sys
                sys.path.append({sysconfig.get_paths()["purelib"]!r})
                visible = [p for p in {PROJECT_PACKAGES!r} if importlib.util.find_spec(p) is not None]
                assert not visible, f"isolated child can import {{visible}}"
                """
            )
            command = [sys.executable, "-I", "-S", "-c", prelude + code]
        else:
            env["PYTHONPATH"] = str(REPO_ROOT)
            command = [sys.executable, "-c", code]
        result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        if expect_failure:
            assert result.returncode != 0, f"child unexpectedly succeeded:\n{result.stdout}"
            return result.stderr
        assert result.returncode == 0, f"child failed ({result.returncode}):\n{result.stderr[-6000:]}"
        return result.stdout

    return run


def _picture(seed: int, size: int = 24):
    """A small deterministic RGB picture (PIL)."""
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def _write_parquet(path: Path, columns: dict, image_columns: tuple[str, ...]) -> Path:
    import datasets

    table = datasets.Dataset.from_dict(columns)
    for column in image_columns:
        table = table.cast_column(column, datasets.Image())
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(str(path))
    return path


@pytest.fixture(scope="session")
def benchmark_sources(tmp_path_factory) -> dict[str, Path]:
    """Small local copies of the six benchmarks, each in its real schema (names, types, layout).

    coco: 3 images with 5, 5 and 6 captions (the Karpathy test split has a few images with 6);
    flickr30k: 2 images x 5 captions, as a folder like a Hub snapshot (data/test-*.parquet);
    winoground: 3 quadruples, collapsed_tag Object/Relation; naturalbench: metadata.json + images/;
    mmvp: Questions.csv + "MLLM_VLM Images/<Type>/<id>.jpg", 2 pairs in 2 categories;
    bivlc: 3 quadruples of types Replace, Swap, Add.
    """
    root = tmp_path_factory.mktemp("benchmarks")
    sources = {}
    coco_captions = [[f"photo {i} caption {j}" for j in range(5 + (i == 2))] for i in range(3)]
    sources["coco"] = _write_parquet(
        root / "coco.parquet",
        {
            "image": [_picture(i) for i in range(3)],
            "caption": coco_captions,
            "sentids": [[10 * i + j for j in range(len(c))] for i, c in enumerate(coco_captions)],
            "split": ["test"] * 3,
            "cocoid": [391895 + i for i in range(3)],
            "filename": [f"COCO_val2014_{i:012d}.jpg" for i in range(3)],
        },
        ("image",),
    )
    _write_parquet(
        root / "flickr" / "data" / "test-00000-of-00001.parquet",
        {
            "image": [_picture(10 + i) for i in range(2)],
            "caption": [[f"flickr {i} says {j}" for j in range(5)] for i in range(2)],
            "sentids": [[str(5 * i + j) for j in range(5)] for i in range(2)],
            "split": ["test"] * 2,
            "img_id": [str(i) for i in range(2)],
            "filename": [f"{1000092795 + i}.jpg" for i in range(2)],
        },
        ("image",),
    )
    sources["flickr30k"] = root / "flickr"
    sources["winoground"] = _write_parquet(
        root / "winoground.parquet",
        {
            "id": [0, 1, 2],
            "image_0": [_picture(20 + i) for i in range(3)],
            "image_1": [_picture(30 + i) for i in range(3)],
            "caption_0": ["an old person kisses a young person", "the dog chases the cat", "a red cup on a blue plate"],
            "caption_1": ["a young person kisses an old person", "the cat chases the dog", "a blue cup on a red plate"],
            "tag": ["Noun", "Noun", "Adjective-Color"],
            "secondary_tag": ["", "", ""],
            "num_main_preds": [1, 1, 2],
            "collapsed_tag": ["Object", "Relation", "Object"],
        },
        ("image_0", "image_1"),
    )
    natural = root / "NaturalBench-Retrieval"
    (natural / "images").mkdir(parents=True)
    metadata = []
    for index in range(2):
        for side in (0, 1):
            _picture(40 + 2 * index + side).save(natural / "images" / f"{index}_{side}.jpg")
        metadata.append({"index": index, "image_0": f"{index}_0.jpg", "image_1": f"{index}_1.jpg",
                         "caption_0": f"scene {index} with a man", "caption_1": f"scene {index} with a woman"})
    (natural / "metadata.json").write_text(json.dumps(metadata))
    sources["naturalbench"] = natural
    mmvp = root / "MMVP_VLM"
    rows = [("1", "Orientation and Direction", "The bird faces left."), ("2", "Orientation and Direction", "The bird faces right."),
            ("3", "Color and Appearance", "The car is red."), ("4", "Color and Appearance", "The car is blue.")]
    for question_id, category, _ in rows:
        (mmvp / "MLLM_VLM Images" / category).mkdir(parents=True, exist_ok=True)
        _picture(50 + int(question_id)).save(mmvp / "MLLM_VLM Images" / category / f"{question_id}.jpg")
    with (mmvp / "Questions.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([("Question ID", "Type", "Statement"), *rows])
    sources["mmvp"] = mmvp
    sources["bivlc"] = _write_parquet(
        root / "bivlc.parquet",
        {
            "image": [_picture(60 + i) for i in range(3)],
            "caption": ["a cat on a mat", "a man rides a horse", "a bowl of fruit"],
            "negative_caption": ["a dog on a mat", "a horse rides a man", "a bowl of fruit and a knife"],
            "negative_image": [_picture(70 + i) for i in range(3)],
            "type": ["Replace", "Swap", "Add"],
            "subtype": ["Object", "Relation", "Object"],
        },
        ("image", "negative_image"),
    )
    return sources
