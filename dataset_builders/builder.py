"""`MaplePreferences`: the `datasets` builder that turns image-caption pairs into MLLM-judged
preference rows (schema: `trainer.schema.PREFERENCE_FEATURES`, which the trainer validates against), and
publishes and loads them.

Pipeline, per the paper (section 3 of the method notes):

1. read the source (local folder, parquet, a `datasets.Dataset`, or a Hub id) and check every row:
   unreadable images, empty captions and duplicate ids are skipped, counted and listed with reasons;
2. embed the images (a `HardNegativeMiner`), optionally de-duplicate with SemDeDup;
3. per shard of `shard_size` anchors: mine each anchor's top-K neighbours, write candidate captions
   (a `CandidateCaptioner`, or the neighbours' own captions), score both candidate lists with a
   `PreferenceJudge` (one `score` call per shard, each source image asked once: `scoring.score_both_directions`), and
   write the shard as parquet.

Everything expensive is checkpointed in the work directory: the row check, the embeddings, the
SemDeDup result and every finished shard (written to a temporary name, then renamed, so a shard file is either complete or
absent). A run after a crash or SIGKILL redoes only the missing shards; shard contents depend only
on the shard's anchors and the seed, so the result equals an uninterrupted build row for row.
The work dir belongs to one recipe: `manifest.json` records everything that shapes its contents
(source fingerprint, shard size, K, text settings, SemDeDup, seed, judge / captioner / miner names
and settings), and a build with a different recipe stops with a `WorkDirMismatch` naming the
differences instead of mixing old checkpoints with new ones. Shards are named by the anchors they hold
(`shard-{start:06d}-{end:06d}.parquet`, end exclusive), and the dataset is assembled only once
the shards cover every anchor exactly once.

Several processes (`accelerate launch`, torchrun: RANK / WORLD_SIZE in the environment) split the
work: each embeds its slice of the images and builds the shards s with s % world_size == rank; rank
0 runs SemDeDup for all, then waits for all shards and assembles the dataset.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import numbers
import os
import pickle
import re
import reprlib
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import datasets
import filelock
import numpy as np
import PIL.Image
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from datasets.filesystems import is_remote_filesystem
from fsspec.core import url_to_fs
from tqdm.auto import tqdm

from evaluation.retrieval import check_finite_embeddings
from maple.dataset_layout import card_configs, files_by_split, lone_config_folder, snapshot_config_folders
from maple.files import (
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    changed_entries,
    created_once,
    expanded_path,
    folder_problem,
    remove_abandoned_temporaries,
)
from maple.hub import is_hub_id, local_path_name, names_a_file
from trainer.schema import PREFERENCE_FEATURES

from .interfaces import CandidateCaptioner, PreferenceJudge, component_name, first_finding, member_names, renamed_members
from .miner import MIN_SEMDEDUP_EPSILON, HardNegativeMiner, MinerInputError, MinerOutputError, check_semdedup_clusters
from .scoring import check_captions, check_judge_scores, score_both_directions, text_pool
from .sources import (
    DEFAULT_ID_COLUMN,
    SourceError,
    check_outside_source,
    csv_cells_reading,
    decode_image,
    encoded_bytes,
    image_paths,
    local_source_digest,
    open_source,
)

TEXT_CANDIDATE_SOURCES = ("generated", "corpus")
# The `MaplePreferencesConfig` fields that count something, or seed: integers (`semdedup_clusters` may be None)
INTEGER_FIELDS = ("num_hard_negatives", "captioned_negatives", "max_candidate_texts", "shard_size", "semdedup_clusters", "seed")
MANIFEST_FILE = "manifest.json"
# Raised whenever a manifest field is added or changes meaning, or what the checkpoints hold changes (what each raise
# changed: `git log -G "MANIFEST_VERSION = "`). A work dir of another version is refused: its manifest cannot say
# whether its checkpoints match this builder's. Not raised for changes that only move float rounding, as a judge's batch
# size does.
MANIFEST_VERSION = 7
# Source rows per checkpoint of the input check (which decodes every image), and image embeddings per checkpoint
# while a rank embeds its slice: the most an interruption can cost.
INPUT_CHECK_PART_ROWS = 50_000
EMBEDDING_PART_ROWS = 10_000
# A shard's captioner sampling is seeded with seed * SHARD_SEED_STRIDE + shard (`_generated_captions`), which
# torch.manual_seed takes in [-2**63, 2**64): the seeds whose every shard (up to 2**32 of them) stays in that range.
SHARD_SEED_STRIDE = 1_000_003
SEED_RANGE = (-(2**63 // SHARD_SEED_STRIDE), (2**64 - 2**32) // SHARD_SEED_STRIDE)
_SHARD_NAME = re.compile(r"^shard-(\d+)-(\d+)\.parquet$")
# A random id of the work dir (in it, written by the first build or rank to ask), and the same file in a `datasets`
# cache naming the work dir it was assembled from. Several cache keys share a work dir (a source path spelled
# differently, another --source-license), and a work dir deleted and begun again keeps its path: a cache is reused only
# when it names the work dir's id. No part of the recipe: the manifest does not hold it.
BUILD_ID_FILE = "maple_build_id.txt"
# Beside a `datasets` cache folder (its name plus this suffix, no longer than the ".incomplete" `datasets` assembles
# under): the lock under which a build decides whether the cache is its work dir's and assembles it if not. Not
# `datasets`' own "_builder.lock", which `DatasetBuilder.download_and_prepare` takes and one process cannot take twice.
ASSEMBLY_LOCK_SUFFIX = ".maple.lock"
# Work-dir checkpoints that no process writes once every shard exists: every rank's slices of the input checks (and
# their progress) and of the image embeddings (and their parts), all written before any rank builds a shard, and
# anchors.json, which rank 0 alone writes, before any. (Not inputs.json or embeddings.pt, which every rank writes as it
# gets there: a slow rank with no shard to build may be writing them still.)
_CHECKPOINTS_BEFORE_SHARDS = ("inputs-*-of-*", "embeddings-*-of-*", "anchors.json")


class WorkDirMismatch(ValueError):
    """The work dir holds checkpoints of a build with another recipe (or of unknown recipe)."""


class DamagedCheckpoint(WorkDirMismatch):
    """A checkpoint file of the work dir cannot be read (truncated by a crash, edited); the message names it."""

    def __init__(self, path: Path, error: Exception, advice: str = "delete it and run again; only what it held is recomputed") -> None:
        detail = " ".join(str(error).split())[:200]
        super().__init__(f"{path} cannot be read ({type(error).__name__}: {detail}): {advice}")


def process_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """This process's rank and the number of processes building: `rank` and `world_size` where given, else the
    environment variables RANK and WORLD_SIZE that a launcher (torchrun, `accelerate launch`) sets (0 and 1 without
    one). A ValueError naming them and their values, before any work, for a variable that is not an integer, for a
    rank outside [0, world_size): such a rank builds no shard, and its peers would wait for it until they time out;
    and for RANK unset where there are several processes: each would take rank 0, and they would build the same
    shards. (torchrun and `accelerate launch` set RANK wherever they set WORLD_SIZE.)"""
    from_environment = []
    if world_size is None:
        world_size = _launcher_variable("WORLD_SIZE", 1)
        from_environment.append(f"WORLD_SIZE={os.environ.get('WORLD_SIZE', '(unset)')}")
    if rank is None:
        if "RANK" not in os.environ and world_size > 1:
            given = f"the environment variable WORLD_SIZE={world_size}" if from_environment else f"world_size={world_size}"
            raise ValueError(f"{given} says there are {world_size} processes but the environment variable RANK is unset, "
                             "so every process would take rank 0 and build the same shards: start them with a launcher "
                             "(torchrun, accelerate launch) that sets RANK and WORLD_SIZE, or set RANK (0 to "
                             f"WORLD_SIZE - 1) for each{'' if from_environment else ', or pass rank='}")
        rank = _launcher_variable("RANK", 0)
        from_environment.insert(0, f"RANK={os.environ.get('RANK', '(unset)')}")
    if not 0 <= rank < world_size:
        launcher = (f", read from the environment variables {' and '.join(from_environment)}: each of WORLD_SIZE "
                    "processes needs its own RANK, 0 to WORLD_SIZE - 1, as torchrun and accelerate launch set them"
                    if from_environment else "")
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size}){launcher}")
    return rank, world_size


def _launcher_variable(name: str, default: int) -> int:
    """The integer in environment variable `name` (RANK, WORLD_SIZE), `default` where it is unset."""
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"the environment variable {name}={text!r} is not an integer (a launcher such as torchrun "
                         "or accelerate launch sets RANK and WORLD_SIZE: unset them, or set them to integers)") from None


@dataclass
class MaplePreferencesConfig(datasets.BuilderConfig):
    """How a preference dataset is built (MAPLE, arXiv 2506.06970, section 3.2); each field's `help` says what it
    does. Named configs: see `MaplePreferences.BUILDER_CONFIGS`. `maple build-preferences` offers the fields as
    options (`--num-hard-negatives`, ...)."""

    source: str | None = field(
        default=None,
        metadata={"help": "local folder (image folder with a metadata file, or parquet files), a parquet file, or a "
                  "Hub dataset id (`load_source`); alternatively pass a `datasets.Dataset` to the builder"},
    )
    source_config: str | None = field(
        default=None,
        metadata={"help": "config of a Hub or folder source that has several (as `load_dataset(source, name)` takes "
                  "it)"},
    )
    source_split: str = field(
        default="train",
        metadata={"help": "split of a Hub or folder source; a folder is split by file name (data/train-*, "
                  "data/test-*) as datasets reads it"},
    )
    image_column: str = field(default="image", metadata={"help": "source image column"})
    caption_column: str = field(default="caption", metadata={"help": "source caption column"})
    id_column: str = field(
        default=DEFAULT_ID_COLUMN,
        metadata={"help": f"source id column; the default {DEFAULT_ID_COLUMN!r} is optional (without it the row index "
                  "is the id), any other must exist"},
    )
    num_hard_negatives: int = field(
        default=3, metadata={"help": "K, hard-negative images per anchor, mined by image similarity (paper example: 3)"}
    )
    text_candidates: str = field(
        default="generated",
        metadata={"help": "'generated': a captioner contrasts the anchor with its hard negatives (paper); 'corpus': "
                  "the hard negatives' own captions, no captioner needed"},
    )
    captioned_negatives: int = field(
        default=1,
        metadata={"help": "hard negatives shown to the captioner per anchor, one prompt (per sample) each; when their "
                  "captions do not all fit in the pool, the negatives take turns"},
    )
    max_candidate_texts: int = field(
        default=6, metadata={"help": "cap on the text pool, anchor caption included (paper: 6)"}
    )
    shard_size: int = field(
        default=256, metadata={"help": "anchors per shard: the unit of checkpointing and of work per process"}
    )
    semdedup_clusters: int | None = field(
        default=50_000,
        metadata={"help": "SemDeDup k-means clusters, at most half the usable images (paper: 50,000 for ~700k images; "
                  "about images / 14); None skips de-duplication"},
    )
    semdedup_epsilon: float = field(
        default=0.07, metadata={"help": "SemDeDup threshold: duplicates have cosine > 1 - epsilon (paper: 0.07)"}
    )
    seed: int = field(default=0, metadata={"help": "seed of captioner sampling (per shard) and of SemDeDup's k-means"})
    source_license: str | None = field(default=None, metadata={"help": "licence of the source data, for the dataset card"})
    components: str | None = field(
        default=None,
        metadata={"help": "set by the builder: names of the judge, captioner and miner (with a digest of their "
                  "`settings` where they have them) and the in-memory source's fingerprint; part of the cache key, "
                  "so changing any of them never reuses a stale build"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.validate()

    def validate(self) -> None:
        """Raise a ValueError naming every setting of the wrong type, else every bad value; numpy's numbers, which
        pass, become Python's. Runs at construction and again in the builder, because `datasets` applies keyword
        overrides to a named config by plain attribute assignment."""
        # A float count (shard_size=1e3) passed the bounds below and failed once every image was embedded, a TypeError
        # naming no setting; a string one failed here, alike
        numbers_of_type = {name: numbers.Integral for name in INTEGER_FIELDS} | {"semdedup_epsilon": numbers.Real}
        if problems := [
            f"{name} must be {'an integer' if kind is numbers.Integral else 'a number'}, got {value!r} "
            f"({type(value).__name__})"
            for name, kind in numbers_of_type.items()
            if not (isinstance(value := getattr(self, name), kind) and not isinstance(value, bool))
            and not (name == "semdedup_clusters" and value is None)
        ]:
            raise ValueError("invalid MaplePreferences config: " + "; ".join(problems))
        # json writes no numpy number (the stats.json written once every shard was built failed on
        # num_hard_negatives=numpy.int64(2)), and numpy.int64 arithmetic wraps silently (a shard's seed)
        # (a Python int epsilon stays one: any is out of its range, which says so, where float(10**400) overflows)
        for name, kind in numbers_of_type.items():
            if (value := getattr(self, name)) is not None and type(value) not in (int, float):
                setattr(self, name, int(value) if kind is numbers.Integral else float(value))
        if self.num_hard_negatives < 1:
            problems.append(f"num_hard_negatives must be at least 1, got {self.num_hard_negatives}")
        if self.text_candidates not in TEXT_CANDIDATE_SOURCES:
            problems.append(f"text_candidates must be one of {TEXT_CANDIDATE_SOURCES}, got {self.text_candidates!r}")
        # its range is empty when num_hard_negatives is below 1, which is the problem then, unless it is below 1 too
        if self.captioned_negatives < 1 or 1 <= self.num_hard_negatives < self.captioned_negatives:
            problems.append(f"captioned_negatives must be in [1, num_hard_negatives], got {self.captioned_negatives}")
        if self.max_candidate_texts < 2:
            problems.append(f"max_candidate_texts must be at least 2, got {self.max_candidate_texts}")
        if self.shard_size < 1:
            problems.append(f"shard_size must be positive, got {self.shard_size}")
        if self.semdedup_clusters is not None and self.semdedup_clusters < 1:
            problems.append(
                f"semdedup_clusters must be positive, or None to turn de-duplication off (CLI --semdedup-clusters 0), "
                f"got {self.semdedup_clusters}"
            )
        if self.image_column == self.caption_column:  # the images' column is read as images: no caption would be text
            problems.append(
                f"image_column and caption_column are both {self.image_column!r}: name the column holding the images "
                "and the one holding the captions (CLI --image-column, --caption-column)"
            )
        if not MIN_SEMDEDUP_EPSILON <= self.semdedup_epsilon < 1.0:
            problems.append(f"semdedup_epsilon must be in [{MIN_SEMDEDUP_EPSILON}, 1), got {self.semdedup_epsilon}")
        if not SEED_RANGE[0] <= self.seed <= SEED_RANGE[1]:
            problems.append(
                f"seed must be in [{SEED_RANGE[0]}, {SEED_RANGE[1]}] (a shard's sampling seed, seed * "
                f"{SHARD_SEED_STRIDE} + shard, must be one torch.manual_seed takes), got {self.seed}"
            )
        if problems:
            raise ValueError("invalid MaplePreferences config: " + "; ".join(problems))

    def unused_fields(self) -> list[str]:
        """The recipe fields no step of this recipe reads: `captioned_negatives` without generated captions,
        `semdedup_epsilon` without SemDeDup, and `seed` without either (it seeds caption sampling and SemDeDup's
        k-means). The manifest records them as None, so that changing one does not refuse a work dir."""
        generated, deduplicated = self.text_candidates == "generated", self.semdedup_clusters is not None
        unused = {"captioned_negatives": not generated, "semdedup_epsilon": not deduplicated,
                  "seed": not (generated or deduplicated)}
        return [name for name, is_unused in unused.items() if is_unused]


_OVERRIDABLE_WITH_NONE = {item.name for item in fields(MaplePreferencesConfig)} - {
    item.name for item in fields(datasets.BuilderConfig)
}
"""The recipe's own config fields: a None override of one is a setting, not "no override"."""


@dataclass(frozen=True)
class SkippedInput:
    """A source row left out of the dataset, and why.

    kind: "duplicate id", "empty caption", "non-string caption", "special token in caption" (the
        judge's tokenizer would read part of the caption as a special token), "unreadable image"
        or "near-duplicate" (SemDeDup).
    detail: the specifics (the error, the row it duplicates).
    """

    row: int
    id: str
    kind: str
    detail: str = ""


@dataclass(frozen=True)
class BuildPlan:
    """What the build covers, fixed before any shard is built (and identical in every process).

    num_source_rows: rows in the source.
    anchor_rows: source rows that become anchors, in dataset order.
    anchor_embeddings: (len(anchor_rows), D) image embeddings of the anchors, on the miner's
        search device.
    skipped: every source row left out, with its reason.
    """

    num_source_rows: int
    anchor_rows: list[int]
    anchor_embeddings: torch.Tensor
    skipped: list[SkippedInput]

    def num_shards(self, shard_size: int) -> int:
        return -(-len(self.anchor_rows) // shard_size)


@dataclass
class ShardReport:
    """What one call of `MaplePreferences.build_shards` did."""

    rank: int
    world_size: int
    num_shards: int
    computed: list[int] = field(default_factory=list)
    reused: list[int] = field(default_factory=list)
    seconds: float = 0.0


def _config_folder(snapshot: Path, config_name: str) -> Path:
    """The folder of config `config_name` in a snapshot of a dataset repo: `push_to_hub(config_name=...)` writes each
    config's files to a top-level folder named after it, and the "default" config's to `data/`."""
    if config_name == "default" and not (snapshot / config_name).is_dir():
        return snapshot / "data"
    return snapshot / config_name


def _check_preference_columns(file: str) -> None:
    """A ValueError naming the parquet file `file`, read as preference rows, where its columns are not the schema's, or
    where it does not read as parquet: `datasets`, reading it with `PREFERENCE_FEATURES`, filled a missing column with
    None in every row, silently, and refused an extra column, or a file that is no parquet, naming no file."""
    try:
        columns = pq.read_schema(file).names
    except pa.ArrowInvalid as error:
        raise ValueError(f"{file} cannot be read as parquet: {error}") from None
    missing = [column for column in PREFERENCE_FEATURES if column not in columns]
    extra = [column for column in columns if column not in PREFERENCE_FEATURES]
    if missing or extra:
        problems = (("lacks the columns", missing), ("has the extra columns", extra))
        found = " and ".join(f"{what} {', '.join(map(repr, names))}" for what, names in problems if names)
        raise ValueError(f"{file} holds no preference rows: it {found} (a preference dataset has the columns "
                         f"{', '.join(PREFERENCE_FEATURES)})")


def _in_number_order(path: Path) -> list[str | int]:
    """A sort key that orders the numbers in a path by value: a build's shards are named by anchor ("shard-999995-..."
    before "shard-1000000-...", which a plain sort puts first)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


# The note on an OSError raised reading a work-dir checkpoint that is not damage (`_is_undecodable`)
UNREADABLE_CHECKPOINT_NOTE = "while reading the work-dir checkpoint {}"


def _is_undecodable(error: Exception) -> bool:
    """Whether `error`, raised reading a checkpoint, says that its bytes do not decode (or that a folder stands in its
    place), rather than that the system could not read them (no permission, a disk or network filesystem error, too
    many open files: deleting the file would throw away work). The readers say so with ValueError (pyarrow's
    ArrowInvalid, json's), RuntimeError, KeyError, EOFError or UnpicklingError (torch.load, `_read_tensor`), and with a
    plain OSError: without an errno (pyarrow, for a damaged data page) or with EINVAL (torch.load of a zip cut short
    seeks before its start)."""
    if not isinstance(error, OSError) or isinstance(error, (IsADirectoryError, NotADirectoryError)):
        return True
    return type(error) is OSError and error.errno in (None, errno.EINVAL)


def _read_checkpoint(path: Path, read: Callable[[Path], Any], advice: str | None = None) -> Any:
    """`read(path)` of a work-dir checkpoint; a file whose bytes do not decode is a `DamagedCheckpoint` naming it, with
    `advice` if given (else `DamagedCheckpoint`'s: delete it and run again). An OSError that does not mean that (a
    PermissionError, EIO) propagates, noting the file, with no advice to delete it."""
    try:
        return read(path)
    except (OSError, ValueError, RuntimeError, KeyError, EOFError, pickle.UnpicklingError) as error:
        if not _is_undecodable(error):
            error.add_note(UNREADABLE_CHECKPOINT_NOTE.format(path))
            raise
        damaged = DamagedCheckpoint(path, error) if advice is None else DamagedCheckpoint(path, error, advice)
        raise damaged from error


def _read_json(path: Path, advice: str | None = None) -> dict[str, Any]:
    """A JSON checkpoint of the work dir, each of which is an object: one that is not (a hand-edited manifest holding a
    list) is a `DamagedCheckpoint` too."""

    def read_object(file: Path) -> dict[str, Any]:
        value = json.loads(file.read_text())
        if not isinstance(value, dict):
            raise ValueError(f"a JSON object was expected, it holds a {type(value).__name__}")
        return value

    return _read_checkpoint(path, read_object, advice)


def _read_tensor(path: Path) -> torch.Tensor:
    def load(file: Path) -> torch.Tensor:
        try:
            return torch.load(file)
        # torch.load's legacy pickle reader, which reads a file that is no longer a zip ("pop from empty list")
        except (IndexError, TypeError) as error:
            raise pickle.UnpicklingError(f"{type(error).__name__}: {error}") from error

    return _read_checkpoint(path, load)


def _atomic_torch_save(path: Path, value: Any) -> None:
    atomic_write(path, lambda temporary: torch.save(value, temporary))


def _component_name(component: object | None) -> str | None:
    return None if component is None else component_name(component)


def _as_read_back(value: Any) -> Any:
    """`value` (a manifest, a component's settings) as it reads back from the JSON the manifest is written as: numpy's
    numbers as the numbers they are (written as text, `shard_size=numpy.int64(4)` recorded '4', which a rerun's 4 did
    not equal: the work dir was refused), anything else JSON cannot hold as its text."""

    def default(item: Any) -> Any:
        if isinstance(item, numbers.Integral):
            return int(item)
        return float(item) if isinstance(item, numbers.Real) else str(item)

    return json.loads(json.dumps(value, default=default))


def _component_settings(component: object | None) -> dict[str, Any] | None:
    """What, beside its name, shapes a component's output: its `settings` (`MLLMJudge`,
    `JudgeEnsemble`, `ContrastiveCaptioner`, `HardNegativeMiner`: prompt, dtype, image-processor
    settings, duplicate threshold, ...), as it reads back from JSON. None for a component without
    them (protocol stand-ins), which its name alone identifies."""
    settings = getattr(component, "settings", None)
    return None if settings is None else _as_read_back(settings)


def _component_key(component: object | None) -> str | None:
    """The component's name plus a digest of its settings, for the `datasets` cache key: changing
    a setting must not reuse a cached build any more than changing the model."""
    settings = _component_settings(component)
    if settings is None:
        return _component_name(component)
    return f"{_component_name(component)}@{hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]}"


IN_MEMORY_SOURCE = "in-memory datasets.Dataset"  # how a build from a `source_dataset` without a `source` names it


def _published_source(source: str | None, read_from_local_files: bool) -> str | None:
    """How a pushed card and stats name the build's source: a Hub id as it is, a local file or folder by its name
    only. Its path means nothing to a reader of the Hub, and may say more about the machine than its owner means to
    publish (a home folder, a user name). `read_from_local_files`: the build's manifest says so, which a staged copy
    deleted once built can no longer show; a label of a `source_dataset` is local by what is there or by its form."""
    if source is None or source == IN_MEMORY_SOURCE:
        return source
    path = expanded_path(source)
    if read_from_local_files or path.exists() or not is_hub_id(source) or names_a_file(source):
        return f"local files ({path.resolve().name})"
    return source


def publishable_stats(stats: dict[str, Any], read_from_local_files: bool = False) -> dict[str, Any]:
    """A build's `stats` as a pushed card and stats.json say them: counts only of the skipped inputs (their list may
    name local files), and a local source, judge or captioner by its name only (`_published_source`,
    `_published_component`). `read_from_local_files`: the build's manifest says its source was local files."""
    published = {key: value for key, value in stats.items() if key != "skipped"}
    published["source"] = _published_source(stats.get("source"), read_from_local_files)
    for component in ("judge", "captioner"):
        published[component] = _published_component(stats.get(component))
    # an ensemble whose members ask different questions records one "name: prompt" line per member
    if (prompt := stats.get("judge_prompt")) and stats.get("judge"):
        for member in member_names(stats["judge"]):
            if local_path_name(member) is not None:
                prompt = prompt.replace(member, _published_component(member))
        published["judge_prompt"] = prompt
    return published


def _published_component(name: str | None) -> str | None:
    """How a pushed card and stats name a judge or captioner: one loaded from a local folder by that folder's name
    only (`local_path_name`), as `_published_source` names a local source; an ensemble's members one by one."""
    if name is None:
        return None
    return renamed_members(name, lambda member: f"local folder ({local})" if (local := local_path_name(member)) else member)


def _differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """"name: saved in the work dir, current now" for each differing manifest entry (`changed_entries`)."""
    return [f"{name}: {_brief(then)} in the work dir, {_brief(now)} now" for name, then, now in changed_entries(saved, current)]


def _number_written_as_text(saved: Any, current: Any) -> bool:
    """Whether a manifest entry is, in the work dir, the text of the number it is now: builders before this one wrote
    numpy's numbers so (shard_size=numpy.int64(4) as '4'; a float32's text, '0.07', is that of the float32 the
    float now is). Text of another number is a change of the recipe, with no note."""
    if not isinstance(saved, str) or isinstance(current, bool) or not isinstance(current, (int, float)):
        return False
    try:
        number = float(saved)
    except ValueError:
        return False
    return any(dtype(number) == dtype(current) for dtype in (np.float64, np.float32, np.float16))


# What builders before the judge recorded each of these settings did instead (`MLLMJudge.settings`)
_UNRECORDED_JUDGE_RULES = {
    "special_token_strings": "skipped the rows of texts holding a special token's string",
    "context_length": "did not cut long texts to the judge's context",
}


def _older_builder_notes(saved: dict[str, Any], recorded: dict[str, Any], current: dict[str, Any]) -> str:
    """Notes, each in parentheses, on differences between the work dir's manifest (`saved`; `recorded`, with the
    fields it leaves out) and this build's (`current`) that an older builder made, not the user: entries it did not
    record, read back as None, and numbers it wrote as text. Without source_csv_cells, the work dir's CSV cells were
    read with pandas' defaults; with judge settings holding none of `_UNRECORDED_JUDGE_RULES`' keys (no member's, for
    an ensemble), its judge followed the older rules, which None does not say ("context_length: None in the work dir"
    reads as a judge without a context, not one that did not cut texts); so did its captioner's parser without
    caption_parser."""
    notes = []
    if saved.get("source_csv_cells") is None and current["source_csv_cells"]:
        notes.append("builders before this one read a source's CSV cells with pandas' defaults: an id 0123 as 123, a "
                     "caption NA as missing")
    saved_judges = _judges_settings(saved.get("judge_settings"))
    current_judges = _judges_settings(current["judge_settings"])
    if saved_judges and not any(judge.keys() & _UNRECORDED_JUDGE_RULES for judge in saved_judges):
        if unrecorded := [key for key in _UNRECORDED_JUDGE_RULES if any(key in judge for judge in current_judges)]:
            notes.append(
                f"builders before this one did not record the judge settings {' or '.join(unrecorded)}: "
                f"they {' and '.join(_UNRECORDED_JUDGE_RULES[key] for key in unrecorded)}, so the work dir's scores may "
                "differ from this build's"
            )
    saved_captioner, current_captioner = saved.get("captioner_settings"), current["captioner_settings"]
    if isinstance(saved_captioner, dict) and "caption_parser" not in saved_captioner and current_captioner:
        notes.append("builders before this one did not record caption_parser, the version of the rules that read "
                     "captions from the captioner's answers, and read some answers otherwise, so the work dir's "
                     "captions may differ from this build's")
    if any(_number_written_as_text(then, now) for _, then, now in changed_entries(recorded, current)):
        notes.append("builders before this one wrote numpy's numbers as text: numpy.int64(4) as '4'")
    return "".join(f" ({note})" for note in notes)


def _judges_settings(settings: Any) -> list[dict[str, Any]]:
    """The settings of each judge in a manifest's judge_settings: an `MLLMJudge`'s, or a `JudgeEnsemble`'s members'
    (those that have settings)."""
    judges = settings["judges"] if isinstance(settings, dict) and "judges" in settings else [settings]
    return [judge for judge in judges if isinstance(judge, dict)]


def _brief(value: Any) -> str:
    """`repr(value)` cut short: settings compared with none (a stand-in judge has none) hold a whole chat template."""
    brief = reprlib.Repr()
    brief.maxstring, brief.maxother, brief.maxdict, brief.maxlist, brief.maxlevel = 80, 80, 4, 4, 2
    return brief.repr(value)


def _ranges(positions: list[int]) -> str:
    """"0..2, 7" for [0, 1, 2, 7] (sorted positions)."""
    spans: list[list[int]] = []
    for position in positions:
        if spans and position == spans[-1][1] + 1:
            spans[-1][1] = position
        else:
            spans.append([position, position])
    return ", ".join(f"{first}..{last}" if last > first else str(first) for first, last in spans)


def _slice_bounds(count: int, part: int, num_parts: int) -> tuple[int, int]:
    """[start, end) of the `part`-th of `num_parts` near-equal contiguous slices of `count` items.
    Integer arithmetic: float32 (torch.linspace) cannot represent every count above 2**24, and
    a rounded bound would drop or repeat rows."""
    return count * part // num_parts, count * (part + 1) // num_parts


def _duplicate_id(row: int, row_id: str, kept_row: int) -> SkippedInput:
    """Source row `row` skipped: its id `row_id` belongs to the earlier valid row `kept_row`."""
    return SkippedInput(row, row_id, "duplicate id", f"row {kept_row} has this id and is kept")


def _merge_input_checks(slices: list[dict[str, list]]) -> tuple[list[int], list[SkippedInput]]:
    """The valid rows and skipped rows of the whole source from the checks of its consecutive slices (see
    `MaplePreferences._check_slice`), in row order: a row whose id an earlier slice's row kept is a duplicate id, as
    in one pass over all rows (and so is a row its own slice skipped for another reason: one pass tests ids first)."""
    kept_row_of_id: dict[str, int] = {}
    valid_rows, skipped = [], []
    for checked in slices:
        entries = [(row, row_id, None) for row, row_id in zip(checked["valid_rows"], checked["valid_ids"])]
        entries += [(item["row"], item["id"], SkippedInput(**item)) for item in checked["skipped"]]
        for row, row_id, problem in sorted(entries, key=lambda entry: entry[0]):
            if row_id in kept_row_of_id:
                skipped.append(_duplicate_id(row, row_id, kept_row_of_id[row_id]))
            elif problem is None:
                kept_row_of_id[row_id] = row
                valid_rows.append(row)
            else:
                skipped.append(problem)
    return valid_rows, skipped


def _names_no_file(error: Exception) -> bool:
    """Whether opening a path failed because it names no file: none there (or a file where its folder should be), a
    name too long to be a file's (a caption of 300 characters), or one holding a NUL character."""
    if isinstance(error, OSError):
        return error.errno in (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG)
    return isinstance(error, ValueError) and "null byte" in str(error)


class MaplePreferences(datasets.GeneratorBasedBuilder):
    """Builds, publishes and loads MAPLE preference datasets.

    Build::

        builder = MaplePreferences(
            config_name="paper", source="path/or/hub-id", cache_dir="cache",
            miner=HardNegativeMiner.from_pretrained("facebook/dinov2-base"),
            captioner=ContrastiveCaptioner.from_pretrained("Qwen/Qwen2.5-VL-72B-Instruct"),
            judge=MLLMJudge.from_pretrained("Qwen/Qwen2-VL-7B-Instruct"),
        )
        builder.download_and_prepare()
        dataset = builder.as_dataset(split="train")
        builder.push_to_hub("me/my-preferences")

    Under several processes (`accelerate launch`), do as `maple build-preferences` does: every rank calls
    `builder.build_shards()`, then rank 0 alone `download_and_prepare()` (it waits for the other ranks' shards) and
    pushes; ranks that all assembled would write the same `datasets` cache and stats.json side by side.

    Load: `MaplePreferences.from_pretrained("me/my-preferences")` (or `datasets.load_dataset`).

    Args:
        judge: any `PreferenceJudge`.
        captioner: any `CandidateCaptioner`; required when `text_candidates == "generated"`.
        miner: a `HardNegativeMiner`.
        source_dataset: an in-memory `datasets.Dataset` to use instead of `config.source`.
        work_dir: where checkpoints (row check, embeddings, shards, stats) live; defaults to a folder
            beside the datasets cache of this config; a leading `~` is the home folder, as in cache_dir. Reuse it to
            resume.
        rank, world_size: this process's share of the shards; default to the RANK / WORLD_SIZE
            environment variables that `accelerate launch` and torchrun set, else 0 / 1.
        progress: show progress bars.
        wait_timeout: seconds rank 0 waits for other ranks' embeddings and shards.
        other keyword arguments: the usual `datasets.DatasetBuilder` ones (`token`: the Hub token a Hub source is read
            with; not part of the cache key) and config overrides.
    """

    BUILDER_CONFIG_CLASS = MaplePreferencesConfig
    BUILDER_CONFIGS = [
        MaplePreferencesConfig(
            name="paper",
            description="The paper's recipe: K=3 DINOv2-style hard negatives, contrastive MLLM captions "
            "(one hard negative shown, 3 samples), a pool of 6 texts, SemDeDup (50k clusters, eps 0.07).",
        ),
        MaplePreferencesConfig(
            name="corpus-captions",
            description="No captioner: the text candidates are the anchor caption and the captions of its "
            "hard-negative images; cheaper, and needs only a judge and a miner.",
            text_candidates="corpus",
            semdedup_clusters=None,
        ),
    ]
    DEFAULT_CONFIG_NAME = "paper"

    def __init__(
        self,
        *args,
        judge: PreferenceJudge | None = None,
        captioner: CandidateCaptioner | None = None,
        miner: HardNegativeMiner | None = None,
        source_dataset: datasets.Dataset | None = None,
        work_dir: str | os.PathLike | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        progress: bool = True,
        wait_timeout: float = 24 * 3600.0,
        **kwargs,
    ) -> None:
        kwargs.setdefault("dataset_name", "maple_preferences")
        kwargs.setdefault(
            "components",
            f"judge={_component_key(judge)}; captioner={_component_key(captioner)}; miner={_component_key(miner)}; "
            f"source={getattr(source_dataset, '_fingerprint', None)}",
        )
        super().__init__(*args, **kwargs)
        # `datasets` skips keyword overrides whose value is None, but None is a setting here
        # (semdedup_clusters=None: no de-duplication), so those are applied now. They are already in
        # the cache key, which `datasets` derives from every keyword.
        for key, value in kwargs.items():
            if value is None and key in _OVERRIDABLE_WITH_NONE:
                setattr(self.config, key, None)
        self.config.validate()
        self.judge = judge
        self.captioner = captioner
        self.miner = miner
        self.source_dataset = source_dataset
        if work_dir is None:
            work_dir = self._cache_dir + ".work"
        if problem := folder_problem(work_dir, "work_dir"):  # (as given: `Path("")` is the current folder)
            raise ValueError(problem)
        self.work_dir = expanded_path(work_dir)  # as `datasets` expands cache_dir, and folder_problem checked it
        check_outside_source(self.config.source, work_dir=self.work_dir, cache_dir=self._cache_dir_root)
        self.rank, self.world_size = process_rank(rank, world_size)
        self.progress = progress
        self.wait_timeout = wait_timeout
        self._source: datasets.Dataset | None = None
        self._source_fingerprint: str | None = None
        self._plan: BuildPlan | None = None
        # True once `check_work_dir` passes: from then on the manifest going means another rank gave up the work dir.
        self._work_dir_claimed = False
        self._assembled_stats: dict[str, Any] | None = None  # the stats `_split_generators` computed, written once assembled

    # ----------------------------------------------------------------------------------------------
    # datasets.GeneratorBasedBuilder

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description="MAPLE preference data: anchors with hard-negative image and text candidates, "
            "ranked by an MLLM judge (arXiv 2506.06970).",
            features=PREFERENCE_FEATURES,
            license=self.config.source_license,
        )

    def download_and_prepare(self, output_dir=None, download_config=None, download_mode=None, **kwargs) -> None:
        """`datasets.DatasetBuilder.download_and_prepare`, after the work dir check.

        The `datasets` cache key holds the recipe and the components but not the contents of a
        path source, so a cached dataset is reused only when the work dir still matches this build
        (`check_work_dir`, the source fingerprint included: a changed source file is a
        `WorkDirMismatch`, not the old dataset) and holds the finished build the cache was made
        from (its stats.json, and the work dir's random build id, `BUILD_ID_FILE`, which the cache records); otherwise
        the dataset is assembled again from the work dir's shards (a new or emptied work dir builds them first).

        Under several processes every rank may call it: each builds its shards first (`build_shards`), outside the
        lock beside the cache folder under which one process at a time decides whether to reuse the cache and
        assembles it if not (the rank holding it would otherwise wait for the shards of a rank stuck at the lock); one
        rank assembles the dataset from them and the others, taking the lock after it, load it from the cache (a cache
        folder per node: one rank per node). In a fresh build that is rank 0: the others wait for its stats.json first
        (a stats.json left by an earlier build lets any rank take the lock first, to the same rows). The cache is a
        local folder: an `output_dir` on another filesystem (s3://, ...) is a ValueError before any work."""
        # the cache's folder as `datasets` reads `output_dir` (`~` expanded, a file:// address stripped)
        filesystem, cache_folder = url_to_fs(
            output_dir if output_dir is not None else self._cache_dir, **(kwargs.get("storage_options") or {})
        )
        if is_remote_filesystem(filesystem):
            raise ValueError(
                f"output_dir {output_dir}: the preference dataset is built into a local folder (its build records "
                "live beside it); build it locally, then push it (push_to_hub) or copy the folder"
            )
        self.check_ready()
        self.check_work_dir()
        if self.world_size > 1:
            self.build_shards()
            if self.rank != 0:
                self._wait_for([self.work_dir / "stats.json"], what="the dataset rank 0 assembles")
        build_id_file = Path(cache_folder) / BUILD_ID_FILE
        # every rank gets the id of the first to write it, where the filesystem has hard links (a work dir begun before
        # build ids gets one now, and its caches, which name none, are assembled again)
        build_id = created_once(self.work_dir / BUILD_ID_FILE, uuid.uuid4().hex)
        # Whether to reuse the cache is decided under the lock the assembly holds, so that a rank taking it after
        # another assembled the cache finds that rank's build id there and reuses the cache, not assembling it again.
        Path(cache_folder).parent.mkdir(parents=True, exist_ok=True)
        with filelock.FileLock(cache_folder + ASSEMBLY_LOCK_SUFFIX):
            assembled_here = build_id_file.is_file() and build_id_file.read_text() == build_id
            if not (self.work_dir / "stats.json").exists() or not assembled_here:
                # not this work dir's finished build: assembled from its shards (those missing are built first)
                download_mode = datasets.DownloadMode.FORCE_REDOWNLOAD
                # `DatasetBuilder.__init__` read the cached build's split sizes, which the new build is checked
                # against: another source under the same cache key failed that check once, and the failed build's
                # stats.json then let the stale cache be reused (and pushed) under this build's stats
                self.info.splits = None
            self._assembled_stats = None
            try:
                super().download_and_prepare(output_dir, download_config, download_mode, **kwargs)
            except datasets.exceptions.DatasetGenerationError as error:
                # `datasets` wraps what `_generate_examples` raises in an error that names no file: a damaged shard's
                # own error names it, as does the note on a shard the system could not read (not on an OSError of
                # datasets' own, writing the cache, which its wrapper places)
                cause = error.__cause__
                if isinstance(cause, DamagedCheckpoint) or (
                    isinstance(cause, OSError) and any(note.startswith(UNREADABLE_CHECKPOINT_NOTE.format(""))
                                                       for note in getattr(cause, "__notes__", ()))
                ):
                    raise cause
                raise
            # stats.json and the cache's build id mark the cache as this work dir's finished build, so they are
            # written only once `datasets` has finished writing the cache (which replaces the folder, an old id file
            # with it): a stats.json written before, by a build that was then interrupted, let the next reuse the
            # cache of another source under the same key, with this build's stats
            if self._assembled_stats is not None:
                atomic_write_text(build_id_file, build_id)
                atomic_write_json(self.work_dir / "stats.json", self._assembled_stats)
        # A cached dataset skips `_split_generators`, which computes the stats: the source licence, part of the cache
        # key but not of the work dir's recipe, may have changed since; the card must show this build's.
        stats = _read_json(self.work_dir / "stats.json")
        if stats.get("source_license") != self.config.source_license:
            stats["source_license"] = self.config.source_license
            atomic_write_json(self.work_dir / "stats.json", stats)

    def _split_generators(self, dl_manager) -> list[datasets.SplitGenerator]:
        self.build_shards()
        shard_paths = self._wait_for_shards()
        self._assembled_stats = self.build_stats(shard_paths)
        return [datasets.SplitGenerator(name=datasets.Split.TRAIN, gen_kwargs={"shard_paths": shard_paths})]

    def _generate_examples(self, shard_paths: list[Path]) -> Iterator[tuple[str, dict[str, Any]]]:
        for path in shard_paths:
            # a shard damaged on disk (its footer intact) passes the coverage check, which reads the footer alone
            for row in _read_checkpoint(path, pq.read_table).to_pylist():
                yield row["id"], row

    # ----------------------------------------------------------------------------------------------
    # the pipeline

    @property
    def shard_dir(self) -> Path:
        return self.work_dir / "shards"

    def check_ready(self) -> None:
        """Raise a clear error for a build that cannot run, before any work is done (before `check_work_dir` claims the
        work dir for this recipe, which the fix the error suggests could then not use): a missing source or component,
        and more SemDeDup clusters than the source's rows allow (`SourceError`)."""
        problems = []
        if self.source_dataset is None and self.config.source is None:
            problems.append("no source: set config source=... or pass source_dataset=...")
        if not isinstance(self.judge, PreferenceJudge):
            problems.append("judge= must implement PreferenceJudge (method score)")
        if self.config.text_candidates == "generated" and not isinstance(self.captioner, CandidateCaptioner):
            problems.append('text_candidates="generated" needs captioner= implementing CandidateCaptioner')
        if not isinstance(self.miner, HardNegativeMiner):
            problems.append("miner= must be a HardNegativeMiner")
        if problems:
            raise ValueError("cannot build MaplePreferences: " + "; ".join(problems))
        self._check_semdedup_clusters(len(self._load_source()))  # the source's rows bound the usable ones

    def manifest(self) -> dict[str, Any]:
        """Everything that shapes the contents of the work dir: two builds with equal manifests
        write the same checkpoints and shards. Saved as manifest.json by the first build."""
        config = self.config
        generated = config.text_candidates == "generated"
        source_rows = self._load_source()
        if self.source_dataset is not None:
            source = IN_MEMORY_SOURCE
        else:  # local files are identified by their contents (`local_source_digest`), wherever they are
            source = config.source if self._local_source() is None else "local files"
        manifest = {
            "manifest_version": MANIFEST_VERSION,
            "source": source,
            "source_fingerprint": self._source_fingerprint,
            # How CSV cells were read (None: no CSV data). Added without a new manifest version: a work dir begun before
            # reads as None, right for a source without CSV data; one whose CSV data pandas' defaults read is refused
            # naming this field
            "source_csv_cells": None if self.source_dataset is not None else csv_cells_reading(source_rows),
            "source_config": config.source_config,
            "source_split": config.source_split,
            "image_column": config.image_column,
            "caption_column": config.caption_column,
            "id_column": config.id_column,
            "num_hard_negatives": config.num_hard_negatives,
            "text_candidates": config.text_candidates,
            "captioned_negatives": config.captioned_negatives,
            "max_candidate_texts": config.max_candidate_texts,
            "shard_size": config.shard_size,
            "semdedup_clusters": config.semdedup_clusters,
            "semdedup_epsilon": config.semdedup_epsilon,
            "seed": config.seed,
            "judge": _component_name(self.judge),
            "judge_prompt": getattr(self.judge, "prompt", None),
            "judge_settings": _component_settings(self.judge),
            "captioner": _component_name(self.captioner) if generated else None,
            "captioner_settings": _component_settings(self.captioner) if generated else None,
            "miner": _component_name(self.miner),
            "miner_settings": _component_settings(self.miner),
        }
        return manifest | dict.fromkeys(config.unused_fields(), None)

    def check_work_dir(self) -> None:
        """Claim the work dir for this recipe, or raise `WorkDirMismatch` if it holds another's.

        The first build writes manifest.json; a later one (a resume, another rank) must match it
        field for field. A work dir with checkpoints but no manifest is refused too: nothing says
        which recipe made them."""
        self._work_dir_claimed = False
        path = self.work_dir / MANIFEST_FILE
        current = _as_read_back(self.manifest())
        advice = f"use another work dir (CLI: another --output-dir), or delete {self.work_dir} to start over"
        if not path.exists():
            leftovers = [
                item.name
                for pattern in ("inputs*.json", "embeddings*.pt", "anchors.json", "stats.json", "shards/*.parquet")
                for item in self.work_dir.glob(pattern)
            ]
            # A peer claiming the work dir meanwhile writes the manifest before its checkpoints: they are not leftovers.
            if leftovers and not path.exists():
                raise WorkDirMismatch(
                    f"work dir {self.work_dir} holds checkpoints ({', '.join(sorted(leftovers)[:5])}) but no manifest, "
                    f"so their recipe is unknown and they cannot be reused safely: {advice}"
                )
            if not path.exists():
                self.work_dir.mkdir(parents=True, exist_ok=True)
                # written once: of two builds that find no manifest at once, the second reads the first's and is
                # refused if its recipe differs (renamed into place, the last manifest won, and both builds went on)
                created_once(path, json.dumps(current, indent=2, sort_keys=True))
        saved = _read_json(path, advice=f"the recipe of the checkpoints beside it is unknown: delete {self.work_dir} to start over")
        saved_version = saved.get("manifest_version", 1)
        if saved_version != MANIFEST_VERSION:
            raise WorkDirMismatch(
                f"work dir {self.work_dir} was made by another version of the builder (manifest version "
                f"{saved_version}, this one writes {MANIFEST_VERSION}), whose manifest cannot say whether its checkpoints "
                f"match this build: {advice}"
            )
        # a work dir begun before the manifest left unused fields out recorded them anyway (a seed nothing seeds)
        recorded = saved | dict.fromkeys(self.config.unused_fields(), None)
        if differences := _differences(recorded, current):
            raise WorkDirMismatch(
                f"work dir {self.work_dir} was built with another recipe ({'; '.join(differences)})"
                f"{_older_builder_notes(saved, recorded, current)}; reusing its checkpoints and shards would mix the "
                f"two builds: {advice}"
            )
        self._work_dir_claimed = True
        # the temporary files of runs killed mid-write on this machine (an embeddings.pt's can take gigabytes), not
        # those that other ranks are writing
        for folder in (self.work_dir, self.shard_dir):
            remove_abandoned_temporaries(folder)

    def _local_source(self) -> Path | None:
        """The source's file or folder, when it is one on this machine."""
        path = None if self.source_dataset is not None else expanded_path(self.config.source)
        return path if path is not None and path.exists() else None

    def _load_source(self) -> datasets.Dataset:
        if self._source is None:
            self._source, fingerprint = open_source(
                self.config, self.source_dataset, cache_dir=self._cache_dir_root, token=self.token
            )
            local = self._local_source()
            self._source_fingerprint = (
                fingerprint if local is None
                # a table of image paths: its images are the source's too (a changed one mixed old and new embeddings)
                else local_source_digest(local, image_paths(self._source, self.config.image_column))
            )
        return self._source

    def _row_id(self, row: dict[str, Any], index: int) -> str:
        """The row's id, or its zero-padded index where it has none (None, NaN or blank: the trainer refuses a blank
        or NaN id, which names the row in its errors and seeds its candidate draws; several NaNs, read as "nan", would
        be taken for one duplicated id)."""
        value = row.get(self.config.id_column)
        missing = value is None or (isinstance(value, float) and math.isnan(value)) or not str(value).strip()
        return f"{index:09d}" if missing else str(value)

    def check_inputs(self) -> tuple[int, list[int], list[SkippedInput]]:
        """(number of source rows, rows fit to be anchors, rows skipped with reasons); checkpointed in inputs.json.
        Each rank checks a slice of the rows (each image is decoded, which for a large corpus takes long), then every
        rank merges the slices alike (`_merge_input_checks`): the same result as one process checking them all."""
        path = self.work_dir / "inputs.json"
        if path.exists():
            saved = _read_json(path)
            return saved["num_source_rows"], saved["valid_rows"], [SkippedInput(**item) for item in saved["skipped"]]
        source = self._load_source()
        self.work_dir.mkdir(parents=True, exist_ok=True)

        def check_my_slice(mine: Path) -> None:
            start, end = _slice_bounds(len(source), self.rank, self.world_size)
            atomic_write_json(mine, self._check_slice(source, start, end, mine), indent=None)

        checks = self._slices_of_every_rank("inputs", ".json", check_my_slice, _read_json, what="input checks")
        valid_rows, skipped = _merge_input_checks(checks)
        payload = {"num_source_rows": len(source), "valid_rows": valid_rows, "skipped": [asdict(i) for i in skipped]}
        atomic_write_json(path, payload, indent=None)
        return len(source), valid_rows, skipped

    def _check_slice(self, source: datasets.Dataset, start: int, end: int, slice_path: Path) -> dict[str, list]:
        """The input check of source rows [start, end): {"valid_rows", "valid_ids", "skipped"}, ids judged duplicate
        only within the slice. Its progress is saved every `INPUT_CHECK_PART_ROWS` rows beside `slice_path`, so an
        interrupted check resumes where it stopped."""
        progress_path = slice_path.with_suffix(".partial.json")
        state = {"next_row": start, "valid_rows": [], "valid_ids": [], "skipped": []}
        if progress_path.exists():
            state = _read_json(progress_path)
        valid_rows, valid_ids = state["valid_rows"], state["valid_ids"]
        skipped = [SkippedInput(**item) for item in state["skipped"]]
        # An id belongs to the first row that passes every check: a skipped row must not claim it.
        kept_row_of_id = dict(zip(valid_ids, valid_rows))
        first = state["next_row"]
        rows = source.select(range(first, end)) if (first, end) != (0, len(source)) else source
        progress = tqdm(rows, "checking inputs", initial=first - start, total=end - start, disable=not self.progress)
        for index, row in enumerate(progress, start=first):
            row_id = self._row_id(row, index)
            problem = self._input_problem(index, row_id, row, kept_row_of_id)
            if problem is None:
                kept_row_of_id[row_id] = index
                valid_rows.append(index)
                valid_ids.append(row_id)
            else:
                skipped.append(problem)
            if (index + 1 - start) % INPUT_CHECK_PART_ROWS == 0 and index + 1 < end:
                checked = {"valid_rows": valid_rows, "valid_ids": valid_ids, "skipped": [asdict(i) for i in skipped]}
                atomic_write_json(progress_path, {"next_row": index + 1, **checked}, indent=None)
        progress_path.unlink(missing_ok=True)
        return {"valid_rows": valid_rows, "valid_ids": valid_ids, "skipped": [asdict(item) for item in skipped]}

    def _input_problem(self, index: int, row_id: str, row: dict[str, Any], kept_row_of_id: dict[str, int]) -> SkippedInput | None:
        """Why source row `index` cannot be an anchor (as the `SkippedInput` that records it), or None."""
        caption = row[self.config.caption_column]
        if row_id in kept_row_of_id:
            return _duplicate_id(index, row_id, kept_row_of_id[row_id])
        if caption is not None and not isinstance(caption, str):
            detail = f"column {self.config.caption_column!r} holds a {type(caption).__name__}, expected str"
            return SkippedInput(index, row_id, "non-string caption", detail)
        if caption is None or not caption.strip():
            return SkippedInput(index, row_id, "empty caption")
        if (token := self._judge_special_token(caption)) is not None:
            detail = f"column {self.config.caption_column!r} holds the judge's special token {token!r}"
            return SkippedInput(index, row_id, "special token in caption", detail)
        value = row[self.config.image_column] or {}
        try:
            image = decode_image(encoded_bytes(value), index)
        except Exception as error:  # any decoding failure makes the row unusable, whatever its kind
            return self._unreadable_image(index, row_id, value, error)
        if (problem := self._image_problem(image.size)) is not None:
            return SkippedInput(index, row_id, "image a model cannot take", problem)
        return None

    def _unreadable_image(self, index: int, row_id: str, value: Any, error: Exception) -> SkippedInput:
        """Source row `index` skipped as an "unreadable image": its image column's `value` failed to decode with
        `error`. The detail names the image file, if any, and the error; a path to no file is most likely text read
        as a file path, and says so."""
        file = value.get("path") if isinstance(value, dict) else None  # an image folder's file, or a column of text
        # A path to no file: text read as a file path, most likely. Told by `encoded_bytes`' error, not by
        # `Path(file).exists()`: `datasets` patches the module of every builder, this one's too, for streaming, and
        # its `Path` and `os.path` read a local file name holding "::" ("shot 12::30.png") as a chained path
        if file and not value.get("bytes") and _names_no_file(error):
            detail = (f"column {self.config.image_column!r} holds the text {reprlib.repr(file)}, read as an image file "
                      "path, and there is no such file")
            return SkippedInput(index, row_id, "unreadable image", detail)
        # PIL names the in-memory file by its address, which would differ from run to run in stats and card
        detail = re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", "the image bytes", f"{type(error).__name__}: {error}")
        return SkippedInput(index, row_id, "unreadable image", f"{file}: {detail}" if file else detail)

    def _judge_special_token(self, text: str) -> str | None:
        """The special token of the judge's tokenizer that `text` holds (`MLLMJudge.special_token_in`),
        or None. The judge refuses such texts, which it would read as that token, not as text; a
        judge without `special_token_in` reads any text."""
        find = getattr(self.judge, "special_token_in", None)
        return None if find is None else find(text)

    def _image_problem(self, size: tuple[int, int]) -> str | None:
        """Why the judge, the captioner or the miner cannot take an image of `size` (their `image_problem`, e.g. a
        Qwen-VL image processor refuses aspect ratios above 200:1), or None. Checked with the inputs, so that such an
        image is skipped with its reason instead of failing every attempt at its shard."""
        components = [("judge", self.judge), ("miner", self.miner)]
        if self.config.text_candidates == "generated":
            components.append(("captioner", self.captioner))
        found = first_finding(components, "image_problem", size)
        return None if found is None else f"the {found[0]}: {found[1]}"

    def _image(self, row: int) -> PIL.Image.Image:
        return decode_image(encoded_bytes(self._load_source()[row][self.config.image_column]), row)

    def embed_inputs(self, valid_rows: list[int]) -> torch.Tensor:
        """(len(valid_rows), D) image embeddings; each rank embeds a slice, all ranks read the whole."""
        path = self.work_dir / "embeddings.pt"
        if path.exists():
            return _read_tensor(path)

        def embed_my_slice(mine: Path) -> None:
            start, end = _slice_bounds(len(valid_rows), self.rank, self.world_size)
            _atomic_torch_save(mine, self._embed_rows_in_parts(valid_rows[start:end], mine))
            for part in mine.parent.glob(f"{mine.stem}.rows-*.pt"):
                part.unlink()

        slices = self._slices_of_every_rank("embeddings", ".pt", embed_my_slice, _read_tensor, what="image embeddings")
        bounds = [_slice_bounds(len(valid_rows), rank, self.world_size) for rank in range(self.world_size)]
        embeddings = self._joined_embeddings([(f"inputs {start}-{end - 1} (rank {rank})", part)
                                              for rank, ((start, end), part) in enumerate(zip(bounds, slices))])
        _atomic_torch_save(path, embeddings)
        return embeddings

    def _embed_rows_in_parts(self, rows: list[int], slice_path: Path) -> torch.Tensor:
        """`_embed_rows(rows)`, checkpointed every `EMBEDDING_PART_ROWS` rows (rounded to whole miner batches, so the
        batches, and the embeddings, are those of one pass) beside `slice_path`: an interrupted run keeps its parts."""
        batch_size = getattr(self.miner, "batch_size", 1)
        part_rows = max(1, EMBEDDING_PART_ROWS // batch_size) * batch_size
        parts = []
        for offset in range(0, len(rows), part_rows):
            end = min(offset + part_rows, len(rows))
            # both ends in the name: a rerun with another miner batch size cuts other parts, and must not mix them
            part_path = slice_path.with_name(f"{slice_path.stem}.rows-{offset:09d}-{end:09d}.pt")
            if part_path.exists():
                parts.append(_read_tensor(part_path))
                if len(parts[-1]) != end - offset:
                    raise DamagedCheckpoint(part_path, ValueError(f"{len(parts[-1])} embeddings for {end - offset} rows"))
                continue
            parts.append(self._embed_rows(rows[offset:end]))
            _atomic_torch_save(part_path, parts[-1])
        offsets = range(0, len(rows), part_rows)
        return self._joined_embeddings([(f"source rows {rows[offset]}-{rows[min(offset + part_rows, len(rows)) - 1]}", part)
                                        for offset, part in zip(offsets, parts)])

    def _joined_embeddings(self, parts: list[tuple[str, torch.Tensor]]) -> torch.Tensor:
        """The (label, embeddings) `parts`, embedded apart, in one tensor; a `MinerOutputError` naming two of them when
        their sizes differ (the miner checks the batches of one call only)."""
        parts = [(label, part) for label, part in parts if part.numel()]
        if not parts:
            return torch.empty(0)
        (first_label, first), *others = parts
        for label, part in others:
            if part.shape[1] != first.shape[1]:
                raise MinerOutputError(
                    f"the image encoder of miner {_component_name(self.miner)!r} returned {first.shape[1]}-d embeddings "
                    f"for {first_label} and {part.shape[1]}-d ones for {label}; expected one size for every image")
        return torch.cat([part for _, part in parts])

    def _embed_rows(self, rows: list[int]) -> torch.Tensor:
        """(len(rows), D) image embeddings of source rows `rows`. A NaN or inf embedding is an error
        naming its source row and id, raised before a checkpoint holds it (the neighbour search
        would refuse it too, but could only name its position among the anchors); so are images the miner cannot embed
        in one batch (`MinerInputError`, which named them by their position in this checkpoint part), a `SourceError`
        raised from it."""
        if not rows:
            return torch.empty(0)
        source = self._load_source()

        def describe(position: int) -> str:
            return f"source row {rows[position]} (id {self._row_id(source[rows[position]], rows[position])})"

        images = (self._image(row) for row in tqdm(rows, desc="embedding images", disable=not self.progress))
        try:
            embeddings = self.miner.embed(images, describe=describe)
        except MinerInputError as error:
            raise SourceError(str(error)) from error
        try:
            check_finite_embeddings(embeddings, "images", describe=describe)
        except ValueError as error:
            raise SourceError(str(error)) from None
        return embeddings

    def select_anchors(self, valid_rows: list[int], embeddings: torch.Tensor) -> tuple[list[int], list[SkippedInput]]:
        """Positions (into `valid_rows`) of the anchors after optional SemDeDup, and the rows it
        drops. Checkpointed in anchors.json and computed by rank 0 only: k-means on different GPUs
        need not round identically, and every rank must build from the same anchors."""
        if self.config.semdedup_clusters is None:
            return list(range(len(valid_rows))), []
        path = self.work_dir / "anchors.json"
        if not path.exists() and self.rank == 0:
            result = self.miner.deduplicate(
                embeddings, num_clusters=self.config.semdedup_clusters, epsilon=self.config.semdedup_epsilon, seed=self.config.seed
            )
            source = self._load_source()
            skipped = []
            for position, duplicate_of in sorted(result.removed.items()):
                row, other = valid_rows[position], valid_rows[duplicate_of]
                skipped.append(
                    SkippedInput(row, self._row_id(source[row], row), "near-duplicate", f"of id {self._row_id(source[other], other)} (SemDeDup)")
                )
            payload = {"anchor_positions": result.kept.tolist(), "near_duplicates": [asdict(item) for item in skipped]}
            atomic_write_json(path, payload, indent=None)
        self._wait_for([path], what="SemDeDup results from rank 0")
        saved = self._read_from_another_rank(path, read=_read_json, what="SemDeDup results from rank 0")
        return saved["anchor_positions"], [SkippedInput(**item) for item in saved["near_duplicates"]]

    def _check_semdedup_clusters(self, rows: int) -> None:
        """A `SourceError` when SemDeDup's clusters cannot be drawn from `rows` rows (`check_semdedup_clusters`); nothing
        to check without SemDeDup."""
        if self.config.semdedup_clusters is not None:
            try:
                check_semdedup_clusters(self.config.semdedup_clusters, rows)
            except ValueError as error:
                raise SourceError(str(error)) from None

    def plan(self) -> BuildPlan:
        """Check the inputs, embed them and pick the anchors (each step checkpointed; memoised)."""
        if self._plan is None:
            self.check_ready()
            self.check_work_dir()
            num_source_rows, valid_rows, skipped = self.check_inputs()
            if not valid_rows:
                reasons = ", ".join(f"{kind}: {count}" for kind, count in Counter(item.kind for item in skipped).items())
                example = f"; e.g. row {skipped[0].row}: {skipped[0].detail}" if skipped and skipped[0].detail else ""
                self._give_up_work_dir()
                raise SourceError(f"no usable input rows: all {num_source_rows} were skipped ({reasons}{example})")
            try:  # and the usable ones, before the costly embedding
                self._check_semdedup_clusters(len(valid_rows))
            except SourceError:
                self._give_up_work_dir()
                raise
            embeddings = self.embed_inputs(valid_rows)
            anchor_positions, deduplicated = self.select_anchors(valid_rows, embeddings)
            self._plan = BuildPlan(
                num_source_rows=num_source_rows,
                anchor_rows=[valid_rows[position] for position in anchor_positions],
                # Moved once: every shard searches all anchors, so a per-shard copy would dominate.
                anchor_embeddings=embeddings[anchor_positions].to(self.miner.search_device),
                skipped=skipped + deduplicated,
            )
        return self._plan

    def _give_up_work_dir(self) -> None:
        """Remove the manifest and the input checks after an error found before embedding: nothing of this recipe is
        computed beyond the input check, so the command the error suggests (other columns, another cluster count)
        can make the work dir its own instead of being refused as another recipe. Ranks waiting for this one see the
        manifest go and stop (`_wait_for`)."""
        self._work_dir_claimed = False
        for path in [self.work_dir / MANIFEST_FILE, *self.work_dir.glob("inputs*.json")]:
            path.unlink(missing_ok=True)

    def build_shards(self) -> ShardReport:
        """Build this rank's missing shards; finished shards are kept as they are."""
        started = time.perf_counter()
        plan = self.plan()
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        num_shards = plan.num_shards(self.config.shard_size)
        report = ShardReport(rank=self.rank, world_size=self.world_size, num_shards=num_shards)
        my_shards = range(self.rank, num_shards, self.world_size)
        for shard in tqdm(my_shards, desc=f"shards (rank {self.rank})", disable=not self.progress):
            path = self._shard_path(shard)
            if path.exists():
                report.reused.append(shard)
                continue
            positions = torch.arange(*self._shard_bounds(shard))
            neighbours = self.miner.mine(plan.anchor_embeddings, self.config.num_hard_negatives, query_rows=positions)
            columns = self._shard_columns(shard, positions.tolist(), neighbours.indices.tolist(), plan.anchor_rows)
            self._write_shard(path, columns)
            report.computed.append(shard)
        report.seconds = time.perf_counter() - started
        return report

    def _shard_bounds(self, shard: int) -> tuple[int, int]:
        """[start, end): the anchor positions of shard `shard` (the last shard may be short)."""
        start = shard * self.config.shard_size
        return start, min(start + self.config.shard_size, len(self.plan().anchor_rows))

    def _shard_path(self, shard: int) -> Path:
        """shards/shard-{start:06d}-{end:06d}.parquet: the anchors [start, end) of shard `shard`."""
        start, end = self._shard_bounds(shard)
        return self.shard_dir / f"shard-{start:06d}-{end:06d}.parquet"

    def _shard_columns(
        self, shard: int, positions: list[int], neighbour_positions: list[list[int]], anchor_rows: list[int]
    ) -> dict[str, list]:
        """The preference rows of one shard, as columns.

        Every source row the shard uses is fetched and decoded once, however many anchors list it as a hard negative
        (and whether or not it is an anchor of the shard itself); the judge scores both candidate lists in one
        `score` call (`score_both_directions`)."""
        config = self.config
        rows = [anchor_rows[position] for position in positions]
        negative_rows = [[anchor_rows[n] for n in neighbours if n >= 0] for neighbours in neighbour_positions]
        candidate_rows = [[row] + negatives for row, negatives in zip(rows, negative_rows)]
        records = self._records(list(dict.fromkeys(row for candidates in candidate_rows for row in candidates)))
        payloads = {row: encoded_bytes(record[config.image_column]) for row, record in records.items()}
        images = {row: decode_image(payload, row) for row, payload in payloads.items()}
        ids = [self._row_id(records[row], row) for row in rows]
        captions = [records[row][config.caption_column].strip() for row in rows]
        anchor_images = [images[row] for row in rows]

        if config.text_candidates == "generated":
            negative_images = [[images[row] for row in negatives] for negatives in negative_rows]
            texts_by_negative = self._generated_captions(
                shard, anchor_images, negative_images,
                describe=lambda anchor, negative: f"anchor source row {rows[anchor]} (id {ids[anchor]!r}) with hard "
                f"negative source row {negative_rows[anchor][negative]}",
            )
            # The judge cannot score these (source captions were checked with the inputs); they
            # are dropped like empty ones: the captioner's tokenizer may differ from the judge's.
            texts_by_negative = [
                [[text for text in texts if self._judge_special_token(text) is None] for texts in by_negative]
                for by_negative in texts_by_negative
            ]
        else:
            texts_by_negative = [
                [[records[row][config.caption_column]] for row in negatives] for negatives in negative_rows
            ]
        candidate_texts = [
            text_pool(caption, texts, config.max_candidate_texts) for caption, texts in zip(captions, texts_by_negative)
        ]

        img2txt, txt2img = score_both_directions(
            self.judge, images, rows, candidate_texts, captions, candidate_rows,
            describe=lambda row: f"shard {shard}, source row {row} (id {self._row_id(records[row], row)!r})",
        )
        check_judge_scores(shard, ids, "img2txt_scores", img2txt)
        check_judge_scores(shard, ids, "txt2img_scores", txt2img)
        return {
            "id": ids,
            "image": [{"bytes": payloads[row], "path": None} for row in rows],
            "caption": captions,
            "candidate_images": [[{"bytes": payloads[row], "path": None} for row in candidates] for candidates in candidate_rows],
            "candidate_texts": candidate_texts,
            "txt2img_scores": [scores.float().tolist() for scores in txt2img],
            "img2txt_scores": [scores.float().tolist() for scores in img2txt],
        }

    def _records(self, rows: list[int]) -> dict[int, dict[str, Any]]:
        """Source rows `rows` (distinct), fetched in one read, by row."""
        columns = self._load_source()[rows]
        return {row: {name: values[index] for name, values in columns.items()} for index, row in enumerate(rows)}

    def _generated_captions(
        self, shard: int, anchors: list[PIL.Image.Image], negatives: list[list[PIL.Image.Image]],
        describe: Callable[[int, int], str],
    ) -> list[list[list[str]]]:
        """Per anchor, per each of its first `captioned_negatives` hard negatives, the captioner's captions for the
        anchor and that negative, in order (`scoring.check_captions`; `describe(anchor, negative)` names a pair by
        their positions in `anchors` and the anchor's `negatives`)."""
        pairs = [
            (index, negative, describe(index, position))
            for index, anchor_negatives in enumerate(negatives)
            for position, negative in enumerate(anchor_negatives[: self.config.captioned_negatives])
        ]
        generated: list[list[list[str]]] = [[] for _ in anchors]
        if not pairs:
            return generated
        # manual_seed seeds every GPU, so every GPU's generator is restored; naming them keeps fork_rng from
        # warning about several visible GPUs.
        with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
            # Sampling depends only on the seed and the shard, never on which process or run builds it.
            torch.manual_seed(self.config.seed * SHARD_SEED_STRIDE + shard)
            captioned = self.captioner.caption([anchors[index] for index, _, _ in pairs], [negative for _, negative, _ in pairs])
        for (index, _, _), texts in zip(pairs, check_captions(shard, captioned, [name for _, _, name in pairs])):
            generated[index].append(texts)
        return generated

    def _write_shard(self, path: Path, columns: dict[str, list]) -> None:
        """Write a shard through `atomic_write`: a shard file is complete or absent."""
        table = pa.Table.from_pydict(PREFERENCE_FEATURES.encode_batch(columns), schema=PREFERENCE_FEATURES.arrow_schema)
        atomic_write(path, lambda temporary: pq.write_table(table, temporary))

    def _wait_for(self, paths: list[Path], *, what: str) -> None:
        """Returns once every path exists. Raises `WorkDirMismatch` if the manifest goes meanwhile: another rank gave
        up the work dir (an error before embedding, which removes what the others wait for) and said why; raises
        `TimeoutError`, naming the missing files, if they are not all there after `wait_timeout` seconds.

        The work dir counts as claimed when `check_work_dir` passed, not only when the manifest is there at the wait's
        start: a peer may give up between this rank writing its part and its wait. (A stage called on its own, without
        `plan`, goes by the manifest alone.)"""
        deadline, manifest = time.monotonic() + self.wait_timeout, self.work_dir / MANIFEST_FILE
        claimed = self._work_dir_claimed or manifest.exists()
        while missing := [path for path in paths if not path.exists()]:
            if claimed and not manifest.exists():
                raise self._given_up(what)
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"waited {self.wait_timeout:.0f}s for {what} from other processes; still missing: "
                    + ", ".join(path.name for path in missing)
                )
            time.sleep(0.5)

    def _given_up(self, what: str) -> WorkDirMismatch:
        return WorkDirMismatch(
            f"another process gave up the work dir {self.work_dir} while this one waited for {what}: its error says why"
        )

    def _slices_of_every_rank(
        self, stage: str, suffix: str, compute: Callable[[Path], None], read: Callable[[Path], Any], *, what: str
    ) -> list[Any]:
        """Every rank's slice of a stage, in rank order, once all are written: this rank's slice file
        (`<stage>-<rank>-of-<world_size><suffix>` in the work dir) is written by `compute(path)` unless a run before
        left it, and each is read with `read`."""
        slices = [self.work_dir / f"{stage}-{rank}-of-{self.world_size}{suffix}" for rank in range(self.world_size)]
        if not slices[self.rank].exists():
            compute(slices[self.rank])
        self._wait_for(slices, what=what)
        return [self._read_from_another_rank(slice_, read=read, what=what) for slice_ in slices]

    def _read_from_another_rank(self, path: Path, *, read: Callable[[Path], Any], what: str) -> Any:
        """`read(path)` (a `_read_json` or `_read_tensor`) of a file `_wait_for` saw. A rank that gives up the work dir
        removes it and the manifest, possibly between that wait and this read: then, if this rank had claimed the work
        dir, it says so rather than report the missing file."""
        try:
            return read(path)
        except FileNotFoundError:
            if self._work_dir_claimed and not path.exists() and not (self.work_dir / MANIFEST_FILE).exists():
                raise self._given_up(what) from None
            raise

    def _wait_for_shards(self) -> list[Path]:
        """All shard paths in anchor order, once every rank has written its shards and they hold
        every anchor exactly once."""
        plan = self.plan()
        paths = [self._shard_path(shard) for shard in range(plan.num_shards(self.config.shard_size))]
        self._wait_for(paths, what="shards")
        # Every shard exists, so no process is still writing one, nor one of `_CHECKPOINTS_BEFORE_SHARDS`: their
        # half-written files from killed runs can go (an embedding part's can be tens of MB), those of every machine's
        # writers, which `remove_abandoned_temporaries` leaves to their machine, and those of a file system without
        # locks, where it removes none.
        patterns = [("shards", "*.tmp-*"), *((".", f"{checkpoint}.tmp-*") for checkpoint in _CHECKPOINTS_BEFORE_SHARDS)]
        for leftover in [path for folder, pattern in patterns for path in (self.work_dir / folder).glob(pattern)]:
            leftover.unlink(missing_ok=True)
        self._check_shard_coverage(len(plan.anchor_rows))
        return paths

    def _check_shard_coverage(self, num_anchors: int) -> None:
        """Raise unless the shard files cover anchors [0, num_anchors) exactly once, each holding
        as many rows as its name says."""
        problems = []
        shards_of = [[] for _ in range(num_anchors)]
        for path in sorted(self.shard_dir.glob("shard-*.parquet")):
            match = _SHARD_NAME.match(path.name)
            if match is None:
                problems.append(f"{path.name} is not named shard-START-END.parquet")
                continue
            start, end = int(match[1]), int(match[2])
            if not 0 <= start < end <= num_anchors:
                problems.append(f"{path.name} holds anchors outside [0, {num_anchors})")
                continue
            try:  # a PermissionError or an EIO, which say nothing of the shard, propagate noting it
                rows = _read_checkpoint(path, pq.read_metadata).num_rows
            except DamagedCheckpoint as damaged:  # e.g. a truncated file (pyarrow's ArrowInvalid)
                problems.append(f"{path.name} cannot be read ({damaged.__cause__}): delete it and run again to rebuild it")
                continue
            if rows != end - start:
                problems.append(f"{path.name} holds {rows} rows, not {end - start}")
            for position in range(start, end):
                shards_of[position].append(path.name)
        missing = [position for position, names in enumerate(shards_of) if not names]
        repeated = [position for position, names in enumerate(shards_of) if len(names) > 1]
        if missing:
            problems.append(f"anchors {_ranges(missing)} are in no shard")
        if repeated:
            names = sorted({name for position in repeated for name in shards_of[position]})
            problems.append(f"anchors {_ranges(repeated)} are in more than one shard ({', '.join(names)})")
        if problems:
            raise WorkDirMismatch(
                f"cannot assemble the dataset from {self.shard_dir}: " + "; ".join(problems)
                + f". Remove the stray shard files, or delete {self.work_dir} and build again."
            )

    # ----------------------------------------------------------------------------------------------
    # statistics, publishing, loading

    def build_stats(self, shard_paths: list[Path] | None = None) -> dict[str, Any]:
        """Summary of the finished build (counts, skipped inputs, score histograms), which `download_and_prepare` saves
        to stats.json in the work dir; the dataset card is written from it. `shard_paths`: the shards
        `_wait_for_shards` returned, if the caller has them (else it is called here)."""
        plan = self.plan()
        if shard_paths is None:
            shard_paths = self._wait_for_shards()
        # One score per candidate (checked before each shard was written), so the score columns give the candidate
        # counts too: the image columns are never read, a shard at a time.
        score_columns = {"txt2img_scores": "candidate_images", "img2txt_scores": "candidate_texts"}
        num_anchors, counts = 0, dict.fromkeys(score_columns.values(), 0)
        bin_counts = {column: torch.zeros(10, dtype=torch.long) for column in score_columns}
        for path in shard_paths:
            table = _read_checkpoint(path, lambda shard: pq.read_table(shard, columns=list(score_columns)))
            num_anchors += table.num_rows
            for column, candidates in score_columns.items():
                scores = torch.from_numpy(pc.list_flatten(table[column]).to_numpy().astype("float32"))
                counts[candidates] += scores.numel()
                bin_counts[column] += torch.histc(scores, bins=10, min=0.0, max=1.0).long()
        histograms = {
            column: {"bin_edges": torch.linspace(0, 1, 11).tolist(), "counts": bin_counts[column].tolist()}
            for column in score_columns
        }
        stats = {
            "config_name": self.config.name,
            "source": self.config.source or IN_MEMORY_SOURCE,
            "source_license": self.config.source_license,
            "judge": _component_name(self.judge),
            "judge_prompt": getattr(self.judge, "prompt", None),
            "captioner": (
                _component_name(self.captioner)
                if self.config.text_candidates == "generated"
                else "none (hard negatives' own captions)"
            ),
            "num_hard_negatives": self.config.num_hard_negatives,
            "text_candidates": self.config.text_candidates,
            "semdedup": None
            if self.config.semdedup_clusters is None
            else {"clusters": self.config.semdedup_clusters, "epsilon": self.config.semdedup_epsilon},
            "num_source_rows": plan.num_source_rows,
            "num_anchors": num_anchors,
            "num_candidate_images": counts["candidate_images"],
            "num_candidate_texts": counts["candidate_texts"],
            "num_skipped": len(plan.skipped),
            "skipped_by_reason": dict(Counter(item.kind for item in plan.skipped)),
            "skipped": [asdict(item) for item in plan.skipped],
            "score_histograms": histograms,
        }
        return stats

    @property
    def stats(self) -> dict[str, Any]:
        """The stats.json of the finished build."""
        path = self.work_dir / "stats.json"
        if not path.exists():
            raise FileNotFoundError(f"no finished build in {self.work_dir}: run download_and_prepare() first")
        return _read_json(path)

    def push_to_hub(self, repo_id: str, *, private: bool = False, token: str | None = None) -> str:
        """Upload the built dataset (parquet, config named after this config) and its dataset card
        (`model_cards.dataset_card_from_stats`: judge and prompt, captioner, K, counts, skipped
        inputs, score histograms, source licence, known biases). Other configs already in the repo
        stay loadable and described: their entries in the card's `configs` / `dataset_info` metadata
        are kept, and the card has a section per config, rendered from the stats every push leaves
        in `stats/<config>/` (stats.json and the score histograms). Returns the repo id ("namespace/name", also
        for a bare `repo_id`, which is created under the token's user)."""
        from huggingface_hub import HfApi, hf_hub_download

        from maple.hub import check_private
        from model_cards import dataset_card_from_stats
        from model_cards.cards import HISTOGRAM_FILE, push_dataset_card

        api = HfApi(token=token)
        # The full id: a bare name is created under the token's user, and every call below needs "namespace/name".
        repo_id = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True).repo_id
        if private:
            check_private(api, repo_id, "dataset")
        stats_dir = f"stats/{self.config.name}"
        other_configs = [
            json.loads(Path(hf_hub_download(repo_id, path, repo_type="dataset", token=token)).read_text())
            for path in api.list_repo_files(repo_id, repo_type="dataset")
            if re.fullmatch(r"stats/[^/]+/stats\.json", path) and path != f"{stats_dir}/stats.json"
        ]
        staging = self.work_dir / "hub"  # the repo's files of this config, as they are uploaded
        shutil.rmtree(staging, ignore_errors=True)
        (staging / stats_dir).mkdir(parents=True)
        manifest = self.work_dir / MANIFEST_FILE
        read_from_local_files = manifest.exists() and _read_json(manifest).get("source") == "local files"
        published_stats = publishable_stats(self.stats, read_from_local_files)
        card = dataset_card_from_stats(
            {**self.stats, **published_stats}, repo_id=repo_id, output_dir=staging,
            histogram_file=f"{stats_dir}/{HISTOGRAM_FILE}", other_configs=other_configs,
        )
        histogram = staging / stats_dir / HISTOGRAM_FILE
        published_stats["histogram_file"] = f"{stats_dir}/{HISTOGRAM_FILE}" if histogram.exists() else None
        atomic_write_json(staging / stats_dir / "stats.json", published_stats)
        # The data first: a push that fails there leaves no stats, and no card naming a config that is not there (the
        # stats of every config in the repo make the card's sections, so they would name it at every later push).
        datasets.DatasetDict({"train": self.as_dataset(split="train")}).push_to_hub(
            repo_id, config_name=self.config.name, private=private, token=token
        )
        # Then the stats, the histogram and the card that links them, in one commit.
        files = {f"{stats_dir}/{path.name}": path for path in sorted((staging / stats_dir).iterdir())}
        push_dataset_card(card, repo_id, files, token=token, commit_message=f"Describe config {self.config.name}")
        return repo_id

    @classmethod
    def from_pretrained(
        cls, repo_id_or_path: str, *, config_name: str | None = None, split: str = "train", **load_kwargs
    ) -> datasets.Dataset:
        """A published preference dataset: a Hub id, a local folder holding its parquet files (a
        snapshot of the repo, or a build's work dir), a parquet file, or a `save_to_disk` folder (`maple demo`'s
        `preferences/data`). `split` is read as `datasets` reads it everywhere ("train[:100]", "train+test"); the
        splits of local parquet files are those their names give, as `datasets` reads a folder
        ("test-00000-of-00001.parquet"), and the rows of a saved `Dataset`, of one file or of files whose names give no
        split (a build's shards) are the "train" split. A file that `datasets` would leave out beside files it reads, or
        read as two splits, is a `maple.dataset_layout.SplitLayoutError` naming it, never read as another split's. Files are read
        with the numbers in their names in value order (a build's shards past anchor 999,999 in anchor order), where
        `datasets` sorts names as text; a file whose columns are not the schema's, or that is no parquet, is a
        ValueError naming it.

        A repo snapshot whose README.md names its `configs` (as a pushed card does) is read as the card says, by
        `datasets.load_dataset`, as `maple train` reads it. Without one, each config's files lie in a top-level folder
        named after it (the "default" config's in `data/`), told apart from split folders as `maple train` tells them
        (`maple.dataset_layout.snapshot_config_folders`): `config_name` picks one (a file holds none); without it a
        snapshot must hold a single config (several are an error listing them, never one split of every config's
        rows). A Hub repo that answers
        with an error (an HTTP status: a 401 to a read without a token, for a missing and a private repo alike), or an
        offline or unreachable Hub, is a `HubReadError` naming it and what the Hub answered
        (`maple.hub.hub_read_failure`, which asks the Hub when `datasets` kept no answer); read with a token, a repo
        the Hub does not find for it is `datasets`' own `DatasetNotFoundError`. A `token` that cannot be sent (empty, or
        holding a space, a line break or a character outside printable ASCII: `maple.hub.token_problem`) is a ValueError
        saying why, without the token, before the Hub is asked."""
        path = expanded_path(repo_id_or_path)  # as the builder expands work_dir
        if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():  # a `save_to_disk` folder
            if config_name is not None:
                raise ValueError(f"{repo_id_or_path} is a save_to_disk folder, which holds no configs: leave config_name out")
            saved = datasets.load_from_disk(str(path))
            splits = saved if isinstance(saved, datasets.DatasetDict) else {"train": saved}
            if split in splits:  # a name ReadInstruction may not parse ("val-x")
                return splits[split]
            try:
                parts = datasets.ReadInstruction.from_spec(split).to_absolute({name: len(rows) for name, rows in splits.items()})
            except ValueError as error:  # an unknown split, or a malformed one
                raise ValueError(f"{repo_id_or_path} holds the splits {sorted(splits)}: split {split!r}: {error}") from None
            rows = [splits[part.splitname].select(range(part.from_, part.to)) for part in parts]
            return rows[0] if len(rows) == 1 else datasets.concatenate_datasets(rows)
        if path.is_dir() and card_configs(path):
            # a snapshot whose card names its configs' files: read as `datasets`, and `maple train`, read it
            return datasets.load_dataset(str(path), name=config_name, split=split, **load_kwargs)
        if path.exists():
            if path.is_file() and config_name is not None:  # (it was read whatever config was named)
                raise ValueError(f"{repo_id_or_path} is a file, which holds no configs: leave config_name out")
            folder = path if config_name is None else _config_folder(path, config_name)
            files = [path] if path.is_file() else sorted(folder.rglob("*.parquet"), key=_in_number_order)
            if not files:
                raise FileNotFoundError(f"no parquet files{f' of config {config_name!r}' if config_name else ''} under {repo_id_or_path}")
            config_folder = folder if config_name is not None else None
            if config_name is None and path.is_dir():
                # the configs `maple train` tells apart: a folder of split folders (train/, test/) is one config with
                # those splits; "." for a config's folder given as the folder
                configs = snapshot_config_folders(path, files)
                if len(configs) > 1:
                    raise ValueError(f"{repo_id_or_path} holds several configs ({', '.join(configs)}): pass config_name= to pick one")
                config_folder = lone_config_folder(path / configs[0]) if configs else None
            # Split by their paths, as `datasets` splits a repo's files ("train-00000-of-00001.parquet", "test/..."),
            # each file as its own split or refused; a build's shards, whose names give none, are all "train". `split`
            # may slice ("train[:100]").
            by_split = files_by_split(folder, files, config_folder=config_folder) if path.is_dir() else {"train": files}
            data_files = {name: [str(file) for file in split_files] for name, split_files in by_split.items()}
            for file in (file for split_files in data_files.values() for file in split_files):
                _check_preference_columns(file)
            return datasets.load_dataset("parquet", data_files=data_files, split=split, features=PREFERENCE_FEATURES, **load_kwargs)
        from maple.hub import HubReadError, hub_read_failure, token_problem

        # the token `datasets` reads with: `token=`, else the one in `download_config=`
        token = load_kwargs.get("token")
        if token is None:
            token = getattr(load_kwargs.get("download_config"), "token", None)
        # refused before any request: httpx would raise the header `Bearer <token>`, token and all, in its message
        if (problem := token_problem(token)) is not None:
            raise ValueError(f"token: {problem}; {repo_id_or_path} was not read")
        try:
            return datasets.load_dataset(repo_id_or_path, name=config_name, split=split, **load_kwargs)
        # datasets reads some Hub answers (an HTTP 500) as a missing local path, and raises a repo not found or an
        # offline Hub without the Hub's answer: `hub_read_failure` asks the Hub then
        except OSError as error:
            problem = hub_read_failure(error, repo_id_or_path, repo_type="dataset", revision=load_kwargs.get("revision"),
                                       token=token)
            if problem is None:
                raise
            raise HubReadError(problem) from error
