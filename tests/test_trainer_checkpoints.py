"""RPATrainer checkpoints: resuming equals an uninterrupted run (full and LoRA), saved models load with the Auto
classes, and a non-finite loss stops the run after saving."""

import os

import pytest
import torch
from transformers import AutoModel, AutoProcessor, TrainerCallback

from test_trainer import make_config, make_trainer
from trainer import RPATrainer
from trainer.testing import synthetic_preference_dataset


class _StopAfter(TrainerCallback):
    """Interrupts a run after `step` steps (after its checkpoint there is written), like a killed job."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def test_resume_from_checkpoint_equals_an_uninterrupted_run(tmp_path):
    common = dict(max_steps=6, save_strategy="steps", save_steps=3, num_text_candidates=3, num_image_candidates=3)
    uninterrupted = make_trainer(tmp_path / "a", **common)
    uninterrupted.train()

    stopped = make_trainer(tmp_path / "b", **common)
    stopped.add_callback(_StopAfter(3))
    stopped.train()
    resumed = make_trainer(tmp_path / "b", **common)
    resumed.train(resume_from_checkpoint=str(tmp_path / "b" / "run" / "checkpoint-3"))

    expected, got = uninterrupted.model.state_dict(), resumed.model.state_dict()
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_saved_model_loads_with_auto_classes(tmp_path, lora):
    trainer = make_trainer(tmp_path, max_steps=4, lora=lora)
    trainer.train()
    trainer.save_model()
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


class _PoisonTemperature(TrainerCallback):
    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == 3:
            with torch.no_grad():
                model.logit_scale.fill_(float("nan"))


def test_non_finite_loss_saves_a_checkpoint_and_names_the_step(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=10)
    trainer.add_callback(_PoisonTemperature())
    with pytest.raises(FloatingPointError, match="training step 4"):
        trainer.train()
    assert os.path.isfile(tmp_path / "run" / "checkpoint-3" / "model.safetensors")
