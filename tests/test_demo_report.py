"""Aggregation of the demo's runs into results.json and the printed summary."""

import pytest

from maple.demo.cli import _seeds
from maple.demo.report import metric_values, summarise


def _run(group: float, swap_group: float) -> dict:
    return {
        "group_score": group,
        "text_score": 50.0,
        "image_score": 40.0,
        "i2t_r1": 10.0,
        "t2i_r1": 12.0,
        "modality_gap": {"w_dist": 0.1, "w_disc": 0.2, "delta_gap": 0.5},
        "per_category": {"swap": {"group_score": swap_group, "text_score": 1.0, "image_score": 2.0}},
    }


def test_summary_is_mean_and_sample_std_over_seeds():
    summary = summarise({"maple": [_run(10.0, 0.0), _run(20.0, 6.0), _run(30.0, 3.0)]})
    assert summary["maple"]["group_score"] == pytest.approx({"mean": 20.0, "std": 10.0})
    assert summary["maple"]["swap/group_score"] == pytest.approx({"mean": 3.0, "std": 3.0})
    assert summary["maple"]["delta_gap"] == pytest.approx({"mean": 0.5, "std": 0.0})


def test_one_seed_has_zero_std():
    assert summarise({"infonce": [_run(10.0, 0.0)]})["infonce"]["group_score"] == {"mean": 10.0, "std": 0.0}


def test_the_printed_summary_shows_a_spread_only_over_several_seeds(tmp_path):
    """One seed printed "68.44 ± 0.00", a spread that one run does not have (results.md already left it out)."""
    from maple.demo.pipeline import DemoResult
    from maple.demo.report import format_summary

    one = format_summary(DemoResult(summarise({"maple": [_run(10.0, 0.0)]}), {"world": 1.0}, tmp_path, num_seeds=1))
    three = format_summary(
        DemoResult(summarise({"maple": [_run(10.0, 0.0), _run(20.0, 6.0), _run(30.0, 3.0)]}), {"world": 1.0}, tmp_path, 3)
    )
    assert "±" not in one and "10.00" in one.splitlines()[1]
    assert "20.00 ± 10.00" in three.splitlines()[1]


def test_metric_values_flatten_categories_and_gap():
    values = metric_values(_run(10.0, 0.0))
    assert values["swap/text_score"] == 1.0 and values["w_disc"] == 0.2 and values["i2t_r1"] == 10.0


@pytest.mark.parametrize("text, seeds", [("3", (0, 1, 2)), ("1", (0,)), ("0,5,7", (0, 5, 7))])
def test_seed_option_is_a_count_or_a_list(text, seeds):
    assert _seeds(text) == seeds


@pytest.mark.parametrize("judge", [None, "Qwen/Qwen2-VL-2B-Instruct"])
def test_results_say_what_stands_in_for_an_mllm(judge, tmp_path):
    from maple.demo.pipeline import DemoConfig
    from maple.demo.report import results_markdown

    config = DemoConfig(out=tmp_path, seeds=(0,), quick=True, judge=judge)
    run = _run(10.0, 0.0)
    run["per_category"] = {category: run["per_category"]["swap"] for category in ("replace", "swap", "add")}
    text = results_markdown(summarise({"maple": [run]}), config, {"world": 1.0})
    if judge is None:
        assert "The judge and captioner are **stand-ins for MLLMs**" in text
    else:  # only the captioner stands in then
        assert "The judge is the MLLM `Qwen/Qwen2-VL-2B-Instruct`; the captioner is a **stand-in" in text
        assert "judge and captioner are" not in text


@pytest.mark.parametrize("seeds, quick", [((0,), False), ((0, 1, 2), True), ((0, 1, 2), False)])
def test_targets_are_judged_only_on_a_full_run_of_three_seeds_and_one_seed_shows_no_spread(seeds, quick, tmp_path):
    """A quick or one-seed run printed "met: yes/no" against targets defined on 3 seeds of the full budget, and
    "± 0.0" for the undefined spread of one seed."""
    from maple.demo.pipeline import DemoConfig
    from maple.demo.report import results_markdown

    def run(group):
        result = _run(group, 0.0)
        result["per_category"] = {category: result["per_category"]["swap"] for category in ("replace", "swap", "add")}
        return result

    runs = {"infonce": [run(10.0)] * len(seeds), "infonce_expanded": [run(15.0)] * len(seeds), "maple": [run(25.0)] * len(seeds)}
    text = results_markdown(summarise(runs), DemoConfig(out=tmp_path, seeds=seeds, quick=quick), {"world": 1.0})
    full = len(seeds) == 3 and not quick
    assert ("| MAPLE group score ≥ InfoNCE-only + 10 | +15.0 | yes |" in text) == full
    assert ("| +15.0 | not judged (quick or < 3 seeds) |" in text) == (not full)
    assert ("| maple | 25.0 ± 0.0 |" in text) == (len(seeds) > 1)
    assert ("| maple | 25.0 |" in text) == (len(seeds) == 1)


def test_results_record_the_libraries_and_cpu_that_produced_them(tmp_path):
    """The same command and code gave other numbers on another machine (float kernels differ between CPUs), and
    results.md did not say what it had run on."""
    import torch
    import transformers

    from maple.demo.pipeline import DemoConfig
    from maple.demo.report import results_markdown

    run = _run(10.0, 0.0)
    run["per_category"] = {category: run["per_category"]["swap"] for category in ("replace", "swap", "add")}
    text = results_markdown(summarise({"maple": [run]}), DemoConfig(out=tmp_path, seeds=(0,), quick=True), {"world": 1.0})
    environment = next(line for line in text.splitlines() if line.startswith("Environment"))
    assert f"torch {torch.__version__}" in environment and f"transformers {transformers.__version__}" in environment
    assert f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}" in environment
