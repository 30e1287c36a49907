"""`RPATrainer.push_to_hub` through the local Hub server: a LoRA run pushes the merged model, its processor and the
model card, a run with `hub_strategy="every_save"` its checkpoints as they are saved; a process that cannot import
this project loads the model by repo id and gets the same embeddings."""

import ast
import json

from hub_server import CLIENT_TOKEN, USER, files_holding, run_client

REPO_NAME = "rpa-tiny-lora"  # given without a namespace: the Hub puts the repo under the token's user
REPO = f"{USER}/{REPO_NAME}"

INPUTS = """
from PIL import Image, ImageDraw
TEXTS = ["a red square on the left", "a blue square on the right"]
IMAGES = [Image.new("RGB", (16, 16), colour) for colour in ("red", "blue")]
"""

TRAIN_AND_PUSH = INPUTS + """
import torch
from modeling_maple.lora import maple_lora_config
from modeling_maple.testing import build_tiny
from trainer import RPAConfig, RPATrainer
from trainer.testing import synthetic_preference_dataset

model, processor = build_tiny("mllm", seed=0)
args = RPAConfig(output_dir="{output_dir}", max_steps=2, per_device_train_batch_size=4, learning_rate=1e-2,
                 save_strategy="no", report_to="none", push_to_hub=True, hub_model_id="{repo_name}", hub_strategy="end")
trainer = RPATrainer(model, args=args, train_dataset=synthetic_preference_dataset(8), processing_class=processor,
                     peft_config=maple_lora_config(model, r=4, lora_alpha=4, lora_dropout=0.0))
trainer.train()
trainer.push_to_hub(dataset_name="maple-org/synthetic-preferences", tags=["my-tag"])
merged = trainer.model.merge_and_unload().eval()
text, image = merged.encode(processor, texts=TEXTS, images=IMAGES)
torch.save({{"text": text, "image": image}}, "{expected}")
"""

LOAD = INPUTS + """
import json, torch
from huggingface_hub import ModelCard
from transformers import AutoModel, AutoProcessor
expected = torch.load("{expected}")
model = AutoModel.from_pretrained("{repo}", trust_remote_code=True)
processor = AutoProcessor.from_pretrained("{repo}", trust_remote_code=True, backend="pil")  # as built
text, image = model.encode(processor, texts=TEXTS, images=IMAGES)
print(json.dumps({{
    "model_class": type(model).__module__,
    "identical": torch.allclose(text, expected["text"], atol=1e-6) and torch.allclose(image, expected["image"], atol=1e-6),
    "card_text": ModelCard.load("{repo}").text,
    "card_tags": ModelCard.load("{repo}").data.tags,
}}))
"""


def test_push_to_hub_uploads_a_loadable_merged_model_and_its_card(hub_server, tmp_path):
    paths = {"repo": REPO, "repo_name": REPO_NAME, "output_dir": tmp_path / "run", "expected": tmp_path / "expected.pt"}
    run_client(hub_server, tmp_path, TRAIN_AND_PUSH.format(**paths))
    loaded = json.loads(run_client(hub_server, tmp_path, LOAD.format(**paths), isolated=True).strip().splitlines()[-1])

    files = set(hub_server.files(REPO))
    assert {"config.json", "model.safetensors", "modeling_maple.py", "processor_config.json", "README.md"} <= files
    assert "adapter_config.json" not in files  # merged: AutoModel needs no PEFT
    assert loaded["model_class"].startswith("transformers_modules.") and loaded["identical"]
    assert "| Fine-tuning | LoRA (rank 4, alpha 4) on `" in loaded["card_text"] and "rpa_weight" in loaded["card_text"]
    assert f'from_pretrained("{REPO}"' in loaded["card_text"]  # the repo created, not the name asked for
    assert {"my-tag", "maple", "trl", "lora"} <= set(loaded["card_tags"])


TRAIN_WITH_CHECKPOINT_PUSHES = INPUTS + """
import os
import torch
from modeling_maple.testing import build_tiny
from trainer import RPAConfig, RPATrainer
from trainer.testing import synthetic_preference_dataset

model, processor = build_tiny("dual_encoder", seed=0)
# what an earlier LoRA run, evaluated at its end, left in output_dir: not this run's model's
os.makedirs("{output_dir}")
for name in ("eval_results.json", "all_results.json", "trainable_state.safetensors"):
    open(os.path.join("{output_dir}", name), "w").write("{{}}")
args = RPAConfig(output_dir="{output_dir}", max_steps=1, per_device_train_batch_size=4, save_strategy="steps",
                 save_steps=1, report_to="none", push_to_hub=True, hub_model_id="{repo}", hub_strategy="every_save")
trainer = RPATrainer(model, args=args, train_dataset=synthetic_preference_dataset(4), processing_class=processor)
trainer.model_card_kwargs = {{"dataset_name": "maple-org/prefs", "judge_id": "Qwen/Qwen2-VL-7B-Instruct", "tags": ["my-run"]}}
trainer.train()  # pushes the step-1 checkpoint only: no push_to_hub() at the end
text, image = trainer.model.eval().encode(processor, texts=TEXTS, images=IMAGES)
torch.save({{"text": text, "image": image}}, "{expected}")
"""


def test_checkpoints_pushed_during_training_load_without_the_package(hub_server, tmp_path):
    paths = {"repo": "maple-org/rpa-tiny-checkpoints", "output_dir": tmp_path / "run", "expected": tmp_path / "expected.pt"}
    run_client(hub_server, tmp_path, TRAIN_WITH_CHECKPOINT_PUSHES.format(**paths))
    pushed = set(hub_server.files(paths["repo"]))
    assert {"config.json", "modeling_maple.py", "configuration_maple.py"} <= pushed
    assert not {"eval_results.json", "all_results.json", "trainable_state.safetensors"} & pushed  # an earlier run's
    # the card pushed with a checkpoint names the data and the judge (it said "not recorded" for both before), and has
    # the run's tags
    card = hub_server.files(paths["repo"])["README.md"].decode()
    assert "maple-org/prefs" in card and "Qwen/Qwen2-VL-7B-Instruct" in card and "\n- my-run\n" in card
    loaded = json.loads(run_client(hub_server, tmp_path, LOAD.format(**paths), isolated=True).strip().splitlines()[-1])
    assert loaded["model_class"].startswith("transformers_modules.") and loaded["identical"]


JUDGE_OF_A_HUB_DATASET = """
from huggingface_hub import HfApi
from trainer.cli import preference_judge

api = HfApi()
api.create_repo("{repo}", repo_type="dataset", exist_ok=True)
for path, content in (("stats/paper/stats.json", b'{{"judge": "Qwen/Qwen2-VL-7B-Instruct"}}'), ("README.md", b"card")):
    api.upload_file(path_or_fileobj=content, path_in_repo=path, repo_id="{repo}", repo_type="dataset")
print(preference_judge("{repo}"))
# a second config's build: the repo's judge is ambiguous, a config's is not
api.upload_file(path_or_fileobj=b'{{"judge": "OpenGVLab/InternVL3-1B"}}', path_in_repo="stats/corpus-captions/stats.json",
                repo_id="{repo}", repo_type="dataset")
print(preference_judge("{repo}"), preference_judge("{repo}", "corpus-captions"))
"""


def test_the_judge_of_a_preference_dataset_on_the_hub_is_read_from_its_stats(hub_server, tmp_path):
    """`maple build-preferences --push-to-hub` uploads stats/<config>/stats.json: the model card names its judge."""
    printed = run_client(hub_server, tmp_path, JUDGE_OF_A_HUB_DATASET.format(repo=f"{USER}/judged-preferences"))
    assert printed.strip().splitlines()[-2:] == ["Qwen/Qwen2-VL-7B-Instruct", "None OpenGVLab/InternVL3-1B"]


TRAIN_ON_HUB_DATA_AND_PUSH = """
import os
from huggingface_hub import HfApi, get_token
from modeling_maple.testing import build_tiny
from trainer.cli import main
from trainer.testing import synthetic_preference_dataset

assert get_token() is None  # no HF_TOKEN, no saved login: --hub_token alone
token = os.environ["MAPLE_TEST_TOKEN"]
model, processor = build_tiny("dual_encoder", seed=0)
model.push_to_hub("{model_repo}", private=True, token=token)
processor.push_to_hub("{model_repo}", token=token)
HfApi(token=token).upload_file(path_or_fileobj=b"---\\nlicense: mit\\n---\\n", path_in_repo="README.md", repo_id="{model_repo}")
synthetic_preference_dataset(4).push_to_hub("{data_repo}", private=True, token=token)
HfApi(token=token).upload_file(path_or_fileobj=b'{{"judge": "Qwen/Qwen2-VL-7B-Instruct"}}',
                               path_in_repo="stats/default/stats.json", repo_id="{data_repo}", repo_type="dataset")
assert main(["--model_name_or_path", "{model_repo}", "--dataset_name", "{data_repo}", "--output_dir", "run",
             "--max_steps", "1", "--per_device_train_batch_size", "4", "--report_to", "none",
             "--save_strategy", "no",  # no checkpoint pushes
             "--push_to_hub", "--hub_model_id", "{repo}", "--hub_private_repo", "true", "--hub_token", token]) == 0
"""


def test_maple_train_pushes_the_model_with_a_card_naming_the_hub_data_and_its_judge(hub_server, tmp_path):
    """The model and the data are private, read with `--hub_token` (no HF_TOKEN, no saved login), as the stats that
    name the judge, the base model's licence and the push are; the token is in no file written or pushed."""
    repo, data_repo, model_repo = "maple-org/rpa-tiny-cli", "maple-org/cli-preferences", "maple-org/cli-base"
    run_client(hub_server, tmp_path, TRAIN_ON_HUB_DATA_AND_PUSH.format(repo=repo, data_repo=data_repo,
                                                                       model_repo=model_repo),
               HF_TOKEN="", MAPLE_TEST_TOKEN=CLIENT_TOKEN)
    files = hub_server.files(repo)
    assert {"config.json", "model.safetensors", "modeling_maple.py", "processor_config.json"} <= set(files)
    card = files["README.md"].decode()
    assert f"datasets:\n- {data_repo}\n" in card and "| Preference judge | `Qwen/Qwen2-VL-7B-Instruct` |" in card
    assert "\nlicense: mit\n" in card
    # transformers pickles the arguments into training_args.bin, which the push uploads: without the token
    assert "training_args.bin" in files and files_holding(tmp_path, CLIENT_TOKEN) == []
    assert not [name for name, content in files.items() if CLIENT_TOKEN.encode() in content]


PUSH_FAILURES = """
import contextlib, io, os, sys
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import httpx
from trainer import RPATrainer
from trainer.cli import main
from trainer.testing import synthetic_preference_dataset

synthetic_preference_dataset(4).save_to_disk("prefs")
argv = ["--tiny", "dual_encoder", "--dataset_name", "prefs", "--max_steps", "1", "--per_device_train_batch_size", "4",
        "--report_to", "none", "--save_strategy", "no", "--push_to_hub", "--hub_model_id", "maple-org/pushed"]
stderr = io.StringIO()
with contextlib.redirect_stderr(stderr):
    status = main([*argv, "--output_dir", "refused", "--hub_token", "hf_not_a_token"])
print(status, stderr.getvalue().strip().splitlines()[-1], sorted(os.listdir("refused")) if os.path.exists("refused") else None)

HfApi().create_repo("maple-org/public-model", private=False)
stderr = io.StringIO()
with contextlib.redirect_stderr(stderr):
    status = main([*argv[:-1], "maple-org/public-model", "--hub_private_repo", "true", "--output_dir", "public"])
print(status, stderr.getvalue().strip().splitlines()[-1])


def push_fails(trainer, *args, **kwargs):  # saves the model, as `push_to_hub` does first, then the commit fails
    trainer.args.push_to_hub = False  # (save_model would push)
    trainer.save_model()
    request = httpx.Request("POST", os.environ["HF_ENDPOINT"] + "/api/models/maple-org/pushed/commit/main")
    raise HfHubHTTPError("server error", response=httpx.Response(503, request=request))


RPATrainer.push_to_hub = push_fails
stderr = io.StringIO()
with contextlib.redirect_stderr(stderr):
    status = main([*argv, "--output_dir", "trained"])
print(status, stderr.getvalue().strip().splitlines()[-1], os.path.exists("trained/model.safetensors"))
"""


def test_maple_train_names_a_failed_push_in_one_line(hub_server, tmp_path):
    """A refused --hub_token (the repo is created as the trainer is made) and a push that fails at the end were
    tracebacks; the second said nothing of the trained model, which is saved. A private push to a public repo is
    refused before training."""
    output = run_client(hub_server, tmp_path, PUSH_FAILURES).strip().splitlines()
    refused, public, failed = output[0], output[1], output[-1]  # (the training logs its metrics before the last)
    # `create_repo(private=True, exist_ok=True)` leaves an existing public repo public: the model was published
    assert public == (f"1 maple train: error: --hub_private_repo: model repo 'maple-org/public-model' on {hub_server.url} "
                      "exists and is public, and a private push was asked for: nothing was pushed. Make the repo private "
                      "on the Hub first, or push to a new repo; nothing was trained")
    assert refused == (f"1 maple train: error: --push_to_hub: model repo 'maple-org/pushed' on {hub_server.url} refused "
                       "the token (HTTP 401): check the one used (--token (maple train: --hub_token) or token=, else "
                       "HF_TOKEN, else the one `hf auth login` saved): Invalid credentials in Authorization header; nothing was trained None")
    assert failed == (f"1 maple train: error: pushing failed: model repo 'maple-org/pushed' on {hub_server.url} could not "
                      "be written: HTTP 503 from the server. The trained model is saved in trained: upload it with "
                      "`hf upload maple-org/pushed trained . --exclude '_*' --exclude 'checkpoint-*'` True")


PUSH_TWICE = """
import contextlib, io, os
from datasets import DatasetDict
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import httpx
import trainer.cli
from trainer.cli import main
from trainer.testing import synthetic_preference_dataset

DatasetDict({"train": synthetic_preference_dataset(4), "test": synthetic_preference_dataset(4, seed=1)}).save_to_disk("prefs")
argv = ["--tiny", "dual_encoder", "--dataset_name", "prefs", "--max_steps", "1", "--per_device_train_batch_size", "4",
        "--report_to", "none", "--save_strategy", "no", "--push_to_hub", "--hub_model_id", "maple-org/pushed-twice"]
assert main([*argv, "--output_dir", "first", "--dataset_test_split", "test"]) == 0
print("FILES", sorted(HfApi().list_repo_files("maple-org/pushed-twice")))
assert main([*argv, "--output_dir", "second"]) == 0
print("FILES", sorted(HfApi().list_repo_files("maple-org/pushed-twice")))


def deleting_fails(repo_id, names, training_args):  # after the model's push, the clean-up commit fails
    request = httpx.Request("POST", os.environ["HF_ENDPOINT"] + f"/api/models/{repo_id}/commit/main")
    raise HfHubHTTPError("server error", response=httpx.Response(503, request=request))


assert main([*argv, "--output_dir", "third", "--dataset_test_split", "test"]) == 0
trainer.cli._delete_from_repo = deleting_fails
stderr = io.StringIO()
with contextlib.redirect_stderr(stderr):
    print("STATUS", main([*argv, "--output_dir", "fourth"]), stderr.getvalue().strip().splitlines()[-1])


def listing_fails(repo_id, training_args):  # after the model's push, listing the repo's files fails
    request = httpx.Request("GET", os.environ["HF_ENDPOINT"] + f"/api/models/{repo_id}/tree/main")
    raise HfHubHTTPError("server error", response=httpx.Response(503, request=request))


trainer.cli._earlier_runs_files = listing_fails
stderr = io.StringIO()
with contextlib.redirect_stderr(stderr):
    print("LISTING", main([*argv, "--output_dir", "fifth", "--dataset_test_split", "test"]),
          stderr.getvalue().strip().splitlines()[-1])
"""


def test_a_push_deletes_an_earlier_runs_results_from_the_repo(hub_server, tmp_path):
    """`Trainer.push_to_hub` uploads without deleting: an earlier run's eval_results.json and all_results.json stayed
    in the repo beside a model they do not describe (found by a review); a failed clean-up was reported as a failed
    push, advising to upload the model again (found by the diff review)."""
    output = run_client(hub_server, tmp_path, PUSH_TWICE).splitlines()
    first, second = (ast.literal_eval(line.removeprefix("FILES ")) for line in output if line.startswith("FILES "))
    assert {"eval_results.json", "all_results.json", "model.safetensors"} <= set(first)
    assert "model.safetensors" in second and not {"eval_results.json", "all_results.json"} & set(second)
    # a failed clean-up is not a failed push: the model is on the Hub, and uploading it again would not help
    status = next(line for line in output if line.startswith("STATUS "))
    assert status == (f"STATUS 1 maple train: error: the model is pushed, but deleting an earlier run's files from the "
                      f"repo failed: model repo 'maple-org/pushed-twice' on {hub_server.url} could not be written: "
                      "HTTP 503 from the server; delete them with `hf repos delete-files maple-org/pushed-twice eval_results.json "
                      "all_results.json`")
    # a failed listing names the files to look for (it raised an UnboundLocalError: no files to name were listed)
    listing = next(line for line in output if line.startswith("LISTING "))
    assert listing.startswith(f"LISTING 1 maple train: error: the model is pushed, but listing the repo's files to "
                              f"delete an earlier run's failed: model repo 'maple-org/pushed-twice' on {hub_server.url}")
    # ... only those this run did not write: its own results, pushed with it, are no earlier run's
    assert listing.endswith("; see whether an earlier run's trainable_state.safetensors, training_curves.png, "
                            "similarity_histograms.png are left in the repo beside this model")
