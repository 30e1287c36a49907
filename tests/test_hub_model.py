"""Round trip through the local Hub server: push a tiny MAPLE model, its processor, card and a
LoRA adapter; a fresh process that cannot import this project loads them by repo id
(`trust_remote_code=True`) and gets identical embeddings; the card's eval results parse."""

import json

import pytest

from hub_server import run_client

MODEL_REPO = "maple-org/tiny-maple"
LORA_REPO = "maple-org/tiny-maple-lora"

# Inputs both processes rebuild identically (numpy is all the isolated process shares with us).
INPUTS = """
import numpy as np
from PIL import Image
TEXTS = ["a red circle left of a blue square", "two green stars", "Yes"]
IMAGES = [Image.fromarray(np.random.default_rng(seed).integers(0, 256, (20, 28, 3), dtype=np.uint8)) for seed in range(3)]
"""

PUSH = INPUTS + """
import json, torch
from huggingface_hub import HfApi
from peft import get_peft_model
from model_cards import model_card_from_run
from modeling_maple.lora import maple_lora_config
from modeling_maple.testing import build_tiny
from evaluation.protocols import evaluate_quadruples

model, processor = build_tiny("mllm", seed=0)
model.push_to_hub("{model_repo}")
processor.push_to_hub("{model_repo}")
text, image = model.encode(processor, texts=TEXTS, images=IMAGES)

quadruples = [(IMAGES[0], IMAGES[1], TEXTS[0], TEXTS[1]), (IMAGES[1], IMAGES[2], TEXTS[1], TEXTS[2])]
results = {{"winoground": evaluate_quadruples(model, processor, quadruples, categories=["object", "relation"])}}
log_history = [{{"step": s, "loss": 2.0 / s, "learning_rate": 5e-4 * (1 - s / 4)}} for s in (1, 2, 3)]
card = model_card_from_run("{card_dir}", base_model=None, backbone="mllm", training_config={{"learning_rate": 5e-4, "rpa_weight": 0.2}},
                           log_history=log_history, eval_results=results, judge_id="Qwen/Qwen2-VL-7B-Instruct", repo_id="{model_repo}")
card.push_to_hub("{model_repo}")
HfApi().upload_file(path_or_fileobj="{card_dir}/training_curves.png", path_in_repo="training_curves.png", repo_id="{model_repo}")

peft_model = get_peft_model(model, maple_lora_config(model, r=4, lora_alpha=8))
generator = torch.Generator().manual_seed(0)
with torch.no_grad():  # LoRA's B starts at zero: make the adapter change the embeddings
    for name, parameter in peft_model.named_parameters():
        if "lora_B" in name:
            parameter.copy_(0.5 * torch.randn(parameter.shape, generator=generator))
peft_model.push_to_hub("{lora_repo}")
lora_text, lora_image = peft_model.encode(processor, texts=TEXTS, images=IMAGES)
assert not torch.allclose(lora_text, text), "the adapter should change the text embeddings"
torch.save({{"text": text, "image": image, "lora_text": lora_text, "lora_image": lora_image}}, "{expected}")
print(json.dumps(results))
"""

LOAD = INPUTS + """
import json, torch
from huggingface_hub import ModelCard
from peft import PeftModel
from transformers import AutoModel, AutoProcessor
expected = torch.load("{expected}")
model = AutoModel.from_pretrained("{model_repo}", trust_remote_code=True)
processor = AutoProcessor.from_pretrained("{model_repo}", trust_remote_code=True, backend="pil")  # as built
text, image = model.encode(processor, texts=TEXTS, images=IMAGES)
model_identical = torch.equal(text, expected["text"]) and torch.equal(image, expected["image"])
adapted = PeftModel.from_pretrained(model, "{lora_repo}")
lora_text, lora_image = adapted.encode(processor, texts=TEXTS, images=IMAGES)
card = ModelCard.load("{model_repo}")
print(json.dumps({{
    "model_class": type(model).__module__,
    "model_identical": model_identical,
    "lora_identical": torch.equal(lora_text, expected["lora_text"]) and torch.equal(lora_image, expected["lora_image"]),
    "eval_results": [[r.dataset_name, r.metric_config, r.metric_type, r.metric_value] for r in card.data.eval_results],
    "card_text": card.text,
}}))
"""


@pytest.fixture(scope="module")
def round_trip(hub_server, tmp_path_factory):
    """Push everything once (this project importable), then load everything once in an isolated
    process; returns (eval results as pushed, what the isolated process saw)."""
    folder = tmp_path_factory.mktemp("hub_model")
    paths = {"model_repo": MODEL_REPO, "lora_repo": LORA_REPO, "card_dir": folder / "card", "expected": folder / "expected.pt"}
    pushed = json.loads(run_client(hub_server, folder, PUSH.format(**paths)).strip().splitlines()[-1])
    loaded = json.loads(run_client(hub_server, folder, LOAD.format(**paths), isolated=True).strip().splitlines()[-1])
    return pushed, loaded


def test_model_and_processor_load_by_repo_id_without_the_package(hub_server, round_trip):
    _, loaded = round_trip
    assert {"config.json", "model.safetensors", "modeling_maple.py", "configuration_maple.py", "processing_maple.py",
            "processor_config.json"} <= set(hub_server.files(MODEL_REPO))
    assert loaded["model_class"].startswith("transformers_modules.")  # the checkpoint's own code ran
    assert loaded["model_identical"]


def test_card_metadata_carries_the_eval_results(hub_server, round_trip):
    pushed, loaded = round_trip
    assert {"README.md", "training_curves.png"} <= set(hub_server.files(MODEL_REPO))
    winoground = pushed["winoground"]
    expected = [["winoground", None, key, round(winoground[key], 2)] for key in ("text_score", "image_score", "group_score")]
    expected.append(["winoground", None, "delta_gap", round(winoground["modality_gap"]["delta_gap"], 4)])
    for category in ("object", "relation"):  # a category's scores: the metric's config, not the dataset's
        expected += [["winoground", category, key, round(winoground["per_category"][category][key], 2)]
                     for key in ("text_score", "image_score", "group_score")]
    assert sorted(loaded["eval_results"], key=str) == sorted(expected, key=str)
    assert "trust_remote_code=True" in loaded["card_text"] and "![Training curves](training_curves.png)" in loaded["card_text"]


def test_lora_adapter_loads_on_the_base_model(hub_server, round_trip):
    _, loaded = round_trip
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(hub_server.files(LORA_REPO))
    assert loaded["lora_identical"]



REVISIONS = """
import json, torch
from huggingface_hub import HfApi
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel
from evaluation.models import load_embedder
from modeling_maple.testing import tiny_tokenizer

repo, api = "maple-org/tiny-clip", HfApi()
tiny = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 4}
commits = []
for seed in (0, 1):
    torch.manual_seed(seed)
    CLIPModel(CLIPConfig(text_config=tiny, vision_config={**tiny, "image_size": 16, "patch_size": 4})).push_to_hub(repo)
    if seed == 0:
        CLIPImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}).push_to_hub(repo)
        tiny_tokenizer().push_to_hub(repo)
    commits.append(api.model_info(repo).sha)
first, _ = load_embedder(repo, revision=commits[0])
latest, _ = load_embedder(repo)
torch.manual_seed(0)
reference = CLIPModel(CLIPConfig(text_config=tiny, vision_config={**tiny, "image_size": 16, "patch_size": 4}))


def patch_weight(state_dict):
    return next(value for key, value in state_dict.items() if key.endswith("patch_embedding.weight"))


from trainer import RPAConfig
from trainer.cli import ModelArguments, load_model_and_processor

trained, _ = load_model_and_processor(
    ModelArguments(model_name_or_path=repo), RPAConfig(output_dir="out", model_init_kwargs={"revision": commits[0]})
)
from modeling_maple.lora import maple_lora_config
from trainer import RPATrainer
from trainer.testing import smoke_config, synthetic_preference_dataset

# LoRA on the base loaded at the first commit: its adapter names that commit as its base's revision
lora_trainer = RPATrainer(repo, args=smoke_config("lora", model_init_kwargs={"revision": commits[0]}),
                          train_dataset=synthetic_preference_dataset(4), peft_config=maple_lora_config(first, r=4))
lora_trainer.model.save_pretrained("adapter")
adapter_config = json.load(open("adapter/adapter_config.json"))
adapted, _ = load_embedder("adapter")  # its base at the revision its adapter_config records
expected = patch_weight(reference.state_dict())
print(json.dumps({"first": torch.equal(patch_weight(first.vision_tower.state_dict()), expected),
                  "adapter_base": [adapter_config["base_model_name_or_path"], adapter_config["revision"]] == [repo, commits[0]],
                  "adapted": torch.equal(patch_weight(adapted.get_base_model().vision_tower.state_dict()), expected),
                  "latest_differs": not torch.equal(patch_weight(latest.vision_tower.state_dict()), expected),
                  "maple_train": torch.equal(patch_weight(trained.vision_tower.state_dict()), expected)}))
"""


def test_a_plain_backbone_loads_at_the_revision_asked_for(hub_server, tmp_path):
    """`load_embedder(repo, revision=...)` checked the config at that revision but built the model from main; `maple
    train` refused a revision in --model_init_kwargs for a backbone; an adapter trained on it saved no revision, so its
    base loaded from main."""
    result = json.loads(run_client(hub_server, tmp_path, REVISIONS).strip().splitlines()[-1])
    assert result == {"first": True, "adapter_base": True, "adapted": True, "latest_differs": True, "maple_train": True}
