"""Round trip of a preference dataset (Image and list-of-Image columns) and its card through the
local Hub server, loaded back by repo id in a process that cannot import this project."""

import json

from hub_server import run_client

DATASET_REPO = "maple-org/tiny-preferences"

# The rows, rebuilt identically by both processes (numpy + PIL only). Scores are binary fractions,
# exact in float32, so rows compare equal after the float32 round trip.
ROWS = """
import numpy as np
from PIL import Image

def picture(seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (12, 16, 3), dtype=np.uint8))

ROWS = [
    {
        "id": f"anchor-{i}",
        "image": picture(i),
        "caption": f"caption {i}",
        "candidate_images": [picture(i), picture(100 + i), picture(200 + i)],
        "candidate_texts": [f"caption {i}", f"generated {i}a", f"generated {i}b"],
        "txt2img_scores": [0.75, 0.25, 0.125],
        "img2txt_scores": [0.875, 0.5, 0.0625],
    }
    for i in range(3)
]
"""

PUSH = ROWS + """
import os
import datasets
from huggingface_hub import HfApi
from model_cards import dataset_card_from_stats

REPO = os.environ["MAPLE_TEST_REPO"]

features = datasets.Features({
    "id": datasets.Value("string"), "image": datasets.Image(), "caption": datasets.Value("string"),
    "candidate_images": datasets.Sequence(datasets.Image()), "candidate_texts": datasets.Sequence(datasets.Value("string")),
    "txt2img_scores": datasets.Sequence(datasets.Value("float32")), "img2txt_scores": datasets.Sequence(datasets.Value("float32")),
})
columns = {name: [row[name] for row in ROWS] for name in features}
stats = {"judge": "Qwen/Qwen2-VL-7B-Instruct", "judge_prompt": "Does the image align with the text?", "num_anchors": 3,
         "num_hard_negatives": 2, "source_license": "cc-by-4.0", "skipped_by_reason": {"unreadable image": 1}}
# Card first: push_to_hub then adds `configs` and `dataset_info` to the card's metadata and keeps its text.
HfApi().create_repo(REPO, repo_type="dataset")
dataset_card_from_stats(stats, repo_id=REPO).push_to_hub(REPO)
datasets.DatasetDict({"train": datasets.Dataset.from_dict(columns, features=features)}).push_to_hub(REPO)
"""

LOAD = ROWS + """
import json, os
import numpy as np
from datasets import load_dataset
from huggingface_hub import DatasetCard

REPO = os.environ["MAPLE_TEST_REPO"]
loaded = load_dataset(REPO, split="train")

def same_picture(a, b):
    return a.size == b.size and np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b))

checks = []
for got, want in zip(loaded, ROWS):
    checks.append(
        got["id"] == want["id"] and got["caption"] == want["caption"] and got["candidate_texts"] == want["candidate_texts"]
        and same_picture(got["image"], want["image"])
        and all(same_picture(a, b) for a, b in zip(got["candidate_images"], want["candidate_images"]))
        and got["txt2img_scores"] == want["txt2img_scores"] and got["img2txt_scores"] == want["img2txt_scores"]
    )
card = DatasetCard.load(REPO)
print(json.dumps({"num_rows": len(loaded), "rows_identical": checks, "features": str(loaded.features),
                  "license": card.data.license, "configs": card.data.to_dict().get("configs"), "card_text": card.text}))
"""


def test_preference_dataset_round_trip(hub_server, tmp_path):
    run_client(hub_server, tmp_path, PUSH, MAPLE_TEST_REPO=DATASET_REPO)
    files = hub_server.files(DATASET_REPO, repo_type="dataset")
    assert "README.md" in files and any(path.startswith("data/train-") and path.endswith(".parquet") for path in files)
    loaded = json.loads(run_client(hub_server, tmp_path, LOAD, isolated=True, MAPLE_TEST_REPO=DATASET_REPO).strip().splitlines()[-1])
    assert loaded["num_rows"] == 3 and loaded["rows_identical"] == [True, True, True]
    assert "Image(" in loaded["features"]
    assert loaded["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}]
    assert loaded["license"] == "cc-by-4.0"
    assert "Qwen/Qwen2-VL-7B-Instruct" in loaded["card_text"] and "| unreadable image | 1 |" in loaded["card_text"]
