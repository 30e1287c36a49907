"""`maple demo --quick` end to end: outputs, a checkpoint that loads without the package, resume,
bad input refused before any work, and a push to a (local) Hub."""

import argparse
import json

import pytest
from hub_server import run_client
from isolated import run_isolated

from maple.demo.cli import main
from maple.demo.pipeline import METHODS
from maple.demo.report import HEADLINE_METRICS

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
    assert (demo_out / "preferences" / "README.md").exists()
    import datasets

    preferences = datasets.load_from_disk(str(demo_out / "preferences" / "data"))
    row = preferences[0]
    assert len(row["candidate_images"]) == 4 and len(row["txt2img_scores"]) == 4
    assert row["img2txt_scores"][0] == max(row["img2txt_scores"])  # the true caption is preferred


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


def test_a_rerun_resumes_without_redoing_finished_stages(demo_out):
    import datasets
    from transformers.utils import logging as transformers_logging

    result_files = sorted((demo_out / "runs").glob("*/result.json"))
    stamps = [path.stat().st_mtime_ns for path in result_files + [demo_out / "base" / "model.safetensors"]]
    first_timings = json.loads((demo_out / "timings.json").read_text())
    assert main(["--out", str(demo_out), *QUICK]) == 0
    assert [path.stat().st_mtime_ns for path in result_files + [demo_out / "base" / "model.safetensors"]] == stamps
    # --no-progress left the libraries' bars off for the rest of the process (a later test expecting them failed)
    assert transformers_logging.is_progress_bar_enabled() and not datasets.are_progress_bars_disabled()
    # the stages the rerun skipped keep the times of the run that did them
    timings = json.loads((demo_out / "timings.json").read_text())
    for stage in ("base model", "preferences", "fine-tuning and evaluation"):
        assert timings[stage] == first_timings[stage]


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


def test_runs_in_worker_processes_equal_a_run_in_this_process(demo_out, tmp_path):
    """The fixture's runs were trained two at a time in worker processes; redoing one here, serially,
    gives the same numbers."""
    import shutil

    from maple.demo.pipeline import DemoConfig, _finetune_all

    copy = tmp_path / "copy"
    shutil.copytree(demo_out, copy, ignore=shutil.ignore_patterns("runs"))
    config = DemoConfig(out=copy, seeds=(0,), quick=True, progress=False, workers=1)
    _finetune_all(config, [("maple", 0)])
    serial, parallel = (json.loads((out / "runs" / "maple-seed0" / "result.json").read_text()) for out in (copy, demo_out))
    for metric in ("group_score", "text_score", "image_score", "i2t_r1", "t2i_r1"):
        assert serial[metric] == pytest.approx(parallel[metric], abs=1e-6)
    assert serial["log_history"][-1]["train_loss"] == pytest.approx(parallel["log_history"][-1]["train_loss"], rel=1e-5)


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


def test_unusable_output_folders_are_refused_in_one_line(tmp_path, capsys):
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "listed").mkdir()
    (tmp_path / "listed" / "run.json").write_text("[1, 2]")
    (tmp_path / "truncated").mkdir()
    (tmp_path / "truncated" / "run.json").write_text('{"seeds": [0')
    for out, message in [
        ("a-file/sub", "a-file, a file; expected a folder"),
        ("listed", "run.json holds a list, not a demo run"),
        ("truncated", "run.json cannot be read as a demo run"),
        ("/proc/maple-demo-out", "--out /proc/maple-demo-out: cannot write there"),  # even root cannot
    ]:
        with pytest.raises(SystemExit):
            main(["--out", str(tmp_path / out), *QUICK])
        assert message in capsys.readouterr().err


def test_a_foreign_folder_is_refused(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), *QUICK])
    assert "not empty and holds no demo run" in capsys.readouterr().err


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--backbone", "resnet"], "unknown backbone 'resnet'"),
        (["--miner", "dino"], "unknown miner 'dino'"),
        (["--seeds", "1,x"], "integers"),
        (["--seeds", "0"], "at least 1"),
        (["--rpa-weight", "1.5"], "rpa_weight (lambda) must lie in (0, 1]"),
        (["--seeds=-1,2"], "seeds must lie in [0, 2**32)"),
        (["--judge-noise", "nan"], "judge_noise is a standard deviation and must be finite"),
        (["--judge", "/no/such/judge"], "--judge /no/such/judge: no such folder: /no/such/judge"),
        (["--judge", "maple-org/not-cached"], "--judge maple-org/not-cached: not a judge that can be loaded"),  # offline
    ],
)
def test_bad_options_fail_before_any_work(tmp_path, capsys, arguments, message):
    out = tmp_path / "never"
    with pytest.raises(SystemExit):
        main(["--out", str(out), "--quick", *arguments])
    error = capsys.readouterr().err
    assert message in error
    if not arguments[0].startswith("--seeds") or "=" in arguments[0]:  # argparse's own type errors come with the usage
        assert error.count("\n") == 1, error  # a judge's error ran over two lines, after the usage
    assert not out.exists()


def test_outputs_push_to_a_hub_under_a_bare_repo_name(demo_out, hub_server, tmp_path):
    """A bare name (no "namespace/") is created under the token's user; the pushes then used the bare name and
    failed with 404 after creating an empty repo, and the cards named the bare name."""
    import shutil

    from hub_server import USER

    out = tmp_path / "out"
    shutil.copytree(demo_out, out)  # finished: only the card and push stages run again
    run_client(hub_server, tmp_path, f"""
        from maple.demo.cli import main
        assert main(["--out", {str(out)!r}, *{QUICK!r}, "--push-to-hub", "demo"]) == 0
        """)
    model_files = hub_server.files(f"{USER}/demo")
    assert {"model.safetensors", "modeling_maple.py", "README.md", "tokenizer.json"} <= set(model_files)
    assert f'AutoModel.from_pretrained("{USER}/demo", trust_remote_code=True)' in model_files["README.md"].decode()
    dataset_files = hub_server.files(f"{USER}/demo-preferences", repo_type="dataset")
    assert "README.md" in dataset_files and any(path.endswith(".parquet") for path in dataset_files)
    card = dataset_files["README.md"].decode()
    assert "score_histograms.png" in card and "score_histograms.png" in dataset_files  # the card's plot is there
    assert "license: apache-2.0" in card and "configs:" in card  # a Hub licence id; the push's metadata kept
    assert f'load_dataset("{USER}/demo-preferences"' in card


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


def test_seeds_are_a_count_or_a_list():
    from maple.demo.cli import _seeds

    assert (_seeds("3"), _seeds("0,5,7"), _seeds("5,")) == ((0, 1, 2), (0, 5, 7), (5,))
    with pytest.raises(argparse.ArgumentTypeError, match="a count .* or a comma-separated list of integers"):
        _seeds("1_0")  # int() reads it as 10: a 10-seed run
