"""Test-wide settings. The Hub is unreachable here: every test runs offline, and the Hub round
trips go to a local Hub-compatible server (see `hub_server.py`). These variables are read by
huggingface_hub at import time, so they are set before any test module imports HF libraries."""

import atexit
import csv
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from hub_server import HubServer  # standard library only: imports nothing from HF

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Each test process gets an HF_HOME of its own: transformers copies a checkpoint's remote code into
# HF_HOME/modules/transformers_modules/<folder name>/ without a lock, so two xdist workers loading same-named folders
# at once could import a file the other was rewriting. Nothing of the user's Hub cache or token is read or written.
_HF_HOME = tempfile.mkdtemp(prefix="maple-tests-hf-home-")
atexit.register(shutil.rmtree, _HF_HOME, ignore_errors=True)
os.environ["HF_HOME"] = _HF_HOME
for _variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_ASSETS_CACHE", "HF_XET_CACHE", "HF_MODULES_CACHE",
                  "HF_DATASETS_CACHE", "TRANSFORMERS_CACHE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH"):
    os.environ.pop(_variable, None)  # each would win over HF_HOME
# Expected values here are float32 CPU numbers; on a GPU, training would default to bf16 and cuDNN to TF32. So CUDA
# stays hidden (subprocesses too), except with MAPLE_TEST_CUDA=1, which runs test_cuda.py's checks of the GPU paths.
if os.environ.get("MAPLE_TEST_CUDA") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""



@pytest.fixture(scope="session")
def hub_server():
    """A Hub-compatible server on 127.0.0.1 (see `hub_server.py`), shared by the session."""
    server = HubServer().start()
    yield server
    server.stop()


@pytest.fixture
def similarity_dtypes(monkeypatch) -> list[tuple]:
    """What the trainer's losses are given, one entry per `_candidate_similarities` call: the text and image
    embeddings' dtypes, the similarities' dtypes, and whether autocast was on for their device."""
    import torch

    from trainer import rpa_trainer

    seen, candidate_similarities_of = [], rpa_trainer._candidate_similarities

    def candidate_similarities(text_embeds, image_embeds, inputs):
        similarities = candidate_similarities_of(text_embeds, image_embeds, inputs)
        seen.append((text_embeds.dtype, image_embeds.dtype, *(tensor.dtype for tensor in similarities),
                     torch.is_autocast_enabled(text_embeds.device.type)))
        return similarities

    monkeypatch.setattr(rpa_trainer, "_candidate_similarities", candidate_similarities)
    return seen


def make_picture(seed: int, size: int = 24):
    """A small deterministic RGB picture (PIL)."""
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def write_parquet(path: Path, columns: dict, image_columns: tuple[str, ...]) -> Path:
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
    sources["coco"] = write_parquet(
        root / "coco.parquet",
        {
            "image": [make_picture(i) for i in range(3)],
            "caption": coco_captions,
            "sentids": [[10 * i + j for j in range(len(c))] for i, c in enumerate(coco_captions)],
            "split": ["test"] * 3,
            "cocoid": [391895 + i for i in range(3)],
            "filename": [f"COCO_val2014_{i:012d}.jpg" for i in range(3)],
        },
        ("image",),
    )
    write_parquet(
        root / "flickr" / "data" / "test-00000-of-00001.parquet",
        {
            "image": [make_picture(10 + i) for i in range(2)],
            "caption": [[f"flickr {i} says {j}" for j in range(5)] for i in range(2)],
            "sentids": [[str(5 * i + j) for j in range(5)] for i in range(2)],
            "split": ["test"] * 2,
            "img_id": [str(i) for i in range(2)],
            "filename": [f"{1000092795 + i}.jpg" for i in range(2)],
        },
        ("image",),
    )
    sources["flickr30k"] = root / "flickr"
    sources["winoground"] = write_parquet(
        root / "winoground.parquet",
        {
            "id": [0, 1, 2],
            "image_0": [make_picture(20 + i) for i in range(3)],
            "image_1": [make_picture(30 + i) for i in range(3)],
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
            make_picture(40 + 2 * index + side).save(natural / "images" / f"{index}_{side}.jpg")
        metadata.append({"index": index, "image_0": f"{index}_0.jpg", "image_1": f"{index}_1.jpg",
                         "caption_0": f"scene {index} with a man", "caption_1": f"scene {index} with a woman"})
    (natural / "metadata.json").write_text(json.dumps(metadata))
    sources["naturalbench"] = natural
    mmvp = root / "MMVP_VLM"
    rows = [("1", "Orientation and Direction", "The bird faces left."), ("2", "Orientation and Direction", "The bird faces right."),
            ("3", "Color and Appearance", "The car is red."), ("4", "Color and Appearance", "The car is blue.")]
    for question_id, category, _ in rows:
        (mmvp / "MLLM_VLM Images" / category).mkdir(parents=True, exist_ok=True)
        make_picture(50 + int(question_id)).save(mmvp / "MLLM_VLM Images" / category / f"{question_id}.jpg")
    with (mmvp / "Questions.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([("Question ID", "Type", "Statement"), *rows])
    sources["mmvp"] = mmvp
    sources["bivlc"] = write_parquet(
        root / "bivlc.parquet",
        {
            "image": [make_picture(60 + i) for i in range(3)],
            "caption": ["a cat on a mat", "a man rides a horse", "a bowl of fruit"],
            "negative_caption": ["a dog on a mat", "a horse rides a man", "a bowl of fruit and a knife"],
            "negative_image": [make_picture(70 + i) for i in range(3)],
            "type": ["Replace", "Swap", "Add"],
            "subtype": ["Object", "Relation", "Object"],
        },
        ("image", "negative_image"),
    )
    return sources
