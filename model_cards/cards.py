"""Model and dataset cards filled from real run data (Jinja templates in `templates/`).

`model_card_from_run` is called by `RPATrainer` when it saves or pushes a checkpoint,
`with_eval_results` by `maple eval --push-to-hub` to add its results to a card, and
`dataset_card_from_stats` by the preference-dataset builder. Figures are
written as PNG files next to the card and linked by relative path, so they travel with the repo.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import DatasetCard, DatasetCardData, EvalResult, ModelCard, ModelCardData

from dataset_builders.interfaces import renamed_members
from evaluation.metric_names import OVERALL_SUBSET, QUADRUPLE_SCORES, RETRIEVAL_METRICS
from maple import PAPER_CITATION
from maple.files import expanded_path
from maple.hub import local_path_name, validate_card
from modeling_maple.configuration_maple import mllm_family

TEMPLATES = Path(__file__).parent / "templates"
CURVES_FILE = "training_curves.png"
GAP_HISTOGRAM_FILE = "similarity_histograms.png"
HISTOGRAM_FILE = "score_histograms.png"

# Hyper-parameters worth a line in the card, in this order, when the training config has them.
CARD_HYPERPARAMETERS = (
    "rpa_loss", "rpa_weight", "beta", "learn_beta", "temperature", "learn_temperature", "max_scale",
    "expand_negatives", "gather_negatives", "exclude_judged_positives", "num_image_candidates", "num_text_candidates",
    "reference", "learning_rate", "lr_scheduler_type", "warmup_steps",
    "num_train_epochs", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
    "weight_decay", "bf16", "seed",
)
# Trainer log entries that are end-of-run summaries, not curves.
_SUMMARY_LOG_KEYS = {"step", "epoch", "total_flos", "train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss"}
# Every metric the card's `model-index` holds (`_eval_results`), by its name there
_METRIC_NAMES = {
    "i2t_r1": "Image→text R@1", "i2t_r5": "Image→text R@5", "i2t_r10": "Image→text R@10",
    "t2i_r1": "Text→image R@1", "t2i_r5": "Text→image R@5", "t2i_r10": "Text→image R@10",
    "text_score": "Text score", "image_score": "Image score", "group_score": "Group score",
    "delta_gap": "Modality gap Δgap",
}
PAPER_TAGS = ["maple", "image-text-retrieval", "preference-alignment", "arxiv:2506.06970"]
# A card's model name (its title, and `model-index`'s) where neither a repo id nor a folder name gives one
DEFAULT_MODEL_NAME = "MAPLE embedder"


def _benchmark_dataset_id(name: str) -> str:
    """The Hub id of a known benchmark (see `evaluation.benchmarks`), else the name itself."""
    from evaluation.benchmarks import BENCHMARKS

    spec = BENCHMARKS.get(name)
    return spec.hub_id if spec else name


def _written_by_maple(result: EvalResult, eval_results: Mapping[str, Mapping[str, Any]], replaced_tables: set[str]) -> bool:
    """Whether `model-index` entry `result` is one `_eval_results` writes: a MAPLE metric of a known benchmark, of one
    in `eval_results`, or of one the card's MAPLE evaluation section being replaced names in its tables
    (`replaced_tables`, `_table_benchmarks`: the demo's "maple-demo-retrieval", whose entries would outlive the tables
    that showed them)."""
    from evaluation.benchmarks import BENCHMARKS

    maple_metric = result.metric_type in _METRIC_NAMES
    named = result.dataset_name in BENCHMARKS or result.dataset_name in eval_results
    return maple_metric and (named or table_cell(result.dataset_name).strip() in replaced_tables)


# A markdown table's delimiter row ("|---|---|", "| :-- | --: |", "---|---": GFM's outer pipes are optional, but one
# pipe there must be, or "---" is a rule) and the first cell of a row, whose `\|` (`table_cell`) ends no cell; both
# matched on lines stripped of the spaces around them
_DELIMITER_ROW = re.compile(r"^(?=.*\|)\|?\s*:?-+:?\s*(?:\|\s*:?-+:?\s*)*\|?$")
_FIRST_CELL = re.compile(r"^\|?\s*((?:[^|\\]|\\.)*?)\s*\|")


def _table_benchmarks(section: str) -> set[str]:
    """The benchmarks an evaluation section's tables name (`render_evaluation_section`): the first cell of each data
    row, as `table_cell` writes it; not a header row's ("benchmark"), nor another cell (a category, a value)."""
    names, in_table = set(), False
    for line in map(str.strip, section.splitlines()):
        if _DELIMITER_ROW.match(line):  # the rows below it, up to the first line that is none, are data rows
            in_table = True
        elif in_table and (cell := _FIRST_CELL.match(line)):
            names.add(cell.group(1))
        else:
            in_table = False
    return names


def _eval_results(
    eval_results: Mapping[str, Mapping[str, Any]], dataset_ids: Mapping[str, str] | None = None
) -> list[EvalResult]:
    """`model-index` entries: every headline metric of every benchmark (and per-category subset). A benchmark's
    dataset is `dataset_ids[benchmark]` (the Hub id it was read from), by default its official Hub id. A category's
    score is the metric restricted to it, so the category is the metric's `config` ("group_score" of config
    "replace-att"), not the dataset's: `dataset.config` names a config that `load_dataset` takes."""
    results = []
    for benchmark, metrics in eval_results.items():
        dataset_id = (dataset_ids or {}).get(benchmark) or _benchmark_dataset_id(benchmark)
        for subset, values in result_subsets(metrics):
            for key in RETRIEVAL_METRICS + QUADRUPLE_SCORES:
                # the YAML metric values must be finite numbers: a NaN score (a diverged model) stays in the tables
                if (value := _score(values, key)) is not None and math.isfinite(value):
                    results.append(
                        EvalResult(
                            task_type="image-text-retrieval" if key in RETRIEVAL_METRICS else "image-text-matching",
                            dataset_type=dataset_id,
                            dataset_name=benchmark,
                            dataset_split="test",
                            metric_type=key,
                            metric_name=_METRIC_NAMES[key] + (f" ({subset})" if subset else ""),
                            metric_config=subset,
                            metric_value=round(value, 2),
                        )
                    )
        # likewise an infinite gap (no discrimination at all)
        if (gap := _score(_results_of(metrics, "modality_gap"), "delta_gap")) is not None and math.isfinite(gap):
            results.append(
                EvalResult(
                    task_type="image-text-matching",
                    dataset_type=dataset_id,
                    dataset_name=benchmark,
                    dataset_split="test",
                    metric_type="delta_gap",
                    metric_name=_METRIC_NAMES["delta_gap"],
                    metric_value=round(gap, 4),
                )
            )
    return results


def _license_slug(license: str) -> str:
    """A licence named as given, as an id: lower case, its words joined by "-", punctuation dropped ("CC BY 4.0" and
    "CC_BY-4.0": "cc-by-4.0"; "Research Only": "research-only")."""
    return re.sub(r"[^a-z0-9.+]+", "-", license.lower()).strip("-.")


# Words of a licence's name that its Hub id leaves out ("Apache License, Version 2.0" is apache-2.0), and words it
# abbreviates ("Creative Commons Attribution-NonCommercial 4.0 International" is cc-by-nc-4.0), longest first, as
# SPDX's full names and the licences' own texts write them
_LICENSE_FILLER_WORDS = frozenset({"the", "license", "licence", "version", "international", "unported", "generic", "universal"})
_LICENSE_NAME_WORDS = (
    ("open-data-commons-open-database", "odbl"), ("open-data-commons-public-domain-dedication", "pddl"),
    ("open-data-commons-attribution", "odc-by"), ("community-data-agreement", "cdla"), ("academic-free", "afl"),
    ("open-software", "osl"), ("educational-community", "ecl"), ("microsoft-public", "ms-pl"), ("sil-open-font", "ofl"),
    ("latex-project-public", "lppl"), ("gnu-free-documentation", "gfdl"), ("etalab-open", "etalab"),
    ("apple-sample-code", "apple-ascl"), ("university-of-illinois-ncsa-open-source", "ncsa"),
    ("do-what-f-ck-you-want-to-public", "wtfpl"), ("3-clause-new-or-revised", "3-clause"),
    ("2-clause-simplified", "2-clause"), ("creative-commons-zero", "cc0"), ("creative-commons", "cc"),
    ("attribution", "by"), ("noncommercial", "nc"), ("non-commercial", "nc"), ("sharealike", "sa"), ("share-alike", "sa"), ("noderivatives", "nd"), ("noderivs", "nd"),
    ("no-derivatives", "nd"), ("gnu-affero-general-public", "agpl"), ("gnu-lesser-general-public", "lgpl"),
    ("gnu-general-public", "gpl"), ("mozilla-public", "mpl"), ("eclipse-public", "epl"), ("boost-software", "bsl"),
    ("european-union-public", "eupl"),
)


def _hub_license_id(license: str) -> str | None:
    """The Hub's id of licence `license` (`HUB_LICENSES`), or None where it has none: an id in any case and spacing
    ("CC BY 4.0"), or a name as SPDX and the licences' own texts write it ("Apache License, Version 2.0", "MIT
    License", "Creative Commons Attribution-ShareAlike 4.0 International", "GNU General Public License v3.0 only",
    "GPL-3.0-only"), also a version of a licence the Hub names without one ("ODbL-1.0" is odbl, "GFDL-1.3-only"
    gfdl). A name that does not say which of the Hub's licences it is has none ("Apache License", with no version;
    "GPL-3.0-or-later", which the Hub's gpl-3.0 does not say)."""
    slug = _license_slug(license)
    words = [re.sub(r"^v(?=\d)", "", word) for word in slug.split("-") if word not in _LICENSE_FILLER_WORDS]
    name = f"-{'-'.join(words)}-"
    for long, short in _LICENSE_NAME_WORDS:
        name = name.replace(f"-{long}-", f"-{short}-")
    name = name.strip("-")
    versioned = name.removesuffix("-only")
    unversioned = re.sub(r"-\d+(?:\.\d+)+[a-z]?$", "", versioned)
    return next((id for id in (slug, name, versioned, unversioned) if id in HUB_LICENSES), None)


def _license_metadata(license: str | None) -> dict[str, str | None]:
    """Card metadata of a licence named as given: `license` is the Hub's id of it (`_hub_license_id`), "unknown" for
    none, or "other" with an id of the name as `license_name` ("research-only"): the Hub refuses a `license` that is
    not one of its ids."""
    if license is None or not _license_slug(license):
        return {"license": "unknown", "license_name": None}
    hub_id = _hub_license_id(license)
    return {"license": hub_id, "license_name": None} if hub_id else {"license": "other", "license_name": _license_slug(license)}


def base_model_license(base_model: str | None, token: str | None = None) -> dict[str, str | None] | None:
    """The licence metadata a fine-tune of `base_model` inherits (`_license_metadata` of its `license`), from the card
    (README.md) of a local folder, or from the Hub repo's tags unless offline (read with `token`; None: HF_TOKEN or the
    saved login), as `transformers`' `TrainingSummary` reads it; None when unknown. A base under `license: other`
    passes on its card's `license_name` and `license_link` (what the licence is: "other" alone says nothing), a link
    to a file of a Hub base's repo ("LICENSE") as that file's address on the Hub, since the fine-tune's repo has no
    such file; a local base's link to one of its files is dropped."""
    from huggingface_hub import constants, model_info
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import httpx

    if not base_model:
        return None
    card = Path(base_model) / "README.md"
    if card.is_file():
        try:
            details = ModelCard.load(card).data
        except (yaml.YAMLError, ValueError):  # a base card's broken metadata must not fail the run's own card
            return None
        license, files_at = details.license, None
    elif hub_reference(base_model) is None or constants.HF_HUB_OFFLINE:
        return None
    else:
        try:
            info = model_info(base_model, token=token)
        except (OSError, HFValidationError, httpx.HTTPError):  # not on the Hub, or the Hub out of reach: no licence
            return None
        license = next((tag.removeprefix("license:") for tag in info.tags or [] if tag.startswith("license:")), None)
        details, files_at = info.card_data, f"{constants.ENDPOINT}/{base_model}/blob/main/"
    if not isinstance(license, str):
        return None
    metadata = _license_metadata(license)
    if metadata["license"] == "other" and details is not None:
        name, link = details.get("license_name"), details.get("license_link")
        if isinstance(name, str) and (name_id := _license_slug(name)):
            metadata["license_name"] = name_id  # an id, as the Hub asks for one
        if isinstance(link, str) and link.strip():
            link = link.strip()
            link = link if "://" in link else files_at and files_at + link.removeprefix("./")
            metadata |= {"license_link": link} if link else {}
    return metadata


def _score(values: Mapping[str, Any], key: str) -> float | None:
    """`values[key]` as a float; None where the results lack it, or hold no number there (a JSON null, a text). A
    caller's numpy scalar (np.float32) is a number (`numbers.Real`), a bool none."""
    value = values.get(key)
    return float(value) if isinstance(value, numbers.Real) and not isinstance(value, bool) else None


def _has_score(values: Mapping[str, Any], keys: Sequence[str]) -> bool:
    """Whether `values` holds a score (`_score`, NaN included) of any of `keys`."""
    return any(_score(values, key) is not None for key in keys)


def _results_of(metrics: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """`metrics[key]`, a mapping of results ("modality_gap", "per_category", one category's scores,
    "similarity_histograms"); {} where the results lack it or hold null there."""
    return metrics.get(key) or {}


def result_subsets(metrics: Mapping[str, Any]) -> list[tuple[str | None, Mapping[str, Any]]]:
    """A benchmark's results as (subset, scores): all of it (None), then each category of `per_category` by name; the
    order of its rows in the card's tables and in `maple eval`'s results.md."""
    categories = _results_of(metrics, "per_category")
    return [(None, metrics)] + [(category, _results_of(categories, category)) for category in sorted(categories)]


def subset_cell(subset: str | None) -> str:
    """The "subset" cell of a row of `result_subsets`: `OVERALL_SUBSET` for all of a benchmark, else its category (the
    data's own words, escaped: `table_cell`)."""
    return table_cell(OVERALL_SUBSET if subset is None else subset)


def _table_value(values: Mapping[str, Any], key: str, digits: int, scale: float = 1.0) -> str:
    """A table cell of `values[key]` (times `scale`), "–" where the results lack it (`_score`)."""
    value = _score(values, key)
    return "–" if value is None else f"{scale * value:.{digits}f}"


def _table_rows(eval_results: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Rows of the three evaluation tables of the model card, values formatted. A benchmark has a row in each table
    it has a score of (`_has_score`), in the retrieval and quadruples' ones a row for all of it and one for each
    category (`result_subsets`) that has a score; a score a row lacks is a "–". So the tables show every score
    `model-index` holds (`_eval_results`), and no row of dashes where it holds none. `retrieval_by_category`: whether
    a retrieval row is a category's, so that the retrieval table needs the quadruples' "subset" column (the protocol
    scores retrieval as a whole: the table keeps its columns where no category has a recall)."""
    retrieval, quadruples, gaps, retrieval_by_category = [], [], [], False
    for name, metrics in eval_results.items():
        for subset, values in result_subsets(metrics):
            row = {"name": table_cell(name), "subset": subset_cell(subset)}
            if _has_score(values, RETRIEVAL_METRICS):
                retrieval.append({**row, **{key: _table_value(values, key, 1) for key in RETRIEVAL_METRICS}})
                retrieval_by_category |= subset is not None
            if _has_score(values, QUADRUPLE_SCORES):
                quadruples.append({**row, **{key: _table_value(values, key, 1) for key in QUADRUPLE_SCORES}})
        gap = _results_of(metrics, "modality_gap")
        if _has_score(gap, ("w_dist", "w_disc", "delta_gap")):
            gaps.append({"name": table_cell(name), "w_dist": _table_value(gap, "w_dist", 2, 100),
                         "w_disc": _table_value(gap, "w_disc", 2, 100), "delta_gap": _table_value(gap, "delta_gap", 2)})
    return {"retrieval_rows": retrieval, "retrieval_by_category": retrieval_by_category, "quadruple_rows": quadruples,
            "gap_rows": gaps}


# MAPLE's evaluation section lies between these (a card may hold an "## Evaluation" of its own, as the Hub's default
# template does)
EVALUATION_START, EVALUATION_END = "<!-- start of evaluation -->", "<!-- end of evaluation -->"


def render_evaluation_section(
    eval_results: Mapping[str, Mapping[str, Any]], repo_id: str | None = None, histogram_file: str | None = None
) -> str:
    """The "## Evaluation" section of the model card: tables of `eval_results`, and the similarity
    histograms if `histogram_file` (beside the card) holds them."""
    import jinja2

    template = jinja2.Template((TEMPLATES / "evaluation_section.md").read_text(), keep_trailing_newline=True)
    return template.render(repo_id=repo_id, histogram_file=histogram_file, **_table_rows(eval_results))


def with_eval_results(
    card: ModelCard,
    eval_results: Mapping[str, Mapping[str, Any]],
    model_name: str | None = None,
    histogram_file: str | None = None,
    dataset_ids: Mapping[str, str] | None = None,
) -> ModelCard:
    """`card` with its evaluation section and its MAPLE `model-index` entries replaced by `eval_results` (used by
    `maple eval --push-to-hub`; the card's other entries stay); a card without a MAPLE evaluation section gets one
    appended.
    `model-index` needs a model name: the card's own, else `model_name` (e.g. the repo id).
    `histogram_file`: the similarity histograms of `eval_results` beside the card, if drawn
    (`plot_similarity_histograms`); the new section links them. `dataset_ids`: the Hub id each benchmark was read
    from where it is not the official one."""
    text = card.text
    start = text.rfind(EVALUATION_START)
    if start >= 0:
        end = text.find(EVALUATION_END, start)
    else:  # a section written before the start marker: the heading nearest before the end marker, with no other
        # second-level heading between them (MAPLE's section has none; another is the user's)
        end = text.find(EVALUATION_END)
        start = text.rfind("## Evaluation\n", 0, end) if end >= 0 else -1
        if start >= 0 and "\n## " in text[start:end]:
            start = -1
    replaced_section = text[start:end] if 0 <= start < end else ""
    data = ModelCard(str(card)).data  # a copy: the caller's card stays as it is
    # The card's other results (a zero-shot classification score, say) stay; MAPLE's own are rewritten whole.
    replaced_tables = _table_benchmarks(replaced_section)
    others = [result for result in data.eval_results or [] if not _written_by_maple(result, eval_results, replaced_tables)]
    data.eval_results = others + _eval_results(eval_results, dataset_ids) or None
    data.model_name = data.model_name or model_name or DEFAULT_MODEL_NAME
    section = render_evaluation_section(eval_results, histogram_file=histogram_file)
    if replaced_section:
        # one blank line between the section and what follows, as `model_card_from_run` writes it: a card rewritten
        # with the same results is the same card, and the user's text after the section keeps its paragraph break
        following = text[end + len(EVALUATION_END) :].lstrip("\n")
        text = text[:start] + section + ("\n" + following if following else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{text}")


def pyplot():
    """`matplotlib.pyplot` on the Agg backend: figures go to files, with no display (servers, CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: Path) -> None:
    """Lay out `figure`, write it to `path` as a 100-dpi PNG (making its folder) and close it."""
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    pyplot().close(figure)


def no_figure(path: Path) -> bool:
    """False, for a card with no figure at `path`: a figure an earlier run drew there is removed, since it would be
    pushed beside a card that does not describe it."""
    Path(path).unlink(missing_ok=True)
    return False


def plot_training_curves(log_history: Sequence[Mapping[str, Any]], path: Path) -> bool:
    """One panel per logged scalar (loss, learning rate, ...) against the step; False if nothing to plot (`no_figure`)."""
    curves: dict[str, tuple[list[float], list[float]]] = {}
    for entry in log_history:
        if "step" not in entry:
            continue
        for key, value in entry.items():
            if key not in _SUMMARY_LOG_KEYS and isinstance(value, (int, float)) and math.isfinite(value):
                steps, values = curves.setdefault(key, ([], []))
                steps.append(entry["step"])
                values.append(value)
    curves = {key: curve for key, curve in curves.items() if len(curve[0]) >= 2}
    if not curves:
        return no_figure(path)
    plt = pyplot()

    columns = min(3, len(curves))
    rows = math.ceil(len(curves) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3 * rows), squeeze=False)
    for axis, (key, (steps, values)) in zip(axes.flat, sorted(curves.items())):
        axis.plot(steps, values, marker="." if len(steps) < 50 else None)
        axis.set_title(key)
        axis.set_xlabel("step")
    for axis in list(axes.flat)[len(curves) :]:
        axis.axis("off")
    save_figure(figure, path)
    return True


def plot_similarity_histograms(eval_results: Mapping[str, Mapping[str, Any]], path: Path) -> bool:
    """One panel per entry of `eval_results` with histograms (a quadruple benchmark; in the demo, a
    method): matched, mismatched and text-text cosine histograms (the modality gap), zoomed to the
    occupied bins; False if no entry has them (`no_figure`; null, as `_results_of` reads it, is none)."""
    benchmarks = {name: histograms for name, metrics in eval_results.items()
                  if (histograms := _results_of(metrics, "similarity_histograms"))}
    if not benchmarks:
        return no_figure(path)
    plt = pyplot()

    labels = ("matched", "mismatched", "text_text")
    # one x range for every panel, zoomed to the bins any of them fills: cosines of a trained model fill a part of [-1, 1]
    occupied = []  # (left, right) of every bin that a panel fills
    for histograms in benchmarks.values():
        edges = histograms["bin_edges"]
        occupied += [(edges[i], edges[i + 1]) for i in range(len(edges) - 1) if any(histograms[label][i] for label in labels)]
    figure, axes = plt.subplots(1, len(benchmarks), figsize=(4.5 * len(benchmarks), 3), squeeze=False)
    for axis, (name, histograms) in zip(axes.flat, sorted(benchmarks.items())):
        for label in labels:
            axis.stairs(histograms[label], histograms["bin_edges"], label=label.replace("_", "-"))
        if occupied:
            low, high = min(edge for edge, _ in occupied), max(edge for _, edge in occupied)
            margin = 0.05 * (high - low)
            axis.set_xlim(max(-1.0, low - margin), min(1.0, high + margin))
        axis.set_title(name)
        axis.set_xlabel("cosine similarity")
        axis.legend()
    save_figure(figure, path)
    return True


def _as_dict(config: Any) -> dict[str, Any]:
    """A config (training or model) as a dict: None -> {}, a mapping, or an object with `to_dict()`."""
    if config is None:
        return {}
    if isinstance(config, Mapping):
        return dict(config)
    if hasattr(config, "to_dict"):
        return config.to_dict()
    raise TypeError(f"expected a config mapping or an object with to_dict(), got {type(config).__name__}")


def table_cell(value: Any) -> str:
    """`value` as the text of a markdown table cell: a `|` (as in a LoRA target regex, even inside backticks) would end
    the cell and a line break the row, so the first is escaped (GitHub and the Hub show `\\|` as `|`) and the second
    becomes a space."""
    return " ".join(str(value).splitlines()).replace("|", "\\|")


def _finetuning_description(lora: Mapping[str, Any] | None) -> str:
    if not lora:
        return "full fine-tuning"
    targets = lora.get("target_modules")
    targets = ", ".join(sorted(targets)) if isinstance(targets, (list, set, tuple)) else targets
    return table_cell(f"LoRA (rank {lora.get('r')}, alpha {lora.get('lora_alpha')}) on `{targets}`")


def _objective_description(rpa_weight: float | None) -> str:
    """What the run trained with: RPA mixed with InfoNCE by `rpa_weight` (lambda), or either alone."""
    if rpa_weight == 0:
        return "InfoNCE alone (`rpa_weight` 0: no preference alignment)"
    if rpa_weight == 1:
        return "Relative Preference Alignment (RPA) alone (`rpa_weight` 1: no InfoNCE)"
    return "Relative Preference Alignment (RPA) mixed with InfoNCE"


def _backbone_description(backbone: str, model_config: Mapping[str, Any]) -> str:
    """E.g. "a multimodal LLM (qwen2_vl) used as a dual encoder (bidirectional attention, mean pooling)"."""
    pooling = model_config.get("pooling")
    if backbone == "mllm":
        mllm_type = mllm_family(model_config["mllm_config"]) if model_config.get("mllm_config") else None
        details = [f"{'bidirectional' if model_config['bidirectional'] else 'causal'} attention"] if "bidirectional" in model_config else []
        details += [f"{pooling} pooling"] if pooling else []
        name = f"a multimodal LLM ({mllm_type})" if mllm_type else "a multimodal LLM"
        return f"{name} used as a dual encoder" + (f" ({', '.join(details)})" if details else "")
    return "a two-tower image/text encoder" + (f" ({pooling} pooling)" if pooling else "")


# The licence ids the Hub accepts in card metadata, as its metadata check lists them when it refuses another (quoted in
# huggingface_hub issue #4218, May 2026; huggingface.js's `License` type and
# https://huggingface.co/docs/hub/repositories-licenses lag behind: they lack eupl-1.2, llama4 and others).
HUB_LICENSES = frozenset({
    "apache-2.0", "mit", "openrail", "bigscience-openrail-m", "creativeml-openrail-m", "bigscience-bloom-rail-1.0",
    "bigcode-openrail-m", "afl-3.0", "artistic-2.0", "bsl-1.0", "bsd", "bsd-2-clause", "bsd-3-clause",
    "bsd-3-clause-clear", "c-uda", "cc", "cc0-1.0", "cc-by-2.0", "cc-by-2.5", "cc-by-3.0", "cc-by-4.0", "cc-by-sa-3.0",
    "cc-by-sa-4.0", "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nd-4.0", "cc-by-nc-nd-3.0",
    "cc-by-nc-nd-4.0", "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0", "cdla-sharing-1.0",
    "cdla-permissive-1.0", "cdla-permissive-2.0", "wtfpl", "ecl-2.0", "epl-1.0", "epl-2.0", "etalab-2.0", "eupl-1.1",
    "eupl-1.2", "agpl-3.0", "gfdl", "gpl", "gpl-2.0", "gpl-3.0", "lgpl", "lgpl-2.1", "lgpl-3.0", "isc", "h-research",
    "intel-research", "lppl-1.3c", "ms-pl", "apple-ascl", "apple-amlr", "mpl-2.0", "odc-by", "odbl", "openmdw-1.0",
    "openrail++", "osl-3.0", "postgresql", "ofl-1.1", "ncsa", "unlicense", "zlib", "pddl", "lgpl-lr",
    "deepfloyd-if-license", "fair-noncommercial-research-license", "llama2", "llama3", "llama3.1", "llama3.2",
    "llama3.3", "llama4", "grok2-community", "gemma", "unknown", "other",
})


def hub_reference(reference: str | None) -> str | None:
    """`reference` if it names a Hub repo ('name' or 'namespace/name') and no local path, else None."""
    from maple.hub import is_hub_id

    return reference if reference and not os.path.exists(reference) and is_hub_id(reference) else None


def _shown_reference(reference: str | None, output_dir: Path, repo_id: str | None) -> str | None:
    """How a model card names its base model, preference data or judge: a Hub id, or a text that names no local path,
    as it is; a local path by its name only on the card of a repo (`local_path_name`), else, if it exists, relative
    to the card's folder, from which a reader of the card finds it."""
    if reference is None or hub_reference(reference) is not None or (name := local_path_name(reference)) is None:
        return reference
    if repo_id:
        return name
    path = expanded_path(reference)
    return os.path.relpath(path.resolve(), output_dir.resolve()) if path.exists() else reference


def model_card_from_run(
    output_dir: str | Path,
    base_model: str | None,
    backbone: str,
    training_config: Mapping[str, Any] | Any,
    log_history: Sequence[Mapping[str, Any]],
    eval_results: Mapping[str, Mapping[str, Any]],
    dataset_id: str | None = None,
    judge_id: str | None = None,
    lora: Mapping[str, Any] | None = None,
    repo_id: str | None = None,
    model_config: Mapping[str, Any] | Any | None = None,
    license: str | None = None,
    token: str | None = None,
) -> ModelCard:
    """The model card of a training run; writes `training_curves.png` (and, with quadruple
    benchmarks, `similarity_histograms.png`) into `output_dir`.

    Args:
        output_dir: the checkpoint folder; the card (README.md, saved by the caller) and its figures go there.
        base_model: Hub id of the backbone the run started from (None: not recorded).
        backbone: "mllm" or "dual_encoder".
        training_config: the run's `RPAConfig` (or its `to_dict()`).
        log_history: `Trainer.state.log_history`.
        eval_results: `maple eval` results, {benchmark: metrics} (retrieval: i2t_r1 ... t2i_r10;
            quadruples: text/image/group_score, optional per_category and modality_gap).
        dataset_id, judge_id: Hub ids of the preference dataset and of its MLLM judge.
        lora: the `peft` LoRA config as a dict, None for full fine-tuning.
        repo_id: where the card will live (names the model and fills the usage snippet).
        model_config: the model's `MapleConfig` (or its `to_dict()`), whose pooling and attention the
            card describes; None: the card names the backbone kind only.
        license: the model's licence, a Hub licence id or a name; None: the base model's (`base_model_license`, a
            Hub base read with `token`), and none in the metadata where that is unknown.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    # a folder by the name it is given (a link's own), "." and ".." by the folder they are; "/" has none
    folder_name = output_dir.name if output_dir.name not in ("", "..") else output_dir.resolve().name
    model_name = repo_id or folder_name or DEFAULT_MODEL_NAME
    config, model_config = _as_dict(training_config), _as_dict(model_config)
    # Only Hub ids go into the metadata (the Hub refuses a card whose base_model or datasets name a local path)
    # and get links; a local folder is named as text.
    base_model_id, dataset_hub_id = hub_reference(base_model), hub_reference(dataset_id)
    license_metadata = _license_metadata(license) if license else base_model_license(base_model, token=token)
    base_model, dataset_id = (_shown_reference(reference, output_dir, repo_id) for reference in (base_model, dataset_id))
    if judge_id is not None:  # an ensemble's members one by one
        judge_id = renamed_members(judge_id, lambda member: _shown_reference(member, output_dir, repo_id))
    card_data = ModelCardData(
        **(license_metadata or {}),
        model_name=model_name,
        base_model=base_model_id,
        datasets=[dataset_hub_id] if dataset_hub_id else None,
        library_name="transformers",
        pipeline_tag="feature-extraction",
        tags=PAPER_TAGS + [backbone] + (["lora", "peft"] if lora else []),
        eval_results=_eval_results(eval_results) or None,
    )
    has_curves = plot_training_curves(log_history, output_dir / CURVES_FILE)
    has_histograms = plot_similarity_histograms(eval_results, output_dir / GAP_HISTOGRAM_FILE)
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATES / "model_card.md"),
        model_name=model_name,
        repo_id=repo_id,
        base_model=base_model and table_cell(base_model),
        base_model_is_hub_id=base_model_id is not None,
        backbone=backbone,
        backbone_description=_backbone_description(backbone, model_config),
        objective=_objective_description(config.get("rpa_weight")),
        normalized=model_config.get("normalize", True),
        finetuning=_finetuning_description(lora),
        dataset_id=dataset_id and table_cell(dataset_id),
        dataset_is_hub_id=dataset_hub_id is not None,
        judge_id=judge_id,
        judge_cell=judge_id and table_cell(judge_id),
        hyperparameters=[(name, table_cell(value)) for name, value in _card_hyperparameters(config)],
        curves_file=CURVES_FILE if has_curves else None,
        evaluation_section=render_evaluation_section(eval_results, repo_id, GAP_HISTOGRAM_FILE if has_histograms else None),
        citation=PAPER_CITATION,
    )


def _card_hyperparameters(config: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """(name, value) of the `CARD_HYPERPARAMETERS` the run set, as the run used them: `num_train_epochs` is left
    out when `max_steps` overrides it, and a warm-up below 1 step is `Trainer`'s ratio of the steps."""
    rows = []
    for key in CARD_HYPERPARAMETERS:
        value = config.get(key)
        if value is None or (key == "num_train_epochs" and (config.get("max_steps") or 0) > 0):
            continue
        if key == "warmup_steps" and 0 < value < 1:
            value = f"{value} (ratio of the training steps)"
        rows.append((key, value))
    return rows


def plot_score_histograms(histograms: Mapping[str, Mapping[str, Sequence[float]]], path: Path) -> bool:
    """Bar charts of pre-binned judge scores ({column: {bin_edges, counts}}); False if none (`no_figure`)."""
    if not histograms:
        return no_figure(path)
    plt = pyplot()

    figure, axes = plt.subplots(1, len(histograms), figsize=(4 * len(histograms), 3), squeeze=False)
    for axis, (column, histogram) in zip(axes.flat, sorted(histograms.items())):
        edges, counts = histogram["bin_edges"], histogram["counts"]
        axis.bar(edges[:-1], counts, width=[b - a for a, b in zip(edges[:-1], edges[1:])], align="edge", edgecolor="black")
        axis.set_title(column)
        axis.set_xlabel("judge score alpha")
    save_figure(figure, path)
    return True


def dataset_card_from_stats(
    stats: Mapping[str, Any],
    repo_id: str | None = None,
    output_dir: str | Path | None = None,
    *,
    histogram_file: str = HISTOGRAM_FILE,
    other_configs: Sequence[Mapping[str, Any]] = (),
) -> DatasetCard:
    """The card of a preference dataset from the builder's stats.json.

    Reads: source, source_license, judge, judge_prompt, captioner, num_hard_negatives,
    text_candidates, semdedup, num_source_rows, num_anchors, num_candidate_images,
    num_candidate_texts, num_skipped, skipped_by_reason, score_histograms and, optionally,
    config_name, pretty_name and known_biases (a list of extra sentences). Missing entries show as
    "not recorded". With `output_dir`, the score histograms are drawn to `output_dir / histogram_file`
    and linked by that relative path.

    `other_configs`: the stats of the repo's other configs (each with the `histogram_file` it was
    published with, if any), so that the card of a repo holding several configs describes each of
    them, in sections sorted by config name; a config of the same name is replaced by `stats`.
    """
    histogram_written = output_dir is not None and plot_score_histograms(
        stats.get("score_histograms") or {}, Path(output_dir) / histogram_file
    )
    own = {**stats, "histogram_file": histogram_file if histogram_written else None}
    others = [config for config in other_configs if config.get("config_name") != stats.get("config_name")]
    configs = sorted([own, *others], key=lambda config: str(config.get("config_name") or ""))
    # configs of several licences: all of them (a dataset card's `license` may be a list), with the name of the one
    # that is "other", where only one is
    licenses = [_license_metadata(config.get("source_license")) for config in configs]
    ids = sorted({license["license"] for license in licenses})
    names = sorted({license["license_name"] for license in licenses if license["license_name"]})
    card_data = DatasetCardData(
        license=ids[0] if len(ids) == 1 else ids,
        license_name=names[0] if len(names) == 1 else None,
        pretty_name=stats.get("pretty_name") or (repo_id or "MAPLE preference dataset"),
        task_categories=["feature-extraction"],
        tags=PAPER_TAGS + ["preference", "mllm-judge"],
        size_categories=_size_category(max((config.get("num_anchors") or 0 for config in configs), default=0) or None),
    )
    return DatasetCard.from_template(
        card_data,
        template_path=str(TEMPLATES / "dataset_card.md"),
        pretty_name=card_data.pretty_name,
        repo_id=repo_id,
        configs=[_config_section(config) for config in configs],
        judges=sorted({str(config["judge"]) for config in configs if config.get("judge")}),
        # one bullet each: a line break inside one would end its bullet
        known_biases=list(dict.fromkeys(
            " ".join(str(bias).split()) for config in configs for bias in config.get("known_biases") or []
        )),
        citation=PAPER_CITATION,
    )


def _config_section(stats: Mapping[str, Any]) -> dict[str, Any]:
    """What the dataset card shows of one config."""
    def recorded(key: str) -> Any:
        value = stats.get(key)
        return "not recorded" if value is None else value

    semdedup = stats.get("semdedup")
    return {
        "name": stats.get("config_name"),
        "judge_prompt": stats.get("judge_prompt"),
        "judge_prompt_fence": _code_fence(stats.get("judge_prompt") or ""),
        "semdedup": "not applied" if not semdedup else f"{semdedup['clusters']} clusters, epsilon {semdedup['epsilon']}",
        "skipped_by_reason": [(table_cell(reason), count) for reason, count in sorted((stats.get("skipped_by_reason") or {}).items())],
        "histogram_file": stats.get("histogram_file"),
        **{  # table cells
            key: table_cell(recorded(key))
            for key in (
                "source", "source_license", "num_hard_negatives", "text_candidates", "captioner", "judge",
                "num_source_rows", "num_anchors", "num_candidate_images", "num_candidate_texts", "num_skipped",
            )
        },
    }


def _code_fence(text: str) -> str:
    """A markdown code fence that `text` cannot close: longer than its longest run of backticks, and at least 3."""
    return "`" * max(3, 1 + max((len(run) for run in re.findall("`+", text)), default=0))


def _size_category(num_rows: int | None) -> list[str] | None:
    """The Hub's size_categories tag for a row count."""
    if num_rows is None:
        return None
    labels = ["n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M", "10M<n<100M", "100M<n<1B", "1B<n<10B", "10B<n<100B", "100B<n<1T"]
    for exponent, label in enumerate(labels, start=3):
        if num_rows < 10**exponent:
            return [label]
    return ["n>1T"]


def push_dataset_card(
    card: DatasetCard, repo_id: str, files: Mapping[str, Path], *, token: str | None = None, commit_message: str
) -> None:
    """Push `card` and the `files` it links (path in the repo -> local file) to dataset repo `repo_id` in one commit,
    after the data: the card takes the `configs` / `dataset_info` metadata that `datasets`' `push_to_hub` wrote into
    the repo's card (every config's, not only those `card` knows), so it must follow the data, never precede it."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import RemoteEntryNotFoundError

    try:
        published = DatasetCard.load(repo_id, repo_type="dataset", token=token).data.to_dict()
    except RemoteEntryNotFoundError:  # no card yet (not: the Hub cannot be reached)
        published = {}
    for key in ("configs", "dataset_info"):
        if key in published:
            card.data[key] = published[key]
    validate_card(card)
    operations = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=local) for path, local in files.items()]
    operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(card).encode()))
    HfApi(token=token).create_commit(repo_id, operations, repo_type="dataset", commit_message=commit_message)
