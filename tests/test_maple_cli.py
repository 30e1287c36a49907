"""The `maple` command: its sub-commands and an interrupted run; the output-folder check and atomic writes
(`maple.files`) that its long jobs share."""

import errno
import json
import os
import re
import socket
import subprocess
import sys
import threading
import types
from pathlib import Path

import pytest

from maple import cli
from maple.files import (
    _host_label,
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    created_once,
    expanded_path,
    folder_problem,
)


def test_help_lists_every_command_with_its_purpose(capsys):
    assert cli.main(["--help"]) == 0
    text = capsys.readouterr().out
    for name, (_, purpose) in cli.SUBCOMMANDS.items():
        assert f"  {name}" in text and purpose in text


@pytest.mark.parametrize("command, resume", [
    ("build-preferences", "what was finished is kept: run the same command"),
    # "what was finished is kept" overstated it: steps after the last checkpoint are lost (a user-journey review)
    ("train", "the checkpoints saved so far are kept, not the steps after the last: run the same command with "
              "--resume_from_checkpoint true"),
])
def test_ctrl_c_says_how_to_resume_instead_of_a_traceback(command, resume, monkeypatch, capsys):
    module = __import__(cli.SUBCOMMANDS[command][0], fromlist=["main"])

    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "main", interrupted)
    assert cli.main([command, "--whatever"]) == 130
    assert capsys.readouterr().err == f"\nmaple {command}: interrupted; {resume} to resume\n"


@pytest.mark.filterwarnings("ignore:.*found in sys.modules after import of package:RuntimeWarning")  # (imported above)
@pytest.mark.parametrize("command", ["train", "eval", "build-preferences"])
def test_a_module_run_is_the_maple_command(command, monkeypatch, capsys):
    """`python -m trainer.cli` (as `accelerate launch -m` runs it) printed a KeyboardInterrupt traceback on Ctrl-C,
    where `maple train` says what is kept and how to resume (found by a review)."""
    import runpy

    module_name = cli.SUBCOMMANDS[command][0]
    module = __import__(module_name, fromlist=["main"])

    def interrupted(argv):
        assert argv == ["--some", "option"]
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "main", interrupted)  # what `maple COMMAND` runs; the module's own run defines another
    monkeypatch.setattr("sys.argv", [module_name, "--some", "option"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module(module_name, run_name="__main__")
    assert exit_info.value.code == 130
    assert capsys.readouterr().err.startswith(f"\nmaple {command}: interrupted; ")


def test_version_is_the_installed_distributions(capsys):
    """`maple --version` said "the following arguments are required: command, args" (a user-journey review)."""
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"maple {version('maple-embed')}\n"


@pytest.mark.parametrize("option", ["-x", "--verbose"])
def test_an_unknown_option_before_the_command_is_named(option, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([option, "eval"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"maple: error: unknown option {option}; options come after the command" in error
    assert "required" not in error and "eval" in error.splitlines()[-1]


def test_folder_problem_names_a_file_at_or_above_the_folder(tmp_path):
    (tmp_path / "done").mkdir()
    (tmp_path / "results.json").write_text("{}")
    assert folder_problem(tmp_path / "done", "--out") is None
    assert folder_problem(tmp_path / "done" / "new" / "deeper", "--out") is None  # created when the job writes
    assert folder_problem(tmp_path / "results.json", "--out") == (
        f"--out {tmp_path / 'results.json'} is a file; expected a folder (created if missing)")
    assert folder_problem(tmp_path / "results.json" / "run", "work_dir") == (
        f"work_dir {tmp_path / 'results.json' / 'run'} is inside {tmp_path / 'results.json'}, a file; "
        "expected a folder (created if missing)")


def test_folder_problem_refuses_an_empty_path():
    """An unset variable's "" is the current folder to `Path`: a builder's work_dir="" put its checkpoints there."""
    assert folder_problem("", "work_dir") == "work_dir is empty; expected a folder (created if missing)"


def test_a_home_folder_of_no_user_is_left_as_written(tmp_path, monkeypatch):
    """`Path.expanduser` raised RuntimeError ("Could not determine home directory") for `~nosuchuser/x`, a traceback
    from every command given such a path; the shell and `os.path.expanduser` leave it as written."""
    monkeypatch.setenv("HOME", str(tmp_path))
    assert expanded_path("~/runs") == tmp_path / "runs" and expanded_path(Path("~")) == tmp_path
    assert expanded_path("~nosuchuser/runs") == Path("~nosuchuser/runs")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "~nosuchuser").write_text("")
    assert folder_problem("~nosuchuser/runs", "--out") == (
        f"--out ~nosuchuser/runs is inside {tmp_path / '~nosuchuser'}, a file; expected a folder (created if missing)")


def test_atomic_write_syncs_a_temporary_file_of_its_own_beside_the_target_before_replacing_it(tmp_path, monkeypatch):
    """The temporary file is named by process and thread, so concurrent writers of one file never share one; it
    reaches the disk (fsync) while the old file is still in place."""
    target = tmp_path / "stats.json"
    target.write_text("old")
    events = []
    monkeypatch.setattr(os, "fsync", lambda descriptor: events.append(("fsync", target.read_text())))

    def write(temporary):
        events.append(("write", temporary))
        temporary.write_text("new")

    atomic_write(target, write)
    temporary = tmp_path / f"stats.json.tmp-{_host_label()}-{os.getpid()}-{threading.get_ident()}"
    assert events == [("write", temporary), ("fsync", "old")]
    assert target.read_text() == "new" and sorted(tmp_path.iterdir()) == [target]


def test_atomic_write_leaves_no_temporary_file_when_writing_fails_and_takes_the_longest_names(tmp_path):
    """A `write` that raised left `<name>.tmp-<host>-<pid>-<thread>` behind, and a 250-byte name failed with "File name too
    long": the suffix pushed the temporary file's name past 255 bytes (found by a review)."""

    def failing(temporary):
        temporary.write_text("half")
        raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        atomic_write(tmp_path / "state.pt", failing)
    assert list(tmp_path.iterdir()) == []
    longest = tmp_path / ("é" * 120 + ".json")  # 245 bytes
    atomic_write_text(longest, "{}")
    assert [path.name for path in tmp_path.iterdir()] == [longest.name] and longest.read_text() == "{}"


@pytest.mark.skipif(sys.platform == "win32", reason="no flock: no temporary file can be told abandoned")
def test_a_killed_writers_temporary_file_is_removed_and_a_live_writers_is_kept(tmp_path):
    """A writer killed mid-write left `<name>.tmp-<host>-<pid>-<thread>` behind forever: the builder removed only some of its
    work dir's, once every shard was there, and a killed embeddings.pt's (gigabytes) stayed (found by a bug hunt). The
    writer's lock tells them apart, which the system drops with the killed process."""
    from maple.files import remove_abandoned_temporaries

    killed_writer = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from maple.files import atomic_write\n"
        "def write(temporary):\n"
        "    temporary.write_text('half')\n"
        "    print('writing', flush=True)\n"
        "    time.sleep(600)\n"
        f"atomic_write({str(tmp_path / 'embeddings.pt')!r}, write)\n"
    )], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert killed_writer.stdout.readline() == "writing\n"
    (abandoned,) = tmp_path.glob("embeddings.pt.tmp-*")
    assert remove_abandoned_temporaries(tmp_path) == []  # still being written
    killed_writer.kill()
    killed_writer.wait()
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / f"result.json.tmp-{_host_label()}-11-22").write_text("half")  # no writer holds it
    (tmp_path / "notes.tmp-draft").write_text("not a temporary file of ours")
    assert remove_abandoned_temporaries(tmp_path) == [abandoned]
    assert remove_abandoned_temporaries(tmp_path, recursive=True) == [tmp_path / "runs" / f"result.json.tmp-{_host_label()}-11-22"]
    assert sorted(path.name for path in tmp_path.rglob("*")) == ["notes.tmp-draft", "runs"]

    writing, finish = threading.Event(), threading.Event()

    def write(temporary):
        temporary.write_text("whole")
        writing.set()
        finish.wait(60)

    live_writer = threading.Thread(target=atomic_write, args=(tmp_path / "stats.json", write))
    live_writer.start()
    assert writing.wait(60)
    assert remove_abandoned_temporaries(tmp_path) == []
    finish.set()
    live_writer.join()
    assert (tmp_path / "stats.json").read_text() == "whole"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.tmp-draft", "runs", "stats.json"]


@pytest.mark.skipif(sys.platform == "win32", reason="no flock: no temporary file can be told abandoned")
def test_another_machines_temporary_file_is_kept_where_its_lock_cannot_be_seen(tmp_path, monkeypatch):
    """On a file system whose locks are local to each machine (NFS mounted with local_lock, Lustre's localflock, FUSE
    mounts), a rank on another machine claiming the work dir found the lock of a file being written free, removed the
    file, and its writer died with a FileNotFoundError (found by a review). Only this machine's are tested now, whose
    locks it sees on any file system."""
    import maple.files
    from maple.files import remove_abandoned_temporaries

    writing, finish = threading.Event(), threading.Event()
    failures = []

    def write(temporary):
        temporary.write_text("whole")
        writing.set()
        finish.wait(60)

    def writer():
        try:
            atomic_write(tmp_path / "embeddings.pt", write)
        except OSError as error:
            failures.append(error)

    writer_thread = threading.Thread(target=writer)
    writer_thread.start()
    assert writing.wait(60)
    # the remover runs on another machine, which cannot see the writer's lock
    monkeypatch.setattr(socket, "gethostname", lambda: "other-machine.cluster")
    monkeypatch.setattr(maple.files, "fcntl", types.SimpleNamespace(flock=lambda *args: None, LOCK_EX=0, LOCK_NB=0))
    abandoned_here = tmp_path / "stats.json.tmp-other-machine.cluster-11-22"
    abandoned_here.write_text("half")
    try:
        assert remove_abandoned_temporaries(tmp_path) == [abandoned_here]
    finally:
        finish.set()
        writer_thread.join()
    assert failures == []
    assert sorted(path.name for path in tmp_path.iterdir()) == ["embeddings.pt"]


def test_a_temporary_file_name_holds_a_safe_host_name_within_255_bytes(tmp_path, monkeypatch):
    """The host name in a temporary file's name (which tells the machine whose locks can be tested) is kept to
    letters, digits, ".", "_" and "-", and the longest names still fit."""
    monkeypatch.setattr(socket, "gethostname", lambda: "node 7/" + "é" * 100)
    longest = tmp_path / ("é" * 120 + ".json")  # 245 bytes
    names = []
    atomic_write(longest, lambda temporary: (names.append(temporary.name), temporary.write_text("{}")))
    (name,) = names
    assert len(name.encode()) <= 255 and name.startswith("é" * 60)
    assert re.search(rf"\.tmp-node_7_{'_' * 57}-{os.getpid()}-{threading.get_ident()}$", name)
    assert longest.read_text() == "{}"


def test_a_file_created_once_holds_the_first_writers_text_for_every_process(tmp_path):
    """The builder's work-dir build id: ranks that each wrote their own random id (the last write winning) could read
    different ones, and each then assembled the dataset again (found by a review)."""
    import multiprocessing

    target = tmp_path / "id.txt"
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        texts = pool.starmap(created_once, [(target, f"writer {index}") for index in range(8)])
    assert len(set(texts)) == 1 and texts[0] == target.read_text() and texts[0].startswith("writer ")
    assert created_once(target, "a later writer") == texts[0]
    assert list(tmp_path.iterdir()) == [target]  # no temporary file left


def test_created_once_falls_back_to_a_rename_only_where_there_are_no_hard_links(tmp_path, monkeypatch):
    def failing_link(code):
        def link(source, target):
            raise OSError(code, os.strerror(code))
        return link

    monkeypatch.setattr(os, "link", failing_link(errno.EPERM))  # SMB, FAT: no hard links
    assert created_once(tmp_path / "id.txt", "first") == "first" and created_once(tmp_path / "id.txt", "second") == "first"
    monkeypatch.setattr(os, "link", failing_link(errno.ENOSPC))  # a full disk is no reason to write anyway
    with pytest.raises(OSError, match="No space left"):
        created_once(tmp_path / "other.txt", "text")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["id.txt"]


def test_folder_problem_names_a_broken_link_where_the_folder_would_be(tmp_path):
    """A link to nothing does not exist, so it passed the check, and the job failed when it first wrote (mkdir:
    FileExistsError), after its models had loaded (found by a review)."""
    (tmp_path / "out").symlink_to(tmp_path / "nowhere")
    assert folder_problem(tmp_path / "out", "--out") == (
        f"--out {tmp_path / 'out'} is a broken symbolic link; expected a folder (created if missing)")
    assert folder_problem(tmp_path / "out" / "run", "--out") == (
        f"--out {tmp_path / 'out' / 'run'} is inside {tmp_path / 'out'}, a broken symbolic link; expected a folder "
        "(created if missing)")
    (tmp_path / "nowhere").mkdir()
    assert folder_problem(tmp_path / "out" / "run", "--out") is None


def test_an_empty_path_in_a_table_is_not_taken_for_the_tables_folder(tmp_path):
    """`located("", folder)` was the folder itself (it exists), so an empty image path read as a folder:
    IsADirectoryError naming the data folder, not the empty cell (found by a review)."""
    from maple.files import located

    (tmp_path / "cat.png").write_bytes(b"")
    assert located("", str(tmp_path)) == ""
    assert located("cat.png", str(tmp_path)) == str(tmp_path / "cat.png")


def test_atomic_writes_of_text_are_utf8_and_of_json_indented_by_two_unless_told(tmp_path):
    atomic_write_text(tmp_path / "results.md", "| café | ✓ |")
    assert (tmp_path / "results.md").read_bytes() == "| café | ✓ |".encode("utf-8")
    atomic_write_json(tmp_path / "a.json", {"r1": 1.0})
    assert (tmp_path / "a.json").read_text() == '{\n  "r1": 1.0\n}'
    atomic_write_json(tmp_path / "b.json", {"r1": 1.0}, indent=None)
    assert json.loads((tmp_path / "b.json").read_text()) == {"r1": 1.0} and "\n" not in (tmp_path / "b.json").read_text()


def test_a_command_gets_the_arguments_after_its_name_and_its_status_is_maples(monkeypatch):
    module = __import__(cli.SUBCOMMANDS["eval"][0], fromlist=["main"])
    received = []

    def command(argv):
        received.append(argv)
        return status

    monkeypatch.setattr(module, "main", command)
    status = 2
    assert cli.main(["eval", "some/model", "--out", "x"]) == 2
    status = None  # a main that returns nothing succeeded
    monkeypatch.setattr("sys.argv", ["maple", "eval", "--help"])
    assert cli.main() == 0
    assert received == [["some/model", "--out", "x"], ["--help"]]


@pytest.mark.parametrize("argv", [[], ["-h"], ["--help"]])
def test_no_command_or_help_prints_the_commands(argv, capsys):
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: maple ") and all(f"  {name}" in text for name in cli.SUBCOMMANDS)


def test_help_lines_up_the_purposes_of_the_commands(capsys):
    cli.main(["--help"])
    lines = capsys.readouterr().out.splitlines()
    columns = {line.index(purpose) for _, purpose in cli.SUBCOMMANDS.values() for line in lines if line.endswith(purpose)}
    assert len(columns) == 1 and columns.pop() > max(map(len, cli.SUBCOMMANDS)) + 2


def test_the_version_of_a_package_run_without_being_installed_says_so(monkeypatch):
    monkeypatch.setattr(cli, "DISTRIBUTION", "maple-embed-not-installed")
    assert cli.version() == "unknown (maple-embed-not-installed is not installed)"


def test_help_shows_each_default_but_none_false_an_empty_list_or_one_the_help_names():
    """A default of 0 was hidden as well (0 == False): `maple build-preferences --help` showed no default for --seed."""
    import argparse

    parser = argparse.ArgumentParser(prog="maple x", formatter_class=cli.DefaultsHelpFormatter)
    parser.add_argument("--size", type=int, default=3, help="cells per row (default: 3, or 4 for hexagons)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--scale", type=float, default=0.0, help="noise scale")
    parser.add_argument("--name", default="out", help="run name")
    parser.add_argument("--fast", action="store_true", help="skip checks")
    parser.add_argument("--model", default=None, help="model id")
    parser.add_argument("--tags", nargs="*", default=[], help="tags")
    help_text = " ".join(parser.format_help().split())
    for shown in ("cells per row (default: 3, or 4 for hexagons) --seed", "random seed (default: 0)",
                  "noise scale (default: 0.0)", "run name (default: out)", "skip checks --model", "model id --tags"):
        assert shown in help_text, shown
    assert help_text.endswith("tags")


def test_a_positive_number_option_names_its_type_in_argparses_error(capsys):
    import argparse

    parser = argparse.ArgumentParser(prog="maple x")
    parser.add_argument("--count", type=cli.positive(int))
    parser.add_argument("--rate", type=cli.positive(float))
    assert (parser.parse_args(["--count", "2", "--rate", "0.5"]).count, parser.parse_args(["--rate", "0.5"]).rate) == (2, 0.5)
    for option, value, type_name in (("--count", "two", "int"), ("--rate", "fast", "float")):
        with pytest.raises(SystemExit):
            parser.parse_args([option, value])
        assert capsys.readouterr().err.endswith(f"argument {option}: invalid {type_name} value: '{value}'\n")


def test_a_huge_integer_is_accepted_as_positive_not_a_float_overflow():
    """`--batch-size` of 400 digits raised OverflowError from math.isfinite: a traceback, not a usage error."""
    assert cli.positive(int)("1" + "0" * 400) == 10**400
    with pytest.raises(Exception, match="must be a finite number above zero, got -" + "9" * 400):
        cli.positive(int)("-" + "9" * 400)


@pytest.mark.parametrize("token", ["hf_token ", "hf_token\n", "hf tok", "hf_é"])
def test_a_token_no_hub_token_can_be_is_a_usage_error(token, capsys):
    """A token with a trailing space or newline was reported as an unreachable Hub (httpx refuses the header), and one
    outside ASCII ended in a UnicodeEncodeError traceback (found by a review)."""
    import argparse

    parser = argparse.ArgumentParser(prog="maple eval")
    cli.add_token_option(parser, "reading")
    assert parser.parse_args(["--token", "hf_AbC-123_x.y"]).token == "hf_AbC-123_x.y"
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--token", token])
    assert exit_info.value.code == 2
    assert "argument --token: holds a space, a line break or a character outside printable ASCII" in capsys.readouterr().err


def test_a_double_dash_before_the_command_ends_maples_options(monkeypatch):
    """`maple -- eval` was "unknown option --"."""
    module = __import__(cli.SUBCOMMANDS["eval"][0], fromlist=["main"])
    received = []
    monkeypatch.setattr(module, "main", lambda argv: received.append(argv))
    assert cli.main(["--", "eval", "model"]) == 0 and received == [["model"]]


def test_a_device_this_machine_has_is_returned_as_torch_names_it(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [cli.checked_device(name) for name in ("cuda", "cuda:1", "cpu")] == ["cuda", "cuda:1", "cpu"]
