"""Load the embedder to evaluate from a local folder or a Hub repo id, with clear errors.

Models load through `modeling_maple.load_maple`, as in training: MAPLE checkpoints (`model_type: maple`)
through `AutoModel`/`AutoProcessor`, plain CLIP/SigLIP checkpoints and those of a supported MLLM family
wrapped with `MapleModel.from_backbone`, so baselines are evaluated by the same code path. LoRA adapters
load onto their base.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from maple.files import expanded_path
from maple.hub import hub_failure, hub_repo, is_hub_id, local_typo_hint, token_problem

if TYPE_CHECKING:
    from modeling_maple import MapleProcessor

MAPLE_MODEL_TYPE = "maple"


class ModelLoadError(RuntimeError):
    """A model reference that is missing, unreachable, or not an embedder MAPLE can evaluate."""


CONFIG_FILE = "config.json"
ADAPTER_CONFIG_FILE = "adapter_config.json"  # a PEFT (LoRA) adapter over a base checkpoint


def check_model_ref(model_ref: str) -> None:
    """Raise `ModelLoadError` when `model_ref` can only be a local folder and is not one: a check
    that costs nothing, so a command can make it for every model before loading the first."""
    path = expanded_path(model_ref)
    if path.exists() and not path.is_dir():
        raise ModelLoadError(f"{model_ref} is a file; expected a checkpoint folder or a Hub repo id")
    if not path.exists() and not is_hub_id(model_ref):
        raise ModelLoadError(f"no such folder: {model_ref}")


def hub_checkpoint_config_file(repo_id: str, revision: str | None = None, token: str | None = None) -> Path:
    """The config.json, else adapter_config.json, of a Hub model repo at `revision`, in the cache's
    snapshots/<commit>/ folder, read with `token` (None: HF_TOKEN or the saved login); Hub failures become
    `ModelLoadError`s naming the repo and what the Hub answered (`maple.hub.hub_failure`). Offline or unreachable, a
    repo downloaded before is read from the cache. A `token` that cannot be sent (`maple.hub.token_problem`) is a
    `ModelLoadError` saying why, without the token, before any request."""
    # httpx would refuse to send it (read as an unreachable Hub) or fail to encode it (a UnicodeEncodeError naming no
    # problem); huggingface_hub's token=True/False pass unchecked
    if (problem := token_problem(token)) is not None:
        raise ModelLoadError(f"token: {problem}; {hub_repo(repo_id)} was not read")
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )
    from huggingface_hub.utils import httpx

    try:
        # The info call is not retried, so an unreachable or failing Hub is reported at once.
        files = {sibling.rfilename for sibling in HfApi(token=token).model_info(repo_id, revision=revision).siblings or []}
        name = next((name for name in (CONFIG_FILE, ADAPTER_CONFIG_FILE) if name in files), None)
        if name is None:
            raise ModelLoadError(
                f"{hub_repo(repo_id)} has neither {CONFIG_FILE} nor {ADAPTER_CONFIG_FILE}: not a transformers checkpoint"
            )
        return Path(hf_hub_download(repo_id, name, revision=revision, token=token))
    except (OfflineModeIsEnabled, httpx.TransportError, LocalEntryNotFoundError, HfHubHTTPError) as error:
        problem = hub_failure(error, repo_id, revision=revision)
        if problem is None:
            raise
        if isinstance(error, HfHubHTTPError):
            missing = isinstance(error, RepositoryNotFoundError) and not isinstance(error, GatedRepoError)
            raise ModelLoadError(problem + (local_typo_hint(repo_id) if missing else "")) from error
        # Offline (HF_HUB_OFFLINE) or unreachable: a repo downloaded before still loads from the cache.
        for name in (CONFIG_FILE, ADAPTER_CONFIG_FILE):
            try:
                return Path(hf_hub_download(repo_id, name, revision=revision, local_files_only=True))
            except LocalEntryNotFoundError:
                continue
        raise ModelLoadError(problem + local_typo_hint(repo_id)) from error


def _local_checkpoint_config_file(folder: Path) -> Path:
    """The config.json, else adapter_config.json, of a checkpoint folder."""
    for name in (CONFIG_FILE, ADAPTER_CONFIG_FILE):
        if (folder / name).is_file():
            return folder / name
    raise ModelLoadError(f"{folder} has neither {CONFIG_FILE} nor {ADAPTER_CONFIG_FILE}: not a transformers checkpoint folder")


def checkpoint_config_file(model_ref: str, revision: str | None = None, token: str | None = None) -> Path:
    """The config.json, else adapter_config.json, of `model_ref`, a local folder or a Hub repo id (read from the
    cache offline), whatever model it holds: a `ModelLoadError` naming the folder or repo when it is missing, holds
    neither file (a folder of images, say), or cannot be read. Reads no weights; a Hub repo with `token` (None: HF_TOKEN
    or the saved login)."""
    check_model_ref(model_ref)
    folder = expanded_path(model_ref)
    return _local_checkpoint_config_file(folder) if folder.is_dir() else hub_checkpoint_config_file(model_ref, revision, token)


def checkpoint_config(model_ref: str, revision: str | None = None, token: str | None = None) -> tuple[str, dict[str, Any]]:
    """(file name, content) of the config.json, else adapter_config.json, of `model_ref`, a local folder
    or a Hub repo id, after checking that it is an embedder MAPLE can evaluate: a MAPLE checkpoint, a
    backbone `MapleModel.from_backbone` wraps, or a LoRA adapter over one (its base is checked too).
    Reads configs only, so a command can check every model before loading the first; Hub repos with `token` (None:
    HF_TOKEN or the saved login).

    Raises `ModelLoadError` naming the folder or repo when it is missing, cannot be read or is of
    another kind. Offline, a Hub repo downloaded before is read from the local cache.
    """
    config_file = checkpoint_config_file(model_ref, revision, token)
    name = config_file.name
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as error:
        raise ModelLoadError(f"{config_file} is not valid JSON: {error}") from error
    if name == ADAPTER_CONFIG_FILE:
        base_ref = config.get("base_model_name_or_path")
        if not base_ref:
            raise ModelLoadError(f"{model_ref!r}: {ADAPTER_CONFIG_FILE} does not name its base model (base_model_name_or_path)")
        checkpoint_config(base_ref, config.get("revision"), token)  # PEFT records the base's revision when it was given one
        return name, config
    from modeling_maple.configuration_maple import DUAL_ENCODER_MODEL_TYPES, SUPPORTED_MLLMS, backbone_of

    model_type = config.get("model_type")
    if model_type != MAPLE_MODEL_TYPE and backbone_of(model_type) is None:
        raise ModelLoadError(
            f"{model_ref!r} is a {model_type!r} checkpoint; expected a MAPLE checkpoint (model_type 'maple') "
            f"or a backbone MAPLE can wrap: {', '.join(DUAL_ENCODER_MODEL_TYPES + SUPPORTED_MLLMS)}"
        )
    return name, config


def _maple_load_error(model_ref: str, error: Exception) -> ModelLoadError:
    """A `MapleLoadError` of loading `model_ref` (its message starts with the checkpoint it is about) as a
    `ModelLoadError`, the one error the commands report in a line."""
    return ModelLoadError(str(error) if str(error).startswith(f"{model_ref}: ") else f"{model_ref}: {error}")


def load_processor(
    model_ref: str,
    image_processor_kwargs: dict[str, Any] | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    token: str | None = None,
) -> MapleProcessor:
    """The processor [`load_embedder`] gives `model_ref` (a LoRA adapter's: its base's), its image processor's settings
    overridden by `image_processor_kwargs`, loaded alone (no weights), so a command can load every model's before the
    first model loads and pass each to `load_embedder`. Raises `ModelLoadError` naming the model for a processor that
    cannot be loaded (a checkpoint saved without one), a setting of `image_processor_kwargs` its image processor does
    not have, or one the model cannot take. `model_ref` is one `checkpoint_config` accepted."""
    name, config = checkpoint_config(model_ref, revision, token)
    if name == ADAPTER_CONFIG_FILE:
        try:
            return load_processor(config["base_model_name_or_path"], image_processor_kwargs, config.get("revision"),
                                  trust_remote_code, token)
        except ModelLoadError as error:
            raise ModelLoadError(f"{model_ref}: its base model {error}") from error
    from modeling_maple import MapleLoadError, load_maple_processor

    try:
        return load_maple_processor(model_ref, revision=revision, trust_remote_code=trust_remote_code, token=token,
                                    image_processor_kwargs=image_processor_kwargs)
    except MapleLoadError as error:
        raise _maple_load_error(model_ref, error) from error


def load_embedder(
    model_ref: str,
    revision: str | None = None,
    trust_remote_code: bool = False,
    dtype: str = "float32",
    token: str | None = None,
    image_processor_kwargs: dict[str, Any] | None = None,
    processor: MapleProcessor | None = None,
) -> tuple[Any, MapleProcessor]:
    """(model, processor) for `model_ref`, a local folder or a Hub repo id, in eval mode.

    A LoRA adapter (adapter_config.json, as `PeftModel.save_pretrained` writes) is loaded onto its
    base checkpoint (`base_model_name_or_path`), itself resolved by this function. Weights load in `dtype`
    ("float32" or "bfloat16"), MAPLE checkpoints and backbones (wrapped by `from_backbone`) alike, so a
    baseline and its fine-tune are scored at one precision; MAPLE's heads and logit scales stay float32.
    `image_processor_kwargs` override the image processor's settings (a LoRA adapter's: its base's), e.g.
    `{"max_pixels": 392 * 392}` for a Qwen-VL backbone, so a baseline is scored at the resolution its fine-tune was
    trained at (`modeling_maple.load_maple`). `processor`: the one [`load_processor`] loaded for this model (with the
    settings wanted), returned as it is instead of loaded again. `trust_remote_code` runs code a checkpoint's repo
    holds (a config or processor of its own, `auto_map`): a MAPLE checkpoint loads with this package's classes and the
    backbones MAPLE wraps are transformers' own. Hub repos are read with `token` (None: HF_TOKEN or the saved login).
    Errors are `ModelLoadError`s, raised before any weights load: those of [`checkpoint_config`] and
    [`load_processor`].
    """
    if processor is None:  # first: what is wrong with it shows before any weights load
        processor = load_processor(model_ref, image_processor_kwargs, revision, trust_remote_code, token)
    return _load_model(model_ref, revision, trust_remote_code, dtype, token), processor


def _load_model(model_ref: str, revision: str | None, trust_remote_code: bool, dtype: str, token: str | None):
    """The model of [`load_embedder`] alone, in eval mode."""
    name, config = checkpoint_config(model_ref, revision, token)
    if name == ADAPTER_CONFIG_FILE:
        from peft import PeftModel

        try:
            base = _load_model(config["base_model_name_or_path"], config.get("revision"), trust_remote_code, dtype, token)
        except ModelLoadError as error:  # its base's weights (its config was checked above)
            raise ModelLoadError(f"{model_ref}: its base model {error}") from error
        # the folder the checks read: PEFT would take "~/adapter" for a Hub id
        folder = expanded_path(model_ref)
        adapter = str(folder) if folder.is_dir() else model_ref
        return PeftModel.from_pretrained(base, adapter, revision=revision, token=token).eval()
    import torch
    from modeling_maple import MapleLoadError, load_maple_model

    try:
        # An explicit dtype: transformers 5 would load a bf16 checkpoint in bf16 whatever the baseline's.
        model = load_maple_model(model_ref, revision=revision, trust_remote_code=trust_remote_code, token=token,
                                 dtype=getattr(torch, dtype))
    except MapleLoadError as error:
        raise _maple_load_error(model_ref, error) from error
    return model.eval()
