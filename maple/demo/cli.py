"""`maple demo`: the whole MAPLE pipeline offline, on a procedurally drawn world."""

from __future__ import annotations

import argparse
import contextlib
import re
from pathlib import Path

from maple.cli import (
    DefaultsHelpFormatter,
    add_token_option,
    exit_with_error,
    library_progress_bars_hidden,
    output_folder,
    report_error,
)

from . import BACKBONES, MINERS


MAX_SEED_COUNT = 1000  # three fine-tuning runs each: far beyond any budget of this demo


def _seeds(value: str) -> tuple[int, ...]:
    """`--seeds 3` means seeds 0, 1, 2; `--seeds 0,5,7` lists them (`--seeds 5,` is the list of seed 5)."""
    is_list = "," in value
    parts = [part.strip() for part in value.split(",")]
    if is_list and parts[-1] == "":
        parts.pop()  # a trailing comma: a list of one seed
    try:
        if not all(re.fullmatch(r"-?[0-9]+", part) for part in parts):  # int() also takes "1_0", as 10
            raise ValueError(value)
        numbers = [int(part) for part in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a count (e.g. 3) or a comma-separated list of integers (e.g. 0,1,2 or 5,), got {value!r}"
        ) from None
    if is_list:
        return tuple(numbers)
    if not 1 <= numbers[0] <= MAX_SEED_COUNT:  # refused before it is counted out (billions of seeds: a MemoryError)
        raise argparse.ArgumentTypeError(
            f"a count must lie in [1, {MAX_SEED_COUNT}] (each seed is three fine-tuning runs; a list takes "
            f"any seeds), got {numbers[0]}"
        )
    return tuple(range(numbers[0]))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maple demo",
        formatter_class=DefaultsHelpFormatter,
        description="Run MAPLE end to end, offline, on a procedurally drawn image-caption world: preference "
        "data from a scene-graph judge and captioner (stand-ins for MLLMs), a base model trained with InfoNCE, "
        "three fine-tuning runs per seed (InfoNCE, InfoNCE + expanded negatives, MAPLE), evaluation, plots and "
        "a model card. An interrupted run resumes when started again with the same options.",
    )
    # a value such as "-1," (a list of seed -1) is --seeds' to refuse, as newer Pythons read it: argparse took anything
    # starting with "-" but a plain negative number for an option, and said only "--seeds: expected one argument"
    parser._negative_number_matcher = re.compile(r"-\.?\d")
    parser.add_argument("--out", type=output_folder, default=Path("demo_out"), help="output folder")
    parser.add_argument(
        "--seeds", type=_seeds, default=(0, 1, 2), help="number of seeds (3: seeds 0,1,2) or a list such as 0,5,7 (one seed: 5,); the default: seeds 0,1,2"
    )
    parser.add_argument("--backbone", default="dual_encoder", help=f"one of {', '.join(BACKBONES)}")
    parser.add_argument("--quick", action="store_true", help="a small budget for a smoke run (under 2 minutes)")
    parser.add_argument(
        "--judge",
        default=None,
        metavar="MODEL_ID",
        help="score preferences with this real MLLM judge (Hub id or path, e.g. Qwen/Qwen2-VL-2B-Instruct) "
        "instead of the scene-graph stand-in",
    )
    parser.add_argument(
        "--judge-noise", type=float, default=0.3, help="std of the scene-graph judge's logit noise"
    )
    parser.add_argument(
        "--miner",
        default="scene-graph",
        help=f"hard negatives from {' or '.join(MINERS)} image features (scene-graph: a stand-in for DINOv2)",
    )
    parser.add_argument(
        "--rpa-weight",
        type=float,
        default=0.5,
        metavar="LAMBDA",
        help="lambda of the MAPLE runs: L = lambda * L_RPA + (1 - lambda) * L_InfoNCE",
    )
    parser.add_argument("--push-to-hub", default=None, metavar="REPO", help="push the MAPLE model (and REPO-preferences)")
    add_token_option(parser, "--push-to-hub and a --judge read from the Hub")
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="fine-tuning runs trained side by side, one process and one CPU thread each (1 runs them in this "
        "process); changes the wall clock, not the results",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # torch: after the usage checks
    from .pipeline import (
        DemoConfig,
        OutputFileError,
        OutputFolderInUseError,
        PushError,
        WorkerDiedError,
        claim_output_folder,
        run_demo,
    )
    from .report import format_summary

    try:
        config = DemoConfig(
            out=args.out,
            seeds=args.seeds,
            backbone=args.backbone,
            quick=args.quick,
            judge=args.judge,
            judge_noise=args.judge_noise,
            miner=args.miner,
            rpa_weight=args.rpa_weight,
            push_to_hub=args.push_to_hub,
            token=args.token,
            progress=not args.no_progress,
            workers=args.workers,
        )
        claim_output_folder(config)
    except ValueError as error:
        exit_with_error(build_parser(), str(error))
    try:
        with contextlib.nullcontext() if config.progress else library_progress_bars_hidden():
            result = run_demo(config)
    except OutputFileError as error:  # a damaged file in --out, found once the run has started
        exit_with_error(build_parser(), str(error))
    # the push failed, or a worker was killed (the finished work is kept), or another demo works in --out (nothing done)
    except (PushError, WorkerDiedError, OutputFolderInUseError) as error:
        return report_error(build_parser().prog, str(error), status=1)
    print(format_summary(result))
    return 0
