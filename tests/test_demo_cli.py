"""`maple demo --quick` end to end: outputs, a checkpoint that loads without the package, resume,
bad input refused before any work, and a push to a (local) Hub."""

import argparse
import json
import math
import os
import re
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
from hub_server import run_client
from isolated import run_isolated

from maple.demo.cli import build_parser, main
from maple.demo.pipeline import METHODS
from maple.demo.report import HEADLINE_METRICS
from maple.files import _host_label

QUICK = ["--quick", "--seeds", "1", "--no-progress"]


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    assert main(["--out", str(out), *QUICK]) == 0
    return out


def test_results_hold_every_method_and_metric(demo_out):
    results = json.loads((demo_out / "results.json").read_text())
    assert set(results) == set(METHODS)
    for method in METHODS:
        for metric in (*HEADLINE_METRICS, "swap/group_score", "replace/group_score", "add/group_score"):
            assert set(results[method][metric]) == {"mean", "std"}
        for metric in ("group_score", "text_score", "image_score", "i2t_r1", "t2i_r1"):
            assert 0.0 <= results[method][metric]["mean"] <= 100.0
    markdown = (demo_out / "results.md").read_text()
    assert "stand-ins for MLLMs" in markdown and "| maple |" in markdown


def test_plots_cards_and_dataset_are_written(demo_out):
    for plot in ("training_curves.png", "per_category.png", "similarities.png"):
        assert (demo_out / plot).read_bytes().startswith(b"\x89PNG")
    card = (demo_out / "maple-model" / "README.md").read_text()
    assert "model-index" in card and "group_score" in card and "scene-graph judge" in card
    # both retrieval directions and every category of the quadruples
    assert all(f"- type: {metric}" in card for metric in ("i2t_r1", "t2i_r1", "i2t_r5", "t2i_r5"))
    assert all(f"config: {category}" in card for category in ("replace", "swap", "add"))
    assert "`../preferences/data` (a local folder)" in card and "`../base` (a local folder)" in card
    # where the data comes from: "in-memory datasets.Dataset", as the builder names rows given in memory, said nothing
    assert ("| Source images and captions | the `maple demo` world's training images and captions, drawn procedurally "
            "(docs/demo.md) |") in (demo_out / "preferences" / "README.md").read_text()
    import datasets

    preferences = datasets.load_from_disk(str(demo_out / "preferences" / "data"))
    row = preferences[0]
    assert len(row["candidate_images"]) == 4 and len(row["txt2img_scores"]) == 4
    assert row["img2txt_scores"][0] == max(row["img2txt_scores"])  # the true caption is preferred
    # the paper's pool: the anchor caption and 5 captions of its hard negatives
    assert all(len(texts) == 6 for texts in preferences["candidate_texts"])
    assert row["candidate_texts"][0] == row["caption"] and len(row["img2txt_scores"]) == 6
    assert not (demo_out / "preferences" / "cache").exists()  # the builder's cache is removed once the data is saved


def test_the_base_model_has_the_documented_architecture_and_log(demo_out):
    """docs/demo.md: CLIP ViT and BERT towers of 4 layers, width 64, patch 6 on 48 px, mean pooling, a 64-d space,
    64 text positions; the base model's log history is kept, a loss logged every step of the quick budget's 20."""
    config = json.loads((demo_out / "base" / "config.json").read_text())
    vision, text = config["vision_config"], config["text_config"]
    assert (config["backbone"], config["pooling"], config["projection_dim"]) == ("dual_encoder", "mean", 64)
    assert {key: vision[key] for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                         "image_size", "patch_size")} == {
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "image_size": 48,
        "patch_size": 6}
    assert {key: text[key] for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                       "max_position_embeddings")} == {
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
        "max_position_embeddings": 64}
    assert json.loads((demo_out / "base" / "tokenizer_config.json").read_text())["model_max_length"] == 64
    log = json.loads((demo_out / "base" / "log_history.json").read_text())
    assert [entry["step"] for entry in log if "loss" in entry] == list(range(1, 21))


def test_the_exported_test_sets_are_the_first_items_of_the_world_s_held_out_sets(demo_out):
    import datasets

    from maple.demo.pipeline import QUICK
    from maple.demo.world import CATEGORIES, WorldConfig, build_world

    world = build_world(WorldConfig(seed=0, n_train_families=QUICK.train_families))
    retrieval = datasets.Dataset.from_parquet(str(demo_out / "test_sets" / "retrieval.parquet"))
    assert retrieval["caption"] == [[example.caption] for example in world.retrieval[:60]]
    quadruples = datasets.Dataset.from_parquet(str(demo_out / "test_sets" / "quadruples.parquet"))
    expected = [quad for category in CATEGORIES for quad in [q for q in world.quadruples if q.category == category][:20]]
    assert quadruples["caption"] == [quad.first.caption for quad in expected]
    assert quadruples["negative_caption"] == [quad.second.caption for quad in expected]
    assert quadruples["type"] == [category for category in CATEGORIES for _ in range(20)]


def test_maple_eval_on_the_exported_test_sets_scores_the_checkpoint_as_the_demo_did(demo_out, tmp_path, monkeypatch):
    from evaluation.cli import main as evaluate

    monkeypatch.chdir(demo_out)  # the command results.md gives
    assert evaluate(["maple-model", "--benchmarks", "coco", "bivlc", "--source", "coco=test_sets/retrieval.parquet",
                     "--source", "bivlc=test_sets/quadruples.parquet", "--batch-size", "256", "--out", str(tmp_path)]) == 0
    scored = json.loads((tmp_path / "results.json").read_text())
    (model_results,) = scored.values()
    demo = json.loads((demo_out / "runs" / "maple-seed0" / "result.json").read_text())
    for key in ("i2t_r1", "t2i_r1"):
        assert model_results["coco"][key] == demo[key]
    for key in ("group_score", "text_score", "image_score"):
        assert model_results["bivlc"][key] == demo[key]
    assert model_results["bivlc"]["per_category"]["swap"]["group_score"] == demo["per_category"]["swap"]["group_score"]
    assert "maple eval maple-model --benchmarks coco bivlc" in (demo_out / "results.md").read_text()


def test_checkpoint_loads_in_a_process_without_the_package(demo_out):
    output = run_isolated(
        f"""
        import importlib.util
        assert importlib.util.find_spec("modeling_maple") is None
        from PIL import Image
        from transformers import AutoModel, AutoProcessor
        model = AutoModel.from_pretrained({str(demo_out / "maple-model")!r}, trust_remote_code=True)
        processor = AutoProcessor.from_pretrained({str(demo_out / "maple-model")!r}, trust_remote_code=True)
        texts, images = model.encode(processor, texts=["a small red circle"], images=[Image.new("RGB", (48, 48))])
        print(type(model).__name__, tuple(texts.shape), tuple(images.shape))
        """,
        cwd=str(demo_out),
    )
    assert output.split() == ["MapleModel", "(1,", "64)", "(1,", "64)"]


def test_a_rerun_resumes_without_redoing_finished_stages(demo_out, capsys):
    import datasets
    from transformers.utils import logging as transformers_logging

    result_files = sorted((demo_out / "runs").glob("*/result.json"))
    checkpoints = [demo_out / "base" / "model.safetensors", *sorted((demo_out / "test_sets").glob("*.parquet"))]
    stamps = [path.stat().st_mtime_ns for path in result_files + checkpoints]
    first_timings = json.loads((demo_out / "timings.json").read_text())
    # as an earlier run with --push-to-hub leaves it: the push belongs to that run, and was reported by every later
    # one, in results.md and the summary (found by a review helper)
    (demo_out / "timings.json").write_text(json.dumps(first_timings | {"push to hub": 2.0}))
    # what writers killed mid-write left, never to be renamed into place (they stayed forever)
    killed = f".tmp-{_host_label()}-11-22"  # (a demo runs on one machine: this one)
    abandoned = [demo_out / f"results.json{killed}", result_files[0].with_name(f"result.json{killed}")]
    for path in abandoned:
        path.write_text("half")
    capsys.readouterr()
    assert main(["--out", str(demo_out), *QUICK]) == 0
    assert not [path for path in abandoned if path.exists()]
    assert "push to hub" not in capsys.readouterr().out + (demo_out / "results.md").read_text()
    assert [path.stat().st_mtime_ns for path in result_files + checkpoints] == stamps
    # --no-progress left the libraries' bars off for the rest of the process (a later test expecting them failed)
    assert transformers_logging.is_progress_bar_enabled() and not datasets.are_progress_bars_disabled()
    # the stages the rerun skipped keep the times of the run that did them
    timings = json.loads((demo_out / "timings.json").read_text())
    for stage in ("test sets", "base model", "preferences", "fine-tuning and evaluation"):
        assert timings[stage] == first_timings[stage]
    markdown = (demo_out / "results.md").read_text()  # its table of times too, not only the stages the rerun did
    assert all(f"| {stage} | {seconds:.0f} |" in markdown for stage, seconds in timings.items()), markdown


@pytest.mark.skipif(sys.platform == "win32", reason="no flock: the folder is not locked")
def test_a_folder_in_use_by_a_running_demo_is_refused_until_it_ends(demo_out, tmp_path, capsys):
    """A second demo on the folder of one still running (another terminal, a job retried) trained the same stages
    beside it and crashed on what the first renamed or deleted (its builder's cache, "could not find data in
    .../preferences/cache"), or wrote over its files."""
    import fcntl
    import shutil

    out = tmp_path / "out"
    shutil.copytree(demo_out, out)
    stamps = {path: path.stat().st_mtime_ns for path in out.rglob("*") if path.is_file()}
    running = os.open(out, os.O_RDONLY)  # what the running demo holds
    try:
        fcntl.flock(running, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main(["--out", str(out), *QUICK]) == 1
        assert capsys.readouterr().err == (f"maple demo: error: --out {out} is in use by another maple demo, still "
                                           "running: wait for it to finish, or choose another folder\n")
        assert {path: path.stat().st_mtime_ns for path in out.rglob("*") if path.is_file()} == stamps
    finally:
        os.close(running)  # the demo ended: the folder is free, and no lock file is left in it
    assert main(["--out", str(out), *QUICK]) == 0
    assert sorted(path.name for path in out.iterdir()) == sorted(path.name for path in demo_out.iterdir())


@pytest.mark.skipif(sys.platform == "win32", reason="no flock: the folder is not locked")
def test_the_folder_lock_is_released_when_the_run_raises(tmp_path):
    """A run that fails (a stage's error, a Ctrl-C) leaves its folder free for the rerun that resumes it."""
    from maple.demo.pipeline import OutputFolderInUseError, _output_folder_held

    with pytest.raises(KeyError, match="a stage failed"):
        with _output_folder_held(tmp_path):
            with pytest.raises(OutputFolderInUseError):  # held while the run works
                with _output_folder_held(tmp_path):
                    pass
            raise KeyError("a stage failed")
    with _output_folder_held(tmp_path):
        pass


def test_the_report_of_several_seeds_publishes_the_first_seed_s_maple_model_and_card(demo_out, tmp_path):
    """The runs of a second seed added to a finished folder: the report covers both seeds, and the published
    checkpoint and its card are the first seed's (only that seed's model is kept)."""
    import shutil

    from maple.demo.pipeline import DemoConfig, run_demo

    out = tmp_path / "out"
    shutil.copytree(demo_out, out, ignore=shutil.ignore_patterns("maple-model"))
    config = DemoConfig(out=out, seeds=(0, 1), quick=True, progress=False, workers=1)
    (out / "run.json").write_text(json.dumps(config.identity()))
    for method in METHODS:
        result = json.loads((out / "runs" / f"{method}-seed0" / "result.json").read_text())
        result["group_score"] += 10.0
        (out / "runs" / f"{method}-seed1").mkdir()
        (out / "runs" / f"{method}-seed1" / "result.json").write_text(json.dumps(result))
    result = run_demo(config)
    assert result.num_seeds == 2
    first = json.loads((out / "runs" / "maple-seed0" / "result.json").read_text())["group_score"]
    assert result.summary["maple"]["group_score"]["mean"] == pytest.approx(first + 5.0)
    card = (out / "maple-model" / "README.md").read_text()
    assert f"- type: group_score\n      value: {round(first, 2)}\n" in card
    assert (out / "maple-model" / "model.safetensors").read_bytes() == (
        out / "runs" / "maple-seed0" / "model" / "model.safetensors").read_bytes()


def test_the_model_card_reads_the_base_model_of_its_own_run(demo_out, tmp_path, monkeypatch):
    """The card named its base model `../base` and so looked its licence up in `../base/README.md` from the working
    directory: another folder's card gave the demo's model its licence."""
    import shutil

    from maple.demo.pipeline import DemoConfig, _write_model_card

    out = tmp_path / "out"
    shutil.copytree(demo_out, out)
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "README.md").write_text("---\nlicense: mit\n---\n")
    monkeypatch.chdir(tmp_path / "out")  # where ../base is that other folder
    result = json.loads((out / "runs" / "maple-seed0" / "result.json").read_text())
    _write_model_card(DemoConfig(out=out, seeds=(0,), quick=True), result, out / "maple-model", repo_id=None)
    card = (out / "maple-model" / "README.md").read_text()
    assert "license: apache-2.0" in card.split("---")[1] and "`../base` (a local folder)" in card


def test_the_model_card_has_the_licence_of_the_dataset_card(tmp_path):
    """The demo's model card had no licence (its base model, trained by the demo, has no card to read one from),
    while its preference data, drawn by this package's code as the model is trained by it, is under apache-2.0."""
    from huggingface_hub import ModelCard

    from maple.demo.pipeline import DemoConfig, _write_model_card

    maple_dir = tmp_path / "maple-model"
    maple_dir.mkdir()
    (maple_dir / "config.json").write_text("{}")
    result = {"i2t_r1": 10.0, "t2i_r1": 20.0, "text_score": 30.0, "image_score": 40.0, "group_score": 25.0,
              "per_category": {}, "modality_gap": {}, "training_args": {}, "log_history": []}
    _write_model_card(DemoConfig(out=tmp_path, seeds=(0,), quick=True), result, maple_dir, repo_id="me/maple-demo")
    assert ModelCard.load(maple_dir / "README.md").data.license == "apache-2.0"


def test_an_interrupted_run_keeps_the_times_of_the_stages_it_finished(demo_out, tmp_path, monkeypatch):
    import shutil

    from maple.demo.pipeline import DemoConfig, run_demo

    copy = tmp_path / "copy"
    shutil.copytree(demo_out, copy, ignore=shutil.ignore_patterns("runs", "base", "timings.json"))

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("maple.demo.pipeline._finetune_all", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_demo(DemoConfig(out=copy, seeds=(0,), quick=True, progress=False, workers=1))
    assert set(json.loads((copy / "timings.json").read_text())) == {"world", "base model"}


def test_runs_in_worker_processes_equal_a_run_in_this_process(demo_out, tmp_path, capfd):
    """The fixture's runs were trained two at a time in worker processes; redoing one here, serially,
    gives the same numbers; without progress bars, the run prints no bar and no log line."""
    import shutil

    from maple.demo.pipeline import DemoConfig, _finetune_all

    copy = tmp_path / "copy"
    shutil.copytree(demo_out, copy, ignore=shutil.ignore_patterns("runs"))
    config = DemoConfig(out=copy, seeds=(0,), quick=True, progress=False, workers=1)
    capfd.readouterr()
    _finetune_all(config, [("maple", 0)])
    printed = "".join(capfd.readouterr())  # the libraries' loading bars are the command's to hide, not checked here
    assert not re.search(r"\b[0-5]/5 \[", printed), printed  # the bar of the run's 5 training steps
    assert "'loss'" not in printed and "fine-tuning runs" not in printed, printed
    serial, parallel = (json.loads((out / "runs" / "maple-seed0" / "result.json").read_text()) for out in (copy, demo_out))
    for metric in ("group_score", "text_score", "image_score", "i2t_r1", "t2i_r1"):
        assert serial[metric] == pytest.approx(parallel[metric], abs=1e-6)
    assert serial["log_history"][-1]["train_loss"] == pytest.approx(parallel["log_history"][-1]["train_loss"], rel=1e-5)


def test_training_runs_rpa_trainer_with_the_given_budget_and_quiet_without_progress(tmp_path, monkeypatch):
    import trainer
    from transformers import PrinterCallback

    from maple.demo.pipeline import train

    trainers = []

    class Trainer:
        def __init__(self, model, args, train_dataset, processing_class):
            self.args, self.train_dataset, self.removed, self.trained = args, train_dataset, [], False
            trainers.append(self)

        def remove_callback(self, callback):
            self.removed.append(callback)

        def train(self):
            self.trained = True

    monkeypatch.setattr(trainer, "RPATrainer", Trainer)
    options = {"steps": 150, "batch_size": 32, "learning_rate": 1e-3, "rpa_weight": 0.5, "expand_negatives": True,
               "seed": 7, "num_text_candidates": 4}
    quiet = train("model", "processor", "data", tmp_path / "run", progress=False, **options)
    assert trainers == [quiet] and quiet.trained and quiet.train_dataset == "data"
    args = quiet.args
    assert (args.output_dir, args.max_steps, args.per_device_train_batch_size, args.learning_rate, args.weight_decay) == (
        str(tmp_path / "run"), 150, 32, 1e-3, 0.01)
    assert (args.rpa_weight, args.expand_negatives, args.num_text_candidates, args.seed) == (0.5, True, 4, 7)
    assert (args.logging_steps, args.save_strategy, args.report_to, args.use_cpu, args.dataloader_num_workers) == (
        7, "no", [], True, 0)
    assert args.disable_tqdm and quiet.removed == [PrinterCallback]  # without bars, no log line printed either
    shown = train("model", "processor", "data", tmp_path / "run", progress=True, **options)
    assert not shown.args.disable_tqdm and shown.removed == []


def test_each_method_fine_tunes_from_the_base_with_its_own_data_and_loss(demo_out, monkeypatch):
    """infonce: the anchor pairs, no RPA, no expanded negatives; infonce_expanded: every candidate in the denominator;
    maple: the same with RPA at the run's lambda; all with the same budget, the run's seed and 4 texts per step."""
    from maple.demo import pipeline

    calls = []

    def train(model, processor, dataset, output_dir, **options):
        calls.append((model, dataset, output_dir, options))
        raise _Stop

    monkeypatch.setattr(pipeline, "train", train)
    config = pipeline.DemoConfig(out=demo_out, seeds=(7,), quick=True, rpa_weight=0.25, progress=False)
    for method in pipeline.METHODS:
        with pytest.raises(_Stop):
            pipeline._finetune(config, method, 7)
    common = {"steps": 5, "batch_size": 16, "learning_rate": 1e-3, "seed": 7, "progress": False, "num_text_candidates": 4}
    losses = [(0.0, False), (0.0, True), (0.25, True)]
    for (model, dataset, output_dir, options), method, (rpa_weight, expand) in zip(calls, pipeline.METHODS, losses):
        assert options == {**common, "rpa_weight": rpa_weight, "expand_negatives": expand}, method
        assert output_dir == demo_out / "runs" / f"{method}-seed7" / "trainer"
        assert type(model).__name__ == "MapleModel" and model.config.text_config.vocab_size > 256
        candidates = {len(images) for images in dataset["candidate_images"]}
        assert candidates == ({1} if method == "infonce" else {4}), method
        if method == "infonce":
            assert dataset["candidate_texts"] == [[caption] for caption in dataset["caption"]]
            assert dataset["img2txt_scores"] == [[1.0]] * len(dataset)


def test_a_run_stores_its_training_arguments_but_not_display_ones_and_only_maple_keeps_its_model(demo_out):
    for method in METHODS:
        run = demo_out / "runs" / f"{method}-seed0"
        args = json.loads((run / "result.json").read_text())["training_args"]
        assert args["max_steps"] == 5 and args["num_text_candidates"] == 4 and "disable_tqdm" not in args
        assert (run / "model").exists() == (method == "maple")


def test_a_failed_worker_run_is_named_and_the_other_runs_are_kept(demo_out, tmp_path):
    import shutil

    from maple.demo.pipeline import DemoConfig, _finetune_all

    copy = tmp_path / "copy"
    shutil.copytree(demo_out, copy, ignore=shutil.ignore_patterns("runs"))
    (copy / "runs" / "maple-seed0").mkdir(parents=True)
    (copy / "runs" / "maple-seed0" / "model").write_text("a file where the run saves its model folder")
    config = DemoConfig(out=copy, seeds=(0,), quick=True, progress=False, workers=2)
    with pytest.raises(RuntimeError, match="fine-tuning run maple-seed0 failed .*rerun the same command to resume"):
        _finetune_all(config, [("maple", 0), ("infonce", 0), ("infonce_expanded", 0)])
    assert (copy / "runs" / "infonce-seed0" / "result.json").exists()
    assert not (copy / "runs" / "maple-seed0" / "result.json").exists()


def _fork_workers(monkeypatch) -> None:
    """The fine-tuning pool's workers forked from this process, not spawned: a spawned worker imports torch and the
    package again (seconds), and would find a test's stand-in for `_finetune` only in a module it imports itself; no
    `_init_worker` (torch in a forked copy of a process that has run it can deadlock)."""
    from maple.demo import pipeline

    fork = pipeline.multiprocessing.get_context("fork")
    monkeypatch.setattr(pipeline.multiprocessing, "get_context", lambda method: fork)
    monkeypatch.setattr(pipeline, "_init_worker", _no_setup)


def _no_setup() -> None:
    pass


RUN_WAIT_SECONDS = 60  # far longer than a test waits: a run still waiting was not ended


def _mark_started(config, method: str) -> None:
    """Write the pid of the worker running `method` to its marker file in `config.out`."""
    (config.out / f"{method}.pid").write_text(str(os.getpid()))


def _wait_until_started(config, method: str) -> int:
    """The pid of the worker that started `method`, once it has written it (the marker exists, empty, before its pid
    is written: read then, it failed the test now and then)."""
    marker, deadline = config.out / f"{method}.pid", time.monotonic() + RUN_WAIT_SECONDS
    while not (marker.exists() and marker.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return int(marker.read_text())


def _killed_with_a_run_in_flight(config, method: str, seed: int) -> None:
    """`done` finishes (its result.json written); `killed` is killed, as the OOM killer would, once `slow` (on the
    worker `done` freed) is in flight; `slow` would run on; `never` must not start."""
    _mark_started(config, method)
    if method == "done":
        (config.out / "runs" / "done-seed0").mkdir(parents=True)
        (config.out / "runs" / "done-seed0" / "result.json").write_text("{}")
    elif method == "killed":
        _wait_until_started(config, "slow")
        os.kill(os.getpid(), signal.SIGKILL)
    elif method == "slow":
        time.sleep(RUN_WAIT_SECONDS)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_worker_is_reported_with_every_run_in_flight_and_the_finished_runs_are_kept(tmp_path, monkeypatch):
    """A worker killed mid-run (by the OOM killer, say) breaks the pool: the error named one run in flight, chosen
    arbitrarily, as a run that failed (a RuntimeError, with a traceback)."""
    from maple.demo import pipeline

    _fork_workers(monkeypatch)
    monkeypatch.setattr(pipeline, "_finetune", _killed_with_a_run_in_flight)
    config = pipeline.DemoConfig(out=tmp_path, seeds=(0,), quick=True, progress=False, workers=2)
    started = time.monotonic()
    with pytest.raises(pipeline.WorkerDiedError) as died:
        pipeline._finetune_all(config, [("done", 0), ("killed", 0), ("slow", 0), ("never", 0)])
    assert str(died.value) == (
        "a fine-tuning worker process died (killed, most likely for lack of memory) while these runs were in flight: "
        "killed-seed0, slow-seed0; the finished runs are kept: rerun the same command to resume (with fewer --workers "
        "if memory ran out)"
    )
    assert time.monotonic() - started < RUN_WAIT_SECONDS and _ends(_wait_until_started(config, "slow"))
    assert (tmp_path / "runs" / "done-seed0" / "result.json").exists() and not (tmp_path / "never.pid").exists()


class _UnreadableError(Exception):
    """An error a worker raises that does not unpickle in the main process (its __init__ takes two arguments)."""

    def __init__(self, message, detail):
        super().__init__(message)


def _failing_unreadably(config, method: str, seed: int) -> None:
    raise _UnreadableError("no image", "detail")


def test_a_run_error_that_cannot_be_read_back_is_not_called_a_killed_worker(tmp_path, monkeypatch):
    """The pool breaks too when a run's error does not unpickle: that was reported as a worker killed for lack of
    memory, its cause hidden (found by a review)."""
    from concurrent.futures.process import BrokenProcessPool

    from maple.demo import pipeline

    _fork_workers(monkeypatch)
    monkeypatch.setattr(pipeline, "_finetune", _failing_unreadably)
    config = pipeline.DemoConfig(out=tmp_path, seeds=(0,), quick=True, progress=False, workers=2)
    with pytest.raises(BrokenProcessPool) as broken:
        pipeline._finetune_all(config, [("a", 0), ("b", 0)])
    assert "_UnreadableError" in str(broken.value.__cause__)


def _a_done_then_b_unreadable(config, method: str, seed: int) -> None:
    """`a` returns as `b` starts; `b` then fails with an error that does not unpickle; `c` would run long."""
    if method == "b":
        time.sleep(0.05)
        raise _UnreadableError("no image", "detail")
    if method == "c":
        time.sleep(RUN_WAIT_SECONDS)


def test_a_pool_broken_by_an_unreadable_error_is_not_called_a_killed_worker_when_submit_finds_it(tmp_path, monkeypatch):
    """When the pool broke between a wait that returned another run and the next submit, submit's error (which has no
    cause) was reported as a killed worker, the cause on the failed run's future hidden (found by a review)."""
    from concurrent.futures.process import BrokenProcessPool

    from maple.demo import pipeline

    _fork_workers(monkeypatch)
    monkeypatch.setattr(pipeline, "_finetune", _a_done_then_b_unreadable)
    real_wait = pipeline.wait

    def slow_wait(*args, **kwargs):  # the main process delayed after a wait (a loaded machine): b fails meanwhile
        done = real_wait(*args, **kwargs)
        time.sleep(0.5)
        return done

    monkeypatch.setattr(pipeline, "wait", slow_wait)
    config = pipeline.DemoConfig(out=tmp_path, seeds=(0,), quick=True, progress=False, workers=2)
    with pytest.raises(BrokenProcessPool) as broken:
        pipeline._finetune_all(config, [("a", 0), ("b", 0), ("c", 0)])
    assert "_UnreadableError" in str(broken.value.__cause__)


def test_a_run_that_wrote_its_result_is_not_named_as_lost(tmp_path):
    """A run whose result had not come back when another worker died was named as in flight, though it had finished
    (found by a review)."""
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool

    from maple.demo import pipeline

    futures = [Future(), Future()]
    for future in futures:
        future.set_exception(BrokenProcessPool("terminated abruptly"))
    (tmp_path / "runs" / "done-seed0").mkdir(parents=True)
    (tmp_path / "runs" / "done-seed0" / "result.json").write_text("{}")
    assert pipeline._lost_runs({futures[0]: ("done", 0), futures[1]: ("lost", 0)}, tmp_path) == ["lost-seed0"]


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX signal masks")
def test_a_ctrl_c_taken_by_another_thread_while_workers_start_waits_until_they_have():
    """SIGINT was blocked in the main thread only: another thread (tqdm's monitor) took a Ctrl-C, and Python raised it
    in the main thread at once, in the middle of starting a worker, which was left half started (found by a review)."""
    from maple.demo import pipeline

    finished = []
    with pytest.raises(KeyboardInterrupt):
        with pipeline._interrupts_kept_from_new_processes():
            threading.Thread(target=os.kill, args=(os.getpid(), signal.SIGINT)).start()
            time.sleep(0.5)  # a worker starting: not to be cut short
            finished.append(True)
    assert finished == [True]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    # the Ctrl-C goes to the handler in place, not always as a KeyboardInterrupt, and is not lost when the body fails
    # (found by a review)
    calls = []
    signal.signal(signal.SIGINT, lambda number, frame: calls.append(number))
    try:
        with pytest.raises(RuntimeError, match="submit failed"):
            with pipeline._interrupts_kept_from_new_processes():
                threading.Thread(target=os.kill, args=(os.getpid(), signal.SIGINT)).start()
                time.sleep(0.5)
                raise RuntimeError("submit failed")
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    assert calls == [signal.SIGINT]


def test_a_killed_worker_ends_the_command_in_one_line(tmp_path, monkeypatch, capsys):
    from maple.demo.pipeline import WorkerDiedError

    def run_demo(config):
        raise WorkerDiedError(["maple-seed0", "infonce-seed1"])

    monkeypatch.setattr("maple.demo.pipeline.run_demo", run_demo)
    assert main(["--out", str(tmp_path / "out"), *QUICK]) == 1
    assert capsys.readouterr().err == (
        "maple demo: error: a fine-tuning worker process died (killed, most likely for lack of memory) while these "
        "runs were in flight: maple-seed0, infonce-seed1; the finished runs are kept: rerun the same command to resume "
        "(with fewer --workers if memory ran out)\n"
    )


def _interrupted(config, method: str, seed: int) -> None:
    """A Ctrl-C, which a terminal sends to every process of its group: `idle` finishes once `busy` has started on the
    other worker, leaving its own waiting for a run; `busy` then sends SIGINT to that worker, to its own and to the main
    process, and would run on."""
    _mark_started(config, method)
    if method == "idle":
        _wait_until_started(config, "busy")
    else:
        idle_worker = _wait_until_started(config, "idle")
        time.sleep(1.0)  # `idle`'s worker is back to waiting for a run, the main process to waiting for `busy`
        for pid in (idle_worker, os.getpid(), os.getppid()):
            os.kill(pid, signal.SIGINT)
        time.sleep(RUN_WAIT_SECONDS)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_an_interrupt_ends_the_workers_at_once_and_they_print_nothing(tmp_path, monkeypatch, capfd):
    """A Ctrl-C reaches every process of the terminal's group: each worker printed a KeyboardInterrupt traceback of its
    own (waiting for a run, or importing torch), and the runs in flight ran on."""
    from maple.demo import pipeline

    _fork_workers(monkeypatch)
    monkeypatch.setattr(pipeline, "_finetune", _interrupted)
    config = pipeline.DemoConfig(out=tmp_path, seeds=(0,), quick=True, progress=False, workers=2)
    capfd.readouterr()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        pipeline._finetune_all(config, [("idle", 0), ("busy", 0)])
    assert time.monotonic() - started < RUN_WAIT_SECONDS  # `busy` was ended, not waited for
    assert all(_ends(_wait_until_started(config, run)) for run in ("idle", "busy"))
    printed = "".join(capfd.readouterr())
    assert "Traceback" not in printed and "KeyboardInterrupt" not in printed, printed


def _failed_then_interrupted(config, method: str, seed: int) -> None:
    """`boom` fails once `busy` has started; `busy` then, the main process waiting for it to finish, sends the main
    process a SIGINT, and would run on."""
    _mark_started(config, method)
    if method == "boom":
        _wait_until_started(config, "busy")
        raise OSError("disk full")
    _wait_until_started(config, "boom")
    time.sleep(1.0)  # the main process has seen `boom` fail and waits for `busy`
    os.kill(os.getppid(), signal.SIGINT)
    time.sleep(RUN_WAIT_SECONDS)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_an_interrupt_while_the_runs_beside_a_failed_one_finish_ends_them(tmp_path, monkeypatch):
    """After a run failed, the pool's shutdown waited for the other runs in flight (to keep them), and a Ctrl-C then
    left them running: the workers do not see it."""
    from maple.demo import pipeline

    _fork_workers(monkeypatch)
    monkeypatch.setattr(pipeline, "_finetune", _failed_then_interrupted)
    config = pipeline.DemoConfig(out=tmp_path, seeds=(0,), quick=True, progress=False, workers=2)
    with pytest.raises(KeyboardInterrupt):
        pipeline._finetune_all(config, [("boom", 0), ("busy", 0)])
    assert _ends(_wait_until_started(config, "busy"))


class _ThreadPool(ThreadPoolExecutor):
    """A stand-in for the process pool: the same scheduling, with threads, so that a test can replace `_finetune`."""

    created = []

    def __init__(self, max_workers, mp_context, initializer):
        self.created.append((max_workers, mp_context.get_start_method(), initializer))
        super().__init__(max_workers)  # without the initializer, which would set this process's threads


def test_runs_in_workers_are_one_per_worker_quiet_and_a_failure_starts_no_further_run(tmp_path, monkeypatch, capsys):
    """The scheduling of `_finetune_all` with `workers > 1`: a run starts as soon as a worker is free (not when all
    are), never more runs in flight than workers, the workers get a config without progress bars (one bar for all
    runs, in this process), and after a failure no further run starts."""
    from maple.demo import pipeline

    started, third_started = [], threading.Event()

    def finetune(config, method, seed):
        started.append((method, seed, config.progress))
        if method == "slow":  # holds its worker until the third run has started on the other one
            assert third_started.wait(10), "the third run waited for the first to finish"
        if method == "third":
            third_started.set()
        if method == "boom":
            raise OSError("disk full")
        time.sleep(0.2)  # still running when the failure is seen

    monkeypatch.setattr(pipeline, "_finetune", finetune)
    monkeypatch.setattr(pipeline, "ProcessPoolExecutor", _ThreadPool)
    _ThreadPool.created.clear()
    config = pipeline.DemoConfig(out=tmp_path, quick=True, workers=2, progress=True)
    pipeline._finetune_all(config, [("slow", 0), ("fast", 0), ("third", 0)])
    assert sorted(started) == [("fast", 0, False), ("slow", 0, False), ("third", 0, False)]
    assert "fine-tuning runs: 100%" in capsys.readouterr().err
    started.clear()
    with pytest.raises(RuntimeError, match=r"fine-tuning run boom-seed1 failed \(OSError: disk full\)"):
        pipeline._finetune_all(replace(config, progress=False), [("boom", 1), ("other", 1), ("never", 1)])
    assert sorted(started) == [("boom", 1, False), ("other", 1, False)]
    assert "fine-tuning runs" not in capsys.readouterr().err
    assert _ThreadPool.created == [(2, "spawn", pipeline._init_worker)] * 2


def test_runs_in_this_process_stop_at_the_first_failure_naming_it(tmp_path, monkeypatch, capsys):
    from maple.demo import pipeline

    started = []

    def finetune(config, method, seed):
        started.append((method, seed))
        if method == "boom":
            raise OSError("disk full")

    monkeypatch.setattr(pipeline, "_finetune", finetune)
    config = pipeline.DemoConfig(out=tmp_path, quick=True, workers=1, progress=False)
    with pytest.raises(RuntimeError, match=r"fine-tuning run boom-seed0 failed \(OSError: disk full\)"):
        pipeline._finetune_all(config, [("first", 0), ("boom", 0), ("never", 0)])
    assert started == [("first", 0), ("boom", 0)]
    assert "fine-tuning runs" not in capsys.readouterr().err


def test_a_worker_trains_on_one_thread_without_progress_bars(monkeypatch):
    import datasets
    import torch
    import tqdm
    import transformers

    from maple.demo.pipeline import _init_worker

    calls = []
    monkeypatch.setattr(torch, "set_num_threads", lambda threads: calls.append(("threads", threads)))
    monkeypatch.setattr(datasets, "disable_progress_bars", lambda: calls.append("datasets"))
    monkeypatch.setattr(transformers.utils.logging, "disable_progress_bar", lambda: calls.append("transformers"))
    # tqdm's default lock holds a semaphore, which a worker ended by a signal leaves behind (Python warned of it)
    monkeypatch.setattr(tqdm.tqdm, "set_lock", lambda lock: calls.append(("tqdm lock", type(lock))))
    _init_worker()
    assert calls == [("threads", 1), "datasets", "transformers", ("tqdm lock", type(threading.RLock()))]


def test_stage_times_add_up_and_a_rerun_s_own_times_replace_the_earlier_ones(tmp_path):
    from maple.demo.pipeline import StageTimer

    timer = StageTimer(file=tmp_path / "timings.json", earlier={"world": 100.0, "base model": 50.0})
    assert timer.run("world", lambda: time.sleep(0.01) or "drawn") == "drawn"
    timer.run("world", lambda: time.sleep(0.01))
    assert 0.02 <= timer.seconds["world"] < 100.0
    stored = json.loads((tmp_path / "timings.json").read_text())
    assert stored == timer.all_seconds == {"world": timer.seconds["world"], "base model": 50.0}


class _Stop(Exception):
    """Raised by a stand-in to stop a stage once its inputs are recorded."""


def _small_world(seed: int = 0):
    from maple.demo.world import WorldConfig, build_world

    return build_world(WorldConfig(seed=seed, n_train_families=5, n_retrieval=2, n_quadruples_per_category=2))


def test_the_base_model_is_trained_with_plain_infonce_on_the_run_s_budget_and_world_seed(tmp_path, monkeypatch):
    import torch

    from maple.demo import pipeline

    world, calls = _small_world(seed=3), []

    def train(model, processor, dataset, output_dir, **options):
        calls.append((model, dataset, output_dir, options))
        raise _Stop

    monkeypatch.setattr(pipeline, "train", train)
    config = pipeline.DemoConfig(out=tmp_path, quick=True, world_seed=3, learning_rate=5e-4, progress=False)
    with pytest.raises(_Stop):
        pipeline._train_base(config, world, tmp_path / "base")
    ((model, dataset, output_dir, options),) = calls
    assert options == {"steps": 20, "batch_size": 32, "learning_rate": 5e-4, "rpa_weight": 0.0,
                       "expand_negatives": False, "seed": 3, "progress": False}
    assert dataset["caption"] == [example.caption for example in world.train] and output_dir == tmp_path / "base-training"
    assert dataset["candidate_texts"] == [[example.caption] for example in world.train]
    reference, _ = pipeline.build_embedder(world, "dual_encoder", seed=3)  # initialised from the world seed
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values(), strict=True))


def test_the_preference_data_is_built_as_the_paper_builds_it_with_the_run_s_judge(tmp_path, monkeypatch):
    import dataset_builders

    from maple.demo import pipeline

    world, options = _small_world(seed=3), {}

    def builder(**given):
        options.update(given)
        raise _Stop

    monkeypatch.setattr(dataset_builders, "MaplePreferences", builder)
    config = pipeline.DemoConfig(out=tmp_path, quick=True, world_seed=3, judge_noise=0.7, progress=False)
    with pytest.raises(_Stop):
        pipeline._build_preferences(config, world, tmp_path / "base", tmp_path / "preferences")
    miner, judge, captioner = options.pop("miner"), options.pop("judge"), options.pop("captioner")
    assert type(miner.encode_images).__name__ == "SceneFeatureEncoder" and miner.search_device.type == "cpu"
    assert (type(judge).__name__, judge.noise, judge.seed) == ("SceneGraphJudge", 0.7, 3)
    assert (type(captioner).__name__, captioner.n_samples, captioner.caption_anchors, captioner.seed) == (
        "SceneGraphCaptioner", 2, False, 3)
    assert options.pop("source_dataset")["caption"] == [example.caption for example in world.train]
    assert options == {
        "config_name": "paper", "work_dir": tmp_path / "preferences" / "work",
        "cache_dir": str(tmp_path / "preferences" / "cache"), "progress": False, "num_hard_negatives": 3,
        "captioned_negatives": 3, "max_candidate_texts": 6, "semdedup_clusters": None, "seed": 3,
        "source_license": "apache-2.0",
    }


def test_every_problem_of_a_demo_config_is_reported_at_once(tmp_path):
    from maple.demo.pipeline import DemoConfig

    with pytest.raises(ValueError) as refused:
        DemoConfig(out=tmp_path, seeds=(1, 1, -1), miner="dino", rpa_weight=2.0)
    assert str(refused.value) == (
        "unknown miner 'dino': expected one of scene-graph, base-model; seeds must be distinct, got [1, 1, -1]; seeds "
        "must lie in [0, 2**32) (numpy's and torch's seed range), got [1, 1, -1]; rpa_weight (lambda) must lie in (0, 1], "
        "got 2.0"
    )


def test_a_folder_with_another_run_is_refused(demo_out, capsys):
    with pytest.raises(SystemExit):
        main(["--out", str(demo_out), "--quick", "--seeds", "2", "--no-progress"])
    assert "holds a different demo run (seeds: [0] -> [0, 1]); choose another folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    "values, message",
    [
        ({"seeds": ()}, "seeds: give at least one seed"),
        ({"seeds": (True,)}, "seeds must be integers, got [True]"),
        ({"seeds": ("0",)}, "seeds must be integers, got ['0']"),
        ({"seeds": (2**32,)}, "seeds must lie in [0, 2**32)"),
        ({"rpa_weight": 0.0}, "rpa_weight (lambda) must lie in (0, 1], got 0.0"),
        ({"workers": 0}, "workers must be a positive integer, got 0"),
        ({"workers": True}, "workers must be a positive integer, got True"),
        ({"judge_noise": math.inf}, "judge_noise is a standard deviation and must be finite and >= 0, got inf"),
        ({"judge": "  "}, "judge: give a Hub id or a local path of an MLLM judge"),
        # accepted: a traceback from numpy once the base model trained, or NaN losses, after the folder was claimed
        ({"world_seed": -1}, "world_seed must be an integer in [0, 2**32) (numpy's and torch's seed range), got -1"),
        ({"world_seed": 1.5}, "world_seed must be an integer in [0, 2**32)"),
        ({"learning_rate": math.nan}, "learning_rate must be a finite number > 0, got nan"),
        ({"learning_rate": 0.0}, "learning_rate must be a finite number > 0, got 0.0"),
        ({"learning_rate": True}, "learning_rate must be a finite number > 0, got True"),
    ],
)
def test_a_demo_config_refuses_each_bad_value(tmp_path, values, message):
    from maple.demo.pipeline import DemoConfig

    with pytest.raises(ValueError) as refused:
        DemoConfig(out=tmp_path, **values)
    assert message in str(refused.value)


def test_a_demo_config_accepts_the_bounds_of_each_range(tmp_path):
    from maple.demo.pipeline import DemoConfig

    DemoConfig(out=tmp_path, seeds=(0, 2**32 - 1), rpa_weight=1.0, judge_noise=0.0, workers=1, world_seed=2**32 - 1)
    DemoConfig(out=tmp_path, world_seed=0, learning_rate=1)


def test_the_budgets_are_the_documented_ones(tmp_path):
    """docs/demo.md: the full run's numbers are measured with this budget, the smoke run's is `--quick`."""
    from maple.demo.pipeline import FULL, QUICK, Budget, DemoConfig

    assert FULL == Budget(train_families=400, base_steps=600, base_batch_size=64, finetune_steps=150,
                          finetune_batch_size=32, eval_retrieval=500, eval_quadruples_per_category=150)
    assert QUICK == Budget(train_families=60, base_steps=20, base_batch_size=32, finetune_steps=5,
                           finetune_batch_size=16, eval_retrieval=60, eval_quadruples_per_category=20)
    assert DemoConfig(out=tmp_path).budget is FULL and DemoConfig(out=tmp_path, quick=True).budget is QUICK


@pytest.mark.parametrize(
    "change, message",
    [
        ({"backbone": "mllm"}, "backbone: 'dual_encoder' -> 'mllm'"),
        ({"judge_noise": 0.5}, "judge_noise: 0.3 -> 0.5"),
        ({"miner": "base-model"}, "miner: 'scene-graph' -> 'base-model'"),
        ({"rpa_weight": 0.25}, "rpa_weight: 0.5 -> 0.25"),
        ({"learning_rate": 3e-4}, "learning_rate: 0.001 -> 0.0003"),
    ],
)
def test_a_folder_is_refused_for_a_run_that_differs_in_any_value_that_defines_it(tmp_path, change, message):
    from maple.demo.pipeline import DemoConfig, claim_output_folder

    claim_output_folder(DemoConfig(out=tmp_path, seeds=(0,), quick=True))
    with pytest.raises(ValueError, match="holds a different demo run") as refused:
        claim_output_folder(DemoConfig(out=tmp_path, seeds=(0,), quick=True, **change))
    assert f"({message})" in str(refused.value)


def test_a_refusal_names_the_changed_values_in_sorted_order(tmp_path):
    """The same refusal gives the same message every time (the keys are a set, whose order varies between runs)."""
    from maple.demo.pipeline import DemoConfig, claim_output_folder

    claim_output_folder(DemoConfig(out=tmp_path, seeds=(0,), quick=True))
    with pytest.raises(ValueError) as refused:
        claim_output_folder(DemoConfig(out=tmp_path, seeds=(1,), backbone="mllm", judge_noise=0.5, miner="base-model",
                                       rpa_weight=0.25, learning_rate=3e-4, world_seed=2))
    names = re.findall(r"(?:\(|; )([a-z_.]+): ", str(refused.value))
    assert len(names) == 16 and names == sorted(names), names


def test_a_run_identity_names_its_judge_and_the_demo_version(tmp_path):
    from maple.demo.pipeline import DEMO_VERSION, DemoConfig

    assert DemoConfig(out=tmp_path).identity()["judge"] == "scene-graph"
    assert DemoConfig(out=tmp_path, judge="org/judge").identity()["judge"] == "org/judge"
    assert DemoConfig(out=tmp_path).identity()["demo_version"] == DEMO_VERSION


def test_the_judge_noise_defines_a_run_of_the_scene_graph_judge_only(tmp_path, monkeypatch):
    """The noise is the scene-graph judge's (`make_judge`): with a real `--judge` it changes nothing, yet a rerun with
    another `--judge-noise` was refused ("judge_noise: 0.3 -> 0.5"), also that of a folder an older demo wrote."""
    from maple.demo import pipeline

    monkeypatch.setattr(pipeline, "check_judge", lambda judge, token=None: None)  # no judge to load
    real_judge = pipeline.DemoConfig(out=tmp_path, seeds=(0,), quick=True, judge="org/judge")
    assert "judge_noise" not in real_judge.identity()
    pipeline.claim_output_folder(real_judge)
    pipeline.claim_output_folder(replace(real_judge, judge_noise=0.5))
    (tmp_path / "run.json").write_text(json.dumps({**real_judge.identity(), "judge_noise": 0.3}))  # an older demo's
    pipeline.claim_output_folder(replace(real_judge, judge_noise=0.5))
    # against a run of the scene-graph judge, the older run's noise is compared as written, not as missing
    with pytest.raises(ValueError, match=r"\(judge: 'org/judge' -> 'scene-graph'\)"):
        pipeline.claim_output_folder(replace(real_judge, judge=None))
    with pytest.raises(ValueError, match=r"judge: 'org/judge' -> 'scene-graph'; judge_noise: 0.3 -> 0.5\)"):
        pipeline.claim_output_folder(replace(real_judge, judge=None, judge_noise=0.5))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda stored: stored.update(demo_version=stored["demo_version"] - 1), "demo_version: 4 -> 5"),
        (lambda stored: stored.pop("miner"), "miner: None -> 'scene-graph'"),  # a key an older demo did not write
        (lambda stored: stored["budget"].pop("finetune_steps"), "budget.finetune_steps: None -> 5"),
    ],
)
def test_a_folder_of_an_older_demo_is_refused(tmp_path, edit, message):
    from maple.demo.pipeline import DEMO_VERSION, DemoConfig, claim_output_folder

    assert DEMO_VERSION == 5  # the first case's message
    config = DemoConfig(out=tmp_path, seeds=(0,), quick=True)
    claim_output_folder(config)
    stored = json.loads((tmp_path / "run.json").read_text())
    edit(stored)
    (tmp_path / "run.json").write_text(json.dumps(stored))
    with pytest.raises(ValueError) as refused:
        claim_output_folder(config)
    assert f"holds a different demo run ({message}); choose another folder" in str(refused.value)


def test_an_output_folder_is_created_with_its_missing_parents(tmp_path):
    from maple.demo.pipeline import DemoConfig, claim_output_folder

    out = tmp_path / "a" / "b" / "out"
    claim_output_folder(DemoConfig(out=out, seeds=(0,), quick=True))
    assert json.loads((out / "run.json").read_text())["seeds"] == [0]


@pytest.mark.parametrize(
    "damaged, message",
    [
        ("timings.json", "timings.json cannot be read as the demo's stage times (Expecting"),
        ("runs/maple-seed0/result.json", "result.json cannot be read as a run's result (Expecting"),
    ],
)
def test_a_damaged_file_of_a_started_run_is_reported_in_one_line(demo_out, tmp_path, capsys, damaged, message):
    """A damaged timings.json or result.json in the folder of a run stopped its rerun with a JSONDecodeError
    traceback, where a damaged run.json was reported in one line."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(demo_out, out)
    (out / damaged).write_text('{"world": [0')
    with pytest.raises(SystemExit):
        main(["--out", str(out), *QUICK])
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1, error


def test_a_different_run_is_refused_naming_each_changed_value_with_both_values(tmp_path):
    """The message named the keys that differed ("it differs in: budget, quick, world") but not their values, and
    not which value of the nested budget or world."""
    from maple.demo.pipeline import DemoConfig, claim_output_folder

    claim_output_folder(DemoConfig(out=tmp_path, seeds=(0,), quick=True))
    with pytest.raises(ValueError) as refused:
        claim_output_folder(DemoConfig(out=tmp_path, seeds=(0, 1), quick=True, world_seed=3))
    assert "holds a different demo run (seeds: [0] -> [0, 1]; world.seed: 0 -> 3); choose another" in str(refused.value)
    with pytest.raises(ValueError, match=r"budget\.finetune_steps: 5 -> 150; .*quick: True -> False"):
        claim_output_folder(DemoConfig(out=tmp_path, seeds=(0,)))


def test_unusable_output_folders_are_refused_in_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "listed").mkdir()
    (tmp_path / "listed" / "run.json").write_text("[1, 2]")
    (tmp_path / "truncated").mkdir()
    (tmp_path / "truncated" / "run.json").write_text('{"seeds": [0')
    (tmp_path / "unreadable" / "run.json").mkdir(parents=True)  # an OSError (IsADirectoryError) when read
    for out, message in [
        ("a-file/sub", "a-file, a file; expected a folder"),
        ("listed", "run.json holds a list, not a demo run"),
        ("truncated", "run.json cannot be read as a demo run"),
        ("unreadable", "run.json cannot be read as a demo run ([Errno 21] Is a directory"),
        ("/proc/maple-demo-out", "--out /proc/maple-demo-out: cannot write there"),  # even root cannot
    ]:
        with pytest.raises(SystemExit):
            main(["--out", str(tmp_path / out), *QUICK])
        assert message in capsys.readouterr().err
    # a home folder of no user is a folder here, as a shell leaves it (a RuntimeError traceback from Path.expanduser)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "~nosuchuser").write_text("x")
    with pytest.raises(SystemExit):
        main(["--out", "~nosuchuser/sub", *QUICK])
    assert f"--out ~nosuchuser/sub is inside {tmp_path / '~nosuchuser'}, a file" in capsys.readouterr().err


def test_an_empty_out_is_refused_before_it_becomes_the_current_folder(tmp_path, monkeypatch, capsys):
    """argparse's type made `--out ""` (an unset variable) Path(""), the current folder, where the demo ran."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", "", *QUICK])
    assert exit_info.value.code == 2
    assert "maple demo: error: argument --out: empty; expected a folder (created if missing)" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_an_empty_out_is_refused_by_the_demo_config_too_but_the_current_folder_is_taken(tmp_path, monkeypatch):
    """From Python, DemoConfig(out="") was Path(""), the current folder, which the run filled."""
    from maple.demo.pipeline import DemoConfig

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"out is empty; expected a folder \(created if missing\)"):
        DemoConfig(out="")
    assert DemoConfig(out=".").out == Path(".")  # named on purpose
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(sys.platform == "win32", reason="no flock: no temporary file can be told abandoned")
def test_a_folder_holding_only_the_half_written_claim_of_a_killed_run_is_taken(tmp_path):
    """A run killed as it wrote run.json left its temporary file, and every rerun refused the folder as "not empty and
    holds no demo run". One being written (by a run claiming the folder at the same time) is no leftover."""
    import fcntl

    from maple.demo.pipeline import RUN_FILE, DemoConfig, claim_output_folder

    out = tmp_path / "out"
    out.mkdir()
    claiming = out / f"{RUN_FILE}.tmp-{_host_label()}-33-44"
    claiming.write_text("half")
    with open(claiming, "rb+") as writer:
        fcntl.flock(writer, fcntl.LOCK_EX)
        with pytest.raises(ValueError, match="is not empty and holds no demo run"):
            claim_output_folder(DemoConfig(out=out, quick=True))
    claim_output_folder(DemoConfig(out=out, quick=True))
    assert [path.name for path in out.iterdir()] == [RUN_FILE]


def test_a_foreign_folder_is_refused(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), *QUICK])
    assert "not empty and holds no demo run" in capsys.readouterr().err


def test_a_folder_inside_another_run_is_refused(tmp_path, capsys):
    """`--out OUTER/base` of a run stopped before its base model was accepted, and the outer run's rerun then
    crashed renaming base.partial onto it (found by a review)."""
    (tmp_path / "outer").mkdir()
    (tmp_path / "outer" / "run.json").write_text("{}")
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "outer" / "base"), *QUICK])
    assert f"--out {tmp_path / 'outer' / 'base'} is inside the demo run in {tmp_path / 'outer'}" in capsys.readouterr().err
    assert not (tmp_path / "outer" / "base").exists()


def test_no_progress_hides_the_tokenizer_trainer_s_bars(capfd):
    """The byte-level BPE trainer drew its bars (and, piped, printed empty lines) under --no-progress (found by a
    review)."""
    from maple.demo import pipeline
    from maple.demo.world import WorldConfig, build_world

    world = build_world(WorldConfig(seed=0, n_train_families=5, n_retrieval=2, n_quadruples_per_category=2))
    capfd.readouterr()
    pipeline.build_embedder(world, "dual_encoder", progress=False)
    assert capfd.readouterr() == ("", "")


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--backbone", "resnet"], "unknown backbone 'resnet'"),
        (["--miner", "dino"], "unknown miner 'dino'"),
        (["--seeds", "1,x"], "argument --seeds: expected a count (e.g. 3) or a comma-separated list of integers"),
        (["--seeds", "1,,2"], "argument --seeds: expected a count (e.g. 3) or a comma-separated list of integers (e.g. "
                              "0,1,2 or 5,), got '1,,2'"),
        (["--seeds", "0"], "argument --seeds: a count must lie in [1, 1000]"),
        # it counted them out: a MemoryError
        (["--seeds", "4294967296"], "argument --seeds: a count must lie in [1, 1000] (each seed is three fine-tuning "
                                    "runs; a list takes any seeds), got 4294967296"),
        # argparse read "-1," as an option: "argument --seeds: expected one argument"
        (["--seeds", "-1,"], "seeds must lie in [0, 2**32) (numpy's and torch's seed range), got [-1]"),
        (["--seeds", "-1,2"], "seeds must lie in [0, 2**32) (numpy's and torch's seed range), got [-1, 2]"),
        # found once the run was done (a traceback, or a model pushed without its data), or no push at all
        (["--push-to-hub", "my demo"], "push_to_hub: 'my demo' is not a Hub repo id"),
        (["--push-to-hub", "me/" + "a" * 90], "-preferences' is not a Hub repo id"),
        (["--push-to-hub", ""], "push_to_hub: '' is not a Hub repo id"),
        (["--rpa-weight", "1.5"], "rpa_weight (lambda) must lie in (0, 1]"),
        (["--seeds=-1,2"], "seeds must lie in [0, 2**32)"),
        (["--judge-noise", "nan"], "judge_noise is a standard deviation and must be finite"),
        (["--judge", "/no/such/judge"], "--judge /no/such/judge: no such folder: /no/such/judge"),
        (["--judge", "~nosuchuser/judge"], "--judge ~nosuchuser/judge: no such folder: ~nosuchuser/judge"),
        # offline, worded as every command words it ("not a judge that can be loaded (OSError: ...)" before)
        (["--judge", "maple-org/not-cached"], "--judge maple-org/not-cached: model repo 'maple-org/not-cached' on "),
    ],
)
def test_bad_options_fail_before_any_work(tmp_path, capsys, arguments, message):
    out = tmp_path / "never"
    with pytest.raises(SystemExit):
        main(["--out", str(out), "--quick", *arguments])
    error = capsys.readouterr().err
    assert message in error
    if not message.startswith("argument "):  # argparse's own type errors come with the usage
        assert error.count("\n") == 1, error  # a judge's error ran over two lines, after the usage
    assert not out.exists()


def test_outputs_push_to_a_hub_under_a_bare_repo_name_with_the_token_given(demo_out, hub_server, tmp_path):
    """A bare name (no "namespace/") is created under the token's user; the pushes then used the bare name and
    failed with 404 after creating an empty repo, and the cards named the bare name.

    With no HF_TOKEN and no saved login, `--token` goes with every request of the push: the repos are private here
    (created beforehand: the demo makes public ones), so a request without it would fail as for a missing repo. Without
    a token the push fails in one line and the run is kept; the token is not part of the run (the rerun with it is not
    "a different run") and is in no file the run writes."""
    import shutil

    from hub_server import CLIENT_TOKEN, USER, files_holding

    out = tmp_path / "out"
    shutil.copytree(demo_out, out)  # finished: only the card and push stages run again
    output = run_client(hub_server, tmp_path, f"""
        import contextlib, io
        from huggingface_hub import HfApi, get_token
        from huggingface_hub.errors import RepositoryNotFoundError
        from maple.demo.cli import main

        assert get_token() is None  # no HF_TOKEN, no saved login
        token, argv = {CLIENT_TOKEN!r}, ["--out", {str(out)!r}, *{QUICK!r}, "--push-to-hub", "demo"]
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            assert main(argv) == 1
        print("without a token:", stderr.getvalue().strip())
        HfApi(token=token).create_repo("demo", private=True)
        HfApi(token=token).create_repo("demo-preferences", repo_type="dataset", private=True)
        assert main([*argv, "--token", token]) == 0
        try:
            HfApi().model_info("{USER}/demo")
        except RepositoryNotFoundError:
            pass
        else:
            raise AssertionError("the private repo was read without a token")
        """, HF_TOKEN="")
    assert (f"without a token: maple demo: error: pushing failed: model repo 'demo' on {hub_server.url} needs a token "
            "(HTTP 401 to a request without one): pass one (--token, maple train's --hub_token, token=), set HF_TOKEN or log in with `hf auth "
            f"login`. The run is kept in {out}: run the same command again to push it (nothing is recomputed)") in output
    model_files = hub_server.files(f"{USER}/demo")
    assert {"model.safetensors", "modeling_maple.py", "README.md", "tokenizer.json"} <= set(model_files)
    assert f'AutoModel.from_pretrained("{USER}/demo", trust_remote_code=True)' in model_files["README.md"].decode()
    assert f"{USER}/demo-preferences" in model_files["README.md"].decode()  # the card names the pushed data
    assert "../preferences/data" not in model_files["README.md"].decode()
    assert "| Base model | `base` (a local folder) |" in model_files["README.md"].decode()  # not "../base"
    dataset_files = hub_server.files(f"{USER}/demo-preferences", repo_type="dataset")
    assert "README.md" in dataset_files and any(path.endswith(".parquet") for path in dataset_files)
    card = dataset_files["README.md"].decode()
    assert "score_histograms.png" in card and "score_histograms.png" in dataset_files  # the card's plot is there
    assert "license: apache-2.0" in card and "configs:" in card  # a Hub licence id; the push's metadata kept
    assert f'load_dataset("{USER}/demo-preferences"' in card
    assert hub_server.state.repo("dataset", f"{USER}/demo-preferences").summaries[-1] == "Describe the preference data"
    assert files_holding(tmp_path, CLIENT_TOKEN) == []


def test_judge_option_loads_a_real_mllm_judge(tmp_path):
    from dataset_builders.testing import tiny_image_text_model
    from modeling_maple.testing import tiny_image_processor, tiny_tokenizer

    from maple.demo.pipeline import DemoConfig, make_judge
    from maple.demo.world import WorldConfig, build_world

    folder = tmp_path / "tiny-judge"
    tiny_image_text_model(seed=0).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    tiny_image_processor(image_size=32).save_pretrained(folder)
    world = build_world(WorldConfig(n_train_families=5, n_retrieval=2, n_quadruples_per_category=2))
    judge = make_judge(DemoConfig(out=tmp_path / "out", judge=str(folder)), world)
    assert type(judge).__name__ == "MLLMJudge"
    (alphas,) = judge.score([world.train[0].image], [[world.train[0].caption, world.train[1].caption]])
    assert alphas.shape == (2,) and bool(((alphas >= 0) & (alphas <= 1)).all())


def test_a_judge_from_the_hub_is_checked_and_loaded_with_the_token_given(tmp_path, monkeypatch):
    """`--token` reaches the judge's config check and its loading (`MLLMJudge.from_pretrained` reads every file with
    it), not only the push."""
    from transformers import AutoConfig

    from dataset_builders import MLLMJudge
    from maple.demo.pipeline import DemoConfig, check_judge, make_judge

    reads = []
    monkeypatch.setattr(AutoConfig, "from_pretrained", lambda ref, **kwargs: reads.append(kwargs) or AutoConfig.for_model("qwen2_vl"))
    monkeypatch.setattr(MLLMJudge, "from_pretrained", lambda ref, **kwargs: reads.append(kwargs))
    config = DemoConfig(out=tmp_path, judge="org/private-judge", token="hf_reader")
    check_judge(config.judge, config.token)
    make_judge(config, world=None)
    assert reads == [{"token": "hf_reader"}, {"token": "hf_reader"}]


def test_seeds_are_a_count_or_a_list():
    from maple.demo.cli import _seeds

    assert (_seeds("3"), _seeds("0,5,7"), _seeds("5,")) == ((0, 1, 2), (0, 5, 7), (5,))
    with pytest.raises(argparse.ArgumentTypeError, match="a count .* or a comma-separated list of integers"):
        _seeds("1_0")  # int() reads it as 10: a 10-seed run
    with pytest.raises(argparse.ArgumentTypeError, match="a count .* or a comma-separated list of integers"):
        _seeds("")  # no count and no list (an IndexError once the trailing-comma rule took the empty part away)


def test_the_command_passes_every_option_to_the_run_and_prints_its_summary(tmp_path, monkeypatch, capsys):
    """The command's defaults are the documented demo (DemoConfig's own defaults, but two workers), each option
    reaches the run, --no-progress hides the libraries' bars during the run, and the summary is printed."""
    import datasets

    from maple.demo.pipeline import DemoConfig, DemoResult

    runs = []

    def run_demo(config):
        runs.append((config, datasets.are_progress_bars_disabled()))
        return DemoResult(summary={}, seconds={"world": 1.0}, out=config.out, num_seeds=len(config.seeds))

    monkeypatch.setattr("maple.demo.pipeline.run_demo", run_demo)
    assert main(["--out", str(tmp_path / "defaults")]) == 0
    assert capsys.readouterr().out.splitlines()[-2:] == ["time: world 1s (total 1s)", f"outputs in {tmp_path / 'defaults'}"]
    assert runs.pop() == (DemoConfig(out=tmp_path / "defaults", workers=2), False)
    assert main(["--out", str(tmp_path / "options"), "--seeds", "4,", "--backbone", "mllm", "--quick", "--judge-noise",
                 "0.7", "--miner", "base-model", "--rpa-weight", "0.25", "--push-to-hub", "me/demo", "--workers", "3",
                 "--no-progress"]) == 0
    assert runs.pop() == (
        DemoConfig(out=tmp_path / "options", seeds=(4,), backbone="mllm", quick=True, judge_noise=0.7,
                   miner="base-model", rpa_weight=0.25, push_to_hub="me/demo", progress=False, workers=3),
        True,
    )
    assert json.loads((tmp_path / "options" / "run.json").read_text())["seeds"] == [4]  # claimed before the run
    assert build_parser().parse_args([]).out == Path("demo_out")  # `make demo`'s folder
    assert DemoConfig(out=tmp_path).seeds == (0, 1, 2) and DemoConfig(out=tmp_path).judge_noise == 0.3
    assert DemoConfig(out=tmp_path).rpa_weight == 0.5 and DemoConfig(out=tmp_path).learning_rate == 1e-3


def test_an_output_folder_under_home_written_as_typed_is_the_home_folder(tmp_path, monkeypatch):
    """`--out=~/x` reaches the program unexpanded: the folder check read ~/x as $HOME/x, run.json went to ./~/x and the
    test sets to $HOME/x (through fsspec), and the run died (found by a review helper)."""
    from maple.demo.pipeline import RUN_FILE, DemoConfig, claim_output_folder

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    config = DemoConfig(out=Path("~/demo"), quick=True)
    assert config.out == tmp_path / "home" / "demo"
    claim_output_folder(config)
    assert (tmp_path / "home" / "demo" / RUN_FILE).exists() and not (tmp_path / "~").exists()


# A worker made by the pool's initializer, `_init_worker`, forked here rather than spawned: a spawned worker would
# import torch and the package a second time.
KILLED_WITH_A_WORKER = """
import multiprocessing, os, signal, time

from maple.demo.pipeline import _init_worker


def worker(ready):
    _init_worker()
    ready.set()
    time.sleep(300)


if __name__ == "__main__":
    ready = multiprocessing.get_context("fork").Event()
    process = multiprocessing.get_context("fork").Process(target=worker, args=(ready,))
    process.start()
    ready.wait()
    print(process.pid, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # as `kill -9` or the OOM killer would
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_fine_tuning_workers_end_when_the_main_process_is_killed(tmp_path):
    """The workers waited on the dead main process's queue for ever, holding their memory (found by a review
    helper)."""
    import subprocess

    script, printed = tmp_path / "main.py", tmp_path / "printed.txt"
    script.write_text(KILLED_WITH_A_WORKER)
    with printed.open("w") as stdout:  # not a pipe: a surviving worker would hold it open, and the wait never end
        subprocess.run([sys.executable, str(script)], stdout=stdout, timeout=120)
    worker = int(printed.read_text().split()[0])
    if not _ends(worker):
        os.kill(worker, 9)
        pytest.fail(f"worker {worker} outlived its killed main process")


def _ends(pid: int, within: float = 30.0) -> bool:
    """Whether process `pid` ends within `within` seconds (Linux: reads /proc)."""
    deadline = time.monotonic() + within

    def running() -> bool:  # a zombie (no init reaping it in a container) has ended too
        try:
            return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    while running() and time.monotonic() < deadline:
        time.sleep(0.2)
    return not running()
