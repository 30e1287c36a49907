"""A run's checkpoints: which `checkpoint-N` folders `output_dir` holds and which were saved whole, the recipe
(`rpa_recipe.json`) saved with each, which a resumed run must share (settings, model, images, training data), for a
streamed training set, where in the stream each was saved (`stream_position.json`), and under PEFT, the trainable state
a resumed run restores (`trainable_state.safetensors`).

Light to import (no TRL or transformers; torch only where a trainable state is saved or loaded): reading a run folder
needs neither.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import TYPE_CHECKING, Any

import numpy as np

from maple.files import atomic_write_json

if TYPE_CHECKING:
    from torch import nn

    from .rpa_config import RPAConfig

# `Trainer` writes it last when it saves a checkpoint (transformers.trainer.TRAINER_STATE_NAME)
TRAINER_STATE_NAME = "trainer_state.json"
# The `RPAConfig` values that define the method and its batches, saved with every checkpoint: a run resumes only
# under the same ones (the length of training, logging and saving may change, e.g. to train longer). `world_size`, the
# number of processes, is one: the global batch, the InfoNCE pool `gather_negatives` gathers and the batches a
# resumed run skips depend on it.
RECIPE_FILE = "rpa_recipe.json"
RECIPE_FIELDS = (
    "rpa_loss", "rpa_weight", "reference", "learn_beta", "learn_temperature", "max_scale", "expand_negatives",
    "exclude_judged_positives", "gather_negatives", "num_image_candidates", "num_text_candidates",
    "per_device_train_batch_size", "gradient_accumulation_steps", "world_size", "learning_rate", "lr_scheduler_type",
    "warmup_steps", "weight_decay", "seed",
)

# Where a run on a streamed training set stands at a checkpoint: the pass over the stream (the training loop's epoch,
# which seeds the collator's candidate draws and the stream's shuffling) and the batches of that pass its steps trained,
# per process. `Trainer` counts a stream's epoch as `max_steps` steps, so the global step does not tell them.
STREAM_POSITION_FILE = "stream_position.json"
# Under PEFT, the trainable state (adapters and the learnable scales) of a checkpoint, for resuming: the model is saved
# merged, which AutoModel loads but which does not give the adapters back.
PEFT_TRAINABLE_STATE = "trainable_state.safetensors"


def run_checkpoints(output_dir: str) -> list[str]:
    """The checkpoint-N folders of `output_dir`, by N (none if it does not exist)."""
    if not os.path.isdir(output_dir):
        return []
    found = [(int(match[1]), entry.path) for entry in os.scandir(output_dir)
             if entry.is_dir() and (match := re.fullmatch(r"checkpoint-(\d+)", entry.name))]
    return [path for _, path in sorted(found)]


def is_complete_checkpoint(path: str) -> bool:
    """Whether the checkpoint folder `path` was saved whole: `Trainer` writes trainer_state.json last, so a save cut
    short by a kill has none."""
    return os.path.isfile(os.path.join(path, TRAINER_STATE_NAME))


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The last checkpoint-N folder of `output_dir` that `is_complete_checkpoint` (a later one may be a save cut short
    by a kill), or None."""
    complete = [path for path in run_checkpoints(output_dir) if is_complete_checkpoint(path)]
    return complete[-1] if complete else None


def stream_position(checkpoint: str) -> tuple[int, int] | None:
    """(pass, batches trained of it) from `checkpoint`'s `STREAM_POSITION_FILE`, or None when it has none (a
    map-style run's checkpoint, or one saved before positions were recorded)."""
    position_file = os.path.join(checkpoint, STREAM_POSITION_FILE)
    if not os.path.isfile(position_file):
        return None
    try:
        with open(position_file) as handle:
            position = json.load(handle)
        return int(position["pass"]), int(position["batches"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"{position_file} cannot be read ({error!r}): restore it, or start a new run in another output_dir"
        ) from error


def save_stream_position(checkpoint: str, pass_index: int, batches: int) -> None:
    """Writes `checkpoint`'s `STREAM_POSITION_FILE` (whole or not at all), which `stream_position` reads back: the pass
    over the streamed training set and the batches of that pass trained."""
    os.makedirs(checkpoint, exist_ok=True)
    atomic_write_json(os.path.join(checkpoint, STREAM_POSITION_FILE), {"pass": pass_index, "batches": batches})


def resumed_stream_position(
    checkpoint: str, global_step: int, epoch: float, gradient_accumulation_steps: int
) -> tuple[int, int]:
    """The pass over the streamed training set a run resumed from `checkpoint` goes on in, and the batches of it
    trained, as the checkpoint recorded them (`stream_position`). `global_step` and `epoch` are the checkpoint's
    `Trainer` state, which counts a stream's epoch as `max_steps` steps: a checkpoint saved before positions were
    recorded is resumed by its global step in the first pass only, and refused after it."""
    position = stream_position(checkpoint)
    if position is not None:
        return position
    if global_step > 0 and epoch > 1:  # 1.0: the run ended in pass 0 (max_steps)
        raise ValueError(
            f"{checkpoint} was saved after the first pass over the streamed training set but records no "
            f"position in it ({STREAM_POSITION_FILE}; saved by an earlier version, or by a run on a map-style "
            "dataset): resuming it would train other batches than the run it continues; start a new run in "
            "another output_dir"
        )
    return 0, global_step * gradient_accumulation_steps


def save_trainable_state(model: nn.Module, folder: str) -> None:
    """Saves the trainable parameters of `model`, a PEFT model (its adapters and the learnable scales), as `folder`'s
    `PEFT_TRAINABLE_STATE`, which `load_trainable_state` restores."""
    import safetensors.torch

    trainable = {name: param.detach().contiguous() for name, param in model.named_parameters() if param.requires_grad}
    safetensors.torch.save_file(trainable, os.path.join(folder, PEFT_TRAINABLE_STATE))


def load_trainable_state(model: nn.Module, checkpoint: str) -> None:
    """Loads `checkpoint`'s `PEFT_TRAINABLE_STATE` into `model` (`save_trainable_state`); a ValueError naming the
    trainable parameters of `model` it lacks."""
    import safetensors.torch

    state = safetensors.torch.load_file(os.path.join(checkpoint, PEFT_TRAINABLE_STATE))
    missing = [name for name, param in model.named_parameters() if param.requires_grad and name not in state]
    if missing:
        raise ValueError(f"{checkpoint} lacks trainable parameters {missing[:5]}")
    model.load_state_dict(state, strict=False)


def lora_recipe(r: int, lora_alpha: float) -> dict[str, Any]:
    """The LoRA settings a resumed run must share with its checkpoint, whose adapters have their shapes (the recipe
    holds None for full fine-tuning). One definition for `RPATrainer` and `maple train`, which checks a checkpoint
    before it builds the LoRA config."""
    return {"r": r, "lora_alpha": lora_alpha}


def model_recipe(config: Any) -> dict[str, Any]:
    """What a resumed run's model must share with its checkpoint's, from its `MapleConfig`: the backbone kind, the
    backbone's model type(s) (and an MLLM's family, `mllm_family`), the projection size and its towers'
    `[hidden_size, num_hidden_layers]` (language model
    first for an MLLM, vision tower first for a dual encoder; None where a config names them otherwise): another
    model's weights and optimizer state do not fit, also a model of the same family at another size (Qwen2-VL 2B and
    7B), whose embedding is its width when it has no projection."""
    # imported here: reading a run folder's checkpoints needs no transformers, and a model's config has loaded it
    from modeling_maple.configuration_maple import mllm_family

    recipe: dict[str, Any] = {"backbone": config.backbone}
    if config.backbone == "mllm":
        recipe["model_types"] = [config.mllm_config.model_type]
        # a Pixtral tower's prompts and weights are not LLaVA-1.5's, though both are `llava` configs
        recipe["family"] = mllm_family(config.mllm_config)
        towers = [config.mllm_config.get_text_config(), config.mllm_config.vision_config]
    else:
        recipe["model_types"] = [config.vision_config.model_type, config.text_config.model_type]
        towers = [config.vision_config, config.text_config]
    sizes = [[getattr(tower, "hidden_size", None), getattr(tower, "num_hidden_layers", None)] for tower in towers]
    return recipe | {"projection_dim": config.projection_dim, "tower_sizes": sizes}


# The entries of an image processor's `to_dict()` that are not settings of its pixels: its class name (the PIL and the
# torchvision backend of one processor differ in it) and where it was loaded from
NOT_PIXEL_SETTINGS = ("image_processor_type", "processor_class", "auto_map")


def image_recipe(image_processor: Any) -> dict[str, Any]:
    """What a resumed run's images must share with its checkpoint's: every setting of its image processor but the
    `NOT_PIXEL_SETTINGS`, as JSON holds them. They decide the pixels the model sees: resolution (Qwen-VL's pixel budget
    and patches, CLIP's resize and crop, LLaVA-NeXT's, InternVL's and Idefics3's tiles), padding and normalisation;
    `--image_processor_kwargs '{"max_pixels": 153664}'` given to one run and not the other trains half the run at
    another resolution."""
    settings = {name: value for name, value in image_processor.to_dict().items()
                if name not in NOT_PIXEL_SETTINGS and not name.startswith("_")}
    # tuples as lists, arrays as lists (as transformers writes them), anything else as its text: as read back
    return json.loads(json.dumps(settings, default=lambda value: value.tolist() if hasattr(value, "tolist") else str(value)))


# How many rows of a training set, spread evenly from its first to its last, `data_recipe`'s digest reads, and their
# columns: the ids, texts and judge scores, not the images (decoding them costs, and a stored image's path changes
# when the data moves)
DATA_DIGEST_ROWS = 16
DATA_DIGEST_COLUMNS = ("id", "caption", "candidate_texts", "txt2img_scores", "img2txt_scores")


def data_recipe(train_dataset: Any) -> dict[str, Any] | None:
    """What a resumed run's training set must share with its checkpoint's: for a map-style `datasets.Dataset`, its
    number of rows and a digest of the `DATA_DIGEST_COLUMNS` of `DATA_DIGEST_ROWS` rows spread evenly over it, in its
    order (a resume skips the batches its checkpoint trained, by position: on other rows, or the same rows in another
    order, it skips rows never trained, and a pass over a smaller set ends early). None for anything else (a stream
    has no length, and reading its rows would start it).

    Not `datasets`' `_fingerprint`, which differs for the same rows: a data file's is keyed on its path and
    modification time (a copy, a `touch` or a fresh download of one file changes it), and rows built in memory have
    another than the same rows loaded from their `save_to_disk` folder."""
    # imported here: reading a run folder's checkpoints needs no datasets
    from datasets import Dataset

    if not isinstance(train_dataset, Dataset):
        return None
    rows = train_dataset.num_rows
    if rows == 0:
        return {"rows": 0, "digest": None}
    positions = sorted({round(index * (rows - 1) / (DATA_DIGEST_ROWS - 1)) for index in range(DATA_DIGEST_ROWS)})
    # as Arrow gives them, whatever format the dataset was given in: the same values read back the same
    sampled = train_dataset.select_columns(list(DATA_DIGEST_COLUMNS)).with_format("arrow")[positions].to_pylist()
    digest = hashlib.sha256(json.dumps([_as_trained(row) for row in sampled], sort_keys=True).encode()).hexdigest()
    return {"rows": rows, "digest": digest[:16]}


def _as_trained(row: dict[str, Any]) -> dict[str, Any]:
    """A row's `DATA_DIGEST_COLUMNS` as the trainer reads them, whatever types they are stored in: its id as text (the
    collator's seeds and errors read 7 and "7" alike) and its judge scores at float32 (0.9 stored as float64, as
    float32 or an integer score 1 as int64 are the scores it trains on)."""
    scores = {column: [float(np.float32(score)) for score in row[column]] for column in ("txt2img_scores", "img2txt_scores")}
    return {**row, "id": str(row["id"]), **scores}


def training_recipe(
    args: RPAConfig, lora: dict[str, Any] | None, model: dict[str, Any] | None = None,
    images: dict[str, Any] | None = None, data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What `rpa_recipe.json` holds: the `RECIPE_FIELDS` values of `args`, the LoRA settings (`lora_recipe`, or None
    for full fine-tuning) and, when given, the model's (`model_recipe`), the images' (`image_recipe`) and the training
    data's (`data_recipe`)."""
    recipe = {name: getattr(args, name) for name in RECIPE_FIELDS} | {"lora": lora}
    given = {"model": model, "images": images, "data": data}
    return recipe | {name: entry for name, entry in given.items() if entry is not None}


def check_recipe(
    checkpoint: str, args: RPAConfig, lora: dict[str, Any] | None, model: dict[str, Any] | None = None,
    images: dict[str, Any] | None = None, data: dict[str, Any] | None = None,
) -> None:
    """Raise a ValueError naming each `RECIPE_FIELDS` value, the LoRA settings (`lora_recipe`, or None), the model
    (`model_recipe`), the images (`image_recipe`) and the training data (`data_recipe`) (the last three when given),
    (saved -> now), that differ from the recipe the checkpoint was trained with. Checkpoints saved before recipes (or
    any of these entries) were recorded have none and pass."""
    recipe_file = os.path.join(checkpoint, RECIPE_FILE)
    if not os.path.isfile(recipe_file):
        return
    try:
        with open(recipe_file) as handle:
            saved = json.load(handle)
    except (OSError, ValueError) as error:
        raise ValueError(f"{recipe_file} cannot be read ({error}): restore it, or start a new run in another output_dir") from error
    now = training_recipe(args, lora, model, images, data)
    differences = []
    for name, value in now.items():
        if name not in saved:
            continue
        if name in ("model", "images", "data") and isinstance(saved[name], dict) and isinstance(value, dict):
            # an older checkpoint recorded fewer of these entries: what it did not record cannot differ; of the
            # others, only those that differ are named
            changed = [key for key in saved[name] if saved[name][key] != value.get(key)]
            if changed:
                before, after = ({key: entries.get(key) for key in changed} for entries in (saved[name], value))
                differences.append(f"{name}: {before!r} -> {after!r}")
            continue
        if saved[name] != value:
            differences.append(f"{name}: {saved[name]!r} -> {value!r}")
    if differences:
        raise ValueError(
            f"{checkpoint} was trained with another recipe ({'; '.join(differences)}): resume with its settings, or "
            "start a new run in another output_dir"
        )
