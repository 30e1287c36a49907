"""`maple eval MODEL --push-to-hub` against the local Hub server: loads MODEL by repo id, evaluates,
and rewrites the evaluation section and `model-index` of the card on the Hub."""

import json

from hub_server import run_client

REPO = "maple-org/tiny-dual-encoder"

PUSH_EVAL_AND_PUSH_RESULTS = """
import os, sys
from evaluation.cli import main
from model_cards import model_card_from_run
from modeling_maple.testing import build_tiny

repo = os.environ["MAPLE_TEST_REPO"]
model, processor = build_tiny("dual_encoder", seed=0)
model.push_to_hub(repo)
processor.push_to_hub(repo)
first = {"winoground": {"text_score": 10.0, "image_score": 5.0, "group_score": 2.5,
                        "modality_gap": {"w_dist": 0.3, "w_disc": 0.1, "delta_gap": 3.0}}}
model_card_from_run("card", base_model=None, backbone="dual_encoder", training_config={}, log_history=[],
                    eval_results=first, repo_id=repo).push_to_hub(repo)
argv = [repo, "--benchmarks", "bivlc", "--source", "bivlc=" + os.environ["MAPLE_TEST_BIVLC"], "--out", "eval_out"]
assert main(argv + ["--push-to-hub"]) == 0
print("-- rerun after the push --")
assert main(argv) == 0  # the push made a new commit: the weights may have changed, so bivlc is recomputed ...
print("-- rerun --")
assert main(argv) == 0  # ... and then read back
"""


def test_maple_eval_loads_by_repo_id_and_pushes_results_into_the_card(hub_server, benchmark_sources, tmp_path):
    output = run_client(hub_server, tmp_path, PUSH_EVAL_AND_PUSH_RESULTS, MAPLE_TEST_REPO=REPO, MAPLE_TEST_BIVLC=str(benchmark_sources["bivlc"]))
    _, after_push, rerun = output.split("-- rerun")
    assert "bivlc: stored result is from another model state, dtype, source or protocol version, recomputing" in after_push
    assert "bivlc already done" in rerun and "evaluating" not in rerun
    results = json.loads((tmp_path / "eval_out" / "results.json").read_text())[REPO]["bivlc"]
    card = hub_server.files(REPO)["README.md"].decode()
    assert f"| bivlc | swap | {results['per_category']['swap']['text_score']:.1f} |" in card
    assert "| winoground |" not in card and "## Usage" in card  # the evaluation section was replaced, the rest kept
    assert "name: bivlc" in card and "config: replace" in card and "name: winoground" not in card  # model-index
    # the histograms of the new results replace the run's, linked from the new section
    assert hub_server.files(REPO)["similarity_histograms.png"].startswith(b"\x89PNG")
    assert card.count("![Similarity histograms](similarity_histograms.png)") == 1
