"""`maple train`: train a MAPLE embedder with RPA + InfoNCE from a YAML config and/or flags.

```bash
maple train --model_name_or_path Qwen/Qwen2-VL-2B-Instruct --dataset_name user/maple-preferences \\
    --use_peft --output_dir maple-qwen2vl-2b --per_device_train_batch_size 96 --bf16 true
maple train --config train.yaml --learning_rate 1e-4      # flags override the YAML file
maple train --tiny dual_encoder --dataset_name ./prefs --output_dir /tmp/smoke --max_steps 10   # offline smoke run
accelerate launch --multi_gpu --num_processes 8 -m trainer.cli ...    # several processes (add --use_cpu true on CPU)
```
Every `RPAConfig` / `TrainingArguments` field is a flag; `maple train --help` lists them all.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NoReturn

from maple.cli import set_config_environment

if __name__ == "__main__":  # `python -m trainer.cli`, as `accelerate launch -m` runs it: before the imports below
    set_config_environment(sys.argv[1:])

import yaml
from datasets import Dataset, DatasetDict, Image, LargeList, List, Value, load_dataset, load_from_disk
from datasets.exceptions import DatasetGenerationError
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import TrlParser

from maple.cli import config_option_split, exit_with_error, image_settings, report_error
from maple.dataset_layout import (
    DatasetCardError,
    SplitLayoutError,
    card_configs,
    check_shards_read_as_named,
    files_by_split,
    keyword_split,
    lone_config_folder,
    snapshot_config_folders,
)
from maple.files import expanded_path, folder_problem, holds_relative_image_paths, located, located_image
from maple.hub import check_private, dataset_read_problem, hub_failure, is_hub_id, local_typo_hint
from modeling_maple.configuration_maple import BACKBONES, MLLM_FAMILIES
from modeling_maple.lora import LORA_ALPHA, LORA_DROPOUT, LORA_RANK

from .rpa_config import RPAConfig, from_pretrained_kwargs, unused_dpo_field_help
from .schema import first_undecodable_image, validate_preference_dataset, with_image_decode

if typing.TYPE_CHECKING:
    from modeling_maple import MapleModel, MapleProcessor

    from .rpa_trainer import RPATrainer


class TrainingInputError(ValueError):
    """A model or dataset `maple train` cannot use, found before training: one line, not a traceback."""


class _Parser(TrlParser):
    """TrlParser whose errors are one line: argparse prints the usage first, some 150 lines for all the
    fields of RPAConfig and TrainingArguments, which bury the message."""

    def error(self, message: str) -> NoReturn:
        exit_with_error(self, message)


@dataclass
class ModelArguments:
    """Which embedder to train, and how (full fine-tuning or LoRA)."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A MAPLE checkpoint (path or Hub id) to continue training, or a backbone to build one from: an "
            "MLLM such as Qwen/Qwen2-VL-2B-Instruct (backbone 'mllm', the paper's) or a CLIP/SigLIP model "
            "('dual_encoder')."
        },
    )
    backbone: str | None = field(
        default=None,
        metadata={
            "help": "How to build the embedder from a backbone that is not yet a MAPLE checkpoint: 'mllm' or "
            "'dual_encoder'. Inferred for the supported MLLMs (Qwen2/2.5/3-VL, LLaVA-1.5, LLaVA-NeXT, InternVL, Idefics3, "
            "SmolVLM, Gemma 3, Pixtral (a LLaVA with a Pixtral tower), Mistral 3) and CLIP/SigLIP models; ignored for MAPLE checkpoints.",
            "choices": list(BACKBONES),
        },
    )
    tiny: str | None = field(
        default=None,
        metadata={
            "help": "Train a tiny random model instead: 'dual_encoder', 'mllm' (a Qwen2-VL) or an MLLM family such as "
            "'smolvlm' or 'pixtral'; an offline smoke run that needs no download.",
            "choices": [*BACKBONES, *MLLM_FAMILIES],
        },
    )
    use_peft: bool = field(
        default=False,
        metadata={
            "help": "Train LoRA adapters instead of all weights (modeling_maple.lora.maple_lora_config; MAPLE: on the "
            "language model, vision tower and connector frozen; a dual encoder: on both towers' attention). The "
            "saved checkpoint has the adapters merged."
        },
    )
    image_processor_kwargs: dict | str | None = field(
        default=None,
        metadata={
            "help": "Image processor settings that override the checkpoint's, as JSON (a mapping in a --config file), "
            "e.g. '{\"max_pixels\": 153664}': Qwen-VL images of at most 392 x 392 pixels, as MAPLE's 384 x 384 "
            "images are sized (196 tokens); InternVL "
            "'{\"max_patches\": 6}' (tiles), Idefics3/SmolVLM '{\"size\": {\"longest_edge\": 768}}'. Saved with the "
            "trained model's processor."
        },
    )
    lora_r: int = field(default=LORA_RANK, metadata={"help": f"LoRA rank (MAPLE: {LORA_RANK})."})
    lora_alpha: int = field(default=LORA_ALPHA, metadata={"help": f"LoRA scaling numerator alpha (MAPLE: {LORA_ALPHA})."})
    lora_dropout: float = field(default=LORA_DROPOUT, metadata={"help": "Dropout on the LoRA input (not stated in MAPLE)."})
    license: str | None = field(
        default=None,
        metadata={"help": "The trained model's licence in its card, a Hub licence id (e.g. apache-2.0) or a name. "
                          "Default: the base model's, read from its card."},
    )

    def __post_init__(self) -> None:
        # A YAML config's values skip argparse's choices and types.
        for name in ("backbone", "tiny"):
            choices = next(f for f in fields(self) if f.name == name).metadata["choices"]
            if getattr(self, name) is not None and getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        if self.image_processor_kwargs is not None:
            self.image_processor_kwargs = image_settings(self.image_processor_kwargs, "--image_processor_kwargs")
        if not (isinstance(self.lora_r, int) and self.lora_r >= 1):
            raise ValueError(f"lora_r is a rank and must be an integer >= 1, got {self.lora_r!r}")
        if not (isinstance(self.lora_alpha, (int, float)) and self.lora_alpha > 0):
            raise ValueError(f"lora_alpha must be > 0, got {self.lora_alpha!r}")
        if not (isinstance(self.lora_dropout, (int, float)) and 0 <= self.lora_dropout < 1):
            raise ValueError(f"lora_dropout is a probability and must be in [0, 1), got {self.lora_dropout!r}")


@dataclass
class DataArguments:
    """Where the preference dataset is (see trainer/schema.py for its columns)."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "The preference dataset: a folder written by `save_to_disk`, a folder of parquet files, one "
            "parquet/JSON Lines file (its rows are the train split), or a Hub dataset id."
        },
    )
    dataset_config: str | None = field(
        default=None, metadata={"help": "Configuration (subset) of a Hub dataset, e.g. the judge it was scored with."}
    )
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_test_split: str | None = field(
        default=None,
        metadata={
            "help": "Split to evaluate on (loss, reward accuracy, retrieval R@1): at every --eval_strategy point, or "
            "once at the end when that is 'no'; none if unset."
        },
    )


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    model_args, data_args, training_args = _parse(parser, argv)

    # heavy imports only once the arguments are known to be fine
    from .rpa_trainer import RPATrainer

    resume, splits, model, processor = _load_inputs(parser, model_args, data_args, training_args)
    peft_config = None
    if model_args.use_peft:
        from modeling_maple.lora import maple_lora_config

        peft_config = maple_lora_config(
            model, r=model_args.lora_r, lora_alpha=model_args.lora_alpha, lora_dropout=model_args.lora_dropout
        )
    try:
        trainer = RPATrainer(
            model,
            args=training_args,
            train_dataset=splits[data_args.dataset_train_split],
            eval_dataset=splits[data_args.dataset_test_split] if data_args.dataset_test_split else None,
            processing_class=processor,
            peft_config=peft_config,
        )
    # options that transformers checks only here (an unknown --report_to, --eval_strategy without a test split, ...)
    except (ValueError, RuntimeError) as error:
        parser.error(" ".join(str(error).split()))
    except Exception as error:  # with --push_to_hub, `Trainer` creates the Hub repo here
        if not training_args.push_to_hub or (problem := hub_failure(error, _hub_repo_id(training_args), writing=True)) is None:
            raise
        return report_error(parser.prog, f"--push_to_hub: {problem}; nothing was trained", status=1)
    return _train_and_save(parser, trainer, resume, splits, model_args, data_args, training_args)


def _parser() -> _Parser:
    """`maple train`'s parser: the options of `ModelArguments`, `DataArguments` and `RPAConfig`, with help of our own
    where TRL's describes what an option does to a language model."""
    parser = _Parser(
        (ModelArguments, DataArguments, RPAConfig),
        prog="maple train",
        description=__doc__.split("\n")[0],
        epilog="--config FILE.yaml: a YAML mapping of any of the options above (flags given as well override it); "
        "an `env:` mapping in it sets environment variables before the libraries that read them are imported (HF_HOME, "
        "HF_HUB_OFFLINE, HF_DATASETS_CACHE, ...; under `python -m trainer.cli`, torch is imported first: set "
        "OMP_NUM_THREADS in the shell).",
    )
    own_help = unused_dpo_field_help() | {
        "resume_from_checkpoint": "A checkpoint folder to resume from; 'true': the last complete checkpoint-* in "
        "output_dir; 'false': train from scratch, the earlier run's checkpoints moved to output_dir/_earlier-run-N (an "
        "output_dir holding checkpoints needs one of the three). A checkpoint resumes only under the recipe it was "
        "trained with (rpa_recipe.json: loss, lambda, batch size, number of processes, learning rate, ...).",
        "hub_token": "The Hub token of every Hub request: the push, and the reads of a Hub --model_name_or_path (its "
        "weights, and its licence for the model card) and --dataset_name (its rows and stats.json); unset: HF_TOKEN, "
        "else the token `hf auth login` saved.",
    }
    for action in parser._actions:
        action.help = own_help.get(action.dest, action.help)
    # what TrainingArguments makes of None, said in --help (which read "default: None")
    parser.set_defaults(output_dir="trainer_output")
    return parser


def _parse(parser: _Parser, argv: list[str] | None) -> tuple[ModelArguments, DataArguments, RPAConfig]:
    """The parsed options (of `argv`, by default the command line's, and of a `--config` file); a usage error (exit
    status 2) for a bad config file, a value a dataclass refuses, options that do not go together and an
    `--output_dir` that cannot be a folder."""
    argv = sys.argv[1:] if argv is None else list(argv)
    argv = config_option_split(argv)
    _check_config_file(parser, argv)
    try:
        model_args, data_args, training_args = parser.parse_args_and_config(argv)
    # the dataclasses' own checks (e.g. RPAConfig's rejected settings; transformers words some over several lines);
    # TypeError: a YAML value of the wrong type
    except (ValueError, TypeError) as error:
        parser.error(" ".join(str(error).split()))
    if (model_args.model_name_or_path is None) == (model_args.tiny is None):
        parser.error("give exactly one of --model_name_or_path and --tiny")
    loading_options = {"--backbone": model_args.backbone, "--model_init_kwargs": training_args.model_init_kwargs,
                       "--image_processor_kwargs": model_args.image_processor_kwargs,
                       "--trust_remote_code": training_args.trust_remote_code}
    if model_args.tiny and (ignored := [option for option, value in loading_options.items() if value]):
        parser.error(f"{', '.join(ignored)}: --tiny builds a random float32 model; these apply to --model_name_or_path")
    lora_defaults = {option.name: option.default for option in fields(ModelArguments) if option.name.startswith("lora_")}
    if not model_args.use_peft and (ignored := [f"--{name}" for name, default in lora_defaults.items()
                                                if getattr(model_args, name) != default]):
        parser.error(f"{', '.join(ignored)}: LoRA settings, which apply with --use_peft only (without it every weight "
                     "is trained)")
    if data_args.dataset_name is None:
        parser.error("--dataset_name is required")
    # transformers reads only a positive max_steps as a length (a negative one says "count epochs"), yet its loop
    # stops after the first step of max_steps=0; and with no epochs it trains nothing. Either run saved (and pushed)
    # the model as trained, with exit status 0.
    if training_args.max_steps == 0:
        parser.error("--max_steps 0: transformers trains one step for it; give a number of steps >= 1, or leave it "
                     "out to train --num_train_epochs epochs")
    if training_args.max_steps < 0 and training_args.num_train_epochs <= 0:
        parser.error(f"--num_train_epochs {training_args.num_train_epochs}: no step would be trained, and the model "
                     "saved as trained; give a number of epochs > 0, or --max_steps")
    if problem := folder_problem(training_args.output_dir, "--output_dir"):
        parser.error(problem)
    return model_args, data_args, training_args


def _load_inputs(
    parser: _Parser, model_args: ModelArguments, data_args: DataArguments, training_args: RPAConfig
) -> tuple[str | None, DatasetDict, MapleModel, MapleProcessor]:
    """(checkpoint to resume or None, the dataset's splits, model, processor), each input checked before the next,
    costlier one loads; a usage error naming the first that is wrong (`TrainingInputError`)."""
    from .checkpoints import data_recipe, image_recipe, lora_recipe, model_recipe

    try:
        # Cheapest first: paths that exist or could be Hub ids, the checkpoint to resume, then the dataset, then the
        # (larger) model.
        if model_args.model_name_or_path is not None:
            _check_reference("--model_name_or_path", model_args.model_name_or_path)
        _check_reference("--dataset_name", data_args.dataset_name)
        resume = checkpoint_to_resume(training_args)
        lora = lora_recipe(model_args.lora_r, model_args.lora_alpha) if model_args.use_peft else None
        if resume is not None:
            _check_resume_recipe(resume, training_args, lora)
            _check_steps_left(resume, training_args)
        splits = load_preference_splits(data_args, token=training_args.hub_token)
        if resume is not None:  # other data: a resume would skip the rows of another set's first batches
            _check_resume_recipe(resume, training_args, lora, data=data_recipe(splits[data_args.dataset_train_split]))
        model, processor = load_model_and_processor(model_args, training_args)
        if resume is not None:  # now that the model is known: another model's checkpoint does not fit it
            _check_resume_recipe(resume, training_args, lora, model_recipe(model.config),
                                 image_recipe(processor.image_processor))
    except TrainingInputError as error:
        parser.error(str(error))
    return resume, splits, model, processor


def _train_and_save(
    parser: _Parser, trainer: RPATrainer, resume: str | None, splits: DatasetDict, model_args: ModelArguments,
    data_args: DataArguments, training_args: RPAConfig,
) -> int:
    """Train (resuming `resume`), evaluate a test split at least once, and save the model with its card or push it;
    the exit status. An earlier run's results in output_dir (`RESULTS_FILES`) go: they describe another model. A
    private push to an existing public repo is refused before training.

    The trainer is ended (`RPATrainer.end`, which destroys the process group) where every process gets to: after the
    save or push, or when the refusal stops the run. Not on an error of one process in training (an undecodable
    image of its own batch): its peers wait in a collective, and destroying the group then can hang under NCCL;
    the launcher tears the job down instead."""
    if (problem := _private_push_problem(trainer, training_args)) is not None:
        trainer.end()
        return report_error(parser.prog, f"--hub_private_repo: {problem}; nothing was trained", status=1)
    # every card of the run, those pushed with checkpoints too, names the data and the judge
    judge = preference_judge(data_args.dataset_name, data_args.dataset_config, token=training_args.hub_token)
    trainer.model_card_kwargs = {"dataset_name": data_args.dataset_name, "judge_id": judge, "license": model_args.license}
    # only now, an error above must not move them; the main process first, the others then find none
    with training_args.main_process_first(local=False, desc="setting earlier checkpoints aside"):
        set_aside_earlier_checkpoints(training_args)
    metrics = _train_and_evaluate(parser, trainer, resume, splits, data_args, training_args)
    _save_results(trainer, metrics, training_args)
    try:
        return _save_or_push(parser, trainer, training_args)
    finally:
        trainer.end()  # destroys the process group of several processes while all are alive, as transformers advises


def _private_push_problem(trainer: RPATrainer, training_args: RPAConfig) -> str | None:
    """Why `--push_to_hub --hub_private_repo` cannot keep the model private (the repo exists and is public, or the
    Hub cannot be asked), the same in every process: the main process asks the Hub and tells the others, which must
    refuse together (one that went on would wait for the others in training). None when it can, or without those
    options."""
    if not (training_args.push_to_hub and training_args.hub_private_repo):
        return None
    from accelerate.utils import broadcast_object_list
    from huggingface_hub import HfApi

    problem = None
    if trainer.is_world_process_zero():  # the one that made the repo (`Trainer.init_hf_repo`) and knows its id
        try:  # `Trainer` leaves an existing repo's visibility as it is
            check_private(HfApi(token=training_args.hub_token), trainer.hub_model_id, "model")
        except Exception as error:
            if (problem := hub_failure(error, trainer.hub_model_id, writing=True)) is None:
                raise
    return broadcast_object_list([problem])[0]


def _train_and_evaluate(
    parser: _Parser, trainer: RPATrainer, resume: str | None, splits: DatasetDict, data_args: DataArguments,
    training_args: RPAConfig,
) -> dict[str, float] | None:
    """Train (resuming `resume`), then evaluate a test split at the end when no `--eval_strategy` evaluated it; the
    end's metrics, logged, or None. An image that does not decode while training is a usage error naming its row."""
    from .schema import UndecodableImageError

    try:
        trainer.train(resume_from_checkpoint=resume)
    except UndecodableImageError as error:  # the loader cannot say which row: find it, as the error advises
        _close_progress_bars(trainer)  # the error line goes below the bar, not onto it
        split = data_args.dataset_train_split if error.split == "train" else data_args.dataset_test_split
        where = first_undecodable_image(splits[split], error.split) if split in splits else None
        parser.error(where or str(error))
    if trainer.eval_dataset is None or training_args.eval_strategy != "no":
        return None
    # a --dataset_test_split is evaluated at least once, at the end, as transformers' example scripts do
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    return metrics


def _save_results(trainer: RPATrainer, metrics: dict[str, float] | None, training_args: RPAConfig) -> None:
    """Replace the results in output_dir with this run's: the end's evaluation `metrics`, if any."""
    from .rpa_trainer import RESULTS_FILES

    # The results in output_dir are the model's saved there: an earlier run's (resumed, or trained from scratch into
    # the folder) describe another model, and `save_metrics` would merge this run's into its all_results.json
    if trainer.is_world_process_zero():
        for name in RESULTS_FILES:
            Path(training_args.output_dir, name).unlink(missing_ok=True)
    if metrics is not None:
        trainer.save_metrics("eval", metrics)


def _save_or_push(parser: _Parser, trainer: RPATrainer, training_args: RPAConfig) -> int:
    """Save the trained model with its card in output_dir, or push it (`--push_to_hub`) and delete from the repo an
    earlier run's files this push did not replace; the exit status, a failed push or deletion reported."""
    if not training_args.push_to_hub:
        trainer.save_model(training_args.output_dir)
        trainer.create_model_card()
        return 0
    try:
        trainer.push_to_hub()  # saves the model and writes the card first (save_model would push a second time)
    except Exception as error:
        repo_id = trainer.hub_model_id or _hub_repo_id(training_args)
        if (problem := hub_failure(error, repo_id, writing=True)) is None:
            raise
        return report_error(parser.prog, f"pushing failed: {problem}. The trained model is saved in "
                                         f"{training_args.output_dir}: upload it with "
                                         f"`{_upload_command(repo_id, training_args)}`", status=1)
    if trainer.is_world_process_zero():
        stale: list[str] | None = None  # None until the repo's files are listed
        try:
            stale = _earlier_runs_files(trainer.hub_model_id, training_args)
            if stale:
                _delete_from_repo(trainer.hub_model_id, stale, training_args)
        except Exception as error:  # the model is pushed: only the clean-up failed
            if (problem := hub_failure(error, trainer.hub_model_id, writing=stale is not None)) is None:
                raise
            if stale is None:
                return report_error(parser.prog, f"the model is pushed, but listing the repo's files to delete an "
                                                 f"earlier run's failed: {problem}; see whether an earlier run's "
                                                 f"{', '.join(_files_this_run_did_not_write(training_args))} are left in the repo beside this model",
                                    status=1)
            return report_error(parser.prog, f"the model is pushed, but deleting an earlier run's files from the "
                                             f"repo failed: {problem}; delete them with `hf repos delete-files "
                                             f"{trainer.hub_model_id}{_revision_option(training_args)} {' '.join(stale)}`",
                                status=1)
    return 0


# the files of output_dir that `Trainer.push_to_hub` leaves out of its upload (its `ignore_patterns`): checkpoints, and
# "_*" folders such as `EARLIER_RUN_FOLDER`
PUSH_IGNORE_PATTERNS = ("_*", f"{PREFIX_CHECKPOINT_DIR}-*")


def _upload_command(repo_id: str, training_args: RPAConfig) -> str:
    """The `hf upload` command that uploads output_dir to Hub repo `repo_id` as `Trainer.push_to_hub` does: at
    `--hub_revision`, without the files it leaves out (`PUSH_IGNORE_PATTERNS`)."""
    excludes = "".join(f" --exclude {shlex.quote(pattern)}" for pattern in PUSH_IGNORE_PATTERNS)
    return (f"hf upload {repo_id} {shlex.quote(str(training_args.output_dir))} .{_revision_option(training_args)}"
            f"{excludes}")


def _revision_option(training_args: RPAConfig) -> str:
    """The `--revision` option of an `hf` command acting on the repo at `--hub_revision` (with its leading space), or
    '' without one."""
    return f" --revision {shlex.quote(training_args.hub_revision)}" if training_args.hub_revision else ""


def _close_progress_bars(trainer: RPATrainer) -> None:
    """Close the training and evaluation progress bars, as the end of training does: a bar left open keeps the
    cursor on its line."""
    from transformers.trainer_callback import ProgressCallback

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, ProgressCallback):
            for bar in (callback.prediction_bar, callback.training_bar):
                if bar is not None:
                    bar.close()


def _hub_repo_id(training_args: RPAConfig) -> str:
    """The repo `Trainer` pushes to: `--hub_model_id`, else the output folder's name (under the token's user)."""
    return training_args.hub_model_id or Path(training_args.output_dir).absolute().name


def preference_judge(location: str, config: str | None = None, token: str | None = None) -> str | None:
    """The judge that scored a preference dataset `maple build-preferences` made, for the model card: from the build's
    stats.json, beside the shards in a local work dir (`--dataset_name OUT/work/shards`), or in a Hub repo it pushed
    `stats/<config>/stats.json` (without `config`, the repo's only one), read with `token` (None: HF_TOKEN or the saved
    login); None where there is none (or, offline, none cached)."""
    path = expanded_path(location)
    if path.exists():
        folder = path if path.is_dir() else path.parent
        found = [candidate for candidate in (folder / "stats.json", folder.parent / "stats.json") if candidate.is_file()]
    else:
        from huggingface_hub import HfApi, hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError

        try:
            pattern = rf"stats/{re.escape(config)}/stats\.json" if config else r"stats/[^/]+/stats\.json"
            listed = HfApi(token=token).list_repo_files(location, repo_type="dataset")
            files = [file for file in listed if re.fullmatch(pattern, file)]
            found = [Path(hf_hub_download(location, files[0], repo_type="dataset", token=token))] if len(files) == 1 else []
        except (OSError, ValueError, HfHubHTTPError):  # offline, not found, gated: the card says "not recorded"
            return None
    try:
        judge = json.loads(found[0].read_text()).get("judge") if found else None
    except (OSError, ValueError, AttributeError):
        return None
    return judge if isinstance(judge, str) else None


def _earlier_runs_files(repo_id: str, training_args: RPAConfig) -> list[str]:
    """The files of Hub repo `repo_id` (at `--hub_revision`) among `_files_this_run_did_not_write`: an earlier run's
    results, LoRA state and card figures, which `Trainer.push_to_hub` (an upload, which deletes nothing) left beside
    this run's model and card. The repo is not listed when this run wrote them all."""
    from huggingface_hub import HfApi

    if not (unwritten := _files_this_run_did_not_write(training_args)):
        return []
    pushed = set(HfApi(token=training_args.hub_token).list_repo_files(repo_id, revision=training_args.hub_revision))
    return [name for name in unwritten if name in pushed]


def _files_this_run_did_not_write(training_args: RPAConfig) -> list[str]:
    """The files a run may write beside its model (results, LoRA state, card figures) that are not in this run's
    output_dir, so not in its push."""
    from model_cards.cards import CURVES_FILE, GAP_HISTOGRAM_FILE

    from .checkpoints import PEFT_TRAINABLE_STATE
    from .rpa_trainer import RESULTS_FILES

    return [name for name in (*RESULTS_FILES, PEFT_TRAINABLE_STATE, CURVES_FILE, GAP_HISTOGRAM_FILE)
            if not Path(training_args.output_dir, name).exists()]


def _delete_from_repo(repo_id: str, names: list[str], training_args: RPAConfig) -> None:
    """Delete files `names` from Hub repo `repo_id` (at `--hub_revision`) in one commit."""
    from huggingface_hub import CommitOperationDelete, HfApi

    HfApi(token=training_args.hub_token).create_commit(
        repo_id, [CommitOperationDelete(path_in_repo=name) for name in names],
        commit_message="Remove an earlier run's files", revision=training_args.hub_revision,
    )


# where `--resume_from_checkpoint false` moves an earlier run's checkpoints, in output_dir; the leading "_" keeps it out
# of `push_to_hub`'s uploads of output_dir (`Trainer` ignores "_*" and "checkpoint-*", at the top level only)
EARLIER_RUN_FOLDER = "_earlier-run-{n}"


def checkpoint_to_resume(training_args: RPAConfig) -> str | None:
    """The checkpoint to resume from: `--resume_from_checkpoint PATH`, or with `true` the last complete one in
    `output_dir` (a save cut short by a kill has no trainer_state.json); none with `false`. Unset, an `output_dir` that
    holds checkpoints is refused: resuming them unasked could continue another model's run, and training over them
    would overwrite them."""
    from .checkpoints import TRAINER_STATE_NAME, is_complete_checkpoint, last_complete_checkpoint, run_checkpoints

    value, output_dir = _resume_value(training_args), training_args.output_dir
    checkpoints = run_checkpoints(output_dir)
    if value is None:
        if checkpoints:
            raise TrainingInputError(
                f"{output_dir} holds checkpoints of an earlier run (the last: {os.path.basename(checkpoints[-1])}): pass "
                "--resume_from_checkpoint true to resume it, --resume_from_checkpoint false to train from scratch (its "
                f"checkpoints are moved to {EARLIER_RUN_FOLDER.format(n='N')}), or another --output_dir"
            )
        return None
    if value == "false":
        return None
    if value == "true":
        last = last_complete_checkpoint(output_dir)
        if last is None:
            raise TrainingInputError(
                f"--resume_from_checkpoint true: {output_dir} holds no complete checkpoint-* folder (with "
                f"{TRAINER_STATE_NAME})"
            )
        for partial in checkpoints[checkpoints.index(last) + 1 :]:
            print(f"maple train: {partial} is incomplete (no {TRAINER_STATE_NAME}: its save was cut short); resuming "
                  f"{last}", file=sys.stderr)
        return last
    if not os.path.isdir(value):
        raise TrainingInputError(f"--resume_from_checkpoint: no such folder: {value}")
    if not is_complete_checkpoint(value):
        raise TrainingInputError(
            f"--resume_from_checkpoint {value}: not a checkpoint (no {TRAINER_STATE_NAME}); expected a checkpoint-* "
            "folder of a run"
        )
    return value


def set_aside_earlier_checkpoints(training_args: RPAConfig) -> None:
    """With `--resume_from_checkpoint false`, moves the checkpoint-* folders of an earlier run in `output_dir` into
    `output_dir/_earlier-run-N/`: left in place, a later `true` would resume the earlier run's last checkpoint, numbered
    past the new run's, with its weights and data."""
    from .checkpoints import run_checkpoints

    checkpoints = run_checkpoints(training_args.output_dir)
    if _resume_value(training_args) != "false" or not checkpoints:
        return
    n = 1
    while os.path.exists(aside := os.path.join(training_args.output_dir, EARLIER_RUN_FOLDER.format(n=n))):
        n += 1
    os.makedirs(aside)
    for checkpoint in checkpoints:
        os.rename(checkpoint, os.path.join(aside, os.path.basename(checkpoint)))
    print(f"maple train: the earlier run's {len(checkpoints)} checkpoint(s) moved to {aside}", file=sys.stderr)


def _check_steps_left(checkpoint: str, training_args: RPAConfig) -> None:
    """Refuse to resume a checkpoint that the training asked for does not go past: `Trainer` would train no step and
    save the checkpoint's weights as the result, with exit status 0. The length is `max_steps`, else the epochs, which
    compare with the checkpoint's epoch as `Trainer` counts them on the same data: whole epochs only, as `Trainer`
    trains ceil(epochs x steps per epoch) steps, so a fractional count may leave steps past a checkpoint beyond it."""
    from .checkpoints import TRAINER_STATE_NAME

    with open(os.path.join(checkpoint, TRAINER_STATE_NAME)) as handle:
        state = json.load(handle)
    step, epoch = state["global_step"], state["epoch"]
    if training_args.max_steps > 0:
        option, length, done = "--max_steps", training_args.max_steps, step >= training_args.max_steps
    else:
        epochs = training_args.num_train_epochs
        option, length, done = "--num_train_epochs", epochs, float(epochs).is_integer() and epoch >= epochs
    if done:
        raise TrainingInputError(
            f"--resume_from_checkpoint {_resume_value(training_args)}: {checkpoint} is at step {step} (epoch {epoch:g}), "
            f"which {option} {length} does not go past: nothing would be trained, and its weights saved as the result; "
            f"give a longer {option} to train on"
        )


def _resume_value(training_args: RPAConfig) -> str | None:
    """`--resume_from_checkpoint` as "true", "false", a path or None (a YAML config may give a bool or 1/0)."""
    value = training_args.resume_from_checkpoint
    if value is None:
        return None
    value = str(value)
    if value.lower() in ("false", "no", "0"):
        return "false"
    if value.lower() in ("true", "yes", "1"):
        return "true"
    return value


def _check_config_file(parser: _Parser, argv: list[str]) -> None:
    """Report a bad `--config` file as one line naming it: TrlParser reads the file itself, but a missing
    file, invalid YAML, a YAML that is not a mapping and an unknown key escape it as tracebacks (the last
    with a hint about TrlParser's own arguments)."""
    if "--config" not in argv:
        return
    position = argv.index("--config") + 1
    if position == len(argv):
        parser.error("--config needs a YAML file")
    path = argv[position]
    try:
        with open(path) as handle:
            config = yaml.safe_load(handle)
    except OSError as error:
        parser.error(f"--config {path}: {error.strerror}")
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else path
        parser.error(f"{where}: not valid YAML: {getattr(error, 'problem', None) or error}")
    if not isinstance(config, dict):
        parser.error(f"{path}: expected a YAML mapping of options (name: value), got {config!r:.80}")
    if repeated := _repeated_key(path):
        key, first_line, line = repeated
        parser.error(f"{path}: key {key!r} given twice, on lines {first_line} and {line}; YAML keeps the last")
    known = {action.dest for action in parser._actions} | {"env"}
    unknown = [key for key in config if key not in known]
    if unknown:
        names = ", ".join(map(repr, unknown))
        parser.error(f"{path}: unknown key {names}; keys are the options of `maple train --help` without '--'")
    if not isinstance(config.get("env", {}), dict):
        parser.error(f"{path}: expected 'env' to be a mapping of environment variables, got {config['env']!r:.80}")
    actions = {action.dest: action for action in parser._actions}
    scalar_fields, nullable_fields = _scalar_fields(parser.dataclass_types), _nullable_fields(parser.dataclass_types)
    list_fields = _list_fields(parser.dataclass_types)
    for key, value in config.items():
        action = actions.get(key)
        if value is None:  # YAML's null: the option unset, where its type allows that; else a TypeError once training ran
            if action is not None and key not in nullable_fields:
                expected = (_NULL_UNHANDLED[key] if key in _NULL_UNHANDLED else
                            _KIND_NAMES[scalar_fields[key]] if key in scalar_fields else
                            f"one of {', '.join(map(repr, action.choices))}" if action.choices is not None else "a value")
                parser.error(f"{path}: {key}: expected {expected}, got null (leave it out for the default, {action.default!r})")
            continue
        # argparse converts a YAML string as it would a flag's, and its error names the flag, not this file
        convert = getattr(action, "type", None)
        if isinstance(value, str) and callable(convert):
            try:
                value = convert(value)
            except (TypeError, ValueError, argparse.ArgumentTypeError):
                parser.error(f"{path}: {key}: invalid {getattr(convert, '__name__', 'option')} value: {value!r}")
            if (kinds := list_fields.get(key)) is not None and not kinds[1]:  # a list of numbers, given one
                parser.error(f"{path}: {key}: expected {_list_kind_name(kinds[0])}, got {value!r:.80}")
        # YAML's own numbers and lists reach the config unconverted: a float for a count failed only once training ran,
        # a number for a repo id at the first checkpoint
        elif (kind := scalar_fields.get(key)) is not None and not _is_value_of(value, kind):
            parser.error(f"{path}: {key}: expected {_KIND_NAMES[kind]}, got {value!r:.80}")
        elif (kinds := list_fields.get(key)) is not None and not _is_list_value_of(value, *kinds):
            item_kind, takes_one = kinds
            parser.error(f"{path}: {key}: expected {_KIND_NAMES[item_kind] + ' or ' if takes_one else ''}"
                         f"{_list_kind_name(item_kind)}, got {value!r:.80}")
        if action is not None and action.choices is not None and value not in action.choices:
            parser.error(f"{path}: {key}: invalid choice {value!r} (choose from {', '.join(map(repr, action.choices))})"
                         f"{_yaml_boolean_hint(value, action.choices)}")


def _repeated_key(path: str) -> tuple[str, int, int] | None:
    """The first top-level key of a YAML mapping file given twice, with the lines of both (1-based), or None. YAML
    loaders keep the last value without a word, so an edit of the first one would be dropped."""
    with open(path) as handle:
        mapping = yaml.compose(handle, Loader=yaml.SafeLoader)
    first_lines: dict[str, int] = {}
    for key_node, _ in mapping.value:
        line = key_node.start_mark.line + 1
        if key_node.value in first_lines:
            return key_node.value, first_lines[key_node.value], line
        first_lines[key_node.value] = line
    return None


def _check_resume_recipe(
    checkpoint: str, args: RPAConfig, lora: dict | None, model: dict | None = None, images: dict | None = None,
    data: dict | None = None,
) -> None:
    """`checkpoints.check_recipe`, its error one line of `maple train`'s."""
    from .checkpoints import check_recipe

    try:
        check_recipe(checkpoint, args, lora, model, images, data)
    except ValueError as error:
        raise TrainingInputError(str(error)) from None


# Options typed `str` that take other YAML values too: a YAML boolean for a checkpoint path (`_resume_value`), and
# transformers' documented `fsdp: true` or a list of FSDP options
_NOT_ONLY_STRINGS = ("resume_from_checkpoint", "fsdp")


def _scalar_fields(dataclass_types) -> dict[str, type]:
    """The options typed `bool`, `int`, `float` or `str` (or that or None), by name, with that type, but
    `_NOT_ONLY_STRINGS`; a `list[str]` is none of them."""
    scalar = {}
    for dataclass_type in dataclass_types:
        for name, hint in typing.get_type_hints(dataclass_type).items():
            kinds = [kind for kind in _union_members(hint) if kind is not type(None)]
            if len(kinds) == 1 and kinds[0] in _KIND_NAMES and name not in _NOT_ONLY_STRINGS:
                scalar[name] = kinds[0]
    return scalar


# Options typed `X | None` whose None transformers does not handle, by what they take instead: `TrainingArguments`
# makes `report_to=None` the list [None], which `Trainer` refuses ("None is not supported") once the dataset and the
# model have loaded (transformers 4 read None as 'all')
_NULL_UNHANDLED = {"report_to": "an integration name, a list of them, 'all' or 'none'"}


def _list_fields(dataclass_types) -> dict[str, tuple[type, bool]]:
    """The options typed `list[X]` (or that or None, or X) for X `str`, `int` or `float`, by name: (X, whether a lone
    X is taken too: where the type says so, and for strings, which TRL makes a list of one (`loss_type: sigmoid`)), but
    `_NOT_ONLY_STRINGS`. YAML lists reach the config unconverted: `report_to: [null]` or `report_to: 5` failed only
    once the model had loaded, naming neither the file nor the key, and `loss_weights: '1.0'` in TRL's len()."""
    lists = {}
    for dataclass_type in dataclass_types:
        for name, hint in typing.get_type_hints(dataclass_type).items():
            kinds = [kind for kind in _union_members(hint) if kind is not type(None)]
            items = [typing.get_args(kind)[0] for kind in kinds if typing.get_origin(kind) is list and typing.get_args(kind)]
            if len(items) == 1 and items[0] in (str, int, float) and name not in _NOT_ONLY_STRINGS:
                lists[name] = (items[0], items[0] in kinds or items[0] is str)
    return lists


def _list_kind_name(item_kind: type) -> str:
    """"a list of strings", "a list of numbers", ..."""
    return f"a list of {_KIND_NAMES[item_kind].removeprefix('a ').removeprefix('an ')}s"


def _is_list_value_of(value: object, item_kind: type, takes_one: bool) -> bool:
    """Whether a YAML value is a list of `item_kind` values, or one such value where the option takes one."""
    if isinstance(value, list):
        return all(_is_value_of(item, item_kind) for item in value)
    return takes_one and _is_value_of(value, item_kind)


def _nullable_fields(dataclass_types) -> set[str]:
    """The options a YAML null may set: those typed `X | None` but `_NULL_UNHANDLED`, and those whose default is None
    whatever their type."""
    nullable = set()
    for dataclass_type in dataclass_types:
        hints = typing.get_type_hints(dataclass_type)
        nullable |= {option.name for option in fields(dataclass_type) if option.default is None or
                     (type(None) in _union_members(hints[option.name]) and option.name not in _NULL_UNHANDLED)}
    return nullable


def _union_members(hint: Any) -> tuple:
    """The types a type hint allows: a union's members, else the hint itself."""
    return typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)


def _yaml_boolean_hint(value: object, choices) -> str:
    """For a YAML boolean given for an option of string choices: which unquoted word YAML read as it, to quote. YAML
    1.1 reads `no`/`off` as false and `yes`/`on` as true, so `save_strategy: no` arrives as False."""
    if not isinstance(value, bool):
        return ""
    words = [word for word in (("yes", "on") if value else ("no", "off")) if word in choices]
    return f"; YAML reads an unquoted {words[0]} as {str(value).lower()}: write '{words[0]}'" if words else ""


def _is_value_of(value: object, kind: type) -> bool:
    """Whether a YAML value is a `str` option's string, a `bool` option's boolean, an `int` option's integer or a
    `float` option's number (an integer too). Nothing converts them: `2.0` for a count, or `0` for a switch, reached
    transformers and torch as they are, which failed on them once the model had loaded."""
    if kind in (str, bool):
        return isinstance(value, kind)
    return not isinstance(value, bool) and isinstance(value, (int, float) if kind is float else int)


_KIND_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _check_reference(option: str, reference: str) -> None:
    """A reference that cannot be a Hub id ('./x', '/abs/x', 'a/b/c') must be an existing path: said
    plainly, instead of the Hub-id validation errors that transformers and datasets raise for it."""
    if not os.path.exists(reference) and not is_hub_id(reference):
        raise TrainingInputError(f"{option}: no such folder: {reference}")


def model_loading_kwargs(training_args: RPAConfig) -> dict:
    """`from_pretrained` arguments from `--model_init_kwargs` (`rpa_config.from_pretrained_kwargs`); a bad value is a
    one-line error."""
    try:
        return from_pretrained_kwargs(training_args.model_init_kwargs, training_args.trust_remote_code, training_args.hub_token)
    except ValueError as error:
        raise TrainingInputError(f"--model_init_kwargs: {error}") from None


def load_model_and_processor(model_args: ModelArguments, training_args: RPAConfig) -> tuple[MapleModel, MapleProcessor]:
    """The MapleModel and MapleProcessor to train: tiny, or `modeling_maple.load_maple` (a MAPLE checkpoint, or one
    built from a backbone) with `model_loading_kwargs(training_args)` and `--trust_remote_code`, a Hub repo read with
    `--hub_token` (unless `--model_init_kwargs` names a token)."""
    from modeling_maple import BackboneLoadingError, ConfigOverrideError, MapleLoadError, load_maple

    if model_args.tiny:
        from modeling_maple.testing import build_tiny

        if model_args.tiny in MLLM_FAMILIES:
            return build_tiny("mllm", mllm_type=model_args.tiny)
        return build_tiny(model_args.tiny)
    name = model_args.model_name_or_path
    try:
        return load_maple(name, backbone=model_args.backbone, image_processor_kwargs=model_args.image_processor_kwargs,
                          **model_loading_kwargs(training_args))
    except (BackboneLoadingError, ConfigOverrideError) as error:
        raise TrainingInputError(f"--model_init_kwargs: {error}") from error
    except TypeError as error:  # a --model_init_kwargs key that from_pretrained passes on to the model's __init__
        if not training_args.model_init_kwargs:
            raise
        raise TrainingInputError(f"--model_init_kwargs: {error}") from error
    except MapleLoadError as error:  # (which names a local typo itself)
        raise TrainingInputError(f"--model_name_or_path {error}") from error
    except OSError as error:  # transformers: not on the Hub, or offline and not cached
        raise TrainingInputError(
            f"--model_name_or_path {name}: {' '.join(str(error).split())}{local_typo_hint(name)}"
        ) from error


# suffix -> the `datasets` builder that reads one data file (not CSV: a cell cannot hold the candidate lists)
DATA_FILE_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}


def _check_snapshot_has_its_card(folder: str, config: str | None) -> None:
    """Refuse a snapshot of a Hub dataset of several configs (`maple.dataset_layout.snapshot_config_folders`, as
    `MaplePreferences.from_pretrained` tells them apart) without the `configs` of its README.md: `datasets` reads such
    a folder as one config, every config's rows in one split (the same anchors twice, judged by two recipes), and knows
    no config to pick. So too a lone config whose folder is named as a split keyword (`push_to_hub(config_name="eval")`
    writes eval/train-00000-of-00001.parquet), which `datasets` reads as that split; a config named by `config` that
    `datasets` knows nothing of without the card; and a build's work dir, whose dataset is its shards/ folder."""
    if card_configs(folder):
        return
    if os.path.isdir(os.path.join(folder, "shards")):  # (datasets reads its JSON checkpoints beside them)
        from dataset_builders.builder import MANIFEST_FILE

        if os.path.isfile(os.path.join(folder, MANIFEST_FILE)):
            raise TrainingInputError(
                f"--dataset_name {folder}: is a build's work dir, whose dataset is the parquet files in its shards/ "
                f"folder: give --dataset_name {os.path.join(folder, 'shards')}, or read the work dir with "
                "MaplePreferences.from_pretrained"
            )
    configs = snapshot_config_folders(folder)
    misread_as = keyword_split(configs[0]) if len(configs) == 1 else None
    # without the card, datasets knows one config of a folder, "default"
    unknown_config = config not in (None, "default") and config in configs
    if len(configs) < 2 and misread_as is None and not unknown_config:
        return
    pick = os.path.join(folder, config if config in configs else next(name for name in configs if name != "."))
    if len(configs) > 1:
        held, them, why = f"the configs {', '.join(configs)}", "them", "every config's rows would be one split"
    elif misread_as is not None:
        held, them, why = f"the config {configs[0]}", "it", f"its rows would be the {misread_as} split"
    else:
        held, them, why = f"the config {configs[0]}", "it", f"datasets knows no config {config!r}"
    raise TrainingInputError(
        f"--dataset_name {folder}: holds {held} of a Hub dataset, without the README.md that names {them} for datasets "
        f"(read without it, {why}): give {'one' if len(configs) > 1 else 'the'} config's folder, e.g. --dataset_name "
        f"{pick}{' without --dataset_config' if config else ''}"
    )


def _check_each_file_has_its_split(folder: str) -> None:
    """Refuse a folder of data files that `datasets` would not read each as the one split its path names
    (`maple.dataset_layout.files_by_split`): one it leaves out (`test/0000.parquet` beside `data/train-00000-of-00001.parquet`,
    whose shard names it then reads alone) or reads as two splits (`train/val_subset/0000.parquet`, "train" and
    "validation": evaluated on rows it trains on); and a lone config's shard of a split named otherwise than its keyword
    (`paper/test_hard-00000-of-00001.parquet`, which `datasets` reads without the card as "test", merged with the
    test split: `maple.dataset_layout.check_shards_read_as_named`). A README.md whose `configs` name each split's files is
    followed as written. A `SplitLayoutError` naming the files."""
    if card_configs(folder):
        return
    configs = snapshot_config_folders(folder)
    config_folder = lone_config_folder(os.path.join(folder, configs[0])) if len(configs) == 1 else None
    if config_folder is None:
        files_by_split(folder)
    else:
        check_shards_read_as_named(folder, config_folder)


def load_preference_splits(data_args: DataArguments, token: str | None = None) -> DatasetDict:
    """The dataset's splits, from `save_to_disk` output, a folder of data files, one data file or the Hub (read with
    `token`; None: HF_TOKEN or the saved login)."""
    location = data_args.dataset_name
    file_builder = DATA_FILE_BUILDERS.get(os.path.splitext(location)[1].lower())
    if os.path.isfile(location) and file_builder is None:
        why = " (a CSV cell cannot hold the candidate lists)" if location.lower().endswith(".csv") else ""
        raise TrainingInputError(
            f"--dataset_name {location}: expected a folder, a Hub dataset id or a {'/'.join(DATA_FILE_BUILDERS)} file{why}"
        )
    saved = os.path.isfile(os.path.join(location, "dataset_dict.json")) or os.path.isfile(
        os.path.join(location, "state.json")
    )
    if data_args.dataset_config is not None and (saved or os.path.isfile(location)):
        raise TrainingInputError(f"--dataset_config {data_args.dataset_config}: {location} is one dataset, without configs")
    if not saved and os.path.isdir(location):
        try:
            _check_snapshot_has_its_card(location, data_args.dataset_config)
        except DatasetCardError as error:  # (a ValueError, which names the README.md and the problem itself)
            raise TrainingInputError(f"--dataset_name {location}: {error}") from None
    try:
        if saved:
            splits = load_from_disk(location)
        elif os.path.isfile(location):  # one file, as `datasets` reads it: its rows are the "train" split
            splits = load_dataset(file_builder, data_files={data_args.dataset_train_split: location})
        else:
            if os.path.isdir(location):
                _check_each_file_has_its_split(location)
            splits = load_dataset(location, data_args.dataset_config, token=token)
    except OSError as error:  # no data files, not on the Hub, offline and not cached
        problem = dataset_read_problem(error, location, token)
        raise TrainingInputError(f"--dataset_name {location}: {problem}{local_typo_hint(location)}") from error
    except SplitLayoutError as error:  # (a ValueError, which names the folder and its files itself)
        raise TrainingInputError(f"--dataset_name {error}") from None
    except IndexError as error:  # what datasets raises for a save_to_disk folder without rows
        raise TrainingInputError(f"--dataset_name {location}: a saved dataset without rows") from error
    except StopIteration as error:  # what datasets' JSON reader raises for an empty file
        raise TrainingInputError(f"--dataset_name {location}: an empty file") from error
    # pyarrow's ArrowInvalid (a truncated parquet file) is a ValueError; DatasetGenerationError: files datasets cannot
    # convert
    except (ValueError, DatasetGenerationError) as error:
        detail = " ".join(str(error.__cause__ or error).split())
        raise TrainingInputError(f"--dataset_name {location}: cannot be read as a dataset ({type(error).__name__}: {detail})") from error
    if isinstance(splits, Dataset):  # a single split saved on its own
        splits = DatasetDict({data_args.dataset_train_split: splits})
    # paths written relative to the data file (or folder) are found there
    data_folder = os.path.dirname(location) if os.path.isfile(location) else location if os.path.isdir(location) else None
    for split in filter(None, (data_args.dataset_train_split, data_args.dataset_test_split)):
        if split not in splits:
            raise TrainingInputError(f"{location} has no split {split!r}; it has {sorted(splits)}")
        splits[split] = _with_image_paths_read(splits[split], data_folder)
        try:  # before the model loads; RPATrainer skips this same object then
            validate_preference_dataset(splits[split], split)
        except ValueError as error:
            raise TrainingInputError(f"--dataset_name {location}: {error}") from None
    return splits


def _with_image_paths_read(dataset: Dataset, data_folder: str | None) -> Dataset:
    """`dataset` with image columns that hold file paths (a parquet or JSON Lines table of paths) read as images, which the
    Python API asks its user to cast. A relative path that is not a file from the current directory but is one from
    `data_folder` (the data file's folder) is read from there: a path as text, or an image stored as a path without its
    bytes (a table written from an image column cast from paths)."""
    def is_path(feature) -> bool:
        return isinstance(feature, Value) and feature.dtype in ("string", "large_string")

    def listed(feature) -> Any:  # the feature of each item of a list column, else None
        return feature.feature if isinstance(feature, (List, LargeList)) else None

    image, candidates = dataset.features.get("image"), dataset.features.get("candidate_images")
    texts = {"image": is_path(image), "candidate_images": is_path(listed(candidates))}
    images = {"image": isinstance(image, Image), "candidate_images": isinstance(listed(candidates), Image)}
    # the columns holding relative paths, looked for beside a data file (a folder's, or a saved dataset's) too
    relative = [column for column in texts if (texts[column] or images[column]) and data_folder is not None
                and holds_relative_image_paths(dataset, column)]
    if not any(texts.values()) and not relative:
        return dataset
    # what each column is read as: its own image feature (its mode, its list's kind and length), or for paths as text a
    # plain one
    read_as = {column: with_image_decode(dataset.features[column], True) if images[column]
               else Image() if column == "image" else List(Image())
               for column in texts if texts[column] or column in relative}
    for column in relative:
        if images[column]:  # the stored {bytes, path}, not the decoded image
            dataset = dataset.cast_column(column, with_image_decode(dataset.features[column], False))

    def locate(value: Any, column: str) -> Any:
        return located(value, data_folder) if texts[column] else located_image(value, data_folder)

    def locate_row(row: dict) -> dict:
        return {  # a null list is left to the schema check, which names its row
            column: locate(row[column], column) if column == "image" or row[column] is None
            else [locate(item, column) for item in row[column]]
            for column in relative
        }

    if relative:  # never from datasets' cache: its key holds neither which files exist now nor where the run starts
        dataset = dataset.map(locate_row, features=dataset.features, load_from_cache_file=False,
                              desc="locating image files")
    for column, feature in read_as.items():
        if column == "image":  # a cast of the table's schema alone
            dataset = dataset.cast_column(column, feature)
        else:  # rewritten by a map, not from the cache after a locating map (whose result it would key)
            features = dataset.features.copy()
            features[column] = feature
            dataset = dataset.cast(features, load_from_cache_file=not relative)
    return dataset


if __name__ == "__main__":  # as `maple train` (Ctrl-C included)
    from maple.cli import run_module

    run_module("train")
