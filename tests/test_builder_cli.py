"""`maple build-preferences` (dataset_builders.cli.main), run in-process with the stand-ins."""

import argparse
import json
import os
import shutil
import subprocess
import sys

import datasets
import pyarrow.parquet as pq
import pytest

from dataset_builders import cli
from dataset_builders.testing import colour_squares

STAND_INS = [
    "--judge", "dataset_builders.testing:ColourJudge",
    "--captioner", "dataset_builders.testing:ColourCaptioner",
    "--miner", "dataset_builders.testing:thumbnail_miner",
]


@pytest.fixture
def source_file(tmp_path) -> str:
    columns = colour_squares(7)
    columns["id"] += ["broken", "blank"]
    columns["image"] += [{"bytes": b"junk", "path": None}, columns["image"][0]]
    columns["caption"] += ["a red square", ""]
    features = datasets.Features({"id": datasets.Value("string"), "image": datasets.Image(), "caption": datasets.Value("string")})
    path = tmp_path / "source.parquet"
    datasets.Dataset.from_dict(columns, features=features).to_parquet(str(path))
    return str(path)


def test_every_option_has_help():
    parser = cli.build_parser()
    for action in parser._actions:
        assert action.help and action.help != argparse.SUPPRESS, action.dest
    assert "--judge" in parser.format_help() and "--push-to-hub" in parser.format_help()


def test_unset_options_build_the_papers_recipe_into_maple_preferences():
    args = vars(cli.build_parser().parse_args(["source", "--judge", "org/judge"]))
    expected = {"output_dir": "maple_preferences", "config": "paper", "miner": "facebook/dinov2-base", "dtype": "auto",
                "device": None, "device_map": None, "max_pixels": None, "push_to_hub": None, "private": False,
                "token": None}
    assert {option: args[option] for option in expected} == expected
    assert all(args[name] is None for name in cli.RECIPE_OPTIONS + cli.SOURCE_OPTIONS), "the named config's values hold"


def test_config_options_show_the_config_fields_help_and_defaults():
    """The recipe options are `MaplePreferencesConfig`'s fields, so their help and defaults cannot drift from it."""
    from dataclasses import fields

    from dataset_builders.builder import MaplePreferencesConfig

    own_fields = [field for field in fields(MaplePreferencesConfig) if field.name not in {f.name for f in fields(datasets.BuilderConfig)}]
    assert all(field.metadata.get("help") for field in own_fields)
    help_text = " ".join(cli.build_parser().format_help().split())
    assert "--shard-size SHARD_SIZE anchors per shard: the unit of checkpointing and of work per process (default: 256)" in help_text
    assert "(default: 50000 in 'paper', 0 in 'corpus-captions')" in help_text
    assert "(default: None)" not in help_text


def test_build_prints_a_summary_and_resumes(source_file, tmp_path, capsys):
    argv = [source_file, "--output-dir", str(tmp_path / "out"), *STAND_INS, "--shard-size", "3", "--semdedup-clusters", "0", "--no-progress"]
    assert cli.main(argv) == 0
    summary = capsys.readouterr().out
    assert "finished in" in summary
    assert "anchors           7" in summary
    assert "candidate images  28 (4.00 per anchor)" in summary
    assert "shards            3 built, 0 already built by an earlier run\n" in summary
    assert "skipped inputs    2" in summary
    assert "unreadable image: 1" in summary and "id 'broken' (row 7): UnidentifiedImageError" in summary
    assert "empty caption: 1" in summary and "id 'blank' (row 8)" in summary
    shards = tmp_path / "out" / "work" / "shards"
    assert f"dataset: {shards} (train on it: maple train --dataset_name {shards} ...)" in summary
    loaded = datasets.load_dataset("parquet", data_files=str(shards / "*.parquet"), split="train")
    assert len(loaded) == 7

    assert cli.main(argv) == 0
    assert "shards            0 built, 3 already built by an earlier run\n" in capsys.readouterr().out


def test_configuration_errors_stop_before_any_work(source_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main([source_file, "--output-dir", str(out), *STAND_INS, "--num-hard-negatives", "0"]) == 2
    assert "num_hard_negatives must be at least 1" in capsys.readouterr().err
    assert cli.main([source_file, "--output-dir", str(out), "--judge", "dataset_builders.testing:ColourJudge"]) == 2
    assert "pass --captioner" in capsys.readouterr().err
    # a captioner the config never calls would be loaded all the same (a 72B MLLM)
    assert cli.main([source_file, "--output-dir", str(out), *STAND_INS, "--config", "corpus-captions"]) == 2
    assert "the 'corpus-captions' config uses the hard negatives' own captions: leave out --captioner" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(SystemExit):
        cli.main([source_file])  # --judge is required


@pytest.mark.parametrize(
    "rank, world_size, problem",
    [("2", "2", "rank 2 is not in [0, world_size=2), read from the environment variables RANK=2 and WORLD_SIZE=2"),
     ("-1", "2", "rank -1 is not in [0, world_size=2), read from the environment variables RANK=-1 and WORLD_SIZE=2"),
     ("0", "0", "rank 0 is not in [0, world_size=0), read from the environment variables RANK=0 and WORLD_SIZE=0"),
     ("one", "2", "the environment variable RANK='one' is not an integer"),
     ("0", "two", "the environment variable WORLD_SIZE='two' is not an integer")],
)
def test_a_launcher_rank_outside_its_world_is_a_one_line_error_before_any_work(source_file, tmp_path, capsys, monkeypatch,
                                                                                rank, world_size, problem):
    """Each was a traceback once the models had loaded (a ValueError from int(), or the builder's rank check)."""
    monkeypatch.setattr(cli, "_load_components", lambda *args: pytest.fail("models were loaded"))
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("WORLD_SIZE", world_size)
    out = tmp_path / "out"
    assert cli.main([source_file, "--output-dir", str(out), *STAND_INS]) == 2
    assert problem in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    "option, value", [("--num-samples", "0"), ("--temperature", "0"), ("--judge-batch-size", "0"), ("--max-new-tokens", "-1"),
                      ("--max-pixels", "0"), ("--temperature", "nan"), ("--temperature", "inf")]
)
def test_bad_model_settings_are_usage_errors_before_any_model_loads(source_file, tmp_path, capsys, option, value, monkeypatch):
    """Before the fix --num-samples 0 and --temperature 0 failed once the captioner had loaded, and
    --judge-batch-size 0 only after the row check and the image embedding (`range() arg 3 must not be zero`).
    --temperature nan was taken, recorded in the work dir's manifest and, never equal to itself, refused every run
    as another recipe; inf sampled uniformly."""
    monkeypatch.setattr(cli, "_load_components", lambda *args: pytest.fail("models were loaded"))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exited:
        cli.main([source_file, "--output-dir", str(out), *STAND_INS, option, value])
    assert exited.value.code == 2
    assert f"argument {option}: must be a finite number above zero, got {value}" in capsys.readouterr().err
    assert not out.exists()


MODEL_SETTINGS = [
    ("--num-samples", "1"), ("--max-new-tokens", "16"), ("--temperature", "0.5"), ("--caption-prompt", "Write one."),
    ("--judge-prompt", "Does it show {text}?"), ("--judge-batch-size", "2"), ("--max-pixels", "1024"),
    ("--dtype", "float32"), ("--device", "cpu"), ("--device-map", "auto"),
]


@pytest.mark.parametrize("option, value", MODEL_SETTINGS)
def test_a_model_option_only_factories_would_get_is_refused_before_any_work(source_file, tmp_path, capsys, option, value, monkeypatch):
    """They were ignored: a module:factory is called without arguments, so `--num-samples 1 --max-new-tokens 16`
    built with the factory's num_samples 3 and max_new_tokens 8, and said nothing."""
    monkeypatch.setattr(cli, "_load_components", lambda *args: pytest.fail("models were loaded"))
    out = tmp_path / "out"
    assert cli.main([source_file, "--output-dir", str(out), *STAND_INS, option, value]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"maple build-preferences: error: ignored options: {option}, for a --") and error.count("\n") == 1, error
    assert "loaded from a Hub id or path, not one a module:factory builds (" in error
    assert "Leave them out, or set them in the factory" in error
    assert not out.exists()


CORPUS_STAND_INS = ["--config", "corpus-captions", *STAND_INS[:2], *STAND_INS[4:]]  # no --captioner


@pytest.mark.parametrize(
    "options, error",
    [
        (["--captioned-negatives", "2"], "--captioned-negatives (the 'corpus-captions' config writes no captions)"),
        (["--semdedup-epsilon", "0.1"],
         "--semdedup-epsilon (SemDeDup is off: the 'corpus-captions' config's default; --semdedup-clusters N turns it on)"),
        (["--seed", "0"], "--seed (it seeds caption sampling and SemDeDup, and this build has neither)"),
        (["--seed", "3", "--captioned-negatives", "1"], "--captioned-negatives (the 'corpus-captions' config writes no "
         "captions), --seed (it seeds caption sampling and SemDeDup, and this build has neither)"),
    ],
)
def test_a_recipe_option_the_recipe_does_not_read_is_refused_before_any_work(source_file, tmp_path, capsys, monkeypatch,
                                                                             options, error):
    """`--config corpus-captions` took --captioned-negatives, --semdedup-epsilon and --seed and built without them,
    saying nothing (found by a review); given explicitly, even at its default value, such an option is refused."""
    monkeypatch.setattr(cli, "_load_components", lambda *args: pytest.fail("models were loaded"))
    out = tmp_path / "out"
    assert cli.main([source_file, "--output-dir", str(out), *CORPUS_STAND_INS, *options]) == 2
    assert capsys.readouterr().err == f"maple build-preferences: error: ignored options: {error}. Leave them out\n"
    assert not out.exists()


def test_a_recipe_option_is_refused_only_where_the_recipe_does_not_read_it(source_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "_load_components", lambda *args: pytest.fail("models were loaded"))
    argv = [source_file, "--output-dir", str(tmp_path / "out"), "--semdedup-epsilon", "0.1", "--seed", "1"]
    assert cli.main([*argv, *STAND_INS, "--semdedup-clusters", "0"]) == 2
    assert capsys.readouterr().err == ("maple build-preferences: error: ignored options: --semdedup-epsilon (SemDeDup "
                                       "is off (--semdedup-clusters 0)). Leave them out\n")
    # SemDeDup on: both are read, and the build goes on to load the models
    with pytest.raises(pytest.fail.Exception, match="models were loaded"):
        cli.main([*argv, *CORPUS_STAND_INS, "--semdedup-clusters", "2"])


def test_an_interrupted_module_run_says_how_to_resume_as_the_maple_command_does(tmp_path):
    """`python -m dataset_builders.cli` (as `accelerate launch` runs it) printed a KeyboardInterrupt traceback on
    Ctrl-C, where `maple build-preferences` says what is kept and how to resume (found by a review)."""
    (tmp_path / "interrupting.py").write_text("raise KeyboardInterrupt  # as Ctrl-C while a factory's module imports\n")
    command = [sys.executable, "-m", "dataset_builders.cli", "source.parquet", "--judge", "interrupting:make",
               "--config", "corpus-captions", "--miner", "dataset_builders.testing:thumbnail_miner"]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300)
    assert run.returncode == 130, run.stderr
    assert run.stderr == "\nmaple build-preferences: interrupted; what was finished is kept: run the same command to resume\n"


def test_every_option_ignored_is_named_with_the_factories_in_one_error(source_file, tmp_path, capsys):
    argv = [source_file, "--output-dir", str(tmp_path / "out"), *STAND_INS, "--num-samples", "1", "--max-new-tokens", "16", "--dtype", "float32"]
    assert cli.main(argv) == 2
    assert capsys.readouterr().err == (
        "maple build-preferences: error: ignored options: --dtype, for a --judge or --captioner loaded from a Hub id or "
        "path, not one a module:factory builds (--judge dataset_builders.testing:ColourJudge, --captioner "
        "dataset_builders.testing:ColourCaptioner); --num-samples, --max-new-tokens, for a --captioner loaded from a Hub "
        "id or path, not one a module:factory builds (--captioner dataset_builders.testing:ColourCaptioner). Leave them "
        "out, or set them in the factory\n"
    )
    argv = [source_file, "--output-dir", str(tmp_path / "out"), *STAND_INS[:2], *STAND_INS[4:], "--config", "corpus-captions", "--temperature", "1"]
    assert cli.main(argv) == 2
    assert "ignored options: --temperature, for a --captioner loaded from a Hub id or path, and there is no --captioner" in capsys.readouterr().err


def test_a_model_option_reaching_one_component_loaded_from_a_path_is_taken(source_file, tmp_path, capsys, monkeypatch):
    """Options apply to the components given as a Hub id or path; factories beside them build their own objects."""
    loaded = []

    def load_components(args, device):
        loaded.append((device, args.judge_batch_size))
        raise ValueError("loading stopped here")

    monkeypatch.setattr(cli, "_load_components", load_components)
    encoder_folder, mllm_folder = tmp_path / "encoder", tmp_path / "mllm"
    for folder, model_type in [(encoder_folder, "dinov2"), (mllm_folder, "qwen2_vl")]:
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
    argv = [source_file, "--output-dir", str(tmp_path / "out"), "--semdedup-clusters", "0", "--no-progress", *STAND_INS[:4]]
    assert cli.main([*argv, "--miner", str(encoder_folder), "--device", "cpu"]) == 2
    assert cli.main([*argv, STAND_INS[4], STAND_INS[5], "--judge", str(mllm_folder), "--judge-batch-size", "2"]) == 2
    assert capsys.readouterr().err == "maple build-preferences: error: loading stopped here\n" * 2
    assert loaded == [("cpu", 8), ("cpu", 2)]


def test_every_model_option_is_checked_for_factories():
    """A model option missing from `MODEL_OPTIONS` would be ignored again by module:factory components."""
    parser = cli.build_parser()
    groups = [group for group in parser._action_groups if group.title == "recipe" or group.title.startswith("models")]
    dests = {action.dest for group in groups for action in group._group_actions}
    assert dests - set(cli.RECIPE_OPTIONS) - {"judge", "captioner", "miner"} == set(cli.MODEL_OPTIONS)


def test_source_problems_are_one_line_errors(source_file, tmp_path, capsys):
    def error_of(name: str, *options: str) -> str:
        assert cli.main([source_file, "--output-dir", str(tmp_path / name), *STAND_INS, "--no-progress", *options]) == 2
        return capsys.readouterr().err

    # the paper's 50,000 SemDeDup clusters on 9 rows: refused before any model loads or any image is read (it was
    # refused once the input check had read every image; found by a review), and 4 clusters on the 7 usable ones
    assert "SemDeDup with 50000 clusters on 9 rows" in error_of("clusters")
    assert not (tmp_path / "clusters" / "work").exists()  # only the source read into the cache
    assert "SemDeDup with 4 clusters on 7 rows" in error_of("usable", "--semdedup-clusters", "4")
    # a caption column that holds no text: refused before any model loads, not every row skipped after reading them
    swapped = error_of("swapped", "--semdedup-clusters", "0", "--caption-column", "image", "--image-column", "caption")
    assert swapped.startswith("maple build-preferences: error: source column 'image' holds Image(") and "--caption-column" in swapped
    missing_column = error_of("column", "--semdedup-clusters", "0", "--caption-column", "missing")
    assert f"source {source_file} lacks column(s) ['missing']" in missing_column and "--caption-column" in missing_column
    assert "no usable input rows: all 9 were skipped" in error_of("paths", "--semdedup-clusters", "0", "--image-column", "id")


def test_a_build_whose_every_row_is_skipped_leaves_the_output_dir_to_the_next_command(source_file, tmp_path, capsys):
    """It left its manifest behind: the rerun with the right --image-column was refused as another recipe ("work dir
    ... was built with another recipe (image_column ...)"), and the reason named text read as image paths only as
    "unreadable image: <caption>: FileNotFoundError"."""
    out = tmp_path / "out"
    argv = [source_file, "--output-dir", str(out), *STAND_INS, "--semdedup-clusters", "0", "--no-progress"]
    assert cli.main([*argv, "--image-column", "id"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1, error
    assert "no usable input rows: all 9 were skipped (unreadable image: 8, empty caption: 1; e.g. row 0: column 'id' holds the " \
        "text 'square-000', read as an image file path, and there is no such file)" in error
    assert not (out / "work" / "manifest.json").exists() and not list((out / "work").glob("inputs*.json"))
    assert cli.main(argv) == 0, capsys.readouterr().err


def test_one_column_for_images_and_captions_is_an_error_before_any_model_loads(source_file, tmp_path, capsys, monkeypatch):
    """The image column was cast to images, captions included: every row was skipped as a "non-string caption"."""
    monkeypatch.setattr(cli, "_load_components", lambda *args: pytest.fail("models were loaded"))
    out = tmp_path / "out"
    assert cli.main([source_file, "--output-dir", str(out), *STAND_INS, "--image-column", "caption"]) == 2
    assert capsys.readouterr().err == (
        "maple build-preferences: error: invalid MaplePreferences config: image_column and caption_column are both 'caption': name the column holding "
        "the images and the one holding the captions (CLI --image-column, --caption-column)\n"
    )
    assert not out.exists()


def test_unreadable_sources_are_one_line_errors_before_any_model_loads(source_file, tmp_path, capsys, monkeypatch):
    """They were tracebacks (FileNotFoundError, datasets' "Unknown split", a Hub lookup of './nofolder') raised after
    the judge, captioner and miner had loaded."""
    monkeypatch.setattr(cli, "_load_components", lambda *args: pytest.fail("models were loaded"))

    def error_of(source: str, *options: str) -> str:
        assert cli.main([source, "--output-dir", str(tmp_path / "out"), *STAND_INS, "--no-progress", *options]) == 2
        return capsys.readouterr().err

    assert "missing.parquet: no such file or folder" in error_of(str(tmp_path / "missing.parquet"))
    assert "source ./nofolder: no such file or folder" in error_of("./nofolder")
    assert not (tmp_path / "out").exists(), "a refused build leaves no output folder (it left an empty cache folder)"
    # a home folder of no user, left as typed as a shell leaves it (a RuntimeError traceback from Path.expanduser)
    assert "source ~nosuchuser/data: no such file or folder" in error_of("~nosuchuser/data")
    assert "has no split 'test'; its splits are ['train']" in error_of(source_file, "--source-split", "test")
    assert "lacks column(s) ['missing']" in error_of(source_file, "--caption-column", "missing")
    (tmp_path / "source.csv").write_text("image,caption\n")
    assert "unsupported source file" in error_of(str(tmp_path / "source.csv"))


def test_models_that_cannot_be_found_or_loaded_are_one_line_errors(source_file, tmp_path, capsys):
    """They were tracebacks with exit status 1: a missing folder as an invalid repo id, a factory that does not exist,
    and (offline, the first run's default) a miner that is not in the cache."""

    def error_of(option: str, spec: str) -> str:
        models = dict(zip(STAND_INS[::2], STAND_INS[1::2])) | {option: spec}
        argv = [source_file, "--output-dir", str(tmp_path / "out"), "--semdedup-clusters", "0", "--no-progress"]
        assert cli.main(argv + [item for pair in models.items() for item in pair]) == 2
        error = capsys.readouterr().err
        assert error.startswith("maple build-preferences: error: ") and error.count("\n") == 1, error
        return error

    assert "--judge ./nojudge: no such folder: ./nojudge" in error_of("--judge", "./nojudge")
    assert "--judge ~nosuchuser/judge: no such folder: ~nosuchuser/judge" in error_of("--judge", "~nosuchuser/judge")
    assert "--captioner dataset_builders.testing:NoSuch: module 'dataset_builders.testing' has no attribute 'NoSuch'" in \
        error_of("--captioner", "dataset_builders.testing:NoSuch")
    assert "--judge no_such_module:factory: No module named 'no_such_module'" in error_of("--judge", "no_such_module:factory")
    assert not (tmp_path / "out" / "work").exists()


def test_a_factory_module_failing_as_it_imports_is_named_by_its_option(source_file, tmp_path, capsys, monkeypatch):
    """Its ValueError was taken for a config.json that did not read: an UnboundLocalError traceback for the first model,
    and for a later one a line blaming the config.json of the model checked before it."""
    (tmp_path / "judge_folder").mkdir()
    (tmp_path / "judge_folder" / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))
    (tmp_path / "failing_factory.py").write_text('raise ValueError("set MY_JUDGE_URL first")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "_load_components", lambda *args: pytest.fail("models were loaded"))
    argv = [source_file, "--output-dir", str(tmp_path / "out"), "--config", "corpus-captions", *STAND_INS[4:], "--no-progress"]
    for judges in (["--judge", "failing_factory:make"], ["--judge", str(tmp_path / "judge_folder"), "--judge", "failing_factory:make"]):
        assert cli.main(argv + judges) == 2
        assert capsys.readouterr().err == (
            "maple build-preferences: error: --judge failing_factory:make: set MY_JUDGE_URL first\n")


def test_a_factory_refusing_to_make_its_object_is_named_by_its_option(source_file, tmp_path, capsys, monkeypatch):
    """Its ValueError was printed alone, naming neither the option nor the factory."""
    (tmp_path / "refusing_factory.py").write_text('def make():\n    raise ValueError("set MY_JUDGE_URL first")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    argv = [source_file, "--output-dir", str(tmp_path / "out"), "--config", "corpus-captions", *STAND_INS[4:], "--no-progress"]
    assert cli.main(argv + ["--judge", "refusing_factory:make"]) == 2
    assert capsys.readouterr().err == "maple build-preferences: error: --judge refusing_factory:make: set MY_JUDGE_URL first\n"


@pytest.mark.parametrize("option", ["--judge", "--captioner", "--miner"])
def test_a_hub_model_offline_and_not_cached_is_an_error_before_any_model_loads(source_file, tmp_path, capsys, monkeypatch, option):
    """Only local paths were checked: offline, the judge and captioner (minutes and GPU memory for a 7B and a 72B
    MLLM) loaded before the default miner, facebook/dinov2-base, failed as not cached."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(cli, "_load_components", lambda *args: pytest.fail("models were loaded"))
    models = dict(zip(STAND_INS[::2], STAND_INS[1::2])) | {option: "maple-org/not-cached"}
    argv = [source_file, "--output-dir", str(tmp_path / "out"), "--semdedup-clusters", "0", "--no-progress"]
    assert cli.main(argv + [item for pair in models.items() for item in pair]) == 2
    assert capsys.readouterr().err == (
        f"maple build-preferences: error: {option} maple-org/not-cached: model repo 'maple-org/not-cached' on "
        f"{constants.ENDPOINT} is not in the local cache and the Hub is offline or unreachable\n"
    )
    assert not (tmp_path / "out" / "work").exists()


def test_an_output_dir_inside_a_folder_source_is_refused_before_any_work(source_file, tmp_path, capsys, monkeypatch):
    """It was built once, then read its own cache and shards as source data: every rerun was refused as a changed
    source, and after deleting the work dir as advised the source had grown from 9 rows to hundreds."""
    monkeypatch.setattr(cli, "_load_components", lambda *args: pytest.fail("models were loaded"))
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "train.parquet").write_bytes(open(source_file, "rb").read())
    assert cli.main([str(folder), "--output-dir", str(folder / "prefs"), *STAND_INS, "--no-progress"]) == 2
    assert f"--output-dir {folder / 'prefs'} is inside the source folder {folder}" in capsys.readouterr().err
    assert sorted(path.name for path in folder.iterdir()) == ["train.parquet"]


@pytest.mark.parametrize("damaged", ["manifest.json", "inputs.json", "embeddings.pt", "shards/shard-000000-000003.parquet"])
def test_a_damaged_checkpoint_is_named_and_only_its_part_is_recomputed(source_file, tmp_path, capsys, damaged):
    """Each was a bare ArrowInvalid / JSONDecodeError / PytorchStreamReader traceback naming no file."""
    out = tmp_path / "out"
    argv = [source_file, "--output-dir", str(out), *STAND_INS, "--shard-size", "3", "--semdedup-clusters", "0", "--no-progress"]
    assert cli.main(argv) == 0
    built = [line for line in capsys.readouterr().out.splitlines()[1:] if "shards" not in line]
    shutil.rmtree(out / "cache")  # the assembled dataset: without it the checkpoints are read again
    path = out / "work" / damaged
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    assert cli.main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"maple build-preferences: error: {path}") or f"{path.name} cannot be read" in error, error
    assert error.count("\n") == 1, error
    if damaged == "manifest.json":  # the recipe of the other checkpoints is unknown
        assert f"delete {out / 'work'} to start over" in error
        shutil.rmtree(out / "work")
    else:
        assert "delete it and run again" in error
        path.unlink()
    assert cli.main(argv) == 0
    assert [line for line in capsys.readouterr().out.splitlines()[1:] if "shards" not in line] == built


def test_a_checkpoint_the_system_cannot_read_is_a_one_line_error_that_keeps_it(source_file, tmp_path, capsys, monkeypatch):
    """A PermissionError (or a disk error) reading a checkpoint is no damage to delete: one line naming the error and
    the file, exit status 1, and the rerun reuses every checkpoint."""
    import dataset_builders.builder as builder_module

    out = tmp_path / "out"
    argv = [source_file, "--output-dir", str(out), *STAND_INS, "--shard-size", "3", "--semdedup-clusters", "0", "--no-progress"]
    assert cli.main(argv) == 0
    capsys.readouterr()
    shutil.rmtree(out / "cache")
    path = out / "work" / "embeddings.pt"
    read_checkpoint = builder_module._read_checkpoint

    def denied(file, read, advice=None):
        if file == path:
            raise PermissionError(13, "Permission denied", str(file))
        return read_checkpoint(file, read, advice)

    monkeypatch.setattr(builder_module, "_read_checkpoint", denied)
    assert cli.main(argv) == 1
    error = capsys.readouterr().err
    assert error.startswith(f"maple build-preferences: error: [Errno 13] Permission denied: '{path}'"), error
    assert f"kept in {out / 'work'}" in error and "delete" not in error and error.count("\n") == 1, error
    monkeypatch.undo()
    assert cli.main(argv) == 0
    assert "  shards            0 built, 3 already built by an earlier run" in capsys.readouterr().out.splitlines()


@pytest.mark.parametrize("column", ["image", "txt2img_scores"])
def test_a_shard_damaged_on_disk_with_its_footer_intact_is_named(source_file, tmp_path, capsys, column):
    """Damaged data pages under an intact footer passed the coverage check (which reads the footer): one in the images
    failed inside `datasets`' generation with a DatasetGenerationError traceback naming no file, one in the scores
    with pyarrow's bare OSError (found by a review)."""
    out = tmp_path / "out"
    argv = [source_file, "--output-dir", str(out), *STAND_INS, "--shard-size", "3", "--semdedup-clusters", "0", "--no-progress"]
    assert cli.main(argv) == 0
    built = [line for line in capsys.readouterr().out.splitlines()[1:] if "shards" not in line]
    shutil.rmtree(out / "cache")  # the assembled dataset: without it the shards are read again
    path = out / "work" / "shards" / "shard-000003-000006.parquet"
    row_group = pq.read_metadata(path).row_group(0)
    chunks = [row_group.column(index) for index in range(row_group.num_columns)]
    start = next(chunk for chunk in chunks if chunk.path_in_schema.split(".")[0] == column).data_page_offset
    data = bytearray(path.read_bytes())
    data[start:start + 64] = b"\xab" * 64  # the column's first data page; the footer stays as it was
    path.write_bytes(bytes(data))
    assert cli.main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"maple build-preferences: error: {path} cannot be read") and "delete it and run again" in error, error
    assert error.count("\n") == 1, error
    path.unlink()
    assert cli.main(argv) == 0
    assert [line for line in capsys.readouterr().out.splitlines()[1:] if "shards" not in line] == built


def test_another_recipe_on_the_same_output_dir_is_refused(source_file, tmp_path, capsys):
    argv = [source_file, "--output-dir", str(tmp_path / "out"), *STAND_INS, "--semdedup-clusters", "0", "--no-progress"]
    assert cli.main([*argv, "--shard-size", "3"]) == 0
    capsys.readouterr()
    assert cli.main([*argv, "--shard-size", "2"]) == 2
    error = capsys.readouterr().err
    assert "shard_size: 3 in the work dir, 2 now" in error and "another --output-dir" in error
    shards = sorted(path.name for path in (tmp_path / "out" / "work" / "shards").glob("*.parquet"))
    assert shards == ["shard-000000-000003.parquet", "shard-000003-000006.parquet", "shard-000006-000007.parquet"]


def test_a_factory_module_in_the_current_directory_is_found(source_file, tmp_path, monkeypatch, capsys):
    """The `maple` console script does not put the current directory on sys.path, as `python -m` does."""
    (tmp_path / "my_judges.py").write_text("from dataset_builders.testing import ColourJudge as judge\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", [path for path in __import__("sys").path if path not in ("", ".", str(tmp_path))])
    argv = [source_file, "--output-dir", str(tmp_path / "out"), *STAND_INS[2:], "--judge", "my_judges:judge",
            "--semdedup-clusters", "0", "--no-progress"]
    assert cli.main(argv) == 0, capsys.readouterr().err


def _build_with_factory_miner(source_file, tmp_path, monkeypatch, factory: str, miner: str) -> int:
    """`maple build-preferences` of corpus captions with `--miner MODULE:FACTORY`, the factory written to a module in
    tmp_path that returns the `miner` expression (each test a module name of its own: sys.modules keeps another's)."""
    module, name = factory.split(":")
    (tmp_path / f"{module}.py").write_text(
        f"import torch\nfrom dataset_builders.miner import HardNegativeMiner\n\ndef {name}():\n    return {miner}\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", list(sys.path))  # the factory's folder, put on it, goes with the test
    return cli.main([source_file, "--output-dir", str(tmp_path / "out"), *CORPUS_STAND_INS[:4], "--miner", factory,
                     "--no-progress"])


def test_an_embedding_size_that_changes_between_checkpointed_parts_is_a_one_line_error(source_file, tmp_path, monkeypatch,
                                                                                        capsys):
    """The miner checks the batches of one call; the builder embeds in parts of EMBEDDING_PART_ROWS rows, one call
    each, and a size that changed at a part's first batch was torch.cat's RuntimeError (found by a review)."""
    from dataset_builders import builder

    monkeypatch.setattr(builder, "EMBEDDING_PART_ROWS", 3)  # parts of one batch: 7 rows make 3, 3 and 1
    miner = ("HardNegativeMiner(lambda batch: torch.ones(len(batch), 4 + len(batch)), batch_size=3, name='growing', "
             "search_device='cpu')")
    assert _build_with_factory_miner(source_file, tmp_path, monkeypatch, "growing_miners:growing", miner) == 2
    assert capsys.readouterr().err == (
        "maple build-preferences: error: --miner growing_miners:growing: the image encoder of miner 'growing' returned 7-d "
        "embeddings for source rows 0-2 and 5-d ones for source rows 6-6; expected one size for every image\n"
    )


def test_images_the_miner_cannot_batch_are_one_line_naming_their_source_rows_in_command_line_terms(tmp_path, monkeypatch,
                                                                                                    capsys):
    """A miner image processor making images of several sizes was a ValueError traceback naming the images by their
    position in the checkpointed embedding part (images[1] for source row 5) and advising image_processor_kwargs of
    HardNegativeMiner.from_pretrained, which no option reaches (found by a bug hunt)."""
    from transformers import Dinov2Config, Dinov2Model

    from dataset_builders import builder

    encoder = tmp_path / "encoder"
    Dinov2Model(Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                             image_size=16, patch_size=8)).save_pretrained(encoder)
    _cropless_image_processor().save_pretrained(encoder)
    source = _squares_and_a_wide_image(tmp_path)
    monkeypatch.setattr(builder, "EMBEDDING_PART_ROWS", 4)  # two parts: rows 0-3 and 4-5
    miner = f"HardNegativeMiner.from_pretrained({str(encoder)!r}, batch_size=2, search_device='cpu')"
    capsys.readouterr()  # save_pretrained's progress bar
    assert _build_with_factory_miner(source, tmp_path, monkeypatch, "cropless_miners:cropless", miner) == 2
    assert capsys.readouterr().err == ("maple build-preferences: error: --miner cropless_miners:cropless: "
                                       f"{_cropless_batch_error(square_row=4)}\n")


def test_a_maple_miner_whose_images_cannot_batch_is_one_line_naming_their_source_rows_too(tmp_path, capsys):
    """A saved dual-encoder MAPLE embedder as --miner raised its processor's ValueError naming the images by their
    position in the checkpointed embedding part and advising load_maple settings: a traceback, not the one line a
    transformers miner gives (found by a review)."""
    from transformers import Dinov2Config

    from modeling_maple import MapleModel, MapleProcessor
    from modeling_maple.testing import tiny_dual_encoder_config, tiny_tokenizer

    embedder = tmp_path / "embedder"
    dinov2 = Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, image_size=16, patch_size=4)
    MapleModel(tiny_dual_encoder_config(vision_config=dinov2)).save_pretrained(embedder)
    MapleProcessor(image_processor=_cropless_image_processor(), tokenizer=tiny_tokenizer(),
                   backbone="dual_encoder").save_pretrained(embedder)
    source = _squares_and_a_wide_image(tmp_path)
    capsys.readouterr()  # save_pretrained's progress bar
    assert cli.main([source, "--output-dir", str(tmp_path / "out"), *CORPUS_STAND_INS[:4], "--miner", str(embedder),
                     "--no-progress"]) == 2
    # one batch (the miner's default 64 images): source rows 0-5
    assert capsys.readouterr().err == (f"maple build-preferences: error: --miner {embedder}: "
                                       f"{_cropless_batch_error(square_row=0)}\n")


def _cropless_batch_error(square_row: int) -> str:
    """The CLI's words, after its `--miner`, for a batch of `_squares_and_a_wide_image`'s source rows `square_row` to 5
    that `_cropless_image_processor` makes of two sizes."""
    return (
        f"source row {square_row} (id square-{square_row:03d}) (16x16 px) became 16x16 but source row 5 (id wide) (16x32 "
        "px) became 16x32 (height x width): the image processor (CLIPImageProcessorPil) gives each image a size that "
        "follows its own (do_center_crop=False), but the vision tower takes a batch at one size. Mine with a miner whose "
        "image processor makes every image one size (one that crops to crop_size), or with a --miner module:factory "
        "making HardNegativeMiner.from_pretrained(..., image_processor_kwargs=...) that sets do_center_crop=True (images "
        "cropped to crop_size) or size={'height': ..., 'width': ...} (every image resized to it, its aspect ratio not "
        "kept)"
    )


def _cropless_image_processor():
    """CLIP's image processor without its center crop: a 16-pixel shortest edge, each image's aspect ratio kept."""
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}, do_center_crop=False)


def _squares_and_a_wide_image(tmp_path) -> str:
    """A source parquet file of five 16x16 colour squares (rows 0-4) and a 32x16 (width x height) image (row 5, id
    "wide")."""
    import io

    from PIL import Image

    from dataset_builders.testing import SOURCE_FEATURES

    buffer = io.BytesIO()
    Image.new("RGB", (32, 16), "red").save(buffer, format="PNG")
    columns = colour_squares(5)
    columns["image"].append({"bytes": buffer.getvalue(), "path": None})
    columns["id"].append("wide")
    columns["caption"].append("a wide red rectangle")
    source = tmp_path / "source.parquet"
    datasets.Dataset.from_dict(columns, features=SOURCE_FEATURES).to_parquet(str(source))
    return str(source)


def test_a_factory_miner_whose_embeddings_have_another_shape_is_a_one_line_error(source_file, tmp_path, monkeypatch, capsys):
    """It was a traceback: the miner's ValueError for one embedding per batch, torch.cat's RuntimeError for a size that
    changed between batches (found by a review)."""
    miner = "HardNegativeMiner(lambda batch: torch.ones(len(batch)), name='flat', search_device='cpu')"
    assert _build_with_factory_miner(source_file, tmp_path, monkeypatch, "my_miners:flat", miner) == 2
    assert capsys.readouterr().err == (
        "maple build-preferences: error: --miner my_miners:flat: the image encoder of miner 'flat' returned (7,) for "
        "images 0-6; expected a (7, D) tensor, one row per image\n"
    )


@pytest.fixture
def loaded(monkeypatch) -> list:
    """(class, model ref, keywords) of every `from_pretrained` call `_load_components` makes, stand-ins made instead."""
    from dataset_builders.captioner import ContrastiveCaptioner
    from dataset_builders.judge import MLLMJudge
    from dataset_builders.miner import HardNegativeMiner
    from dataset_builders.testing import ColourCaptioner, ColourJudge

    calls = []
    for loader, stand_in in [(MLLMJudge, ColourJudge), (ContrastiveCaptioner, ColourCaptioner), (HardNegativeMiner, lambda: None)]:
        monkeypatch.setattr(loader, "from_pretrained", classmethod(
            lambda cls, ref, stand_in=stand_in, **kwargs: calls.append((cls.__name__, ref, kwargs)) or stand_in()))
    return calls


def test_model_options_reach_every_model_loaded_from_a_hub_id_or_path(source_file, loaded):
    """Each option goes to the loaders of the components it is for (`MODEL_OPTIONS`); the miner searches on this
    rank's device; two --judge are averaged."""
    from dataset_builders.judge import JudgeEnsemble

    args = cli.build_parser().parse_args([
        source_file, "--judge", "org/judge-a", "--judge", "org/judge-b", "--captioner", "org/captioner",
        "--dtype", "bfloat16", "--max-pixels", "1024", "--device-map", "auto", "--judge-prompt", "Is it {text}?",
        "--judge-batch-size", "2", "--caption-prompt", "Contrast them.", "--temperature", "0.5", "--num-samples", "1",
        "--max-new-tokens", "16", "--token", "hf_reader",
    ])
    components = cli._load_components(args, "cuda:1")
    loading = {"device": "cuda:1", "dtype": "bfloat16", "image_processor_kwargs": {"max_pixels": 1024},
               "model_kwargs": {"device_map": "auto"}, "token": "hf_reader"}
    judging = {"loading_kwargs": loading, "batch_size": 2, "prompt": "Is it {text}?"}
    assert loaded == [
        ("MLLMJudge", "org/judge-a", judging),
        ("MLLMJudge", "org/judge-b", judging),
        ("ContrastiveCaptioner", "org/captioner", {"loading_kwargs": loading, "temperature": 0.5, "num_samples": 1,
                                                   "max_new_tokens": 16, "prompt": "Contrast them."}),
        ("HardNegativeMiner", "facebook/dinov2-base", {"device": "cuda:1", "search_device": "cuda:1", "token": "hf_reader"}),
    ]
    assert isinstance(components["judge"], JudgeEnsemble) and len(components["judge"].judges) == 2


def test_unset_model_options_load_the_papers_settings(source_file, loaded):
    """The judge's and captioner's own prompts, judge batches of 8, and the paper's sampling (0.7, 3 samples)."""
    from dataset_builders.testing import ColourJudge

    args = cli.build_parser().parse_args([source_file, "--judge", "org/judge", "--captioner", "org/captioner"])
    components = cli._load_components(args, "cpu")
    loading = {"device": "cpu", "dtype": "auto", "image_processor_kwargs": None, "model_kwargs": None, "token": None}
    assert loaded[:2] == [
        ("MLLMJudge", "org/judge", {"loading_kwargs": loading, "batch_size": 8}),
        ("ContrastiveCaptioner", "org/captioner", {"loading_kwargs": loading, "temperature": 0.7, "num_samples": 3,
                                                   "max_new_tokens": 96}),
    ]
    assert isinstance(components["judge"], ColourJudge), "one judge is used as it is"


def test_the_default_device_is_this_ranks_gpu_else_cpu(monkeypatch):
    import torch

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli._device(None) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cli._device(None) == "cuda:0"
    monkeypatch.setenv("LOCAL_RANK", "3")  # as `accelerate launch` sets it for each process
    assert cli._device(None) == "cuda:3"


def test_a_local_folder_named_like_a_factory_is_a_model_path(tmp_path, monkeypatch):
    """`runs:v2` has the form of module:factory; a folder of that name is a checkpoint, not a module to import."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs:v2").mkdir()
    assert cli._factory("runs:v2") is None


def test_the_summary_warns_when_the_captioner_added_no_caption(tmp_path):
    """A tiny captioner whose answers were all cut at max_new_tokens left each anchor its own caption only, and the
    build reported it as finished like any other; trained on, RPA's image -> text half was zero."""
    stats = {"config_name": "paper", "num_source_rows": 4, "num_anchors": 4, "num_candidate_images": 16,
             "num_candidate_texts": 4, "num_skipped": 0, "skipped": [], "skipped_by_reason": {},
             "text_candidates": "generated"}
    summary = cli.format_summary(stats, 1.0, 1, 0, str(tmp_path))
    assert "candidate texts   4 (1.00 per anchor)\n    warning: the captioner added no caption to any anchor" in summary
    assert "warning" not in cli.format_summary(stats | {"num_candidate_texts": 9}, 1.0, 1, 0, str(tmp_path))
    assert "warning" not in cli.format_summary(stats | {"text_candidates": "corpus"}, 1.0, 1, 0, str(tmp_path))


@pytest.mark.parametrize("repo_id", ["bad repo id!!", ""])  # "" (an unset variable) built and pushed nothing, silently
def test_a_push_to_hub_repo_id_the_hub_would_refuse_is_an_error_before_any_work(repo_id, source_file, tmp_path, capsys, monkeypatch):
    """It was an HFValidationError traceback once the whole build had run."""
    monkeypatch.setattr(cli, "_load_components", lambda *args: pytest.fail("models were loaded"))
    out = tmp_path / "out"
    assert cli.main([source_file, "--output-dir", str(out), *STAND_INS, "--push-to-hub", repo_id]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"maple build-preferences: error: --push-to-hub {repo_id!r} is not a Hub repo id") and \
        error.count("\n") == 1, error
    assert not out.exists()


def test_private_and_token_reach_the_push_and_the_repo_is_named_by_its_full_id(source_file, tmp_path, capsys, monkeypatch):
    """A bare name is created under the token's user: the summary names the repo the push made."""
    pushed = []
    monkeypatch.setattr(cli.MaplePreferences, "push_to_hub",
                        lambda self, repo_id, private, token: pushed.append((repo_id, private, token)) or f"me/{repo_id}")
    argv = [source_file, "--output-dir", str(tmp_path / "out"), *STAND_INS, "--semdedup-clusters", "0", "--no-progress",
            "--push-to-hub", "prefs"]
    assert cli.main([*argv, "--private", "--token", "hf_x"]) == 0
    assert "  pushed to Hub dataset repo me/prefs\n" in capsys.readouterr().out
    assert cli.main(argv) == 0  # the build reused, pushed again in public, with HF_TOKEN or the saved login
    assert pushed == [("prefs", True, "hf_x"), ("prefs", False, None)]


@pytest.mark.parametrize("hub", ["offline", "unreachable"])
def test_a_failed_push_is_one_line_saying_where_the_built_data_is_kept(source_file, tmp_path, capsys, monkeypatch, hub):
    """Offline it was an OfflineModeIsEnabled traceback, with an unreachable Hub an httpx ConnectError one, after the
    build: nothing said the data was built and kept, nor how to push it."""
    from huggingface_hub import constants

    if hub == "offline":
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    else:
        monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    out = tmp_path / "out"
    argv = [source_file, "--output-dir", str(out), *STAND_INS, "--semdedup-clusters", "0", "--no-progress",
            "--push-to-hub", "me/prefs"]
    assert cli.main(argv) == 1
    captured = capsys.readouterr()
    assert "finished in" in captured.out
    assert captured.err == (
        f"maple build-preferences: error: pushing failed: dataset repo 'me/prefs' on {constants.ENDPOINT} cannot be "
        f"written: the Hub is offline (HF_HUB_OFFLINE) or unreachable. The built dataset is kept in "
        f"{out / 'work' / 'shards'}: run the same command again to push it (the build is reused, not redone)\n"
    )


@pytest.mark.parametrize(
    "device, cuda_devices, error",
    [
        ("gpu", 0, "--device 'gpu': Expected one of "),
        ("cuda", 0, "--device 'cuda': no cuda device is available on this machine"),
        ("cuda:2", 2, "--device 'cuda:2': this machine has 2 cuda device(s), cuda:0 to cuda:1"),
    ],
)
def test_a_device_this_machine_lacks_is_a_usage_error_before_any_model_loads(
    source_file, tmp_path, capsys, monkeypatch, device, cuda_devices, error
):
    """--device gpu was a RuntimeError traceback and --device cuda on a CPU machine an AssertionError, both once the
    judge had loaded. The check is `maple eval`'s (`maple.cli.checked_device`)."""
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda_devices)
    monkeypatch.setattr(cli, "_load_components", lambda *args: pytest.fail("models were loaded"))
    out = tmp_path / "out"
    assert cli.main([source_file, "--output-dir", str(out), *STAND_INS, "--device", device]) == 2
    message = capsys.readouterr().err
    assert message.startswith(f"maple build-preferences: error: {error}") and message.count("\n") == 1, message
    assert not out.exists()


def test_a_dtype_not_offered_is_a_usage_error(source_file, tmp_path, capsys):
    """--dtype float33 was an AttributeError traceback (torch has no float33) once the judge was loading."""
    with pytest.raises(SystemExit) as exited:
        cli.main([source_file, "--output-dir", str(tmp_path / "out"), *STAND_INS, "--dtype", "float33"])
    assert exited.value.code == 2
    assert "argument --dtype: invalid choice: 'float33'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "option, spec, error",
    [
        ("--judge", "builtins:dict", "--judge builtins:dict made a dict; expected a PreferenceJudge (method score)"),
        ("--judge", "dataset_builders.testing:mean_colour", "--judge dataset_builders.testing:mean_colour: calling it with "
         "no arguments failed (mean_colour() missing 1 required positional argument: 'image'); expected a zero-argument "
         "factory of a PreferenceJudge (method score)"),
        ("--captioner", "dataset_builders.testing:ColourJudge", "--captioner dataset_builders.testing:ColourJudge made a "
         "ColourJudge; expected a CandidateCaptioner (method caption)"),
        ("--miner", "dataset_builders.testing:COLOURS", "--miner dataset_builders.testing:COLOURS: COLOURS is a dict, not a "
         "callable that makes a HardNegativeMiner"),
    ],
)
def test_a_factory_that_makes_no_such_component_is_a_one_line_error(source_file, tmp_path, capsys, option, spec, error):
    """--judge builtins:dict was a "ValueError: cannot build MaplePreferences: judge= must implement PreferenceJudge"
    traceback (exit status 1), and a factory that needs arguments a TypeError traceback."""
    models = dict(zip(STAND_INS[::2], STAND_INS[1::2])) | {option: spec}
    out = tmp_path / "out"
    argv = [source_file, "--output-dir", str(out), "--semdedup-clusters", "0", "--no-progress"]
    assert cli.main(argv + [item for pair in models.items() for item in pair]) == 2
    assert capsys.readouterr().err == f"maple build-preferences: error: {error}\n"
    assert not (out / "work").exists()


def test_a_local_folder_holding_no_model_is_an_error_before_any_model_loads(source_file, tmp_path, capsys, monkeypatch):
    """A folder of images given as --captioner was found only when the captioner loaded, after the judge."""
    monkeypatch.setattr(cli, "_load_components", lambda *args: pytest.fail("models were loaded"))
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.png").write_bytes(b"png")
    out = tmp_path / "out"
    argv = [source_file, "--output-dir", str(out), *STAND_INS[:2], *STAND_INS[4:], "--captioner", str(images)]
    assert cli.main(argv) == 2
    assert capsys.readouterr().err == (
        f"maple build-preferences: error: --captioner {images}: {images} has neither config.json nor "
        "adapter_config.json: not a transformers checkpoint folder\n"
    )
    assert not out.exists()


@pytest.mark.parametrize("option", ["--judge", "--captioner"])
def test_a_judge_or_captioner_of_an_unsupported_family_is_refused_before_any_model_loads(option, source_file, tmp_path, capsys, monkeypatch):
    """It was refused only when it loaded, after the models before it (a 72B captioner, say)."""
    monkeypatch.setattr(cli, "_load_components", lambda *args: pytest.fail("models were loaded"))
    model = tmp_path / "blip"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "blip-2", "architectures": ["Blip2ForConditionalGeneration"]}')
    out = tmp_path / "out"
    stand_ins = STAND_INS[2:] if option == "--judge" else [*STAND_INS[:2], *STAND_INS[4:]]
    assert cli.main([source_file, "--output-dir", str(out), *stand_ins, option, str(model)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"maple build-preferences: error: {option} {model}: model type 'blip-2' is not supported yet; supported: qwen2_vl")
    assert error.count("\n") == 1
    assert not out.exists()


def test_an_mllm_as_miner_is_refused_before_any_model_loads(source_file, tmp_path, capsys, monkeypatch):
    """It loaded, and the build crashed at the first batch it embedded: AttributeError "'tuple' object has no attribute
    'float'" (an MLLM's get_image_features gives per-image token features)."""
    monkeypatch.setattr(cli, "_load_components", lambda *args: pytest.fail("models were loaded"))
    mllm = tmp_path / "mllm"
    mllm.mkdir()
    (mllm / "config.json").write_text('{"model_type": "qwen2_vl", "architectures": ["Qwen2VLForConditionalGeneration"]}')
    out = tmp_path / "out"
    assert cli.main([source_file, "--output-dir", str(out), *STAND_INS[:4], "--miner", str(mllm)]) == 2
    assert capsys.readouterr().err == (
        f"maple build-preferences: error: --miner {mllm}: {mllm} is a 'qwen2_vl' MLLM (Qwen2VLForConditionalGeneration), "
        "not an image encoder: mine with one (facebook/dinov2-base, a CLIP or SigLIP model), or with a MAPLE embedder "
        "of it (HardNegativeMiner.from_maple)\n"
    )
    assert not out.exists()


@pytest.mark.parametrize("file_at, output_dir, message", [
    ("taken", "taken", "--output-dir {tmp}/taken is a file"),
    ("taken", "taken/out", "--output-dir {tmp}/taken/out is inside {tmp}/taken, a file"),
    ("out/work", "out", "--output-dir's work folder {tmp}/out/work is a file"),
    ("out/cache", "out", "--output-dir's cache folder {tmp}/out/cache is a file"),
])
def test_an_output_dir_that_is_a_file_is_an_error_before_any_work(source_file, tmp_path, capsys, monkeypatch, file_at,
                                                                  output_dir, message):
    """It was a NotADirectoryError traceback; a file named "work" or "cache" inside it, a ValueError traceback naming
    `work_dir` (found by a review helper)."""
    monkeypatch.setattr(cli, "_load_components", lambda *args: pytest.fail("models were loaded"))
    (tmp_path / file_at).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / file_at).write_text("not a folder")
    assert cli.main([source_file, "--output-dir", str(tmp_path / output_dir), *STAND_INS]) == 2
    assert capsys.readouterr().err == (
        f"maple build-preferences: error: {message.format(tmp=tmp_path)}; expected a folder (created if missing)\n"
    )


def test_an_output_dir_that_cannot_be_created_or_is_empty_is_one_line_before_any_model_loads(source_file, tmp_path, capsys,
                                                                                             monkeypatch):
    """--output-dir under /proc (which cannot be made) was open_source's FileNotFoundError traceback, and "" (an unset
    variable) built into the current directory, silently (found by a bug hunt)."""
    monkeypatch.setattr(cli, "_load_components", lambda *args: pytest.fail("models were loaded"))
    monkeypatch.chdir(tmp_path)
    assert cli.main([source_file, "--output-dir", "", *STAND_INS]) == 2
    assert capsys.readouterr().err == (
        "maple build-preferences: error: --output-dir is empty; expected a folder (created if missing)\n")
    assert os.listdir(tmp_path) == ["source.parquet"]
    if not os.path.isdir("/proc/self"):
        pytest.skip("needs Linux's /proc, where no folder can be made")
    assert cli.main([source_file, "--output-dir", "/proc/maple_out", *STAND_INS]) == 2
    assert capsys.readouterr().err.startswith(
        "maple build-preferences: error: --output-dir /proc/maple_out cannot be created: ")


def test_an_output_dir_written_with_a_tilde_is_the_home_folders(source_file, tmp_path, capsys, monkeypatch):
    """`--output-dir=~/out`, which the shell leaves as typed, made a folder named ~ in the current one (found by a
    review), where maple eval's --out and every path the CLIs read are the home folder's."""
    def stop(*args):
        raise ValueError("stopped once the source is read")

    monkeypatch.setattr(cli, "_load_components", stop)
    (tmp_path / "home").mkdir(), (tmp_path / "here").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path / "here")
    assert cli.main([source_file, "--output-dir=~/out", *STAND_INS, "--semdedup-clusters", "0", "--no-progress"]) == 2
    assert capsys.readouterr().err.endswith("maple build-preferences: error: stopped once the source is read\n")
    assert os.listdir(tmp_path / "here") == [] and os.listdir(tmp_path / "home" / "out") == ["cache"]


def test_private_without_push_to_hub_is_refused_before_any_work(source_file, tmp_path, capsys, monkeypatch):
    """It was ignored, silently, as the other ignored options no longer are (found by a bug hunt)."""
    monkeypatch.setattr(cli, "_load_components", lambda *args: pytest.fail("models were loaded"))
    assert cli.main([source_file, "--output-dir", str(tmp_path / "out"), *STAND_INS, "--private"]) == 2
    assert capsys.readouterr().err == (
        "maple build-preferences: error: ignored option: --private (it makes the repo --push-to-hub creates private, and "
        "there is no --push-to-hub). Leave it out, or add --push-to-hub REPO_ID\n")
    assert not (tmp_path / "out").exists()


def test_no_progress_hides_transformers_bars_too(source_file, tmp_path, monkeypatch):
    """transformers' "Loading weights ... 46/46" bar showed under --no-progress."""
    from transformers.utils import logging as transformers_logging

    seen = []
    monkeypatch.setattr(cli, "_build", lambda *args: seen.append(
        (transformers_logging.is_progress_bar_enabled(), datasets.are_progress_bars_disabled())) or 0)
    assert transformers_logging.is_progress_bar_enabled() and not datasets.are_progress_bars_disabled()
    assert cli.main([source_file, "--output-dir", str(tmp_path / "out"), *STAND_INS, "--no-progress"]) == 0
    assert seen == [(False, True)]
    assert transformers_logging.is_progress_bar_enabled() and not datasets.are_progress_bars_disabled()


@pytest.mark.parametrize("count, after_the_examples", [(5, "  full list"), (6, "      ... 1 more")])
def test_the_summary_names_at_most_five_skipped_inputs_per_reason(tmp_path, count, after_the_examples):
    skipped = [{"kind": "empty caption", "id": f"row-{row}", "row": row, "detail": ""} for row in range(count)]
    stats = {"config_name": "paper", "num_source_rows": 9, "num_anchors": 4, "num_candidate_images": 16,
             "num_candidate_texts": 9, "num_skipped": count, "skipped": skipped,
             "skipped_by_reason": {"empty caption": count}, "text_candidates": "generated"}
    lines = cli.format_summary(stats, 1.0, 1, 0, str(tmp_path)).splitlines()
    start = lines.index(f"    empty caption: {count}") + 1
    assert lines[start:start + 5] == [f"      id 'row-{row}' (row {row})" for row in range(5)]
    assert lines[start + 5].startswith(after_the_examples)


def test_the_summary_says_what_its_shard_counts_are(tmp_path):
    """"3 computed, 0 reused from an earlier run (this process)" left open what "this process" meant."""
    stats = {"config_name": "paper", "num_source_rows": 4, "num_anchors": 4, "num_candidate_images": 16,
             "num_candidate_texts": 9, "num_skipped": 0, "skipped": [], "skipped_by_reason": {},
             "text_candidates": "generated"}
    assert "shards            1 built, 2 already built by an earlier run\n" in cli.format_summary(stats, 1.0, 1, 2, str(tmp_path))
    assert "shards            1 built, 2 already built by an earlier run (rank 0's; each of the 4 processes builds its own)\n" \
        in cli.format_summary(stats, 1.0, 1, 2, str(tmp_path), world_size=4)


def test_semdedup_and_its_cluster_count_are_explained_in_command_line_terms(source_file, tmp_path, capsys):
    """On 7 rows the advice was "use about 1 clusters"; --semdedup-clusters -1 said "must be positive or None", but on
    the command line the off value is 0."""
    argv = [source_file, "--output-dir", str(tmp_path / "out"), *STAND_INS, "--no-progress"]
    assert cli.main(argv) == 2
    error = capsys.readouterr().err
    assert "use about" not in error and "turn de-duplication off (semdedup_clusters=None, CLI --semdedup-clusters 0); " \
        "9 rows are too few to cluster" in error, error  # the source's 9 rows: checked before any is read
    assert cli.main([*argv, "--semdedup-clusters", "-1"]) == 2
    assert "semdedup_clusters must be positive, or None to turn de-duplication off (CLI --semdedup-clusters 0), got -1" \
        in capsys.readouterr().err
