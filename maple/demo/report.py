"""The demo's report: the runs' metrics summarised over seeds (results.json), results.md, the PNG plots of training
curves and per-category bars (the similarity histograms are the model cards' `plot_similarity_histograms`, one panel
per method), and the table printed at the end of a demo."""

from __future__ import annotations

import math
import os
import platform
import statistics
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model_cards.cards import plot_similarity_histograms, pyplot, save_figure

from ..files import atomic_write_json
from .world import CATEGORIES

if TYPE_CHECKING:
    from .pipeline import DemoConfig, DemoResult

Summary = Mapping[str, Mapping[str, Mapping[str, float]]]  # method -> metric -> {"mean", "std"}
CURVE_KEYS = ("loss", "loss/contrastive", "loss/rpa", "rewards/accuracies")
# the metrics `format_summary` prints (results.json holds every metric of every method)
HEADLINE_METRICS = ("group_score", "text_score", "image_score", "i2t_r1", "t2i_r1", "delta_gap")


def metric_values(result: dict[str, Any]) -> dict[str, float]:
    """The flat metrics of one run: headline metrics, per-category scores, gap terms."""
    values = {key: float(result[key]) for key in ("group_score", "text_score", "image_score", "i2t_r1", "t2i_r1")}
    values |= {key: float(result["modality_gap"][key]) for key in ("delta_gap", "w_dist", "w_disc")}
    for category, scores in result.get("per_category", {}).items():
        for key in ("group_score", "text_score", "image_score"):
            values[f"{category}/{key}"] = float(scores[key])
    return values


def summarise(results: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, dict[str, float]]]:
    """method -> metric -> {"mean", "std"} over seeds; the sample standard deviation (n - 1), 0 for one seed."""
    summary = {}
    for method, runs in results.items():
        per_run = [metric_values(run) for run in runs]
        summary[method] = {
            metric: {
                "mean": statistics.fmean(run[metric] for run in per_run),
                "std": _sample_std([run[metric] for run in per_run]),
            }
            for metric in per_run[0]
        }
    return summary


def _sample_std(values: list[float]) -> float:
    """The sample standard deviation (n - 1), 0 for one value; NaN where a value is not finite (the Δgap of a collapsed
    model, W_disc = 0), of which `statistics.stdev` raises an AttributeError."""
    if len(values) < 2:
        return 0.0
    return statistics.stdev(values) if all(math.isfinite(value) for value in values) else math.nan


def write_report(out: Path, results: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, dict[str, float]]]:
    """results.json (every metric of every method as {"mean", "std"} over seeds) and the plots, in `out`; returns the
    summary. results.md follows once the checkpoint stage is timed too."""
    summary = summarise(results)
    atomic_write_json(out / "results.json", summary)
    plot_method_curves({method: runs[0]["log_history"] for method, runs in results.items()}, out / "training_curves.png")
    plot_category_bars(summary, out / "per_category.png")
    plot_similarity_histograms({method: runs[0] for method, runs in results.items()}, out / "similarities.png")
    return summary


def plot_method_curves(log_histories: Mapping[str, Sequence[Mapping[str, Any]]], path: Path) -> None:
    """One panel per logged loss term, one line per method (each method's first seed), a method in one colour on
    every panel: the one legend, on the first panel, names the lines of all (a panel may lack a method, as
    rewards/accuracies lacks InfoNCE-only, which has no candidates to rank)."""
    plt = pyplot()
    figure, axes = plt.subplots(1, len(CURVE_KEYS), figsize=(4 * len(CURVE_KEYS), 3.2))
    for axis, key in zip(axes, CURVE_KEYS):
        for index, (method, history) in enumerate(log_histories.items()):
            points = [(entry["step"], entry[key]) for entry in history if key in entry and "step" in entry]
            if points:
                steps, values = zip(*points)
                axis.plot(steps, values, marker=".", label=method, color=f"C{index}")
        axis.set_title(key)
        axis.set_xlabel("fine-tuning step")
    axes[0].legend()
    save_figure(figure, path)


def plot_category_bars(summary: Summary, path: Path) -> None:
    """Group score per quadruple category (replace/swap/add) and overall, mean ± std over seeds."""
    plt = pyplot()
    groups = [*CATEGORIES, "all"]
    methods = list(summary)
    width = 0.8 / len(methods)
    figure, axis = plt.subplots(figsize=(7, 3.5))
    for offset, method in enumerate(methods):
        keys = [f"{group}/group_score" if group != "all" else "group_score" for group in groups]
        means = [summary[method].get(key, {}).get("mean", 0.0) for key in keys]
        stds = [summary[method].get(key, {}).get("std", 0.0) for key in keys]
        positions = [index + (offset - (len(methods) - 1) / 2) * width for index in range(len(groups))]
        axis.bar(positions, means, width, yerr=stds, capsize=3, label=method)
    axis.set_xticks(range(len(groups)), groups)
    axis.set_ylabel("group score (0-100)")
    axis.set_title("Held-out quadruples: group score per category")
    axis.legend()
    save_figure(figure, path)


def software_environment() -> str:
    """The Python, libraries and CPU of this process, for results.md: training is deterministic on one machine, but
    float kernels differ between CPUs and library versions, and a rounding that differs early in training moves the
    scores about as much as another seed does (docs/demo.md)."""
    import torch

    def version(distribution: str) -> str:
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            return "not installed"

    libraries = ", ".join(f"{name} {version(name)}" for name in ("torch", "transformers", "trl", "datasets", "pillow"))
    return (
        f"Python {platform.python_version()}, {libraries}; CPU {_cpu_model()}, {os.cpu_count()} cores, torch CPU "
        f"capability {torch.backends.cpu.get_cpu_capability()}"
    )


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            names = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else platform.processor() or "unknown"


def _cell(values: Mapping[str, float], digits: int = 1, spread: bool = True) -> str:
    """mean ± std; the mean alone for one seed, whose spread is undefined."""
    return f"{values['mean']:.{digits}f} ± {values['std']:.{digits}f}" if spread else f"{values['mean']:.{digits}f}"


def results_markdown(summary: Summary, config: DemoConfig, seconds: Mapping[str, float]) -> str:
    """results.md: the tables, the targets checked, the time per stage and what stands in for what."""
    seeds = ", ".join(str(seed) for seed in config.seeds)
    spread = len(config.seeds) > 1
    lines = [
        "# MAPLE demo results",
        "",
        f"Backbone `{config.backbone}`, {'seeds' if spread else 'seed'} {seeds}, {'quick' if config.quick else 'full'} "
        f"budget; {'mean ± sample std (n − 1) over seeds' if spread else 'one run per method, so no spread'}. "
        "Scores on 0-100; delta_gap is a ratio (lower is better).",
        "",
        (
            f"The judge is the MLLM `{config.judge}`; the captioner is a **stand-in for an MLLM**: it reads the "
            "world's scene graphs (see docs/demo.md)."
            if config.judge
            else "The judge and captioner are **stand-ins for MLLMs**: they read the world's scene graphs "
            "(see docs/demo.md). `maple demo --judge MODEL_ID` uses a real MLLM judge instead."
        ),
        "",
        "| method | group | text | image | I→T R@1 | T→I R@1 | Δgap |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, values in summary.items():
        row = [_cell(values[key], spread=spread) for key in ("group_score", "text_score", "image_score", "i2t_r1", "t2i_r1")]
        lines.append(f"| {method} | " + " | ".join(row) + f" | {_cell(values['delta_gap'], 2, spread)} |")
    lines += ["", "Group score per category:", "", "| method | " + " | ".join(CATEGORIES) + " |", "|---|" + "---|" * len(CATEGORIES)]
    for method, values in summary.items():
        lines.append(f"| {method} | " + " | ".join(_cell(values[f"{c}/group_score"], spread=spread) for c in CATEGORIES) + " |")
    if {"infonce", "infonce_expanded", "maple"} <= summary.keys():
        maple, infonce, expanded = summary["maple"], summary["infonce"], summary["infonce_expanded"]
        checks = [
            ("MAPLE group score ≥ InfoNCE-only + 10", maple["group_score"]["mean"] - infonce["group_score"]["mean"], 10.0),
            ("MAPLE group score ≥ InfoNCE + expanded", maple["group_score"]["mean"] - expanded["group_score"]["mean"], 0.0),
            ("I→T R@1 ≥ InfoNCE-only − 2", maple["i2t_r1"]["mean"] - infonce["i2t_r1"]["mean"], -2.0),
            ("T→I R@1 ≥ InfoNCE-only − 2", maple["t2i_r1"]["mean"] - infonce["t2i_r1"]["mean"], -2.0),
        ]
        # The targets are means over 3 seeds of the full budget; a smaller run measures, it does not check.
        judged = not config.quick and len(config.seeds) >= 3
        lines += ["", "| target | measured difference | met |", "|---|---|---|"]
        lines += [
            f"| {name} | {difference:+.1f} | {('yes' if difference >= bound else 'no') if judged else 'not judged (quick or < 3 seeds)'} |"
            for name, difference, bound in checks
        ]
    lines += ["", "Time per stage (seconds):", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {stage} | {value:.0f} |" for stage, value in seconds.items()]
    lines += [
        "",
        "Plots: `training_curves.png`, `per_category.png`, `similarities.png`. MAPLE checkpoint: "
        "`maple-model/` (first seed). Preference dataset: `preferences/`. The evaluated test sets: `test_sets/`, in the "
        "schemas `maple eval` reads, so that any checkpoint is scored as these runs were: `maple eval maple-model "
        "--benchmarks coco bivlc --source coco=test_sets/retrieval.parquet --source bivlc=test_sets/quadruples.parquet "
        "--batch-size 256` (the names say only which schema the files are in).",
        "",
        f"Environment (when this report was written): {software_environment()}. Other CPUs or library versions give "
        "other numbers (see docs/demo.md).",
        "",
    ]
    return "\n".join(lines)


def format_summary(result: DemoResult, metrics: Sequence[str] = HEADLINE_METRICS) -> str:
    """The short table printed at the end of a demo: mean ± std over seeds, the mean alone for one seed (as in
    results.md: one run has no spread)."""
    spread = result.num_seeds > 1
    lines = [f"{'method':<18}" + "".join(f"{metric:>16}" for metric in metrics)]
    for method, values in result.summary.items():
        lines.append(f"{method:<18}" + "".join(f"{_cell(values[metric], 2, spread):>16}" for metric in metrics))
    total = sum(result.seconds.values())
    lines.append("time: " + ", ".join(f"{stage} {seconds:.0f}s" for stage, seconds in result.seconds.items()) + f" (total {total:.0f}s)")
    lines.append(f"outputs in {result.out}")
    return "\n".join(lines)
