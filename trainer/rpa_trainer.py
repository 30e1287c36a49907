"""`RPATrainer`: TRL's `DPOTrainer` for MAPLE embedders (arXiv 2506.06970).

The batches come from `DataCollatorForEmbeddingPreference`, the maths from `trainer.losses`, the run folder's files
(recipe, stream positions, PEFT trainable state) from `trainer.checkpoints`, how a stream is dealt to the processes and
which evaluation rows accelerate repeated from `trainer.batch_dealing`, and logging, checkpointing, PEFT, accelerate
and the Hub from `DPOTrainer` / `Trainer`. The trainer wires them together, and adapts `Trainer` where an embedder
needs it: evaluation counted once per row, resumption of a stream mid-pass, PEFT checkpoints saved merged, and what a
Hub push copies into or clears from `output_dir`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import operator
import os
import shutil
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
from datasets import Dataset, IterableDataset
from peft import PeftConfig, PeftModel
from torch import Tensor, nn
from transformers import EvalPrediction, ProcessorMixin, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, EvalLoopOutput, HubStrategy
from transformers.utils import logging
from trl import DPOTrainer
from trl.trainer.base_trainer import _BaseTrainer

from evaluation.metric_names import QUADRUPLE_SCORES
from evaluation.protocols import Quadruples, check_quadruples
from evaluation.retrieval import NonFiniteEmbeddingsError, anchor_recall_at_1
from maple import PAPER_CITATION
from maple.files import atomic_write_json
from modeling_maple.lora import check_mergeable, get_maple_peft_model, save_merged
from modeling_maple.loading import load_maple, load_maple_model

from .checkpoints import (
    PEFT_TRAINABLE_STATE,
    RECIPE_FILE,
    TRAINER_STATE_NAME,
    check_recipe,
    data_recipe,
    image_recipe,
    last_complete_checkpoint,
    load_trainable_state,
    lora_recipe,
    model_recipe,
    resumed_stream_position,
    run_checkpoints,
    save_stream_position,
    save_trainable_state,
    training_recipe,
)
from .batch_dealing import dealt_by_batch, numbered_stream, repeated_eval_rows
from .collator import (
    PREFERENCE_KEYS,
    ROW_POSITION,
    DataCollatorForEmbeddingPreference,
    select_rows,
    with_images_left_encoded,
)
from .losses import bidirectional_rpa_loss, contrastive_loss, maple_loss, preference_agreement
from .rpa_config import RPAConfig, from_pretrained_kwargs
from .schema import (
    PREFERENCE_COLUMNS,
    SCORED_CANDIDATES,
    naming_undecodable_images,
    validate_preference_dataset,
    warn_about_rows_without_preference,
)

logger = logging.get_logger(__name__)

# The model's log-stored scales: InfoNCE's inverse temperature and RPA's beta
LOG_SCALES = ("logit_scale", "preference_logit_scale")
# What `Trainer.save_metrics("eval", ...)` writes into output_dir: the final evaluation of the model saved there
RESULTS_FILES = ("eval_results.json", "all_results.json")
# The values of a training step that `RPATrainer._log_train_step_and_check_finite` gathers from every process, each
# with how the processes' values combine: a loss is the mean of the processes' means (their batches may differ in
# size); a reward the mean of those that are not NaN (a process's batch may hold no strict judge preference); the
# scales are the same on every process; the loss is finite only if it is on every process.
TRAIN_STEP_VALUES: dict[str, Callable[[Tensor], Tensor]] = {
    "loss/rpa": Tensor.mean,
    "loss/contrastive": Tensor.mean,
    "rewards/accuracies": Tensor.nanmean,
    "rewards/margins": Tensor.nanmean,
    "beta": operator.itemgetter(0),
    "inverse_temperature": operator.itemgetter(0),
    "loss_is_finite": Tensor.amin,
}


class RPATrainer(DPOTrainer):
    """Trains a `MapleModel` with MAPLE's Relative Preference Alignment plus InfoNCE (see `RPAConfig`).

    Each step makes one forward pass through the (possibly DDP-wrapped) model that embeds every distinct anchor and
    sampled candidate of the batch, then mixes ``rpa_weight`` times the RPA loss (text -> image and image -> text,
    averaged) with ``1 - rpa_weight`` times the symmetric InfoNCE over anchors and expanded negatives. RPA's beta is
    the model's ``preference_logit_scale``, the InfoNCE inverse temperature its ``logit_scale`` (both log-stored).

    Logged, in training and evaluation (there under the evaluation's ``metric_key_prefix``): ``loss/rpa``,
    ``loss/contrastive``, ``rewards/accuracies`` (share of judge-preferred pairs the model scores higher),
    ``rewards/margins``, ``beta``, ``temperature``. Evaluation averages the losses and rewards over the anchors of its
    set, each once (see `_log_eval_batch`), and adds ``recall@1/text_to_image`` and ``recall@1/image_to_text`` (0-100,
    `evaluation.retrieval.anchor_recall_at_1`) over the distinct anchor captions and images of the whole evaluation set,
    every caption of an image counting as relevant to it.

    `DPOTrainer.__init__` prepares a causal language model (tokenised prompt/completion pairs, a fused LM head, a
    reference model reloaded as a causal LM), none of which applies to an embedder, so this class sets up its own
    state and starts `Trainer` directly; the rest of `DPOTrainer` (metric logging, evaluation over several datasets,
    the loss and prediction hooks overridden below) is reused as is.

    Args:
        model: a `MapleModel`, or the path / Hub id of a MAPLE checkpoint or of a backbone to build one from (an MLLM
            or CLIP/SigLIP checkpoint), loaded by `modeling_maple.load_maple` with `args.model_init_kwargs` (a Hub repo
            with `args.hub_token`, unless they name a token).
        ref_model: the frozen reference embedder for `reference="frozen"`; by default the PEFT base model (adapters
            disabled; also when `model` is a `PeftModel` whose base weights are all frozen) or a frozen copy of
            `model`.
        args: an `RPAConfig`.
        data_collator: by default a `DataCollatorForEmbeddingPreference` over `processing_class` with `args`'
            candidate counts (one passed in must have them too), returning the judged-positive ids under
            `args.exclude_judged_positives` (likewise). Evaluation uses a
            copy of a `DataCollatorForEmbeddingPreference` fixed at epoch 0 (the same candidates at every
            evaluation), named "eval" in its errors; any other collator serves both.
        train_dataset, eval_dataset: preference datasets with the columns of `trainer.schema`.
        processing_class: the `MapleProcessor`; loaded with the model when `model` is a string.
        compute_metrics: not supported (a `ValueError`): an embedder's evaluation has no predictions and labels to pass
            it. Evaluation reports the losses, reward accuracies and margins, retrieval recall@1 and the
            `eval_quadruples` scores listed above.
        callbacks, optimizers: as in `transformers.Trainer`.
        peft_config: wraps the model with PEFT (e.g. `modeling_maple.lora`'s LoRA set-up of the paper). For a model
            loaded here at a Hub revision (`args.model_init_kwargs`), the adapter records it as its base's, where
            `peft.AutoPeftModel` and `maple eval` load the base; for a model passed in, set `peft_config.revision`.
        eval_quadruples: fine-grained evaluation sets, `{name: [(image_0, image_1, text_0, text_1), ...]}` with
            `text_i` describing `image_i` (Winoground style); every evaluation then also logs
            `eval_<name>/text_score`, `/image_score` and `/group_score` (0-100, `evaluation.protocols`). They are
            scored beside an evaluation dataset, which an evaluation needs (as in `Trainer`: `eval_dataset`, or the one
            passed to `evaluate`); to score quadruples alone, call `evaluation.evaluate_quadruples` on the model.
            A set it cannot read (a table, an empty set, a first quadruple that is not four fields or whose texts
            are not strings with words) is refused here (`evaluation.protocols.check_quadruples`), not at the first
            evaluation; only a set's first quadruple is read here (a lazy set may decode images to give one), the
            others when it is scored.
    """

    _tag_names = ["trl", "maple", "rpa"]
    _name = "RPA"
    _paper = {
        "title": "Guiding Cross-Modal Representations with MLLM Priors via Preference Alignment",
        "id": "2506.06970",
        "citation": PAPER_CITATION,
    }

    def __init__(
        self,
        model: str | nn.Module,
        ref_model: nn.Module | None = None,
        args: RPAConfig | None = None,
        data_collator: Callable | None = None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset: Dataset | IterableDataset | dict[str, Dataset | IterableDataset] | None = None,
        processing_class: ProcessorMixin | None = None,
        compute_metrics: Callable[[EvalPrediction], dict] | None = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple[torch.optim.Optimizer | None, torch.optim.lr_scheduler.LambdaLR | None] = (None, None),
        peft_config: PeftConfig | None = None,
        eval_quadruples: dict[str, Quadruples] | None = None,
    ):
        args = _checked_args(args, model, train_dataset, compute_metrics)
        if eval_quadruples is not None:
            _check_eval_quadruples(eval_quadruples)
        # the Hub revision of a model loaded here, which an adapter records as its base's
        base_revision = (args.model_init_kwargs or {}).get("revision") if isinstance(model, str) else None
        model, processing_class = _model_and_processor(model, processing_class, args)
        if ref_model is model:
            raise ValueError("`model` and `ref_model` must be different objects.")
        if ref_model is not None and args.reference == "none":
            raise ValueError("A `ref_model` was given but `reference='none'` would ignore it; set reference='frozen'.")
        model, ref_model = self._policy_and_reference(model, ref_model, args, peft_config, base_revision)
        _set_distributed_batching(args)

        # The state `DPOTrainer`'s inherited methods read (see the class docstring)
        self._is_vision_dataset = False  # our collator builds the image inputs; evaluate() then validates datasets
        self.precompute_ref_logps = False
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        self.maybe_activation_offload_context = contextlib.nullcontext()
        self._eval_anchors: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
        self.eval_quadruples = eval_quadruples or {}
        # what every model card of this run says beside the run itself (see `create_model_card`)
        self.model_card_kwargs: dict[str, Any] = {}
        self._evaluating = False  # inside `evaluate` (see there)
        self._quadruples_prefix: str | None = None  # set by `evaluate` until its first `evaluation_loop` scores them

        # Our collator decodes only the images it uses (`with_images_left_encoded`); another reads what `datasets` gives.
        self._leave_images_encoded = data_collator is None or isinstance(data_collator, DataCollatorForEmbeddingPreference)
        train_dataset = self._prepare_dataset(train_dataset, processing_class, args, "train")
        if args.rpa_weight > 0 and isinstance(train_dataset, Dataset):
            warn_about_rows_without_preference(train_dataset, args.rpa_weight, args.num_text_candidates,
                                               args.num_image_candidates)
        if isinstance(eval_dataset, dict):
            eval_dataset = {
                name: self._prepare_dataset(dataset, processing_class, args, name)
                for name, dataset in eval_dataset.items()
            }
        elif eval_dataset is not None:
            eval_dataset = self._prepare_dataset(eval_dataset, processing_class, args, "eval")
        if args.max_scale is not None:
            callbacks = [*(callbacks or []), ScaleBound(args.max_scale)]
        if isinstance(data_collator, DataCollatorForEmbeddingPreference):
            _check_collator(data_collator, args)
        if data_collator is None:
            data_collator = DataCollatorForEmbeddingPreference(
                processor=processing_class,
                num_image_candidates=args.num_image_candidates,
                num_text_candidates=args.num_text_candidates,
                seed=args.seed,
                return_judged_positive_ids=args.exclude_judged_positives,
            )
        _BaseTrainer.__init__(
            self,
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
            optimizers=optimizers,
        )
        self.ref_model = None if ref_model is None else self.accelerator.prepare_model(ref_model, evaluation_mode=True)
        # Evaluation draws its candidates from a collator of its own, pinned to epoch 0: the training epoch would
        # otherwise change the evaluated candidates (and so the metrics) from one evaluation to the next.
        self.eval_data_collator = self.data_collator
        if isinstance(self.data_collator, DataCollatorForEmbeddingPreference):
            self.eval_data_collator = dataclasses.replace(self.data_collator, dataset_name="eval", epoch=0)
        self._last_grad_norm: Tensor | float | None = None
        # the training loop's pass and the global step it began at, had it not been resumed (see `_save_checkpoint`)
        self._pass_start: tuple[int, int] | None = None

    # ------------------------------------------------------------------------------------------ set-up
    @classmethod
    def _policy_and_reference(
        cls,
        model: nn.Module,
        ref_model: nn.Module | None,
        args: RPAConfig,
        peft_config: PeftConfig | None,
        base_revision: str | None,
    ) -> tuple[nn.Module, nn.Module | None]:
        """The model to train (scales set, dropout off, wrapped with `peft_config`, recording `base_revision` as its
        base's revision) and the frozen reference of `reference="frozen"`: `ref_model`, else a copy of the initial
        model. A PEFT model (wrapped here or by the user) is its own reference with the adapters disabled, as in TRL
        (None here), unless the user's leaves base weights trainable: those would move the reference too."""
        cls._set_scales(model, args)
        if args.reference == "frozen" and ref_model is None and peft_config is None:
            if not isinstance(model, PeftModel) or _trainable_base_parameters(model):
                ref_model = copy.deepcopy(model)
        if args.disable_dropout:  # LoRA's own `lora_dropout` is the user's to set
            _disable_dropout_outside_adapters(model)
        if peft_config is not None:
            # backbone modules PEFT wraps by name stay frozen
            model = get_maple_peft_model(model, peft_config, revision=base_revision)
        if isinstance(model, PeftModel):
            check_mergeable(model)  # before training: its checkpoints are merged (`_save_weights`)
            cls._set_scales(model, args)  # PEFT froze everything but the adapters; the scales stay learnable
        if ref_model is not None:
            ref_model.requires_grad_(False).eval()
        return model, ref_model

    def _validate_args(self) -> None:
        """`Trainer`'s checks, and a ValueError where it would wrap the model in `torch.nn.DataParallel`: one process
        that sees several GPUs (`args.n_gpu > 1`: a plain `python` launch on a multi-GPU machine). DataParallel splits
        every input tensor along its first dimension, so a Qwen-VL batch's image patches part from their images'
        `image_grid_thw`, and gathers the 0-dim beta and inverse temperature of its replicas into vectors.
        `DPOTrainer.__init__`, which `RPATrainer` does not run, refuses it too. `Trainer.__init__` calls this once it has
        set `n_gpu` to 1 for a model split across GPUs by `device_map`, and before it creates a Hub repo or the output
        folder."""
        super()._validate_args()
        if self.args.n_gpu > 1:
            raise ValueError(
                f"{type(self).__name__} does not support torch.nn.DataParallel, which Trainer uses when one process "
                f"sees several GPUs ({self.args.n_gpu} here): it would split a batch's image patches apart from their "
                "images and gather beta and the temperature into vectors. Launch one process per GPU with `accelerate "
                "launch` or `torchrun`, or make one GPU visible with CUDA_VISIBLE_DEVICES."
            )

    @staticmethod
    def _set_scales(model: nn.Module, args: RPAConfig) -> None:
        """Initial values (when configured) and trainability of beta and the InfoNCE temperature. A model's own
        scale above `max_scale` (a checkpoint trained without the bound) starts at the bound, frozen or not."""
        with torch.no_grad():
            if args.beta is not None:
                model.preference_logit_scale.fill_(math.log(args.beta))
            if args.temperature is not None:
                model.logit_scale.fill_(math.log(1.0 / args.temperature))
            if args.max_scale is not None:
                bound_scales(model, args.max_scale, learnable_only=False)
        model.preference_logit_scale.requires_grad_(args.learn_beta)
        model.logit_scale.requires_grad_(args.learn_temperature)

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        # Weight decay would pull the log-scales towards 0, i.e. beta and 1/temperature towards 1 (open_clip leaves
        # its logit_scale out of weight decay too).
        names = super().get_decay_parameter_names(model)
        return [name for name in names if name.rsplit(".", 1)[-1] not in LOG_SCALES]

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        # Nothing to tokenise ahead: the collator processes images and texts on the fly. Validate the schema instead.
        validate_preference_dataset(dataset, dataset_name)
        # A transform (`with_transform`, `set_transform`) would be dropped with the format below, silently: the rows it
        # makes are neither checked nor what the loader reads with its images left encoded
        if _format_type(dataset) == "custom":
            raise ValueError(
                f"{dataset_name} dataset: a transform set with `with_transform` or `set_transform` is not applied by "
                "RPATrainer; apply it with `dataset.map(...)` first"
            )
        # The collator reads rows as Python objects (PIL images, lists); a torch or numpy format is only a view.
        return dataset.with_format(None) if _format_type(dataset) is not None else dataset

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = [*PREFERENCE_COLUMNS, ROW_POSITION]

    def _get_dataloader(self, dataset, description, batch_size, sampler_fn=None, is_training=False, dataloader_key=None):
        # `datasets` would decode every candidate image of every row; our collator decodes those it draws. Only the
        # loader's copy: `train_dataset` and `eval_dataset` stay as given.
        if self._leave_images_encoded:
            dataset = with_images_left_encoded(dataset)
        if is_training:
            dataset = dealt_by_batch(dataset, self.accelerator.num_processes)
            return super()._get_dataloader(dataset, description, batch_size, sampler_fn, is_training, dataloader_key)
        # A stream is numbered to tell the rows accelerate repeats (`repeated_eval_rows`).
        if isinstance(dataset, IterableDataset):
            dataset = dealt_by_batch(numbered_stream(dataset), self.accelerator.num_processes)
        eval_collator = self.eval_data_collator
        if isinstance(eval_collator, DataCollatorForEmbeddingPreference) and dataloader_key not in (None, "eval"):
            eval_collator = dataclasses.replace(eval_collator, dataset_name=dataloader_key)  # errors name the split
        # Evaluation counts every row of its set once: `dataloader_drop_last` (training's setting, which transformers
        # applies to every loader) would drop a short last batch, and without `even_batches` one process could get a
        # batch more than another and wait forever in the evaluation's gathers. So its last batch is evened out across
        # processes with repeated rows, which `repeated_eval_rows` leaves out.
        train_collator, self.data_collator = self.data_collator, eval_collator
        drop_last, self.args.dataloader_drop_last = self.args.dataloader_drop_last, False
        even_batches, self.accelerator.even_batches = self.accelerator.even_batches, True
        try:
            return super()._get_dataloader(dataset, description, batch_size, sampler_fn, is_training, dataloader_key)
        finally:
            self.data_collator = train_collator
            self.args.dataloader_drop_last = drop_last
            self.accelerator.even_batches = even_batches

    def _init_training_state(self, max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial):
        # `Trainer` reloads the logging, evaluation and saving intervals from a resumed checkpoint's state, over
        # this run's: they are not part of the recipe (`RECIPE_FIELDS`), so a resume with `save_steps` made smaller
        # to guard against another crash must save that often.
        epochs_trained, batches_trained = super()._init_training_state(
            max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial
        )
        self.state.compute_steps(self.args, max_steps)
        if resume_from_checkpoint is not None and isinstance(self.train_dataset, IterableDataset):
            epochs_trained, batches_trained = self._resumed_stream_position(resume_from_checkpoint)
        return epochs_trained, batches_trained

    def _resumed_stream_position(self, checkpoint: str) -> tuple[int, int]:
        """The pass over the streamed training set a resumed run goes on in, and the batches of it to skip, as
        `checkpoint` recorded them (`_save_checkpoint`, `checkpoints.resumed_stream_position`). `Trainer` counts a
        stream's epoch as `max_steps` steps: it would skip `global_step` steps' batches of the first pass, and past
        that pass's end the run went on at the next pass's first batch, not where it stopped."""
        pass_index, batches = resumed_stream_position(
            checkpoint, self.state.global_step, self.state.epoch, self.args.gradient_accumulation_steps
        )
        return pass_index, 0 if self.args.ignore_data_skip else batches

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        with naming_undecodable_images("train"):
            return super().get_batch_samples(epoch_iterator, num_batches, device)

    def _run_epoch(
        self, *, epoch: int, epochs_trained: int, steps_trained_in_current_epoch: int, resume_from_checkpoint, **kwargs
    ) -> None:
        # The collator's candidate draws are seeded by the epoch. This is the loop's own pass index, also when resuming
        # mid-epoch (for a stream, the pass `_resumed_stream_position` found); `state.epoch` is not: for a streamed
        # dataset `Trainer` counts an epoch as `max_steps` steps, so `int(state.epoch)` stays behind the passes over
        # the stream and repeats their draws.
        if hasattr(self.data_collator, "set_epoch"):
            self.data_collator.set_epoch(epoch)
        resumed = epoch == epochs_trained and resume_from_checkpoint is not None
        skipped_steps = steps_trained_in_current_epoch // self.args.gradient_accumulation_steps if resumed else 0
        self._pass_start = (epoch, self.state.global_step - skipped_steps)
        super()._run_epoch(
            epoch=epoch, epochs_trained=epochs_trained, steps_trained_in_current_epoch=steps_trained_in_current_epoch,
            resume_from_checkpoint=resume_from_checkpoint, **kwargs,
        )

    # ------------------------------------------------------------------------------------------ loss
    def _reference_similarities(self, inputs) -> tuple[Tensor, Tensor]:
        """The frozen reference embedder's cosine similarities ``(txt2img, img2txt)`` between the batch's anchors and
        their candidates, without gradient (the embedder's counterpart of DPO's reference log-probabilities)."""
        if self.ref_model is not None:
            reference = self.ref_model
            adapters_off = contextlib.nullcontext()
        else:  # PEFT: the base model is the reference
            reference = self.accelerator.unwrap_model(self.model)
            adapters_off = reference.disable_adapter()
        # Each module's own flag, restored as it was: under accelerate's regional compilation the PEFT reference is the
        # trainer's model, whose top-level flag stays off while the compiled copy it shares modules with trains;
        # `reference.train(reference.training)` switched those to eval before backward, and gradient checkpointing's
        # recomputation then ran without the dropout of the forward (torch's CheckpointError).
        module_flags = [(module, module.training) for module in reference.modules()]
        reference.eval()  # the policy may train with dropout; the reference must not draw any
        try:
            with torch.no_grad(), adapters_off:
                outputs = reference(**_model_inputs(inputs), return_dict=True)
        finally:
            for module, training in module_flags:
                module.training = training
        return _candidate_similarities(outputs.text_embeds, outputs.image_embeds, inputs)

    def _compute_loss(self, model, inputs, return_outputs):
        # The flag of the model run, not `self.model`'s: accelerate's regional compilation trains a copy of it, whose
        # flag `Trainer.training_step` sets while `self.model`'s stays as it was (off, from `from_pretrained`).
        mode = "train" if model.training else "eval"
        # the step's only forward through the wrapped model; its outputs are read by name, whatever the model's
        # `config.return_dict` says
        outputs = model(**_model_inputs(inputs), return_dict=True)
        # the scales come out of the forward, so DDP sees them used inside it
        beta, inverse_temperature = outputs.beta, outputs.inverse_temperature

        similarities = _candidate_similarities(outputs.text_embeds, outputs.image_embeds, inputs)
        if self.args.reference == "frozen":
            reference = self._reference_similarities(inputs)
            similarities = tuple(policy - frozen for policy, frozen in zip(similarities, reference))
        # Evaluation scores and counts each row of its set once: the rows accelerate repeats to even out the last batch
        # across processes are embedded (every process runs the same collectives) but left out from here on.
        # (evaluation loaders have even batches, see `_get_dataloader`, which numbers a stream's rows)
        repeated = repeated_eval_rows(self.accelerator, inputs) if mode == "eval" else None
        rankings = [  # (scores, judge scores, mask) of the txt2img and img2txt directions
            (beta * similarities[0], inputs["txt2img_scores"], inputs["candidate_image_mask"]),
            (beta * similarities[1], inputs["img2txt_scores"], inputs["candidate_text_mask"]),
        ]
        # per anchor, so that evaluation can average over the anchors of its whole set (see `_log_eval_batch`)
        rpa = bidirectional_rpa_loss(*rankings, rpa_loss=self.args.rpa_loss, reduction="none")
        contrastive = self._contrastive_loss_leaving_out(
            outputs.text_embeds, outputs.image_embeds, inputs, inverse_temperature, left_out=repeated
        )
        anchor_losses = maple_loss(rpa, contrastive, self.args.rpa_weight)
        # (NaN for a process holding only repeated rows; `evaluation_loop` reports its own eval_loss)
        loss = anchor_losses.mean() if repeated is None else anchor_losses[~repeated].mean()

        # pooled over the batch's pairs in training; evaluation needs each anchor's (see `_log_eval_batch`)
        agreement = _judge_agreement(rankings, reduction="none" if mode == "eval" else "mean")
        if mode == "eval":
            counted = ~self.accelerator.gather(repeated)
            self._log_eval_batch(anchor_losses, rpa, contrastive, agreement, counted)
            self._metrics[mode]["beta"].append(beta.item())
            self._metrics[mode]["temperature"].append(_temperature(inverse_temperature.item()))
            self._collect_eval_anchors(outputs.text_embeds, outputs.image_embeds, inputs, counted)
        else:
            accuracy, margin = agreement
            step_values = {
                "loss/rpa": rpa.mean(), "loss/contrastive": contrastive.mean(), "rewards/accuracies": accuracy,
                "rewards/margins": margin, "beta": beta, "inverse_temperature": inverse_temperature,
                "loss_is_finite": torch.isfinite(loss),
            }
            if not self._log_train_step_and_check_finite(step_values):
                self._stop_on_non_finite(loss, rpa.mean(), contrastive.mean())
        return (loss, outputs) if return_outputs else loss

    def _log_train_step_and_check_finite(self, step_values: dict[str, Tensor]) -> bool:
        """Records a training step's metrics from this process's `step_values`, the scalars named in
        `TRAIN_STEP_VALUES`: the means of its batch's RPA and InfoNCE losses, its rewards accuracy and margin
        (`_judge_agreement`), beta, the inverse temperature, and whether its loss is finite; returns whether the loss
        is finite on every process. All processes' values travel in one gather and reach the host in one read, not a
        collective and a device sync per metric, and combine as `TRAIN_STEP_VALUES` says. A step whose reward is NaN
        on every process records none, or `log`'s plain mean over the logging window would be NaN. A NaN loss is
        recorded, so a diverged run shows."""
        local = torch.stack([step_values[name].detach().float() for name in TRAIN_STEP_VALUES])
        per_process = self.accelerator.gather(local.reshape(1, -1))  # (processes, len(TRAIN_STEP_VALUES))
        combined = torch.stack([combine(column) for combine, column in zip(TRAIN_STEP_VALUES.values(), per_process.T)])
        values = dict(zip(TRAIN_STEP_VALUES, combined.tolist()))
        metrics = self._metrics["train"]
        for key in ("loss/rpa", "loss/contrastive"):
            metrics[key].append(values[key])
        for key in ("rewards/accuracies", "rewards/margins"):
            if not math.isnan(values[key]):
                metrics[key].append(values[key])
        metrics["beta"].append(values["beta"])
        metrics["temperature"].append(_temperature(values["inverse_temperature"]))
        return values["loss_is_finite"] == 1.0

    def _log_eval_batch(
        self, anchor_losses: Tensor, rpa: Tensor, contrastive: Tensor, agreement: tuple[Tensor, Tensor], counted: Tensor
    ) -> None:
        """Records an evaluation batch's ``(N,)`` per-anchor losses (`anchor_losses`, which replace `Trainer`'s eval
        loss, a mean of the processes' batch means that counts the repeated rows), RPA and InfoNCE losses and rewards
        accuracy and margin (`_judge_agreement`), from all processes (one gather), where the gathered
        ``(N * processes,)`` bool `counted` is True, i.e. not on the rows accelerate repeats to even out the last batch
        across processes (`repeated_eval_rows`): `evaluation_loop` then averages over the set's anchors, each once.
        A reward is NaN for an anchor without a strict judge preference and is left out (a batch of such anchors gives
        none); a NaN loss is kept, so a diverged run shows."""
        per_anchor = torch.stack([anchor_losses, rpa, contrastive, *agreement], dim=1).detach().float()  # (N, 5)
        columns = self.accelerator.gather(per_anchor)[counted].T.tolist()
        for key, values in zip(("loss", "loss/rpa", "loss/contrastive", "rewards/accuracies", "rewards/margins"), columns):
            skip_nan = key.startswith("rewards/")
            self._metrics["eval"][key].extend(value for value in values if not (skip_nan and math.isnan(value)))

    def _contrastive_loss_leaving_out(
        self, text_embeds: Tensor, image_embeds: Tensor, inputs, inverse_temperature, left_out: Tensor | None
    ) -> Tensor:
        """`_contrastive_loss` of the batch without the rows of the ``(N,)`` bool `left_out` (an evaluation batch's
        repeated rows, `repeated_eval_rows`; None: none): they are NaN, and neither their anchors nor the items only
        they use join the pools."""
        if left_out is None or not left_out.any():
            return self._contrastive_loss(text_embeds, image_embeds, inputs, inverse_temperature)
        kept = ~left_out
        batch, texts, images = select_rows(inputs, kept)
        # one `_contrastive_loss` call either way: every process gathers the pools
        scored = self._contrastive_loss(text_embeds[texts], image_embeds[images], batch, inverse_temperature)
        return scored.new_full(kept.shape, math.nan).masked_scatter(kept, scored)

    def _contrastive_loss(self, text_embeds: Tensor, image_embeds: Tensor, inputs, inverse_temperature) -> Tensor:
        """The ``(N,)`` InfoNCE losses of the anchors; with `expand_negatives` every embedded item joins the pool (the
        anchors among them are removed again as duplicates, by id)."""
        text_ids, image_ids = inputs["text_ids"], inputs["image_ids"]
        expanded = {}
        if self.args.expand_negatives:
            expanded = dict(
                negative_image_embeds=image_embeds,
                negative_text_embeds=text_embeds,
                negative_image_ids=image_ids,
                negative_text_ids=text_ids,
            )
            if self.args.exclude_judged_positives:  # every judged positive of a row, drawn or not (see the collator)
                if not {"judged_positive_text_ids", "judged_positive_image_ids"} <= inputs.keys():  # a user's collator
                    raise ValueError(
                        "exclude_judged_positives needs every batch's judged_positive_text_ids and "
                        "judged_positive_image_ids: collate with DataCollatorForEmbeddingPreference(..., "
                        "return_judged_positive_ids=True), or return them from your collator"
                    )
                expanded["excluded_image_ids"] = inputs["judged_positive_image_ids"]
                expanded["excluded_text_ids"] = inputs["judged_positive_text_ids"]
        return contrastive_loss(
            image_embeds[inputs["anchor_image_index"]],
            text_embeds[inputs["anchor_text_index"]],
            inverse_temperature,
            image_ids=image_ids[inputs["anchor_image_index"]],
            text_ids=text_ids[inputs["anchor_text_index"]],
            gather_across_processes=self.args.gather_negatives,
            reduction="none",
            **expanded,
        )

    def _collect_eval_anchors(self, text_embeds: Tensor, image_embeds: Tensor, inputs, counted: Tensor) -> None:
        """Keeps the batch's anchor embeddings and ids (from all processes, the rows of `counted` only) for retrieval
        over the eval set."""
        texts, images = inputs["anchor_text_index"], inputs["anchor_image_index"]
        anchors = (text_embeds[texts].detach(), image_embeds[images].detach(), inputs["text_ids"][texts],
                   inputs["image_ids"][images])
        self._eval_anchors.append(tuple(part[counted] for part in self.accelerator.gather(anchors)))

    def _prepare_input(self, data: Any) -> Any:
        """`Trainer._prepare_input`, the judge scores kept in float32: under DeepSpeed it casts every floating input to
        the engine's dtype, and in bf16 alphas such as 0.8 and 0.801 would tie for RPA, while the collator's judged
        positives (`exclude_judged_positives`) still tell them apart."""
        if isinstance(data, Mapping):
            return type(data)({
                key: value.to(self.args.device) if key in SCORED_CANDIDATES.values() else self._prepare_input(value)
                for key, value in data.items()
            })
        return super()._prepare_input(data)

    def _get_grad_norm(self, model, grad_norm=None):
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        # kept as it is (a tensor on the device, but for DeepSpeed): read only if a later loss is not finite
        self._last_grad_norm = grad_norm
        return grad_norm

    def _stop_on_non_finite(self, loss: Tensor, rpa: Tensor, contrastive: Tensor) -> None:
        """Called on every process when a training loss is not finite on some process
        (`_log_train_step_and_check_finite`): a NaN/inf loss would poison the weights at the next optimiser step, so
        stop, naming the step. The current weights are saved as a checkpoint when they (and the last step's gradient
        norm, else the optimiser state may hold NaNs) are finite; otherwise the error points to the last regular
        checkpoint. All processes agree, so none waits on a collective."""
        step = self.state.global_step + 1
        losses = f"loss={loss.item()}, loss/rpa={rpa.item()}, loss/contrastive={contrastive.item()}"
        bad = [name for name, param in self.model.named_parameters() if not torch.isfinite(param.detach()).all()]
        grad_norm_finite = self._last_grad_norm is None or math.isfinite(float(self._last_grad_norm))
        weights_finite = torch.tensor([not bad and grad_norm_finite], device=self.accelerator.device)
        if bool(self.accelerator.gather(weights_finite).all()):
            self._save_checkpoint(self.model, trial=None)
            checkpoint = os.path.join(self.args.output_dir, f"checkpoint-{self.state.global_step}")
            saved = f"The (finite) weights before this step were saved to {checkpoint}"
        else:
            reason = f"parameters {bad[:3]} are" if bad else f"the gradient norm of step {step - 1} is"
            last = next(iter(run_checkpoints(self.args.output_dir)[-1:]), None)
            where = f"the last regular checkpoint is {last}" if last else "no checkpoint was saved before it"
            saved = f"No checkpoint was saved: {reason} already non-finite; {where}"
        # not "resume with a lower learning rate": a resume keeps its checkpoint's recipe, learning rate included,
        # and trains the step's rows on its weights again
        raise FloatingPointError(
            f"Non-finite loss at training step {step}: {losses}. {saved}. Check the judge scores and images of the "
            "step's rows, or lower the learning rate in a new run, which may start from a checkpoint's weights (its "
            "folder as the model): a resume keeps the checkpoint's recipe, learning rate included."
        )

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # DPOTrainer treats `input_ids` as labels; an embedder has no labels, only the loss and the logged metrics
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ) -> EvalLoopOutput:
        # `_compute_loss` collects the batch metrics and, for retrieval over the whole evaluation set, the anchors.
        # They go into the loop's own metrics under its prefix (per split, and for `predict` too), not to `log`.
        self._eval_anchors = []
        self._metrics["eval"].clear()
        with naming_undecodable_images(metric_key_prefix):
            output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        for key, values in self._metrics["eval"].items():  # NaN: no anchor had a strict judge preference
            output.metrics[f"{metric_key_prefix}_{key}"] = sum(values) / len(values) if values else math.nan
        self._metrics["eval"].clear()
        if self._eval_anchors:
            recalls = anchor_recall_at_1(*(torch.cat(part) for part in zip(*self._eval_anchors)))
            output.metrics.update({f"{metric_key_prefix}_recall@1/{key}": value for key, value in recalls.items()})
            self._eval_anchors = []
        if self._quadruples_prefix is not None:  # in the loop, so that they are logged and seen by `on_evaluate`
            output.metrics.update(self._quadruple_scores(self._quadruples_prefix))
            self._quadruples_prefix = None
        return output

    def _quadruple_scores(self, metric_key_prefix: str) -> dict[str, float]:
        """The `eval_quadruples` scores, as `{prefix}_{name}/{score}`; NaN for a diverged model."""
        from evaluation.protocols import evaluate_quadruples

        model = self.accelerator.unwrap_model(self.model)
        fine_grained = {}
        for name, quadruples in self.eval_quadruples.items():
            try:
                # as given: a benchmark's lazy quadruples, listed, would hold every image decoded
                scores = evaluate_quadruples(model, self.processing_class, quadruples)
            except NonFiniteEmbeddingsError:  # a diverged model: NaN, like its loss and recall
                scores = dict.fromkeys(QUADRUPLE_SCORES, math.nan)
            for key in QUADRUPLE_SCORES:
                fine_grained[f"{metric_key_prefix}_{name}/{key}"] = scores[key]
        return fine_grained

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Evaluation metrics are already in `logs`, under their prefix (`evaluation_loop`); any other log adds the
        # training metrics collected since the last, as `DPOTrainer.log` does, but chosen by where it is called from,
        # not by `model.training`, which an evaluation at the last step leaves off for the closing log. So
        # `DPOTrainer.log` is replaced, not extended: what a later TRL adds there must be added here too.
        if not self._evaluating:
            logs = {**logs, **{key: sum(values) / len(values) for key, values in self._metrics["train"].items()}}
            self._metrics["train"].clear()
        return super(DPOTrainer, self).log(logs, start_time)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        # With a dict of eval datasets `Trainer.evaluate` calls this method again per split; the quadruples do not
        # depend on the split, so the outermost call has them scored once, under its own prefix, by the first
        # split's loop: `Trainer.evaluate` then logs them and hands them to `on_evaluate` (early stopping).
        nested, self._evaluating = self._evaluating, True
        if not nested and self.eval_quadruples:
            self._quadruples_prefix = metric_key_prefix
        try:
            return super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        finally:
            self._evaluating = nested
            if not nested:
                self._quadruples_prefix = None

    def predict(self, test_dataset, ignore_keys=None, metric_key_prefix: str = "test"):
        """`Trainer.predict`: `evaluate`'s losses, rewards and recalls under `metric_key_prefix` (not the
        `eval_quadruples` scores, which `evaluate` adds; `predictions` and `label_ids` are None: an embedder's
        evaluation has none), `test_dataset` checked and prepared as `evaluate` prepares its own."""
        test_dataset = self._prepare_dataset(test_dataset, self.processing_class, self.args, metric_key_prefix)
        return super().predict(test_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)

    # ------------------------------------------------------------------------------------------ saving
    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """`Trainer.train`, refusing to resume a checkpoint saved under another recipe (`check_recipe`: the
        `RECIPE_FIELDS`, the LoRA, model and image settings, the training data)."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"No complete checkpoint (with {TRAINER_STATE_NAME}) in {self.args.output_dir}")
        if resume_from_checkpoint:
            check_recipe(resume_from_checkpoint, self.args, self._lora_recipe(), self._model_recipe(), self._image_recipe(),
                         data_recipe(self.train_dataset))
        self._unprepare_model_prepared_for_evaluation()
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _unprepare_model_prepared_for_evaluation(self) -> None:
        """Undoes accelerate's preparation of a model that is prepared but not wrapped, so that `Trainer.train`
        prepares it for training: under several processes, wraps it in DDP.

        An evaluation before training prepares the model with `prepare_model(evaluation_mode=True)`
        (`Trainer.evaluation_loop`), which leaves out the DDP wrapper yet marks the model prepared; training's
        `accelerator.prepare` then handed it back as it was, and each process trained its own copy on its own batches,
        gradients never averaged (transformers 5.24, accelerate 1.15). With `torch_compile` that evaluation also
        compiles the model, and `model_wrapped` is the compiled model (torch.compile's wrapper, or under regional
        compilation a copy with compiled blocks), which `Trainer.train` took for a wrapped one and trained as it was:
        it is let go, and training compiles its DDP wrapper instead. Under FSDP and DeepSpeed that evaluation prepares
        the model for training, and it is left alone. In one process this prepares again a model that training already
        prepared, the same way (compiled, in a new wrapper whose calls reuse dynamo's graphs of the model)."""
        model, prepared = self.model, self.model_wrapped
        if (
            self.is_fsdp_enabled
            or self.is_deepspeed_enabled
            # accelerate compiles last: an evaluation's compiled model holds the model itself, training's its DDP wrapper
            or (prepared is not model and getattr(prepared, "_orig_mod", None) is not model)
            or not getattr(prepared, "_is_accelerate_prepared", False)
        ):
            return
        # in place: gives the model back its own forward, without the autocast that mixed precision wrapped it in
        self.accelerator.unwrap_model(model, keep_fp32_wrapper=False)
        # the mark is on the model itself, but for a copy with compiled blocks, which keeps it
        vars(model).pop("_is_accelerate_prepared", None)
        self.accelerator._models = [listed for listed in self.accelerator._models if listed is not model]
        self.model_wrapped = model

    def end(self) -> None:
        """`Trainer.end`: finishes the trackers and destroys the process group, after letting go of the DDP wrapper,
        which holds the group: kept, the group and its threads (gloo's) live on into interpreter exit. (An FSDP or
        DeepSpeed model is the trainer's own model, and keeps the group.) Call it last: under several processes the
        trainer cannot train or evaluate after it."""
        self.model_wrapped = self.model
        self.accelerator.free_memory()  # its prepared models (the wrapper among them), then the garbage collector
        super().end()

    def _trained_model(self) -> tuple[nn.Module, PeftConfig | None]:
        """The `MapleModel` trained (under PEFT, the base model the adapters sit on) and the active adapter's config
        (None for full fine-tuning)."""
        model = self.accelerator.unwrap_model(self.model)
        if not isinstance(model, PeftModel):
            return model, None
        return model.get_base_model(), model.peft_config[model.active_adapter]

    def _model_recipe(self) -> dict[str, Any]:
        return model_recipe(self._trained_model()[0].config)

    def _image_recipe(self) -> dict[str, Any] | None:
        image_processor = getattr(self.processing_class, "image_processor", None)
        return None if image_processor is None else image_recipe(image_processor)

    def _lora_recipe(self) -> dict[str, Any] | None:
        _, peft_config = self._trained_model()
        return None if peft_config is None else lora_recipe(peft_config.r, peft_config.lora_alpha)

    def _save_checkpoint(self, model, trial) -> None:
        # A streamed run's checkpoint records its pass over the stream and the batches of that pass its steps trained
        # (`_resumed_stream_position`), before `Trainer` writes trainer_state.json, last. Counted by steps: a save
        # after a pass whose last batches wait for the next pass's to fill an accumulation step, or before a step
        # whose loss is not finite (`_stop_on_non_finite`), leaves those batches to train again, as their gradients
        # are not saved.
        if self._pass_start is not None and isinstance(self.train_dataset, IterableDataset) and self.args.should_save:
            pass_index, start_step = self._pass_start
            batches = (self.state.global_step - start_step) * self.args.gradient_accumulation_steps
            checkpoint = os.path.join(self._get_output_dir(trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            save_stream_position(checkpoint, pass_index, batches)
        super()._save_checkpoint(model, trial)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir or self.args.output_dir
        self._save_weights(output_dir, state_dict)
        if self.args.should_save:  # a recipe file is whole or absent
            recipe = training_recipe(self.args, self._lora_recipe(), self._model_recipe(), self._image_recipe(),
                                     data_recipe(self.train_dataset))
            atomic_write_json(os.path.join(output_dir, RECIPE_FILE), recipe)

    def _save_weights(self, output_dir: str, state_dict: dict | None) -> None:
        model = self.accelerator.unwrap_model(self.model)
        if not isinstance(model, PeftModel):
            if self.args.should_save:  # a PEFT run's saved into this folder before (its final save): another model's
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(output_dir, PEFT_TRAINABLE_STATE))
            return super()._save(output_dir, state_dict)
        # A PEFT model saves only its adapters, which AutoModel cannot load: save the merged MapleModel instead, and
        # beside it the trainable state (adapters + scales) that resuming needs.
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        save_merged(model, output_dir)
        save_trainable_state(model, output_dir)
        self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _load_best_model(self) -> None:
        # A PEFT checkpoint holds the merged model and the trainable state, no adapter file, so `Trainer` would only
        # warn and load nothing: restore the trainable state as resuming does.
        if isinstance(self.accelerator.unwrap_model(self.model), PeftModel):
            return self._load_from_checkpoint(self.state.best_model_checkpoint)
        return super()._load_best_model()

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        model = model or self.model
        unwrapped = self.accelerator.unwrap_model(model)
        if not isinstance(unwrapped, PeftModel):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        load_trainable_state(unwrapped, resume_from_checkpoint)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None and self.optimizer is not None:
            _resume_schedule(self.optimizer, self.lr_scheduler)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        # Decided once, as `Trainer` decides: the last push may finish uploading between two looks.
        if not self.is_world_process_zero() or self.args.hub_strategy == HubStrategy.END or self._skips_push():
            return
        # `Trainer` pushes `output_dir` after copying the checkpoint's weights and config.json into it, but not the
        # remote code that config.json's `auto_map` names: without it the pushed repo loads only with this package.
        # Nor does it touch what else output_dir holds of the model saved there before, which would be uploaded beside
        # this run's weights: that model's results, and a PEFT run's trainable state (this checkpoint's goes instead).
        output_dir = self.args.output_dir
        for name in os.listdir(checkpoint_folder):
            if name.endswith(".py"):
                shutil.copy(os.path.join(checkpoint_folder, name), os.path.join(output_dir, name))
        for name in RESULTS_FILES:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(output_dir, name))
        trainable_state = os.path.join(checkpoint_folder, PEFT_TRAINABLE_STATE)
        if os.path.isfile(trainable_state):
            shutil.copy(trainable_state, os.path.join(output_dir, PEFT_TRAINABLE_STATE))
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(output_dir, PEFT_TRAINABLE_STATE))
        super()._push_from_checkpoint(checkpoint_folder)

    def _skips_push(self) -> bool:
        """Whether `Trainer._push_from_checkpoint` skips a checkpoint's push: the last one is still uploading (only
        process zero, which made the repo, has `push_in_progress`)."""
        uploading = getattr(self, "push_in_progress", None)
        return not self.args.hub_always_push and uploading is not None and not uploading.is_done()

    def create_model_card(
        self,
        model_name: str | None = None,
        dataset_name: str | None = None,
        tags: str | list[str] | None = None,
        judge_id: str | None = None,
        license: str | None = None,
    ) -> None:
        """Writes README.md from `model_cards.model_card_from_run` when that package is installed: the card of the
        repo the model is pushed to (else of `hub_model_id`, else of `model_name`), tagged with its own tags, `tags`
        and this trainer's. `judge_id`: the MLLM that scored the preference data (`maple train` reads it from the
        dataset's stats.json). `license`: the model's licence, by default the base model's. `dataset_name`,
        `judge_id`, `tags` and `license` left out are taken from `model_card_kwargs`, which is what the cards
        written with checkpoint pushes (`DPOTrainer._save_checkpoint`) get too."""
        if not self.is_world_process_zero():
            return
        dataset_name = dataset_name or self.model_card_kwargs.get("dataset_name")
        judge_id = judge_id or self.model_card_kwargs.get("judge_id")
        tags = tags or self.model_card_kwargs.get("tags")
        license = license or self.model_card_kwargs.get("license")
        try:
            from model_cards import model_card_from_run
        except ImportError:
            return
        base, peft_config = self._trained_model()
        card = model_card_from_run(
            output_dir=self.args.output_dir,
            base_model=getattr(base.config, "_name_or_path", None) or None,
            backbone=base.config.backbone,
            training_config=self.args.to_dict(),
            log_history=self.state.log_history,
            eval_results={},
            dataset_id=dataset_name,
            judge_id=judge_id,
            lora=None if peft_config is None else peft_config.to_dict(),
            repo_id=self.hub_model_id or self.args.hub_model_id or model_name,  # the first is the repo created
            model_config=base.config,
            license=license,
            token=self.args.hub_token,  # a private base model's licence
        )
        new_tags = [*([tags] if isinstance(tags, str) else tags or []), *self._tag_names]
        card.data.tags = [*card.data.tags, *(tag for tag in dict.fromkeys(new_tags) if tag not in card.data.tags)]
        card.save(os.path.join(self.args.output_dir, "README.md"))


def _resume_schedule(optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
    """Sets the learning rates of a resumed run to its own schedule at the step resumed. The checkpoint's optimizer
    holds the rates its run's schedule gave there, and a run resumed to train longer (another `max_steps`) would train
    its first step at them: at the old run's last step, 0 for a linear or cosine decay. `transformers`' schedules are
    `LambdaLR`s, whose state holds the step but not the schedule, so the scheduler already follows the new length
    from the next step on; a run of the same length gets the rates it saved."""
    if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        return
    rates = [base * schedule(scheduler.last_epoch) for schedule, base in zip(scheduler.lr_lambdas, scheduler.base_lrs)]
    for group, rate in zip(optimizer.param_groups, rates):
        group["lr"] = rate
    scheduler._last_lr = rates


def _trainable_base_parameters(model: PeftModel) -> list[str]:
    """Names of the trainable parameters of a PEFT model's base weights: not adapters, not `modules_to_save` copies
    (PEFT keeps their originals), not the log-scales."""
    return [
        name for name, parameter in model.named_parameters()
        if parameter.requires_grad and "lora_" not in name and "modules_to_save" not in name
        and name.rsplit(".", 1)[-1] not in LOG_SCALES
    ]


def _disable_dropout_outside_adapters(model: nn.Module) -> None:
    """`trl`'s `disable_dropout_in_model`, less the LoRA adapters' dropout (`lora_dropout`), which is the user's
    setting."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Dropout) and ".lora_dropout." not in f".{name}.":
            module.p = 0.0


@torch.no_grad()
def bound_scales(model: nn.Module, max_scale: float, learnable_only: bool = True) -> None:
    """Clamp the model's scales, `exp(logit_scale)` (InfoNCE inverse temperature) and `exp(preference_logit_scale)`
    (RPA's beta), to at most `max_scale`, as CLIP clips its logit scale at 100 (Radford et al., 2021).
    `learnable_only`: leave frozen scales alone (the optimizer cannot have moved them)."""
    for scale in (model.logit_scale, model.preference_logit_scale):
        if scale.requires_grad or not learnable_only:
            scale.clamp_(max=math.log(max_scale))


class ScaleBound(TrainerCallback):
    """`bound_scales` after every optimizer step, as open_clip clamps its logit scale after each step."""

    def __init__(self, max_scale: float):
        self.max_scale = max_scale

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        bound_scales(model, self.max_scale)


def _format_type(dataset: Dataset | IterableDataset) -> str | None:
    """The dataset's output format ("torch", "numpy", ...), None for Python objects."""
    if isinstance(dataset, IterableDataset):
        return dataset._formatting.format_type if dataset._formatting is not None else None
    return dataset.format["type"]


def _model_inputs(inputs: dict[str, Tensor]) -> dict[str, Tensor]:
    """The processor's tensors of a collated batch, without the collator's bookkeeping."""
    return {key: value for key, value in inputs.items() if key not in PREFERENCE_KEYS}


def _temperature(inverse_temperature: float) -> float:
    """The InfoNCE temperature logged for the model's `inverse_temperature`: inf for a scale a diverged step drove to
    zero (exp(-inf)), which must not fail the step before its non-finite loss stops the run."""
    return 1.0 / inverse_temperature if inverse_temperature else math.inf


def _judge_agreement(
    rankings: list[tuple[Tensor, Tensor, Tensor]], reduction: Literal["mean", "none"]
) -> tuple[Tensor, Tensor]:
    """How well the scores of the `rankings` ((scores, judge scores, mask) per direction) follow the judge: rewards
    accuracy and margin (`preference_agreement`, DPO's `rewards/*`), averaged over the two directions; scalars pooled
    over the batch's preferred pairs (`reduction="mean"`), or ``(N,)`` per anchor (``"none"``). NaN where no pair is
    strictly preferred."""
    agreement = [preference_agreement(scores.detach(), judge, mask, reduction) for scores, judge, mask in rankings]
    accuracy, margin = (torch.stack(values).nanmean(0) for values in zip(*agreement))
    return accuracy, margin


def _candidate_similarities(text_embeds: Tensor, image_embeds: Tensor, inputs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Similarities (dot products; cosines unless `MapleConfig.normalize=False`) of each anchor to its sampled candidates: ``(N, C_img)`` anchor caption -> candidate
    images (txt2img) and ``(N, C_txt)`` anchor image -> candidate texts (img2txt)."""
    anchor_texts = text_embeds[inputs["anchor_text_index"]]
    anchor_images = image_embeds[inputs["anchor_image_index"]]
    txt2img = torch.einsum("nd,ncd->nc", anchor_texts, image_embeds[inputs["candidate_image_index"]])
    img2txt = torch.einsum("nd,ncd->nc", anchor_images, text_embeds[inputs["candidate_text_index"]])
    return txt2img, img2txt


def _check_collator(collator: DataCollatorForEmbeddingPreference, args: RPAConfig) -> None:
    """A ValueError unless a `DataCollatorForEmbeddingPreference` passed to the trainer draws the candidate counts of
    `args`: the run's recipe (which a resume must share), its card and `RPAConfig`'s checks (persistent workers
    would repeat the first epoch's draws) read them there, and would describe another run. With
    `exclude_judged_positives`, it must also return the judged-positive ids that option excludes."""
    differing = [f"{name}={getattr(collator, name)!r} where the config has {getattr(args, name)!r}"
                 for name in ("num_image_candidates", "num_text_candidates") if getattr(collator, name) != getattr(args, name)]
    if differing:
        raise ValueError(f"The data_collator draws {', '.join(differing)}: set the config's candidate counts to the "
                         "collator's (its recipe, its card and its checks read them).")
    if args.exclude_judged_positives and not collator.return_judged_positive_ids:
        raise ValueError("The config has exclude_judged_positives=True, which excludes the judged-positive ids the "
                         "data_collator returns: build it with return_judged_positive_ids=True.")


def _checked_args(
    args: RPAConfig | None, model: str | nn.Module, train_dataset: Any, compute_metrics: Callable | None
) -> RPAConfig:
    """`args` (by default an `RPAConfig` whose output_dir is named after the model), refusing another config type, a
    missing `train_dataset` and `compute_metrics`."""
    if args is None:
        name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "") or "maple"
        args = RPAConfig(f"{os.path.basename(name.rstrip('/'))}-RPA")
    if not isinstance(args, RPAConfig):
        raise TypeError(f"args must be an RPAConfig, got {type(args).__name__}")
    if train_dataset is None:
        raise ValueError("`train_dataset` is required")
    if compute_metrics is not None:
        raise ValueError(
            "RPATrainer does not take `compute_metrics`: an embedder's evaluation has no predictions and labels to "
            "pass it. Evaluation reports eval_loss, eval_loss/rpa, eval_loss/contrastive, "
            "eval_rewards/accuracies, eval_rewards/margins, eval_recall@1/text_to_image and /image_to_text, and, "
            "with `eval_quadruples`, eval_<name>/text_score, /image_score and /group_score; for other benchmarks "
            "evaluate the saved model (`maple eval`)."
        )
    return args


def _check_eval_quadruples(eval_quadruples: Any) -> None:
    """Raise a TypeError or ValueError here, not at the first evaluation, which may come after hours of training,
    for `eval_quadruples` that is not a dict of named sets or a set that `check_quadruples` refuses under its name
    (its first quadruple read, nothing embedded; the others are checked when it is scored)."""
    if not isinstance(eval_quadruples, Mapping):
        raise TypeError(
            "eval_quadruples: expected a dict of named sets, {name: [(image_0, image_1, text_0, text_1), ...]}, got a "
            f"{type(eval_quadruples).__name__}"
        )
    for name, quadruples in eval_quadruples.items():
        check_quadruples(quadruples, f"eval_quadruples[{name!r}]")


def _model_and_processor(
    model: str | nn.Module, processing_class: ProcessorMixin | None, args: RPAConfig
) -> tuple[nn.Module, ProcessorMixin]:
    """The MAPLE model and its processor: loaded when `model` is a path or Hub id (with `args.model_init_kwargs`),
    checked to be a MAPLE embedder and a `MapleProcessor` either way."""
    if isinstance(model, str):
        loading = from_pretrained_kwargs(args.model_init_kwargs, args.trust_remote_code, args.hub_token)
        if processing_class is None:
            model, processing_class = load_maple(model, **loading)
        else:  # only the model: a checkpoint may be saved without its processor
            model = load_maple_model(model, **loading)
    if processing_class is None:
        raise ValueError("Pass the model's MapleProcessor as `processing_class` (or the model as a path).")
    # Not isinstance(MapleProcessor): a processor loaded as remote code is the checkpoint's own copy of the class.
    if not hasattr(processing_class, "image_prompt"):
        raise TypeError(
            f"`processing_class` must be the model's MapleProcessor (MapleProcessor.from_pretrained), got "
            f"{type(processing_class).__name__}."
        )
    if not all(hasattr(model, name) for name in LOG_SCALES):
        raise TypeError(
            f"RPATrainer trains MAPLE embedders (a MapleModel with `logit_scale` and `preference_logit_scale`), "
            f"got {type(model).__name__}"
        )
    return model, processing_class


def _set_distributed_batching(args: RPAConfig) -> None:
    """Set `args` up for RPA batches under several processes, refusing the settings that cannot work."""
    # Under DDP a step may leave parameters without gradient (a text tower's pooler, beta when rpa_weight is 0).
    if args.ddp_find_unused_parameters is None:
        args.ddp_find_unused_parameters = True
    # accelerate's batch dispatching (its default for streamed datasets) slices every tensor of a batch by rows;
    # ours hold more images and texts than rows, so each process collates its own batches instead.
    if args.accelerator_config.dispatch_batches:
        raise ValueError("RPATrainer batches cannot be dispatched by rows: leave dispatch_batches unset or False.")
    args.accelerator_config.dispatch_batches = False
    # Without even batches, processes may get different numbers of training batches, and one would wait forever in
    # the loss's all-gather for a batch the others do not have. (Evaluation loaders have even batches and keep every
    # row whatever these settings say, see `_get_dataloader`.)
    if not args.accelerator_config.even_batches and not args.dataloader_drop_last and args.world_size > 1:
        raise ValueError(
            "RPATrainer needs accelerator_config.even_batches under several processes: without it a process can "
            "get one batch more than another and wait forever in the loss's all-gather. Keep even_batches=True "
            "(the last batch is evened out with repeated rows) or set dataloader_drop_last=True (training drops its "
            "short last batch; evaluation keeps every row)."
        )
