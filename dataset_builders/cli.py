"""`maple build-preferences`: build an MLLM-judged preference dataset from image-caption pairs.

    maple build-preferences SOURCE --output-dir out \\
        --judge Qwen/Qwen2-VL-7B-Instruct --captioner Qwen/Qwen2.5-VL-72B-Instruct \\
        --miner facebook/dinov2-base [--push-to-hub me/my-preferences]

Several processes split the work, e.g.
`accelerate launch --multi_gpu --num_processes N -m dataset_builders.cli SOURCE ...`: each rank
builds its own shards; rank 0 assembles, summarises and pushes. Rerunning the same command after a
crash resumes from the finished shards.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import re
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import fields
from typing import Any

from maple.cli import (
    DefaultsHelpFormatter,
    add_token_option,
    checked_device,
    library_progress_bars_hidden,
    positive,
    report_error,
)
from maple.files import expanded_path, folder_problem
from maple.hub import repo_id_problem

from .builder import MaplePreferences, MaplePreferencesConfig, WorkDirMismatch, process_rank
from .miner import MinerInputError, MinerOutputError, check_semdedup_clusters
from .scoring import CaptionerOutputError, JudgeOutputError
from .sources import SourceError, check_outside_source, open_source

PROG = "maple build-preferences"
# `MaplePreferencesConfig` fields offered as options, by option group.
RECIPE_OPTIONS = (
    "num_hard_negatives", "captioned_negatives", "max_candidate_texts", "semdedup_clusters", "semdedup_epsilon",
    "shard_size", "seed",
)
SOURCE_OPTIONS = ("source_config", "source_split", "image_column", "caption_column", "id_column", "source_license")
_OPTION_TYPES = {"int": int, "int | None": int, "float": float, "str": str, "str | None": str}  # field type -> argparse's
# The options that set up models, by the components they apply to. They reach only components loaded from a Hub id
# or path: a module:factory builds its object itself, unconfigured, so an option that reaches none is refused.
MODEL_OPTIONS: dict[str, tuple[str, ...]] = {
    "device": ("judge", "captioner", "miner"),
    "device_map": ("judge", "captioner"),
    "dtype": ("judge", "captioner"),
    "max_pixels": ("judge", "captioner"),
    "judge_prompt": ("judge",),
    "judge_batch_size": ("judge",),
    "caption_prompt": ("captioner",),
    "temperature": ("captioner",),
    "num_samples": ("captioner",),
    "max_new_tokens": ("captioner",),
}


DTYPES = ("auto", "bfloat16", "float16", "float32")
_FACTORY_SPEC = re.compile(r"^(?P<module>[A-Za-z_][\w.]*):(?P<attribute>[A-Za-z_][\w.]*)$")
MAX_EXAMPLES_PER_REASON = 5


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Build a MAPLE preference dataset: mine hard-negative images, write contrastive captions, "
        "score every candidate with an MLLM judge, and write (and optionally publish) parquet shards.",
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("source", help="image-caption data: a local folder (parquet files, or images with metadata.jsonl/csv), a parquet file, or a Hub dataset id")
    parser.add_argument("--output-dir", default="maple_preferences", help="work directory: checkpoints, shards, stats.json and the datasets cache; rerun with the same one to resume")
    parser.add_argument("--config", default="paper", choices=[config.name for config in MaplePreferences.BUILDER_CONFIGS], help="named recipe: 'paper' (generated contrastive captions) or 'corpus-captions' (the hard negatives' own captions, no captioner)")

    components = parser.add_argument_group("models (a Hub id or local path, or module:factory for any object implementing the protocol)")
    components.add_argument("--judge", action="append", required=True, metavar="ID", help="MLLM judge (paper: Qwen/Qwen2-VL-7B-Instruct; also OpenGVLab/InternVL3-1B-hf, HuggingFaceTB/SmolVLM-Instruct, ...: Qwen2/2.5/3-VL, LLaVA, LLaVA-NeXT, InternVL, Idefics3/SmolVLM, Gemma 3, Pixtral, Mistral 3 families); repeat to average several judges")
    components.add_argument("--captioner", metavar="ID", help="contrastive captioner (paper: Qwen/Qwen2.5-VL-72B-Instruct); required by the 'paper' config")
    components.add_argument("--miner", default="facebook/dinov2-base", metavar="ID", help="image encoder for hard-negative mining and SemDeDup")
    components.add_argument("--device", default=None, help="device for the models; default: this rank's GPU if any, else cpu")
    components.add_argument("--device-map", default=None, help="device_map for the judge and captioner (e.g. 'auto' to spread a 72B captioner over this machine's GPUs); overrides --device for them")
    components.add_argument("--dtype", default="auto", choices=DTYPES, help="weights dtype of the judge and captioner")
    components.add_argument("--max-pixels", type=positive(int), default=None, help="cap on image pixels seen by the judge and captioner (the paper's 384x384 training images: 153664, "
                            "392*392, as Qwen2-VL sizes them); Qwen-VL family models only")

    recipe = parser.add_argument_group("recipe")
    _add_config_options(recipe, RECIPE_OPTIONS)
    recipe.add_argument("--judge-prompt", default=None, help="judge question with a {text} field (default: the paper's)")
    recipe.add_argument("--judge-batch-size", type=positive(int), default=8, help="image-text pairs per judge forward pass")
    recipe.add_argument("--caption-prompt", default=None, help="captioner instruction shown after the anchor and the hard negative")
    recipe.add_argument("--temperature", type=positive(float), default=0.7, help="captioner sampling temperature (paper: 0.7)")
    recipe.add_argument("--num-samples", type=positive(int), default=3, help="captioner samples per (anchor, negative) pair (paper: 3)")
    recipe.add_argument("--max-new-tokens", type=positive(int), default=96, help="captioner answer length cap")

    data = parser.add_argument_group("source columns and metadata")
    _add_config_options(data, SOURCE_OPTIONS)

    publish = parser.add_argument_group("publishing and output")
    publish.add_argument("--push-to-hub", metavar="REPO_ID", default=None, help="publish the dataset and its card to this Hub dataset repo")
    publish.add_argument("--private", action="store_true", help="make the pushed repo private")
    add_token_option(publish, "the models and a source read from the Hub and for --push-to-hub")
    publish.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def _add_config_options(group: argparse._ArgumentGroup, names: tuple[str, ...]) -> None:
    """One option per `MaplePreferencesConfig` field, with the field's help; unset, the named config's value holds."""
    config_fields = {config_field.name: config_field for config_field in fields(MaplePreferencesConfig)}
    for name in names:
        config_field = config_fields[name]
        # semdedup_clusters: None (no de-duplication) is 0 on the command line
        help_text = config_field.metadata["help"].replace("None skips", "0 skips")
        defaults = {config.name: getattr(config, name) for config in MaplePreferences.BUILDER_CONFIGS}
        if name == "semdedup_clusters":
            defaults = {config_name: value or 0 for config_name, value in defaults.items()}
        if len(set(defaults.values())) > 1:
            help_text += " (default: " + ", ".join(f"{value} in '{config_name}'" for config_name, value in defaults.items()) + ")"
        elif (value := next(iter(defaults.values()))) is not None:
            help_text += f" (default: {value})"
        group.add_argument(f"--{name.replace('_', '-')}", type=_OPTION_TYPES[config_field.type], default=None, help=help_text)


def _config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Config fields given on the command line (the rest keep the named config's defaults)."""
    overrides = {name: getattr(args, name) for name in RECIPE_OPTIONS + SOURCE_OPTIONS if getattr(args, name) is not None}
    if "semdedup_clusters" in overrides:
        overrides["semdedup_clusters"] = overrides["semdedup_clusters"] or None
    return overrides


def _factory(spec: str):
    """The object a `module:factory` spec names, or None for a model id or path."""
    match = _FACTORY_SPEC.match(spec)
    if match is None or os.path.exists(spec):
        return None
    if os.getcwd() not in sys.path:  # `python -m` would find a module of the current directory; a console script not
        sys.path.insert(0, os.getcwd())
    target = importlib.import_module(match["module"])
    for attribute in match["attribute"].split("."):
        target = getattr(target, attribute)
    return target


def _options_given(argv: list[str] | None) -> set[str]:
    """The dests of the options `argv` sets (it parses): argparse fills in defaults indistinguishably from them."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def _check_model_options(args: argparse.Namespace, given: set[str]) -> None:
    """A ValueError naming every `MODEL_OPTIONS` option set on the command line that reaches none of its components
    (each is a module:factory, or absent), which would ignore it. Runs after `_check_model_refs`: factories import."""
    specs = {"judge": args.judge, "captioner": [args.captioner] if args.captioner else [], "miner": [args.miner]}
    ignored: dict[tuple[str, ...], list[str]] = defaultdict(list)  # by the components they are for
    for dest, components in MODEL_OPTIONS.items():
        if dest in given and all(_factory(spec) is not None for component in components for spec in specs[component]):
            ignored[components].append(f"--{dest.replace('_', '-')}")
    groups = []
    for components, options in ignored.items():
        targets = ", ".join(f"--{component} {spec}" for component in components for spec in specs[component])
        built = f"not one a module:factory builds ({targets})" if targets else "and there is no --captioner"
        groups.append(f"{', '.join(options)}, for a {' or '.join('--' + name for name in components)} loaded from a Hub "
                      f"id or path, {built}")
    if groups:
        raise ValueError(f"ignored options: {'; '.join(groups)}. Leave them out, or set them in the factory")


def _check_recipe_options(args: argparse.Namespace, config: MaplePreferencesConfig, given: set[str]) -> None:
    """A ValueError naming every recipe option set on the command line that this recipe does not read
    (`MaplePreferencesConfig.unused_fields`), which would ignore it."""
    semdedup_off = ("SemDeDup is off (--semdedup-clusters 0)" if "semdedup_clusters" in given
                    else f"SemDeDup is off: the {args.config!r} config's default; --semdedup-clusters N turns it on")
    why = {
        "captioned_negatives": f"the {args.config!r} config writes no captions",
        "semdedup_epsilon": semdedup_off,
        "seed": "it seeds caption sampling and SemDeDup, and this build has neither",
    }
    ignored = [f"--{name.replace('_', '-')} ({why[name]})" for name in config.unused_fields() if name in given]
    if ignored:
        raise ValueError(f"ignored options: {', '.join(ignored)}. Leave them out")


def _device(requested: str | None) -> str:
    """`--device`, checked to exist on this machine (a ValueError naming it, before any model loads), else this rank's
    GPU if there is one, else cpu."""
    if requested:
        return checked_device(requested)
    import torch

    return f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu"


def _check_model_refs(args: argparse.Namespace) -> None:
    """A ValueError naming the option of a model that cannot be found: a module:factory spec that does not import, a
    path that is not a folder or holds no config.json, a Hub repo that is not found, refuses the token or, offline, is
    not cached; a --judge or --captioner of a family without a prompt encoder (`check_supported`); and a --miner that
    is an MLLM (`encoder_config_problem`). Reads configs only, so it runs before the first model loads: one of them may
    take minutes and most of a GPU."""
    from evaluation.models import ModelLoadError, checkpoint_config_file

    from .miner import encoder_config_problem
    from .vlm_inputs import check_supported

    for option, spec in _component_specs(args):
        try:
            if spec is None or _factory(spec) is not None:
                continue
            config_file = checkpoint_config_file(spec, token=args.token)  # a folder holding no model (of images, say) too
            try:
                config = json.loads(config_file.read_text())
            except ValueError as error:  # json's, or text that is not UTF-8
                raise ModelLoadError(f"{config_file} cannot be read: {error}") from None
            if option == "--miner" and (problem := encoder_config_problem(spec, config)):
                raise ModelLoadError(problem)
            if option != "--miner" and config_file.name == "config.json":  # (an adapter's is its base's family)
                check_supported(config.get("model_type"))
        # a ValueError too: one a factory's module raises as it imports (it was taken for an earlier model's config
        # that did not read, or, for the first, an UnboundLocalError)
        except (ImportError, AttributeError, ModelLoadError, NotImplementedError, ValueError) as error:
            raise ValueError(f"{option} {spec}: {error}") from None


def _component_specs(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    """(option, spec) of every judge, the captioner and the miner given (a spec is None where the option was not)."""
    return [("--judge", spec) for spec in args.judge] + [("--captioner", args.captioner), ("--miner", args.miner)]


def _make(option: str, spec: str) -> Any:
    """What the module:factory `spec` makes, called with no arguments, checked to implement `option`'s protocol: a
    factory that needs arguments or makes something else is a ValueError naming the option (the builder's own check
    came after the judge had loaded, as a traceback)."""
    from .interfaces import CandidateCaptioner, PreferenceJudge
    from .miner import HardNegativeMiner

    protocol, needs = {
        "--judge": (PreferenceJudge, "a PreferenceJudge (method score)"),
        "--captioner": (CandidateCaptioner, "a CandidateCaptioner (method caption)"),
        "--miner": (HardNegativeMiner, "a HardNegativeMiner"),
    }[option]
    factory = _factory(spec)
    if not callable(factory):
        raise ValueError(f"{option} {spec}: {spec.split(':')[1]} is a {type(factory).__name__}, not a callable that makes {needs}")
    try:
        made = factory()
    except TypeError as error:  # a callable that needs arguments; a TypeError inside a factory reads alike
        raise ValueError(f"{option} {spec}: calling it with no arguments failed ({error}); expected a zero-argument "
                         f"factory of {needs}") from error
    except ValueError as error:  # the factory's own refusal (a setting it lacks): printed alone, it named no option
        raise ValueError(f"{option} {spec}: {error}") from error
    if not isinstance(made, protocol):
        raise ValueError(f"{option} {spec} made a {type(made).__name__}; expected {needs}")
    return made


def _load(option: str, spec: str, load: Callable[[str], Any], made: dict[tuple[str, str], Any]) -> Any:
    """What the module:factory `spec` made (`made`, by option and spec), else `load(spec)`; a model that does not load
    (not found, offline and not cached, gated, of an unsupported family) is a ValueError naming the option."""
    if (option, spec) in made:
        return made[option, spec]
    try:
        return load(spec)
    except (OSError, ValueError, NotImplementedError) as error:
        raise ValueError(f"{option} {spec} cannot be loaded: {' '.join(str(error).split())}") from error


def _load_components(args: argparse.Namespace, device: str) -> dict[str, Any]:
    from .captioner import ContrastiveCaptioner
    from .judge import JudgeEnsemble, MLLMJudge
    from .miner import HardNegativeMiner

    loading_kwargs = {
        "device": device,
        "dtype": args.dtype,
        "image_processor_kwargs": {"max_pixels": args.max_pixels} if args.max_pixels else None,
        "model_kwargs": {"device_map": args.device_map} if args.device_map else None,
        "token": args.token,
    }
    specs = _component_specs(args)
    # Factories first: they are quick to call and check, and one that is wrong must not wait for a 72B model to load.
    made = {(option, spec): _make(option, spec) for option, spec in specs if spec is not None and _factory(spec) is not None}
    judge_kwargs = {"batch_size": args.judge_batch_size} | ({"prompt": args.judge_prompt} if args.judge_prompt else {})
    judges = [
        _load("--judge", spec, lambda ref: MLLMJudge.from_pretrained(ref, loading_kwargs=loading_kwargs, **judge_kwargs), made)
        for spec in args.judge
    ]
    captioner = None
    if args.captioner:
        caption_kwargs = {"temperature": args.temperature, "num_samples": args.num_samples, "max_new_tokens": args.max_new_tokens}
        if args.caption_prompt:
            caption_kwargs["prompt"] = args.caption_prompt
        captioner = _load(
            "--captioner",
            args.captioner,
            lambda ref: ContrastiveCaptioner.from_pretrained(ref, loading_kwargs=loading_kwargs, **caption_kwargs),
            made,
        )
    miner = _load(
        "--miner", args.miner,
        lambda ref: HardNegativeMiner.from_pretrained(ref, device=device, search_device=device, token=args.token), made,
    )
    return {"judge": judges[0] if len(judges) == 1 else JudgeEnsemble(judges), "captioner": captioner, "miner": miner}


def format_summary(stats: dict[str, Any], seconds: float, computed: int, reused: int, work_dir: str, world_size: int = 1) -> str:
    """The end-of-build report: counts, skipped inputs by reason (with examples) and time. `computed` and `reused`:
    this process's shards, built now or found finished by an earlier run (with several processes, each reports its
    own)."""
    anchors = stats["num_anchors"]
    lines = [
        f"MAPLE preference build ({stats['config_name']}) finished in {seconds:.1f} s",
        f"  source rows       {stats['num_source_rows']}",
        f"  anchors           {anchors}",
        f"  candidate images  {stats['num_candidate_images']} ({stats['num_candidate_images'] / max(anchors, 1):.2f} per anchor)",
        f"  candidate texts   {stats['num_candidate_texts']} ({stats['num_candidate_texts'] / max(anchors, 1):.2f} per anchor)",
        f"  shards            {computed} built, {reused} already built by an earlier run"
        + (f" (rank 0's; each of the {world_size} processes builds its own)" if world_size > 1 else ""),
        f"  skipped inputs    {stats['num_skipped']}",
    ]
    if anchors and stats["num_candidate_texts"] <= anchors and stats["text_candidates"] == "generated":
        # every row ranks only its own caption: RPA's image -> text direction learns nothing (the trainer warns too)
        lines.insert(5, "    warning: the captioner added no caption to any anchor (answers not in its format, or "
                        "cut at --max-new-tokens), so no row ranks candidate texts")
    examples = defaultdict(list)
    for item in stats["skipped"]:
        examples[item["kind"]].append(item)
    for kind, count in sorted(stats["skipped_by_reason"].items()):
        lines.append(f"    {kind}: {count}")
        for item in examples[kind][:MAX_EXAMPLES_PER_REASON]:
            detail = f": {item['detail']}" if item["detail"] else ""
            lines.append(f"      id {item['id']!r} (row {item['row']}){detail}")
        if count > MAX_EXAMPLES_PER_REASON:
            lines.append(f"      ... {count - MAX_EXAMPLES_PER_REASON} more")
    lines.append(f"  full list and score histograms: {os.path.join(work_dir, 'stats.json')}")
    shards = os.path.join(work_dir, "shards")
    lines.append(f"  dataset: {shards} (train on it: maple train --dataset_name {shards} ...)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    given = _options_given(argv)
    with library_progress_bars_hidden() if args.no_progress else contextlib.nullcontext():
        return _build(args, given)


def _missing_folders(folder: str) -> list[str]:
    """`folder` and those above it that do not exist, deepest first: what `os.makedirs(folder)` would make."""
    missing = []
    while folder and not os.path.exists(folder):
        missing.append(folder)
        folder = os.path.dirname(folder.rstrip(os.sep))
    return missing


def _build(args: argparse.Namespace, given: set[str]) -> int:
    """The build `args` ask for; `given`: the dests of the options set on the command line (`_options_given`)."""
    started = time.perf_counter()
    overrides = _config_overrides(args)
    # `--output-dir=~/x`, which the shell leaves as typed, is the home folder's (a folder named ~ was made here)
    output_dir = str(expanded_path(args.output_dir)) if args.output_dir else args.output_dir
    work_dir, cache_dir = os.path.join(output_dir, "work"), os.path.join(output_dir, "cache")
    made: list[str] = []  # the folders made for the source's cache, deepest first: removed if the build stops empty
    try:
        # Configuration, source and model errors stop here, before any file is written.
        rank, world_size = process_rank()  # the launcher's RANK and WORLD_SIZE
        config = next(config for config in MaplePreferences.BUILDER_CONFIGS if config.name == args.config)
        config = MaplePreferencesConfig(**{**config.__dict__, **overrides, "source": args.source})
        for name, folder in (("--output-dir", output_dir), ("--output-dir's work folder", work_dir),
                             ("--output-dir's cache folder", cache_dir)):
            if problem := folder_problem(folder, name):
                raise ValueError(problem)
        check_outside_source(args.source, **{"--output-dir": output_dir})
        if config.text_candidates == "generated" and not args.captioner:
            raise ValueError(f"the {args.config!r} config writes captions: pass --captioner (or use --config corpus-captions)")
        if config.text_candidates != "generated" and args.captioner:  # it would be loaded (a 72B MLLM) for nothing
            raise ValueError(f"the {args.config!r} config uses the hard negatives' own captions: leave out --captioner")
        _check_recipe_options(args, config, given)
        if args.push_to_hub is not None and (problem := repo_id_problem(args.push_to_hub)) is not None:
            raise ValueError(f"--push-to-hub {problem}")
        if args.private and args.push_to_hub is None:  # it would be ignored: nothing is pushed
            raise ValueError("ignored option: --private (it makes the repo --push-to-hub creates private, and there is "
                             "no --push-to-hub). Leave it out, or add --push-to-hub REPO_ID")
        device = _device(args.device)
        _check_model_refs(args)
        _check_model_options(args, given)
        try:  # the source's datasets cache goes in it: a folder that cannot be made was open_source's traceback
            made = _missing_folders(cache_dir)
            os.makedirs(cache_dir, exist_ok=True)
        except OSError as error:
            raise ValueError(f"--output-dir {output_dir} cannot be created: {error.strerror} ({error.filename})") from None
        source, _ = open_source(config, cache_dir=cache_dir, token=args.token)
        if config.semdedup_clusters is not None:  # the source's rows bound the usable ones: before any model loads
            check_semdedup_clusters(config.semdedup_clusters, len(source))
        components = _load_components(args, device)
    except ValueError as error:  # SourceError included
        for folder in made:  # an empty output folder left by a refused build would look like a started one
            with contextlib.suppress(OSError):  # (one that holds the source's cache is kept)
                os.rmdir(folder)
        return report_error(PROG, str(error))

    builder = MaplePreferences(
        config_name=args.config,
        source=args.source,
        cache_dir=cache_dir,
        work_dir=work_dir,
        rank=rank,
        world_size=world_size,
        progress=not args.no_progress,
        token=args.token,
        **overrides,
        **components,
    )
    try:
        report = builder.build_shards()
        if builder.rank != 0:
            print(f"rank {builder.rank}: built shards {report.computed}, reused {report.reused}; rank 0 assembles the dataset")
            return 0
        builder.download_and_prepare()
    except SourceError as error:
        if isinstance(error.__cause__, MinerInputError):  # its advice names from_pretrained, which the CLI calls itself
            return report_error(PROG, f"--miner {args.miner}: {error.__cause__.problem}. Mine with a miner whose image "
                                      "processor makes every image one size (one that crops to crop_size), or with a "
                                      "--miner module:factory making HardNegativeMiner.from_pretrained(..., "
                                      f"image_processor_kwargs=...) that sets {error.__cause__.fixes}")
        return report_error(PROG, str(error))
    # a damaged checkpoint or shard included
    except (WorkDirMismatch, JudgeOutputError, CaptionerOutputError) as error:
        return report_error(PROG, str(error))
    except MinerOutputError as error:  # named by its name, which a module:factory's miner chose itself
        return report_error(PROG, f"--miner {args.miner}: {error}")
    except OSError as error:  # the system could not read or write a file (no permission, a disk error): not bad input
        where = "".join(f" ({note})" for note in getattr(error, "__notes__", []))
        return report_error(PROG, f"{error}{where}. The work done so far is kept in {work_dir}: run the same command "
                                  "again once that is fixed", status=1)
    print(format_summary(builder.stats, time.perf_counter() - started, len(report.computed), len(report.reused), work_dir,
                         builder.world_size))
    if args.push_to_hub:
        from maple.hub import hub_failure

        try:
            repo_id = builder.push_to_hub(args.push_to_hub, private=args.private, token=args.token)
        except Exception as error:  # the Hub's errors come wrapped by datasets' and httpx's: `hub_failure` reads them
            problem = hub_failure(error, args.push_to_hub, repo_type="dataset", writing=True)
            if problem is None:
                raise
            return report_error(PROG, f"pushing failed: {problem}. The built dataset is kept in {builder.shard_dir}: "
                                      "run the same command again to push it (the build is reused, not redone)", status=1)
        print(f"  pushed to Hub dataset repo {repo_id}")
    return 0


if __name__ == "__main__":  # `accelerate launch -m dataset_builders.cli`: as `maple build-preferences` (Ctrl-C included)
    from maple.cli import run_module

    run_module("build-preferences")
