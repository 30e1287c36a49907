"""RPATrainer checkpoints: resuming equals an uninterrupted run (full and LoRA, and on a stream), saved models load
with the Auto classes, the best LoRA checkpoint is loaded at the end, a non-finite loss stops the run after saving only
finite weights, and the helpers of `trainer.checkpoints`: the recipe a resume must share, the checkpoint folders by
step."""

import json
import math
import os
import re

import pytest
import torch
import safetensors.torch
from peft import get_peft_model
from peft.tuners.lora import LoraLayer
from transformers import AutoModel, AutoProcessor, TrainerCallback

import trainer.rpa_trainer as rpa_trainer_module

from modeling_maple import MapleConfig
from modeling_maple.lora import maple_lora_config, save_merged
from modeling_maple.testing import build_tiny, tiny_dual_encoder_config, tiny_mllm_config
from test_trainer import make_config, make_trainer
from trainer import RPATrainer
from trainer.checkpoints import (
    RECIPE_FILE, STREAM_POSITION_FILE, check_recipe, data_recipe, image_recipe, last_complete_checkpoint, lora_recipe,
    model_recipe, run_checkpoints, training_recipe,
)
from trainer.testing import smoke_config, synthetic_preference_dataset


class _Steps(TrainerCallback):
    """Records the steps a run takes."""

    def __init__(self):
        self.taken = []

    def on_step_end(self, args, state, control, **kwargs):
        self.taken.append(state.global_step)


class _StopAfter(TrainerCallback):
    """Interrupts a run after `step` steps (after its checkpoint there is written), like a killed job."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


@pytest.mark.parametrize("stop", [3, 5], ids=["mid-epoch-0", "mid-epoch-1"])
def test_resume_from_checkpoint_equals_an_uninterrupted_run(tmp_path, stop):
    # 32 rows in batches of 8: 4 steps per epoch, so the resumed run re-enters epoch 0 or 1 (the candidate draws
    # depend on the epoch)
    common = dict(max_steps=6, save_strategy="steps", save_steps=stop, num_text_candidates=3, num_image_candidates=3)
    uninterrupted = make_trainer(tmp_path / "a", **common)
    uninterrupted.train()

    stopped = make_trainer(tmp_path / "b", **common)
    stopped.add_callback(_StopAfter(stop))
    stopped.train()
    resumed = make_trainer(tmp_path / "b", **common)
    resumed.train(resume_from_checkpoint=str(tmp_path / "b" / "run" / f"checkpoint-{stop}"))

    expected, got = uninterrupted.model.state_dict(), resumed.model.state_dict()
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=1e-6, msg=name)


def _stream_trainer(output_dir, rows, **overrides):
    """A trainer on a stream of `rows` synthetic rows, in batches of 4 drawing 2 candidates per modality."""
    model, processor = build_tiny("dual_encoder", seed=0)
    args = make_config(output_dir, per_device_train_batch_size=4, num_text_candidates=2, num_image_candidates=2,
                       logging_steps=1, **overrides)
    return RPATrainer(model, args=args, train_dataset=synthetic_preference_dataset(rows).to_iterable_dataset(),
                      processing_class=processor)


def _step_losses(trainer):
    return {entry["step"]: entry["loss"] for entry in trainer.state.log_history if "loss" in entry}


@pytest.mark.parametrize("rows, accumulation, stop, position", [(8, 1, 3, (1, 1)), (12, 2, 2, (1, 2))],
                         ids=["pass-1", "accumulation-across-passes"])
def test_resuming_a_stream_past_its_first_pass_equals_an_uninterrupted_run(
    tmp_path, rows, accumulation, stop, position
):
    """`Trainer` counts a stream's epoch as max_steps steps: resumed at step 3 (8 rows, 2 batches a pass) it skipped 3
    batches of pass 0, i.e. all of it, and trained pass 1's first batch again, every later batch one behind. Each
    checkpoint now records its pass and the batches of it trained. With 12 rows (3 batches a pass) and 2 batches a
    step, pass 0's last batch joins pass 1's first two in step 2."""
    common = dict(max_steps=5, save_strategy="steps", save_steps=stop, gradient_accumulation_steps=accumulation)
    uninterrupted = _stream_trainer(tmp_path / "a", rows, **common)
    uninterrupted.train()
    stopped = _stream_trainer(tmp_path / "b", rows, **common)
    stopped.add_callback(_StopAfter(stop))
    stopped.train()
    checkpoint = tmp_path / "b" / "run" / f"checkpoint-{stop}"
    assert json.loads((checkpoint / STREAM_POSITION_FILE).read_text()) == dict(zip(("pass", "batches"), position))
    resumed = _stream_trainer(tmp_path / "b", rows, **common)
    resumed.train(resume_from_checkpoint=str(checkpoint))

    assert _step_losses(resumed) == pytest.approx(_step_losses(uninterrupted), abs=1e-5)
    expected, got = uninterrupted.model.state_dict(), resumed.model.state_dict()
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=1e-6, msg=name)


def test_a_stream_checkpoint_saved_before_positions_were_recorded_resumes_only_in_the_first_pass(tmp_path):
    """Without its position the global step tells where a stream's run stopped only within the first pass (8 rows in
    batches of 4: steps 1 and 2)."""
    first = _stream_trainer(tmp_path, 8, max_steps=3, save_strategy="steps", save_steps=1)
    first.train()
    for checkpoint in run_checkpoints(str(tmp_path / "run")):
        os.remove(os.path.join(checkpoint, STREAM_POSITION_FILE))
    later = _stream_trainer(tmp_path, 8, max_steps=4)
    with pytest.raises(ValueError, match=r"checkpoint-3 was saved after the first pass over the streamed training set "
                                         r"but records no position in it \(stream_position.json; "):
        later.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-3"))
    assert later.state.global_step == 3 and not [entry for entry in later.state.log_history if entry["step"] > 3]
    resumed = _stream_trainer(tmp_path, 8, max_steps=3)
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-1"))
    assert _step_losses(resumed) == pytest.approx(_step_losses(first), abs=1e-5)


def test_a_stream_checkpoint_without_its_position_at_the_end_of_a_run_inside_the_first_pass_resumes(tmp_path):
    """A run stopped by max_steps inside the first pass (16 rows in batches of 4, 2 steps) ends at `state.epoch` 1.0,
    which was taken for a checkpoint past the first pass: resuming it to train longer was refused. (A constant
    learning rate: a 2-step schedule is not the first half of a 4-step one.)"""
    constant = dict(lr_scheduler_type="constant", warmup_steps=0)
    uninterrupted = _stream_trainer(tmp_path / "a", 16, max_steps=4, **constant)
    uninterrupted.train()
    first = _stream_trainer(tmp_path / "b", 16, max_steps=2, save_strategy="steps", save_steps=2, **constant)
    first.train()
    checkpoint = tmp_path / "b" / "run" / "checkpoint-2"
    os.remove(checkpoint / STREAM_POSITION_FILE)
    longer = _stream_trainer(tmp_path / "b", 16, max_steps=4, **constant)
    longer.train(resume_from_checkpoint=str(checkpoint))
    assert _step_losses(longer) == pytest.approx(_step_losses(uninterrupted), abs=1e-5)


def test_a_checkpoint_resumes_only_under_its_recipe(tmp_path):
    """Resuming under another rpa_weight or batch size ran silently: a model trained half with one loss, half with
    another. The recipe is saved with every checkpoint; `max_steps` may change (to train longer)."""
    stopped = make_trainer(tmp_path, max_steps=4, save_strategy="steps", save_steps=2)
    stopped.add_callback(_StopAfter(2))
    stopped.train()
    checkpoint = tmp_path / "run" / "checkpoint-2"
    assert json.loads((checkpoint / "rpa_recipe.json").read_text())["rpa_weight"] == stopped.args.rpa_weight
    changed = make_trainer(tmp_path, max_steps=4, save_strategy="steps", save_steps=2, rpa_weight=0.9,
                           per_device_train_batch_size=4, warmup_steps=0.5)  # the schedule is rebuilt on resume
    with pytest.raises(ValueError, match=r"checkpoint-2 was trained with another recipe \(rpa_weight: 0.5 -> 0.9; "
                                         r"per_device_train_batch_size: 8 -> 4; warmup_steps: 0 -> 0.5\)"):
        changed.train(resume_from_checkpoint=True)  # True: the last checkpoint in output_dir
    assert changed.state.global_step == 0
    recipe = (checkpoint / "rpa_recipe.json").read_text()
    (checkpoint / "rpa_recipe.json").write_text(recipe[:10])
    with pytest.raises(ValueError, match=r"rpa_recipe.json cannot be read \("):
        make_trainer(tmp_path, max_steps=4).train(resume_from_checkpoint=True)
    (checkpoint / "rpa_recipe.json").write_text(recipe)
    longer = make_trainer(tmp_path, max_steps=6, save_strategy="steps", save_steps=2)
    longer.train(resume_from_checkpoint=True)
    assert longer.state.global_step == 6


def test_resuming_the_last_checkpoint_skips_one_whose_save_was_cut_short(tmp_path):
    """A kill during a save leaves a checkpoint folder without trainer_state.json (written last); `True` picked it and
    failed on the missing file."""
    import shutil

    make_trainer(tmp_path, max_steps=2, save_strategy="steps", save_steps=2).train()
    shutil.copytree(tmp_path / "run" / "checkpoint-2", tmp_path / "run" / "checkpoint-4")
    (tmp_path / "run" / "checkpoint-4" / "trainer_state.json").unlink()
    longer = make_trainer(tmp_path, max_steps=4, save_strategy="steps", save_steps=2)
    steps = _Steps()
    longer.add_callback(steps)
    longer.train(resume_from_checkpoint=True)
    assert steps.taken == [3, 4]  # resumed at step 2
    assert (tmp_path / "run" / "checkpoint-4" / "trainer_state.json").is_file()  # saved again, whole


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_saved_model_loads_with_auto_classes(tmp_path, lora, monkeypatch):
    trainer = make_trainer(tmp_path, max_steps=4, lora=lora)
    trainer.train()
    before = {name: param.detach().clone() for name, param in trainer.model.named_parameters()}

    deepcopy = rpa_trainer_module.copy.deepcopy

    def no_model_copy(value, *args, **kwargs):
        assert not isinstance(value, torch.nn.Module), "saving must not copy the model"
        return deepcopy(value, *args, **kwargs)

    monkeypatch.setattr(rpa_trainer_module.copy, "deepcopy", no_model_copy)
    for _ in range(3):
        trainer.save_model()
    monkeypatch.undo()
    # saving leaves the model exactly as it was (no merge and unmerge in place)
    for name, param in trainer.model.named_parameters():
        assert torch.equal(param, before[name]), name
    assert not any(getattr(module, "merged", False) for module in trainer.model.modules())
    output_dir = trainer.args.output_dir
    loaded, processor = AutoModel.from_pretrained(output_dir).eval(), AutoProcessor.from_pretrained(output_dir)
    trained = trainer.model.eval()
    if lora:
        trained = trained.merge_and_unload()
    texts, images = ["a red square on the left"], [synthetic_preference_dataset(1)[0]["image"]]
    expected = trained.encode(processor, texts=texts, images=images)
    for got, want in zip(loaded.encode(processor, texts=texts, images=images), expected):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert loaded.preference_logit_scale.item() == pytest.approx(trained.preference_logit_scale.item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(
    "lora_kwargs",
    [{}, {"use_dora": True}, {"lora_bias": True}, {"target_modules": ["word_embeddings", "q_proj"]}],
    ids=["lora", "dora", "bias", "embedding"],
)
def test_lora_saves_equal_merge_and_unload_and_leave_the_model_untouched(tmp_path, dtype, lora_kwargs, monkeypatch):
    model, _ = build_tiny("dual_encoder", seed=0)
    # scaling alpha/r = 2, which merging applies to every delta, bias included
    model = get_peft_model(model.to(dtype), maple_lora_config(model, r=4, lora_alpha=8, lora_dropout=0.0,
                                                               **lora_kwargs))
    with torch.no_grad():  # trained adapters: B (zero at initialisation) and, for DoRA, the magnitudes move
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.add_(torch.randn_like(param), alpha=0.05)
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    base = model.get_base_model()
    save_pretrained, saved_states = base.save_pretrained, []

    def recording_save_pretrained(*args, state_dict, **kwargs):
        saved_states.append(dict(state_dict))  # save_pretrained pops the tensors it writes
        return save_pretrained(*args, state_dict=state_dict, **kwargs)

    monkeypatch.setattr(base, "save_pretrained", recording_save_pretrained)
    for _ in range(3):
        save_merged(model, str(tmp_path))

    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]), name
    # only the LoRA-targeted weights (and biases) are new tensors, on the CPU; the rest are the model's own
    model_storage = {tensor.data_ptr() for tensor in base.state_dict().values()}
    new = {name for name, tensor in saved_states[-1].items() if tensor.data_ptr() not in model_storage}
    lora_layers = [name for name, module in base.named_modules() if isinstance(module, LoraLayer)]
    kinds = ("weight", "bias") if lora_kwargs.get("lora_bias") else ("weight",)
    assert new == {f"{name}.{kind}" for name in lora_layers for kind in kinds}
    assert all(saved_states[-1][name].device.type == "cpu" for name in new)
    saved = safetensors.torch.load_file(os.path.join(tmp_path, "model.safetensors"))
    expected = model.merge_and_unload().state_dict()
    assert saved and set(saved) <= set(expected)
    for name, tensor in saved.items():
        assert torch.equal(tensor, expected[name]), name


def test_lora_bias_on_layers_without_a_bias_is_refused_before_training(tmp_path):
    """Qwen2's o_proj has no bias: the first checkpoint (a merged model) failed with an AttributeError, after the
    steps before it had run."""
    model, processor = build_tiny("mllm", seed=0)
    peft_config = maple_lora_config(model, r=4, lora_alpha=4, lora_bias=True, target_modules=["q_proj", "o_proj"])
    with pytest.raises(ValueError, match=r"lora_bias=True cannot be merged into layers without a bias \(.*o_proj.*\)"):
        RPATrainer(model, args=smoke_config(str(tmp_path / "run"), max_steps=1), train_dataset=synthetic_preference_dataset(4),
                   processing_class=processor, peft_config=peft_config)
    model, _ = build_tiny("mllm", seed=0)  # (the trainer wrapped the first in place)
    with pytest.raises(ValueError, match=r"set lora_bias=False, or target only layers with a bias"):
        save_merged(get_peft_model(model, peft_config), str(tmp_path / "merged"))
    assert not (tmp_path / "merged").exists()


def test_a_full_fine_tune_saved_over_a_lora_run_leaves_no_trainable_state_of_the_other(tmp_path):
    """A LoRA run's trainable_state.safetensors (its adapters and scales) stayed in an output_dir that a later full
    fine-tune saved its model into, and was pushed with it."""
    lora = make_trainer(tmp_path, lora=True, max_steps=1)
    lora.save_model()
    state = tmp_path / "run" / "trainable_state.safetensors"
    assert state.is_file()
    make_trainer(tmp_path, max_steps=1).save_model()
    assert not state.exists() and AutoModel.from_pretrained(tmp_path / "run") is not None
    lora.save_model()  # and the LoRA run saves it again
    assert state.is_file()


def test_training_continues_from_a_saved_model_given_by_path(tmp_path):
    first = make_trainer(tmp_path / "first", max_steps=2)
    first.train()
    first.save_model()
    continued = RPATrainer(first.args.output_dir, args=make_config(tmp_path / "second", max_steps=2),
                           train_dataset=synthetic_preference_dataset(8))  # processor loaded from the path too
    torch.testing.assert_close(continued.model.logit_scale, first.model.logit_scale)
    continued.train()
    assert continued.state.global_step == 2


def test_lora_checkpoint_resumes_adapters_and_scales(tmp_path):
    common = dict(max_steps=4, save_strategy="steps", save_steps=2)
    uninterrupted = make_trainer(tmp_path / "a", lora=True, **common)
    uninterrupted.train()
    stopped = make_trainer(tmp_path / "b", lora=True, **common)
    stopped.add_callback(_StopAfter(2))
    stopped.train()
    resumed = make_trainer(tmp_path / "b", lora=True, **common)
    resumed.train(resume_from_checkpoint=str(tmp_path / "b" / "run" / "checkpoint-2"))
    expected = dict(uninterrupted.model.named_parameters())
    for name, param in resumed.model.named_parameters():
        torch.testing.assert_close(param, expected[name], rtol=0, atol=1e-6, msg=name)


def test_lora_load_best_model_at_end_restores_the_best_checkpoint(tmp_path):
    # eval_loss falls as training goes; ranking it "greater is better" makes the first checkpoint the best
    trainer = make_trainer(tmp_path, lora=True, max_steps=6, save_strategy="steps", save_steps=2, eval_strategy="steps",
                           eval_steps=2, load_best_model_at_end=True, metric_for_best_model="eval_loss",
                           greater_is_better=True)
    trainer.train()
    best = trainer.state.best_model_checkpoint
    assert best is not None and best.endswith("checkpoint-2")
    saved = safetensors.torch.load_file(os.path.join(best, "trainable_state.safetensors"))
    parameters = dict(trainer.model.named_parameters())
    assert saved and set(saved) == {name for name, param in parameters.items() if param.requires_grad}
    for name, tensor in saved.items():
        torch.testing.assert_close(parameters[name].detach(), tensor, rtol=0, atol=0, msg=name)


def _assert_finite_checkpoint(checkpoint):
    state = safetensors.torch.load_file(os.path.join(checkpoint, "model.safetensors"))
    assert state
    for name, tensor in state.items():
        assert torch.isfinite(tensor).all(), f"{checkpoint}: {name} is not finite"


class _PoisonTemperature(TrainerCallback):
    """Makes a parameter NaN after step 3: the loss of step 4 is NaN and so are the weights."""

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == 3:
            with torch.no_grad():
                model.logit_scale.fill_(float("nan"))


def test_non_finite_loss_with_finite_weights_saves_them_and_names_the_step(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=10)
    compute = trainer._contrastive_loss

    def nan_at_step_4(*args, **kwargs):  # a NaN loss from the data, the weights still good
        loss = compute(*args, **kwargs)
        return loss * math.nan if trainer.state.global_step == 3 else loss

    trainer._contrastive_loss = nan_at_step_4
    checkpoint = tmp_path / "run" / "checkpoint-3"
    with pytest.raises(FloatingPointError, match=f"training step 4.*saved to {re.escape(str(checkpoint))}"):
        trainer.train()
    _assert_finite_checkpoint(checkpoint)


def test_a_non_finite_loss_advises_a_lower_learning_rate_in_a_new_run_not_a_resume(tmp_path):
    """The error advised resuming from the saved weights and lowering the learning rate, which a resume refuses: it
    keeps the checkpoint's recipe, learning rate included. A new run from those weights takes another one."""
    trainer = make_trainer(tmp_path, max_steps=10)
    compute = trainer._contrastive_loss

    def nan_at_step_4(*args, **kwargs):
        loss = compute(*args, **kwargs)
        return loss * math.nan if trainer.state.global_step == 3 else loss

    trainer._contrastive_loss = nan_at_step_4
    with pytest.raises(FloatingPointError) as stopped:
        trainer.train()
    assert "resume from there" not in str(stopped.value)
    assert "lower the learning rate in a new run, which may start from a checkpoint's weights" in str(stopped.value)
    checkpoint = str(tmp_path / "run" / "checkpoint-3")
    with pytest.raises(ValueError, match="learning_rate: 0.001 -> 0.0001"):
        make_trainer(tmp_path, max_steps=10, learning_rate=1e-4).train(resume_from_checkpoint=checkpoint)
    new_run = RPATrainer(checkpoint, args=make_config(tmp_path / "new", max_steps=1, learning_rate=1e-4),
                         train_dataset=synthetic_preference_dataset(8, seed=0))
    assert math.isfinite(new_run.train().training_loss)


def test_non_finite_weights_are_not_saved_and_the_last_checkpoint_is_named(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=10, save_strategy="steps", save_steps=2)
    trainer.add_callback(_PoisonTemperature())
    last = tmp_path / "run" / "checkpoint-2"
    with pytest.raises(FloatingPointError, match=f"training step 4.*logit_scale.*{re.escape(str(last))}"):
        trainer.train()
    assert not (tmp_path / "run" / "checkpoint-3").exists()
    _assert_finite_checkpoint(last)


def test_a_scale_driven_to_zero_still_stops_on_the_non_finite_loss(tmp_path):
    """A diverged step can drive the log inverse temperature to -inf: logging the temperature (1 / 0) raised a
    ZeroDivisionError before the non-finite loss could stop the run with its advice (it is logged as inf)."""
    trainer = make_trainer(tmp_path, max_steps=3, learning_rate=1e9, logging_steps=1)
    with pytest.raises(FloatingPointError, match="Non-finite loss at training step"):
        trainer.train()


def test_non_finite_gradient_norm_before_a_nan_loss_saves_nothing(tmp_path):
    # finite weights, but the step that produced them had a non-finite gradient norm: the optimiser state may hold
    # NaNs, so these weights are not saved either
    trainer = make_trainer(tmp_path, max_steps=10)
    get_grad_norm, compute = trainer._get_grad_norm, trainer._contrastive_loss

    def grad_norm_nan_at_step_3(*args, **kwargs):
        grad_norm = get_grad_norm(*args, **kwargs)
        if trainer.state.global_step == 2:  # computing step 3's update
            trainer._last_grad_norm = math.nan
        return grad_norm

    def nan_at_step_4(*args, **kwargs):
        loss = compute(*args, **kwargs)
        return loss * math.nan if trainer.state.global_step == 3 else loss

    trainer._get_grad_norm, trainer._contrastive_loss = grad_norm_nan_at_step_3, nan_at_step_4
    with pytest.raises(FloatingPointError, match="training step 4.*gradient norm of step 3.*no checkpoint was saved"):
        trainer.train()
    assert not (tmp_path / "run" / "checkpoint-3").exists()


def test_the_checkpoint_helpers_read_the_state_file_trainer_writes_and_load_nothing_heavy():
    """trainer.checkpoints names Trainer's state file itself (reading a run folder needs neither TRL nor
    transformers): it must stay the name Trainer writes."""
    import subprocess
    import sys

    from transformers.trainer import TRAINER_STATE_NAME

    from trainer.checkpoints import TRAINER_STATE_NAME as ours

    assert ours == TRAINER_STATE_NAME
    loaded = subprocess.run([sys.executable, "-c", "import sys, trainer.checkpoints; print(sorted({'trl', 'transformers'} "
                             "& set(sys.modules)))"], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


def test_a_run_resumed_to_train_longer_follows_its_own_schedule_from_the_first_step(tmp_path):
    """The checkpoint's optimizer held the rate the shorter run's schedule ended at (0 for cosine), and the first
    resumed step trained at it."""
    common = dict(save_strategy="steps", save_steps=1, logging_steps=1, lr_scheduler_type="cosine", warmup_steps=0)
    uninterrupted = make_trainer(tmp_path / "a", max_steps=4, **common)
    uninterrupted.train()
    shorter = make_trainer(tmp_path / "b", max_steps=2, **common)
    shorter.train()
    longer = make_trainer(tmp_path / "b", max_steps=4, **common)
    longer.train(resume_from_checkpoint=str(tmp_path / "b" / "run" / "checkpoint-2"))

    def rates(trainer):
        return {entry["step"]: entry["learning_rate"] for entry in trainer.state.log_history if "learning_rate" in entry}

    # steps 1-2 ran on the 2-step schedule, as they did; from step 3 on, the 4-step one's rates (step 3: 0 before)
    assert [rates(longer)[step] for step in (3, 4)] == pytest.approx([rates(uninterrupted)[step] for step in (3, 4)])
    assert rates(longer)[3] > 0


def test_a_resumed_run_logs_evaluates_and_saves_at_its_own_intervals(tmp_path):
    """`Trainer` reloaded the intervals from the checkpoint's state, silently over the resumed run's: a resume with a
    smaller `save_steps`, to guard against another crash, saved no more often (found by a review)."""
    first = make_trainer(tmp_path, max_steps=2, save_strategy="steps", save_steps=2, logging_steps=1)
    first.train()
    resumed = make_trainer(tmp_path, max_steps=6, save_strategy="steps", save_steps=3, logging_steps=2,
                           eval_strategy="steps", eval_steps=4)
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    history = resumed.state.log_history
    assert [entry["step"] for entry in history if "loss" in entry] == [1, 2, 4, 6]
    assert [entry["step"] for entry in history if "eval_loss" in entry] == [4, 6]  # and at the last step
    assert [os.path.basename(path) for path in run_checkpoints(str(tmp_path / "run"))] == [
        "checkpoint-2", "checkpoint-3", "checkpoint-6"]


# A change of every value a resumed run must share (`RECIPE_FIELDS`, but `world_size`, which is no setting: see
# test_a_checkpoint_refuses_a_resume_under_another_number_of_processes), from `smoke_config`'s: a field the recipe
# leaves out resumes silently under another loss, schedule or batch.
RECIPE_CHANGES = {
    "rpa_loss": "pairwise", "rpa_weight": 0.9, "reference": "frozen", "learn_beta": False, "learn_temperature": False,
    "max_scale": 50.0, "expand_negatives": False, "exclude_judged_positives": True, "gather_negatives": False,
    "num_image_candidates": 2, "num_text_candidates": 2, "per_device_train_batch_size": 4,
    "gradient_accumulation_steps": 2, "learning_rate": 1e-4, "lr_scheduler_type": "linear", "warmup_steps": 3,
    "weight_decay": 0.1, "seed": 1,
}


def _save_recipe(checkpoint, recipe):
    checkpoint.mkdir(exist_ok=True)
    (checkpoint / RECIPE_FILE).write_text(json.dumps(recipe))


@pytest.mark.parametrize("field, changed", RECIPE_CHANGES.items(), ids=list(RECIPE_CHANGES))
def test_a_checkpoint_refuses_a_resume_that_changes_any_recipe_value(tmp_path, field, changed):
    saved = smoke_config(str(tmp_path))
    _save_recipe(tmp_path, training_recipe(saved, lora=None))
    check_recipe(str(tmp_path), smoke_config(str(tmp_path)), None)  # the same recipe resumes
    with pytest.raises(ValueError, match=rf"another recipe \({field}: [^;]*\)"):  # this one value, named
        check_recipe(str(tmp_path), smoke_config(str(tmp_path), **{field: changed}), None)


def test_a_recipe_saved_before_a_value_was_recorded_resumes(tmp_path, monkeypatch):
    """Checkpoints of older versions have no model (or other newer) entry in their recipe: what they did not record
    cannot differ, and must not read as a change to None."""
    args, model = smoke_config(str(tmp_path)), model_recipe(tiny_dual_encoder_config())
    check_recipe(str(tmp_path), args, None, model)  # saved before any recipe was recorded: no rpa_recipe.json
    recipe = training_recipe(args, lora=None, model=model)
    del recipe["model"], recipe["gather_negatives"], recipe["world_size"]
    _save_recipe(tmp_path, recipe)
    check_recipe(str(tmp_path), args, None, model)
    monkeypatch.setattr(type(args), "world_size", property(lambda self: 2))
    check_recipe(str(tmp_path), args, None, model)


def test_a_checkpoint_refuses_a_resume_under_another_number_of_processes(tmp_path, monkeypatch):
    """The global batch, the InfoNCE pool gathered across processes and the batches `Trainer` skips on resuming
    depend on the number of processes, which the recipe did not record: a 2-process checkpoint resumed silently
    under 1."""
    args = smoke_config(str(tmp_path))
    assert training_recipe(args, lora=None)["world_size"] == 1
    _save_recipe(tmp_path, training_recipe(args, lora=None))
    monkeypatch.setattr(type(args), "world_size", property(lambda self: 2))  # as under `accelerate launch`
    with pytest.raises(ValueError, match=r"another recipe \(world_size: 1 -> 2\)"):
        check_recipe(str(tmp_path), args, None)


def test_a_checkpoint_refuses_a_resume_under_other_lora_settings(tmp_path):
    """A LoRA checkpoint's adapters have its rank and its scaling (lora_alpha / r); full fine-tuning has none."""
    args = smoke_config(str(tmp_path))
    _save_recipe(tmp_path, training_recipe(args, lora=lora_recipe(r=4, lora_alpha=8)))
    check_recipe(str(tmp_path), args, lora_recipe(r=4, lora_alpha=8))
    with pytest.raises(ValueError, match=r"\(lora: \{'r': 4, 'lora_alpha': 8\} -> \{'r': 4, 'lora_alpha': 16\}\)"):
        check_recipe(str(tmp_path), args, lora_recipe(r=4, lora_alpha=16))
    for lora in (lora_recipe(r=8, lora_alpha=8), None):
        with pytest.raises(ValueError, match=r"another recipe \(lora: "):
            check_recipe(str(tmp_path), args, lora)


def test_the_model_recipe_is_the_backbone_its_model_types_and_sizes():
    """Each tower of a dual encoder counts: another vision tower's weights do not fit either."""
    assert model_recipe(tiny_dual_encoder_config()) == {
        "backbone": "dual_encoder", "model_types": ["clip_vision_model", "bert"], "projection_dim": 16,
        "tower_sizes": [[32, 2], [32, 2]],
    }
    mllm = MapleConfig(backbone="mllm", mllm_config=tiny_mllm_config(), projection_dim=16)
    assert model_recipe(mllm) == {"backbone": "mllm", "model_types": ["qwen2_vl"], "family": "qwen2_vl",
                                  "projection_dim": 16, "tower_sizes": [[32, 2], [32, 1]]}  # language model, vision tower
    # a `llava` config with a Pixtral tower is another family than LLaVA-1.5 (its weights and prompts differ)
    pixtral = MapleConfig(backbone="mllm", mllm_config=tiny_mllm_config("pixtral"), projection_dim=16)
    assert model_recipe(pixtral)["model_types"] == ["llava"] and model_recipe(pixtral)["family"] == "pixtral"
    assert model_recipe(MapleConfig(backbone="mllm", mllm_config=tiny_mllm_config("llava")))["family"] == "llava"


def test_a_pixtral_checkpoint_saved_before_families_were_recorded_resumes_and_refuses_llava(tmp_path):
    """Its recipe names the model type, `llava`, and no family: the same Pixtral model resumes it (the family is
    compared only where recorded); one recorded since refuses a LLaVA-1.5 model."""
    args = smoke_config(str(tmp_path))
    pixtral = model_recipe(MapleConfig(backbone="mllm", mllm_config=tiny_mllm_config("pixtral")))
    llava = model_recipe(MapleConfig(backbone="mllm", mllm_config=tiny_mllm_config("llava")))
    before = {"backbone": "mllm", "model_types": ["llava"], "projection_dim": None}  # as 065149c recorded it
    _save_recipe(tmp_path, training_recipe(args, lora=None, model=before))
    check_recipe(str(tmp_path), args, None, pixtral)
    _save_recipe(tmp_path, training_recipe(args, lora=None, model=pixtral))
    with pytest.raises(ValueError, match=r"'family': 'pixtral'.* -> .*'family': 'llava'"):
        check_recipe(str(tmp_path), args, None, llava)


def test_a_checkpoint_refuses_a_model_with_another_text_tower_or_embedding_size(tmp_path):
    """Another model's weights and optimizer state do not fit the checkpoint's."""
    from transformers import RobertaConfig

    args, config = smoke_config(str(tmp_path)), tiny_dual_encoder_config()
    _save_recipe(tmp_path, training_recipe(args, lora=None, model=model_recipe(config)))
    check_recipe(str(tmp_path), args, None, model_recipe(config))
    roberta = RobertaConfig(**{key: getattr(config.text_config, key) for key in (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")})
    with pytest.raises(ValueError, match=r"\(model: .*'bert'\].* -> .*'roberta'\]"):
        check_recipe(str(tmp_path), args, None, model_recipe(tiny_dual_encoder_config(text_config=roberta)))
    with pytest.raises(ValueError, match=r"\(model: \{'projection_dim': 16\} -> \{'projection_dim': 32\}\)"):
        check_recipe(str(tmp_path), args, None, model_recipe(tiny_dual_encoder_config(projection_dim=32)))


def test_a_checkpoint_refuses_the_same_mllm_family_at_another_size(tmp_path):
    """Qwen2-VL 2B and 7B are one model type, and an MLLM without a projection has no projection_dim to tell them apart:
    resuming the one's checkpoint with the other was a size-mismatch traceback from load_state_dict."""
    args = smoke_config(str(tmp_path))
    small = MapleConfig(backbone="mllm", mllm_config=tiny_mllm_config())
    _save_recipe(tmp_path, training_recipe(args, lora=None, model=model_recipe(small)))
    check_recipe(str(tmp_path), args, None, model_recipe(small))
    wider_config = tiny_mllm_config()
    wider_config.text_config.hidden_size = 64
    wider = MapleConfig(backbone="mllm", mllm_config=wider_config)
    with pytest.raises(ValueError, match=r"\(model: .*'tower_sizes': \[\[32, 2\], .* -> .*'tower_sizes': \[\[64, 2\], "):
        check_recipe(str(tmp_path), args, None, model_recipe(wider))


def test_a_model_recipe_recorded_before_the_tower_sizes_resumes(tmp_path):
    """Checkpoints of the version before record no tower sizes: what they did not record cannot differ."""
    args, model = smoke_config(str(tmp_path)), model_recipe(tiny_dual_encoder_config())
    _save_recipe(tmp_path, training_recipe(args, lora=None, model={key: model[key] for key in model if key != "tower_sizes"}))
    check_recipe(str(tmp_path), args, None, model)


def test_a_checkpoint_records_its_image_settings_and_refuses_others(tmp_path):
    """`RPATrainer` saves the image processor's pixel settings with every checkpoint and refuses to resume one under
    others; a recipe saved before they were recorded resumes."""
    stopped = make_trainer(tmp_path, max_steps=2, save_strategy="steps", save_steps=1)
    stopped.add_callback(_StopAfter(1))
    stopped.train()
    checkpoint = tmp_path / "run" / "checkpoint-1"
    saved = json.loads((checkpoint / RECIPE_FILE).read_text())
    assert saved["images"] == image_recipe(stopped.processing_class.image_processor)
    assert saved["images"]["size"] == {"shortest_edge": 16} and saved["images"]["crop_size"] == {"height": 16, "width": 16}
    other = make_trainer(tmp_path, max_steps=2, save_strategy="steps", save_steps=1)
    other.processing_class.image_processor.image_mean = [0.5, 0.5, 0.5]  # another normalisation
    with pytest.raises(ValueError, match=r"another recipe \(images: \{'image_mean': \[0.48145466, 0.4578275, "
                                         r"0.40821073\]\} -> \{'image_mean': \[0.5, 0.5, 0.5\]\}\)"):
        other.train(resume_from_checkpoint=True)
    del saved["images"]
    _save_recipe(checkpoint, saved)
    other.train(resume_from_checkpoint=True)
    assert other.state.global_step == 2


def test_a_checkpoint_records_its_training_data_and_refuses_other_data(tmp_path):
    """The recipe recorded nothing of the data: a run of 32 rows stopped at step 2 resumed silently on 16 rows (the
    32's first 16), counted its 2 steps as a pass over half of them and skipped the wrong rows. The same data, built
    again, resumes; so does a checkpoint saved before the data was recorded, on any data."""
    stopped = make_trainer(tmp_path, train_rows=32, max_steps=4, save_strategy="steps", save_steps=2)
    stopped.add_callback(_StopAfter(2))
    stopped.train()
    checkpoint = tmp_path / "run" / "checkpoint-2"
    saved = json.loads((checkpoint / RECIPE_FILE).read_text())
    assert saved["data"] == data_recipe(synthetic_preference_dataset(32)) and saved["data"]["rows"] == 32
    other = make_trainer(tmp_path, train_rows=16, max_steps=4, save_strategy="steps", save_steps=2)
    with pytest.raises(ValueError, match=r"checkpoint-2 was trained with another recipe \(data: \{'rows': 32, "
                                         r"'digest': '[0-9a-f]{16}'\} -> \{'rows': 16, 'digest': '[0-9a-f]{16}'\}\)"):
        other.train(resume_from_checkpoint=True)
    assert other.state.global_step == 0
    del saved["data"]
    _save_recipe(checkpoint, saved)
    older = make_trainer(tmp_path, train_rows=16, max_steps=3, save_strategy="steps", save_steps=2)
    older.train(resume_from_checkpoint=str(checkpoint))
    assert older.state.global_step == 3
    assert json.loads((tmp_path / "run" / "checkpoint-3" / RECIPE_FILE).read_text())["data"]["rows"] == 16
    _save_recipe(checkpoint, saved | {"data": data_recipe(synthetic_preference_dataset(32))})
    same = make_trainer(tmp_path, train_rows=32, max_steps=4, save_strategy="steps", save_steps=2)
    same.train(resume_from_checkpoint=str(checkpoint))
    assert same.state.global_step == 4


def test_the_data_recipe_reads_scores_at_float32_whatever_their_stored_type():
    """The same scores stored as float64 (0.9) and as float32 (0.8999999762) are the same data, which the trainer reads
    at float32: their digests differed, and a resume on the other copy was refused (found by review)."""
    from datasets import Dataset, Features, List, Value

    columns = {"id": ["a"], "caption": ["a red cube"], "candidate_texts": [["a blue cube"]],
               "txt2img_scores": [[0.9, 0.1]], "img2txt_scores": [[0.7, 0.3]]}
    stored = {kind: Dataset.from_dict(columns, features=Features({
        "id": Value("string"), "caption": Value("string"), "candidate_texts": List(Value("string")),
        "txt2img_scores": List(Value(kind)), "img2txt_scores": List(Value(kind)),
    })) for kind in ("float32", "float64")}
    assert data_recipe(stored["float64"]) == data_recipe(stored["float32"])
    # whole-number scores stored as integers, and an integer id, are the same data too (found by review)
    whole = {"id": [7], "caption": ["a red cube"], "candidate_texts": [["a blue cube"]], "txt2img_scores": [[1, 0]],
             "img2txt_scores": [[0, 1]]}
    assert data_recipe(Dataset.from_dict(whole)) == data_recipe(Dataset.from_dict(
        whole | {"id": ["7"], "txt2img_scores": [[1.0, 0.0]], "img2txt_scores": [[0.0, 1.0]]}
    ))
    changed = Dataset.from_dict(columns | {"txt2img_scores": [[0.9, 0.2]]})
    assert data_recipe(changed) != data_recipe(stored["float64"])


def test_the_data_recipe_is_the_rows_and_their_content_however_they_were_stored(tmp_path):
    """The same rows read back from a `save_to_disk` folder or a copied parquet file have one recipe (`datasets`'
    fingerprint differs between them); the same number of other rows, or of the same rows in another order, has
    another; a stream has none."""
    from datasets import load_dataset, load_from_disk

    rows = synthetic_preference_dataset(40)
    rows.save_to_disk(str(tmp_path / "saved"))
    rows.to_parquet(str(tmp_path / "data.parquet"))
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "data.parquet").write_bytes((tmp_path / "data.parquet").read_bytes())
    stored = [load_from_disk(str(tmp_path / "saved")).with_format("torch"),
              *(load_dataset("parquet", data_files=str(path), split="train")
                for path in (tmp_path / "data.parquet", tmp_path / "copy" / "data.parquet"))]
    assert len({dataset._fingerprint for dataset in [rows, *stored]}) == 4
    assert [data_recipe(dataset) for dataset in stored] == [data_recipe(rows)] * 3
    assert data_recipe(rows)["rows"] == 40
    others = (synthetic_preference_dataset(40, seed=1), rows.shuffle(seed=0), rows.select(range(39)))
    assert len({json.dumps(data_recipe(dataset)) for dataset in (rows, *others)}) == 4
    assert data_recipe(rows.to_iterable_dataset()) is None and data_recipe(None) is None


def test_the_image_recipe_holds_every_pixel_setting_of_each_family(tmp_path):
    """The settings were a list of names (resize, crop, Qwen-VL's pixel budget), which missed InternVL's tiles
    (`max_patches`, which `--image_processor_kwargs`' help names) and Idefics3's (`max_image_size`): a resume with
    another tiling went on at another resolution. Not a pixel setting: the processor's class name."""
    from transformers import GotOcr2ImageProcessorPil, Idefics3ImageProcessorPil

    args = smoke_config(str(tmp_path))
    for make, first, second in ((GotOcr2ImageProcessorPil, {"max_patches": 12}, {"max_patches": 4}),
                                (Idefics3ImageProcessorPil, {"max_image_size": {"longest_edge": 364}},
                                 {"max_image_size": {"longest_edge": 512}})):
        saved = image_recipe(make(**first))
        assert "image_processor_type" not in saved
        _save_recipe(tmp_path, training_recipe(args, lora=None, images=saved))
        check_recipe(str(tmp_path), args, None, images=image_recipe(make(**first)))
        with pytest.raises(ValueError, match=rf"another recipe \(images: {re.escape(repr(first))} -> "
                                             rf"{re.escape(repr(second))}\)"):
            check_recipe(str(tmp_path), args, None, images=image_recipe(make(**second)))


def test_run_checkpoints_are_the_checkpoint_folders_by_step(tmp_path):
    """By step, not by name ("checkpoint-10" sorts before "checkpoint-9"): resuming "the last checkpoint" took step
    9 over step 10. A renamed copy such as "checkpoint-2-old", or a file, is no checkpoint."""
    for name in ("checkpoint-10", "checkpoint-9", "checkpoint-2-old", "checkpoint-2", "other"):
        (tmp_path / name).mkdir()
    (tmp_path / "checkpoint-11").write_text("not a folder")
    assert run_checkpoints(str(tmp_path)) == [str(tmp_path / f"checkpoint-{step}") for step in (2, 9, 10)]
    for step in (9, 10):
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-10")
    assert run_checkpoints(str(tmp_path / "missing")) == [] and last_complete_checkpoint(str(tmp_path / "missing")) is None
    assert run_checkpoints(str(tmp_path / "checkpoint-11")) == []  # a file, not a run folder


def test_a_checkpoint_refusing_a_resume_names_every_value_that_differs(tmp_path):
    _save_recipe(tmp_path, training_recipe(smoke_config(str(tmp_path)), lora=None))
    with pytest.raises(ValueError) as refused:
        check_recipe(str(tmp_path), smoke_config(str(tmp_path), rpa_weight=0.9, seed=1), lora_recipe(r=4, lora_alpha=8))
    assert f"{tmp_path} was trained with another recipe (rpa_weight: 0.5 -> 0.9; seed: 0 -> 1; lora: None -> " \
           "{'r': 4, 'lora_alpha': 8}): resume with its settings, or start a new run in another output_dir" == str(refused.value)


def test_a_checkpoint_push_that_transformers_skips_leaves_output_dir_as_the_last_push_uploads_it(tmp_path, monkeypatch):
    """`Trainer` skips a checkpoint's push while the last one is still uploading output_dir; the files put in place
    for a push (a PEFT run's trainable state, the removed results) were changed all the same, under that upload. And
    the two looks at the upload must agree: one that finishes between them had the push go up with the earlier
    checkpoint's trainable state."""

    class FinishingUpload:  # the last push: still uploading at the first look, done at any later one
        looks = 0

        def is_done(self):
            self.looks += 1
            return self.looks > 1

    monkeypatch.setattr("transformers.trainer.hf_api", lambda: pytest.fail("a skipped push uploaded"))
    trainer = make_trainer(tmp_path, max_steps=1, push_to_hub=False)
    trainer.args.hub_strategy = "every_save"
    trainer.push_in_progress = FinishingUpload()
    output_dir = tmp_path / "run"
    output_dir.mkdir(exist_ok=True)
    (output_dir / "trainable_state.safetensors").write_bytes(b"checkpoint-1's, being uploaded")
    (output_dir / "eval_results.json").write_text("{}")
    checkpoint = output_dir / "checkpoint-2"
    checkpoint.mkdir()
    (checkpoint / "trainable_state.safetensors").write_bytes(b"checkpoint-2's")
    trainer._push_from_checkpoint(str(checkpoint))
    assert (output_dir / "trainable_state.safetensors").read_bytes() == b"checkpoint-1's, being uploaded"
    assert (output_dir / "eval_results.json").exists()
