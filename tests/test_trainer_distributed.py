"""RPATrainer under `accelerate launch --multi_gpu --num_processes 2` with `use_cpu=True` (2 CPU processes, gloo):
the loss with gathered negatives equals the one-process loss on the same global batch, and training runs; batches
that are not evened out across processes are refused; the evaluation metrics, of a map-style or a streamed evaluation
set, are those of one process evaluating the same global batches: accelerate repeats rows to fill the last batch of
each process, and they are neither counted nor in the InfoNCE pools (also when accelerate splits each batch across the
processes, and when the stream has shards of unequal lengths); a NaN loss in one process stops them all; an evaluation
before training, also one that compiles the model (`torch_compile`), leaves the model to be wrapped in DDP for training.

Every global batch holds the same rows in both runs (one batch of 8 in one process, two of 4 in two processes), in
training (the same 8 rows at every step) and in evaluation (in order), so the comparison does not depend on how
either run shuffles. Each training row has a candidate image and text of its own, in no other row: the 8 rows hold
the 8 scenes, so without them every candidate would be some row's anchor too, and leaving the negatives out of the
cross-process gather (each process's pool then lacks the other's) would change nothing. This file is also the script
that `accelerate launch` runs (see `__main__`).
"""

import json
import math
import os
import sys

import pytest
import torch
from datasets import Dataset
from PIL import Image

from modeling_maple.testing import build_tiny
from launch import end_launched_run, gloo_threads, launch_two_processes
from trainer import RPATrainer
from trainer.testing import smoke_config, synthetic_preference_dataset

GLOBAL_BATCH = 8
STEPS = 2
# Two processes evaluate in batches of 4: the second global batch of 10 rows holds 2 rows and 6 repeated ones, and the
# 3 rows of the short set leave the second process only repeated rows; the 8 rows of the whole set fill their one
# global batch, and accelerate's remainder of 0 then means no repeated row. Two candidates a row: the repeated rows'
# items would be new negatives for the real ones.
EVAL_SETS = {"eval": (10, 4), "short": (3, 5), "whole": (8, 6)}  # name: (rows, seed)
EVAL_KEYS = ("eval_loss", "eval_loss/rpa", "eval_loss/contrastive", "eval_rewards/accuracies", "eval_rewards/margins")
# The metrics of each anchor alone, whichever batch it lands in (not the InfoNCE pools).
PER_ANCHOR_KEYS = ("eval_loss/rpa", "eval_rewards/accuracies", "eval_rewards/margins", "eval_recall@1/text_to_image",
                   "eval_recall@1/image_to_text")


def with_negatives_of_their_own(dataset: Dataset) -> Dataset:
    """`dataset` with one more candidate image (a plain canvas of the row's own shade) and text per row, rated low, that
    no other row holds: a negative that only the process holding its row embeds."""
    rows = []
    for index, row in enumerate(dataset):
        rows.append({
            **row,
            "candidate_images": [*row["candidate_images"], Image.new("RGB", (16, 16), (25 * index, 120, 180))],
            "candidate_texts": [*row["candidate_texts"], f"a plain canvas of shade {index}"],
            "txt2img_scores": [*row["txt2img_scores"], 0.02],
            "img2txt_scores": [*row["img2txt_scores"], 0.02],
        })
    return Dataset.from_list(rows, features=dataset.features)


def run(output_dir: str, per_device_batch: int, streamed: bool) -> dict:
    """Trains for `STEPS` steps on the 8-row dataset, then evaluates on `EVAL_SETS`, also streamed when `streamed`;
    returns the per-step logs and the evaluation metrics by set (rank 0's view)."""
    model, processor = build_tiny("dual_encoder", seed=0)
    args = smoke_config(
        output_dir,
        per_device_train_batch_size=per_device_batch,
        max_steps=STEPS,
        logging_steps=1,
        per_device_eval_batch_size=per_device_batch,
        num_text_candidates=3,
        use_cpu=True,  # with several processes: gloo on CPU (accelerate's MULTI_CPU)
    )
    train_dataset = with_negatives_of_their_own(synthetic_preference_dataset(GLOBAL_BATCH, seed=3))
    trainer = RPATrainer(model, args=args, train_dataset=train_dataset, processing_class=processor)
    trainer.train()
    steps = [entry for entry in trainer.state.log_history if "loss/rpa" in entry]
    evaluations = {}
    for name, (rows, seed) in EVAL_SETS.items():
        dataset = synthetic_preference_dataset(rows, num_candidates=2, seed=seed)
        evaluations[name] = trainer.evaluate(dataset)
        if streamed:  # no length: accelerate cannot say which rows it repeated
            evaluations[f"{name}_streamed"] = trainer.evaluate(dataset.to_iterable_dataset())
            # As many shards as processes, of unequal sizes but for the 8 rows: accelerate would give each process its
            # own, unevened, and the process with fewer batches left the other waiting in the loss's all-gather.
            evaluations[f"{name}_sharded"] = trainer.evaluate(dataset.to_iterable_dataset(num_shards=2))
    return {"steps": steps, "eval": evaluations}


def train_without_even_batches(output_dir: str, **overrides) -> str:
    """A trainer without `even_batches` on 9 rows at 4 per process: its error, or "trained". Keeping the short last
    batch, one process got two batches and the other one, and the first waited forever in the loss's all-gather."""
    model, processor = build_tiny("dual_encoder", seed=0)
    args = smoke_config(output_dir, per_device_train_batch_size=4, num_train_epochs=1, use_cpu=True,
                        accelerator_config={"even_batches": False}, **overrides)
    try:
        trainer = RPATrainer(model, args=args, train_dataset=synthetic_preference_dataset(9, seed=3),
                             processing_class=processor)
    except ValueError as error:
        return str(error)
    trainer.train()
    return "trained"


def train_on_unequal_shards(output_dir: str) -> str:
    """Trains 3 steps of 4 rows per process on a stream of 9 rows in shards of 5 and 4, evaluating after step 2 on a
    stream of 3 rows in shards of 2 and 1: "trained". Given the shards, one process each, the second process ended
    its pass a batch early and evaluated alone while the first still trained: both waited forever."""
    model, processor = build_tiny("dual_encoder", seed=0)
    args = smoke_config(output_dir, per_device_train_batch_size=4, per_device_eval_batch_size=4, max_steps=3,
                        eval_strategy="steps", eval_steps=2, use_cpu=True)
    trainer = RPATrainer(model, args=args, processing_class=processor,
                         train_dataset=synthetic_preference_dataset(9, seed=3).to_iterable_dataset(num_shards=2),
                         eval_dataset=synthetic_preference_dataset(3, seed=5).to_iterable_dataset(num_shards=2))
    trainer.train()
    return "trained"


def train_after_evaluating(output_dir: str, **overrides) -> float:
    """The largest difference between the two processes' weights after an evaluation, then `STEPS` training steps of 4
    rows per process. The evaluation prepares the model without DDP (and with `torch_compile` compiles it), and
    `Trainer.train` would leave it so: each process training its own copy on its own rows."""
    model, processor = build_tiny("dual_encoder", seed=0)
    args = smoke_config(output_dir, per_device_train_batch_size=GLOBAL_BATCH // 2, per_device_eval_batch_size=4,
                        max_steps=STEPS, use_cpu=True, **overrides)
    trainer = RPATrainer(model, args=args, train_dataset=synthetic_preference_dataset(GLOBAL_BATCH, seed=3),
                         processing_class=processor)
    trainer.evaluate(synthetic_preference_dataset(4, num_candidates=2, seed=4))
    trainer.train()
    weights = torch.cat([parameter.detach().flatten() for parameter in model.parameters()])
    gathered = [torch.empty_like(weights) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(gathered, weights)
    return (gathered[0] - gathered[1]).abs().max().item()


def evaluate_untrained(output_dir: str, batch_size: int, streamed: bool, **overrides) -> dict:
    """The initial model's evaluation metrics on the 10-row evaluation set in batches of `batch_size`, streamed in two
    shards when `streamed`."""
    model, processor = build_tiny("dual_encoder", seed=0)
    args = smoke_config(output_dir, per_device_eval_batch_size=batch_size, use_cpu=True, **overrides)
    trainer = RPATrainer(model, args=args, train_dataset=synthetic_preference_dataset(GLOBAL_BATCH, seed=3),
                         processing_class=processor)
    rows, seed = EVAL_SETS["eval"]
    dataset = synthetic_preference_dataset(rows, num_candidates=2, seed=seed)
    return trainer.evaluate(dataset.to_iterable_dataset(num_shards=2) if streamed else dataset)


def stop_on_a_nan_loss_of_one_process(output_dir: str) -> str:
    """The error of a training whose InfoNCE loss is NaN in the second process only, at step 2, or "trained". Every
    process must stop there: one that went on would wait forever in the backward pass's all-reduce for the other."""
    model, processor = build_tiny("dual_encoder", seed=0)
    args = smoke_config(output_dir, per_device_train_batch_size=GLOBAL_BATCH // 2, max_steps=3, use_cpu=True)
    trainer = RPATrainer(model, args=args, train_dataset=synthetic_preference_dataset(GLOBAL_BATCH, seed=3),
                         processing_class=processor)
    compute = trainer._contrastive_loss

    def nan_in_the_second_process_at_step_2(*args, **kwargs):
        loss = compute(*args, **kwargs)
        return loss * math.nan if trainer.state.global_step == 1 and trainer.accelerator.process_index == 1 else loss

    trainer._contrastive_loss = nan_in_the_second_process_at_step_2
    try:
        trainer.train()
    except FloatingPointError as error:
        return str(error)
    return "trained"


def test_two_processes_match_one_process_on_the_same_global_batch(tmp_path):
    result_file = tmp_path / "two_processes.json"
    completed = launch_two_processes(__file__, str(tmp_path / "run2"), str(result_file))
    assert completed.returncode == 0, completed.stderr[-4000:]
    two_processes = json.loads(result_file.read_text())
    one_process = run(str(tmp_path / "run1"), per_device_batch=GLOBAL_BATCH, streamed=False)

    assert len(two_processes["steps"]) == len(one_process["steps"]) == STEPS
    for step, (distributed, single) in enumerate(zip(two_processes["steps"], one_process["steps"]), start=1):
        for key in ("loss", "loss/rpa", "loss/contrastive", "rewards/accuracies"):
            # step 1 is the loss before any update; step 2 also checks the gradients were averaged correctly
            assert distributed[key] == pytest.approx(single[key], abs=1e-5), f"step {step}, {key}"
    # The same global batches of the evaluation sets: counting a repeated row, or pooling its items as negatives of
    # the real rows (eval_loss/contrastive), would change the metrics.
    # A stream of several shards is dealt out batch by batch like one of a single shard: the same global batches.
    for name in EVAL_SETS:
        for distributed in (name, f"{name}_streamed", f"{name}_sharded"):
            for key in EVAL_KEYS:
                assert two_processes["eval"][distributed][key] == pytest.approx(
                    one_process["eval"][name][key], abs=1e-5
                ), (distributed, key)
    assert two_processes["unequal_shards"] == "trained"
    for evaluated_first in ("evaluated_first", "evaluated_first_compiled"):
        assert two_processes[evaluated_first] == 0.0, f"{evaluated_first}: the processes' weights came apart"
    assert "RPATrainer needs accelerator_config.even_batches under several processes" in two_processes["uneven"]
    assert two_processes["uneven_dropping_last"] == "trained"  # without the short batch, the counts cannot differ
    # With split_batches accelerate splits each batch of a stream across the processes, whatever its shards, and
    # repeats rows to fill the last one: they are told by their numbers, as without split_batches.
    one_process_untrained = evaluate_untrained(str(tmp_path / "untrained1"), GLOBAL_BATCH, streamed=False)
    for key in (*EVAL_KEYS, *PER_ANCHOR_KEYS):
        assert two_processes["split_batches"][key] == pytest.approx(one_process_untrained[key], abs=1e-5), key
    # Training's dataloader_drop_last and even_batches=False do not reach evaluation: it dropped the 2 rows past the
    # 8 of the first global batch, and without even batches one process could wait in a gather for the other
    dropping_last = two_processes["uneven_dropping_last_eval"]
    for key in (*EVAL_KEYS, *PER_ANCHOR_KEYS):
        assert dropping_last[key] == pytest.approx(one_process_untrained[key], abs=1e-5), key
    # The first process's loss was finite, yet it stopped too (and saved the weights before the step with the other)
    nan_run = tmp_path / "run2-nan"
    assert two_processes["nan_in_one_process"].startswith("Non-finite loss at training step 2")
    assert f"saved to {nan_run / 'checkpoint-1'}." in two_processes["nan_in_one_process"]
    assert (nan_run / "checkpoint-1" / "model.safetensors").exists()


def test_maple_train_under_two_processes_trains_saves_and_leaves_no_gloo_thread(tmp_path):
    """The `maple train` command (its checkpoints set aside on the main process first, the save, the card) under two
    processes; at its end no gloo thread is left (`RPATrainer.end`: with the trainer's DDP wrapper kept, the process
    group and its threads lived on after `Trainer.end` into interpreter exit, see `launch.end_launched_run`)."""
    from transformers import AutoModel

    synthetic_preference_dataset(GLOBAL_BATCH, seed=3).save_to_disk(tmp_path / "prefs")
    output = tmp_path / "out"
    completed = launch_two_processes(
        __file__, "maple-train", "--tiny", "dual_encoder", "--dataset_name", str(tmp_path / "prefs"), "--output_dir",
        str(output), "--max_steps", "2", "--per_device_train_batch_size", str(GLOBAL_BATCH // 2), "--use_cpu", "true",
        "--report_to", "none", "--save_strategy", "steps", "--save_steps", "1",
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert completed.stdout.count("'train_runtime'") == 1  # the main process logs
    for folder in (output, output / "checkpoint-1", output / "checkpoint-2"):
        assert json.loads((folder / "rpa_recipe.json").read_text())["per_device_train_batch_size"] == GLOBAL_BATCH // 2
    assert "fine-tuned with Relative Preference Alignment (RPA)" in (output / "README.md").read_text()
    AutoModel.from_pretrained(output, trust_remote_code=True)


if __name__ == "__main__" and sys.argv[1] == "maple-train":  # run by `accelerate launch` above: `maple train ...`
    from trainer.cli import main

    end, left = RPATrainer.end, []

    def end_and_look(trainer):  # the gloo threads left once the trainer has ended, while `main` still holds it
        end(trainer)
        left.extend(gloo_threads())

    RPATrainer.end = end_and_look
    status = main(sys.argv[2:])
    assert not left, f"gloo threads outlived RPATrainer.end: {left}"
    sys.exit(status)
elif __name__ == "__main__":  # run by `accelerate launch` above
    output_dir, result_file = sys.argv[1], sys.argv[2]
    logs = run(output_dir, per_device_batch=GLOBAL_BATCH // 2, streamed=True)
    logs["uneven"] = train_without_even_batches(output_dir + "-uneven")
    logs["uneven_dropping_last"] = train_without_even_batches(output_dir + "-uneven-dropping", dataloader_drop_last=True)
    # batches of 8 split into 4 per process: the global batches of one process evaluating in batches of 8
    logs["split_batches"] = evaluate_untrained(output_dir + "-split", GLOBAL_BATCH, streamed=True,
                                               accelerator_config={"split_batches": True})
    logs["uneven_dropping_last_eval"] = evaluate_untrained(output_dir + "-uneven-eval", GLOBAL_BATCH // 2,
                                                           streamed=False, dataloader_drop_last=True,
                                                           accelerator_config={"even_batches": False})
    logs["nan_in_one_process"] = stop_on_a_nan_loss_of_one_process(output_dir + "-nan")
    logs["unequal_shards"] = train_on_unequal_shards(output_dir + "-shards")
    logs["evaluated_first"] = train_after_evaluating(output_dir + "-evaluated-first")
    # The evaluation's compiled model wraps the model itself, without DDP either. "force_eager" keeps the wrappers that
    # torch.compile makes but runs them uncompiled: tracing the model twice (evaluation, training) took 10-20 s more.
    # Last: torch_compile sets ACCELERATE_DYNAMO_BACKEND, which the accelerators of later trainers would read.
    with torch.compiler.set_stance("force_eager"):
        logs["evaluated_first_compiled"] = train_after_evaluating(output_dir + "-evaluated-first-compiled",
                                                                  torch_compile=True, torch_compile_backend="eager")
    if int(os.environ.get("RANK", "0")) == 0:
        with open(result_file, "w") as handle:
            json.dump(logs, handle)
    end_launched_run()
