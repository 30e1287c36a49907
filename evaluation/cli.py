"""`maple eval`: run the paper's benchmarks on one or more embedders.

    maple eval MODEL [--benchmarks coco winoground ...] [--compare MODEL2 ...]
               [--source winoground=/data/winoground.parquet ...] [--out DIR] [--push-to-hub] [--token TOKEN]
               [--image-processor-kwargs JSON] [--no-progress]

MODEL is a local checkpoint folder or a Hub repo id. Each (model, benchmark) result is written to
`DIR/<model>/<benchmark>.json` as soon as it is done, and skipped on a rerun while the model (its files,
or its Hub commit) and the benchmark source are unchanged, so an interrupted run resumes where it stopped.
At the end, `DIR/results.json` and `DIR/results.md` hold all models side by side. `--push-to-hub` writes
the results into MODEL's model card (`model-index`) on the Hub. Hub repos (models, benchmarks, the push) are
read and written with `--token`, else HF_TOKEN or the token `hf auth login` saved. `--image-processor-kwargs`
overrides the image processor's settings of every model, e.g. '{"max_pixels": 153664}' scores a Qwen-VL backbone
with the pixels of a 384 x 384 image, as MAPLE trains (Qwen2-VL sizes one 392 x 392: 196 tokens).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from maple.cli import (
    DefaultsHelpFormatter,
    add_token_option,
    checked_device,
    exit_with_error,
    image_settings,
    library_progress_bars_hidden,
    output_folder,
    positive,
    report_error,
)
from maple.files import atomic_write_json, atomic_write_text, expanded_path, folder_problem

from .benchmarks import BENCHMARKS, QuadrupleBenchmark, RetrievalBenchmark, benchmark_image_files, load_benchmark
from .metric_names import QUADRUPLE_SCORES, RETRIEVAL_METRICS

if TYPE_CHECKING:
    from modeling_maple import MapleProcessor


# The longest result folder name, a file name's limit: a deep local path made a longer one (a shorter bound would move
# the results stored under names that were taken)
_MAX_FOLDER_NAME = 255


def _model_folder_name(model_ref: str) -> str:
    """A file-system-safe name for a model reference: `org--name` for a Hub id (which cannot hold `--`), `local--`
    and the absolute path with `--` for `/` for a local folder, so that `.`, `..`, or a folder `/x/y` beside a Hub
    id `x/y`, name folders of their own inside OUT. Two paths may share one (`/x/a b`, `/x/a--b` and `/x/a/b`): their
    results' fingerprints tell them apart, and `_distinct_models` refuses them side by side. A name longer than
    `_MAX_FOLDER_NAME` bytes keeps its end (the checkpoint's own folder names) after a hash of the whole."""
    path = expanded_path(model_ref)
    if path.exists():
        name = "local--" + re.sub(r"[^\w.-]+", "--", str(path.resolve()).strip("/"))
    else:
        name = re.sub(r"[^\w.-]+", "--", model_ref.strip("/")).strip(".") or "model"
    if len(name.encode()) <= _MAX_FOLDER_NAME:
        return name
    prefix = f"local--{hashlib.sha256(name.encode()).hexdigest()[:16]}--"
    tail = name.encode()[len(prefix) - _MAX_FOLDER_NAME :].decode(errors="ignore")
    return prefix + tail.lstrip("-")


def _distinct_models(model_refs: list[str]) -> list[str]:
    """`model_refs` less those naming a model listed before them, each dropped one announced: `m`, `m/` and `../x/m`
    are one folder (`_model_identity`; a Hub id is taken as written), and evaluated twice they would write one result
    folder twice. A `ValueError` for two models whose results would share one folder (`_model_folder_name`)."""
    distinct: dict[str, str] = {}
    for model_ref in model_refs:
        identity = _model_identity(model_ref)
        if identity in distinct:
            print(f"{model_ref}: the same model as {distinct[identity]}, evaluated once")
        else:
            distinct[identity] = model_ref
    by_folder: dict[str, str] = {}
    for model_ref in distinct.values():
        if (other := by_folder.setdefault(folder := _model_folder_name(model_ref), model_ref)) != model_ref:
            raise ValueError(f"{other} and {model_ref} are two models whose results would share one folder, "
                             f"{folder}: evaluate them with two --out folders")
    return list(distinct.values())


def _parse_sources(parser: argparse.ArgumentParser, pairs: list[str]) -> dict[str, str]:
    sources = {}
    for pair in pairs:
        name, separator, source = pair.partition("=")
        if not separator or name not in BENCHMARKS:
            exit_with_error(parser, f"--source expects BENCHMARK=PATH_OR_HUB_ID with BENCHMARK in {sorted(BENCHMARKS)}, got {pair!r}")
        if not source.strip():  # it read the official Hub dataset, as if the option were not there
            exit_with_error(parser, f"--source {pair!r}: no path or Hub id after '='; leave {name} out of --source to read "
                                 f"its official dataset, {BENCHMARKS[name].hub_id}")
        if name in sources and sources[name] != source:  # the last one was read, silently
            exit_with_error(parser, f"--source gives {name} twice ({sources[name]} and {source}): give one")
        sources[name] = source
    return sources


def _parse_image_processor_kwargs(parser: argparse.ArgumentParser, text: str | None) -> dict[str, Any] | None:
    """The settings of `--image-processor-kwargs JSON`, None where it is not given or an empty mapping (no
    override); one-line usage errors for text that is not a JSON object."""
    if text is None:
        return None
    try:
        settings = image_settings(text, "--image-processor-kwargs")
    except ValueError as error:
        exit_with_error(parser, str(error))
    return settings or None


# The summaries written to OUT
RESULTS_JSON, RESULTS_MD = "results.json", "results.md"
# Files of a checkpoint folder that loading never reads, so no part of the model's state: its card, pictures (the
# demo's training curves) and the summaries of a `maple eval --out` there (`maple eval . --out .`)
NOT_LOADED_SUFFIXES = (".md", ".png", ".jpg", ".jpeg", ".gif", ".svg")


def _written_by_maple_eval(results_file: Path) -> bool:
    """Whether `results_file` (OUT/results.json) is one `maple eval` wrote: a non-empty JSON object mapping each model
    to a non-empty object keyed by benchmark names (`BENCHMARKS`), as `main` writes it. Recognised by this shape, with
    no marker key, so results.json files written by earlier versions are recognised too, and results.json stays a
    plain model -> benchmark -> metrics mapping; the demo's (method -> metric -> mean and std) is not of this shape."""
    try:
        results = json.loads(results_file.read_text())
    except (OSError, UnicodeDecodeError, ValueError):  # a folder, unreadable, not JSON
        return False
    return isinstance(results, dict) and bool(results) and all(
        isinstance(per_model, dict) and bool(per_model) and set(per_model) <= set(BENCHMARKS) for per_model in results.values()
    )


def _check_out(parser: argparse.ArgumentParser, out: Path) -> None:
    """Usage errors for an `--out` the results cannot go to, before anything loads: a file, a path under a file, or a
    folder whose results.json (or results.md, without a results.json) another command wrote, which the results
    would overwrite (`maple eval --out .` in the demo's output folder)."""
    if problem := folder_problem(out, "--out"):
        exit_with_error(parser, problem)
    if not out.exists():
        return
    results_json, results_md = out / RESULTS_JSON, out / RESULTS_MD
    if results_json.exists() and not _written_by_maple_eval(results_json):
        exit_with_error(parser, f"--out {out} holds a results.json that maple eval did not write (another command's results, "
                             "which these would overwrite); choose another folder")
    if results_md.exists() and not results_json.exists():
        exit_with_error(parser, f"--out {out} holds a results.md but no results.json of maple eval (another command's "
                             "results, which these would overwrite); choose another folder")


def _files_state(path: Path, *, recursive: bool, skip: Path | None = None) -> dict[str, list[int]]:
    """Size and modification time of the files of `path` (a file, or a folder's files, with its subfolders' when
    `recursive`, except those inside `skip` where it is a folder strictly inside `path`), by relative path."""
    if path.is_file():
        files = [path]
    else:
        files = sorted(file for file in (path.rglob("*") if recursive else path.iterdir()) if file.is_file())
        skip = expanded_path(skip).resolve() if skip is not None else None
        if skip is not None and skip != path.resolve() and skip.is_relative_to(path.resolve()):
            files = [file for file in files if not file.resolve().is_relative_to(skip)]
    return _file_states({file.name if file == path else str(file.relative_to(path)): file for file in files})


def _file_states(files: Mapping[str, Path]) -> dict[str, list[int]]:
    """Size and modification time of each of `files`, by its name there."""
    return {name: [(stat := file.stat()).st_size, stat.st_mtime_ns] for name, file in files.items()}


def _model_state(model_ref: str, revision: str | None = None, token: str | None = None) -> dict[str, Any]:
    """What identifies the model evaluated: for a local folder its files (weights, config, processor and tokenizer
    files; not subfolders, which loading does not read, such as a results folder or training checkpoints, nor the
    card, pictures and the summaries of an `--out` there: `NOT_LOADED_SUFFIXES`) by size and modification time; for a
    Hub repo its commit at `revision` (None: unknown now), read with `token`. An adapter's base model is included."""
    from maple.hub import is_hub_id

    from .models import ADAPTER_CONFIG_FILE, ModelLoadError, hub_checkpoint_config_file

    folder = expanded_path(model_ref)
    if folder.is_dir():
        files = {
            name: file for name, file in _files_state(folder, recursive=False).items()
            if name != RESULTS_JSON and not name.lower().endswith(NOT_LOADED_SUFFIXES)
        }
        state: dict[str, Any] = {"files": files}
        config_file = folder / ADAPTER_CONFIG_FILE
    else:
        try:
            config_file = hub_checkpoint_config_file(model_ref, revision, token) if is_hub_id(model_ref) else None
        except ModelLoadError:
            config_file = None
        state = {"commit": config_file.parent.name if config_file is not None else None}
    if config_file is not None and config_file.name == ADAPTER_CONFIG_FILE and config_file.is_file():
        adapter_config = json.loads(config_file.read_text())
        base_ref = adapter_config.get("base_model_name_or_path")
        # PEFT records the base's revision when it was given one
        state["base"] = {"model": base_ref, **_model_state(base_ref, adapter_config.get("revision"), token)} if base_ref else None
    return state


# Part of every stored result's fingerprint: raised whenever a benchmark is read or scored differently, so that
# results stored before are recomputed, not mixed with new ones (what each raise changed: `git log -G "PROTOCOL_VERSION = "`).
PROTOCOL_VERSION = 8

# Fingerprint entries added after results were first stored, with the value a result stored without them was
# computed with: such a result is reused by a run with that value (it is not one of another protocol)
FINGERPRINT_DEFAULTS = {"image_processor_kwargs": None, "image_files": None}


def _run_fingerprint(
    model_ref: str,
    model_state: dict[str, Any],
    benchmark: str,
    source: str | None,
    dtype: str,
    image_processor_kwargs: dict[str, Any] | None = None,
    out: Path | None = None,
    loaded: QuadrupleBenchmark | RetrievalBenchmark | None = None,
) -> dict[str, Any]:
    """What a stored result was computed from: the model and its state (`_model_state`), the weights dtype, the
    image processor settings overridden (`--image-processor-kwargs`; None: the checkpoint's own), the benchmark
    source (the default one by its Hub id), with its files' sizes and modification times when it is local (by its
    absolute path: a copy named relative to another folder is the same copy; a Hub dataset by its id only; not the
    files of the results folder `out` where it lies inside the source's folder: a source inside `out`, or `out`
    itself, keeps all its files), those of the image files outside it that the source names by path (`loaded`, the
    benchmark read from a local source: a table names them from the working folder), and the version of the
    evaluation protocol. Not the batch size nor the device, which change a score by floating-point rounding at most."""
    source = source or BENCHMARKS[benchmark].hub_id
    source_path = expanded_path(source)
    source_files = image_files = None
    if source_path.exists():
        source, source_files = str(source_path.resolve()), _files_state(source_path, recursive=True, skip=out)
        if loaded is not None:  # by absolute path; those inside a source folder are among its own files
            folder = source_path.resolve() if source_path.is_dir() else None
            outside = {str(file): file for file in map(Path.resolve, benchmark_image_files(loaded))
                       if folder is None or not file.is_relative_to(folder)}
            image_files = _file_states(outside) or None
    return {"model": _model_identity(model_ref), "model_state": model_state, "dtype": dtype,
            "image_processor_kwargs": image_processor_kwargs or None, "source": source, "source_files": source_files,
            "image_files": image_files, "protocol": PROTOCOL_VERSION}


def _model_identity(model_ref: str) -> str:
    """A model reference as a fingerprint holds it: a local folder by its absolute path (`./m`, `m/` and `/abs/m` are
    one folder, whose results share one result folder, `_model_folder_name`), a Hub id as written."""
    path = expanded_path(model_ref)
    return str(path.resolve()) if path.exists() else model_ref


def _comparable(fingerprint: dict[str, Any]) -> dict[str, Any]:
    """`fingerprint` with the entries it predates (`FINGERPRINT_DEFAULTS`) at the value it was computed with, and its
    model as `_model_identity` gives it (a result stored before held the reference as typed)."""
    comparable = {**FINGERPRINT_DEFAULTS, **fingerprint}
    if isinstance(comparable.get("model"), str):
        comparable["model"] = _model_identity(comparable["model"])
    return comparable


def _with_unknown_commits_from(current: Any, stored: Any) -> Any:
    """`current` with each commit it cannot know (None: offline and not cached) taken from `stored`."""
    if not isinstance(current, dict) or not isinstance(stored, dict):
        return current
    known = {key: _with_unknown_commits_from(value, stored.get(key)) for key, value in current.items()}
    if known.get("commit", "") is None and "commit" in stored:
        known["commit"] = stored["commit"]
    return known


def _same_run(stored: dict[str, Any], current: dict[str, Any]) -> bool:
    """Whether a stored result's fingerprint is the current run's. A Hub model (or an adapter's base) whose commit
    cannot be resolved now matches any commit: offline and not cached, its stored results are all there is."""
    stored = _comparable(stored)
    return stored == _with_unknown_commits_from(_comparable(current), stored)


def _changed_files(stored: Any, current: Any) -> str:
    """The names of the files that differ between two `_files_state`s, at most three named."""
    stored, current = stored if isinstance(stored, dict) else {}, current if isinstance(current, dict) else {}
    changed = sorted(name for name in stored.keys() | current.keys() if stored.get(name) != current.get(name))
    return ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")


def _run_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between a stored result's fingerprint and the current run's (`_same_run`), in words."""
    stored = _comparable(stored)
    current = _with_unknown_commits_from(_comparable(current), stored)
    # in `_run_fingerprint`'s order, then any key it no longer writes
    words = {"model": "model reference", "model_state": "model state", "dtype": "dtype",
             "image_processor_kwargs": "image processor override", "source": "source", "source_files": "source",
             "image_files": "source", "protocol": "protocol version"}
    differences = []
    for key in [*words, *sorted((current.keys() | stored.keys()) - words.keys())]:
        then, now = stored.get(key), current.get(key)
        if then == now or (key in ("source_files", "image_files") and stored.get("source") != current.get("source")):
            continue  # (another source has other files: said once)
        if key == "model_state" and isinstance(then, dict) and isinstance(now, dict):
            details = []
            if then.get("files") != now.get("files"):
                details.append(f"changed files: {_changed_files(then.get('files'), now.get('files'))}")
            if then.get("commit") != now.get("commit"):
                details.append(f"Hub commit {then.get('commit')} then, {now.get('commit')} now")
            if then.get("base") != now.get("base"):
                details.append("the adapter's base model changed")
            differences.append("model state" + (f" ({'; '.join(details)})" if details else ""))
        elif key in ("source_files", "image_files"):  # (one of them None: files named, not every file's state)
            differences.append(f"source (changed files: {_changed_files(then, now)})")
        else:
            differences.append(f"{words.get(key, key)} ({then!r} then, {now!r} now)")
    return differences


def _stored_record(path: Path, kind: str) -> dict[str, Any] | None:
    """The record `evaluate_model` wrote to `path` ({"run": fingerprint, "metrics": result}) for a benchmark of `kind`,
    or None where the file does not read as one (emptied, edited by hand, not JSON, one of the scores the protocol
    writes and the tables, cards and results.json read missing or not a number), so that it is recomputed, not a
    traceback on every run."""
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not (isinstance(record, dict) and isinstance(record.get("run"), dict) and isinstance(record.get("metrics"), dict)):
        return None
    metrics = record["metrics"]
    if kind == "retrieval":
        required = [(metrics, (*RETRIEVAL_METRICS, "i2t_mrr", "t2i_mrr"))]
    else:
        per_category = metrics.get("per_category", {})
        categories = list(per_category.values()) if isinstance(per_category, dict) else [None]
        required = [(metrics, QUADRUPLE_SCORES), (metrics.get("modality_gap"), ("w_dist", "w_disc", "delta_gap")),
                    *((values, QUADRUPLE_SCORES) for values in categories)]
    numbers = all(
        isinstance(values, dict) and all(isinstance(values.get(key), (int, float)) and not isinstance(values.get(key), bool)
                                         for key in keys)
        for values, keys in required
    )
    return record if numbers else None


def stored_results(
    model_ref: str,
    benchmarks: list[str],
    sources: dict[str, str],
    out: Path,
    dtype: str = "float32",
    token: str | None = None,
    image_processor_kwargs: dict[str, Any] | None = None,
    loaded: Mapping[str, QuadrupleBenchmark | RetrievalBenchmark] | None = None,
) -> dict[str, Any]:
    """The results of `model_ref` stored in `out/<model>/<benchmark>.json` that were computed from the same
    model files, dtype, image processor settings and benchmark source, by benchmark; the other benchmarks are still
    to do (a file that does not read as a result is said to be recomputed). A Hub model's commit is read with
    `token`. `loaded`: the benchmarks read from local sources, whose image files outside the source count too."""
    folder = out / _model_folder_name(model_ref)
    done = {name: folder / f"{name}.json" for name in benchmarks if (folder / f"{name}.json").exists()}
    model_state = _model_state(model_ref, token=token) if done else None
    results: dict[str, Any] = {}
    for name, path in done.items():
        stored = _stored_record(path, BENCHMARKS[name].kind)
        if stored is None:
            print(f"{model_ref}: {name}: stored result {path} does not read as one, recomputing")
            continue
        current = _run_fingerprint(model_ref, model_state, name, sources.get(name), dtype, image_processor_kwargs, out,
                                   (loaded or {}).get(name))
        if _same_run(stored["run"], current):
            results[name] = stored["metrics"]
        else:
            differences = _run_differences(stored["run"], current)
            print(f"{model_ref}: {name}: stored result is from another {'; another '.join(differences)}, recomputing")
    return results


def evaluate_model(
    model_ref: str,
    benchmarks: list[str],
    sources: dict[str, str],
    out: Path,
    batch_size: int,
    stored: dict[str, Any],
    device: str = "cpu",
    dtype: str = "float32",
    trust_remote_code: bool = False,
    token: str | None = None,
    image_processor_kwargs: dict[str, Any] | None = None,
    loaded: Mapping[str, QuadrupleBenchmark | RetrievalBenchmark] | None = None,
    processor: MapleProcessor | None = None,
    model_state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Results of one model on the benchmarks: the `stored` ones (`stored_results`) as they are, the others
    computed on `device` with weights in `dtype`, its image processor's settings overridden by
    `image_processor_kwargs`, and written to `out/<model>/<benchmark>.json`; `loaded`: benchmarks read already, by name
    (the others are read here, before the model loads); `processor`: the model's, loaded already with those settings
    (`evaluation.models.load_processor`; None: loaded here), with `model_state`, the state of the model's files taken
    before it loaded (`_model_state`; None: taken here, before the model loads). The folder is created only once the
    model has loaded, so a model that fails to load leaves nothing behind. NaN or inf embeddings (a diverged model) are a
    `NonFiniteEmbeddingsError` naming the model and the benchmark. Hub models and benchmarks are read with `token`
    (None: HF_TOKEN or the saved login)."""
    folder = out / _model_folder_name(model_ref)
    results = dict(stored)
    for name in results:
        print(f"{model_ref}: {name} already done ({folder / f'{name}.json'}), skipped")
    todo = [name for name in benchmarks if name not in results]
    if todo:
        from .models import load_embedder
        from .protocols import evaluate_benchmark
        from .retrieval import NonFiniteEmbeddingsError

        # Benchmarks load before the model (tables and file lists: images are decoded as they are embedded),
        # so a source that is unreachable or in the wrong schema is reported before a large model is loaded.
        loaded = dict(loaded or {})
        loaded |= _load_benchmarks([name for name in todo if name not in loaded], sources, token)
        if model_state is None:  # before loading: a change while it runs must not pass unnoticed
            model_state = _model_state(model_ref, token=token)
        model, processor = load_embedder(model_ref, trust_remote_code=trust_remote_code, dtype=dtype, token=token,
                                         image_processor_kwargs=image_processor_kwargs, processor=processor)
        model.to(device)
        folder.mkdir(parents=True, exist_ok=True)
        for name in todo:
            print(f"{model_ref}: evaluating {name} ...", flush=True)
            try:
                results[name] = evaluate_benchmark(model, processor, loaded[name], batch_size)
            except NonFiniteEmbeddingsError as error:  # a diverged model: which one, on what
                raise NonFiniteEmbeddingsError(f"{model_ref}: {name}: {error}") from error
            run = _run_fingerprint(model_ref, model_state, name, sources.get(name), dtype, image_processor_kwargs, out,
                                   loaded[name])
            record = {"run": run, "metrics": results[name]}
            atomic_write_json(folder / f"{name}.json", record)  # a crash never leaves half a result
    return {name: results[name] for name in benchmarks}


def _load_benchmarks(
    names: list[str], sources: dict[str, str], token: str | None
) -> dict[str, QuadrupleBenchmark | RetrievalBenchmark]:
    """Each benchmark of `names` (a Hub dataset read with `token`); every one that cannot be read is reported in one
    error (one at a time, a user fixing them would rerun once per benchmark)."""
    from .benchmarks import BenchmarkFormatError, BenchmarkSourceError

    loaded, problems = {}, []
    for name in names:
        try:
            loaded[name] = load_benchmark(name, sources.get(name), token)
        except (BenchmarkSourceError, BenchmarkFormatError) as error:
            problems.append(error)
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise BenchmarkSourceError(
            f"{len(problems)} benchmarks cannot be read: " + "; ".join(map(str, problems))
            + " (a local copy is read with --source NAME=PATH)"
        )
    return loaded


def markdown_table(all_results: dict[str, dict[str, Any]]) -> str:
    """Retrieval and fine-grained tables with one row per (model, benchmark[, category]); model references and
    categories (the data's own words) ordered, named and escaped as the card's tables do them."""
    from model_cards.cards import result_subsets, subset_cell, table_cell

    lines = []
    retrieval = [(m, b, r) for m, per_benchmark in all_results.items() for b, r in per_benchmark.items() if BENCHMARKS[b].kind == "retrieval"]
    if retrieval:
        lines += ["| model | benchmark | " + " | ".join(RETRIEVAL_METRICS) + " |", "|---|---|" + "---|" * len(RETRIEVAL_METRICS)]
        lines += [f"| {table_cell(m)} | {b} | " + " | ".join(f"{r[c]:.1f}" for c in RETRIEVAL_METRICS) + " |"
                  for m, b, r in retrieval]
        lines.append("")
    quadruples = [(m, b, r) for m, per_benchmark in all_results.items() for b, r in per_benchmark.items() if BENCHMARKS[b].kind == "quadruples"]
    if quadruples:
        header = ("text", "image", "group", "Δgap")
        lines += ["| model | benchmark | subset | " + " | ".join(header) + " |", "|---|---|---|" + "---|" * len(header)]
        for m, b, r in quadruples:
            for subset, values in result_subsets(r):
                gap = f"{r['modality_gap']['delta_gap']:.2f}" if subset is None else ""  # the gap is overall only
                lines.append(f"| {table_cell(m)} | {b} | {subset_cell(subset)} | "
                             + " | ".join(f"{values[c]:.1f}" for c in QUADRUPLE_SCORES) + f" | {gap} |")
    return "\n".join(lines) + "\n"


def scoring_settings(dtype: str, image_processor_kwargs: dict[str, Any] | None) -> str:
    """The line under the tables that says how every result of the run was scored (a stored result is reused only
    under the same dtype and image settings, its fingerprint's)."""
    images = json.dumps(image_processor_kwargs, sort_keys=True) if image_processor_kwargs else "each checkpoint's own"
    return f"Weights in {dtype}; image processor settings: {images}.\n"


# In a model repo: every benchmark result `push_results` has published there, the Hub id each was read from and the
# weights each was computed from (`_loaded_files`), so that a push of some benchmarks adds them to the others of the
# same weights instead of replacing them
PUSHED_RESULTS_FILE = "maple_eval_results.json"


def push_results(
    repo_id: str, results: dict[str, Any], dataset_ids: dict[str, str] | None = None, token: str | None = None
) -> list[str]:
    """Add `results` to the model card of Hub repo `repo_id` (eval tables, `model-index` and, for quadruple
    benchmarks, freshly drawn similarity histograms replacing the run's), in one commit with `PUSHED_RESULTS_FILE`;
    results pushed before for other benchmarks stay, unless they were computed from other weights than the repo holds
    now (`_loaded_files`: a model retrained and pushed again since): those are dropped, and their names returned.
    A repo without a card gets one. `dataset_ids`: the Hub id a benchmark was read from where it is not the official
    one. Every request (reading the card, the record and the repo's files, the commit) carries `token` (None: HF_TOKEN
    or the saved login)."""
    import tempfile

    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, ModelCard, hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError

    from maple.hub import validate_card
    from model_cards import with_eval_results
    from model_cards.cards import GAP_HISTOGRAM_FILE, plot_similarity_histograms

    try:
        card = ModelCard.load(repo_id, token=token)
    # Only a README.md the repo lacks: a Hub that cannot be reached (LocalEntryNotFoundError, also an
    # EntryNotFoundError) must not make this push replace the card with a bare one.
    except RemoteEntryNotFoundError:
        card = ModelCard("")
    try:
        pushed = json.loads(Path(hf_hub_download(repo_id, PUSHED_RESULTS_FILE, token=token)).read_text())
    except RemoteEntryNotFoundError:
        pushed = {"results": {}, "dataset_ids": {}}
    repo_files = _top_level_files(repo_id, token)
    weights = _loaded_files(repo_files)
    # A result recorded without its weights (before they were recorded) cannot tell: it is taken for these weights'
    # and recorded so, and a later retrain drops it.
    pushed_weights = {name: pushed.get("weights", {}).get(name, weights) for name in pushed["results"]}
    # compared as `_loaded_files` reads them now (a record may hold files it has since learnt to leave out)
    stale = sorted(name for name in pushed["results"]
                   if name not in results and _loaded_files(pushed_weights[name]) != weights)
    kept = [name for name in pushed["results"] if name not in results and name not in stale]
    # a benchmark pushed again takes its new source, the official one where `dataset_ids` names none
    dataset_ids = {**{name: pushed["dataset_ids"][name] for name in kept if name in pushed["dataset_ids"]},
                   **(dataset_ids or {})}
    weights_of = {**{name: pushed_weights[name] for name in kept}, **{name: weights for name in results}}
    results = {**{name: pushed["results"][name] for name in kept}, **results}
    with tempfile.TemporaryDirectory() as folder:
        histograms = Path(folder) / GAP_HISTOGRAM_FILE
        has_histograms = plot_similarity_histograms(results, histograms)
        card = with_eval_results(
            card, results, model_name=repo_id, histogram_file=GAP_HISTOGRAM_FILE if has_histograms else None,
            dataset_ids=dataset_ids,
        )
        validate_card(card)
        record = json.dumps({"results": results, "dataset_ids": dataset_ids, "weights": weights_of}, indent=2).encode()
        operations = [
            CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(card).encode()),
            CommitOperationAdd(path_in_repo=PUSHED_RESULTS_FILE, path_or_fileobj=record),
        ]
        if has_histograms:
            operations.append(CommitOperationAdd(path_in_repo=GAP_HISTOGRAM_FILE, path_or_fileobj=histograms))
        elif GAP_HISTOGRAM_FILE in repo_files:  # those of results the card no longer shows
            operations.append(CommitOperationDelete(path_in_repo=GAP_HISTOGRAM_FILE))
        # one commit: a failed push leaves the card, its histograms and the record as they were, together
        HfApi(token=token).create_commit(repo_id, operations, commit_message="Add MAPLE evaluation results")
    return stale


def _top_level_files(repo_id: str, token: str | None) -> dict[str, str]:
    """The files at the top level of Hub repo `repo_id`, by git blob id."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    entries = HfApi(token=token).list_repo_tree(repo_id, recursive=False)
    return {entry.path: entry.blob_id for entry in entries if isinstance(entry, RepoFile)}


def _loaded_files(repo_files: dict[str, str]) -> dict[str, str]:
    """Of a Hub repo's top-level files (`_top_level_files`), those that loading the model may read, as `_model_state`
    takes a folder's: not the card, pictures, an `--out` folder's results, `PUSHED_RESULTS_FILE` nor dotfiles
    (.gitattributes). The commits a push of results makes leave them as they are, a model pushed again changes them.
    (An adapter's base model is not looked at.)"""
    not_loaded = (PUSHED_RESULTS_FILE, RESULTS_JSON)
    return {path: blob_id for path, blob_id in repo_files.items()
            if path not in not_loaded and not path.startswith(".") and not path.lower().endswith(NOT_LOADED_SUFFIXES)}


def _embedding_device(parser: argparse.ArgumentParser, requested: str | None) -> str:
    """The device the models embed on: `requested`, checked to exist on this machine (`maple.cli.checked_device`: a
    missing GPU or an index past the last one is a usage error now, not a failure once a model has loaded), or cuda
    when available, else cpu."""
    import torch

    if requested is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return checked_device(requested)
    except ValueError as error:
        exit_with_error(parser, str(error))


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, DefaultsHelpFormatter):
    """The module docstring as written, and the options' defaults."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="maple eval", description=__doc__, formatter_class=_HelpFormatter)
    parser.add_argument("model", help="checkpoint folder or Hub repo id")
    parser.add_argument("--benchmarks", nargs="+", choices=sorted(BENCHMARKS), default=sorted(BENCHMARKS), help="benchmarks to run")
    # "extend": a repeated option adds to the list (argparse's default would keep only the last one)
    parser.add_argument("--compare", nargs="*", action="extend", default=[], metavar="MODEL", help="more models, side by side")
    parser.add_argument("--source", nargs="*", action="extend", default=[], metavar="BENCHMARK=PATH",
                        help="local copy or other Hub id of a benchmark (repeat or list several)")
    parser.add_argument("--out", type=output_folder, default=Path("maple_eval"), help="results folder (resumable)")
    parser.add_argument("--batch-size", type=positive(int), default=32, help="images or texts embedded per forward pass")
    parser.add_argument("--device", default=None, help="where the models embed, e.g. cuda:1; unset: cuda if available, else cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="weights dtype of every model (backbones too, so models compare at one precision; MAPLE's heads stay float32)")
    parser.add_argument("--image-processor-kwargs", default=None, metavar="JSON",
                        help="image processor settings of every model (an adapter's: its base's) that override the "
                        "checkpoint's, as a JSON object, e.g. '{\"max_pixels\": 153664}': a Qwen-VL backbone scored with "
                        "the pixels of a 384 x 384 image, as MAPLE trains; stored results record them")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="run code a checkpoint's repo holds (a config or processor of its own, `auto_map`); MAPLE checkpoints "
                        "and the backbones MAPLE wraps need none")
    parser.add_argument("--push-to-hub", action="store_true", help="write the results into MODEL's model card on the Hub")
    add_token_option(parser, "the models and benchmarks read from the Hub and for --push-to-hub")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars (datasets' reading, the weights' loading)")
    args = parser.parse_args(argv)
    with library_progress_bars_hidden() if args.no_progress else contextlib.nullcontext():
        return _evaluate(parser, args)


def _evaluate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """`maple eval` with the parsed `args`."""
    args.benchmarks = list(dict.fromkeys(args.benchmarks))  # `--benchmarks coco coco` evaluates coco once
    sources = _parse_sources(parser, args.source)
    image_processor_kwargs = _parse_image_processor_kwargs(parser, args.image_processor_kwargs)
    # the sources the results are of: a --source for a benchmark left out is checked, but neither published nor refused
    evaluated_sources = {name: source for name, source in sources.items() if name in args.benchmarks}
    _check_out(parser, args.out)
    try:
        model_refs = _distinct_models([args.model, *args.compare])
    except ValueError as error:
        exit_with_error(parser, str(error))
    if args.push_to_hub and expanded_path(args.model).exists():
        exit_with_error(parser, f"--push-to-hub writes into the card of MODEL's Hub repo, but {args.model} is a local folder: push the checkpoint first and evaluate it by repo id")
    # The card's model-index would label local copies as the official benchmarks, and a copy may be a subset.
    local_sources = [f"{name}={source}" for name, source in sorted(evaluated_sources.items())
                     if expanded_path(source).exists()]
    if args.push_to_hub and local_sources:
        exit_with_error(parser, f"--push-to-hub publishes results under the benchmarks' Hub datasets, but "
                             f"{', '.join(local_sources)} is a local copy: evaluate from the Hub (the default source, or "
                             "another Hub id) to push")

    from .benchmarks import BenchmarkFormatError, BenchmarkSourceError, check_source
    from .models import ModelLoadError, check_model_ref, checkpoint_config, load_processor
    from .retrieval import NonFiniteEmbeddingsError

    device = _embedding_device(parser, args.device)

    all_results = {}
    try:
        # Before the first model loads: every model that has benchmarks left to do gets its config read and checked
        # (missing folders, Hub repos that cannot be read, unsupported kinds), and its processor loaded with the
        # --image-processor-kwargs (none saved, a setting it lacks), so a bad --compare entry fails at once, not after
        # hours, and that processor is the one the model embeds with; a model whose results are all stored needs
        # nothing (an offline re-run works).
        for model_ref in model_refs:
            check_model_ref(model_ref)
        # local sources first (cheap, offline): a stored result counts the image files they name outside themselves
        local = [name for name in args.benchmarks if expanded_path(sources.get(name) or BENCHMARKS[name].hub_id).exists()]
        loaded = _load_benchmarks(local, sources, args.token)
        stored = {model_ref: stored_results(model_ref, args.benchmarks, sources, args.out, args.dtype, args.token,
                                            image_processor_kwargs, loaded)
                  for model_ref in model_refs}
        for model_ref in model_refs:
            if set(args.benchmarks) - set(stored[model_ref]):
                checkpoint_config(model_ref, token=args.token)
        # each with the state of its files taken before its processor loads, hours before a later --compare model
        # itself loads: a processor saved anew in between must not be stored under the new files' state
        states, processors = {}, {}
        for model_ref in model_refs:
            if set(args.benchmarks) - set(stored[model_ref]):
                states[model_ref] = _model_state(model_ref, token=args.token)
                processors[model_ref] = load_processor(model_ref, image_processor_kwargs,
                                                       trust_remote_code=args.trust_remote_code, token=args.token)
        for name, source in sources.items():
            check_source(name, source)
        # every benchmark some model has left to do, read once, before the first model loads: one only a later
        # --compare model needs (a Hub copy offline and not cached, say) would fail after the first model's hours
        todo = [name for name in args.benchmarks if any(name not in stored[model_ref] for model_ref in model_refs)]
        loaded |= _load_benchmarks([name for name in todo if name not in loaded], sources, args.token)
        for model_ref in model_refs:
            all_results[model_ref] = evaluate_model(
                model_ref, args.benchmarks, sources, args.out, args.batch_size, stored[model_ref], device, args.dtype,
                args.trust_remote_code, args.token, image_processor_kwargs, loaded, processors.get(model_ref),
                states.get(model_ref),
            )
    except (ModelLoadError, BenchmarkFormatError, BenchmarkSourceError, NonFiniteEmbeddingsError) as error:
        return report_error(parser.prog, str(error))
    # atomically: an interruption leaves the previous results or these, never half a file (which the next run's
    # --out check would take for another command's)
    atomic_write_json(args.out / RESULTS_JSON, all_results)
    table = markdown_table(all_results) + "\n" + scoring_settings(args.dtype, image_processor_kwargs)
    atomic_write_text(args.out / RESULTS_MD, table)
    print(table)
    if args.push_to_hub:
        from maple.hub import hub_failure

        try:
            stale = push_results(args.model, all_results[args.model], dataset_ids=evaluated_sources, token=args.token)
        except Exception as error:  # what the Hub answered, found in the exception chain by `hub_failure`
            if (problem := hub_failure(error, args.model, writing=True)) is None:
                raise
            return report_error(parser.prog, f"pushing the results failed: {problem}; they are saved in {args.out}", status=1)
        if stale:
            print(f"{args.model}: the card no longer shows the results pushed before for {', '.join(stale)}: they were "
                  "computed from other weights than the repo holds now; evaluate them again to publish them")
    return 0


if __name__ == "__main__":  # as `maple eval` (Ctrl-C included)
    from maple.cli import run_module

    run_module("eval")
