"""The `maple demo` pipeline: the whole of MAPLE, offline, on the procedurally drawn world.

Stages, in the order `run_demo` runs them; each one that takes time is checkpointed in the output folder, so that an
interrupted demo resumes where it stopped:

1. world: drawn from its seed (fast, never stored; the same every run).
2. test sets: the evaluated part of the world's held-out retrieval set and quadruples, written to test_sets/ as
   parquet files in `maple eval`'s schemas, so that any checkpoint can be scored as the runs are.
3. base: a tiny embedder trained with plain InfoNCE on the world's image-caption pairs
   (`RPATrainer` with `rpa_weight=0` on rows whose only candidate is the anchor), standing in
   for the pretrained model the paper starts from.
4. preferences: `MaplePreferences` with a `HardNegativeMiner` on scene-graph features (a
   stand-in for the paper's DINOv2; or the base model's image embeddings), the scene-graph
   captioner and judge (MLLM stand-ins; `judge=` takes a real one), and the dataset's card.
5. runs: from that same base, per seed, three fine-tuning runs with equal steps, batch and
   learning rate: `infonce` (anchor pairs only), `infonce_expanded` (hard negatives in the
   InfoNCE denominator) and `maple` (expanded negatives + RPA listwise), each evaluated (`evaluation`'s
   protocols) on the test sets.
6. report: results.json/.md and plots (`report`), the MAPLE checkpoint with its model card, and with
   `push_to_hub` the model and the preference dataset pushed with their cards.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import datasets
import torch
from tqdm.auto import tqdm

from ..files import (
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    changed_entries,
    expanded_path,
    folder_problem,
    remove_abandoned_temporaries,
)
from ..hub import hub_failure, repo_id_problem
from . import BACKBONES, MINERS  # the choices of `maple demo`, where its --help reads them without torch
from .report import results_markdown, write_report
from .scene_judge import SceneFeatureEncoder, SceneGraphCaptioner, SceneGraphJudge
from .world import CATEGORIES, Example, Quadruple, World, WorldConfig, build_world, is_positive_integer

METHODS = ("infonce", "infonce_expanded", "maple")
TEST_SETS_DIR = "test_sets"  # the evaluated test sets, in `maple eval`'s schemas
RUN_FILE = "run.json"
TIMINGS_FILE = "timings.json"
# Part of every run's identity: bumped whenever what a run computes changes (model, data recipe), so a folder written
# by an older demo is refused instead of being mixed with new results (`git log -G "DEMO_VERSION = "` says what changed).
DEMO_VERSION = 5
PAIRS_VOCABULARY_SIZE = 360  # byte-level BPE: 256 bytes plus a merge for every word of the world
# The paper's caption pool: the anchor caption plus MLLM captions of its hard negatives, 6 texts in
# all, sampled from at every step ("sampling from the whole pool worked best"): each step uses the
# anchor caption and 3 texts drawn from the other 5.
CAPTION_POOL_SIZE = 6
TEXT_CANDIDATES_PER_STEP = 4
# Training arguments that only change what is displayed, left out of a run's stored arguments.
DISPLAY_ONLY_ARGS = ("disable_tqdm",)
# The licence of the preference data and of the MAPLE model the demo publishes: the world is drawn, and its base model
# initialised and trained, by this package's code (Apache-2.0), from no one else's data or weights. With --judge, the
# preference scores are that MLLM's outputs, and its own terms may apply to them too (docs/demo.md)
DEMO_LICENSE = "apache-2.0"


@dataclass(frozen=True)
class Budget:
    """How much the demo trains and evaluates. The test items evaluated are the first
    `eval_retrieval` retrieval items and the first `eval_quadruples_per_category` quadruples of
    each category of the world's fixed test sets."""

    train_families: int
    base_steps: int
    base_batch_size: int
    finetune_steps: int
    finetune_batch_size: int
    eval_retrieval: int
    eval_quadruples_per_category: int


FULL = Budget(
    train_families=400,
    base_steps=600,
    base_batch_size=64,
    finetune_steps=150,
    finetune_batch_size=32,
    eval_retrieval=500,
    eval_quadruples_per_category=150,
)
QUICK = Budget(
    train_families=60,
    base_steps=20,
    base_batch_size=32,
    finetune_steps=5,
    finetune_batch_size=16,
    eval_retrieval=60,
    eval_quadruples_per_category=20,
)


@dataclass(frozen=True)
class DemoConfig:
    """One demo run; each field's `help` says what it does. Everything but `out`, `push_to_hub`, `token`, `progress`
    and `workers` (and `judge_noise` with a real `judge`) defines the run: an output folder holding a run with other
    values is refused."""

    out: Path = field(metadata={"help": "output folder: every stage's outputs, from which a rerun resumes"})
    seeds: tuple[int, ...] = field(
        default=(0, 1, 2), metadata={"help": "seeds of the fine-tuning runs: one run per method and seed"}
    )
    backbone: str = field(default="dual_encoder", metadata={"help": f"the embedder: one of {', '.join(BACKBONES)}"})
    quick: bool = field(default=False, metadata={"help": "the small `QUICK` budget instead of `FULL`"})
    judge: str | None = field(
        default=None, metadata={"help": "Hub id or path of a real MLLM judge; None: the scene-graph judge"}
    )
    judge_noise: float = field(
        default=0.3,
        metadata={"help": "std of the scene-graph judge's logit noise (an imperfect MLLM); unused with `judge`"},
    )
    miner: str = field(
        default="scene-graph",
        metadata={"help": "hard negatives from scene-graph features (a stand-in for the paper's DINOv2) or from the "
                  "base model's own image embeddings"},
    )
    rpa_weight: float = field(default=0.5, metadata={"help": "lambda of the maple runs"})
    learning_rate: float = field(
        default=1e-3, metadata={"help": "of the base model's training and of every fine-tuning run"}
    )
    world_seed: int = field(
        default=0,
        metadata={"help": "seed of the world and of what is built from it before the fine-tuning runs (base model, "
                  "preference data)"},
    )
    push_to_hub: str | None = field(
        default=None,
        metadata={"help": "repo the MAPLE model is pushed to, and REPO-preferences the preference data; None: no push"},
    )
    # not in repr: a config printed in a log or an error must not show it
    token: str | None = field(
        default=None, repr=False,
        metadata={"help": "Hub token of the push (every request of it) and of a `judge` read from the Hub; None: HF_TOKEN "
                          "or the token `hf auth login` saved"},
    )
    progress: bool = field(default=True, metadata={"help": "show progress bars"})
    workers: int = field(
        default=1,
        metadata={"help": "fine-tuning runs trained side by side, each in its own process on one CPU thread; the runs "
                  "are independent, so this changes the wall clock, not what is trained (`maple demo`: 2)"},
    )

    def __post_init__(self) -> None:
        problems = []
        # Refused while it is text: as a Path, "" (an unset variable) is ".", the current folder, which the run would
        # then fill; `out=Path(".")` names it on purpose. (`maple demo --out ""` is refused as it is parsed.)
        if not os.fspath(self.out):
            problems.append("out is empty; expected a folder (created if missing)")
        # "~/x" as typed in `--out=~/x`, which the shell leaves alone: every writer must see the folder the checks see
        object.__setattr__(self, "out", expanded_path(self.out))
        if self.backbone not in BACKBONES:
            problems.append(f"unknown backbone {self.backbone!r}: expected one of {', '.join(BACKBONES)}")
        if self.miner not in MINERS:
            problems.append(f"unknown miner {self.miner!r}: expected one of {', '.join(MINERS)}")
        if not self.seeds:
            problems.append("seeds: give at least one seed")
        elif any(not isinstance(seed, int) or isinstance(seed, bool) for seed in self.seeds):
            problems.append(f"seeds must be integers, got {list(self.seeds)!r}")
        else:  # integers, which can be compared
            if len(set(self.seeds)) != len(self.seeds):
                problems.append(f"seeds must be distinct, got {list(self.seeds)}")
            if any(not 0 <= seed < 2**32 for seed in self.seeds):
                problems.append(f"seeds must lie in [0, 2**32) (numpy's and torch's seed range), got {list(self.seeds)}")
        # not options of `maple demo`, but a run refused only once its base model trains (numpy's seed check) or its
        # losses are NaN has claimed the folder and drawn the world first
        world_seed, learning_rate = self.world_seed, self.learning_rate
        if isinstance(world_seed, bool) or not isinstance(world_seed, int) or not 0 <= world_seed < 2**32:
            problems.append(f"world_seed must be an integer in [0, 2**32) (numpy's and torch's seed range), got "
                            f"{world_seed!r}")
        if isinstance(learning_rate, bool) or not (
            isinstance(learning_rate, (int, float)) and math.isfinite(learning_rate) and learning_rate > 0
        ):
            problems.append(f"learning_rate must be a finite number > 0, got {learning_rate!r}")
        if not 0.0 < self.rpa_weight <= 1.0:
            problems.append(f"rpa_weight (lambda) must lie in (0, 1], got {self.rpa_weight}")
        if not is_positive_integer(self.workers):
            problems.append(f"workers must be a positive integer, got {self.workers!r}")
        if not (math.isfinite(self.judge_noise) and self.judge_noise >= 0):
            problems.append(f"judge_noise is a standard deviation and must be finite and >= 0, got {self.judge_noise}")
        if self.judge is not None and not self.judge.strip():
            problems.append("judge: give a Hub id or a local path of an MLLM judge, or leave it out for the scene-graph judge")
        if self.push_to_hub is not None:  # the model's repo, and the preference data's beside it
            problem = repo_id_problem(self.push_to_hub) or repo_id_problem(f"{self.push_to_hub}-preferences")
            if problem is not None:
                problems.append(f"push_to_hub: {problem}")
        if problems:  # all at once, so that a command line is corrected in one go
            raise ValueError("; ".join(problems))

    @property
    def budget(self) -> Budget:
        return QUICK if self.quick else FULL

    @property
    def world_config(self) -> WorldConfig:
        return WorldConfig(seed=self.world_seed, n_train_families=self.budget.train_families)

    def identity(self) -> dict[str, Any]:
        """What makes two runs the same run (stored in run.json): `judge_noise` only for the scene-graph judge, the
        one it changes (`make_judge`)."""
        return {
            "demo_version": DEMO_VERSION,
            "seeds": list(self.seeds),
            "backbone": self.backbone,
            "quick": self.quick,
            "judge": self.judge or "scene-graph",
            **({"judge_noise": self.judge_noise} if self.judge is None else {}),
            "miner": self.miner,
            "rpa_weight": self.rpa_weight,
            "learning_rate": self.learning_rate,
            "world": asdict(self.world_config),
            "budget": asdict(self.budget),
        }


def claim_output_folder(config: DemoConfig) -> None:
    """Make `config.out` this run's folder, or refuse one that holds something else; a real judge
    that cannot be loaded is refused first, so that no folder is claimed for a run that cannot finish."""
    if config.judge is not None:
        check_judge(config.judge, config.token)
    out, path, identity = config.out, config.out / RUN_FILE, config.identity()
    if problem := folder_problem(out, "--out"):
        raise ValueError(problem)
    if out.is_dir():  # a run killed as it claimed the folder left half its run.json, which made it "not empty"
        remove_abandoned_temporaries(out, RUN_FILE)
    if path.exists():
        stored = _read_json_file(path, "a demo run")
        # an older demo's run of a real judge holds its unused noise: compared with a run of a real judge, it is left out
        if stored.get("judge", "scene-graph") != "scene-graph" and config.judge is not None:
            stored.pop("judge_noise", None)
        if differences := _identity_differences(stored, identity):
            raise ValueError(
                f"--out {out} holds a different demo run ({'; '.join(differences)}); "
                "choose another folder, or delete this one to start over"
            )
        return
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"--out {out} is not empty and holds no demo run ({RUN_FILE} is missing); choose another folder")
    # a folder of another run (its base/, still to be written) would be that run's to overwrite, and this one's
    if (run := next((folder for folder in out.absolute().parents if (folder / RUN_FILE).is_file()), None)) is not None:
        raise ValueError(f"--out {out} is inside the demo run in {run}; choose a folder outside it")
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, identity)
    except OSError as error:  # read-only or unwritable location: one line, not a traceback
        raise ValueError(f"--out {out}: cannot write there ({error.strerror or error})") from error


def _identity_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """"name: stored -> current" for each differing entry of two run identities (`changed_entries`: say
    `budget.finetune_steps`), as `check_recipe` words a changed training recipe."""
    return [f"{name}: {then!r} -> {now!r}" for name, then, now in changed_entries(stored, current)]


def check_judge(judge: str, token: str | None = None) -> None:
    """A ValueError unless `judge` names a checkpoint `MLLMJudge` can load: its config must be
    readable (from the Hub with `token`) and its model family supported (only the config is read, not the weights)."""
    from transformers import AutoConfig

    from dataset_builders.vlm_inputs import check_supported
    from evaluation.models import ModelLoadError, check_model_ref
    from maple.hub import hub_failure

    try:
        check_model_ref(judge)  # a missing folder, said plainly: not a Hub id that fails validation
    except ModelLoadError as error:
        raise ValueError(f"--judge {judge}: {error}") from None
    try:
        check_supported(AutoConfig.from_pretrained(judge, token=token).model_type)
    except (OSError, ValueError, NotImplementedError) as error:
        if (problem := hub_failure(error, judge)) is not None:  # the Hub's answer, worded as the other commands word it
            raise ValueError(f"--judge {judge}: {problem}") from None
        problem = " ".join(str(error).split())  # transformers' messages run over several lines
        raise ValueError(f"--judge {judge}: not a judge that can be loaded ({type(error).__name__}: {problem})") from None


class PushError(RuntimeError):
    """A push to the Hub that failed; the message names the repo and what the Hub answered (`maple.hub.hub_failure`)."""


class OutputFileError(ValueError):
    """A file of the output folder that cannot be read; `maple demo` says so in one line, not a traceback."""


def _read_json_file(path: Path, what: str, advice: str = "delete the folder to start over") -> dict[str, Any]:
    """The JSON object stored in `path`, or an OutputFileError saying it cannot be read as `what`, and the `advice`."""
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError) as error:  # ValueError: not JSON, or not UTF-8
        raise OutputFileError(f"{path} cannot be read as {what} ({error}); {advice}") from None
    if not isinstance(stored, dict):
        raise OutputFileError(f"{path} holds a {type(stored).__name__}, not {what}; {advice}")
    return stored


PUSH_STAGE = "push to hub"


@dataclass
class StageTimer:
    """Seconds spent per stage, for the summary and the docs' time breakdown. With a `file`, every finished
    stage's time is written to it at once, over the `earlier` times of the stages a rerun skips, so an
    interrupted run keeps the times of what it finished."""

    seconds: dict[str, float] = field(default_factory=dict)
    file: Path | None = None
    earlier: dict[str, float] = field(default_factory=dict)

    def run(self, stage: str, work: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        result = work()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - started
        if self.file is not None:
            atomic_write_json(self.file, self.all_seconds)
        return result

    @property
    def all_seconds(self) -> dict[str, float]:
        return {**self.earlier, **self.seconds}


# --- model and data ---------------------------------------------------------------------------


def build_embedder(world: World, backbone: str, seed: int = 0, progress: bool = True):
    """A tiny untrained embedder and its processor; `progress`: the tokenizer trainer's progress bars.

    dual_encoder: a CLIP-style ViT (4 layers, patch 6 on 48 px images) and a small BERT (4 layers),
    width 64, mean-pooled into a shared 64-d space; mean pooling gives the bag-of-attributes
    tendencies of real CLIP models. Two layers and patch 8 were too small to bind attributes to
    objects at all (docs/demo.md). The tokenizer is a byte-level BPE trained on the world's training
    captions.

    mllm: the test-sized Qwen2-VL of `modeling_maple.testing` (width 32, two layers), used as a dual
    encoder as in the paper: it shows the MLLM path end to end, but is too small to learn the world.
    """
    from transformers import BertConfig, CLIPImageProcessorPil, CLIPVisionConfig, Qwen2Tokenizer

    from modeling_maple import MapleConfig, MapleModel, MapleProcessor

    image_size = world.config.image_size
    if backbone == "mllm":
        from modeling_maple.testing import tiny_image_processor, tiny_qwen2_vl_config, tiny_tokenizer

        config = MapleConfig(backbone="mllm", mllm_config=tiny_qwen2_vl_config(), pooling="mean")
        processor = MapleProcessor(
            image_processor=tiny_image_processor(image_size=image_size), tokenizer=tiny_tokenizer(), backbone="mllm"
        )
    else:
        tokenizer = Qwen2Tokenizer().train_new_from_iterator(
            [example.caption for example in world.train], vocab_size=PAIRS_VOCABULARY_SIZE, show_progress=progress
        )
        width, max_text_tokens = 64, 64
        tokenizer.model_max_length = max_text_tokens  # the text tower's position limit
        config = MapleConfig(
            backbone="dual_encoder",
            vision_config=CLIPVisionConfig(
                hidden_size=width,
                intermediate_size=2 * width,
                num_hidden_layers=4,
                num_attention_heads=4,
                image_size=image_size,
                patch_size=6,
            ),
            text_config=BertConfig(
                vocab_size=len(tokenizer),
                hidden_size=width,
                intermediate_size=2 * width,
                num_hidden_layers=4,
                num_attention_heads=4,
                max_position_embeddings=max_text_tokens,
                # the tokenizer's own special tokens, so Trainer has nothing to realign
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            ),
            projection_dim=width,
            pooling="mean",
        )
        image_processor = CLIPImageProcessorPil(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
        )
        processor = MapleProcessor(image_processor=image_processor, tokenizer=tokenizer, backbone="dual_encoder")
    torch.manual_seed(seed)
    return MapleModel(config), processor


def pairs_dataset(world: World) -> datasets.Dataset:
    """The world's training pairs in the preference schema, each anchor its only candidate: the
    input of the preference builder, and plain InfoNCE training data (no RPA signal, no extra
    negatives)."""
    from dataset_builders import PREFERENCE_FEATURES

    examples = world.train
    return datasets.Dataset.from_dict(
        {
            "id": [f"train-{index:05d}" for index in range(len(examples))],
            "image": [example.image for example in examples],
            "caption": [example.caption for example in examples],
            "candidate_images": [[example.image] for example in examples],
            "candidate_texts": [[example.caption] for example in examples],
            "txt2img_scores": [[1.0] for _ in examples],
            "img2txt_scores": [[1.0] for _ in examples],
        },
        features=PREFERENCE_FEATURES,
    )


def anchors_only(preferences: datasets.Dataset) -> datasets.Dataset:
    """The preference rows reduced to their anchor pairs (InfoNCE-only fine-tuning)."""
    return preferences.map(
        lambda row: {
            "candidate_images": [row["image"]],
            "candidate_texts": [row["caption"]],
            "txt2img_scores": [1.0],
            "img2txt_scores": [1.0],
        },
        desc="anchor pairs",
        keep_in_memory=True,  # fine-tuning workers running side by side must not share a cache file
    )


def train(
    model,
    processor,
    dataset: datasets.Dataset,
    output_dir: Path,
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    rpa_weight: float,
    expand_negatives: bool,
    seed: int,
    progress: bool,
    num_text_candidates: int | None = None,
):
    """Train `model` in place with `RPATrainer`; returns the trainer (its state holds the log).
    `num_text_candidates`: texts per anchor and step (`RPAConfig.num_text_candidates`; None: all)."""
    from transformers import PrinterCallback

    from trainer import RPAConfig, RPATrainer

    args = RPAConfig(
        output_dir=str(output_dir),
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        weight_decay=0.01,
        rpa_weight=rpa_weight,
        expand_negatives=expand_negatives,
        num_text_candidates=num_text_candidates,
        logging_steps=max(1, steps // 20),
        save_strategy="no",
        report_to="none",
        seed=seed,
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=not progress,
    )
    trainer = RPATrainer(model=model, args=args, train_dataset=dataset, processing_class=processor)
    if not progress:  # without progress bars, Trainer prints every log line instead
        trainer.remove_callback(PrinterCallback)
    trainer.train()
    return trainer


def evaluate(model, processor, world: World, budget: Budget) -> dict[str, Any]:
    """Retrieval R@1 both directions, text/image/group scores overall and per category, and the
    modality gap, on the evaluated prefix of the held-out test sets."""
    from evaluation.protocols import evaluate_quadruples, evaluate_retrieval

    retrieval, quadruples = _evaluated_test_sets(world, budget)
    as_tuples = [(q.first.image, q.second.image, q.first.caption, q.second.caption) for q in quadruples]
    result = evaluate_retrieval(
        model, processor, [e.image for e in retrieval], [[e.caption] for e in retrieval], batch_size=256
    )
    result |= evaluate_quadruples(model, processor, as_tuples, [q.category for q in quadruples], batch_size=256)
    return result


def export_test_sets(world: World, budget: Budget, folder: Path) -> None:
    """The evaluated test sets as parquet files in the schemas `maple eval` reads (`--source coco=...` for retrieval,
    `--source bivlc=...` for quadruples, whose `type` is the category), so any checkpoint can be scored on them as the
    demo scores its runs: `maple eval CHECKPOINT --benchmarks coco bivlc --source coco=FOLDER/retrieval.parquet
    --source bivlc=FOLDER/quadruples.parquet` (the benchmark names say only which schema the files are in)."""
    retrieval, quadruples = _evaluated_test_sets(world, budget)
    tables = {
        "retrieval.parquet": datasets.Dataset.from_dict(
            {"image": [e.image for e in retrieval], "caption": [[e.caption] for e in retrieval]},
            features=datasets.Features({"image": datasets.Image(), "caption": datasets.List(datasets.Value("string"))}),
        ),
        "quadruples.parquet": datasets.Dataset.from_dict(
            {
                "image": [q.first.image for q in quadruples],
                "negative_image": [q.second.image for q in quadruples],
                "caption": [q.first.caption for q in quadruples],
                "negative_caption": [q.second.caption for q in quadruples],
                "type": [q.category for q in quadruples],
            },
            features=datasets.Features(
                {"image": datasets.Image(), "negative_image": datasets.Image(), "caption": datasets.Value("string"),
                 "negative_caption": datasets.Value("string"), "type": datasets.Value("string")}
            ),
        ),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, table in tables.items():
        atomic_write(folder / name, lambda temporary, table=table: table.to_parquet(str(temporary)))


def _evaluated_test_sets(world: World, budget: Budget) -> tuple[list[Example], list[Quadruple]]:
    """The retrieval items and the quadruples (by category) that the runs are scored on and `export_test_sets`
    writes: the first ones of the world's held-out sets, as many as `budget` says."""
    quadruples = [
        quad
        for category in CATEGORIES
        for quad in [q for q in world.quadruples if q.category == category][: budget.eval_quadruples_per_category]
    ]
    return world.retrieval[: budget.eval_retrieval], quadruples


# --- the pipeline -----------------------------------------------------------------------------


@dataclass
class DemoResult:
    """What a finished demo produced."""

    summary: dict[str, dict[str, dict[str, float]]]  # method -> metric -> {"mean", "std"}
    seconds: dict[str, float]
    out: Path
    num_seeds: int


def run_demo(config: DemoConfig) -> DemoResult:
    """Run (or resume) the demo into `config.out`; see the module docstring for the stages.

    With `config.workers > 1` the fine-tuning runs start worker processes with `spawn`, which
    imports the calling script again: a script calling this must guard the call with
    `if __name__ == "__main__":` (the `maple demo` command does not need to).
    """
    claim_output_folder(config)
    with _output_folder_held(config.out):
        return _run_stages(config)


def _run_stages(config: DemoConfig) -> DemoResult:
    """The stages of `run_demo`, each skipped where `config.out` holds its outputs."""
    out = config.out
    remove_abandoned_temporaries(out, recursive=True)  # what a killed run's writers left, never to be renamed into place
    # A rerun times only the stages it does; the others keep the times of the run that did them.
    earlier_seconds = (
        _read_json_file(out / TIMINGS_FILE, "the demo's stage times", "delete it and rerun (only the times are lost)")
        if (out / TIMINGS_FILE).exists()
        else {}
    )
    earlier_seconds.pop(PUSH_STAGE, None)  # a push is the run's that made it, not a stage a rerun skips
    timer = StageTimer(file=out / TIMINGS_FILE, earlier=earlier_seconds)
    world = timer.run("world", lambda: build_world(config.world_config))
    if not (out / TEST_SETS_DIR / "quadruples.parquet").exists():
        timer.run("test sets", lambda: export_test_sets(world, config.budget, out / TEST_SETS_DIR))
    base_dir = out / "base"
    if not (base_dir / "config.json").exists():
        timer.run("base model", lambda: _train_base(config, world, base_dir))
    if not (out / "preferences" / "data").exists():
        timer.run("preferences", lambda: _build_preferences(config, world, base_dir, out / "preferences"))

    runs = [(method, seed) for seed in config.seeds for method in METHODS]
    pending = [(method, seed) for method, seed in runs if not (_run_dir(out, method, seed) / "result.json").exists()]
    if pending:
        timer.run("fine-tuning and evaluation", lambda: _finetune_all(config, pending))
    results: dict[str, list[dict[str, Any]]] = {method: [] for method in METHODS}
    for method, seed in runs:
        result_file = _run_dir(out, method, seed) / "result.json"
        results[method].append(_read_json_file(result_file, "a run's result", "delete it and rerun to redo that run"))

    summary = timer.run("report", lambda: write_report(out, results))
    maple_dir = out / "maple-model"
    timer.run("checkpoint and card", lambda: _publish_checkpoint(config, results["maple"][0], maple_dir))
    atomic_write_text(out / "results.md", results_markdown(summary, config, timer.all_seconds))  # every stage's time
    if config.push_to_hub:
        timer.run(PUSH_STAGE, lambda: _push(config, results["maple"][0], maple_dir))
    return DemoResult(summary=summary, seconds=timer.all_seconds, out=out, num_seeds=len(config.seeds))


class OutputFolderInUseError(RuntimeError):
    """Another demo is running in the output folder; nothing was done."""


@contextlib.contextmanager
def _output_folder_held(out: Path) -> Iterator[None]:
    """An exclusive lock on folder `out` while this run works there: `flock` on the folder itself, which the system
    releases however the process ends (no lock file is left behind, nor a stale one after a kill). A second demo
    started on the folder of one still running (from another terminal, or a job retried) trained the same stages beside
    it, crashed on what the first renamed or deleted (its preference builder's cache) and wrote over its files. Without
    `flock` (Windows), or on a file system that refuses it (some network mounts), the run goes on unguarded."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    # not inherited across an exec (PEP 446): the fine-tuning workers, spawned (`_worker_pool`), do not hold the lock.
    # A forked child would: it shares the open descriptor, and keeps the folder locked after this run has ended.
    descriptor = os.open(out, os.O_RDONLY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputFolderInUseError(
                f"--out {out} is in use by another maple demo, still running: wait for it to finish, or choose another "
                "folder"
            ) from None
        except OSError:  # no locks on this file system
            pass
        yield
    finally:
        os.close(descriptor)


def _train_base(config: DemoConfig, world: World, base_dir: Path) -> None:
    model, processor = build_embedder(world, config.backbone, seed=config.world_seed, progress=config.progress)
    budget = config.budget
    trainer = train(
        model,
        processor,
        pairs_dataset(world),
        base_dir.with_name("base-training"),
        steps=budget.base_steps,
        batch_size=budget.base_batch_size,
        learning_rate=config.learning_rate,
        rpa_weight=0.0,
        expand_negatives=False,
        seed=config.world_seed,
        progress=config.progress,
    )
    staging = base_dir.with_name("base.partial")  # renamed when complete: a base folder is never half-written
    model.save_pretrained(staging)
    processor.save_pretrained(staging)
    (staging / "log_history.json").write_text(json.dumps(trainer.state.log_history))
    staging.rename(base_dir)


def _load_model_and_processor(directory: Path):
    from modeling_maple import MapleModel, MapleProcessor

    return MapleModel.from_pretrained(directory), MapleProcessor.from_pretrained(directory)


def _build_preferences(config: DemoConfig, world: World, base_dir: Path, folder: Path) -> None:
    """Build the preference dataset into `folder/data`, with its card (the builder resumes its own shards)."""
    from dataset_builders import HardNegativeMiner, MaplePreferences

    # On the CPU like the demo's training, so that a GPU machine mines the same neighbours (a GPU's sums can order
    # near ties differently).
    if config.miner == "scene-graph":
        miner = HardNegativeMiner(SceneFeatureEncoder(world.registry), batch_size=256, search_device="cpu")
    else:
        miner = HardNegativeMiner.from_maple(*_load_model_and_processor(base_dir), batch_size=256, search_device="cpu")
    builder = MaplePreferences(
        config_name="paper",
        judge=make_judge(config, world),
        # two captions (templates) per hard negative: with K = 3, a pool of 6 texts besides the anchor's,
        # of which the builder keeps CAPTION_POOL_SIZE in all
        captioner=SceneGraphCaptioner(world.registry, n_samples=2, caption_anchors=False, seed=config.world_seed),
        miner=miner,
        source_dataset=pairs_dataset(world).select_columns(["id", "image", "caption"]),
        work_dir=folder / "work",
        cache_dir=str(folder / "cache"),
        progress=config.progress,
        num_hard_negatives=3,
        captioned_negatives=3,
        max_candidate_texts=CAPTION_POOL_SIZE,
        semdedup_clusters=None,
        seed=config.world_seed,
        source_license=DEMO_LICENSE,
    )
    builder.download_and_prepare()
    _write_dataset_card(folder, builder.stats)
    staging = folder / "data.partial"  # renamed when complete, like the base model
    builder.as_dataset(split="train").save_to_disk(str(staging))
    staging.rename(folder / "data")
    shutil.rmtree(folder / "cache", ignore_errors=True)


def make_judge(config: DemoConfig, world: World):
    """The scene-graph judge, or the real MLLM judge `config.judge` names."""
    if config.judge is None:
        return SceneGraphJudge(world.registry, noise=config.judge_noise, seed=config.world_seed)
    from dataset_builders import MLLMJudge

    return MLLMJudge.from_pretrained(config.judge, token=config.token)


def _run_dir(out: Path, method: str, seed: int) -> Path:
    return out / "runs" / f"{method}-seed{seed}"


def _finetune_all(config: DemoConfig, runs: list[tuple[str, int]]) -> None:
    """Fine-tune and evaluate `runs`, `config.workers` at a time in worker processes (or in this
    process for one worker). Each run writes its own folder; the first failure is raised naming its
    run, no further run starts, and the finished runs stay in place for a rerun to resume. A worker that dies
    (killed: out of memory, most likely) takes the runs in flight with it: a `WorkerDiedError` names them all. A
    KeyboardInterrupt ends the workers at once, their runs unfinished."""
    with tqdm(total=len(runs), desc="fine-tuning runs", disable=not config.progress) as progress:
        if config.workers == 1 or len(runs) == 1:
            for method, seed in runs:
                _raise_naming_the_run(lambda: _finetune(config, method, seed), method, seed)
                progress.update()
            return
        quiet = replace(config, progress=False)  # one bar for all runs, in this process
        queued, running = list(runs), {}
        with _worker_pool(min(config.workers, len(runs))) as pool:
            try:
                while queued or running:
                    # at most one run per worker in flight, so a failure leaves no queue to drain
                    while queued and len(running) < config.workers:
                        run = queued.pop(0)
                        with _interrupts_kept_from_new_processes():  # the pool starts its workers in `submit`
                            running[pool.submit(_finetune, quiet, *run)] = run
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    if broken := [future for future in done if isinstance(future.exception(), BrokenProcessPool)]:
                        raise broken[0].exception()  # every run in flight failed with it: named together, below
                    for future in done:
                        method, seed = running.pop(future)
                        _raise_naming_the_run(future.result, method, seed)
                        progress.update()
            except BrokenProcessPool as error:  # from a run's future, or from `submit` once the pool knows
                # A run's error that could not be read back, not a killed worker, breaks the pool with that error as the
                # cause of the futures' own error (`submit`'s, raised once the pool knows, has none): raised as it is
                failures = [error, *(future.exception() for future in running if future.done())]
                if (unread := next((failure for failure in failures if isinstance(failure, BrokenProcessPool)
                                    and failure.__cause__ is not None), None)) is not None:
                    raise unread
                raise WorkerDiedError(_lost_runs(running, config.out)) from None


@contextlib.contextmanager
def _worker_pool(size: int) -> Iterator[ProcessPoolExecutor]:
    """A pool of `size` fine-tuning worker processes. Leaving it waits for the runs in flight, which finish and are
    kept (those beside a run that failed); a KeyboardInterrupt, among the runs or in that wait, ends the workers at
    once instead, their runs unfinished."""
    # spawn, not fork: a forked copy of a process that has run torch can deadlock
    pool = ProcessPoolExecutor(size, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker)
    try:
        try:
            yield pool
        except Exception:  # a failed run, say: not a KeyboardInterrupt, which must not wait
            pool.shutdown()
            raise
        pool.shutdown()
    except KeyboardInterrupt:  # among the runs, or in the wait for them
        _end_workers(pool)
        raise


class WorkerDiedError(RuntimeError):
    """A fine-tuning worker process that died, killed from outside (by the system, short of memory, most likely)."""

    def __init__(self, lost_runs: list[str]) -> None:
        super().__init__(
            f"a fine-tuning worker process died (killed, most likely for lack of memory) while these runs were in "
            f"flight: {', '.join(lost_runs)}; the finished runs are kept: rerun the same command to resume (with fewer "
            "--workers if memory ran out)"
        )


def _lost_runs(running: dict[Future, tuple[str, int]], out: Path) -> list[str]:
    """The names of the runs of `running` that did not finish: a broken pool fails every run in flight, one whose
    result had not yet come back too (its `result.json` says it finished)."""
    return [
        f"{method}-seed{seed}"
        for future, (method, seed) in running.items()
        if not (future.done() and future.exception() is None) and not (_run_dir(out, method, seed) / "result.json").exists()
    ]


@contextlib.contextmanager
def _interrupts_kept_from_new_processes() -> Iterator[None]:
    """Processes started inside never receive SIGINT: it is blocked here meanwhile, and they inherit the block. A
    Ctrl-C reaches every process of the terminal's foreground group, and each worker printed a KeyboardInterrupt
    traceback of its own (while importing torch, or waiting for a run); this process ends them instead
    (`_end_workers`). Blocked rather than ignored (multiprocessing starts its resource tracker the same way).

    The block is the calling thread's; another thread of this process (tqdm's monitor) can still take a Ctrl-C, which
    Python raises in the main thread at once, in the middle of starting a worker. So in the main thread the SIGINT
    handler meanwhile only records it, and replays it to the handler in place once the processes have started (a
    KeyboardInterrupt by default, also over an error of the body)."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows: no POSIX signal mask
        yield
        return
    received: list[int] = []
    handler = signal.getsignal(signal.SIGINT)
    swap = threading.current_thread() is threading.main_thread() and handler not in (signal.SIG_IGN, None)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])  # as it is: restored however this ends
    try:
        if swap:
            signal.signal(signal.SIGINT, lambda number, frame: received.append(number))
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if swap:
            signal.signal(signal.SIGINT, handler)
        if received:
            signal.raise_signal(signal.SIGINT)


def _end_workers(pool: ProcessPoolExecutor) -> None:
    """Terminate `pool`'s workers now, their runs unfinished, as Python 3.14's `ProcessPoolExecutor.terminate_workers`
    does: the pool's shutdown waits for every run in flight to finish."""
    workers = list((pool._processes or {}).values())  # private before Python 3.14
    pool.shutdown(wait=False, cancel_futures=True)
    for worker in workers:
        worker.terminate()


def _raise_naming_the_run(work: Callable[[], Any], method: str, seed: int) -> None:
    """Run `work`; an error becomes one that names the fine-tuning run and says how to resume."""
    try:
        work()
    except Exception as error:
        raise RuntimeError(
            f"fine-tuning run {method}-seed{seed} failed ({type(error).__name__}: {error}); the finished runs are "
            "kept: rerun the same command to resume"
        ) from error


def _init_worker() -> None:
    """A fine-tuning worker: one CPU thread (the workers share the cores), no progress bars, and an end with the main
    process's."""
    import tqdm as tqdm_package
    import transformers

    _end_with_parent()
    torch.set_num_threads(1)
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    # tqdm's default lock (the libraries create one, bars or not) holds a multiprocessing semaphore, which a worker
    # ended by a signal (killed, or by `_end_workers`) leaves behind: Python warned of "leaked semaphore objects" after
    # the command's last line
    tqdm_package.tqdm.set_lock(threading.RLock())


def _end_with_parent() -> None:
    """On Linux, have this process sent SIGTERM when the process that started it dies. A main process killed (SIGTERM
    from `timeout` or a cancelled job, SIGKILL, out of memory) leaves its pool's workers waiting on its queue for ever,
    holding their memory, after finishing their runs beside those of a rerun. Elsewhere nothing is done."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    # the pid recorded when the worker was started: by now (torch imported) the parent may have died, and
    # `os.getppid()` would name the process that adopted this one
    parent = multiprocessing.parent_process()
    pr_set_pdeathsig = 1  # <linux/prctl.h>
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if parent is not None and os.getppid() != parent.pid:  # it died before the request: no signal will come
        os.kill(os.getpid(), signal.SIGTERM)


def _finetune(config: DemoConfig, method: str, seed: int) -> None:
    """One fine-tuning run from the base model, evaluated; `result.json` marks it done."""
    timer = StageTimer()
    world = build_world(config.world_config)
    preferences = datasets.load_from_disk(str(config.out / "preferences" / "data"))
    model, processor = _load_model_and_processor(config.out / "base")
    run_dir, budget = _run_dir(config.out, method, seed), config.budget
    trainer = timer.run("fine-tuning", lambda: train(
        model,
        processor,
        anchors_only(preferences) if method == "infonce" else preferences,
        run_dir / "trainer",
        steps=budget.finetune_steps,
        batch_size=budget.finetune_batch_size,
        learning_rate=config.learning_rate,
        rpa_weight=config.rpa_weight if method == "maple" else 0.0,
        expand_negatives=method != "infonce",
        seed=seed,
        progress=config.progress,
        num_text_candidates=TEXT_CANDIDATES_PER_STEP,
    ))
    result = timer.run("evaluation", lambda: evaluate(model, processor, world, budget))
    result["log_history"] = trainer.state.log_history
    result["training_args"] = {
        key: value
        for key, value in trainer.args.to_dict().items()
        if _is_plain(value) and key not in DISPLAY_ONLY_ARGS
    }
    result["seconds"] = timer.seconds
    if method == "maple":
        model.save_pretrained(run_dir / "model")
        processor.save_pretrained(run_dir / "model")
    atomic_write_json(run_dir / "result.json", result)  # written last: marks the run done


def _is_plain(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool, type(None)))


def _demo_card_stats(stats: dict[str, Any]) -> dict[str, Any]:
    """The builder's stats with what the demo's dataset card must say: where its data comes from (the builder, given
    the rows in memory, names them "in-memory datasets.Dataset"), and that its stand-ins are not MLLMs."""
    return {
        **stats,
        "source": "the `maple demo` world's training images and captions, drawn procedurally (docs/demo.md)",
        "pretty_name": "MAPLE demo preference dataset",
        "known_biases": [
            "Built by `maple demo` (docs/demo.md): the images are drawn procedurally, and the captioner (and the judge, "
            "unless `--judge` named an MLLM) are stand-ins for MLLMs that read the drawn scene graphs."
        ],
    }


def _write_dataset_card(folder: Path, stats: dict[str, Any], repo_id: str | None = None) -> None:
    """The preference dataset's card, `folder`/README.md, from the builder's `stats`, for `repo_id` (the dataset repo
    it is pushed to), if any. It names a local `--judge` by its folder's name only, as the builder's push does, also
    where it is written locally: a push without the builder's stats (work/ deleted) publishes the card as built."""
    from dataset_builders.builder import publishable_stats
    from model_cards import dataset_card_from_stats

    stats = {**stats, **publishable_stats(stats)}
    dataset_card_from_stats(_demo_card_stats(stats), repo_id=repo_id, output_dir=folder).save(str(folder / "README.md"))


def _publish_checkpoint(config: DemoConfig, maple_result: dict[str, Any], maple_dir: Path) -> None:
    """The first seed's MAPLE model with its processor and a model card filled from its run."""
    source = _run_dir(config.out, "maple", config.seeds[0]) / "model"
    shutil.copytree(source, maple_dir, dirs_exist_ok=True)
    _write_model_card(config, maple_result, maple_dir, repo_id=None)


def _write_model_card(config: DemoConfig, maple_result: dict[str, Any], maple_dir: Path, repo_id: str | None) -> None:
    """The MAPLE model's card, for `repo_id` (the repo it is pushed to), if any."""
    from model_cards import model_card_from_run

    eval_results = {
        "maple-demo-retrieval": {key: maple_result[key] for key in maple_result if key.startswith(("i2t_", "t2i_"))},
        "maple-demo-quadruples": {
            key: maple_result[key]
            for key in ("text_score", "image_score", "group_score", "per_category", "modality_gap")
        },
    }
    card = model_card_from_run(
        output_dir=maple_dir,
        base_model=str(config.out / "base"),  # not published: named by its folder's name (pushed) or path from the card
        backbone=config.backbone,
        training_config=maple_result["training_args"],
        log_history=maple_result["log_history"],
        eval_results=eval_results,
        dataset_id=f"{repo_id}-preferences" if repo_id else str(config.out / "preferences" / "data"),
        judge_id=config.judge or "scene-graph judge (a stand-in for an MLLM judge; see docs/demo.md)",
        repo_id=repo_id,
        model_config=json.loads((maple_dir / "config.json").read_text()),
        license=DEMO_LICENSE,  # the demo's own: its base model, which has no card, is the demo's too
    )
    card.save(str(maple_dir / "README.md"))


def _push(config: DemoConfig, maple_result: dict[str, Any], maple_dir: Path) -> None:
    """Push the MAPLE model (checkpoint, processor, card) to `config.push_to_hub` and the preference dataset with its
    card to the same name + "-preferences". The cards name the repos by their full ids (a bare name is created under
    the token's user); they are written here before the push, as the checkpoint was, so a failed push loses nothing.
    Every request carries `config.token` (None: HF_TOKEN or the saved login)."""
    from huggingface_hub import DatasetCard, HfApi

    from model_cards.cards import HISTOGRAM_FILE, push_dataset_card

    api = HfApi(token=config.token)
    with _push_failure_explained(config.push_to_hub, "model", config.out):
        repo_id = api.create_repo(config.push_to_hub, exist_ok=True).repo_id
    dataset_repo, preferences = f"{repo_id}-preferences", config.out / "preferences"
    _write_model_card(config, maple_result, maple_dir, repo_id)
    stats_file = preferences / "work" / "stats.json"
    if stats_file.exists():  # else (work/ deleted) the card as built, without the repo id
        stats = _read_json_file(stats_file, "the preference builder's stats", "delete it to push the card as built")
        _write_dataset_card(preferences, stats, dataset_repo)
    with _push_failure_explained(repo_id, "model", config.out):
        api.upload_folder(repo_id=repo_id, folder_path=str(maple_dir))
    with _push_failure_explained(dataset_repo, "dataset", config.out):
        api.create_repo(dataset_repo, repo_type="dataset", exist_ok=True)
        datasets.load_from_disk(str(preferences / "data")).push_to_hub(dataset_repo, token=config.token)
        card = DatasetCard((preferences / "README.md").read_text())
        push_dataset_card(card, dataset_repo, {HISTOGRAM_FILE: preferences / HISTOGRAM_FILE}, token=config.token,
                          commit_message="Describe the preference data")


@contextlib.contextmanager
def _push_failure_explained(repo_id: str, repo_type: str, out: Path) -> Iterator[None]:
    """A Hub failure inside (a refused or missing token, an HTTP error, an offline Hub) becomes a `PushError` naming
    `repo_id` and what the Hub answered; other errors pass as they are."""
    try:
        yield
    except Exception as error:  # the Hub's errors come wrapped by datasets' and httpx's: `hub_failure` reads them
        if (problem := hub_failure(error, repo_id, repo_type=repo_type, writing=True)) is None:
            raise
        raise PushError(f"pushing failed: {problem}. The run is kept in {out}: run the same command again to push it "
                        "(nothing is recomputed)") from error

