"""`maple eval MODEL --push-to-hub` against the local Hub server: loads MODEL by repo id, evaluates,
and rewrites the evaluation section and `model-index` of the card on the Hub."""

import json
import re

from hub_server import run_client

REPO = "maple-org/tiny-dual-encoder"

PUSH_EVAL_AND_PUSH_RESULTS = """
import os, sys
from evaluation.cli import main
from model_cards import model_card_from_run
from modeling_maple.testing import build_tiny

repo = os.environ["MAPLE_TEST_REPO"]
BIVLC_COPY = "maple-org/bivlc-copy"
model, processor = build_tiny("dual_encoder", seed=0)
model.push_to_hub(repo)
processor.push_to_hub(repo)
first = {"winoground": {"text_score": 10.0, "image_score": 5.0, "group_score": 2.5,
                        "modality_gap": {"w_dist": 0.3, "w_disc": 0.1, "delta_gap": 3.0}}}
model_card_from_run("card", base_model=None, backbone="dual_encoder", training_config={}, log_history=[],
                    eval_results=first, repo_id=repo).push_to_hub(repo)
# Results pushed to a card must come from the Hub: the benchmark is read from a copy there.
import datasets
datasets.load_dataset("parquet", data_files=os.environ["MAPLE_TEST_BIVLC"], split="train").push_to_hub(BIVLC_COPY, split="test")
argv = [repo, "--benchmarks", "bivlc", "--source", "bivlc=" + BIVLC_COPY, "--out", "eval_out"]
assert main(argv + ["--push-to-hub"]) == 0
print("-- rerun after the push --")
assert main(argv) == 0  # the push made a new commit: the weights may have changed, so bivlc is recomputed ...
print("-- rerun --")
assert main(argv) == 0  # ... and then read back
"""


def test_maple_eval_loads_by_repo_id_and_pushes_results_into_the_card(hub_server, benchmark_sources, tmp_path):
    output = run_client(hub_server, tmp_path, PUSH_EVAL_AND_PUSH_RESULTS, MAPLE_TEST_REPO=REPO, MAPLE_TEST_BIVLC=str(benchmark_sources["bivlc"]))
    _, after_push, rerun = output.split("-- rerun")
    assert re.search(r"bivlc: stored result is from another model state \(Hub commit [0-9a-f]{40} then, [0-9a-f]{40} now\), recomputing\n", after_push)
    assert "bivlc already done" in rerun and "evaluating" not in rerun
    results = json.loads((tmp_path / "eval_out" / "results.json").read_text())[REPO]["bivlc"]
    card = hub_server.files(REPO)["README.md"].decode()
    assert f"| bivlc | swap | {results['per_category']['swap']['text_score']:.1f} |" in card
    assert "| winoground |" not in card and "## Usage" in card  # the evaluation section was replaced, the rest kept
    assert "name: bivlc" in card and "config: replace" in card and "name: winoground" not in card  # model-index
    assert "type: maple-org/bivlc-copy" in card  # the dataset the results come from, not the official BiVLC
    # the histograms of the new results replace the run's, linked from the new section
    assert hub_server.files(REPO)["similarity_histograms.png"].startswith(b"\x89PNG")
    assert card.count("![Similarity histograms](similarity_histograms.png)") == 1


PUSH_WITHOUT_A_CARD = """
import os, sys
from huggingface_hub import HfApi
from evaluation.cli import main
from modeling_maple.testing import build_tiny

repo = "maple-org/no-card"
model, processor = build_tiny("dual_encoder", seed=0)
model.save_pretrained("ckpt")
processor.save_pretrained("ckpt")
HfApi().create_repo(repo)
HfApi().upload_folder(repo_id=repo, folder_path="ckpt")  # no README.md
import contextlib, io
stderr = io.StringIO()
with contextlib.redirect_stderr(stderr):
    try:
        main([repo, "--benchmarks", "bivlc", "--source", "bivlc=" + os.environ["MAPLE_TEST_BIVLC"], "--push-to-hub"])
    except SystemExit as exit:
        assert exit.code == 2
print(stderr.getvalue())
import datasets
datasets.load_dataset("parquet", data_files=os.environ["MAPLE_TEST_BIVLC"], split="train").push_to_hub("maple-org/bivlc-train")
stderr = io.StringIO()
with contextlib.redirect_stderr(stderr):  # a copy pushed with the default split, "train"
    assert main([repo, "--benchmarks", "bivlc", "--source", "bivlc=maple-org/bivlc-train", "--out", "eval_train"]) == 2
print(stderr.getvalue())
for config in ("full", "small"):
    datasets.load_dataset("parquet", data_files=os.environ["MAPLE_TEST_BIVLC"], split="train").push_to_hub(
        "maple-org/bivlc-configs", config_name=config, split="test")
stderr = io.StringIO()
with contextlib.redirect_stderr(stderr):
    assert main([repo, "--benchmarks", "bivlc", "--source", "bivlc=maple-org/bivlc-configs", "--out", "eval_configs"]) == 2
print(stderr.getvalue())
datasets.load_dataset("parquet", data_files=os.environ["MAPLE_TEST_BIVLC"], split="train").push_to_hub("maple-org/bivlc-copy", split="test")
assert main([repo, "--benchmarks", "bivlc", "--source", "bivlc=maple-org/bivlc-copy", "--out", "eval_out", "--push-to-hub"]) == 0
"""


def test_push_refuses_local_benchmark_copies_and_writes_a_card_where_there_is_none(hub_server, benchmark_sources, tmp_path):
    """A local copy (maybe a subset) was published under the official benchmark's id; a repo without README.md failed
    the push with HTTP 404."""
    output = run_client(hub_server, tmp_path, PUSH_WITHOUT_A_CARD, MAPLE_TEST_BIVLC=str(benchmark_sources["bivlc"]))
    assert "--push-to-hub publishes results under the benchmarks' Hub datasets, but bivlc=" in output
    assert "maple-org/bivlc-train: benchmark 'bivlc' is read from the 'test' split, which this dataset lacks" in output
    # it was a traceback of datasets' ValueError
    assert ("maple-org/bivlc-configs: benchmark 'bivlc' is read from a dataset's default config, and this one has several "
            "and no default; push a copy of the benchmark alone (push_to_hub without config_name): Config name is missing. "
            "Please pick one among the available configs: ['full', 'small']") in output
    card = hub_server.files("maple-org/no-card")["README.md"].decode()
    assert "name: bivlc" in card and "type: maple-org/bivlc-copy" in card and "| bivlc |" in card
    assert "model-index:\n- name: maple-org/no-card\n" in card  # the card names no model: the results are the repo's


PUSH_WHILE_THE_HUB_FAILS = """
from evaluation.cli import push_results

try:
    push_results("maple-org/keep-card", {"bivlc": {"text_score": 50.0, "image_score": 25.0, "group_score": 25.0}})
except Exception as error:
    print("push failed:", type(error).__name__)
"""


def test_a_hub_that_fails_to_serve_the_card_does_not_get_a_bare_one_pushed(hub_server, tmp_path):
    """A 5xx on README.md (LocalEntryNotFoundError, an EntryNotFoundError) was taken for a repo without a card, and
    the push replaced the card, licence and text included, with the evaluation section alone."""
    run_client(hub_server, tmp_path, """
        from huggingface_hub import HfApi, ModelCard, ModelCardData
        HfApi().create_repo("maple-org/keep-card")
        ModelCard.from_template(ModelCardData(license="mit"), template_str="---\\n{{ card_data }}\\n---\\n## Usage\\nkeep me\\n").push_to_hub("maple-org/keep-card")
        """)
    hub_server.fail_next("maple-org/keep-card", 500, times=9)  # the card read gives up; the push after it would not
    assert "push failed: LocalEntryNotFoundError" in run_client(hub_server, tmp_path, PUSH_WHILE_THE_HUB_FAILS)
    card = hub_server.files("maple-org/keep-card")["README.md"].decode()
    assert "license: mit" in card and "keep me" in card


PUSH_TWO_BENCHMARKS_ONE_AFTER_THE_OTHER = """
from huggingface_hub import HfApi
from evaluation.cli import push_results

HfApi().create_repo("maple-org/two-pushes")
push_results("maple-org/two-pushes", {"coco": {key: 40.0 for key in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5",
                                                                    "t2i_r10")}}, dataset_ids={"coco": "maple-org/coco-copy"})
push_results("maple-org/two-pushes", {"bivlc": {"text_score": 50.0, "image_score": 25.0, "group_score": 25.0}})
push_results("maple-org/two-pushes", {"coco": {key: 41.0 for key in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5",
                                                                    "t2i_r10")}})  # now from the official source
"""


def test_a_push_of_one_benchmark_keeps_the_results_pushed_for_another(hub_server, tmp_path):
    """`maple eval --benchmarks winoground --push-to-hub` replaced the card's evaluation section and model-index
    with winoground alone: COCO results pushed before were gone. A benchmark pushed again takes its new results and
    source."""
    from evaluation.benchmarks import BENCHMARKS

    run_client(hub_server, tmp_path, PUSH_TWO_BENCHMARKS_ONE_AFTER_THE_OTHER)
    repo = hub_server.state.repo("model", "maple-org/two-pushes")
    # the repo's first commit, then one per push: card and record together (a failed push leaves both as they were)
    assert repo.summaries == ["initial commit"] + ["Add MAPLE evaluation results"] * 3
    after_bivlc, card = (files["README.md"].content.decode() for files in list(repo.commits.values())[2:])
    assert "| coco | 40.0 |" in after_bivlc and "| bivlc | all | 50.0 | 25.0 | 25.0 |" in after_bivlc
    assert "name: coco" in after_bivlc and "type: maple-org/coco-copy" in after_bivlc and "name: bivlc" in after_bivlc
    assert "| coco | 41.0 |" in card and "| bivlc | all | 50.0 | 25.0 | 25.0 |" in card
    assert f"type: {BENCHMARKS['coco'].hub_id}" in card and "maple-org/coco-copy" not in card


PUSH_AFTER_THE_WEIGHTS_CHANGED = """
from huggingface_hub import HfApi, ModelCard
from evaluation.cli import push_results
from modeling_maple.testing import build_tiny

repo = "maple-org/retrained"
coco = {key: 40.0 for key in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")}
bivlc = {"text_score": 50.0, "image_score": 25.0, "group_score": 25.0}
build_tiny("dual_encoder", seed=0)[0].push_to_hub(repo)
print("first:", push_results(repo, {"coco": coco}))
card = ModelCard.load(repo)
card.text += "\\nedited by hand\\n"
card.push_to_hub(repo)  # a commit that leaves the weights as they are
print("card edited:", push_results(repo, {"bivlc": bivlc}))
build_tiny("dual_encoder", seed=1)[0].push_to_hub(repo)  # retrained
print("retrained:", push_results(repo, {"bivlc": {**bivlc, "group_score": 30.0}}))
"""


def test_a_push_drops_the_results_pushed_for_other_weights(hub_server, tmp_path):
    """A model retrained and pushed again kept on its card the scores of the weights it replaced, for every benchmark
    not evaluated again: they were merged with the new ones as if of one model."""
    output = run_client(hub_server, tmp_path, PUSH_AFTER_THE_WEIGHTS_CHANGED)
    assert "first: []" in output and "card edited: []" in output and "retrained: ['coco']" in output
    repo = hub_server.state.repo("model", "maple-org/retrained")
    edited, retrained = (files["README.md"].content.decode() for files in list(repo.commits.values())[-3::2])
    assert "| coco | 40.0 |" in edited and "| bivlc | all | 50.0 | 25.0 | 25.0 |" in edited
    assert "| coco |" not in retrained and "name: coco" not in retrained and "| bivlc | all | 50.0 | 25.0 | 30.0 |" in retrained
    record = json.loads(hub_server.files("maple-org/retrained")["maple_eval_results.json"])
    assert set(record["results"]) == set(record["weights"]) == {"bivlc"}
    assert "model.safetensors" in record["weights"]["bivlc"] and "README.md" not in record["weights"]["bivlc"]


PUSH_AFTER_A_RECORD_WITHOUT_WEIGHTS = """
import json
from huggingface_hub import HfApi
from evaluation.cli import push_results
from modeling_maple.testing import build_tiny

repo = "maple-org/legacy"
coco = {key: 40.0 for key in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")}
histograms = {"bin_edges": [-1.0, 0.0, 1.0], "matched": [0, 3], "mismatched": [2, 1], "text_text": [1, 2]}
bivlc = {"text_score": 50.0, "image_score": 25.0, "group_score": 25.0, "similarity_histograms": histograms}
build_tiny("dual_encoder", seed=0)[0].push_to_hub(repo)
legacy = {"results": {"bivlc": bivlc}, "dataset_ids": {}}  # as pushed before weights were recorded
HfApi().upload_file(path_or_fileobj=json.dumps(legacy).encode(), path_in_repo="maple_eval_results.json", repo_id=repo)
print("legacy record:", push_results(repo, {"coco": coco}))
print("histograms drawn:", "similarity_histograms.png" in HfApi().list_repo_files(repo))
# an `maple eval --out .` folder's results uploaded with the model: not a file loading reads
HfApi().upload_file(path_or_fileobj=b"{}", path_in_repo="results.json", repo_id=repo)
winoground = {"text_score": 30.0, "image_score": 20.0, "group_score": 10.0}
print("results uploaded:", push_results(repo, {"winoground": winoground}))
build_tiny("dual_encoder", seed=1)[0].push_to_hub(repo)  # retrained
print("retrained:", push_results(repo, {"winoground": winoground}))
print("histograms kept:", "similarity_histograms.png" in HfApi().list_repo_files(repo))
"""


def test_results_recorded_without_weights_are_dropped_at_the_next_retrain(hub_server, tmp_path):
    """A result pushed before weights were recorded stayed on the card through every retrain; a results.json uploaded
    beside the model counted as other weights. The histograms of dropped results were left in the repo, unlinked."""
    output = run_client(hub_server, tmp_path, PUSH_AFTER_A_RECORD_WITHOUT_WEIGHTS)
    assert "legacy record: []" in output and "histograms drawn: True" in output
    assert "results uploaded: []" in output and "retrained: ['bivlc', 'coco']" in output and "histograms kept: False" in output
    card = hub_server.files("maple-org/legacy")["README.md"].decode()
    assert "| bivlc |" not in card and "| coco |" not in card and "| winoground | all | 30.0 |" in card
    assert "similarity_histograms.png" not in card


PUSH_AFTER_A_RECORD_THAT_COUNTED_RESULTS_JSON = """
import json
from huggingface_hub import HfApi
from evaluation.cli import push_results
from modeling_maple.testing import build_tiny

repo = "maple-org/counted-results"
coco = {key: 40.0 for key in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")}
build_tiny("dual_encoder", seed=0)[0].push_to_hub(repo)
HfApi().upload_file(path_or_fileobj=b"{}", path_in_repo="results.json", repo_id=repo)
files = {entry.path: entry.blob_id for entry in HfApi().list_repo_tree(repo) if entry.path not in ("README.md", ".gitattributes")}
assert "results.json" in files
# as the version before recorded the weights: results.json among them
record = {"results": {"coco": coco}, "dataset_ids": {}, "weights": {"coco": files}}
HfApi().upload_file(path_or_fileobj=json.dumps(record).encode(), path_in_repo="maple_eval_results.json", repo_id=repo)
print("same weights:", push_results(repo, {"winoground": {"text_score": 30.0, "image_score": 20.0, "group_score": 10.0}}))
"""


def test_a_record_that_counted_files_now_left_out_keeps_its_results(hub_server, tmp_path):
    """Weights recorded with a results.json among them (before it was left out) never matched again: the first push
    after the upgrade dropped results of unchanged weights (found by a review)."""
    assert "same weights: []" in run_client(hub_server, tmp_path, PUSH_AFTER_A_RECORD_THAT_COUNTED_RESULTS_JSON)
