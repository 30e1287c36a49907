"""RPATrainer end to end on tiny offline models and the synthetic preference dataset of `trainer.testing`."""

import io
import math
import sys

import datasets
import pytest
import torch
from PIL import Image
from peft import get_peft_model

from evaluation import evaluate_quadruples
from evaluation.metrics import retrieval_recall
from modeling_maple.lora import maple_lora_config
from modeling_maple.testing import build_tiny
from trainer import RPAConfig, RPATrainer
from trainer.collator import DataCollatorForEmbeddingPreference
from trainer.losses import bidirectional_rpa_loss, contrastive_loss
from evaluation.retrieval import anchor_recall_at_1
from maple.content import content_id
from trainer.losses import preference_agreement
from trainer.batch_dealing import repeated_stream_rows
from trainer.rpa_trainer import _model_inputs
from trainer.schema import PREFERENCE_FEATURES
from trainer.testing import describe_scene, draw_scene, smoke_config, synthetic_preference_dataset


def make_config(tmp_path, **overrides):
    settings = dict(per_device_train_batch_size=8, per_device_eval_batch_size=16, max_steps=30, logging_steps=5,
                    dataloader_num_workers=0)
    return smoke_config(str(tmp_path / "run"), **(settings | overrides))


def make_trainer(tmp_path, backbone="dual_encoder", train_rows=32, lora=False, **overrides):
    """A trainer on the synthetic dataset; `lora` trains the paper's LoRA set-up (rank 4 here) instead of all weights."""
    model, processor = build_tiny(backbone, seed=0)
    peft_config = maple_lora_config(model, r=4, lora_alpha=4, lora_dropout=0.0) if lora else None
    return RPATrainer(
        model,
        args=make_config(tmp_path, **overrides),
        train_dataset=synthetic_preference_dataset(train_rows, seed=0),
        eval_dataset=synthetic_preference_dataset(16, seed=1),
        processing_class=processor,
        peft_config=peft_config,
    )


def dense_recall_at_1(trainer, dataset):
    """Recall@1 (0-100) both ways between the distinct anchor captions and images of `dataset`, embedded one by one
    with `encode`, every caption of an image relevant to it: the reference for the trainer's evaluation."""
    captions, images, pairs = {}, {}, set()
    for row in dataset:
        captions.setdefault(row["caption"], len(captions))
        image_key = row["image"].tobytes()
        if image_key not in images:
            images[image_key] = (len(images), row["image"])
        pairs.add((captions[row["caption"]], images[image_key][0]))
    model = trainer.accelerator.unwrap_model(trainer.model)
    texts, pictures = model.encode(trainer.processing_class, texts=list(captions),
                                   images=[image for _, image in images.values()])
    text_to_image = [sorted(i for t, i in pairs if t == text) for text in range(len(captions))]
    image_to_text = [sorted(t for t, i in pairs if i == image) for image in range(len(images))]
    return {
        "text_to_image": retrieval_recall(texts @ pictures.T, text_to_image, ks=(1,))["recall@1"],
        "image_to_text": retrieval_recall(pictures @ texts.T, image_to_text, ks=(1,))["recall@1"],
    }


def train_logs(trainer):
    trainer.train()
    return [entry for entry in trainer.state.log_history if "loss/rpa" in entry and "eval_loss" not in entry]


def test_training_lowers_both_losses_and_raises_reward_accuracy(tmp_path):
    trainer = make_trainer(tmp_path)
    before = trainer.evaluate()
    logs = train_logs(trainer)
    after = trainer.evaluate()
    assert logs[-1]["loss/rpa"] < 0.8 * logs[0]["loss/rpa"]
    assert logs[-1]["loss/contrastive"] < 0.8 * logs[0]["loss/contrastive"]
    assert logs[-1]["rewards/accuracies"] > logs[0]["rewards/accuracies"] + 0.1
    assert after["eval_loss/rpa"] < before["eval_loss/rpa"] and after["eval_loss/contrastive"] < before["eval_loss/contrastive"]
    assert after["eval_rewards/accuracies"] > before["eval_rewards/accuracies"]
    expected = dense_recall_at_1(trainer, synthetic_preference_dataset(16, seed=1))  # make_trainer's eval set
    for direction in ("text_to_image", "image_to_text"):
        assert after[f"eval_recall@1/{direction}"] == pytest.approx(expected[direction], abs=1e-6)
    assert {"beta", "temperature", "rewards/margins"} <= set(logs[-1])
    assert logs[0]["beta"] == pytest.approx(1 / 0.07, rel=0.01) and logs[0]["temperature"] == pytest.approx(0.07, rel=0.01)


def test_evaluation_reports_fine_grained_scores_on_quadruples(tmp_path):
    model, processor = build_tiny("dual_encoder", seed=0)
    swapped_sides = [
        (draw_scene(colour, "left"), draw_scene(colour, "right"), describe_scene(colour, "left"),
         describe_scene(colour, "right"))
        for colour in ("red", "blue")
    ]
    trainer = RPATrainer(model, args=make_config(tmp_path), train_dataset=synthetic_preference_dataset(8),
                         processing_class=processor, eval_quadruples={"sides": swapped_sides})
    metrics = trainer.evaluate(synthetic_preference_dataset(8, seed=1))
    expected = evaluate_quadruples(model, processor, swapped_sides)
    for key in ("text_score", "image_score", "group_score"):
        assert metrics[f"eval_sides/{key}"] == pytest.approx(expected[key])
    assert "eval_sides/group_score" in trainer.state.log_history[-1]


def test_quadruples_that_evaluation_cannot_read_are_refused_when_the_trainer_is_made(tmp_path):
    """They were checked at the first evaluation, so a table given as quadruples failed after the training steps
    before it."""
    import pandas as pd

    model, processor = build_tiny("dual_encoder", seed=0)
    table = pd.DataFrame({"image_0": [draw_scene("red", "left")], "image_1": [draw_scene("red", "right")],
                          "caption_0": [describe_scene("red", "left")], "caption_1": [describe_scene("red", "right")]})
    with pytest.raises(TypeError, match=r"^eval_quadruples\['sides'\]: expected a list of \(image0, image1, text0, "
                                        r"text1\), got a table \(DataFrame\); pass its rows"):
        RPATrainer(model, args=make_config(tmp_path), train_dataset=synthetic_preference_dataset(8),
                   processing_class=processor, eval_quadruples={"sides": table})


_RED_SIDES = (draw_scene("red", "left"), draw_scene("red", "right"), describe_scene("red", "left"),
              describe_scene("red", "right"))


@pytest.mark.parametrize("eval_quadruples, error, message", [
    ({"sides": []}, ValueError, r"^eval_quadruples\['sides'\]: got none$"),
    ({"sides": [_RED_SIDES[:3]]}, ValueError,
     r"^eval_quadruples\['sides'\]\[0\]: expected \(image0, image1, text0, text1\), got 3 fields$"),
    ([_RED_SIDES], TypeError, r"^eval_quadruples: expected a dict of named sets, \{name: \[\(image_0, image_1, text_0, "
                              r"text_1\), \.\.\.\]\}, got a list$"),
])
def test_quadruple_sets_that_cannot_be_scored_or_are_not_named_are_refused_when_the_trainer_is_made(
    tmp_path, eval_quadruples, error, message
):
    """Only a set that was not quadruples at all was: an empty set ("got none") or a quadruple of three fields failed
    at the first evaluation, and quadruples not named in a dict with "'list' object has no attribute 'items'"."""
    model, processor = build_tiny("dual_encoder", seed=0)
    with pytest.raises(error, match=message):
        RPATrainer(model, args=make_config(tmp_path), train_dataset=synthetic_preference_dataset(8),
                   processing_class=processor, eval_quadruples=eval_quadruples)


def test_making_the_trainer_reads_only_the_first_quadruple_of_a_set(tmp_path):
    """Every quadruple was read to check its texts: a lazy set that decodes its images on access (2,000 quadruples of
    384-pixel PNGs) took 14.7 s to make the trainer. The others are checked when the set is scored."""
    reads = [0, 0, 0]

    class LazyQuadruples(torch.utils.data.Dataset):
        def __len__(self):
            return len(reads)

        def __getitem__(self, index):
            reads[index] += 1
            return _RED_SIDES

    model, processor = build_tiny("dual_encoder", seed=0)
    RPATrainer(model, args=make_config(tmp_path), train_dataset=synthetic_preference_dataset(8),
               processing_class=processor, eval_quadruples={"sides": LazyQuadruples()})
    assert reads == [1, 0, 0]


@pytest.mark.parametrize("several_splits", [False, True])
def test_fine_grained_scores_reach_the_callbacks_so_early_stopping_can_use_them(tmp_path, several_splits):
    """They were added after `Trainer.evaluate` had called `on_evaluate`: `EarlyStoppingCallback` with
    metric_for_best_model="sides/group_score" found no such metric and turned itself off (found by a review helper)."""
    from transformers import TrainerCallback

    seen = []

    class Seen(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            seen.append(dict(metrics))

    model, processor = build_tiny("dual_encoder", seed=0)
    quadruples = [(draw_scene("red", "left"), draw_scene("red", "right"), describe_scene("red", "left"),
                   describe_scene("red", "right"))]
    eval_dataset = synthetic_preference_dataset(8, seed=1)
    trainer = RPATrainer(model, args=make_config(tmp_path), train_dataset=synthetic_preference_dataset(8),
                         eval_dataset={"a": eval_dataset, "b": eval_dataset} if several_splits else eval_dataset,
                         processing_class=processor, eval_quadruples={"sides": quadruples}, callbacks=[Seen()])
    metrics = trainer.evaluate()
    assert any("eval_sides/group_score" in each for each in seen)
    assert sum("eval_sides/group_score" in entry for entry in trainer.state.log_history) == 1  # logged once
    assert metrics["eval_sides/group_score"] == next(each for each in seen if "eval_sides/group_score" in each)[
        "eval_sides/group_score"]


def test_an_evaluation_at_the_last_step_keeps_the_last_training_metrics(tmp_path):
    """The closing log came with the model in eval mode, so `DPOTrainer.log` took it for an evaluation's: the last
    window's loss/rpa, rewards and scales were neither logged nor cleared (found by a review helper)."""
    trainer = make_trainer(tmp_path, train_rows=16, max_steps=3, logging_steps=2, eval_strategy="steps", eval_steps=3)
    trainer.train()
    closing = trainer.state.log_history[-1]
    assert "train_loss" in closing and "loss/rpa" in closing and "rewards/accuracies" in closing, closing
    assert not any(trainer._metrics["train"].values())


def test_regional_compilation_trains_as_training_not_as_evaluation(tmp_path, monkeypatch):
    """accelerate's regional compilation trains a copy of the model, whose flag `Trainer.train` sets while the
    trainer's own model stays in eval mode: each step was taken for an evaluation's (no loss/rpa or rewards logged,
    embeddings kept for an eval recall, a NaN loss not stopping the run; found by a review)."""
    monkeypatch.setenv("ACCELERATE_DYNAMO_USE_REGIONAL_COMPILATION", "true")
    trainer = make_trainer(tmp_path, train_rows=8, max_steps=2, logging_steps=1, torch_compile=True,
                           torch_compile_backend="eager")
    assert not trainer.model.training  # as build_tiny, like from_pretrained, returns it
    # "force_eager" runs the compiled regions uncompiled: the copy is made all the same, without tracing it
    with torch.compiler.set_stance("force_eager"):
        logs = train_logs(trainer)
    assert trainer.model_wrapped is not trainer.model  # the copy did the training
    assert len(logs) == 2 and all("rewards/accuracies" in entry for entry in logs), trainer.state.log_history
    assert trainer._eval_anchors == []


def test_fine_grained_scores_of_a_diverged_model_are_nan_not_zero(tmp_path):
    """NaN embeddings lost every comparison: a diverged model scored a plausible 0 / 0 / 0. Evaluation now refuses
    them, and the trainer logs NaN, as for its loss and recall, without stopping the run."""
    model, processor = build_tiny("dual_encoder", seed=0)
    quadruples = [(draw_scene("red", "left"), draw_scene("red", "right"), describe_scene("red", "left"),
                   describe_scene("red", "right"))]
    trainer = RPATrainer(model, args=make_config(tmp_path), train_dataset=synthetic_preference_dataset(8),
                         processing_class=processor, eval_quadruples={"sides": quadruples})
    with torch.no_grad():
        model.visual_projection.weight.fill_(float("nan"))
    with pytest.raises(ValueError, match="2 of the 2 distinct images are not finite"):
        evaluate_quadruples(model, processor, quadruples)
    metrics = trainer.evaluate(synthetic_preference_dataset(8, seed=1))
    assert all(math.isnan(metrics[f"eval_sides/{key}"]) for key in ("text_score", "image_score", "group_score"))


def test_fine_grained_scores_are_computed_once_with_several_eval_datasets(tmp_path, monkeypatch):
    import evaluation.protocols

    calls = []

    def counting(*args, **kwargs):
        calls.append(args)
        return evaluate_quadruples(*args, **kwargs)

    monkeypatch.setattr(evaluation.protocols, "evaluate_quadruples", counting)
    model, processor = build_tiny("dual_encoder", seed=0)
    quadruples = [(draw_scene("red", "left"), draw_scene("red", "right"), describe_scene("red", "left"),
                   describe_scene("red", "right"))]
    eval_dataset = {"a": synthetic_preference_dataset(8, seed=1), "b": synthetic_preference_dataset(8, seed=2)}
    trainer = RPATrainer(model, args=make_config(tmp_path), train_dataset=synthetic_preference_dataset(8),
                         eval_dataset=eval_dataset, processing_class=processor, eval_quadruples={"sides": quadruples})
    metrics = trainer.evaluate()
    assert len(calls) == 1
    assert sorted(key for key in metrics if "sides" in key) == [f"eval_sides/{key}" for key in
                                                                ("group_score", "image_score", "text_score")]
    assert {"eval_a_loss", "eval_b_loss", "eval_a_recall@1/text_to_image"} <= set(metrics)
    logged = [key for entry in trainer.state.log_history for key in entry if "sides" in key]
    assert sorted(logged) == sorted(key for key in metrics if "sides" in key)  # logged once, under one prefix


def test_a_training_step_reads_the_device_once(tmp_path, monkeypatch):
    """Every read of a tensor to the host (`item`, `tolist`, `bool`, `int`, `float`, `nonzero`, `torch.unique`) waits
    for the GPU to finish its queue: a training step's losses, rewards, scales and finite-loss check travel in one
    gather (one collective) and reach the host in one read, and the losses need none (counted here on the CPU, the
    calls the package's own code makes)."""
    import pathlib

    import trainer as trainer_package

    package_root = pathlib.Path(trainer_package.__file__).resolve().parent.parent
    reads, gathers = [], []

    def recording(name, original):
        def read(*args, **kwargs):
            caller = pathlib.Path(sys._getframe(1).f_code.co_filename).resolve()
            if package_root in caller.parents and not {"tests", "site-packages"} & set(caller.parts):
                reads.append(f"{name} at {caller.name}:{sys._getframe(1).f_lineno}")
            return original(*args, **kwargs)
        return read

    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "nonzero"):
        monkeypatch.setattr(torch.Tensor, name, recording(name, getattr(torch.Tensor, name)))
    monkeypatch.setattr(torch, "unique", recording("unique", torch.unique))
    trainer = make_trainer(tmp_path, max_steps=3, logging_steps=1, expand_negatives=True)
    # transformers' own filter of non-finite logged losses reads each step's loss: off, RPATrainer stops on them
    assert trainer.args.logging_nan_inf_filter is False
    gather, compute_loss = trainer.accelerator.gather, trainer._compute_loss
    monkeypatch.setattr(trainer.accelerator, "gather", lambda tensor: gathers.append(1) or gather(tensor))
    per_step = []

    def counted_step(*args, **kwargs):
        reads.clear(), gathers.clear()
        result = compute_loss(*args, **kwargs)
        per_step.append((list(reads), len(gathers)))
        return result

    monkeypatch.setattr(trainer, "_compute_loss", counted_step)
    trainer.train()
    assert len(per_step) == 3
    for step_reads, step_gathers in per_step:
        assert len(step_reads) == 1 and step_reads[0].startswith("tolist at rpa_trainer.py"), step_reads
        assert step_gathers == 1


def test_evaluation_keeps_a_nan_loss_and_leaves_out_undefined_rewards(tmp_path):
    """A reward is undefined (NaN) for an anchor without a strict judge preference; a NaN loss means divergence and
    must reach eval_loss, not be averaged away. A row accelerate repeated (not `counted`) is left out of both."""
    model, processor = build_tiny("dual_encoder")
    trainer = RPATrainer(model, args=make_config(tmp_path), train_dataset=synthetic_preference_dataset(4), processing_class=processor)
    nan = float("nan")
    losses, rpa, contrastive = torch.tensor([1.0, nan, 3.0]), torch.tensor([1.0, nan, 5.0]), torch.tensor([1.0, 2.0, 7.0])
    agreement = (torch.tensor([0.5, nan, 0.75]), torch.tensor([0.25, nan, 0.125]))
    trainer._log_eval_batch(losses, rpa, contrastive, agreement, counted=torch.tensor([True, True, False]))
    metrics = trainer._metrics["eval"]
    assert metrics["loss"][0] == 1.0 and math.isnan(metrics["loss"][1]) and len(metrics["loss"]) == 2
    assert math.isnan(metrics["loss/rpa"][1]) and metrics["loss/contrastive"] == [1.0, 2.0]
    assert metrics["rewards/accuracies"] == [0.5] and metrics["rewards/margins"] == [0.25]


def test_a_streams_repeated_rows_are_those_after_it_starts_over():
    # accelerate fills a stream's last global batch with the stream's first rows again (positions in the stream)
    repeated = lambda *positions: repeated_stream_rows(torch.tensor(positions)).tolist()
    assert repeated(8, 9, 0, 1, 2, 3, 4, 5) == [False] * 2 + [True] * 6
    assert repeated(0, 1, 2, 0, 1, 2, 0, 1) == [False] * 3 + [True] * 5  # a stream shorter than one global batch
    assert repeated(8, 9, 10, 11) == [False] * 4


def test_a_streamed_eval_sets_rows_reach_the_loss_numbered(tmp_path):
    """Their positions in the stream are how `repeated_eval_rows` tells the rows accelerate repeats across processes
    (see test_trainer_distributed); in one process nothing else shows whether the rows were numbered, or their numbers
    dropped with the columns outside the model's signature."""
    trainer = make_trainer(tmp_path, max_steps=1, per_device_eval_batch_size=4)
    stream = synthetic_preference_dataset(8, seed=1).to_iterable_dataset()
    batches = trainer.get_eval_dataloader(stream)
    assert [batch["row_position"].tolist() for batch in batches] == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_eval_metrics_carry_the_prefix_of_their_own_evaluation(tmp_path):
    # evaluate(metric_key_prefix=...), each split of a dict and predict report their own losses, rewards and scales
    trainer = make_trainer(tmp_path, max_steps=1)
    splits = {"a": synthetic_preference_dataset(8, seed=1), "b": synthetic_preference_dataset(8, num_candidates=2, seed=5)}
    alone = {name: trainer.evaluate(dataset) for name, dataset in splits.items()}
    assert alone["a"]["eval_loss/rpa"] != pytest.approx(alone["b"]["eval_loss/rpa"])
    predicted = trainer.predict(splits["b"]).metrics
    assert predicted["test_loss/rpa"] == pytest.approx(alone["b"]["eval_loss/rpa"])
    assert trainer.evaluate(splits["a"])["eval_loss/rpa"] == pytest.approx(alone["a"]["eval_loss/rpa"])  # no leak
    tested = trainer.evaluate(splits["a"], metric_key_prefix="test")
    assert not [key for key in tested if key.startswith("eval_")]
    assert {"test_loss/rpa", "test_rewards/accuracies", "test_beta", "test_temperature"} <= set(tested)
    per_split = trainer.evaluate(splits)
    for name, metrics in alone.items():
        for key in ("loss/rpa", "loss/contrastive", "rewards/accuracies", "rewards/margins"):
            assert per_split[f"eval_{name}_{key}"] == pytest.approx(metrics[f"eval_{key}"]), (name, key)
    assert not [key for key in per_split if key.startswith("eval_loss/")]
    assert not [key for key in trainer.state.log_history[-1] if not key.startswith("eval_b_") and "/" in key]


def test_recall_counts_every_caption_of_an_image_as_relevant():
    # perfect embeddings: image 0 has two captions (rows 0 and 1, the image repeated), image 1 one
    image_embeds = torch.eye(2)[[0, 0, 1]]
    text_embeds = image_embeds.clone()
    recall = anchor_recall_at_1(text_embeds, image_embeds, torch.tensor([10, 11, 12]), torch.tensor([20, 20, 21]))
    assert recall == {"text_to_image": 100.0, "image_to_text": 100.0}
    # image 0 now sits closer to image 1's caption than to its own: image -> text misses it, text -> image does not
    image_embeds = torch.tensor([[0.6, 0.8], [0.6, 0.8], [0.0, 1.0]])
    recall = anchor_recall_at_1(text_embeds, image_embeds, torch.tensor([10, 11, 12]), torch.tensor([20, 20, 21]))
    assert recall == pytest.approx({"text_to_image": 100.0, "image_to_text": 50.0})


def _multi_caption_eval_dataset():
    """16 rows over the 8 scenes; the second occurrence of 4 scenes has a reworded caption, so those images have two
    captions each."""
    def reword(row, index):
        if 8 <= index < 12:
            row["caption"] = row["caption"].replace("a ", "one ", 1)
            row["candidate_texts"] = [row["caption"], *row["candidate_texts"][1:]]
        return row

    return synthetic_preference_dataset(16, seed=1).map(reword, with_indices=True)


def test_eval_recall_matches_a_dense_recall_when_images_have_several_captions(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=10)
    trainer.train()
    dataset = _multi_caption_eval_dataset()
    metrics = trainer.evaluate(dataset)
    expected = dense_recall_at_1(trainer, dataset)
    for direction in ("text_to_image", "image_to_text"):
        assert metrics[f"eval_recall@1/{direction}"] == pytest.approx(expected[direction], abs=1e-6)


def test_eval_recall_of_a_diverged_model_is_nan_not_an_error():
    """Evaluation reports a diverged model as NaN (its loss is NaN too) rather than stopping the training run."""
    embeds = torch.tensor([[1.0, 0.0], [float("nan"), 0.0]])
    ids = torch.tensor([0, 1])
    recalls = anchor_recall_at_1(embeds, embeds, ids, ids)
    assert all(math.isnan(value) for value in recalls.values()) and set(recalls) == {"text_to_image", "image_to_text"}
    for text_embeds, image_embeds in ((embeds, embeds.nan_to_num()), (embeds.nan_to_num(), embeds)):  # one side diverged
        assert all(math.isnan(value) for value in anchor_recall_at_1(text_embeds, image_embeds, ids, ids).values())


def test_mllm_backbone_trains_with_sampled_candidates(tmp_path):
    trainer = make_trainer(tmp_path, backbone="mllm", train_rows=16, max_steps=8, logging_steps=4,
                           num_text_candidates=2, num_image_candidates=3, rpa_loss="pairwise")
    logs = train_logs(trainer)
    assert all(math.isfinite(entry["loss"]) for entry in logs)
    assert logs[-1]["loss"] < logs[0]["loss"]


def test_beta_and_temperature_initialise_from_config_and_can_be_frozen(tmp_path):
    """The scales are checked as set up, before training: after it, a learnt temperature only showed it was not 2.0
    any more, which it also was not when the configured one was never set (the model's 1/0.07 then). They are logged
    as set: both start at 1/0.07 in a new model, so logging either scale as beta passed until they differed."""
    trainer = make_trainer(tmp_path, beta=5.0, temperature=0.5, learn_beta=False, max_steps=3)
    assert trainer.model.preference_logit_scale.exp().item() == pytest.approx(5.0)
    assert trainer.model.logit_scale.exp().item() == pytest.approx(2.0)  # 1 / temperature
    metrics = trainer.evaluate()
    assert metrics["eval_beta"] == pytest.approx(5.0) and metrics["eval_temperature"] == pytest.approx(0.5)
    assert not trainer.model.preference_logit_scale.requires_grad and trainer.model.logit_scale.requires_grad
    trainer.train()
    model = trainer.model
    assert model.preference_logit_scale.exp().item() == pytest.approx(5.0)  # frozen
    assert model.logit_scale.exp().item() != pytest.approx(2.0)  # learnt from 1/0.5


def test_scales_are_bounded_by_max_scale_at_set_up_and_after_every_optimizer_step(tmp_path):
    """As CLIP clips its logit scale at 100: a learnable scale pushed above `max_scale` is clamped by the next optimizer
    step; one below it is left exactly as the optimizer set it."""
    bounded = make_trainer(tmp_path, max_scale=100.0, max_steps=1, learning_rate=1e-6)
    unbounded = make_trainer(tmp_path, max_scale=None, max_steps=1, learning_rate=1e-6)
    for trainer in (bounded, unbounded):
        with torch.no_grad():
            trainer.model.logit_scale.fill_(math.log(150.0))
        trainer.train()
    assert bounded.model.logit_scale.exp().item() == pytest.approx(100.0)
    assert unbounded.model.logit_scale.exp().item() == pytest.approx(150.0, rel=1e-3)
    assert torch.equal(bounded.model.preference_logit_scale, unbounded.model.preference_logit_scale)

    # A model's own scales above the bound (a checkpoint trained without it) start at the bound, frozen or not; a
    # frozen one then stays exactly there.
    model, processor = build_tiny("dual_encoder", seed=0)
    with torch.no_grad():
        model.preference_logit_scale.fill_(math.log(300.0))
        model.logit_scale.fill_(math.log(300.0))
    trainer = RPATrainer(model, args=make_config(tmp_path, max_steps=2, learn_beta=False),
                         train_dataset=synthetic_preference_dataset(16, seed=0), processing_class=processor)
    assert trainer.model.preference_logit_scale.exp().item() == trainer.model.logit_scale.exp().item() == pytest.approx(100.0)
    frozen_beta = trainer.model.preference_logit_scale.clone()
    trainer.train()
    assert torch.equal(trainer.model.preference_logit_scale, frozen_beta)
    assert trainer.model.logit_scale.exp().item() <= 100.0 + 1e-4

    with pytest.raises(ValueError, match="beta = 200 exceeds max_scale = 100"):
        RPAConfig(str(tmp_path), beta=200.0)
    with pytest.raises(ValueError, match="1 / temperature = 200 exceeds max_scale = 100"):
        RPAConfig(str(tmp_path), temperature=0.005)
    with pytest.raises(ValueError, match="max_scale must be a positive finite number"):
        RPAConfig(str(tmp_path), max_scale=0.0)
    RPAConfig(str(tmp_path), beta=100.0, temperature=0.01)  # at the bound: allowed


@pytest.mark.parametrize("wrapped_by", ["trainer", "user"])
def test_disable_dropout_keeps_the_lora_dropout_asked_for(tmp_path, wrapped_by):
    model, processor = build_tiny("dual_encoder", seed=0)
    assert any(module.p > 0 for module in model.modules() if isinstance(module, torch.nn.Dropout))
    peft_config = maple_lora_config(model, r=4, lora_dropout=0.05)
    if wrapped_by == "user":  # the user's PeftModel: its lora_dropout was zeroed with the rest
        model, peft_config = get_peft_model(model, peft_config), None
    trainer = RPATrainer(model, args=make_config(tmp_path), train_dataset=synthetic_preference_dataset(8),
                         processing_class=processor, peft_config=peft_config)
    dropouts = {name: module.p for name, module in trainer.model.named_modules() if isinstance(module, torch.nn.Dropout)}
    lora = {name: p for name, p in dropouts.items() if ".lora_dropout." in name}
    assert lora and set(lora.values()) == {0.05}
    assert {p for name, p in dropouts.items() if name not in lora} == {0}


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_weight_decay_leaves_the_log_scales_alone(tmp_path, lora):
    trainer = make_trainer(tmp_path, train_rows=8, lora=lora, weight_decay=0.1)
    decay_of = {id(param): group["weight_decay"] for group in trainer.create_optimizer().param_groups
                for param in group["params"]}
    decays = {name: decay_of[id(param)] for name, param in trainer.model.named_parameters() if param.requires_grad}
    scales = {name: decay for name, decay in decays.items() if name.endswith("logit_scale")}
    assert len(scales) == 2 and set(scales.values()) == {0.0}
    assert 0.1 in decays.values()


def test_frozen_reference_without_peft_is_a_frozen_copy(tmp_path):
    trainer = make_trainer(tmp_path, reference="frozen", max_steps=10)
    reference = {name: tensor.clone() for name, tensor in trainer.ref_model.state_dict().items()}
    # The policy starts as the reference: every log-ratio, hence every margin, is zero
    assert trainer.evaluate()["eval_rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    trainer.train()
    assert trainer.evaluate()["eval_rewards/margins"] > 0.0
    for name, tensor in trainer.ref_model.state_dict().items():
        torch.testing.assert_close(tensor, reference[name], rtol=0, atol=0)


@pytest.mark.parametrize("wrapped_by", ["trainer", "user"])
def test_frozen_reference_with_peft_disables_the_adapters(tmp_path, wrapped_by):
    if wrapped_by == "trainer":
        trainer = make_trainer(tmp_path, reference="frozen", max_steps=10, lora=True)
    else:  # a PeftModel passed in is not deep-copied into a second model: its adapters are disabled too
        model, processor = build_tiny("dual_encoder", seed=0)
        model = get_peft_model(model, maple_lora_config(model, r=4, lora_alpha=4, lora_dropout=0.0))
        trainer = RPATrainer(
            model,
            args=make_config(tmp_path, reference="frozen", max_steps=10),
            train_dataset=synthetic_preference_dataset(32, seed=0),
            eval_dataset=synthetic_preference_dataset(16, seed=1),
            processing_class=processor,
        )
    assert trainer.ref_model is None
    frozen = {name: param.clone() for name, param in trainer.model.named_parameters() if not param.requires_grad}
    # LoRA B starts at zero and the trained heads as copies: the policy starts as the reference
    assert trainer.evaluate()["eval_rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    trainer.train()
    assert trainer.evaluate()["eval_rewards/margins"] > 0.0
    parameters = dict(trainer.model.named_parameters())
    assert any("original_module" in name for name in frozen)  # the reference's heads are among the frozen
    for name, tensor in frozen.items():
        torch.testing.assert_close(parameters[name], tensor, rtol=0, atol=0, msg=name)


def test_frozen_peft_reference_draws_no_dropout_while_the_policy_trains(tmp_path):
    trainer = make_trainer(tmp_path, reference="frozen", max_steps=1, lora=True, disable_dropout=False)
    for module in trainer.model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.5
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    trainer.model.train()
    first, second = trainer._reference_similarities(batch), trainer._reference_similarities(batch)
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert trainer.model.training  # and the policy is back in training mode


def test_frozen_peft_reference_leaves_the_regionally_compiled_policy_training(tmp_path, monkeypatch):
    """Under regional compilation the PEFT reference is the trainer's model, off while the compiled copy, sharing its
    modules, trains: restoring the model's own flag after the reference pass switched them all to eval before backward,
    and gradient checkpointing recomputed the forward without its dropout (torch's CheckpointError; found by a review)."""
    monkeypatch.setenv("ACCELERATE_DYNAMO_USE_REGIONAL_COMPILATION", "true")
    model, processor = build_tiny("dual_encoder", seed=0)
    model = get_peft_model(model, maple_lora_config(model, r=4, lora_alpha=4, lora_dropout=0.5)).eval()
    trainer = RPATrainer(
        model,
        args=make_config(tmp_path, max_steps=1, logging_steps=1, reference="frozen", activation_checkpointing=True,
                         torch_compile=True, torch_compile_backend="eager"),
        train_dataset=synthetic_preference_dataset(8, seed=0),
        processing_class=processor,
    )
    assert not trainer.model.training  # a user's PEFT model as `PeftModel.from_pretrained` returns it
    with torch.compiler.set_stance("force_eager"):
        logs = train_logs(trainer)
    assert trainer.model_wrapped is not trainer.model  # the copy did the training
    assert len(logs) == 1 and math.isfinite(logs[0]["grad_norm"]), trainer.state.log_history


def test_a_users_peft_model_with_trainable_base_weights_gets_a_frozen_copy_as_reference(tmp_path):
    """With base weights trainable, the adapters-disabled model would move as the policy trains."""
    model, processor = build_tiny("dual_encoder", seed=0)
    model = get_peft_model(model, maple_lora_config(model, r=4, lora_alpha=4, lora_dropout=0.0))
    layer_norm = next(parameter for name, parameter in model.named_parameters() if "layer_norm" in name or "LayerNorm" in name)
    layer_norm.requires_grad_(True)  # a base weight trained as it is (not through modules_to_save)
    trainer = RPATrainer(model, args=make_config(tmp_path, reference="frozen", max_steps=3),
                         train_dataset=synthetic_preference_dataset(16, seed=0), processing_class=processor)
    assert trainer.ref_model is not None
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    before = trainer._reference_similarities(batch)
    trainer.train()
    for old, new in zip(before, trainer._reference_similarities(batch)):
        torch.testing.assert_close(old, new, rtol=0, atol=0)


def _corrupt(column, value_fn):
    dataset = synthetic_preference_dataset(4)

    def edit(row, index):
        if index == 2:
            row[column] = value_fn(row[column])
        return row

    return dataset.map(edit, with_indices=True)


def _retyped(column, value):
    """The synthetic dataset with `value` in every row of `column`, typed as `datasets` infers it."""
    dataset = synthetic_preference_dataset(4)
    return dataset.remove_columns(column).add_column(column, [value] * len(dataset))


@pytest.mark.parametrize(
    "make_dataset,message",
    [
        (lambda: synthetic_preference_dataset(4).remove_columns("txt2img_scores"), r"lacks column\(s\) \['txt2img_scores'\]"),
        (lambda: _corrupt("img2txt_scores", lambda s: s[:-1]), r"row id 'scene-2': column 'img2txt_scores' has 3 scores, expected 4"),
        (lambda: _corrupt("txt2img_scores", lambda s: [1.5, *s[1:]]), r"row id 'scene-2': column 'txt2img_scores'\[0\] is 1.5; expected .* \[0, 1\]"),
        (lambda: _corrupt("txt2img_scores", lambda s: [*s[:-1], float("nan")]), r"'scene-2': column 'txt2img_scores'\[3\] is nan"),
        (lambda: _corrupt("candidate_texts", lambda s: []), r"row id 'scene-2': column 'candidate_texts' is empty"),
        (lambda: _corrupt("caption", lambda s: None), r"row id 'scene-2': column 'caption' is None; expected a non-empty string"),
        (lambda: _corrupt("image", lambda s: None), r"row id 'scene-2': column 'image' is None; expected an image"),
        (lambda: _corrupt("candidate_texts", lambda s: [*s[:2], None, *s[3:]]),
         r"row id 'scene-2': column 'candidate_texts'\[2\] is None; expected a non-empty string"),
        (lambda: _corrupt("candidate_images", lambda s: [*s[:3], None]),
         r"row id 'scene-2': column 'candidate_images'\[3\] is None; expected an image"),
        (lambda: _corrupt("candidate_texts", lambda s: [*s[:2], None, *s[3:]]).cast_column(
            "candidate_texts", datasets.LargeList(datasets.Value("string"))),  # as polars writes parquet lists
         r"row id 'scene-2': column 'candidate_texts'\[2\] is None; expected a non-empty string"),
        (lambda: _corrupt("caption", lambda s: ""), r"row id 'scene-2': column 'caption' is an empty string; expected a non-empty string"),
        (lambda: _corrupt("candidate_texts", lambda s: [*s[:2], "  ", *s[3:]]),
         r"row id 'scene-2': column 'candidate_texts'\[2\] is a blank string '  '; expected a non-empty string"),
        (lambda: _retyped("caption", 5), r"column 'caption' has type Value\('int64'\); expected Value\('string'\)"),
        (lambda: _retyped("image", "a.png"), r"column 'image' has type Value\('string'\); expected Image\(.*\)\. If "
         r"it holds image file paths, cast it: dataset.cast_column\('image', datasets.Image\(\)\)"),
        (lambda: _retyped("candidate_images", ["a.png"]), r"column 'candidate_images' has type List\(Value\('string'\)\)"
         r".*cast_column\('candidate_images', datasets.List\(datasets.Image\(\)\)\)"),
        (lambda: _retyped("txt2img_scores", ["0.9"] * 4),
         r"column 'txt2img_scores' has type List\(Value\('string'\)\); expected List\(Value\('float32'\)\)"),
        # found by the collator only when the row was batched, hours into a run
        (lambda: _corrupt("candidate_texts", lambda s: s[::-1]),
         r"row id 'scene-2': column 'candidate_texts'\[0\] differs from the row's 'caption'; expected the anchor itself"),
        (lambda: _corrupt("candidate_images", lambda s: s[::-1]),
         r"row id 'scene-2': column 'candidate_images'\[0\] differs from the row's 'image'; expected the anchor itself"),
    ],
    ids=["missing-column", "length-mismatch", "out-of-range", "nan", "empty", "no-caption", "no-image",
         "no-candidate-text", "no-candidate-image", "no-candidate-text-large-list", "empty-caption",
         "blank-candidate-text", "int-caption", "image-paths",
         "candidate-image-paths", "string-scores", "text-anchor-not-first", "image-anchor-not-first"],
)
def test_bad_datasets_fail_before_training_with_a_clear_error(tmp_path, make_dataset, message):
    model, processor = build_tiny("dual_encoder")
    with pytest.raises(ValueError, match=message):
        RPATrainer(model, args=make_config(tmp_path), train_dataset=make_dataset(), processing_class=processor)


def test_an_anchor_image_stored_in_other_bytes_than_its_first_candidate_passes():
    """Validation compares stored bytes, and decodes only rows whose bytes differ: the same picture re-encoded is
    still the anchor, as the collator sees it."""
    from trainer.schema import validate_preference_dataset

    def reencoded(images):
        buffer = io.BytesIO()
        images[0].save(buffer, format="BMP")
        return [Image.open(io.BytesIO(buffer.getvalue())), *images[1:]]

    validate_preference_dataset(_corrupt("candidate_images", reencoded), "train")


def test_validation_decodes_no_image_whose_stored_bytes_or_path_match(tmp_path, monkeypatch):
    """Null comparisons (an image stored as bytes has no path, one read from a path no bytes) counted as "differs", so
    every anchor and its first candidate were decoded: hours for a build-sized dataset, at every start."""
    import trainer.collator
    from trainer.schema import validate_preference_dataset

    decoded = []
    monkeypatch.setattr(trainer.collator, "content_id", lambda item: decoded.append(item) or 0)
    stored_as_bytes = synthetic_preference_dataset(4)
    validate_preference_dataset(stored_as_bytes, "train")
    paths = []
    for row, image in enumerate(stored_as_bytes["image"]):
        image.save(tmp_path / f"{row}.png")
        paths.append(str(tmp_path / f"{row}.png"))
    candidates = [[path, *rest[1:]] for path, rest in zip(paths, stored_as_bytes.cast_column(
        "candidate_images", datasets.List(datasets.Image(decode=False)))["candidate_images"])]
    stored_as_paths = stored_as_bytes.remove_columns(["image", "candidate_images"]).add_column("image", paths).add_column(
        "candidate_images", [[{"bytes": None, "path": candidate} if isinstance(candidate, str) else candidate
                              for candidate in row] for row in candidates])
    stored_as_paths = stored_as_paths.cast_column("image", datasets.Image()).cast_column(
        "candidate_images", datasets.List(datasets.Image()))
    validate_preference_dataset(stored_as_paths, "train")
    assert decoded == []


def test_anchor_images_are_compared_as_the_datasets_image_feature_decodes_them(tmp_path):
    """A palette PNG and an RGB PNG of the same pixels are one image under Image(mode="RGB"), as the collator sees it."""
    from trainer.schema import validate_preference_dataset

    def as_palette(images):
        buffer = io.BytesIO()
        images[0].convert("P", palette=Image.ADAPTIVE).save(buffer, format="PNG")  # exact: the scene has 2 colours
        return [Image.open(io.BytesIO(buffer.getvalue())), *images[1:]]

    dataset = _corrupt("candidate_images", as_palette)
    rgb = dataset.cast_column("image", datasets.Image(mode="RGB")).cast_column(
        "candidate_images", datasets.List(datasets.Image(mode="RGB")))
    validate_preference_dataset(rgb, "train")
    # each column decodes with its own feature: a palette anchor under Image(mode="RGB"), an RGB candidate without
    palette_anchor = _corrupt("image", lambda image: as_palette([image])[0])
    validate_preference_dataset(palette_anchor.cast_column("image", datasets.Image(mode="RGB")), "train")


def test_a_first_candidate_that_does_not_decode_is_named_by_validation():
    from trainer.schema import validate_preference_dataset

    def truncate(row, index):
        if index == 2:
            row["candidate_images"][0] = {"bytes": row["candidate_images"][0]["bytes"][:40], "path": None}
        return row

    encoded = synthetic_preference_dataset(4).cast_column("candidate_images", datasets.List(datasets.Image(decode=False)))
    truncated = encoded.map(truncate, with_indices=True).cast_column("candidate_images", datasets.List(datasets.Image()))
    with pytest.raises(ValueError, match=r"^train dataset, row id 'scene-2': column 'image' or 'candidate_images'\[0\] "
                                         r"does not decode \(UnidentifiedImageError"):
        validate_preference_dataset(truncated, "train")


def test_a_missing_column_is_named_with_the_dataset_it_is_missing_from():
    from trainer.schema import validate_preference_dataset

    with pytest.raises(ValueError, match=r"^The winoground_dev dataset lacks column\(s\) \['caption'\]"):
        validate_preference_dataset(synthetic_preference_dataset(2).remove_columns("caption"), "winoground_dev")


def test_a_null_candidate_list_is_named_when_another_row_holds_a_missing_candidate():
    """The per-row first invalid entries were computed over the lists' lengths, which a null list has none of."""
    from trainer.schema import validate_preference_dataset

    def edit(row, index):
        texts = row["candidate_texts"]
        return {"candidate_texts": None if index == 1 else [texts[0], None, *texts[2:]] if index == 2 else texts}

    with pytest.raises(ValueError, match=r"row id 'scene-1': column 'candidate_texts' is None \(no list\)"):
        validate_preference_dataset(synthetic_preference_dataset(4).map(edit, with_indices=True), "train")


def _stored_as_paths(dataset, tmp_path, edit=lambda row, candidates: candidates):
    """`dataset` with each image saved as a file and stored by its path (no bytes); `edit` changes each row's list of
    candidate images so stored."""
    rows = []
    for row in dataset:
        candidates = []
        for position, image in enumerate(row["candidate_images"]):
            image.save(tmp_path / f"{row['id']}-{position}.png")
            candidates.append({"bytes": None, "path": str(tmp_path / f"{row['id']}-{position}.png")})
        rows.append(dict(row, image=candidates[0], candidate_images=edit(row, candidates)))
    return datasets.Dataset.from_list(rows, features=dataset.features)


def test_an_anchor_image_stored_by_path_is_compared_by_its_picture(tmp_path):
    """Images stored by path have no bytes to compare: another picture first at another path is still found."""
    from trainer.schema import validate_preference_dataset

    dataset = synthetic_preference_dataset(2)
    validate_preference_dataset(_stored_as_paths(dataset, tmp_path), "train")
    swapped = _stored_as_paths(dataset, tmp_path, lambda row, candidates: [candidates[1], candidates[0], *candidates[2:]])
    with pytest.raises(ValueError, match=r"row id 'scene-0': column 'candidate_images'\[0\] differs from the row's 'image'"):
        validate_preference_dataset(swapped, "train")


def test_only_missing_local_files_read_by_path_are_refused(tmp_path):
    """A URL is left to the read that fetches it, and a path stored beside the image's bytes is never read: the entry
    named is the one that would be read from the missing file."""
    from trainer.schema import validate_preference_dataset

    dataset = synthetic_preference_dataset(2)
    gone = str(tmp_path / "gone.png")

    def with_url(row, candidates):
        return [*candidates[:1], {"bytes": None, "path": "https://example.com/a.png"}, *candidates[2:]]

    validate_preference_dataset(_stored_as_paths(dataset, tmp_path, with_url), "train")

    def with_missing_file(row, candidates):
        png = (tmp_path / f"{row['id']}-1.png").read_bytes()
        return [candidates[0], {"bytes": png, "path": gone}, {"bytes": None, "path": gone}, *candidates[3:]]

    with pytest.raises(ValueError, match=r"row id 'scene-0': column 'candidate_images'\[2\] is the file '.*gone.png', "
                                         r"which does not exist"):
        validate_preference_dataset(_stored_as_paths(dataset, tmp_path, with_missing_file), "train")

    def with_folder(row, candidates):
        return [candidates[0], {"bytes": None, "path": str(tmp_path)}, *candidates[2:]]

    with pytest.raises(ValueError, match=r"row id 'scene-0': column 'candidate_images'\[1\] is the file '.*', which is a "
                                         r"folder \(relative paths"):
        validate_preference_dataset(_stored_as_paths(dataset, tmp_path, with_folder), "train")


def test_streamed_datasets_train_and_their_bad_rows_are_caught_as_they_arrive(tmp_path):
    model, processor = build_tiny("dual_encoder")
    args = make_config(tmp_path, max_steps=2, per_device_train_batch_size=4)
    RPATrainer(model, args=args, train_dataset=synthetic_preference_dataset(8).to_iterable_dataset(),
               processing_class=processor).train()

    streamed = _corrupt("img2txt_scores", lambda scores: [-0.5, *scores[1:]]).to_iterable_dataset()
    trainer = RPATrainer(model, args=args, train_dataset=streamed, processing_class=processor)
    with pytest.raises(ValueError, match=r"row id 'scene-2': column 'img2txt_scores'\[0\] is -0.5"):
        trainer.train()


def test_a_bad_streamed_row_of_a_named_eval_dataset_names_that_dataset(tmp_path):
    """With a dict of evaluation datasets the collator's errors said "eval dataset", whichever one the row was in."""
    model, processor = build_tiny("dual_encoder")
    streamed = _corrupt("img2txt_scores", lambda scores: [-0.5, *scores[1:]]).to_iterable_dataset()
    trainer = RPATrainer(model, args=make_config(tmp_path, per_device_eval_batch_size=4),
                         train_dataset=synthetic_preference_dataset(4),
                         eval_dataset={"winoground_dev": streamed}, processing_class=processor)
    with pytest.raises(ValueError, match=r"^winoground_dev dataset, row id 'scene-2': column 'img2txt_scores'\[0\] is -0.5"):
        trainer.evaluate()


@pytest.mark.parametrize("stream", [False, True], ids=["map-style", "streamed"])
def test_an_image_that_does_not_decode_stops_training_with_a_way_to_find_its_row(tmp_path, stream):
    """A corrupt image stopped training with PIL's error from inside the data loader, naming no row."""
    from trainer.schema import first_undecodable_image

    encoded = synthetic_preference_dataset(4).cast_column("candidate_images", datasets.List(datasets.Image(decode=False)))

    def truncate(row, index):
        if index == 2:
            row["candidate_images"][1] = {"bytes": row["candidate_images"][1]["bytes"][:40], "path": None}
        return row

    dataset = encoded.map(truncate, with_indices=True).cast_column("candidate_images", datasets.List(datasets.Image()))
    dataset = dataset.to_iterable_dataset() if stream else dataset
    model, processor = build_tiny("dual_encoder")
    args = make_config(tmp_path, max_steps=1, per_device_train_batch_size=4)
    trainer = RPATrainer(model, args=args, train_dataset=dataset, processing_class=processor)
    with pytest.raises(ValueError, match=r"An image of the train dataset does not decode \(UnidentifiedImageError: .*"
                                         r"first_undecodable_image\(dataset, 'train'\) names the first such row"):
        trainer.train()
    with pytest.raises(ValueError, match=r"An image of the eval dataset does not decode"):
        trainer.evaluate(dataset)
    found = "train dataset, row id 'scene-2', column 'candidate_images'[1]: UnidentifiedImageError: cannot identify image"
    assert first_undecodable_image(dataset).startswith(found)
    if stream:  # a stream without features decodes its images before they can be looked at
        assert first_undecodable_image(dataset.map(lambda row: row)).startswith(
            "train dataset, the row after id 'scene-1': UnidentifiedImageError: cannot identify image")
    assert first_undecodable_image(synthetic_preference_dataset(4)) is None


@pytest.mark.parametrize("stream", [False, True], ids=["map-style", "streamed"])
def test_a_batch_decodes_only_the_candidate_images_it_draws(tmp_path, monkeypatch, stream):
    """`datasets` decoded all 6 candidate images of a row, and its anchor image again, for the 3 the collator kept."""
    dataset = synthetic_preference_dataset(4, num_candidates=6, seed=0)  # one batch (accelerate fetches one ahead)
    dataset = dataset.to_iterable_dataset() if stream else dataset
    trainer = make_trainer(tmp_path, per_device_train_batch_size=4, num_image_candidates=3, num_text_candidates=2)
    trainer.train_dataset = dataset
    decoded = []
    decode = datasets.Image.decode_example
    monkeypatch.setattr(datasets.Image, "decode_example", lambda self, value, **kw: decoded.append(value) or decode(self, value, **kw))
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["candidate_image_mask"].shape == (4, 3)
    assert len(decoded) == 4 * 3  # per row: the anchor, which is candidate 0, and 2 others
    assert dataset.features["candidate_images"] == datasets.List(datasets.Image())  # the caller's dataset is unchanged


def test_the_trainers_datasets_stay_as_given_and_another_collator_gets_decoded_images(tmp_path):
    """Only the loader's copy is left encoded: a first version stored it as `train_dataset`, and a dataset derived from
    that (`select`) was refused as "images left encoded" (found by a review of the change)."""
    trainer = make_trainer(tmp_path, max_steps=1)
    assert trainer.train_dataset.features["candidate_images"] == datasets.List(datasets.Image())
    assert isinstance(trainer.train_dataset[0]["image"], Image.Image)
    assert "eval_loss" in trainer.evaluate(trainer.train_dataset.select(range(4)))
    model, processor = build_tiny("dual_encoder")

    def collate(rows):
        assert all(isinstance(image, Image.Image) for row in rows for image in [row["image"], *row["candidate_images"]])
        return trainer.data_collator(rows)

    other = RPATrainer(model, args=make_config(tmp_path, max_steps=1), train_dataset=synthetic_preference_dataset(8),
                       processing_class=processor, data_collator=collate)
    other.train()


def test_encoded_images_are_refused_with_the_cast_that_decodes_them(tmp_path):
    model, processor = build_tiny("dual_encoder")
    encoded = synthetic_preference_dataset(4).cast_column("candidate_images", datasets.List(datasets.Image(decode=False)))
    with pytest.raises(ValueError, match=r"column 'candidate_images' has type .*: images left encoded; decode them: "
                                         r"dataset.cast_column\('candidate_images', datasets.List\(datasets.Image\(\)\)\)"):
        RPATrainer(model, args=make_config(tmp_path), train_dataset=encoded, processing_class=processor)


def test_every_pass_over_a_streamed_dataset_draws_fresh_candidates(tmp_path):
    # `Trainer` counts a streamed epoch as max_steps steps, so the collator must get the pass index from the loop
    model, processor = build_tiny("dual_encoder")
    args = make_config(tmp_path, max_steps=6, per_device_train_batch_size=4, num_text_candidates=2,
                       num_image_candidates=2)
    trainer = RPATrainer(model, args=args, train_dataset=synthetic_preference_dataset(8).to_iterable_dataset(),
                         processing_class=processor)
    collate, epochs, draws = trainer.data_collator.torch_call, [], []

    def recording(examples):
        batch = collate(examples)
        epochs.append(trainer.data_collator.epoch)
        draws.append(batch["candidate_text_index"].tolist())
        return batch

    trainer.data_collator.torch_call = recording
    trainer.train()
    assert epochs == [0, 0, 1, 1, 2, 2]  # 8 rows in batches of 4: two batches per pass
    assert draws[0:2] != draws[2:4] and draws[2:4] != draws[4:6]


def test_eval_candidates_do_not_depend_on_the_training_epoch(tmp_path):
    """Also for a collator passed in at another epoch (one reused from an earlier run): evaluation draws at epoch 0."""
    trainer = make_trainer(tmp_path, num_text_candidates=2, num_image_candidates=2)
    first = trainer.evaluate()
    trainer.data_collator.set_epoch(7)  # as training does at the start of epoch 7
    again = trainer.evaluate()
    model, processor = build_tiny("dual_encoder", seed=0)  # make_trainer's model, untrained
    reused = RPATrainer(model, args=make_config(tmp_path, num_text_candidates=2, num_image_candidates=2),
                        data_collator=trainer.data_collator,
                        train_dataset=trainer.train_dataset, processing_class=processor)
    later = reused.evaluate(trainer.eval_dataset)
    for key in ("eval_loss", "eval_loss/rpa", "eval_rewards/accuracies"):
        assert again[key] == pytest.approx(first[key], abs=1e-6), key
        assert later[key] == pytest.approx(first[key], abs=1e-6), key


def test_bad_rows_of_a_streamed_eval_dataset_are_named_as_eval(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=1)
    streamed = _corrupt("img2txt_scores", lambda scores: [-0.5, *scores[1:]]).to_iterable_dataset()
    with pytest.raises(ValueError, match=r"^eval dataset, row id 'scene-2'"):
        trainer.evaluate(streamed)


def test_an_evaluation_stopped_midway_leaves_nothing_in_the_next(tmp_path):
    """A bad row in the third batch stops the evaluation after its first batch was scored: the next evaluation must not
    average that batch's metrics into its own, nor retrieve with its anchor (a caption of its own)."""
    trainer = make_trainer(tmp_path, max_steps=1, per_device_eval_batch_size=1)

    def reword_first(row, index):  # a caption found in no other evaluation set
        if index == 0:
            row["caption"] = "one red square on the left"
            row["candidate_texts"] = [row["caption"], *row["candidate_texts"][1:]]
        return row

    broken = _corrupt("img2txt_scores", lambda scores: [-0.5, *scores[1:]]).map(reword_first, with_indices=True)
    with pytest.raises(ValueError, match=r"row id 'scene-2'"):
        trainer.evaluate(broken.to_iterable_dataset())  # a stream: its rows are checked as they are batched
    after_the_failure, clean = trainer.evaluate(), trainer.evaluate()
    for key in ("eval_loss", "eval_loss/rpa", "eval_rewards/accuracies", "eval_recall@1/text_to_image"):
        assert after_the_failure[key] == pytest.approx(clean[key], abs=1e-6), key


def test_compute_metrics_is_rejected_as_it_would_never_be_called(tmp_path):
    model, processor = build_tiny("dual_encoder")
    with pytest.raises(ValueError, match=r"does not take `compute_metrics`.*eval_rewards/accuracies.*eval_quadruples"):
        RPATrainer(model, args=make_config(tmp_path), train_dataset=synthetic_preference_dataset(8),
                   processing_class=processor, compute_metrics=lambda prediction: {"mine": 1.0})


@pytest.mark.parametrize("subsampled", ["num_text_candidates", "num_image_candidates"])
def test_persistent_workers_are_rejected_with_subsampled_candidates(tmp_path, subsampled):
    with pytest.raises(ValueError, match="dataloader_persistent_workers"):
        RPAConfig(output_dir=str(tmp_path), **{subsampled: 2}, dataloader_num_workers=1,
                  dataloader_persistent_workers=True)
    RPAConfig(output_dir=str(tmp_path), dataloader_num_workers=1, dataloader_persistent_workers=True)  # all kept


def test_a_collator_passed_in_must_draw_the_configs_candidate_counts(tmp_path):
    """A collator passed in drew with its own counts, which the recipe a resume checks, the card and the config's
    checks (persistent workers repeating the first epoch's draws) never saw (found by a review)."""
    model, processor = build_tiny("dual_encoder")
    drawing = DataCollatorForEmbeddingPreference(processor=processor, num_text_candidates=2)
    with pytest.raises(ValueError, match=r"^The data_collator draws num_text_candidates=2 where the config has None: set "
                                         r"the config's candidate counts to the collator's"):
        RPATrainer(model, args=make_config(tmp_path), data_collator=drawing, train_dataset=synthetic_preference_dataset(8),
                   processing_class=processor)
    RPATrainer(model, args=make_config(tmp_path, num_text_candidates=2), data_collator=drawing,
               train_dataset=synthetic_preference_dataset(8), processing_class=processor)


def test_judge_scores_keep_float32_where_deepspeed_casts_the_other_inputs(tmp_path, monkeypatch):
    """Under DeepSpeed `Trainer._prepare_input` casts every floating input to the engine's dtype: in bf16 the judge
    scores 0.8 and 0.801 tied for RPA (found by a review, reading transformers' source: DeepSpeed is not installed
    here, so its plugin is a stand-in)."""
    import types

    model, processor = build_tiny("dual_encoder")
    trainer = RPATrainer(model, args=make_config(tmp_path), train_dataset=synthetic_preference_dataset(8),
                         processing_class=processor)
    plugin = types.SimpleNamespace(hf_ds_config=types.SimpleNamespace(dtype=lambda: torch.bfloat16))
    monkeypatch.setattr(trainer, "is_deepspeed_enabled", True)
    monkeypatch.setattr(type(trainer.accelerator.state), "deepspeed_plugin", property(lambda state: plugin))
    batch = trainer.data_collator(list(synthetic_preference_dataset(2)))
    batch["img2txt_scores"][0, :2] = torch.tensor([0.8, 0.801])
    prepared = trainer._prepare_inputs(batch)
    assert prepared["pixel_values"].dtype == torch.bfloat16  # the model's inputs as DeepSpeed wants them
    assert prepared["img2txt_scores"].dtype == prepared["txt2img_scores"].dtype == torch.float32
    assert prepared["img2txt_scores"][0, 0] != prepared["img2txt_scores"][0, 1]


def test_a_collator_passed_in_must_return_the_judged_positives_the_config_excludes(tmp_path):
    model, processor = build_tiny("dual_encoder")
    args = make_config(tmp_path, exclude_judged_positives=True)
    with pytest.raises(ValueError, match=r"exclude_judged_positives=True, .*: build it with "
                                         r"return_judged_positive_ids=True"):
        RPATrainer(model, args=args, data_collator=DataCollatorForEmbeddingPreference(processor=processor),
                   train_dataset=synthetic_preference_dataset(8), processing_class=processor)
    returning = DataCollatorForEmbeddingPreference(processor=processor, return_judged_positive_ids=True)
    trainer = RPATrainer(model, args=args, data_collator=returning, train_dataset=synthetic_preference_dataset(8),
                         processing_class=processor)
    assert trainer.eval_data_collator.return_judged_positive_ids  # evaluation's copy returns them too
    # a collator of the user's own is not checked up front: a batch without them is one error saying what it needs
    # (it was a bare KeyError in the first step; found by a review)
    for missing in (["judged_positive_text_ids", "judged_positive_image_ids"], ["judged_positive_image_ids"]):
        def collate(rows, missing=missing):
            return {key: value for key, value in returning(rows).items() if key not in missing}

        trainer = RPATrainer(model, args=args, data_collator=collate, train_dataset=synthetic_preference_dataset(8),
                             processing_class=processor)
        with pytest.raises(ValueError, match=r"exclude_judged_positives needs every batch's judged_positive_text_ids"):
            trainer.train()


def test_config_defaults_run_on_cpu_and_follow_the_paper(tmp_path):
    config = RPAConfig(output_dir=str(tmp_path))
    assert config.bf16 is (torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False))
    assert not config.gradient_checkpointing
    assert config.learning_rate == 5e-4 and config.lr_scheduler_type == "cosine" and config.warmup_steps == 0.025
    assert config.num_train_epochs == 8
    assert (config.rpa_loss, config.reference, config.expand_negatives) == ("listwise", "none", True)


def test_the_losses_see_float32_similarities_under_bf16_mixed_precision(tmp_path, similarity_dtypes):
    """Autocast covers the model's forward only (accelerate returns its outputs in float32): beta (up to 100) times a
    bfloat16 cosine would round away the small similarity gaps between hard negatives that RPA ranks. CPU autocast
    stands in for a GPU's here."""
    trainer = make_trainer(tmp_path, bf16=True, use_cpu=True, max_steps=1, per_device_train_batch_size=4)
    assert trainer.args.bf16 and trainer.accelerator.mixed_precision == "bf16"
    trainer.train()
    assert similarity_dtypes == [(torch.float32,) * 4 + (False,)]


def test_bf16_default_is_off_when_training_on_the_cpu_of_a_gpu_machine(tmp_path, monkeypatch):
    """`use_cpu=True` on a machine with a bf16 GPU trains on the CPU: bf16 autocast there would only lose precision."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert RPAConfig(output_dir=str(tmp_path), use_cpu=True).bf16 is False
    assert RPAConfig(output_dir=str(tmp_path), use_cpu=True, bf16=True).bf16 is True  # asked for: kept
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")  # `accelerate launch --cpu`
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)  # the faked CUDA reaches the device set-up
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert RPAConfig(output_dir=str(tmp_path)).bf16 is False
    monkeypatch.delenv("ACCELERATE_USE_CPU")
    assert RPAConfig(output_dir=str(tmp_path), fp16=True).bf16 is False  # fp16 asked for: not both


def test_a_model_given_by_hub_id_is_read_with_the_hub_token(tmp_path, monkeypatch):
    """`RPATrainer(model="org/id")` reads the repo with `args.hub_token`, as it pushes, unless `model_init_kwargs` name
    another token."""
    from trainer import rpa_trainer

    class Loaded(Exception):
        pass

    def load_maple(name, **kwargs):
        raise Loaded(kwargs.get("token"))

    monkeypatch.setattr(rpa_trainer, "load_maple", load_maple)
    for model_init_kwargs, token in ((None, "hf_reader"), ({"token": "hf_other"}, "hf_other")):
        args = RPAConfig(output_dir=str(tmp_path), hub_token="hf_reader", model_init_kwargs=model_init_kwargs,
                         report_to="none")
        with pytest.raises(Loaded, match=f"^{token}$"):
            RPATrainer("org/private-embedder", args=args, train_dataset=synthetic_preference_dataset(4, seed=0))


def test_the_pickled_arguments_hold_no_hub_token(tmp_path):
    """`Trainer` saves the arguments as training_args.bin beside every checkpoint and pushes that file; the token
    stays with the arguments in use."""
    import pickle

    args = RPAConfig(output_dir=str(tmp_path), hub_token="hf_secret_token", report_to="none")
    saved = io.BytesIO()
    torch.save(args, saved)
    assert b"hf_secret_token" not in saved.getvalue()
    saved.seek(0)
    loaded = torch.load(saved, weights_only=False)
    assert loaded.hub_token is None and loaded.rpa_weight == args.rpa_weight and loaded.output_dir == args.output_dir
    assert args.hub_token == "hf_secret_token" and b"hf_secret_token" not in pickle.dumps(args)


def test_memory_is_pinned_only_for_an_accelerator(tmp_path, monkeypatch):
    """transformers pins the loader's memory by default, and torch warned at every CPU run ("'pin_memory' argument is
    set as true but no accelerator is found")."""
    for available, use_cpu, pinned in ((False, False, False), (True, True, False), (True, False, True)):
        monkeypatch.setattr(torch.accelerator, "is_available", lambda: available)
        args = RPAConfig(output_dir=str(tmp_path), report_to="none", use_cpu=use_cpu)
        assert args.dataloader_pin_memory is pinned, (available, use_cpu)


def test_a_token_in_model_init_kwargs_is_neither_pickled_nor_reported(tmp_path):
    """`maple train --model_init_kwargs '{"token": ...}'` is a supported way to read a private model: the token went
    into training_args.bin, which `push_to_hub` uploads, and into `to_dict`, which reporters log."""
    import pickle

    args = RPAConfig(output_dir=str(tmp_path), report_to="none",
                     model_init_kwargs={"token": "hf_secret_token", "use_auth_token": "hf_old_token", "dtype": "bfloat16"})
    assert b"hf_secret_token" not in pickle.dumps(args) and b"hf_old_token" not in pickle.dumps(args)
    assert pickle.loads(pickle.dumps(args)).model_init_kwargs == {"dtype": "bfloat16"}
    assert args.to_dict()["model_init_kwargs"] == {"dtype": "bfloat16", "token": "<TOKEN>", "use_auth_token": "<TOKEN>"}
    assert "hf_secret_token" not in args.to_json_string()
    assert args.model_init_kwargs["token"] == "hf_secret_token"  # the arguments in use keep it


def test_model_init_kwargs_may_be_any_mapping_but_name_one_dtype(tmp_path):
    """A non-dict mapping was refused as "not a mapping". A dtype per sub-config is refused by name: transformers 5
    loads every module in the dict's "" entry, with a warning only (found by reviews of those checks)."""
    from types import MappingProxyType

    from trainer.rpa_config import from_pretrained_kwargs

    args = RPAConfig(output_dir=str(tmp_path), report_to="none", model_init_kwargs=MappingProxyType({"dtype": "bfloat16"}))
    assert args.model_init_kwargs == {"dtype": "bfloat16"} and isinstance(args.model_init_kwargs, dict)
    with pytest.raises(ValueError, match=r"one dtype per sub-config is not available .*give one, e.g. 'bfloat16'"):
        from_pretrained_kwargs({"dtype": {"text_config": "bfloat16", "": "float32"}})


def test_a_config_is_rebuilt_from_its_dict(tmp_path):
    """transformers masks every "*_token" key, pad_token too, which `__post_init__` then refused: `RPAConfig(**
    config.to_dict())` raised (found by a review helper)."""
    args = RPAConfig(output_dir=str(tmp_path), report_to="none", rpa_weight=0.3)
    rebuilt = RPAConfig(**args.to_dict())
    assert rebuilt.rpa_weight == 0.3 and rebuilt.pad_token is None


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(rpa_weight=1.5), "rpa_weight"),
        (dict(rpa_weight=-0.1), "rpa_weight"),
        # torch's optimizers refused these only once training started, after the model and the data had loaded
        (dict(learning_rate=-1.0), "learning_rate"),
        (dict(learning_rate=float("nan")), "learning_rate"),
        (dict(weight_decay=-0.1), "weight_decay"),
        # accepted, then a ValueError / OverflowError naming no field when the training starts
        (dict(warmup_steps=math.nan), "warmup_steps must be a finite number of at least 0, got nan"),
        (dict(warmup_steps=math.inf), "warmup_steps must be a finite number of at least 0, got inf"),
        # `Trainer` clips only when max_grad_norm > 0: these turned clipping off silently; None failed at the first step
        (dict(max_grad_norm=math.nan), r"max_grad_norm must be a number of at least 0 \(0: no gradient clipping\), got nan"),
        (dict(max_grad_norm=-1.0), "max_grad_norm must be a number of at least 0"),
        (dict(max_grad_norm=None), "max_grad_norm must be a number, got None"),
        # httpx refused to send such a token: the run failed at its first Hub request, said to be an unreachable Hub
        (dict(hub_token=""), "hub_token: empty; leave it unset to use HF_TOKEN"),
        (dict(hub_token="hf_token "), "hub_token: holds a space, a line break"),
        # accepted, then refused by the Hub once the trainer was made: after maple train loaded the data and the model
        (dict(push_to_hub=True, hub_model_id="maple-org/my model"), "hub_model_id: 'maple-org/my model' is not a Hub"),
        (dict(rpa_loss="triplet"), "rpa_loss"),
        (dict(reference="ema"), "reference"),
        (dict(beta=0.0), "beta"),
        (dict(beta=math.inf, max_scale=None), "beta must be a positive finite number"),
        (dict(max_scale=math.inf), "max_scale must be a positive finite number"),
        (dict(num_text_candidates=1), "num_text_candidates"),
        (dict(num_image_candidates=1), "num_image_candidates"),
        (dict(loss_type=["ipo"]), "loss_type"),
        (dict(loss_weights=[0.5]), "loss_weights"),
        (dict(precompute_ref_log_probs=True), "precompute_ref_log_probs"),
        (dict(use_weighting=True), "use_weighting=True acts on token log-probabilities"),
        (dict(max_length=512), "max_length"),
        (dict(pad_to_multiple_of=8), "pad_to_multiple_of=8 configures DPO's token collator"),
        (dict(truncation_mode="keep_end"), "truncation_mode"),
        (dict(pad_token="<pad>"), "pad_token='<pad>' configures DPO's token collator"),
        (dict(exclude_judged_positives=True, expand_negatives=False), "needs expand_negatives=True"),
        # accepted, then a traceback at the first step (found by a review helper)
        (dict(train_sampling_strategy="group_by_length"), "train_sampling_strategy='group_by_length' orders rows by"),
        (dict(train_sampling_strategy="batch_rebalance"), "train_sampling_strategy='batch_rebalance' orders rows by"),
        (dict(model_init_kwargs="[1, 2]"), r"model_init_kwargs must be a mapping of from_pretrained arguments .*got '\[1, 2\]'"),
        # a dataclass does not check types: "false" switched the exclusion on, True was lambda = 1, and a number as a
        # string failed with a TypeError naming no field
        (dict(exclude_judged_positives="false"), "exclude_judged_positives must be True or False, got 'false'"),
        (dict(learn_beta=1), "learn_beta must be True or False, got 1"),
        (dict(rpa_weight=True), "rpa_weight must be a number, got True"),
        (dict(rpa_weight="0.5"), "rpa_weight must be a number, got '0.5'"),
        (dict(learning_rate="5e-4"), "learning_rate must be a number, got '5e-4'"),
        (dict(beta="14"), "beta must be a number or None, got '14'"),
    ],
)
def test_config_rejects_bad_values(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        RPAConfig(output_dir=str(tmp_path), **overrides)


def test_config_rejects_an_output_dir_that_cannot_name_the_repo_pushed_to(tmp_path):
    """Without hub_model_id `Trainer` names the repo after output_dir, and the Hub refused 'my run' once the trainer was
    made: after maple train had loaded the data and the model."""
    with pytest.raises(ValueError, match="push_to_hub without hub_model_id names the repo after output_dir: 'my run' "
                                         r"is not a Hub repo id \('name' or 'namespace/name'\): .*; pass hub_model_id$"):
        RPAConfig(output_dir=str(tmp_path / "my run"), push_to_hub=True)
    assert RPAConfig(output_dir=str(tmp_path / "my run"), push_to_hub=True, hub_model_id="maple-org/my-run").push_to_hub


def test_config_accepts_dpo_settings_that_mean_what_rpa_does(tmp_path):
    """A TRL recipe's loss_type=["sigmoid"] with loss_weights=[1.0] is RPA's one loss at weight 1: nothing to refuse."""
    config = RPAConfig(output_dir=str(tmp_path), loss_type=["sigmoid"], loss_weights=[1.0])
    assert config.loss_weights == [1.0]


@pytest.mark.parametrize("metric, greater", [
    ("eval_loss/contrastive", False), ("loss/rpa", False), ("eval_test_loss/rpa", False), ("eval_loss", False),
    ("eval_q/group_score", True), ("eval_rewards/accuracies", True), ("eval_recall@1/text_to_image", True),
])
def test_the_best_checkpoint_by_a_loss_term_is_the_lowest(tmp_path, metric, greater):
    """transformers takes a metric for a loss only when its name ends in "loss": by "eval_loss/contrastive" the
    checkpoint with the highest loss was kept as the best, silently (found by a review)."""
    config = RPAConfig(output_dir=str(tmp_path), metric_for_best_model=metric, eval_strategy="steps",
                       save_strategy="steps", load_best_model_at_end=True)
    assert config.greater_is_better is greater
    assert RPAConfig(output_dir=str(tmp_path), metric_for_best_model=metric, greater_is_better=True).greater_is_better


def test_predict_prepares_its_dataset_as_evaluate_does(tmp_path):
    """`predict` skipped the preparation `evaluate` does: a dataset in torch format was refused row by row, and a
    missing column was found by the collator, with errors naming the "eval" dataset (found by a review)."""
    trainer = make_trainer(tmp_path, max_steps=1)
    dataset = synthetic_preference_dataset(8, seed=1)
    expected = trainer.evaluate(dataset, metric_key_prefix="test")["test_loss/rpa"]
    assert trainer.predict(dataset.with_format("torch")).metrics["test_loss/rpa"] == pytest.approx(expected)
    with pytest.raises(ValueError, match=r"^The test dataset lacks column\(s\) \['txt2img_scores'\]"):
        trainer.predict(dataset.remove_columns("txt2img_scores"))


def test_the_help_of_max_length_says_other_values_are_rejected():
    help_text = RPAConfig.__dataclass_fields__["max_length"].metadata["help"]
    assert "any other value is rejected" in help_text and "Not used" not in help_text


def test_a_dataset_dict_as_train_dataset_asks_for_one_split(tmp_path):
    model, processor = build_tiny("dual_encoder")
    splits = datasets.DatasetDict(train=synthetic_preference_dataset(4), test=synthetic_preference_dataset(4))
    with pytest.raises(ValueError, match=r"train dataset is a DatasetDict: pass one split, e.g. dataset\['train'\]; "
                                         r"it has splits \['train', 'test'\]"):
        RPATrainer(model, args=make_config(tmp_path), train_dataset=splits, processing_class=processor)
    from trainer.schema import validate_preference_dataset

    with pytest.raises(ValueError, match=r"pass one split, e.g. dataset\['train'\]; it has splits \['test', 'train'\]"):
        validate_preference_dataset(datasets.DatasetDict(test=splits["test"], train=splits["train"]), "train")


@pytest.mark.parametrize("id_type", ["large_string", "int64"])
def test_equivalent_column_types_pass_the_schema_check(tmp_path, id_type):
    # large strings, string views and lists (as polars and pyarrow write parquet), float64 or integer scores and
    # integer ids hold what the schema asks for
    dataset = synthetic_preference_dataset(4)
    if id_type == "int64":
        dataset = dataset.remove_columns("id").add_column("id", list(range(4)))
    dataset = dataset.cast(datasets.Features({
        **dataset.features,
        "id": datasets.Value(id_type),
        "caption": datasets.Value("string_view"),
        "candidate_texts": datasets.LargeList(datasets.Value("large_string")),
        "candidate_images": datasets.List(datasets.Image(), length=4),  # fixed-size lists, as List(length=) makes
        "txt2img_scores": datasets.List(datasets.Value("float64")),
    }))
    dataset = dataset.remove_columns("img2txt_scores").add_column("img2txt_scores", [[1, 0, 0, 0]] * 4)
    model, processor = build_tiny("dual_encoder")
    RPATrainer(model, args=make_config(tmp_path), train_dataset=dataset, processing_class=processor)


def test_the_preference_schema_is_defined_once():
    from trainer.schema import PREFERENCE_COLUMNS, PREFERENCE_FEATURES

    assert PREFERENCE_COLUMNS == tuple(PREFERENCE_FEATURES)
    assert synthetic_preference_dataset(2).features == PREFERENCE_FEATURES


def test_excluding_judged_positives_takes_them_out_of_their_anchors_denominators(tmp_path):
    # every anchor's candidate text 1 and candidate image 1 become as good as the anchor's own
    dataset = synthetic_preference_dataset(8, seed=0).map(
        lambda row: {column: [row[column][0], 1.0, *row[column][2:]] for column in ("img2txt_scores", "txt2img_scores")}
    )
    losses = {}
    for exclude in (False, True):
        model, processor = build_tiny("dual_encoder", seed=0)
        args = make_config(tmp_path, exclude_judged_positives=exclude, max_steps=1, rpa_weight=0.0)
        trainer = RPATrainer(model, args=args, train_dataset=dataset, processing_class=processor)
        batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
        with torch.no_grad():
            losses[exclude] = trainer.compute_loss(trainer.model, batch).item()
            outputs = trainer.model(**_model_inputs(batch))
    anchors_image, anchors_text = batch["anchor_image_index"], batch["anchor_text_index"]
    expected = contrastive_loss(
        outputs.image_embeds[anchors_image], outputs.text_embeds[anchors_text], outputs.inverse_temperature,
        outputs.image_embeds, outputs.text_embeds, image_ids=batch["image_ids"][anchors_image],
        text_ids=batch["text_ids"][anchors_text], negative_image_ids=batch["image_ids"],
        negative_text_ids=batch["text_ids"], excluded_text_ids=batch["judged_positive_text_ids"],
        excluded_image_ids=batch["judged_positive_image_ids"],
    )
    assert losses[True] == pytest.approx(expected.item(), rel=1e-6)
    assert losses[True] < losses[False]  # captions rated as true no longer push their anchors away


def test_a_judged_positive_leaves_its_anchors_denominator_also_when_not_drawn(tmp_path):
    """Row 0 rates row 1's caption above its own and draws 2 of its 3 texts a step. That caption is in every batch
    (row 1's anchor), but the exclusion once saw only the drawn candidates: in the steps that drew the other text it
    stayed a negative of row 0, and the loss changed with the draw (found by a review)."""
    captions = [describe_scene(colour, "left") for colour in ("red", "blue", "green")]
    images = [draw_scene(colour, "left") for colour in ("red", "blue", "green")]
    rows = [
        dict(id=f"r{index}", image=image, caption=caption, candidate_images=[image], txt2img_scores=[1.0],
             candidate_texts=[caption], img2txt_scores=[1.0])
        for index, (image, caption) in enumerate(zip(images, captions))
    ]
    rows[0].update(candidate_texts=captions, img2txt_scores=[0.9, 0.95, 0.1])
    dataset = datasets.Dataset.from_list(rows, features=PREFERENCE_FEATURES)
    model, processor = build_tiny("dual_encoder", seed=0)
    args = make_config(tmp_path, per_device_train_batch_size=3, max_steps=1, rpa_weight=0.0,
                       exclude_judged_positives=True, num_text_candidates=2)
    trainer = RPATrainer(model, args=args, train_dataset=dataset, processing_class=processor)
    losses, drew_row_1s_caption = [], set()
    for epoch in range(6):
        trainer.data_collator.set_epoch(epoch)
        batch = trainer._prepare_inputs(trainer.data_collator(list(dataset)))
        drawn = batch["text_ids"][batch["candidate_text_index"][0, 1]].item()
        drew_row_1s_caption.add(drawn == content_id(captions[1]))
        with torch.no_grad():
            losses.append(trainer.compute_loss(trainer.model, batch).item())
    assert drew_row_1s_caption == {True, False}  # the steps drew either of row 0's other texts
    assert losses == pytest.approx([losses[0]] * len(losses), rel=1e-6)


def encoded_cosines(model, processor, rows):
    """The cosines of `rows` (every candidate kept, in dataset order), each item embedded alone by `encode`:
    ``(N, C)`` each anchor caption to its row's candidate images (txt2img), ``(N, C)`` each anchor image to its row's
    candidate texts (img2txt). The reference for the trainer's similarities, which index one batched forward with the
    collator's index tensors."""
    texts, images = model.encode(processor, texts=[row["caption"] for row in rows],
                                 images=[row["image"] for row in rows])
    candidate_images = torch.stack([model.encode(processor, images=row["candidate_images"]) for row in rows])
    candidate_texts = torch.stack([model.encode(processor, texts=row["candidate_texts"]) for row in rows])
    return (candidate_images @ texts.unsqueeze(2)).squeeze(2), (candidate_texts @ images.unsqueeze(2)).squeeze(2)


def batch_loss(trainer, rows):
    """The trainer's loss on `rows`, collated into one batch by its collator, without gradient."""
    with torch.no_grad():
        return trainer.compute_loss(trainer.model, trainer._prepare_inputs(trainer.data_collator(rows))).item()


def expected_rpa(txt2img_scores, img2txt_scores, rows, rpa_loss="listwise"):
    """`bidirectional_rpa_loss` of the scaled similarities `txt2img_scores` and `img2txt_scores` against the judge
    scores of `rows`, every candidate real."""
    judged = {column: torch.tensor([row[column] for row in rows]) for column in ("txt2img_scores", "img2txt_scores")}
    return bidirectional_rpa_loss(
        (txt2img_scores, judged["txt2img_scores"], torch.ones_like(txt2img_scores, dtype=torch.bool)),
        (img2txt_scores, judged["img2txt_scores"], torch.ones_like(img2txt_scores, dtype=torch.bool)),
        rpa_loss=rpa_loss,
    ).item()


@pytest.mark.parametrize("form", ["listwise", "pairwise"])
def test_the_rpa_term_ranks_beta_times_each_anchors_cosines_to_its_own_candidates(tmp_path, form):
    """RPA alone (rpa_weight=1) on one batch is `bidirectional_rpa_loss`, of the configured form, on beta times the
    cosines of each anchor caption to its candidate images and of each anchor image to its candidate texts, embedded
    apart. No test looked at the term itself: scores without beta, candidate images scored against the anchor image
    instead of its caption, and the listwise form whatever `rpa_loss` said all passed."""
    rows = list(synthetic_preference_dataset(4, seed=0))
    model, processor = build_tiny("dual_encoder", seed=0)
    args = make_config(tmp_path, rpa_weight=1.0, rpa_loss=form, beta=4.0)
    trainer = RPATrainer(model, args=args, train_dataset=synthetic_preference_dataset(4), processing_class=processor)
    txt2img, img2txt = encoded_cosines(model, processor, rows)
    expected = expected_rpa(4.0 * txt2img, 4.0 * img2txt, rows, form)
    assert batch_loss(trainer, rows) == pytest.approx(expected, rel=1e-5)


def test_eval_rewards_average_the_directions_an_anchor_ranks_and_are_nan_where_none_does(tmp_path):
    """An anchor's reward is the mean over its directions with a strict judge preference: with every row's candidate
    texts tied, the caption-to-image direction's alone (a plain mean made every anchor NaN, so no reward at all); with
    both tied, no anchor has one and the reward is NaN, not 0."""
    rows = list(synthetic_preference_dataset(4, seed=0))
    texts_tied = datasets.Dataset.from_list([dict(row, img2txt_scores=[0.5] * len(row["img2txt_scores"])) for row in rows],
                                            features=synthetic_preference_dataset(1).features)
    model, processor = build_tiny("dual_encoder", seed=0)
    trainer = RPATrainer(model, args=make_config(tmp_path, beta=4.0), train_dataset=texts_tied,
                         processing_class=processor)
    txt2img, _ = encoded_cosines(model, processor, rows)
    judged = torch.tensor([row["txt2img_scores"] for row in rows])
    accuracies, margins = preference_agreement(4.0 * txt2img, judged, reduction="none")
    metrics = trainer.evaluate(texts_tied)
    assert metrics["eval_rewards/accuracies"] == pytest.approx(accuracies.mean().item())
    assert metrics["eval_rewards/margins"] == pytest.approx(margins.mean().item(), rel=1e-4)
    both_tied = texts_tied.map(lambda row: {"txt2img_scores": [0.5] * len(row["txt2img_scores"])})
    metrics = trainer.evaluate(both_tied)
    assert math.isnan(metrics["eval_rewards/accuracies"]) and math.isnan(metrics["eval_rewards/margins"])


def test_a_training_step_logs_the_rewards_pooled_over_its_batchs_pairs(tmp_path):
    """Training pools each direction's judge-preferred pairs over the batch (DPO's rewards), then averages the two
    directions; row 0's tied image scores give it 3 pairs where the other rows have 6, so a mean of per-anchor values
    would differ."""
    rows = list(synthetic_preference_dataset(4, seed=0))
    rows[0]["txt2img_scores"] = [rows[0]["txt2img_scores"][0], 0.5, 0.5, 0.5]
    dataset = datasets.Dataset.from_list(rows, features=synthetic_preference_dataset(1).features)
    model, processor = build_tiny("dual_encoder", seed=0)
    args = make_config(tmp_path, beta=4.0, per_device_train_batch_size=4, max_steps=1, logging_steps=1)
    trainer = RPATrainer(model, args=args, train_dataset=dataset, processing_class=processor)
    pooled = [preference_agreement(4.0 * cosines, torch.tensor([row[column] for row in rows]))
              for cosines, column in zip(encoded_cosines(model, processor, rows), ("txt2img_scores", "img2txt_scores"))]
    trainer.train()
    logged = trainer.state.log_history[0]
    assert logged["rewards/accuracies"] == pytest.approx(sum(accuracy for accuracy, _ in pooled).item() / 2)
    assert logged["rewards/margins"] == pytest.approx(sum(margin for _, margin in pooled).item() / 2, rel=1e-4)


def test_a_frozen_reference_ranks_beta_times_the_policys_cosines_less_the_initial_models(tmp_path):
    """With reference="frozen" and no PEFT, RPA ranks `beta * (policy cosine - reference cosine)`, the reference a
    frozen copy of the initial model: checked on one batch, the policy moved off its start as training would move it,
    and the reference cosines embedded apart by a second build of the initial model. Training alone did not pin the
    sign: with `reference - policy` the margins still grew."""
    rows = list(synthetic_preference_dataset(4, seed=0))
    model, processor = build_tiny("dual_encoder", seed=0)
    initial, _ = build_tiny("dual_encoder", seed=0)
    args = make_config(tmp_path, rpa_weight=1.0, beta=4.0, reference="frozen")
    trainer = RPATrainer(model, args=args, train_dataset=synthetic_preference_dataset(4), processing_class=processor)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for projection in (model.text_projection.weight, model.visual_projection.weight):
            projection.add_(0.5 * torch.randn(projection.shape, generator=generator))
    policy, reference = encoded_cosines(model, processor, rows), encoded_cosines(initial, processor, rows)
    assert not torch.allclose(policy[0], reference[0], atol=1e-3)  # the log-ratios are not all zero
    expected = expected_rpa(4.0 * (policy[0] - reference[0]), 4.0 * (policy[1] - reference[1]), rows)
    assert batch_loss(trainer, rows) == pytest.approx(expected, rel=1e-5)


def test_a_model_configured_to_return_tuples_trains_as_one_returning_outputs(tmp_path):
    """The trainer reads the forward's outputs by name, so it asks for them whatever the model's `config.return_dict`
    says: a model (and its frozen reference copy) set to return tuples gives the same loss, not an AttributeError."""
    rows = list(synthetic_preference_dataset(4, seed=0))
    losses = []
    for return_dict in (True, False):
        model, processor = build_tiny("dual_encoder", seed=0)
        model.config.return_dict = return_dict
        args = make_config(tmp_path, beta=4.0, reference="frozen")
        trainer = RPATrainer(model, args=args, train_dataset=synthetic_preference_dataset(4), processing_class=processor)
        losses.append(batch_loss(trainer, rows))
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)


def test_expanded_negatives_pool_the_candidates_that_are_no_anchor_of_the_batch(tmp_path):
    """4 rows (the red and green scenes) whose candidates include blue and yellow ones: with expand_negatives the
    InfoNCE is the one computed by hand over the anchors plus those other candidates, each once; without, over the
    anchors alone. The other tests batch 8 rows of the 8 scenes, where every candidate is also an anchor, so the
    expanded pool was the anchors' and expanding on another option's say went unseen."""
    rows = list(synthetic_preference_dataset(4, seed=0))
    captions = [row["caption"] for row in rows]
    other_texts = list(dict.fromkeys(text for row in rows for text in row["candidate_texts"] if text not in captions))
    anchor_images = {row["image"].tobytes() for row in rows}
    other_images = list({image.tobytes(): image for row in rows for image in row["candidate_images"]
                         if image.tobytes() not in anchor_images}.values())
    assert other_texts and other_images
    losses = {}
    for expand in (True, False):
        model, processor = build_tiny("dual_encoder", seed=0)
        args = make_config(tmp_path, rpa_weight=0.0, temperature=0.1, expand_negatives=expand)
        trainer = RPATrainer(model, args=args, train_dataset=synthetic_preference_dataset(4),
                             processing_class=processor)
        losses[expand] = batch_loss(trainer, rows)
    texts, images = model.encode(processor, texts=captions + other_texts,
                                 images=[row["image"] for row in rows] + other_images)

    def info_nce(texts, images):  # anchors first: anchor i's positive is item i of the other modality
        targets = torch.arange(len(rows))
        text_to_image = torch.nn.functional.cross_entropy(10.0 * texts[: len(rows)] @ images.T, targets)
        image_to_text = torch.nn.functional.cross_entropy(10.0 * images[: len(rows)] @ texts.T, targets)
        return ((text_to_image + image_to_text) / 2).item()

    assert losses[True] == pytest.approx(info_nce(texts, images), rel=1e-5)
    assert losses[False] == pytest.approx(info_nce(texts[: len(rows)], images[: len(rows)]), rel=1e-5)
    assert losses[True] > losses[False] + 0.01


def test_only_errors_raised_in_pil_point_to_the_image_scan():
    """A network or disk error while fetching a batch is not an image that does not decode (found by review)."""
    from trainer.schema import naming_undecodable_images

    with pytest.raises(ConnectionError, match="connection reset"):
        with naming_undecodable_images("train"):
            raise ConnectionError("connection reset by peer")
    with pytest.raises(ValueError, match=r"An image of the train dataset does not decode \(UnidentifiedImageError"):
        with naming_undecodable_images("train"):
            Image.open(io.BytesIO(b"not an image"))
    # re-raised from a data loader worker: no PIL frame, PIL's traceback in the message
    from torch._utils import ExceptionWrapper

    try:
        Image.open(io.BytesIO(b"not an image"))
    except OSError:
        in_worker = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(ValueError, match=r"An image of the eval dataset does not decode \(UnidentifiedImageError"):
        with naming_undecodable_images("eval"):
            in_worker.reraise()


def test_rows_without_a_strict_preference_are_counted_and_reported(tmp_path, caplog):
    """rpa_weight=1.0 on rows whose candidates all share one score trained with a zero RPA loss and no other sign."""
    from transformers.utils import logging as transformers_logging

    from trainer.schema import rows_without_preference

    dataset = synthetic_preference_dataset(4)
    assert rows_without_preference(dataset) == {"text_to_image": 0, "image_to_text": 0, "both": 0}
    tied = dataset.map(lambda row: {"txt2img_scores": [0.5] * len(row["txt2img_scores"]),
                                    "img2txt_scores": [0.5] * len(row["img2txt_scores"])})
    assert rows_without_preference(tied) == {"text_to_image": 4, "image_to_text": 4, "both": 4}
    # One candidate text per row (a captioner whose captions were all dropped): the other direction still ranks
    one_direction = dataset.map(lambda row: {"candidate_texts": row["candidate_texts"][:1],
                                             "img2txt_scores": row["img2txt_scores"][:1]})
    assert rows_without_preference(one_direction) == {"text_to_image": 0, "image_to_text": 4, "both": 0}
    model, processor = build_tiny("dual_encoder")
    transformers_logging.enable_propagation()
    try:
        with caplog.at_level("WARNING"):
            RPATrainer(model, args=make_config(tmp_path), train_dataset=tied, processing_class=processor)
            RPATrainer(model, args=make_config(tmp_path, rpa_weight=0.0), train_dataset=tied, processing_class=processor)
            RPATrainer(model, args=make_config(tmp_path), train_dataset=one_direction, processing_class=processor)
    finally:
        transformers_logging.disable_propagation()
    warnings = [record.getMessage() for record in caplog.records if "strict preference" in record.getMessage()]
    assert warnings == [
        "4 of 4 train rows have no strict preference (one candidate, equal judge scores, or scores that differ only "
        "between repeats of one item): RPA learns nothing from them; that is every row: set rpa_weight=0 to train with "
        "InfoNCE only.",
        # the RPA loss averages the two directions: one that never ranks halves it, silently before
        "No train row has a strict preference among its candidate texts (one candidate, equal judge scores, or scores "
        "that differ only between repeats of one item): the image to text half of the RPA loss is zero throughout, so "
        "RPA trains with half of rpa_weight=0.5.",
    ]


def test_rows_without_a_strict_preference_among_others_are_reported_without_the_every_row_hint(caplog):
    from transformers.utils import logging as transformers_logging

    from trainer.schema import warn_about_rows_without_preference

    half_tied = synthetic_preference_dataset(4).map(
        lambda row, index: {column: [0.5] * len(row[column]) if index < 2 else row[column]
                            for column in ("txt2img_scores", "img2txt_scores")}, with_indices=True)
    transformers_logging.enable_propagation()
    try:
        with caplog.at_level("WARNING"):
            warn_about_rows_without_preference(half_tied, rpa_weight=0.5)
    finally:
        transformers_logging.disable_propagation()
    assert [record.getMessage() for record in caplog.records] == [
        "2 of 4 train rows have no strict preference (one candidate, equal judge scores, or scores that differ only "
        "between repeats of one item): RPA learns nothing from them."]


def test_rows_are_read_once_per_dataset_and_again_for_a_transformed_one_whatever_its_fingerprint(monkeypatch):
    """`maple train` validates every row before the model loads and `RPATrainer` did it all again: a second full read of
    the dataset. A transformed dataset is a new object, read again, even where `datasets` gives it the fingerprint of
    the one it came from (a review found that caching by fingerprint let a broken dataset through)."""
    import trainer.schema
    from trainer.schema import validate_preference_dataset

    checked = []
    check_rows = trainer.schema.check_rows
    monkeypatch.setattr(trainer.schema, "check_rows", lambda ids, *args, **kwargs: checked.extend(ids) or
                        check_rows(ids, *args, **kwargs))
    dataset = synthetic_preference_dataset(4, seed=7)
    validate_preference_dataset(dataset, "train")
    validate_preference_dataset(dataset, "eval")
    assert len(checked) == 4
    broken = dataset.map(lambda row, index: {"caption": "" if index == 2 else row["caption"]}, with_indices=True,
                         new_fingerprint=dataset._fingerprint)  # a caller may name it
    with pytest.raises(ValueError, match="column 'caption' is an empty string"):
        validate_preference_dataset(broken, "train")
    with pytest.raises(ValueError, match="column 'caption' is an empty string"):  # a failed dataset is not remembered
        validate_preference_dataset(broken, "train")


def test_a_batch_without_a_strict_preference_leaves_the_windows_rewards_defined(tmp_path):
    """Its rewards are NaN and were averaged into the logging window, so one such batch logged NaN for the window."""
    rows = synthetic_preference_dataset(4, seed=3).to_list()
    rows[0]["txt2img_scores"] = [1.0] * len(rows[0]["txt2img_scores"])  # a judge saturated on every candidate
    rows[0]["img2txt_scores"] = [1.0] * len(rows[0]["img2txt_scores"])
    dataset = datasets.Dataset.from_list(rows, features=synthetic_preference_dataset(1).features)
    model, processor = build_tiny("dual_encoder", seed=0)
    args = make_config(tmp_path, per_device_train_batch_size=1, max_steps=4, logging_steps=4)
    trainer = RPATrainer(model, args=args, train_dataset=dataset, processing_class=processor)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "rewards/accuracies" in entry]
    assert len(logged) == 1 and all(math.isfinite(logged[0][key]) for key in ("rewards/accuracies", "rewards/margins"))


def test_the_model_card_describes_the_active_adapter_whatever_its_name(tmp_path):
    """The card read the adapter named "default": a model adapted under another name was called fully fine-tuned."""
    model, processor = build_tiny("dual_encoder", seed=0)
    model = get_peft_model(model, maple_lora_config(model, r=4, lora_alpha=8), adapter_name="paper")
    trainer = RPATrainer(model, args=make_config(tmp_path, max_steps=1), processing_class=processor,
                         train_dataset=synthetic_preference_dataset(8, seed=0))
    trainer.create_model_card()
    assert "LoRA (rank 4, alpha 8)" in (tmp_path / "run" / "README.md").read_text()


def test_the_loss_trained_is_lambda_rpa_plus_one_minus_lambda_infonce(tmp_path):
    """The evaluation's loss, RPA and InfoNCE are means over the same anchors, so the objective's mix holds for them."""
    metrics = make_trainer(tmp_path, rpa_weight=0.3).evaluate()
    mixed = 0.3 * metrics["eval_loss/rpa"] + 0.7 * metrics["eval_loss/contrastive"]
    assert metrics["eval_loss"] == pytest.approx(mixed, rel=1e-5)


@pytest.mark.parametrize("format_type", ["torch", "numpy"])
def test_a_dataset_formatted_for_torch_or_numpy_trains_as_it_is(tmp_path, format_type):
    """The collator reads Python objects: a formatted dataset passed validation, then failed in the collator
    ("Boolean value of Tensor with more than one value is ambiguous")."""
    model, processor = build_tiny("dual_encoder", seed=0)
    formatted = synthetic_preference_dataset(8, seed=0).with_format(format_type)
    trainer = RPATrainer(model, args=make_config(tmp_path, max_steps=1), processing_class=processor,
                         train_dataset=formatted)
    trainer.train()
    assert formatted.format["type"] == format_type, "the caller's dataset keeps its format"


def test_a_dataset_with_a_transform_is_refused_not_trained_on_without_it(tmp_path):
    """Its "custom" format was reset like a torch one: the transform was dropped and the untransformed rows trained
    on, silently (found by a review)."""
    model, processor = build_tiny("dual_encoder", seed=0)
    transformed = synthetic_preference_dataset(8, seed=0).with_transform(lambda batch: batch)
    with pytest.raises(ValueError, match=r"^train dataset: a transform set with `with_transform` or `set_transform` is not "
                                         r"applied by RPATrainer; apply it with `dataset.map\(...\)` first$"):
        RPATrainer(model, args=make_config(tmp_path, max_steps=1), processing_class=processor, train_dataset=transformed)


def test_a_reference_model_that_is_the_model_or_would_be_ignored_is_refused(tmp_path):
    """The model as its own reference would train its reference; a reference with reference="none" would do nothing."""
    model, processor = build_tiny("dual_encoder", seed=0)
    reference, _ = build_tiny("dual_encoder", seed=0)
    dataset = synthetic_preference_dataset(4)
    with pytest.raises(ValueError, match="`model` and `ref_model` must be different objects"):
        RPATrainer(model, ref_model=model, args=make_config(tmp_path, reference="frozen"), train_dataset=dataset,
                   processing_class=processor)
    with pytest.raises(ValueError, match="`reference='none'` would ignore it; set reference='frozen'"):
        RPATrainer(model, ref_model=reference, args=make_config(tmp_path), train_dataset=dataset,
                   processing_class=processor)


def test_batches_dispatched_by_rows_are_refused(tmp_path):
    """accelerate's dispatching slices every tensor of a batch by rows; ours hold more texts and images than rows."""
    model, processor = build_tiny("dual_encoder", seed=0)
    args = make_config(tmp_path, accelerator_config={"dispatch_batches": True})
    with pytest.raises(ValueError, match="cannot be dispatched by rows"):
        RPATrainer(model, args=args, train_dataset=synthetic_preference_dataset(4), processing_class=processor)


def test_uneven_batches_are_allowed_in_one_process(tmp_path):
    """even_batches only matters where a process could wait for another's batch in a collective."""
    model, processor = build_tiny("dual_encoder", seed=0)
    args = make_config(tmp_path, accelerator_config={"even_batches": False})
    RPATrainer(model, args=args, train_dataset=synthetic_preference_dataset(4), processing_class=processor)


def test_evaluation_keeps_every_row_whatever_dataloader_drop_last_and_even_batches_say(tmp_path):
    """`dataloader_drop_last`, which the even_batches error advises, reached the evaluation loaders too: of 10 rows in
    batches of 4 the last 2 were dropped, and the metrics were of 8 anchors. Evaluation loaders keep every row, with
    even batches (without them, a process could wait forever in the evaluation's gathers)."""
    model, processor = build_tiny("dual_encoder", seed=0)
    dataset = synthetic_preference_dataset(10, seed=1)
    evaluations = []
    for settings in ({}, {"dataloader_drop_last": True, "accelerator_config": {"even_batches": False}}):
        trainer = RPATrainer(model, args=make_config(tmp_path, per_device_eval_batch_size=4, **settings),
                             train_dataset=synthetic_preference_dataset(8), processing_class=processor)
        evaluations.append(trainer.evaluate(dataset))
        batches = list(trainer.get_eval_dataloader(dataset))
        assert [len(batch["anchor_text_index"]) for batch in batches] == [4, 4, 2]
        assert trainer.args.dataloader_drop_last == settings.get("dataloader_drop_last", False)  # training's, as set
    kept, dropping = evaluations
    for key in ("eval_loss", "eval_loss/rpa", "eval_loss/contrastive", "eval_rewards/accuracies",
                "eval_rewards/margins", "eval_recall@1/text_to_image", "eval_recall@1/image_to_text"):
        assert dropping[key] == pytest.approx(kept[key], abs=1e-6), key


def test_a_tokenizer_passed_as_processing_class_is_refused_up_front(tmp_path):
    """It failed at the first step, deep in the text tower ("'list' object has no attribute 'size'")."""
    model, processor = build_tiny("dual_encoder", seed=0)
    with pytest.raises(TypeError, match="`processing_class` must be the model's MapleProcessor .* got "):
        RPATrainer(model, args=make_config(tmp_path), processing_class=processor.tokenizer,
                   train_dataset=synthetic_preference_dataset(8, seed=0))


def test_the_package_lists_and_resolves_its_public_names():
    """`trainer` resolves most of its names on first use (PEP 562): `dir()` lists them before that, and each resolves."""
    import trainer
    from trainer.schema import UndecodableImageError

    assert dir(trainer) == sorted(trainer.__all__)
    assert all(getattr(trainer, name) is not None for name in trainer.__all__)
    assert trainer.UndecodableImageError is UndecodableImageError and set(trainer.RPA_LOSSES) == {"listwise", "pairwise"}


def test_one_process_seeing_several_gpus_is_refused_before_the_output_folder_is_made(tmp_path):
    """`Trainer` wraps the model in `torch.nn.DataParallel` where one process sees several GPUs (`n_gpu > 1`, a plain
    `python` launch), which scatters a Qwen-VL batch's image patches apart from their images and gathers beta into a
    vector; RPATrainer, which does not run `DPOTrainer.__init__` (where TRL refuses it), took it. `n_gpu` is set as
    `TrainingArguments._setup_devices` sets it on a machine with two GPUs (this one has none), after which `Trainer`
    reads it."""
    model, processor = build_tiny("mllm", seed=0)
    args = make_config(tmp_path)
    assert args.n_gpu == 0  # devices set up, as on this machine
    args._n_gpu = 2  # torch.cuda.device_count() on a two-GPU machine
    message = (r"RPATrainer does not support torch.nn.DataParallel, .* \(2 here\).*`accelerate launch` or `torchrun`, "
               r"or make one GPU visible with CUDA_VISIBLE_DEVICES")
    with pytest.raises(ValueError, match=message):
        RPATrainer(model, args=args, train_dataset=synthetic_preference_dataset(8), processing_class=processor)
    assert not (tmp_path / "run").exists()
