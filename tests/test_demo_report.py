"""Aggregation of the demo's runs into results.json, results.md and the printed summary."""

import json

import pytest

from maple.demo import report
from maple.demo.cli import _seeds
from maple.demo.report import metric_values, summarise
from maple.demo.world import CATEGORIES


def _run(group: float, swap_group: float = 0.0, **headline: float) -> dict:
    """One run's evaluation: `group` and the other headline metrics (`headline` overrides them), swap's scores."""
    return {
        "group_score": group,
        "text_score": 50.0,
        "image_score": 40.0,
        "i2t_r1": 10.0,
        "t2i_r1": 12.0,
        **headline,
        "modality_gap": {"w_dist": 0.1, "w_disc": 0.2, "delta_gap": 0.5},
        "per_category": {"swap": {"group_score": swap_group, "text_score": 1.0, "image_score": 2.0}},
    }


def _run_in_every_category(group: float, **headline: float) -> dict:
    """A run scored in every category, with group scores group + 1, + 2, + 3 in CATEGORIES' order."""
    run = _run(group, **headline)
    run["per_category"] = {
        category: {"group_score": group + number, "text_score": 1.0, "image_score": 2.0}
        for number, category in enumerate(CATEGORIES, start=1)
    }
    return run


def _results_markdown(runs: dict, tmp_path, seconds=None, **config) -> str:
    """results.md of `runs` (method -> one run per seed) under a DemoConfig of `config` (one quick seed unless said)."""
    from maple.demo.pipeline import DemoConfig

    config = {"seeds": (0,), "quick": True} | config
    return report.results_markdown(summarise(runs), DemoConfig(out=tmp_path, **config), seconds or {"world": 1.0})


def test_summary_is_mean_and_sample_std_over_seeds():
    summary = summarise({"maple": [_run(10.0, 0.0), _run(20.0, 0.0), _run(30.0, 6.0)]})
    assert summary["maple"]["group_score"] == pytest.approx({"mean": 20.0, "std": 10.0})
    assert summary["maple"]["swap/group_score"] == pytest.approx({"mean": 2.0, "std": 12**0.5})  # not the median, 0
    assert summary["maple"]["delta_gap"] == pytest.approx({"mean": 0.5, "std": 0.0})


def test_a_collapsed_seed_s_infinite_gap_is_reported_not_raised(tmp_path):
    """The Δgap of a model whose mismatched pairs all score alike (W_disc = 0) is inf; with two or more seeds
    `statistics.stdev` raised an AttributeError and the report failed after all the training."""
    collapsed = _run(20.0)
    collapsed["modality_gap"] = {"w_dist": 0.1, "w_disc": 0.0, "delta_gap": float("inf")}
    summary = summarise({"maple": [_run(10.0), collapsed]})
    assert summary["maple"]["delta_gap"]["mean"] == float("inf") and summary["maple"]["delta_gap"]["std"] != summary["maple"]["delta_gap"]["std"]
    assert summary["maple"]["group_score"] == pytest.approx({"mean": 15.0, "std": 50**0.5})
    collapsed["per_category"] = _run_in_every_category(20.0)["per_category"]
    assert "| maple |" in _results_markdown({"maple": [_run_in_every_category(10.0), collapsed]}, tmp_path, seeds=(0, 1))


def test_one_seed_has_zero_std():
    assert summarise({"infonce": [_run(10.0, 0.0)]})["infonce"]["group_score"] == {"mean": 10.0, "std": 0.0}


def test_the_printed_summary_shows_a_spread_only_over_several_seeds(tmp_path):
    """One seed printed "68.44 ± 0.00", a spread that one run does not have (results.md already left it out)."""
    from maple.demo.pipeline import DemoResult

    seconds = {"world": 1.0, "train": 2.0}
    one = report.format_summary(DemoResult(summarise({"maple": [_run(10.0, 0.0)]}), seconds, tmp_path, num_seeds=1))
    three = report.format_summary(
        DemoResult(summarise({"maple": [_run(10.0, 0.0), _run(20.0, 6.0), _run(30.0, 3.0)]}), seconds, tmp_path, 3)
    )
    assert "±" not in one and "10.00" in one.splitlines()[1]
    assert "20.00 ± 10.00" in three.splitlines()[1]
    assert len({len(line) for line in three.splitlines()[:2]}) == 1  # the columns line up under their names
    assert one.splitlines()[-2:] == ["time: world 1s, train 2s (total 3s)", f"outputs in {tmp_path}"]


def test_metric_values_flatten_categories_and_gap():
    run = _run(10.0, 0.0)
    headline = {"group_score": 10.0, "text_score": 50.0, "image_score": 40.0, "i2t_r1": 10.0, "t2i_r1": 12.0}
    gap = {"delta_gap": 0.5, "w_dist": 0.1, "w_disc": 0.2}
    swap = {"swap/group_score": 0.0, "swap/text_score": 1.0, "swap/image_score": 2.0}
    assert metric_values(run) == headline | gap | swap
    del run["per_category"]  # a run scored on no category
    assert metric_values(run) == headline | gap


def test_the_report_writes_the_summary_and_plots_each_method_s_first_seed(tmp_path, monkeypatch):
    plotted = {}
    monkeypatch.setattr(report, "plot_method_curves", lambda histories, path: plotted.update(histories))
    runs = [_run_in_every_category(group) | {"log_history": [{"step": 1, "loss": group}]} for group in (10.0, 20.0)]
    summary = report.write_report(tmp_path, {"maple": runs})
    assert summary == summarise({"maple": runs})
    assert json.loads((tmp_path / "results.json").read_text()) == summary
    assert plotted == {"maple": [{"step": 1, "loss": 10.0}]}
    assert (tmp_path / "per_category.png").stat().st_size > 0


def test_the_category_bars_are_the_mean_group_scores(monkeypatch):
    figures = []
    monkeypatch.setattr(report, "save_figure", lambda figure, path: figures.append(figure))
    report.plot_category_bars(summarise({"maple": [_run_in_every_category(20.0), _run_in_every_category(30.0)]}), None)
    (axis,) = figures[0].axes
    assert [bar.get_height() for bar in axis.patches] == pytest.approx([26.0, 27.0, 28.0, 25.0])  # CATEGORIES, "all"
    report.pyplot().close(figures[0])


@pytest.mark.parametrize("text, seeds", [("3", (0, 1, 2)), ("1", (0,)), ("0,5,7", (0, 5, 7))])
def test_seed_option_is_a_count_or_a_list(text, seeds):
    assert _seeds(text) == seeds


@pytest.mark.parametrize("judge", [None, "Qwen/Qwen2-VL-2B-Instruct"])
def test_results_say_what_stands_in_for_an_mllm(judge, tmp_path):
    text = _results_markdown({"maple": [_run_in_every_category(10.0)]}, tmp_path, judge=judge)
    if judge is None:
        assert "The judge and captioner are **stand-ins for MLLMs**" in text
    else:  # only the captioner stands in then
        assert "The judge is the MLLM `Qwen/Qwen2-VL-2B-Instruct`; the captioner is a **stand-in" in text
        assert "judge and captioner are" not in text


@pytest.mark.parametrize("seeds, quick, header", [
    ((0,), True, "seed 0, quick budget; one run per method, so no spread."),
    ((0, 1, 2), False, "seeds 0, 1, 2, full budget; mean ± sample std (n − 1) over seeds."),
])
def test_results_name_the_seeds_and_the_budget(seeds, quick, header, tmp_path):
    text = _results_markdown({"maple": [_run_in_every_category(10.0)] * len(seeds)}, tmp_path, seeds=seeds, quick=quick)
    assert header in text.splitlines()[2]


@pytest.mark.parametrize("seeds, rows", [
    ((0,), ["| maple | 25.0 | 50.0 | 40.0 | 10.0 | 12.0 | 0.50 |", "| maple | 26.0 | 27.0 | 28.0 |"]),
    ((0, 1), ["| maple | 25.0 ± 0.0 | 50.0 ± 0.0 | 40.0 ± 0.0 | 10.0 ± 0.0 | 12.0 ± 0.0 | 0.50 ± 0.00 |",
              "| maple | 26.0 ± 0.0 | 27.0 ± 0.0 | 28.0 ± 0.0 |"]),
])
def test_results_tabulate_the_headline_metrics_each_category_and_the_time_per_stage(seeds, rows, tmp_path):
    text = _results_markdown({"maple": [_run_in_every_category(25.0)] * len(seeds)}, tmp_path, seeds=seeds,
                             seconds={"world": 61.4, "train": 120.6})
    assert "| method | " + " | ".join(CATEGORIES) + " |" in text
    assert all(row in text.splitlines() for row in rows + ["| world | 61 |", "| train | 121 |"])


@pytest.mark.parametrize("seeds, quick", [((0,), False), ((0, 1), False), ((0, 1, 2), True), ((0, 1, 2), False)])
def test_targets_are_judged_only_on_a_full_run_of_three_seeds_and_one_seed_shows_no_spread(seeds, quick, tmp_path):
    """A quick or one-seed run printed "met: yes/no" against targets defined on 3 seeds of the full budget, and
    "± 0.0" for the undefined spread of one seed."""
    runs = {method: [_run_in_every_category(group)] * len(seeds)
            for method, group in (("infonce", 10.0), ("infonce_expanded", 15.0), ("maple", 25.0))}
    text = _results_markdown(runs, tmp_path, seeds=seeds, quick=quick)
    full = len(seeds) == 3 and not quick
    assert ("| MAPLE group score ≥ InfoNCE-only + 10 | +15.0 | yes |" in text) == full
    assert ("| +15.0 | not judged (quick or < 3 seeds) |" in text) == (not full)
    assert ("| maple | 25.0 ± 0.0 |" in text) == (len(seeds) > 1)
    assert ("| maple | 25.0 |" in text) == (len(seeds) == 1)


def test_each_target_compares_its_own_runs_and_is_met_at_its_bound(tmp_path):
    runs = {
        "infonce": [_run_in_every_category(17.0, i2t_r1=12.0, t2i_r1=15.0)] * 3,
        "infonce_expanded": [_run_in_every_category(25.0)] * 3,
        "maple": [_run_in_every_category(25.0, i2t_r1=10.0, t2i_r1=12.0)] * 3,
    }
    lines = _results_markdown(runs, tmp_path, seeds=(0, 1, 2), quick=False).splitlines()
    assert [
        "| MAPLE group score ≥ InfoNCE-only + 10 | +8.0 | no |",
        "| MAPLE group score ≥ InfoNCE + expanded | +0.0 | yes |",
        "| I→T R@1 ≥ InfoNCE-only − 2 | -2.0 | yes |",
        "| T→I R@1 ≥ InfoNCE-only − 2 | -3.0 | no |",
    ] == lines[lines.index("| target | measured difference | met |") + 2:][:4]


def test_results_record_the_libraries_and_cpu_that_produced_them(tmp_path):
    """The same command and code gave other numbers on another machine (float kernels differ between CPUs), and
    results.md did not say what it had run on."""
    import torch
    import transformers

    text = _results_markdown({"maple": [_run_in_every_category(10.0)]}, tmp_path)
    environment = next(line for line in text.splitlines() if line.startswith("Environment"))
    assert f"torch {torch.__version__}" in environment and f"transformers {transformers.__version__}" in environment
    assert f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}" in environment


def test_a_method_has_one_colour_on_every_curve_panel(monkeypatch, tmp_path):
    """InfoNCE-only logs no rewards/accuracies (it ranks no candidates), so that panel's colour cycle began with the
    next method: infonce_expanded was drawn in the colour the legend gives infonce (found by a review helper)."""
    figures = []
    monkeypatch.setattr(report, "save_figure", lambda figure, path: figures.append(figure))
    history = [{"step": step, "loss": 1.0 / step, "loss/contrastive": 1.0, "loss/rpa": 0.5, "rewards/accuracies": 0.6}
               for step in (1, 2)]
    infonce_history = [{key: value for key, value in entry.items() if key in ("step", "loss", "loss/contrastive")}
                       for entry in history]
    report.plot_method_curves({"infonce": infonce_history, "infonce_expanded": history, "maple": history}, tmp_path / "c.png")
    colours = [{line.get_label(): line.get_color() for line in axis.get_lines()} for axis in figures[0].axes]
    legend = colours[0]
    assert set(legend) == {"infonce", "infonce_expanded", "maple"} and len(set(legend.values())) == 3
    assert all(colour == legend[method] for panel in colours for method, colour in panel.items())
    assert set(colours[report.CURVE_KEYS.index("rewards/accuracies")]) == {"infonce_expanded", "maple"}
