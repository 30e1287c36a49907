"""`RPAConfig`: the knobs of MAPLE's Relative Preference Alignment training on top of TRL's `DPOConfig`."""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import parse_flag_from_env
from trl import DPOConfig

from maple.hub import repo_id_problem, token_problem

from .collator import check_candidate_count
from .losses import RPA_LOSSES

# DPOConfig knobs that act on the token sequences or log-probabilities of a causal LM; an embedder has neither, so
# a non-default value would be silently meaningless. Maps the field to its only supported value.
_LANGUAGE_MODEL_ONLY_DEFAULTS = {
    "max_length": None,
    "activation_offloading": False,
    "router_aux_loss_coef": None,
    "precompute_ref_log_probs": False,
    "use_weighting": False,
    "ld_alpha": None,
    "f_divergence_type": "reverse_kl",
    "padding_free": False,
    "sync_ref_model": False,
    "label_smoothing": 0.0,
}
# DPO's collator settings for token sequences; RPATrainer's collator uses the model's processor instead.
# (DPOConfig resolves `pad_to_multiple_of="auto"` to None.)
_TOKEN_COLLATION_DEFAULTS = {"pad_to_multiple_of": ("auto", None), "pad_token": (None,), "truncation_mode": ("keep_start",)}
# DPOConfig knobs of the settings above, or of reference log-probability precomputation: moot for an embedder.
_MOOT_DPO_FIELDS = {
    "ref_model_mixup_alpha": "sync_ref_model",
    "ref_model_sync_steps": "sync_ref_model",
    "f_alpha_divergence_coef": "f_divergence_type",
    "discopop_tau": "loss_type='discopop'",
    "precompute_ref_batch_size": "precompute_ref_log_probs",
}

# The settings `RPAConfig._check_setting_types` checks (the numbers by whether they may be None): RPA's own switches,
# and the numbers whose range it checks
_RPA_SWITCHES = ("learn_beta", "learn_temperature", "expand_negatives", "exclude_judged_positives", "gather_negatives")
_NUMERIC_SETTINGS = {"rpa_weight": False, "learning_rate": False, "weight_decay": False, "warmup_steps": False,
                     "max_grad_norm": False, "beta": True, "temperature": True, "max_scale": True}


def unused_dpo_field_help() -> dict[str, str]:
    """Help for the `DPOConfig` fields RPATrainer rejects or ignores, by field name, to replace TRL's (which describes
    what they do to a language model) in `maple train --help`."""
    helps = {  # `max_length` keeps the help RPAConfig redeclares it with
        name: f"Not used by RPATrainer: acts on a language model's token log-probabilities; must stay {value!r}."
        for name, value in _LANGUAGE_MODEL_ONLY_DEFAULTS.items()
        if name != "max_length"
    }
    helps |= {
        name: f"Not used by RPATrainer: DPO's token collator setting (texts are padded and truncated by the "
        f"MapleProcessor); must stay {values[0]!r}."
        for name, values in _TOKEN_COLLATION_DEFAULTS.items()
    }
    helps |= {name: f"Not used by RPATrainer (DPO's {setting}, which it does not support)." for name, setting in _MOOT_DPO_FIELDS.items()}
    helps["dataset_num_proc"] = "Not used by RPATrainer: the preference dataset is used as it is, with no tokenisation pass."
    helps["loss_weights"] = "Not used by RPATrainer: RPA is one loss, mixed with InfoNCE by `rpa_weight`; must stay None (or [1.0], the same)."
    return {name: text.replace("%", "%%") for name, text in helps.items()}  # argparse formats help with %


@dataclass
class RPAConfig(DPOConfig):
    r"""
    Configuration for [`RPATrainer`]: MAPLE's Relative Preference Alignment (RPA) mixed with InfoNCE
    (arXiv 2506.06970, section 3). The fields below are added or have other defaults. Those of
    [`~transformers.TrainingArguments`] apply, but for a `train_sampling_strategy` by token length, which is refused.
    Of the fields [`~trl.DPOConfig`] adds, only `model_init_kwargs`, `trust_remote_code`, `disable_dropout` and `beta`
    (RPA's scale) apply; `loss_type` must stay `["sigmoid"]` (RPA's form is `rpa_loss`). The others act on a causal
    language model's tokens, log-probabilities or reference model: they are refused at any value but their default
    (`max_length`, `label_smoothing`, `pad_token`, `loss_weights`, ...), or ignored where they act only under a
    refused setting or not at all (`ref_model_sync_steps` under `sync_ref_model`; `dataset_num_proc`, as nothing is
    tokenised); `maple train --help` marks each "Not used by RPATrainer" (`unused_dpo_field_help`).

    The loss is `L = rpa_weight * L_RPA + (1 - rpa_weight) * L_InfoNCE`, where `L_RPA` averages the text-to-image and
    image-to-text directions of the pairwise or listwise RPA loss on `beta`-scaled similarities, and `L_InfoNCE` is the
    symmetric CLIP loss at temperature `temperature`, optionally with every anchor's hard negatives in the
    denominator. `beta` and `temperature` are the model's learnable `preference_logit_scale` and `logit_scale`
    (both stored as logarithms).

    Defaults run on a CPU without flags: `bf16` is on only where a CUDA device supports it, activation checkpointing
    is off, and the learning rate, schedule and length are the paper's LoRA settings (5e-4, 2.5% linear warm-up, cosine
    decay, 8 epochs).
    """

    # Overridden TrainingArguments / DPOConfig defaults
    learning_rate: float = field(
        default=5e-4,
        metadata={"help": "Initial AdamW learning rate. MAPLE trains LoRA adapters with 5e-4 (section 4.1)."},
    )
    num_train_epochs: float = field(
        default=8.0,
        metadata={"help": "Passes over the training set (`max_steps` > 0 overrides it). MAPLE trains 8 epochs (section 4.1)."},
    )
    lr_scheduler_type: str = field(
        default="cosine",
        metadata={"help": "Learning-rate schedule. MAPLE uses linear warm-up then cosine decay (section 4.1)."},
    )
    warmup_steps: float = field(
        default=0.025,
        metadata={
            "help": "Linear warm-up: a number of steps, or a ratio of all steps when below 1. MAPLE warms up for "
            "2.5%% of training (section 4.1)."
        },
    )
    gradient_checkpointing: bool | None = field(
        default=None,
        metadata={
            "help": "Deprecated alias of `activation_checkpointing` (recompute activations in the backward pass to "
            "save memory, about 20%% slower). MAPLE uses it for its 2B/7B backbones; off unless set (TRL turns it "
            "on), so small models run fast.",
            # as transformers declares it: a bare `--gradient_checkpointing` means True
            "nargs": "?",
            "const": True,
        },
    )
    logging_nan_inf_filter: bool = field(
        default=False,
        metadata={
            "help": "`Trainer`'s filter that leaves non-finite step losses out of the logged loss. Off: `RPATrainer` "
            "stops on a non-finite loss before it would be logged, and the filter reads the loss from the device at "
            "every step."
        },
    )
    bf16: bool | None = field(
        default=None,
        metadata={
            "help": "bf16 mixed precision, as in MAPLE. `None` turns it on only where training runs on a CUDA device "
            "with native bf16 (Ampere or newer; not with `use_cpu`), so CPU runs need no flag.",
            "nargs": "?",  # a bare `--bf16` means True, as in TRL
            "const": True,
        },
    )
    max_length: int | None = field(
        default=None,
        metadata={
            "help": "Must stay None: DPO truncates prompt+completion tokens here, which an embedder does not have, so "
            "any other value is rejected. Texts are truncated by the MapleProcessor's `max_text_length`."
        },
    )
    model_init_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={
            "help": "Keyword arguments for loading the model when it is given as a path or Hub id: `from_pretrained` of "
            "a MAPLE checkpoint (any argument; those that say where its files are, `revision`, `subfolder`, "
            "`cache_dir`, `local_files_only`, `force_download` and `proxies`, apply to its config and processor too) or "
            "`MapleModel.from_backbone` of a backbone (`dtype`, `attn_implementation`, `revision`), as "
            "`modeling_maple.load_maple` does. Weights "
            "load in float32 unless `dtype` (alias `torch_dtype`) says otherwise, as in TRL."
        },
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "Allow a MAPLE checkpoint's own code (configuration, modeling and processing files) to run when it "
            "is loaded by path or Hub id; the backbones MAPLE wraps are transformers' own classes and need none."
        },
    )
    beta: float | None = field(
        default=None,
        metadata={
            "help": "Initial RPA scale beta in `s = beta * <z_anchor, z_candidate>` (MAPLE section 3.2: learnable, "
            "initialised to 1/0.07). It is the model's `preference_logit_scale` (stored as log beta). `None` keeps "
            "the model's value: 1/0.07 for a new MapleModel, the trained value for a MAPLE checkpoint."
        },
    )

    # RPA
    rpa_loss: str = field(
        default="listwise",
        metadata={
            "help": "RPA loss over the judge's ranking of an anchor's candidates: 'listwise' (Plackett-Luce, weighted "
            "by judge margins) or 'pairwise' (margin-weighted DPO over all ranked pairs). MAPLE finds listwise better "
            "when mixed with InfoNCE (section 4.3).",
            "choices": list(RPA_LOSSES),
        },
    )
    rpa_weight: float = field(
        default=0.2,
        metadata={
            "help": "lambda in `L = lambda * L_RPA + (1 - lambda) * L_InfoNCE`. The paper does not state its headline "
            "value; its sweep (section 4.3) has general retrieval best near 0.1-0.2 and fine-grained scores rising "
            "until about 0.6. 0.2 favours general retrieval; raise it for fine-grained discrimination. 1.0 is RPA "
            "alone (hurts general retrieval in the paper)."
        },
    )
    learn_beta: bool = field(
        default=True,
        metadata={"help": "Train beta along with the model (MAPLE: learnable)."},
    )
    reference: str = field(
        default="none",
        metadata={
            "help": "'none': RPA as in MAPLE, no reference model (a uniform prior cancels out of the DPO objective). "
            "'frozen' (our extension): DPO proper on similarities, scores are `beta * (<z, z'> - <z_ref, z'_ref>)` "
            "against a frozen reference embedder: the PEFT base model with adapters disabled (also for a "
            "`PeftModel` passed as the model, unless it leaves base weights trainable), a `ref_model` passed to the "
            "trainer, or else a frozen copy of the initial model.",
            "choices": ["none", "frozen"],
        },
    )
    loss_type: list[str] = field(
        default_factory=lambda: ["sigmoid"],
        metadata={
            "help": "Inherited from `DPOConfig`, not a MAPLE setting: it must stay ['sigmoid'], the only value "
            "accepted. RPA is the margin-weighted form of DPO's 'sigmoid' loss, the only DPO loss defined on graded "
            "candidate rankings; choose between RPA's pairwise and listwise forms with `rpa_loss`."
        },
    )

    # InfoNCE
    temperature: float | None = field(
        default=None,
        metadata={
            "help": "Initial InfoNCE temperature (MAPLE: learnable, initialised to 0.07). It is the model's "
            "`logit_scale` (stored as log(1/temperature)). `None` keeps the model's value."
        },
    )
    learn_temperature: bool = field(
        default=True,
        metadata={"help": "Train the InfoNCE temperature along with the model (MAPLE: learnable)."},
    )
    max_scale: float | None = field(
        default=100.0,
        metadata={
            "help": "Upper bound on the learnable scales, the InfoNCE inverse temperature `1 / temperature` and RPA's "
            "`beta`, applied after every optimizer step. CLIP (Radford et al., 2021, section 2.5) clips its logit "
            "scale at 100 to keep training stable; MAPLE only says both scales are learnable, and a scale that grows "
            "without bound sharpens either loss until its gradients vanish or explode. `None`: no bound."
        },
    )
    expand_negatives: bool = field(
        default=True,
        metadata={
            "help": "Put every anchor's hard-negative candidates (images and texts) into the InfoNCE denominator, "
            "de-duplicated (MAPLE section 3.3, 'expanded negatives'). Off: plain CLIP InfoNCE over the anchors."
        },
    )
    exclude_judged_positives: bool = field(
        default=False,
        metadata={
            "help": "With `expand_negatives`, leave out of each anchor's InfoNCE denominator its candidates the judge "
            "rates at least as high as the anchor's own pair (e.g. a generated caption that is also true of the anchor "
            "image): they are no negatives for that anchor (they stay negatives for the others). All of them, drawn "
            "this step or not (`num_*_candidates`): an undrawn one may still be in the batch, e.g. as another row's "
            "anchor. Not in the paper; useful when the caption pool holds captions of the anchor itself, as the "
            "paper's does, since those would otherwise be pushed away as negatives. Off by default, as in the paper."
        },
    )
    gather_negatives: bool = field(
        default=True,
        metadata={
            "help": "Under several processes, gather anchors and negatives from all of them (with gradients) so each "
            "anchor is contrasted against the global batch, as in MAPLE and CLIP."
        },
    )

    # Candidate sampling
    num_image_candidates: int | None = field(
        default=None,
        metadata={
            "help": "Image candidates per anchor and step: the anchor's own image plus this many minus one drawn "
            "from its other candidates, drawn afresh for every row in every epoch. `None` uses all (MAPLE: the anchor and K=3 DINOv2 nearest "
            "neighbours). At least 2: a ranking needs a pair. Fewer means a cheaper step."
        },
    )
    num_text_candidates: int | None = field(
        default=None,
        metadata={
            "help": "Text candidates per anchor and step, drawn like `num_image_candidates` from the caption pool "
            "(MAPLE: a pool of 6 captions; sampling from the whole pool worked best). `None` uses all."
        },
    )

    def __getstate__(self) -> dict[str, Any]:
        # `Trainer` pickles the arguments into training_args.bin beside every checkpoint, and `push_to_hub` uploads
        # that file: Hub tokens stay out of it (transformers' repr and `to_dict` mask `hub_token` too).
        return {**self.__dict__, "hub_token": None, "model_init_kwargs": _without_tokens(self.model_init_kwargs, None)}

    def to_dict(self) -> dict[str, Any]:
        # What reporters (TensorBoard, W&B) log: a token given in `model_init_kwargs` is masked as `hub_token` is.
        arguments = super().to_dict()
        arguments["model_init_kwargs"] = _without_tokens(self.model_init_kwargs, "<TOKEN>")
        # masked for its "_token" suffix alone, which `__post_init__` would then refuse: RPAConfig(**config.to_dict())
        arguments["pad_token"] = self.pad_token
        return arguments

    def __post_init__(self):
        self._set_device_defaults()
        self._check_rpa_settings()
        # httpx refuses to send such a token: the run failed at its first Hub request, reported as an unreachable Hub
        if (problem := token_problem(self.hub_token)) is not None:
            raise ValueError(f"hub_token: {problem}")
        # transformers takes a metric for a loss only when its name ends in "loss": the loss terms ("eval_loss/rpa",
        # "eval_loss/contrastive") would count as better when larger, and the worst checkpoint be kept as the best
        if self.greater_is_better is None and self.metric_for_best_model and _names_a_loss(self.metric_for_best_model):
            self.greater_is_better = False
        super().__post_init__()
        self._check_inherited_settings()  # as `TrainingArguments` and `DPOConfig` leave them (parsed, normalised)
        self._check_push_repo_id()
        if self.exclude_judged_positives and not self.expand_negatives:
            raise ValueError(
                "exclude_judged_positives=True needs expand_negatives=True: it removes judged positives from the "
                "expanded InfoNCE denominator, which plain InfoNCE does not have."
            )

    def _check_push_repo_id(self) -> None:
        """Raises for a `push_to_hub` repo id the Hub would refuse (`hub_model_id`, else the output folder's name, as
        `Trainer` names the repo): `Trainer` creates the repo only once it is made, after `maple train` has loaded the
        data and the model."""
        if not self.push_to_hub:
            return
        if self.hub_model_id is not None:
            if (problem := repo_id_problem(self.hub_model_id)) is not None:
                raise ValueError(f"hub_model_id: {problem}")
        elif (problem := repo_id_problem(Path(self.output_dir).absolute().name)) is not None:
            raise ValueError(
                f"push_to_hub without hub_model_id names the repo after output_dir: {problem}; pass hub_model_id"
            )

    def _set_device_defaults(self) -> None:
        """Pinned memory off without an accelerator, and `bf16` (when unset) on where CUDA supports it natively."""
        # `accelerate launch --cpu` sets ACCELERATE_USE_CPU, which transformers reads as `use_cpu`
        on_cpu = self.use_cpu or parse_flag_from_env("ACCELERATE_USE_CPU")
        if on_cpu or not torch.accelerator.is_available():
            self.dataloader_pin_memory = False  # pinned memory serves copies to an accelerator; torch warns without one
        if self.bf16 is None:
            on_cuda = torch.cuda.is_available() and not on_cpu
            # without emulation: T4/V100 (before Ampere) would run bf16 emulated, slower than float32
            self.bf16 = bool(on_cuda and torch.cuda.is_bf16_supported(including_emulation=False)) and not self.fp16

    def _check_rpa_settings(self) -> None:
        """Raises for a value of an RPA setting (the loss, its scales, the candidate draws) that the run would refuse
        or misuse later."""
        self._check_setting_types()
        if not 0.0 <= self.rpa_weight <= 1.0:
            raise ValueError(f"rpa_weight (lambda) must lie in [0, 1], got {self.rpa_weight}")
        # torch's optimizers refuse these only when the training starts, after the model and the data have loaded, and
        # transformers' warm-up then fails to count a NaN or infinite `warmup_steps` without naming it
        settings = (("learning_rate", self.learning_rate), ("weight_decay", self.weight_decay),
                    ("warmup_steps", self.warmup_steps))
        for name, value in settings:
            if not 0.0 <= value < math.inf:
                raise ValueError(f"{name} must be a finite number of at least 0, got {value}")
        # `Trainer` clips only when `max_grad_norm > 0`: a NaN or negative one turned clipping off silently (0 is its
        # documented "no clipping"; None failed at the first step)
        if not self.max_grad_norm >= 0:
            raise ValueError(
                f"max_grad_norm must be a number of at least 0 (0: no gradient clipping), got {self.max_grad_norm}"
            )
        for name, value in (("beta", self.beta), ("temperature", self.temperature), ("max_scale", self.max_scale)):
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive finite number or None, got {value}")
        if self.max_scale is not None:
            for name, scale in (("beta", self.beta), ("1 / temperature", self.temperature and 1.0 / self.temperature)):
                if scale is not None and scale > self.max_scale:
                    raise ValueError(f"{name} = {scale:g} exceeds max_scale = {self.max_scale:g}; raise max_scale or set None")
        for name in ("num_image_candidates", "num_text_candidates"):
            check_candidate_count(name, getattr(self, name))
        subsampled = self.num_image_candidates is not None or self.num_text_candidates is not None
        if subsampled and self.dataloader_persistent_workers:
            raise ValueError(
                "dataloader_persistent_workers=True cannot be combined with num_image_candidates / "
                "num_text_candidates: the candidate draws are re-seeded every epoch in the main process, which "
                "persistent workers never see, so every epoch would repeat the first one's candidates. Set "
                "dataloader_persistent_workers=False, or leave both candidate counts at None."
            )
        if self.rpa_loss not in RPA_LOSSES:
            raise ValueError(f"rpa_loss must be one of {list(RPA_LOSSES)}, got {self.rpa_loss!r}")
        if self.reference not in ("none", "frozen"):
            raise ValueError(f"reference must be 'none' or 'frozen', got {self.reference!r}")

    def _check_setting_types(self) -> None:
        """Raises for a setting checked here of another type than its field's, naming it. Python does not check a
        dataclass's types: a string such as "false" for a switch would turn it on (`exclude_judged_positives="false"`
        excluded the judged positives), `True` for `rpa_weight` would mean 1.0 (RPA alone), and a number given as a
        string failed the range checks below with a TypeError that named no field."""
        for name in _RPA_SWITCHES:
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be True or False, got {value!r}")
        for name, optional in _NUMERIC_SETTINGS.items():
            value = getattr(self, name)
            if (value is None and optional) or (isinstance(value, numbers.Real) and not isinstance(value, bool)):
                continue
            raise ValueError(f"{name} must be a number{' or None' if optional else ''}, got {value!r}")

    def _check_inherited_settings(self) -> None:
        """Raises for a `DPOConfig` / `TrainingArguments` setting that `RPATrainer` does not use or that has no meaning
        for an embedder; `model_init_kwargs` is made a plain dict."""
        # transformers parses a JSON string only when it starts with "{": '[1, 2]' would stay a string until loading
        if isinstance(self.model_init_kwargs, Mapping):
            self.model_init_kwargs = dict(self.model_init_kwargs)  # an OmegaConf DictConfig, say
        elif self.model_init_kwargs is not None:
            raise ValueError(
                f"model_init_kwargs must be a mapping of from_pretrained arguments (CLI: a JSON object such as "
                f"'{{\"dtype\": \"bfloat16\"}}'), got {self.model_init_kwargs!r:.80}"
            )
        if self.loss_type != ["sigmoid"]:
            raise ValueError(
                f"loss_type {self.loss_type} is not available for embedders: RPA is the margin-weighted 'sigmoid' "
                "loss; choose between its pairwise and listwise forms with `rpa_loss`."
            )
        if self.loss_weights not in (None, [1.0]):
            raise ValueError(
                f"loss_weights={self.loss_weights} is not used by RPATrainer: RPA is one loss, mixed with InfoNCE by "
                "`rpa_weight`; leave loss_weights at None."
            )
        for name, supported in _LANGUAGE_MODEL_ONLY_DEFAULTS.items():
            if getattr(self, name) != supported:
                raise ValueError(
                    f"{name}={getattr(self, name)!r} acts on token log-probabilities of a language model and has no "
                    f"meaning for an embedder; leave it at {supported!r}."
                )
        for name, supported in _TOKEN_COLLATION_DEFAULTS.items():
            if getattr(self, name) not in supported:
                raise ValueError(
                    f"{name}={getattr(self, name)!r} configures DPO's token collator, which RPATrainer does not use: "
                    f"texts are padded and truncated by the model's processor (MapleProcessor's max_text_length and "
                    f"text_padding); leave it at {supported[0]!r}."
                )
        if self.train_sampling_strategy in ("group_by_length", "batch_rebalance"):
            raise ValueError(
                f"train_sampling_strategy={self.train_sampling_strategy!r} orders rows by their token length, which a "
                "preference row (an image, a caption and candidate lists) does not have: use 'random' (the default) "
                "or 'sequential'."
            )


def from_pretrained_kwargs(
    model_init_kwargs: dict | None, trust_remote_code: bool = False, token: str | None = None
) -> dict:
    """`from_pretrained` arguments from `RPAConfig.model_init_kwargs`, with `trust_remote_code` and `token` (`RPAConfig`'s
    `hub_token`, which reads a Hub model as it pushes) unless they name them. As in TRL, the weights are float32 unless a
    dtype is given ("bfloat16" names one; "auto" keeps the checkpoint's, which transformers 5 would take by default:
    bf16 for a bf16 checkpoint, where updates below its resolution are lost). `torch_dtype`, transformers' former
    name still in many TRL recipes, counts as `dtype`. A string that names no torch dtype, and a dict of one dtype per
    sub-config, are ValueErrors."""
    kwargs = {"trust_remote_code": trust_remote_code, "token": token, **(model_init_kwargs or {})}
    if "backbone" in kwargs:  # `load_maple`'s own argument, not one of `from_pretrained`
        raise ValueError("'backbone' is not a from_pretrained argument: pass `maple train --backbone`, or build the model "
                         "with MapleModel.from_backbone")
    if "torch_dtype" in kwargs:
        kwargs["dtype"] = kwargs.pop("torch_dtype")
    kwargs.setdefault("dtype", "float32")
    dtype = kwargs["dtype"]
    if isinstance(dtype, Mapping):  # transformers 5 loads every module in the dict's "" entry, with a warning only
        raise ValueError(f"dtype {dict(dtype)!r}: one dtype per sub-config is not available (transformers 5 loads every "
                         "module in one dtype): give one, e.g. 'bfloat16'")
    if dtype != "auto" and not isinstance(dtype, torch.dtype):
        if not isinstance(dtype, str) or not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"dtype {dtype!r} is not a torch dtype; e.g. 'bfloat16', 'float32' or 'auto'")
        kwargs["dtype"] = getattr(torch, dtype)
    return kwargs


# The `from_pretrained` arguments that carry a Hub token (`use_auth_token`: transformers' former name)
_TOKEN_ARGUMENTS = ("token", "use_auth_token")


def _without_tokens(model_init_kwargs: dict | None, placeholder: str | None) -> dict | None:
    """`model_init_kwargs` with the Hub tokens it names (`_TOKEN_ARGUMENTS`) replaced by `placeholder`, or left out
    when that is None."""
    if not model_init_kwargs:
        return model_init_kwargs
    kept = {key: value for key, value in model_init_kwargs.items() if key not in _TOKEN_ARGUMENTS}
    if placeholder is not None:
        kept.update({key: placeholder for key in _TOKEN_ARGUMENTS if key in model_init_kwargs})
    return kept


def _names_a_loss(metric: str) -> bool:
    """Whether `metric` (as `metric_for_best_model` names it, with or without its "eval_" prefix) is a loss or a loss
    term: "loss", "eval_loss", "eval_test_loss", "loss/rpa", "eval_loss/contrastive"."""
    return re.search(r"(^|_)loss(/|$)", metric) is not None
