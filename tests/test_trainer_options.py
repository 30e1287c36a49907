"""RPAConfig options no other test set: `learn_temperature=False` freezes the InfoNCE temperature (beta still learns),
`gather_negatives` reaches the InfoNCE loss (one process here; with two processes, the per-process pools give
another loss than the gathered ones), and `activation_checkpointing` with LoRA (the paper's set-up) trains the adapters
as without it. This file is also the script that `accelerate launch` runs (see `__main__`)."""

import json
import os
import sys

import pytest
import torch

from modeling_maple.lora import maple_lora_config
from modeling_maple.testing import build_tiny
from launch import end_launched_run, launch_two_processes
from trainer import RPATrainer
from trainer.testing import smoke_config, synthetic_preference_dataset

GLOBAL_BATCH = 8


def make_trainer(tmp_path, **overrides) -> RPATrainer:
    model, processor = build_tiny("dual_encoder", seed=0)
    args = smoke_config(str(tmp_path / "run"), per_device_train_batch_size=GLOBAL_BATCH, dataloader_num_workers=0,
                        **({"max_steps": 2, "logging_steps": 1} | overrides))
    return RPATrainer(model, args=args, train_dataset=synthetic_preference_dataset(GLOBAL_BATCH, seed=3),
                      processing_class=processor)


def test_learn_temperature_false_keeps_the_temperature_while_beta_learns(tmp_path):
    """learn_temperature=False ("train the InfoNCE temperature along with the model", off) leaves 1 / temperature
    where the config put it, exactly, after optimizer steps; beta, learnable, moves. No test set the option, so a
    trainer that ignored it passed."""
    trainer = make_trainer(tmp_path, temperature=0.5, learn_temperature=False)
    model = trainer.model
    assert not model.logit_scale.requires_grad and model.preference_logit_scale.requires_grad
    temperature_scale, beta_scale = model.logit_scale.detach().clone(), model.preference_logit_scale.detach().clone()
    assert temperature_scale.exp().item() == pytest.approx(2.0)
    trainer.train()
    assert torch.equal(model.logit_scale.detach(), temperature_scale)
    assert not torch.equal(model.preference_logit_scale.detach(), beta_scale)


@pytest.mark.parametrize("gather", [True, False])
def test_gather_negatives_reaches_the_infonce_loss(tmp_path, monkeypatch, gather):
    """The option is what `contrastive_loss` is called with at every training step; in one process both settings give
    the same loss (there is nothing to gather)."""
    from trainer import rpa_trainer

    seen = []

    def contrastive_loss(*args, gather_across_processes, **kwargs):
        seen.append(gather_across_processes)
        return contrastive_loss_of(*args, gather_across_processes=gather_across_processes, **kwargs)

    contrastive_loss_of = rpa_trainer.contrastive_loss
    monkeypatch.setattr(rpa_trainer, "contrastive_loss", contrastive_loss)
    trainer = make_trainer(tmp_path, gather_negatives=gather, max_steps=1)
    trainer.train()
    assert seen == [gather]


def test_activation_checkpointing_with_lora_trains_the_adapters_as_without_it(tmp_path, monkeypatch):
    """The paper trains LoRA adapters on the MLLM with activation checkpointing: the backbone's layers run under
    `torch.utils.checkpoint` (counted here), and one step gives the loss and adapter weights of one step without it,
    though the frozen embeddings' output needs no gradient of its own."""
    from transformers import modeling_utils

    checkpointed_calls = []

    def checkpoint(function, *args, **kwargs):
        checkpointed_calls.append(function)
        return checkpoint_of(function, *args, **kwargs)

    checkpoint_of = modeling_utils.checkpoint
    monkeypatch.setattr(modeling_utils, "checkpoint", checkpoint)
    trainers = {}
    for checkpointing in (False, True):
        model, processor = build_tiny("mllm", seed=0)
        args = smoke_config(str(tmp_path / f"run-{checkpointing}"), per_device_train_batch_size=GLOBAL_BATCH,
                            dataloader_num_workers=0, max_steps=1, logging_steps=1,
                            activation_checkpointing=checkpointing)
        trainers[checkpointing] = RPATrainer(
            model, args=args, train_dataset=synthetic_preference_dataset(GLOBAL_BATCH, seed=3),
            processing_class=processor, peft_config=maple_lora_config(model, r=4, lora_alpha=4, lora_dropout=0.0))
    plain, checkpointed = trainers[False], trainers[True]
    initial = {name: weight.detach().clone() for name, weight in checkpointed.model.named_parameters() if "lora_B" in name}
    plain.train()
    assert not checkpointed_calls
    checkpointed.train()
    assert checkpointed_calls  # Trainer turns it on as training starts
    assert checkpointed.state.log_history[0]["loss"] == pytest.approx(plain.state.log_history[0]["loss"], abs=1e-6)
    plain_weights = dict(plain.model.named_parameters())
    for name, weight in checkpointed.model.named_parameters():
        if weight.requires_grad:
            torch.testing.assert_close(weight, plain_weights[name], atol=1e-6, rtol=0, msg=name)
    assert all(not torch.equal(weight, initial[name]) for name, weight in checkpointed.model.named_parameters()
               if name in initial)


def first_step_losses(output_dir: str, per_device_batch: int, gather_negatives: bool) -> dict:
    """The logged losses of one training step on the 8-row dataset (rank 0's view)."""
    model, processor = build_tiny("dual_encoder", seed=0)
    args = smoke_config(output_dir, per_device_train_batch_size=per_device_batch, max_steps=1, logging_steps=1,
                        use_cpu=True, gather_negatives=gather_negatives)
    trainer = RPATrainer(model, args=args, train_dataset=synthetic_preference_dataset(GLOBAL_BATCH, seed=3),
                         processing_class=processor)
    trainer.train()
    return next(entry for entry in trainer.state.log_history if "loss/contrastive" in entry)


def test_without_gathering_each_process_contrasts_its_own_batch(tmp_path):
    """Under 2 processes (accelerate, gloo on CPU, 4 rows each): gather_negatives=True contrasts each anchor with the
    global batch of 8, as one process with all 8 rows does; gather_negatives=False with the 4 rows of its own process,
    an easier pool, so a lower InfoNCE loss. The RPA loss, per anchor over its own candidates, is the same."""
    result_file = tmp_path / "two_processes.json"
    completed = launch_two_processes(__file__, str(tmp_path / "run2"), str(result_file))
    assert completed.returncode == 0, completed.stderr[-4000:]
    two_processes = json.loads(result_file.read_text())
    one_process = first_step_losses(str(tmp_path / "run1"), GLOBAL_BATCH, gather_negatives=True)
    gathered, per_process = two_processes["gathered"], two_processes["per_process"]
    assert gathered["loss/contrastive"] == pytest.approx(one_process["loss/contrastive"], abs=1e-5)
    assert per_process["loss/contrastive"] < gathered["loss/contrastive"] - 1e-3
    assert per_process["loss/rpa"] == pytest.approx(gathered["loss/rpa"], abs=1e-5)


if __name__ == "__main__":  # run by `accelerate launch` above
    output_dir, result_file = sys.argv[1], sys.argv[2]
    losses = {
        name: first_step_losses(f"{output_dir}-{name}", GLOBAL_BATCH // 2, gather_negatives=gather)
        for name, gather in (("gathered", True), ("per_process", False))
    }
    if int(os.environ.get("RANK", "0")) == 0:
        with open(result_file, "w") as handle:
            json.dump(losses, handle)
    end_launched_run()
