"""The `maple` command: its sub-commands and an interrupted run."""

import pytest

from maple import cli


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
