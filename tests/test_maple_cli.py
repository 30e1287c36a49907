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
