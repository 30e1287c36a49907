"""The `maple` command: one sub-command per stage of the MAPLE pipeline.

Each sub-command lives beside the code it drives and is imported only when used, so `maple --help`
stays fast and a missing optional stage never breaks the others.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

from .files import expanded_path
from .hub import token_problem

# sub-command -> (module with `main(argv: list[str]) -> int`, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("maple.demo.cli", "Run the whole pipeline offline on a procedurally drawn world."),
    "train": ("trainer.cli", "Train a MAPLE embedder with RPA + InfoNCE (RPATrainer)."),
    "build-preferences": ("dataset_builders.cli", "Build an MLLM-judged preference dataset."),
    "eval": ("evaluation.cli", "Evaluate embedders on retrieval and fine-grained benchmarks."),
}


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """`--help` shows each option's default, except where it says nothing: None (unset; the help says what holds
    then), a flag's False, an empty list, or a help text that names its default itself."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        # `is`, not `in (None, False, [])`: a default of 0 equals False and was hidden
        silent = action.default is None or action.default is False or action.default == [] or "default" in (action.help or "")
        return action.help if silent else super()._get_help_string(action)


def report_error(prog: str, message: str, status: int = 2) -> int:
    """Print `PROG: error: MESSAGE` on one line to stderr, as argparse words its errors, and return `status` for the
    command to exit with: for a problem found once work has begun (a damaged shard, a model that does not load)."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    return status


def exit_with_error(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    """Exit with status 2 on one line `PROG: error: message`, for a value the command cannot use: `parser.error`
    prints the usage lines first, which are for argparse's own (syntax) errors and say nothing about the value."""
    parser.exit(report_error(parser.prog, message))


def add_token_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup, used_for: str) -> None:
    """`--token TOKEN`, the Hub token `used_for` what the help says, as `hf upload --token` takes it; unset, HF_TOKEN
    or the token `hf auth login` saved is used, as huggingface_hub does."""
    parser.add_argument("--token", default=None, metavar="TOKEN", type=_token,
                        help=f"Hub token for {used_for}; unset: HF_TOKEN, else the token `hf auth login` saved")


def _token(text: str) -> str:
    """A `--token` value: one that cannot be sent as a Hub token (`maple.hub.token_problem`: empty, as
    `--token "$UNSET_VARIABLE"`, or holding a space, a line break or a character outside printable ASCII, as a token
    pasted with its newline) is a usage error saying why, without the token."""
    if (problem := token_problem(text)) is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


def output_folder(text: str) -> Path:
    """An argparse `type` for an output folder option (`--out`): the path, a leading `~` expanded (`expanded_path`).
    An empty one (`--out "$UNSET_VARIABLE"`) is a usage error here, while it is text: as a Path it is the current
    folder, which `folder_problem` cannot tell from `--out .`, and the command wrote its files there."""
    if not text:
        raise argparse.ArgumentTypeError("empty; expected a folder (created if missing)")
    return expanded_path(text)


def positive(number_type: type[int] | type[float]):
    """An argparse `type` for a finite number above zero: a bad value is a usage error (exit status 2)
    when the command line is parsed, not a failure after the models have loaded. ("nan" and "inf" parse as floats:
    a NaN setting never equals itself, so a recorded recipe holding one refused every rerun.)"""

    def parse(text: str) -> int | float:
        value = number_type(text)
        # an int is finite (math.isfinite would raise OverflowError on one past the float range)
        if (number_type is float and not math.isfinite(value)) or value <= 0:
            raise argparse.ArgumentTypeError(f"must be a finite number above zero, got {text}")
        return value

    parse.__name__ = number_type.__name__  # argparse names the type in "invalid int value: 'x'"
    return parse


def image_settings(value: object, option: str) -> dict:
    """The image processor settings given to `option` (`maple train`'s and `maple eval`'s), as JSON text or, from a
    config file, a mapping; a ValueError naming the option and the value for anything else."""
    example = "e.g. '{\"max_pixels\": 153664}'"
    settings = value
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"{option} is empty; expected a JSON object of image processor settings, {example}")
        try:
            settings = json.loads(value)
        except ValueError as error:
            raise ValueError(f"{option} {value!r} is not valid JSON ({error}); expected a JSON object of image "
                             f"processor settings, {example}") from None
    if not isinstance(settings, dict):
        raise ValueError(f"{option} {value!r} is not a JSON object; expected one of image processor "
                         f"settings, {example}")
    return settings


def checked_device(requested: str, option: str = "--device") -> str:
    """`requested` as torch names the device, checked to exist on this machine: a ValueError naming `option` for a
    string torch does not read ('gpu'), a device type models cannot run on, a missing GPU or an index past the last
    one, so that a command reports it as a usage error before any model loads, not once one has (an AssertionError
    'Torch not compiled with CUDA enabled')."""
    import torch

    try:
        device = torch.device(requested)
    except RuntimeError as error:
        raise ValueError(f"{option} {requested!r}: {error}") from None
    if device.type == "cpu":
        return str(device)
    backend = getattr(torch, device.type, None)  # torch.cuda, torch.mps, torch.xpu, ...
    if not hasattr(backend, "device_count"):
        raise ValueError(f"{option} {requested!r}: models cannot run on a {device.type!r} device")
    count = backend.device_count()
    if count == 0:
        raise ValueError(f"{option} {requested!r}: no {device.type} device is available on this machine")
    if device.index is not None and device.index >= count:
        raise ValueError(f"{option} {requested!r}: this machine has {count} {device.type} device(s), "
                         f"{device.type}:0 to {device.type}:{count - 1}")
    return str(device)


@contextlib.contextmanager
def library_progress_bars_hidden() -> Iterator[None]:
    """`--no-progress` for the libraries' own bars: datasets' (reading, assembling) and transformers' ("Loading
    weights") are off inside, and each is turned back on afterwards if it was on, for a caller that goes on in this
    process."""
    import datasets
    from transformers.utils import logging as transformers_logging

    restore = []
    if not datasets.are_progress_bars_disabled():
        datasets.disable_progress_bars()
        restore.append(datasets.enable_progress_bars)
    if transformers_logging.is_progress_bar_enabled():
        transformers_logging.disable_progress_bar()
        restore.append(transformers_logging.enable_progress_bar)
    try:
        yield
    finally:
        for enable in restore:
            enable()


DISTRIBUTION = "maple-embed"  # the package's name in setup.cfg


def version() -> str:
    """The installed distribution's version, or a note that the package runs without being installed."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    try:
        return installed_version(DISTRIBUTION)
    except PackageNotFoundError:
        return f"unknown ({DISTRIBUTION} is not installed)"


def config_option_split(argv: list[str]) -> list[str]:
    """`argv` with `--config=FILE` as `--config FILE`: TrlParser reads only the second, argparse options take both."""
    return [part for argument in argv for part in (argument.split("=", 1) if argument.startswith("--config=") else [argument])]


def set_config_environment(argv: list[str]) -> None:
    """Set the environment variables of the `env:` mapping in `maple train`'s `--config FILE` (`argv`: its arguments)
    before trainer.cli is imported: datasets, TRL and huggingface_hub, which it imports, read some of them once, when
    imported (HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE, HF_ENDPOINT, HF_DATASETS_CACHE, ...), and TrlParser sets them only
    when it reads the file, too late for those. A file that cannot be read, or none given, is left to `maple train`'s
    check of it, which reports it."""
    argv = config_option_split(argv)
    if "--config" not in argv or (position := argv.index("--config") + 1) == len(argv):
        return
    import yaml

    try:
        with open(argv[position]) as handle:
            config = yaml.safe_load(handle)
    except (OSError, yaml.YAMLError):
        return
    environment = config.get("env") if isinstance(config, dict) else None
    if isinstance(environment, dict):  # as TrlParser sets them
        os.environ.update({str(name): str(value) for name, value in environment.items()})


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="maple",
        description="MAPLE: image-text embeddings aligned to MLLM preferences (arXiv 2506.06970).",
        epilog="commands:\n" + "\n".join(f"  {name:<19}{help_text}" for name, (_, help_text) in SUBCOMMANDS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    parser.add_argument("command", choices=sorted(SUBCOMMANDS), help="the stage to run")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="options of the sub-command (see `maple COMMAND --help`)")
    if argv[:1] == ["--"]:  # the end of (maple's own) options, before the command
        argv = argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    if argv[0] == "--version":
        parser.parse_args(argv[:1])  # prints the version and exits (status 0)
    if argv[0].startswith("-"):  # argparse said "the following arguments are required: command, args"
        parser.error(f"unknown option {argv[0]}; options come after the command (maple COMMAND --help lists them); "
                     f"commands: {', '.join(SUBCOMMANDS)}")
    parsed = parser.parse_args(argv[:1])
    module_name, _ = SUBCOMMANDS[parsed.command]
    if parsed.command == "train":
        set_config_environment(argv[1:])
    module = importlib.import_module(module_name)
    try:
        return int(module.main(argv[1:]) or 0)
    except KeyboardInterrupt:  # finished work is kept by every command: say how to go on, not where Python stopped
        if parsed.command == "train":  # training keeps only what its checkpoints hold
            kept, resume = "the checkpoints saved so far are kept, not the steps after the last", (
                "the same command with --resume_from_checkpoint true")
        else:
            kept, resume = "what was finished is kept", "the same command"
        print(f"\nmaple {parsed.command}: interrupted; {kept}: run {resume} to resume", file=sys.stderr)
        return 130


def run_module(command: str) -> NoReturn:
    """Exit as `maple COMMAND ARGS...` would, for `python -m <module>` of `command`'s module (what `accelerate launch
    -m` runs on every process): Ctrl-C then says what is kept and how to resume (exit status 130), not where Python
    stopped."""
    raise SystemExit(main([command, *sys.argv[1:]]))


if __name__ == "__main__":
    raise SystemExit(main())
