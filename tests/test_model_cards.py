"""Model and dataset cards: rendered from a real tiny training run, hand-built eval results (every value distinct)
and a builder's stats, metadata that parses back, figures written next to the card."""

import re

import pytest
import yaml
from huggingface_hub import DatasetCard, ModelCard
from PIL import Image

from maple import PAPER_CITATION
from model_cards import dataset_card_from_stats, model_card_from_run, with_eval_results
from model_cards.cards import PAPER_TAGS


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Six real RPATrainer steps on the tiny dual encoder, then the paper's protocols on it."""
    from trainer import RPAConfig, RPATrainer
    from trainer.testing import describe_scene, draw_scene, synthetic_preference_dataset

    from evaluation.protocols import evaluate_quadruples, evaluate_retrieval
    from modeling_maple.testing import build_tiny

    output_dir = tmp_path_factory.mktemp("run")
    model, processor = build_tiny("dual_encoder", seed=0)
    args = RPAConfig(output_dir=str(output_dir), per_device_train_batch_size=8, max_steps=6, learning_rate=1e-3,
                     warmup_steps=0, rpa_weight=0.5, logging_steps=1, save_strategy="no", report_to=[], seed=0)
    trainer = RPATrainer(model, args=args, train_dataset=synthetic_preference_dataset(16, seed=0), processing_class=processor)
    trainer.train()
    scenes = [("red", "left"), ("red", "right"), ("blue", "left"), ("blue", "right")]
    images = [draw_scene(*scene) for scene in scenes]
    quadruples = [(images[0], images[1], describe_scene(*scenes[0]), describe_scene(*scenes[1])),
                  (images[0], images[2], describe_scene(*scenes[0]), describe_scene(*scenes[2]))]
    eval_results = {
        "coco": evaluate_retrieval(model, processor, images, [[describe_scene(*scene)] for scene in scenes]),
        "winoground": evaluate_quadruples(model, processor, quadruples, categories=["relation", "object"]),
    }
    return output_dir, args, trainer.state.log_history, eval_results


def test_model_card_from_a_tiny_run(tiny_run):
    output_dir, args, log_history, eval_results = tiny_run
    card = model_card_from_run(output_dir, base_model="openai/clip-vit-base-patch32", backbone="dual_encoder",
                               training_config=args, log_history=log_history, eval_results=eval_results,
                               dataset_id="maple-org/prefs", judge_id="Qwen/Qwen2-VL-7B-Instruct",
                               lora={"r": 32, "lora_alpha": 32, "target_modules": ["q_proj", "v_proj"]}, repo_id="maple-org/tiny")
    parsed = ModelCard(str(card))
    metadata = yaml.safe_load(str(card).split("---")[1])
    assert metadata["base_model"] == "openai/clip-vit-base-patch32" and metadata["datasets"] == ["maple-org/prefs"]
    assert metadata["tags"] == PAPER_TAGS + ["dual_encoder", "lora", "peft"]
    results = {(r.dataset_name, r.metric_config, r.metric_type): r.metric_value for r in parsed.data.eval_results}
    # a category is a metric config: the dataset config is for `load_dataset`, and BiVLC has no config "object"
    assert {r.dataset_config for r in parsed.data.eval_results} == {None}
    assert next(r for r in parsed.data.eval_results if r.metric_config == "object" and r.metric_type == "group_score"
                ).metric_name == "Group score (object)"
    coco, winoground = eval_results["coco"], eval_results["winoground"]
    assert results[("coco", None, "t2i_r1")] == round(coco["t2i_r1"], 2)
    assert results[("winoground", "object", "group_score")] == round(winoground["per_category"]["object"]["group_score"], 2)
    assert results[("winoground", None, "delta_gap")] == round(winoground["modality_gap"]["delta_gap"], 4)
    assert next(r for r in parsed.data.eval_results if r.dataset_name == "coco").dataset_type == "nlphuji/mscoco_2014_5k_test_image_text_retrieval"
    text = parsed.text
    assert f"| coco | {coco['i2t_r1']:.1f} | {coco['i2t_r5']:.1f} |" in text
    assert f"| winoground | relation | {winoground['per_category']['relation']['text_score']:.1f} |" in text
    assert "LoRA (rank 32, alpha 32) on `q_proj, v_proj`" in text and "| `rpa_weight` | `0.5` |" in text
    assert "| `max_steps` | `6` |" in text and "num_train_epochs" not in text  # max_steps overrode the epochs

    assert 'AutoModel.from_pretrained("maple-org/tiny", trust_remote_code=True)' in text and "import modeling_maple" in text
    assert "learns the judge's notion of a good match, including its biases" in " ".join(text.split())
    assert "eprint = {2506.06970}" in text
    curves = Image.open(output_dir / "training_curves.png")
    assert curves.format == "PNG" and curves.size[0] >= 400
    assert "![Training curves](training_curves.png)" in text
    assert Image.open(output_dir / "similarity_histograms.png").format == "PNG"
    assert "![Similarity histograms](similarity_histograms.png)" in text


def test_local_references_are_named_as_text_not_as_hub_metadata(tmp_path, monkeypatch):
    """`maple train --model_name_or_path ./ckpt --dataset_name ./prefs` wrote both paths as `base_model` and
    `datasets`, which the Hub refuses on push (and linked https://huggingface.co/./prefs)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpt").mkdir()
    card = model_card_from_run(tmp_path / "out", base_model="./ckpt", backbone="mllm", training_config={}, log_history=[],
                               eval_results={}, dataset_id="./prefs")
    metadata = yaml.safe_load(str(card).split("---")[1])
    assert "base_model" not in metadata and "datasets" not in metadata
    # an existing folder from the card's folder; a missing one as given
    assert "| Base model | `../ckpt` (a local folder) |" in card.text and "| Preference data | `./prefs` (a local folder) |" in card.text
    assert "huggingface.co/./" not in card.text


def test_the_card_of_a_repo_names_local_folders_by_their_names_only(tmp_path, monkeypatch):
    """A pushed card named a local base model, preference data and judge by their paths (a home folder, a user name;
    the demo's `../base`, which means nothing on the Hub)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "alice" / "base").mkdir(parents=True)
    references = {"base_model": str(tmp_path / "alice" / "base"), "dataset_id": "./alice/prefs",
                  "judge_id": str(tmp_path / "alice" / "qwen-judge")}
    pushed = model_card_from_run(tmp_path / "alice" / "model", backbone="mllm", training_config={}, log_history=[],
                                 eval_results={}, repo_id="bob/model", **references)
    assert "alice" not in pushed.text
    assert "| Base model | `base` (a local folder) |" in pushed.text and "| Preference data | `prefs` (a local folder) |" in pushed.text
    assert "| Preference judge | `qwen-judge` |" in pushed.text
    local = model_card_from_run(tmp_path / "alice" / "model", backbone="mllm", training_config={}, log_history=[],
                                eval_results={}, **references)
    assert "| Base model | `../base` (a local folder) |" in local.text  # from the card's folder
    # an ensemble's members one by one (a review found `Qwen/... + /home/alice/judge` published whole)
    ensemble = model_card_from_run(tmp_path / "m", base_model=None, backbone="mllm", training_config={}, log_history=[],
                                   eval_results={}, judge_id=f"org/judge + {tmp_path}/alice/qwen-judge", repo_id="bob/model")
    assert "| Preference judge | `org/judge + qwen-judge` |" in ensemble.text and "alice" not in ensemble.text
    description = "scene-graph judge (a stand-in for an MLLM judge; see docs/demo.md)"  # not a path: as it is
    described = model_card_from_run(tmp_path / "m", base_model=None, backbone="mllm", training_config={}, log_history=[],
                                    eval_results={}, judge_id=description, repo_id="bob/model")
    assert f"| Preference judge | `{description}` |" in described.text


@pytest.mark.parametrize("licence, metadata, name", [
    ("cc-by-nc-sa-4.0", "cc-by-nc-sa-4.0", None), ("cc-by-nc-sa", "other", "cc-by-nc-sa"),
    ("research-only", "other", "research-only"), ("gpl-3.0-or-later", "other", "gpl-3.0-or-later"),
    ("CC-BY-4.0", "cc-by-4.0", None),
    # as people write them: the Hub showed a CC-BY dataset as "other"
    ("CC BY 4.0", "cc-by-4.0", None), ("Apache 2.0", "apache-2.0", None), ("Research Only", "other", "research-only"),
    # names, as SPDX and the licences' texts write them: "other" with license_name "apache-license,-version-2.0"
    ("Apache License, Version 2.0", "apache-2.0", None), ("MIT License", "mit", None),
    ("Creative Commons Attribution-NonCommercial-ShareAlike 4.0 International", "cc-by-nc-sa-4.0", None),
    ("Creative Commons Zero v1.0 Universal", "cc0-1.0", None), ("GPL-3.0-only", "gpl-3.0", None),
    ("GNU General Public License v3.0 or later", "other", "gnu-general-public-license-v3.0-or-later"),
    ("Apache License", "other", "apache-license"),  # which version: not said
    # ids the Hub added after huggingface.js's list: "other" with license_name "llama4"
    ("llama4", "llama4", None), ("EUPL-1.2", "eupl-1.2", None), ("European Union Public License 1.2", "eupl-1.2", None),
    ("grok2-community", "grok2-community", None),
    # SPDX ids of licences the Hub names without their version, and SPDX names the words above did not abbreviate:
    # "other" with license_name "odbl-1.0", "sil-open-font-license-1.1", "bsd-3-clause-new-or-revised-license"
    ("ODbL-1.0", "odbl", None), ("PDDL-1.0", "pddl", None), ("ODC-By-1.0", "odc-by", None), ("GFDL-1.3-only", "gfdl", None),
    ("GFDL-1.3-or-later", "other", "gfdl-1.3-or-later"),  # as GPL-3.0-or-later
    ("Open Data Commons Open Database License v1.0", "odbl", None), ("SIL Open Font License 1.1", "ofl-1.1", None),
    ("Academic Free License v3.0", "afl-3.0", None), ("Microsoft Public License", "ms-pl", None),
    ("Community Data License Agreement Permissive 2.0", "cdla-permissive-2.0", None),
    ('BSD 3-Clause "New" or "Revised" License', "bsd-3-clause", None), ("MIT-0", "other", "mit-0"),
])
def test_dataset_card_licence_metadata_is_a_hub_licence_id(tmp_path, licence, metadata, name):
    """Any lower-case slug passed before; the Hub refuses ids not on its list, failing the push after the build. An id
    in capitals or with spaces is the Hub's id; "other" carries an id of the licence's own, as the Hub asks."""
    card = dataset_card_from_stats({**STATS, "source_license": licence}, repo_id="maple-org/prefs", output_dir=tmp_path)
    data = DatasetCard(str(card)).data
    assert data.license == metadata and f"| Licence of the source data | {licence} |" in card.text
    assert data.get("license_name") == name


def test_a_nan_score_stays_out_of_the_model_index(tmp_path):
    """Only the modality gap was checked: a NaN score went into the YAML as `.nan`, which the Hub refuses."""
    scores = {"text_score": 50.0, "image_score": float("nan"), "group_score": float("nan")}
    card = model_card_from_run(tmp_path, base_model=None, backbone="mllm", training_config={}, log_history=[],
                               eval_results={"winoground": scores})
    metrics = [metric for result in ModelCard(str(card)).data.eval_results for metric in [result.metric_type]]
    assert metrics == ["text_score"] and ".nan" not in str(card)


def test_the_tables_show_every_score_of_the_model_index_and_a_dash_for_a_missing_one(tmp_path):
    """A benchmark lacking one of the six recall metrics had no row (the card said "No benchmark was evaluated" above
    a `model-index` holding its scores), a category lacking a score failed the card with a KeyError, and a score
    read as null (None) with a TypeError."""
    eval_results = {
        "coco": {"i2t_r1": 11.0, "t2i_r1": 12.0, "i2t_r5": None},
        "winoground": {"text_score": 10.0, "image_score": 5.0, "group_score": 2.5,
                       "per_category": {"relation": {"text_score": 20.0}},
                       "modality_gap": {"w_dist": 0.3, "w_disc": 0.1}},
    }
    card = model_card_from_run(tmp_path, None, "mllm", {}, [], eval_results, repo_id="maple-org/tiny")
    assert "| coco | 11.0 | – | – | 12.0 | – | – |" in card.text and "No benchmark was evaluated" not in card.text
    assert "| winoground | relation | 20.0 | – | – |" in card.text and "| winoground | 30.00 | 10.00 | – |" in card.text
    metrics = {(result.dataset_name, result.metric_config, result.metric_type)
               for result in ModelCard(str(card)).data.eval_results}
    assert metrics == {("coco", None, "i2t_r1"), ("coco", None, "t2i_r1"), ("winoground", None, "text_score"),
                       ("winoground", None, "image_score"), ("winoground", None, "group_score"),
                       ("winoground", "relation", "text_score")}


def test_the_tables_have_a_row_where_the_model_index_has_a_score_and_a_null_mapping_is_none(tmp_path):
    """A benchmark scored by category only had no quadruple row above its `model-index` entries, one whose recall
    metrics were all null a row of dashes, and a null `modality_gap` or `per_category` failed the card with an
    AttributeError."""
    eval_results = {
        "bivlc": {"per_category": {"swap": {"text_score": 1.0, "image_score": 2.0, "group_score": 3.0}, "replace": None}},
        "coco": {"i2t_r1": None, "i2t_r5": None, "i2t_r10": None, "t2i_r1": None, "t2i_r5": None, "t2i_r10": None},
        "winoground": {"text_score": 10.0, "image_score": 5.0, "group_score": 2.5, "per_category": None,
                       "modality_gap": None},
        "sugarcrepe": {"text_score": None, "per_category": {"add": {"group_score": 4.0}},
                       "modality_gap": {"w_dist": None, "w_disc": None, "delta_gap": None}},
    }
    card = model_card_from_run(tmp_path, None, "mllm", {}, [], eval_results)
    quadruple_rows = [line for line in card.text.splitlines() if line.count("|") == 6 and "benchmark" not in line and "---" not in line]
    assert quadruple_rows == ["| bivlc | swap | 1.0 | 2.0 | 3.0 |", "| winoground | all | 10.0 | 5.0 | 2.5 |",
                              "| sugarcrepe | add | – | – | 4.0 |"]
    assert "| coco |" not in card.text and "Modality gap" not in card.text and "No benchmark was evaluated" not in card.text
    for parsed in (card, with_eval_results(ModelCard(str(card)), eval_results)):
        results = ModelCard(str(parsed)).data.eval_results
        assert {(result.dataset_name, result.metric_config, result.metric_type) for result in results} == {
            ("bivlc", "swap", "text_score"), ("bivlc", "swap", "image_score"), ("bivlc", "swap", "group_score"),
            ("winoground", None, "text_score"), ("winoground", None, "image_score"), ("winoground", None, "group_score"),
            ("sugarcrepe", "add", "group_score"),
        }


def test_the_retrieval_table_shows_the_recall_of_each_category_the_model_index_holds(tmp_path):
    """A category's recall went into `model-index` ("Image→text R@1 (animals)") but into no table: the retrieval table
    had one row per benchmark, of its overall scores. It gets the quadruples' "subset" column only where a category
    has a recall, and the card rewritten with the same results stays as it is."""
    eval_results = {
        "coco": {"i2t_r1": 11.0, "t2i_r1": 12.0,
                 "per_category": {"animals": {"i2t_r1": 21.0, "t2i_r5": 22.0}, "food": {"text_score": 5.0}}},
        "flickr": {"per_category": {"indoor": {"t2i_r1": 31.0}}},
    }
    card = model_card_from_run(tmp_path, None, "mllm", {}, [], eval_results, repo_id="maple-org/tiny")
    assert "| benchmark | subset | I→T R@1 | I→T R@5 | I→T R@10 | T→I R@1 | T→I R@5 | T→I R@10 |" in card.text
    retrieval_rows = [line for line in card.text.splitlines() if line.count("|") == 9 and "benchmark" not in line
                      and "---" not in line]
    assert retrieval_rows == ["| coco | all | 11.0 | – | – | 12.0 | – | – |",
                              "| coco | animals | 21.0 | – | – | – | 22.0 | – |",
                              "| flickr | indoor | – | – | – | 31.0 | – | – |"]
    assert "| coco | food | 5.0 | – | – |" in card.text  # a category's matching scores stay in the quadruples' table
    recall = {(result.dataset_name, result.metric_config, result.metric_type)
              for result in ModelCard(str(card)).data.eval_results if result.task_type == "image-text-retrieval"}
    assert recall == {("coco", None, "i2t_r1"), ("coco", None, "t2i_r1"), ("coco", "animals", "i2t_r1"),
                      ("coco", "animals", "t2i_r5"), ("flickr", "indoor", "t2i_r1")}
    assert str(with_eval_results(card, eval_results)) == str(card)
    # without a category's recall, the table is as it was
    whole = model_card_from_run(tmp_path, None, "mllm", {}, [], {"coco": {"i2t_r1": 11.0}}).text
    assert "| benchmark | I→T R@1 |" in whole and "| coco | 11.0 | – | – | – | – | – |" in whole


def test_null_similarity_histograms_are_none(tmp_path):
    """Results holding `similarity_histograms: null` failed the card with a TypeError, as a null `modality_gap` or
    `per_category` did before; the card has no histograms, nor a link to them, and the other results' are drawn."""
    with_histograms = {"bin_edges": [-1.0, 0.0, 1.0], "matched": [0, 2], "mismatched": [2, 0], "text_text": [1, 1]}
    scores = {"text_score": 10.0, "image_score": 5.0, "group_score": 2.5}
    card = model_card_from_run(tmp_path, None, "mllm", {}, [], {"winoground": {**scores, "similarity_histograms": None}})
    assert "| winoground | all | 10.0 | 5.0 | 2.5 |" in card.text and "Similarity histograms" not in card.text
    assert not (tmp_path / "similarity_histograms.png").exists()
    card = model_card_from_run(tmp_path, None, "mllm", {}, [], {"winoground": {**scores, "similarity_histograms": None},
                                                                "bivlc": {**scores, "similarity_histograms": with_histograms}})
    assert "![Similarity histograms](similarity_histograms.png)" in card.text
    assert Image.open(tmp_path / "similarity_histograms.png").size[0] < 600  # one panel: bivlc's


def test_numpy_scores_are_numbers_in_the_tables_and_the_model_index(tmp_path):
    """A caller's numpy scalar (np.float32) was read as no score after 7d7c8cc (as a bool still is): the tables
    showed "–" and `model-index` held none of it."""
    import numpy as np

    eval_results = {
        "coco": {"i2t_r1": np.float32(50.0), "t2i_r1": np.int64(40)},
        "winoground": {"text_score": np.float64(10.0), "image_score": np.float32(5.0), "group_score": True,
                       "modality_gap": {"w_dist": np.float32(0.25), "w_disc": np.float32(0.125), "delta_gap": np.float32(2.0)}},
    }
    card = model_card_from_run(tmp_path, None, "mllm", {}, [], eval_results)
    assert "| coco | 50.0 | – | – | 40.0 | – | – |" in card.text
    assert "| winoground | all | 10.0 | 5.0 | – |" in card.text and "| winoground | 25.00 | 12.50 | 2.00 |" in card.text
    expected = {("coco", "i2t_r1"): 50.0, ("coco", "t2i_r1"): 40.0, ("winoground", "text_score"): 10.0,
                ("winoground", "image_score"): 5.0, ("winoground", "delta_gap"): 2.0}
    for parsed in (card, with_eval_results(ModelCard(str(card)), eval_results)):
        results = ModelCard(str(parsed)).data.eval_results
        assert {(result.dataset_name, result.metric_type): result.metric_value for result in results} == expected


def assert_table_rows_keep_their_cells(text: str) -> None:
    """Every row of each markdown table in `text` has as many cells as its header: an unescaped `|` in a value would
    add one (`\\|` is a pipe inside the cell)."""
    cells = None
    for line in text.splitlines():
        if not line.startswith("|"):
            cells = None
            continue
        count = len(re.findall(r"(?<!\\)\|", line))
        cells = count if cells is None else cells
        assert count == cells, line


def test_lora_targets_and_other_values_holding_a_pipe_stay_in_their_table_cell(tmp_path):
    """The LoRA target regexes hold `|`, which ended the "Fine-tuning" cell even inside backticks: the row showed
    ``LoRA (rank 32, alpha 32) on `.*.(language_model`` and dropped the rest."""
    from modeling_maple.lora import DUAL_ENCODER_LORA_TARGETS, MLLM_LORA_TARGETS

    for targets in (MLLM_LORA_TARGETS, DUAL_ENCODER_LORA_TARGETS):
        assert "|" in targets
        lora = {"r": 32, "lora_alpha": 32, "target_modules": targets}
        card = model_card_from_run(tmp_path, None, "mllm", {"lr_scheduler_type": "a|b"}, [], {}, lora=lora)
        assert_table_rows_keep_their_cells(card.text)
        assert f"| Fine-tuning | LoRA (rank 32, alpha 32) on `{targets.replace('|', chr(92) + '|')}` |" in card.text
        assert "| `lr_scheduler_type` | `a\\|b` |" in card.text
    stats = {**STATS, "judge": "JudgeEnsemble(a|b)", "captioner": "two\nlines"}
    text = dataset_card_from_stats(stats, repo_id="maple-org/prefs", output_dir=tmp_path).text
    assert_table_rows_keep_their_cells(text)
    assert "| Judge | JudgeEnsemble(a\\|b) |" in text and "| Captioner | two lines |" in text


def test_model_card_without_eval_or_logs(tmp_path):
    card = model_card_from_run(tmp_path, base_model=None, backbone="mllm", training_config={}, log_history=[], eval_results={})
    assert ModelCard(str(card)).data.eval_results is None
    assert ModelCard(str(card)).data.tags == PAPER_TAGS + ["mllm"]  # full fine-tuning: no "lora" or "peft" tag
    assert "No benchmark was evaluated" in card.text and "Training curves" not in card.text and "Similarity histograms" not in card.text
    assert not (tmp_path / "training_curves.png").exists() and not (tmp_path / "similarity_histograms.png").exists()
    assert f"```bibtex\n{PAPER_CITATION}\n```" in card.text


def test_a_card_without_results_gives_the_command_that_adds_them(tmp_path):
    """The card said `maple eval REPO --benchmarks coco winoground` adds the results to it; without `--push-to-hub`
    that command writes them into its --out folder only."""
    def text(repo_id):
        return " ".join(model_card_from_run(tmp_path, None, "mllm", {}, [], {}, repo_id=repo_id).text.split())

    assert ("`maple eval me/tiny --benchmarks coco winoground --push-to-hub` computes the paper's benchmarks and adds "
            "them here.") in text("me/tiny")
    assert ("`maple eval MODEL --benchmarks coco winoground` computes the paper's benchmarks; with `--push-to-hub`, on "
            "the model's Hub repo, it adds them here.") in text(None)


def test_a_card_without_figures_leaves_no_earlier_runs_figures_beside_it(tmp_path):
    """A run that logged fewer than two points into a folder where an earlier run drew its curves and histograms left
    those files there, and they were pushed beside a card that did not describe them (found by a review)."""
    for name in ("training_curves.png", "similarity_histograms.png", "score_histograms.png"):
        (tmp_path / name).write_bytes(b"an earlier run's figure")
    model_card_from_run(tmp_path, base_model=None, backbone="mllm", training_config={}, log_history=[], eval_results={})
    dataset_card_from_stats({"num_anchors": 20}, output_dir=tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == []


def test_model_card_describes_the_models_pooling_and_attention(tmp_path):
    from modeling_maple import MapleConfig
    from modeling_maple.testing import tiny_mllm_config

    causal_last = MapleConfig(backbone="mllm", mllm_config=tiny_mllm_config("qwen2_vl"), pooling="last", bidirectional=False)
    card = model_card_from_run(tmp_path, None, "mllm", {}, [], {}, model_config=causal_last)
    assert "a multimodal LLM (qwen2_vl) used as a dual encoder (causal attention, last pooling)" in card.text
    # a `llava` config with a Pixtral tower is named by its family, from the object or from a saved config.json's dict
    pixtral = MapleConfig(backbone="mllm", mllm_config=tiny_mllm_config("pixtral"))
    for model_config in (pixtral, pixtral.to_dict()):
        assert "a multimodal LLM (pixtral) used as" in model_card_from_run(tmp_path, None, "mllm", {}, [], {}, model_config=model_config).text
    card = model_card_from_run(tmp_path, None, "dual_encoder", {}, [], {}, model_config={"pooling": "mean"})
    assert "a two-tower image/text encoder (mean pooling)" in card.text
    assert "bidirectional" not in model_card_from_run(tmp_path, None, "mllm", {}, [], {}).text


def test_model_card_states_the_objective_and_similarity_the_run_and_model_have(tmp_path):
    """Every card said "RPA mixed with InfoNCE" and "the cosine of the L2-normalised embeddings", also for a run with
    `rpa_weight=0` and for a model with `normalize=False` (found by a review of the cards)."""
    def text(training_config, model_config=None):
        card = model_card_from_run(tmp_path, None, "dual_encoder", training_config, [], {}, model_config=model_config)
        return " ".join(card.text.split())

    assert "fine-tuned with Relative Preference Alignment (RPA) mixed with InfoNCE," in text({"rpa_weight": 0.2})
    assert "fine-tuned with InfoNCE alone (`rpa_weight` 0: no preference alignment)," in text({"rpa_weight": 0.0})
    assert "fine-tuned with Relative Preference Alignment (RPA) alone" in text({"rpa_weight": 1})
    # a config that does not record it has RPAConfig's default (0.2), which mixes both, not RPA alone
    assert "fine-tuned with Relative Preference Alignment (RPA) mixed with InfoNCE," in text({})
    normalized, raw = text({}), text({}, {"normalize": False})
    assert "similarity is the cosine of the L2-normalised embeddings" in normalized and "# cosine similarities" in normalized
    assert "not normalised (`normalize=False`): similarity is their dot product" in raw and "# dot products" in raw
    assert "cosine" not in raw
    assert "`transformers` pipelines (`feature-extraction`) call the tokenizer or the image processor alone" in normalized


def test_an_infinite_modality_gap_stays_out_of_the_model_index(tmp_path):
    results = {"winoground": {"text_score": 0.0, "image_score": 0.0, "group_score": 0.0,
                              "modality_gap": {"w_dist": 0.3, "w_disc": 0.0, "delta_gap": float("inf")}}}
    card = ModelCard(str(model_card_from_run(tmp_path, None, "mllm", {}, [], results)))
    assert [result.metric_type for result in card.data.eval_results] == ["text_score", "image_score", "group_score"]
    assert "inf" in card.text.split("---")[-1]  # the table still shows it


def test_with_eval_results_replaces_the_section(tmp_path):
    first = {"winoground": {"text_score": 10.0, "image_score": 5.0, "group_score": 2.5, "modality_gap": {"w_dist": 0.3, "w_disc": 0.1, "delta_gap": 3.0}}}
    card = model_card_from_run(tmp_path, None, "mllm", {}, [], first, repo_id="maple-org/tiny")
    second = {"bivlc": {"text_score": 40.0, "image_score": 30.0, "group_score": 20.0,
                        "per_category": {"swap": {"text_score": 50.0, "image_score": 25.0, "group_score": 25.0}},
                        "modality_gap": {"w_dist": 0.2, "w_disc": 0.1, "delta_gap": 2.0}}}
    updated = ModelCard(str(with_eval_results(card, second)))
    assert updated.text.count("## Evaluation") == 1 and "| bivlc | swap | 50.0 | 25.0 | 25.0 |" in updated.text
    assert "| winoground |" not in updated.text and "## Usage" in updated.text
    assert {(r.dataset_name, r.metric_type) for r in updated.data.eval_results} >= {("bivlc", "group_score"), ("bivlc", "delta_gap")}


def test_with_eval_results_replaces_its_own_section_only():
    """The Hub's default card template has an "## Evaluation" of its own: a second push replaced everything from that
    heading to the end of MAPLE's section (appended by the first push), the user's sections in between included."""
    from huggingface_hub import ModelCardData

    from model_cards.cards import EVALUATION_START

    card = ModelCard.from_template(ModelCardData(license="mit"))
    headings = re.findall(r"^## .*$", card.text, flags=re.MULTILINE)
    assert "## Evaluation" in headings and headings.index("## Evaluation") < len(headings) - 1
    first = {"winoground": {"text_score": 10.0, "image_score": 5.0, "group_score": 2.5}}
    second = {"winoground": {"text_score": 20.0, "image_score": 5.0, "group_score": 2.5}}
    pushed_once = with_eval_results(card, first)
    pushed_twice = with_eval_results(pushed_once, second)
    assert re.findall(r"^## .*$", pushed_twice.text, flags=re.MULTILINE) == headings + ["## Evaluation"]
    assert pushed_twice.text.count("| winoground | all |") == 1 and "| winoground | all | 20.0 |" in pushed_twice.text
    # a card whose section was written before the start marker: the heading just before the end marker starts it
    old_card = ModelCard(str(pushed_once).replace(EVALUATION_START + "\n", ""))
    assert re.findall(r"^## .*$", with_eval_results(old_card, second).text, flags=re.MULTILINE) == headings + ["## Evaluation"]
    # an end marker left over from an older section that no heading starts (renamed by hand): the first push appends
    # a section, the next ones replace it instead of appending another each (found by a review)
    stray = ModelCard("---\nlicense: mit\n---\n# mine\n\n## Results (renamed)\n| old |\n<!-- end of evaluation -->\n")
    pushed = with_eval_results(with_eval_results(with_eval_results(stray, first), second), second)
    assert pushed.text.count(EVALUATION_START) == 1 and pushed.text.count("| winoground | all |") == 1
    # and on a card with an "## Evaluation" of the user's before such a marker, the user's sections stay
    stray = ModelCard(str(card) + "\n## Results (renamed)\n| old |\n<!-- end of evaluation -->\n")
    pushed = with_eval_results(with_eval_results(stray, first), second)
    assert re.findall(r"^## .*$", pushed.text, flags=re.MULTILINE) == headings + ["## Results (renamed)", "## Evaluation"]


def test_with_eval_results_of_the_same_results_leaves_the_card_as_written(tmp_path):
    """The blank line after the evaluation section was dropped: the first `maple eval --push-to-hub` of the results a
    card already showed changed it, and a paragraph of the user's after the section lost its break from it."""
    results = {"coco": {"i2t_r1": 11.0, "t2i_r1": 12.0, "i2t_r5": 13.0, "i2t_r10": 14.0, "t2i_r5": 15.0, "t2i_r10": 16.0}}
    card = model_card_from_run(tmp_path, None, "mllm", {}, [], results, repo_id="maple-org/tiny")
    assert str(with_eval_results(card, results)) == str(card)
    edited = ModelCard(str(card).replace("## Training", "A note of mine.\n\n## Training"))
    assert "<!-- end of evaluation -->\n\nA note of mine.\n\n## Training" in str(with_eval_results(edited, results))


def test_with_eval_results_keeps_the_cards_other_model_index_entries(tmp_path):
    """`maple eval --push-to-hub` replaced the card's whole `model-index`: a zero-shot ImageNet result of the card's
    own was lost."""
    from huggingface_hub import EvalResult

    card = model_card_from_run(tmp_path, None, "mllm", {}, [], {}, repo_id="maple-org/tiny")
    card.data.model_name = "tiny"
    card.data.eval_results = [EvalResult(task_type="zero-shot-image-classification", dataset_type="imagenet-1k",
                                         dataset_name="ImageNet", metric_type="accuracy", metric_value=61.5)]
    card = ModelCard(str(card))
    first = {"coco": {"i2t_r1": 11.0, "t2i_r1": 12.0}}  # a benchmark of an earlier push: MAPLE's own, rewritten
    second = {"winoground": {"text_score": 10.0, "image_score": 5.0, "group_score": 2.5}}
    updated = ModelCard(str(with_eval_results(ModelCard(str(with_eval_results(card, first))), second)))
    assert [(r.dataset_name, r.metric_type) for r in updated.data.eval_results] == [
        ("ImageNet", "accuracy"), ("winoground", "text_score"), ("winoground", "image_score"), ("winoground", "group_score")
    ]


def test_with_eval_results_drops_the_entries_of_the_tables_it_replaces(tmp_path):
    """The demo's card names its own test sets ("maple-demo-retrieval"): `maple eval REPO --push-to-hub` replaced the
    section but kept their model-index entries, scores the card no longer showed (found by a review)."""
    demo = {"maple-demo-retrieval": {key: 50.0 for key in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")}}
    card = model_card_from_run(tmp_path, None, "dual_encoder", {}, [], demo, repo_id="me/x")
    updated = ModelCard(str(with_eval_results(card, {"coco": {"i2t_r1": 11.0, "t2i_r1": 12.0}}, model_name="me/x")))
    assert {result.dataset_name for result in updated.data.eval_results} == {"coco"}
    assert "maple-demo-retrieval" not in updated.text


@pytest.mark.parametrize(
    "hand_edit",
    [
        pytest.param(lambda line: line + " " if line.startswith("|-") else line, id="delimiter row with a trailing space"),
        pytest.param(lambda line: line.strip("|").strip() if line.startswith("|") else line, id="no outer pipes"),
        pytest.param(lambda line: "  " + line if line.startswith("|") else line, id="indented rows"),
    ],
)
def test_with_eval_results_drops_the_entries_of_hand_edited_tables_it_replaces(tmp_path, hand_edit):
    """Markdown tables a person edited on the Hub ("|---|---| ", or "---|---" without outer pipes, as GFM allows) named
    no benchmark, so their model-index entries outlived the section replacing them (found by a review); their header
    cell still names none."""
    from huggingface_hub import EvalResult

    demo = {"maple-demo-retrieval": {key: 50.0 for key in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")}}
    card = model_card_from_run(tmp_path, None, "dual_encoder", {}, [], demo, repo_id="me/x")
    card.data.eval_results.append(EvalResult(task_type="image-text-retrieval", dataset_type="me/bench",
                                             dataset_name="benchmark", metric_type="i2t_r1", metric_value=7.0))
    edited = ModelCard("\n".join(hand_edit(line) for line in str(card).splitlines()))
    assert {result.dataset_name for result in edited.data.eval_results} == {"maple-demo-retrieval", "benchmark"}
    updated = ModelCard(str(with_eval_results(edited, {"coco": {"i2t_r1": 11.0, "t2i_r1": 12.0}}, model_name="me/x")))
    assert {result.dataset_name for result in updated.data.eval_results} == {"coco", "benchmark"}


def test_with_eval_results_keeps_a_users_entry_named_like_a_category_of_its_tables():
    """Only a row's first cell names a benchmark: an entry of the user's own named like a category ("Relation") was
    dropped (found by a review)."""
    from huggingface_hub import EvalResult

    results = {"winoground": {"text_score": 10.0, "image_score": 5.0, "group_score": 2.5,
                              "per_category": {"Relation": {"text_score": 1.0, "image_score": 2.0, "group_score": 3.0}}}}
    card = with_eval_results(ModelCard("---\nlicense: mit\n---\n# m\n"), results, model_name="m")
    card.data.eval_results.append(EvalResult(task_type="image-text-matching", dataset_type="me/relation-bench",
                                             dataset_name="Relation", metric_type="group_score", metric_value=7.0))
    card = ModelCard(str(card))
    updated = ModelCard(str(with_eval_results(card, results)))
    assert [(r.dataset_name, r.metric_value) for r in updated.data.eval_results if r.dataset_type == "me/relation-bench"] == [
        ("Relation", 7.0)
    ]


def test_with_eval_results_keeps_a_users_entry_named_like_its_tables_header():
    """The tables' header cell ("benchmark") was read as a benchmark they name: an entry of the user's own named so
    was dropped (found by a review)."""
    from huggingface_hub import EvalResult

    results = {"coco": {"i2t_r1": 11.0, "i2t_r5": 12.0, "i2t_r10": 13.0, "t2i_r1": 21.0, "t2i_r5": 22.0, "t2i_r10": 23.0}}
    card = with_eval_results(ModelCard("---\nlicense: mit\n---\n# m\n"), results, model_name="m")
    card.data.eval_results.append(EvalResult(task_type="image-text-retrieval", dataset_type="me/bench",
                                             dataset_name="benchmark", metric_type="i2t_r1", metric_value=7.0))
    updated = ModelCard(str(with_eval_results(ModelCard(str(card)), {"winoground": {"text_score": 1.0}})))
    assert [(r.dataset_name, r.metric_value) for r in updated.data.eval_results if r.dataset_type == "me/bench"] == [
        ("benchmark", 7.0)
    ]


def test_a_card_of_the_current_folder_is_named_after_it(tmp_path, monkeypatch):
    """`Path(".").name` is empty: the card's title was "# " (found by a review)."""
    (tmp_path / "my-model").mkdir()
    monkeypatch.chdir(tmp_path / "my-model")
    card = model_card_from_run(".", None, "dual_encoder", {}, [], {"coco": {"i2t_r1": 11.0, "t2i_r1": 12.0}})
    assert card.text.lstrip().startswith("# my-model\n") and card.data.model_name == "my-model"
    (tmp_path / "latest").symlink_to(tmp_path / "my-model")  # a link's own name, as before
    assert model_card_from_run(tmp_path / "latest", None, "dual_encoder", {}, [], {}).text.lstrip().startswith("# latest\n")


def test_a_card_of_the_root_folder_has_a_title(monkeypatch):
    """`/` has no name, resolved or not: the card's title was "# " (found by a review)."""
    import model_cards.cards

    for plot in ("plot_training_curves", "plot_similarity_histograms"):  # nothing is written into /
        monkeypatch.setattr(model_cards.cards, plot, lambda *args: False)
    card = model_card_from_run("/", None, "dual_encoder", {}, [], {"coco": {"i2t_r1": 11.0, "t2i_r1": 12.0}})
    assert card.text.lstrip().startswith("# MAPLE embedder\n") and card.data.model_name == "MAPLE embedder"


# Results built by hand, a distinct value for every metric, direction and category: a tiny model's scores tie
# (i2t == t2i, a category as the whole), which hides a swapped direction or a category showing the overall score.
EVAL_RESULTS = {
    "coco": {"i2t_r1": 11.114, "i2t_r5": 12.2, "i2t_r10": 13.3, "t2i_r1": 21.1, "t2i_r5": 22.2, "t2i_r10": 23.3},
    "bivlc": {"text_score": 40.0, "image_score": 30.0, "group_score": 20.0,
              "per_category": {"swap": {"text_score": 41.0, "image_score": 31.0, "group_score": 21.0},
                               "replace": {"text_score": 42.0, "image_score": 32.0, "group_score": 22.0}},
              "modality_gap": {"w_dist": 0.3, "w_disc": 0.125, "delta_gap": 2.4}},
}


def _model_index(card):
    """{(benchmark, category, metric): (value, name, task type, dataset)} of the card's `model-index`."""
    return {(r.dataset_name, r.metric_config, r.metric_type): (r.metric_value, r.metric_name, r.task_type, r.dataset_type)
            for r in ModelCard(str(card)).data.eval_results}


def test_model_index_holds_every_metric_by_direction_and_category(tmp_path):
    card = model_card_from_run(tmp_path, None, "mllm", {}, [], EVAL_RESULTS)
    coco, bivlc = "nlphuji/mscoco_2014_5k_test_image_text_retrieval", "imirandam/BiVLC"
    retrieval, matching = "image-text-retrieval", "image-text-matching"
    assert _model_index(card) == {
        ("coco", None, "i2t_r1"): (11.11, "Image→text R@1", retrieval, coco),
        ("coco", None, "i2t_r5"): (12.2, "Image→text R@5", retrieval, coco),
        ("coco", None, "i2t_r10"): (13.3, "Image→text R@10", retrieval, coco),
        ("coco", None, "t2i_r1"): (21.1, "Text→image R@1", retrieval, coco),
        ("coco", None, "t2i_r5"): (22.2, "Text→image R@5", retrieval, coco),
        ("coco", None, "t2i_r10"): (23.3, "Text→image R@10", retrieval, coco),
        ("bivlc", None, "text_score"): (40.0, "Text score", matching, bivlc),
        ("bivlc", None, "image_score"): (30.0, "Image score", matching, bivlc),
        ("bivlc", None, "group_score"): (20.0, "Group score", matching, bivlc),
        ("bivlc", "replace", "text_score"): (42.0, "Text score (replace)", matching, bivlc),
        ("bivlc", "replace", "image_score"): (32.0, "Image score (replace)", matching, bivlc),
        ("bivlc", "replace", "group_score"): (22.0, "Group score (replace)", matching, bivlc),
        ("bivlc", "swap", "text_score"): (41.0, "Text score (swap)", matching, bivlc),
        ("bivlc", "swap", "image_score"): (31.0, "Image score (swap)", matching, bivlc),
        ("bivlc", "swap", "group_score"): (21.0, "Group score (swap)", matching, bivlc),
        ("bivlc", None, "delta_gap"): (2.4, "Modality gap Δgap", matching, bivlc),
    }


def test_evaluation_tables_show_every_metric_in_its_column(tmp_path):
    text = model_card_from_run(tmp_path, None, "mllm", {}, [], EVAL_RESULTS).text
    assert "| coco | 11.1 | 12.2 | 13.3 | 21.1 | 22.2 | 23.3 |" in text  # I→T R@1, 5, 10, then T→I
    for row in ("| bivlc | all | 40.0 | 30.0 | 20.0 |", "| bivlc | replace | 42.0 | 32.0 | 22.0 |",
                "| bivlc | swap | 41.0 | 31.0 | 21.0 |"):  # text, image, group
        assert row in text, row
    assert "| bivlc | 30.00 | 12.50 | 2.40 |" in text  # W_dist and W_disc x100, Δgap (their ratio) as it is


def test_with_eval_results_names_the_dataset_each_benchmark_was_read_from(tmp_path):
    """`maple eval --push-to-hub` on a mirror of COCO: the model-index names the mirror, the others their official id."""
    card = model_card_from_run(tmp_path, None, "mllm", {}, [], {})
    updated = with_eval_results(card, EVAL_RESULTS, dataset_ids={"coco": "maple-org/coco-mirror"})
    datasets = {(benchmark, dataset) for (benchmark, _, _), (_, _, _, dataset) in _model_index(updated).items()}
    assert datasets == {("coco", "maple-org/coco-mirror"), ("bivlc", "imirandam/BiVLC")}


STATS = {  # the shape `MaplePreferences.build_stats` gives
    "config_name": "default", "source": "openclipart", "source_license": "cc0-1.0", "judge": "Qwen/Qwen2-VL-7B-Instruct",
    "judge_prompt": 'Does the image align with the text "{text}"? Answer Yes or No.', "captioner": "Qwen/Qwen2.5-VL-72B-Instruct",
    "num_hard_negatives": 3, "text_candidates": "generated", "semdedup": {"clusters": 50, "epsilon": 0.07},
    "num_source_rows": 120, "num_anchors": 100, "num_candidate_images": 400, "num_candidate_texts": 600, "num_skipped": 3,
    "skipped_by_reason": {"unreadable image": 2, "empty caption": 1},
    "score_histograms": {"txt2img_scores": {"bin_edges": [i / 10 for i in range(11)], "counts": [5, 0, 0, 10, 0, 0, 0, 0, 20, 365]},
                         "img2txt_scores": {"bin_edges": [i / 10 for i in range(11)], "counts": [100, 100, 0, 0, 0, 0, 0, 0, 0, 400]}},
    "known_biases": ["Clip-art only: no photographs."],
}


def test_dataset_card_from_stats(tmp_path):
    card = dataset_card_from_stats(STATS, repo_id="maple-org/prefs", output_dir=tmp_path)
    parsed = DatasetCard(str(card))
    assert parsed.data.license == "cc0-1.0" and parsed.data.size_categories == ["n<1K"]
    text = parsed.text
    for expected in ("| Judge | Qwen/Qwen2-VL-7B-Instruct |", 'Does the image align with the text "{text}"? Answer Yes or No.',
                     "| Captioner | Qwen/Qwen2.5-VL-72B-Instruct |", "| Hard negatives per anchor (K) | 3 |",
                     "| anchors (rows) | 100 |", "| skipped inputs | 3 |", "| empty caption | 1 |", "| unreadable image | 2 |",
                     "| Licence of the source data | cc0-1.0 |", "| SemDeDup | 50 clusters, epsilon 0.07 |",
                     "- Clip-art only: no photographs.", 'load_dataset("maple-org/prefs", split="train")',
                     "![Histograms of the judge scores](score_histograms.png)"):
        assert expected in text, expected
    assert Image.open(tmp_path / "score_histograms.png").format == "PNG"


def test_dataset_card_with_missing_stats():
    text = dataset_card_from_stats({"num_anchors": 20000}).text
    assert "| Judge | not recorded |" in text and "| SemDeDup | not applied |" in text
    assert "score_histograms.png" not in text
    assert f"```bibtex\n{PAPER_CITATION}\n```" in text
    assert "exp(l_Yes)" not in text and "The judge recorded no prompt" in text  # a stand-in judge is not an MLLM
    assert DatasetCard(str(dataset_card_from_stats({"num_anchors": 20000}))).data.size_categories == ["10K<n<100K"]


def test_dataset_size_categories_are_the_hubs():
    from model_cards.cards import _size_category

    assert [_size_category(n) for n in (999, 1_000, 700_000, 5_000_000)] == [["n<1K"], ["1K<n<10K"], ["100K<n<1M"], ["1M<n<10M"]]


def test_card_hyperparameters_are_those_the_run_used():
    from model_cards.cards import _card_hyperparameters

    rows = dict(_card_hyperparameters({"num_train_epochs": 3.0, "max_steps": 150, "warmup_steps": 0.025, "seed": 0}))
    assert rows == {"max_steps": 150, "warmup_steps": "0.025 (ratio of the training steps)", "seed": 0}
    # max_steps -1 (Trainer's default), 0 or unset leave the epochs in charge; warmup_steps 0 is no ratio
    for max_steps in ({"max_steps": -1}, {"max_steps": 0}, {}):
        rows = dict(_card_hyperparameters({"num_train_epochs": 8.0, **max_steps, "warmup_steps": 0}))
        assert rows["num_train_epochs"] == 8.0 and rows["warmup_steps"] == 0, max_steps


def test_dataset_card_describes_every_config_of_a_repo(tmp_path):
    stale_default = {**STATS, "num_anchors": 7}  # the repo's earlier push of the config being pushed again
    fast = {**STATS, "config_name": "fast", "judge": "OpenGVLab/InternVL3-1B-hf", "num_anchors": 5000,
            "source_license": "mit", "histogram_file": "stats/fast/score_histograms.png"}
    card = dataset_card_from_stats(STATS, repo_id="maple-org/prefs", output_dir=tmp_path,
                                   histogram_file="stats/default/score_histograms.png", other_configs=[fast, stale_default])
    default_section, fast_section = card.text.split("## Config `")[1:]
    assert default_section.startswith("default`") and "| anchors (rows) | 100 |" in default_section
    assert fast_section.startswith("fast`") and "| Judge | OpenGVLab/InternVL3-1B-hf |" in fast_section
    assert "(stats/fast/score_histograms.png)" in fast_section and (tmp_path / "stats/default/score_histograms.png").exists()
    assert 'load_dataset("maple-org/prefs", "fast", split="train")' in card.text
    assert card.data.license == ["cc0-1.0", "mit"] and card.data.size_categories == ["1K<n<10K"]  # each licence; the largest config


def test_the_cards_usage_snippets_run_as_written(tmp_path, monkeypatch):
    """Both snippets passed `images=[image]` without defining `image`: a NameError for anyone who copied them."""
    import re

    from modeling_maple.testing import build_tiny

    model, processor = build_tiny("dual_encoder", seed=0)
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    card = model_card_from_run(tmp_path / "model", base_model=None, backbone="dual_encoder", training_config={},
                               log_history=[], eval_results={}, repo_id=str(tmp_path / "model"))
    snippets = re.findall(r"```python\n(.*?)```", card.text, flags=re.S)
    assert len(snippets) == 2
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (32, 32), "red").save(tmp_path / "photo.jpg")
    for snippet in snippets:
        namespace = {}
        exec(snippet, namespace)
        assert namespace["text_embeds"].shape == namespace["image_embeds"].shape == (1, model.config.projection_dim)


def test_a_source_without_a_licence_is_unknown_and_configs_of_several_licences_list_them(tmp_path):
    """Configs of several licences were published as `license: other`, naming none of them."""
    card = dataset_card_from_stats({**STATS, "source_license": None}, repo_id="maple-org/prefs", output_dir=tmp_path)
    assert DatasetCard(str(card)).data.license == "unknown"

    def metadata(*licences):
        others = [{**STATS, "config_name": f"config{i}", "source_license": licence} for i, licence in enumerate(licences)]
        data = DatasetCard(str(dataset_card_from_stats(STATS, repo_id="maple-org/prefs", other_configs=others))).data
        return data.license, data.get("license_name")

    assert metadata("MIT License") == (["cc0-1.0", "mit"], None)
    assert metadata("Research Only", None) == (["cc0-1.0", "other", "unknown"], "research-only")
    assert metadata("Research Only", "Internal use") == (["cc0-1.0", "other"], None)  # one name: the tables give each
    assert metadata("CC0 1.0 Universal") == ("cc0-1.0", None)  # one licence, written two ways


def test_a_fine_tune_has_its_base_models_licence_unless_told_another(tmp_path):
    """Model cards had no licence; a fine-tune inherits its base model's (as `transformers`' cards do), read here
    from a local base folder's card."""
    base = tmp_path / "base"
    base.mkdir()
    ModelCard("---\nlicense: apache-2.0\n---\n# base\n").save(base / "README.md")

    def card_licence(base_model, **kwargs):
        card = model_card_from_run(tmp_path / "out", base_model=str(base_model), backbone="mllm", training_config={},
                                   log_history=[], eval_results={}, **kwargs)
        metadata = yaml.safe_load(str(card).split("---")[1])
        return metadata.get("license"), metadata.get("license_name")

    assert card_licence(base) == ("apache-2.0", None)
    assert card_licence(base, license="CC BY 4.0") == ("cc-by-4.0", None)
    assert card_licence(base, license="Research Only") == ("other", "research-only")
    # unknown (a folder without a card; offline, the Hub is not asked): no licence rather than a guess
    assert card_licence(tmp_path / "out") == (None, None)
    for broken in ("license: [unclosed", "- a list", "license: 5"):  # the base's card must not fail the run's
        (base / "README.md").write_text(f"---\n{broken}\n---\n# base\n")
        assert card_licence(base) == (None, None), broken
    (base / "README.md").write_text("---\nlicense: MIT License\n---\n# base\n")  # a name: the Hub's id of it
    assert card_licence(base) == ("mit", None)


def test_a_base_model_under_another_licence_passes_on_its_name_and_link(tmp_path, monkeypatch):
    """A base under `license: other` gave its fine-tune `license: other` alone, without the licence's name and link
    its card gives. A link to a file of the base's Hub repo is that file's address (the fine-tune has no such file)."""
    import huggingface_hub
    from huggingface_hub import ModelCardData, constants

    from model_cards import base_model_license

    def card_licence(base_model):
        card = model_card_from_run(tmp_path / "out", base_model=str(base_model), backbone="mllm", training_config={},
                                   log_history=[], eval_results={})
        metadata = yaml.safe_load(str(card).split("---")[1])
        return tuple(metadata.get(key) for key in ("license", "license_name", "license_link"))

    base = tmp_path / "base"
    base.mkdir()
    other = "---\nlicense: other\nlicense_name: yi-license\nlicense_link: {}\n---\n# base\n"
    (base / "README.md").write_text(other.format("https://example.org/yi-license"))
    assert card_licence(base) == ("other", "yi-license", "https://example.org/yi-license")
    (base / "README.md").write_text(other.format("LICENSE"))  # a file of a local folder: no address to give
    assert card_licence(base) == ("other", "yi-license", None)
    # a name as written (a local card, which no Hub checked) is passed on as an id of it, as --license's is
    (base / "README.md").write_text(other.replace("yi-license", "Yi Series Models Community License").format("LICENSE"))
    assert card_licence(base) == ("other", "yi-series-models-community-license", None)

    class Info:
        tags = ["license:other"]
        card_data = ModelCardData(license="other", license_name="yi-license", license_link="LICENSE")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "model_info", lambda repo_id, token=None: Info())
    assert base_model_license("org/yi-base") == {
        "license": "other", "license_name": "yi-license", "license_link": f"{constants.ENDPOINT}/org/yi-base/blob/main/LICENSE"}
    Info.card_data = None  # a Hub that gives no card data: the tag alone
    assert base_model_license("org/yi-base") == {"license": "other", "license_name": None}


BASE_LICENCE = """
from huggingface_hub import HfApi
from model_cards import base_model_license
HfApi().create_repo("{repo}")
HfApi().upload_file(path_or_fileobj=b"---\\nlicense: llama3\\n---\\n# base\\n", path_in_repo="README.md", repo_id="{repo}")
print(base_model_license("{repo}")["license"], base_model_license("{user}/no-such-model"))
"""


def test_the_licence_of_a_base_model_on_the_hub_is_read_from_its_tags(hub_server, tmp_path):
    from hub_server import USER, run_client

    repo = f"{USER}/licensed-base"
    assert run_client(hub_server, tmp_path, BASE_LICENCE.format(repo=repo, user=USER)).split() == ["llama3", "None"]


def test_a_dataset_card_the_hub_fails_to_serve_fails_the_card_push(monkeypatch):
    """Only a repo without README.md may get a card without the `configs` metadata that `datasets`' push wrote there.
    A card the Hub failed to serve (a 5xx, offline: LocalEntryNotFoundError, also an EntryNotFoundError) must fail the
    push: a card without `configs` leaves the configs, pushed to folders of their own names, unloadable."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import LocalEntryNotFoundError

    from model_cards.cards import push_dataset_card

    def unreachable(cls, *args, **kwargs):
        raise LocalEntryNotFoundError("README.md: the Hub did not answer and it is not in the cache")

    commits = []
    monkeypatch.setattr(DatasetCard, "load", classmethod(unreachable))
    monkeypatch.setattr(HfApi, "create_commit", lambda self, *args, **kwargs: commits.append(args))
    with pytest.raises(LocalEntryNotFoundError):
        push_dataset_card(dataset_card_from_stats({}), "me/prefs", {}, commit_message="Describe config paper")
    assert commits == []


def test_text_from_data_cannot_break_the_cards_tables_fences_or_lists(tmp_path):
    """A `|` or line break in a benchmark's category, a local path or a judge's name broke its table row, a judge
    prompt holding a code fence closed the card's, and a line break in a known bias ended its bullet."""
    scores = {"text_score": 1.0, "image_score": 2.0, "group_score": 3.0}
    eval_results = {"wino|ground": {**scores, "per_category": {"a|b": scores, "x\ny": scores}}}
    card = model_card_from_run(tmp_path / "m", "/models/m|x", "mllm", {}, [], eval_results, judge_id="j|2")
    rows = [line for line in card.text.splitlines() if line.startswith("| wino")]
    assert len(rows) == 3 and all(row.count(" | ") == 4 for row in rows)  # benchmark, subset, three scores
    assert "| Base model | `/models/m\\|x` (a local folder) |" in card.text and "| Preference judge | `j\\|2` |" in card.text
    assert "judge (`j|2`)" in card.text  # not escaped outside the table
    prompt = "Match?\n```\n{caption}\n```\nYes or No."
    dataset_card = str(dataset_card_from_stats({"judge_prompt": prompt, "known_biases": ["one\nbias"],
                                                "skipped_by_reason": {"bad|image": 2}}))
    assert f"````\n{prompt}\n````" in dataset_card
    assert "- one bias\n" in dataset_card and "| bad\\|image | 2 |" in dataset_card
