"""`load_maple`: a (MapleModel, MapleProcessor) pair from any checkpoint MAPLE can embed with.

The one loading path of `maple train`, `RPATrainer(model="...")` and `maple eval`: a MAPLE checkpoint
loads through the Auto classes; a supported MLLM or CLIP/SigLIP checkpoint is wrapped with
`MapleModel.from_backbone` / `MapleProcessor.from_backbone`, so a baseline and its fine-tune are loaded alike.

```python
model, processor = load_maple("user/maple-qwen2vl-2b")                      # a MAPLE checkpoint
model, processor = load_maple("openai/clip-vit-base-patch16", dtype=torch.bfloat16)   # wrapped as a dual encoder
```
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from transformers import AutoConfig, AutoModel, AutoProcessor, PreTrainedConfig

from maple.hub import hub_failure, hub_repo, is_hub_id, local_typo_hint, token_problem

from .configuration_maple import (
    BACKBONES,
    DUAL_ENCODER_MODEL_TYPES,
    SUPPORTED_MLLMS,
    CausalClsPoolingError,
    MapleConfig,
    backbone_of,
)
from .modeling_maple import MapleModel, is_two_tower, refuse_causal_cls_pooling
from .processing_maple import (
    MapleProcessor,
    dual_encoder_image_processor_problem,
    load_image_processor,
    mllm_image_processor_problem,
)

# What `MapleModel.from_backbone` forwards to the backbones' `from_pretrained` (besides `revision` and `token`).
BACKBONE_LOADING_KWARGS = ("dtype", "attn_implementation")
# `from_pretrained` arguments that say where a checkpoint's files are read from, not how its weights load: a MAPLE
# checkpoint's config and processor, and AutoModel's look for a PEFT adapter, are read with them as its weights are (a
# checkpoint in a subfolder of a repo, in a cache folder of its own), not from the repo's top folder or the default
# cache, nor from the Hub with `local_files_only`.
FILE_LOADING_KWARGS = ("subfolder", "cache_dir", "force_download", "local_files_only", "proxies")
# `from_pretrained` arguments that `AutoModel.from_pretrained` does not read a checkpoint's config with (besides
# `FILE_LOADING_KWARGS`, and a `dtype` of "auto"): it reads each other one as an override of a saved value.
NOT_CONFIG_OVERRIDE_KWARGS = ("config", "code_revision", "_commit_hash", "adapter_kwargs", "quantization_config")
# `load_maple` takes one checkpoint: a vision encoder paired with a text encoder is built once, saved, then loaded.
PAIRING_ADVICE = (
    "; to pair a vision encoder with a text encoder, build the embedder with MapleModel.from_backbone(<vision "
    "encoder>, backbone='dual_encoder', text_backbone=<text encoder>) and MapleProcessor.from_backbone with the same "
    "arguments, save both to one folder with save_pretrained, and load that folder"
)


class MapleLoadError(ValueError):
    """A checkpoint `load_maple` cannot read, or cannot tell how to embed with."""


class ConfigOverrideError(MapleLoadError):
    """`from_pretrained` arguments that set fields of a MAPLE checkpoint's config (`pooling="bogus"`) which its config
    refuses, though it reads as saved."""


class BackboneLoadingError(MapleLoadError):
    """`from_pretrained` arguments that a backbone, wrapped by `MapleModel.from_backbone`, cannot take."""


def load_maple(
    name_or_path: str,
    *,
    backbone: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    backend: str | None = None,
    token: str | None = None,
    image_processor_kwargs: dict[str, Any] | None = None,
    **from_pretrained_kwargs: Any,
) -> tuple[MapleModel, MapleProcessor]:
    """The MAPLE embedder and processor of `name_or_path`, a local folder or a Hub repo id.

    Args:
        name_or_path: a MAPLE checkpoint (`model_type: maple`), or a backbone checkpoint to build one from.
        backbone: `"mllm"` or `"dual_encoder"` for a backbone checkpoint; inferred for the supported MLLMs and
            CLIP/SigLIP (`backbone_of`), ignored for a MAPLE checkpoint.
        revision: the Hub revision of the weights; the config and processor come from the same one.
        trust_remote_code: passed to the Auto classes (a MAPLE checkpoint carries its code; this package's
            classes are registered, so it is not needed where the package is imported).
        backend: the image processor's backend, `"pil"` or `"torchvision"` (None: a MAPLE checkpoint's the one it was
            saved with, else transformers' choice, torchvision's where it is installed).
        token: the Hub token every file is read with (None: HF_TOKEN or the saved login, as in transformers).
        image_processor_kwargs: image processor settings that override the checkpoint's, e.g. `{"max_pixels": 392 *
            392}` for a Qwen-VL backbone (the paper's 384 x 384 training images, which Qwen2-VL sizes 392 x 392); a MAPLE checkpoint's processor is
            rebuilt around the image processor loaded with them. One the image processor does not have, or one the
            model cannot take (a LLaVA-NeXT processor cutting other tiles than its config; images of another size than
            a fixed-size vision tower's `image_size`), is a `MapleLoadError`.
        from_pretrained_kwargs: for a MAPLE checkpoint any `from_pretrained` argument (`dtype`, `device_map`,
            ...), those that say where its files are (`FILE_LOADING_KWARGS`: `subfolder`, `cache_dir`, ...) applying
            to its config, its processor and the look for a PEFT adapter too; for a backbone only `dtype` and
            `attn_implementation`.

    Raises:
        MapleLoadError: before any weights load, with a message that starts with `name_or_path`: a Hub repo's
            `token` cannot be sent (empty, or holding a space, a line break or a character outside printable ASCII:
            `maple.hub.token_problem`; said before any request, without the token), the config cannot be read
            (missing, offline and not cached, gated, an HTTP error from the Hub: `maple.hub.hub_failure`; of no known
            model type; a `subfolder` that is not there, has no config.json, or is not in the cache of an
            offline Hub, named as such), the checkpoint is neither MAPLE's nor one whose backbone is known or given,
            it is a MAPLE dual encoder pooling a causal text tower's first token (`pooling="cls"`, saved or asked by
            a config override in `from_pretrained_kwargs`, which apply as `from_pretrained` applies them: one saved so
            loads with `pooling="mean"`), or it cannot be the backbone given (an encoder that is not a supported MLLM
            as `"mllm"`, one without a text tower as `"dual_encoder"`), or its processor cannot be built
            (`image_processor_kwargs` holding a setting the image processor does not have; an image processor the model
            cannot take); `BackboneLoadingError` for a `from_pretrained` argument a backbone cannot take.
    """
    name_or_path = _local(name_or_path)
    # the config read once
    backbone, config = _checkpoint(name_or_path, backbone, revision, trust_remote_code, token, from_pretrained_kwargs)
    # the processor first: what is wrong with it (a setting its image processor lacks, one the model cannot take)
    # shows before any weights load
    processor = _load_processor(
        name_or_path, backbone, config, revision, trust_remote_code, backend, token, image_processor_kwargs,
        _file_loading_kwargs(from_pretrained_kwargs),
    )
    return _load_model(name_or_path, backbone, revision, trust_remote_code, token, from_pretrained_kwargs), processor


def load_maple_model(
    name_or_path: str,
    *,
    backbone: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    token: str | None = None,
    **from_pretrained_kwargs: Any,
) -> MapleModel:
    """The embedder of [`load_maple`] alone, for a caller that has its processor (a checkpoint may be saved
    without one)."""
    name_or_path = _local(name_or_path)
    backbone, _ = _checkpoint(name_or_path, backbone, revision, trust_remote_code, token, from_pretrained_kwargs)
    return _load_model(name_or_path, backbone, revision, trust_remote_code, token, from_pretrained_kwargs)


def load_maple_processor(
    name_or_path: str,
    *,
    backbone: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    backend: str | None = None,
    token: str | None = None,
    image_processor_kwargs: dict[str, Any] | None = None,
    **file_loading_kwargs: Any,
) -> MapleProcessor:
    """The processor of [`load_maple`] alone, a MAPLE checkpoint's files read from where `file_loading_kwargs` say
    (`FILE_LOADING_KWARGS`: `subfolder`, `cache_dir`, ..., as [`load_maple`] takes them; the weights' arguments, such as
    `dtype`, are a TypeError; any for a backbone a `BackboneLoadingError`)."""
    not_file_loading = sorted(set(file_loading_kwargs) - set(FILE_LOADING_KWARGS))
    if not_file_loading:
        raise TypeError(
            f"load_maple_processor() got unexpected keyword arguments {', '.join(not_file_loading)}: it takes, besides "
            f"its own, only those that say where the checkpoint's files are ({', '.join(FILE_LOADING_KWARGS)})"
        )
    name_or_path = _local(name_or_path)
    backbone, config = _checkpoint(
        name_or_path, backbone, revision, trust_remote_code, token, file_loading_kwargs, processor_only=True
    )
    return _load_processor(
        name_or_path, backbone, config, revision, trust_remote_code, backend, token, image_processor_kwargs,
        file_loading_kwargs,
    )


def _load_model(
    name_or_path: str,
    backbone: str | None,
    revision: str | None,
    trust_remote_code: bool,
    token: str | None,
    from_pretrained_kwargs: dict,
) -> MapleModel:
    """The model of a checkpoint whose backbone `_checkpoint` resolved (None: a MAPLE checkpoint) and whose
    `from_pretrained_kwargs` it checked."""
    if backbone is None:
        # AutoModel first looks for a PEFT adapter's adapter_config.json, with `revision` and `token` only unless
        # `adapter_kwargs` say where the files are: it looked in the default cache and the repo's top folder, and asked
        # the Hub even with `local_files_only` (some 20 s of retries where the Hub is unreachable). A caller's own
        # `adapter_kwargs` win.
        own_adapter_kwargs = from_pretrained_kwargs.get("adapter_kwargs") or {}
        adapter_kwargs = _file_loading_kwargs(from_pretrained_kwargs) | own_adapter_kwargs
        try:
            return AutoModel.from_pretrained(
                name_or_path, revision=revision, trust_remote_code=trust_remote_code, token=token,
                **(from_pretrained_kwargs | {"adapter_kwargs": adapter_kwargs}),
            )
        except CausalClsPoolingError as error:  # asked by a `config` given as a path, which `_checkpoint` does not read
            raise MapleLoadError(f"{name_or_path}: {error}") from error
    return MapleModel.from_backbone(name_or_path, backbone=backbone, revision=revision, token=token, **from_pretrained_kwargs)


def _load_processor(
    name_or_path: str,
    backbone: str | None,
    config: PreTrainedConfig,
    revision: str | None,
    trust_remote_code: bool,
    backend: str | None,
    token: str | None,
    image_processor_kwargs: dict[str, Any] | None,
    file_loading_kwargs: dict[str, Any],
) -> MapleProcessor:
    """The processor of a checkpoint of `config` whose backbone `_checkpoint` resolved (None: a MAPLE checkpoint), its
    image processor loaded with `image_processor_kwargs`, its files read as `file_loading_kwargs` say (a MAPLE
    checkpoint's; `_checkpoint` refuses them for a backbone); a `MapleLoadError` for an image processor that cannot
    feed the model (`MapleProcessor.from_backbone`'s checks) or a setting it does not have or fails on."""
    if backbone is not None:
        try:
            return MapleProcessor.from_backbone(name_or_path, backbone=backbone, revision=revision, backend=backend,
                                                token=token, image_processor_kwargs=image_processor_kwargs)
        except ValueError as error:  # its own checks name the checkpoint
            message = str(error) if str(error).startswith(f"{name_or_path}: ") else f"{name_or_path}: {error}"
            raise MapleLoadError(message) from error
        except OSError as error:  # transformers' for a backbone without image processor or tokenizer files
            raise MapleLoadError(f"{name_or_path}: its processor cannot be loaded ({' '.join(str(error).split())})") from error
    loading = dict(revision=revision, trust_remote_code=trust_remote_code, backend=backend, token=token, **file_loading_kwargs)
    try:
        processor = AutoProcessor.from_pretrained(name_or_path, **loading)
    except (OSError, ValueError) as error:  # e.g. a checkpoint saved without its processor
        problem = " ".join(str(error).split())
        raise MapleLoadError(f"{name_or_path}: its processor cannot be loaded ({problem}); save the processor with "
                             "the model, or load the model alone with load_maple_model and pass a processor") from error
    if not image_processor_kwargs:
        return processor
    # the backend of the processor loaded as saved (`MapleProcessor.from_pretrained` follows the one it was saved with;
    # torchvision's and PIL's resizing differ)
    loading["backend"] = backend or processor.image_processor.backend
    try:
        image_processor = load_image_processor(name_or_path, image_processor_kwargs, **loading)
    except ValueError as error:  # it names the checkpoint
        raise MapleLoadError(str(error)) from error
    if config.backbone == "mllm":
        problem = mllm_image_processor_problem(config.mllm_config, image_processor)
    else:
        problem = dual_encoder_image_processor_problem(config.vision_config, image_processor)
    if problem is not None:
        raise MapleLoadError(f"{name_or_path}: {problem}")
    # as `from_pretrained` builds it, around the new image processor: the processor's own settings are kept
    return type(processor).from_args_and_dict([image_processor, processor.tokenizer], processor.to_dict())


def _local(name_or_path: str) -> str:
    """`name_or_path` with `~` expanded where that names a local path (transformers would read "~/ckpt" as a Hub
    id); else as given."""
    expanded = os.path.expanduser(name_or_path)
    return expanded if expanded != name_or_path and os.path.exists(expanded) else name_or_path


def _file_loading_kwargs(from_pretrained_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The arguments among `from_pretrained_kwargs` that say where the checkpoint's files are (`FILE_LOADING_KWARGS`)."""
    return {key: value for key, value in from_pretrained_kwargs.items() if key in FILE_LOADING_KWARGS}


def _config_overrides(from_pretrained_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The arguments among `from_pretrained_kwargs` that `AutoModel.from_pretrained` reads a checkpoint's config with,
    each overriding a saved value (`pooling`, `text_config`: `MapleConfig.from_dict`) or, where the config has no such
    field, going on to the model: all but `FILE_LOADING_KWARGS`, `NOT_CONFIG_OVERRIDE_KWARGS` and a `dtype` of "auto"."""
    return {
        key: value
        for key, value in from_pretrained_kwargs.items()
        if key not in FILE_LOADING_KWARGS + NOT_CONFIG_OVERRIDE_KWARGS
        and not (key in ("dtype", "torch_dtype") and isinstance(value, str) and value == "auto")
    }


def _hub_lacks_config(repo_id: str, subfolder: str, revision: str | None, cache_dir: str | None) -> bool:
    """Whether the Hub answered that `subfolder` of repo `repo_id` has no config.json (an HTTP 404,
    `RemoteEntryNotFoundError`): transformers reads that answer as a config without a model type, and keeps no Hub
    error for `hub_failure` to read. huggingface_hub records the answer in the cache (`.no_exist`), so the cache is
    asked, not the Hub: asking again cost some 20 s of retries where the Hub is unreachable, and offline, where the
    Hub cannot be asked, the cache holds its last answer."""
    from huggingface_hub import _CACHED_NO_EXIST, try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, f"{subfolder}/config.json", cache_dir=cache_dir, revision=revision)
    return cached is _CACHED_NO_EXIST


def _read_config(
    name_or_path: str,
    revision: str | None,
    trust_remote_code: bool,
    token: str | None,
    file_loading_kwargs: dict[str, Any],
    config_overrides: dict[str, Any] | None = None,
) -> PreTrainedConfig:
    """The checkpoint's config, read from where `file_loading_kwargs` say, with `config_overrides` applied as
    `AutoModel.from_pretrained` applies them (`_config_overrides`; those it has no field for are left out); a
    `MapleLoadError` for one that cannot be read, but a `CausalClsPoolingError` as `MapleConfig` raises it (a MAPLE
    config pooling a causal text tower's first token), for `_checkpoint` to tell."""
    subfolder = file_loading_kwargs.get("subfolder") or ""
    try:
        config, _ = AutoConfig.from_pretrained(
            name_or_path, trust_remote_code=trust_remote_code, revision=revision, token=token, return_unused_kwargs=True,
            **file_loading_kwargs, **(config_overrides or {}),
        )
    except CausalClsPoolingError:
        raise
    except (OSError, ValueError) as error:  # transformers says which: not found, gated, offline, unknown model type
        # except for a Hub answer, such as an HTTP 500, that it reads as "couldn't connect"
        problem = hub_failure(error, name_or_path, revision=revision, subfolder=subfolder)
        if problem is None and subfolder and not Path(name_or_path).is_dir() and _hub_lacks_config(
            name_or_path, subfolder, revision, file_loading_kwargs.get("cache_dir")
        ):
            problem = f"subfolder {subfolder!r} of {hub_repo(name_or_path)} has no config.json"
        if problem is None:  # transformers' own words, which name the repo alone
            where = f"subfolder {subfolder!r}: " if subfolder else ""
            problem = where + " ".join(str(error).split())
        raise MapleLoadError(f"{name_or_path}: {problem}{local_typo_hint(name_or_path)}") from error
    return config


def _with_config_overrides(
    name_or_path: str, config: PreTrainedConfig, config_overrides: dict[str, Any]
) -> PreTrainedConfig:
    """`config`, read as saved, with `config_overrides` applied as `AutoModel.from_pretrained` applies them to the
    config it reads (`from_dict`; those it has no field for are left out), built from `config`'s values rather than
    read again: a Hub checkpoint's config was asked for twice. A `MapleLoadError` for overrides the config refuses,
    but a `CausalClsPoolingError` as `MapleConfig` raises it, for `_checkpoint` to tell."""
    try:
        config, _ = type(config).from_dict(config.to_dict(), return_unused_kwargs=True, **config_overrides)
    except CausalClsPoolingError:
        raise
    except ValueError as error:
        raise MapleLoadError(f"{name_or_path}: {' '.join(str(error).split())}") from error
    return config


def _taken(config: PreTrainedConfig) -> bool:
    """Whether a MAPLE `config` read is one a model is built from (`refuse_causal_cls_pooling` refuses it not)."""
    try:
        refuse_causal_cls_pooling(config)
    except CausalClsPoolingError:
        return False
    return True


def _checkpoint(
    name_or_path: str,
    backbone: str | None,
    revision: str | None,
    trust_remote_code: bool,
    token: str | None,
    from_pretrained_kwargs: dict[str, Any],
    processor_only: bool = False,
) -> tuple[str | None, PreTrainedConfig]:
    """(backbone, config) of the checkpoint: the backbone None for a MAPLE checkpoint, else the one to wrap it as
    (given or inferred); `MapleLoadError`s as [`load_maple`] says, and a `BackboneLoadingError` for
    `from_pretrained_kwargs` a backbone cannot take (`processor_only`: its processor, which takes none). Reads the
    config only, from where `from_pretrained_kwargs` say; a MAPLE checkpoint's as its model is built, with the config
    overrides among them (`_config_overrides`), or for `processor_only` as saved."""
    if not Path(name_or_path).exists():
        if not is_hub_id(name_or_path):  # './x', '/x', 'a/b/c'
            raise MapleLoadError(f"{name_or_path}: no such folder")
        # refused before any request: httpx would refuse to send it (read as an unreachable Hub) or fail to encode it
        # (a UnicodeEncodeError naming no problem); huggingface_hub's token=True/False pass unchecked
        if (problem := token_problem(token)) is not None:
            raise MapleLoadError(f"{name_or_path}: token: {problem}; it was not read")
    subfolder = from_pretrained_kwargs.get("subfolder") or ""
    # (transformers reads a subfolder without config.json, or none at all, as a config without a model type:
    # "Unrecognized model in <repo>")
    if subfolder and Path(name_or_path).is_dir():
        if not (Path(name_or_path) / subfolder).is_dir():
            raise MapleLoadError(f"{name_or_path}: no subfolder {subfolder!r}")
        if not (Path(name_or_path) / subfolder / "config.json").is_file():
            raise MapleLoadError(f"{name_or_path}: no config.json in subfolder {subfolder!r}")
    file_loading_kwargs = _file_loading_kwargs(from_pretrained_kwargs)
    try:
        config = _read_config(name_or_path, revision, trust_remote_code, token, file_loading_kwargs)
    except CausalClsPoolingError:  # a MAPLE config saved with pooling='cls' on a causal tower before that was refused
        config = None
    if config is None or config.model_type == MapleConfig.model_type:
        if processor_only:
            # its processor reads no pooling: a config refused for it is read with one that every text tower takes
            if config is None:
                config = _read_config(name_or_path, revision, trust_remote_code, token, file_loading_kwargs,
                                      {"pooling": "mean"})
            return None, config
        if isinstance(given := from_pretrained_kwargs.get("config"), MapleConfig):  # built as given, not as saved
            try:
                refuse_causal_cls_pooling(given)
            except CausalClsPoolingError as error:
                raise ConfigOverrideError(f"{name_or_path}: the config given: {error}") from error
            return None, given
        # as `from_pretrained` builds the model: with the caller's overrides, which may set a refused pooling right
        config_overrides, saved = _config_overrides(from_pretrained_kwargs), config
        try:
            if config is None:  # refused as saved: read again, as the model is built
                config = _read_config(name_or_path, revision, trust_remote_code, token, file_loading_kwargs,
                                      config_overrides)
            elif config_overrides:
                config = _with_config_overrides(name_or_path, config, config_overrides)
            refuse_causal_cls_pooling(config)
        except (CausalClsPoolingError, MapleLoadError) as error:
            # the checkpoint taken as saved: the caller's overrides are what the config refuses
            if config_overrides and saved is not None and _taken(saved):
                detail = str(error).removeprefix(f"{name_or_path}: ")  # (a MapleLoadError names the checkpoint)
                raise ConfigOverrideError(
                    f"{name_or_path}: config overrides {sorted(config_overrides)}: {detail}"
                ) from error
            if isinstance(error, MapleLoadError):
                raise
            raise MapleLoadError(f"{name_or_path}: {error}") from error
        return None, config
    backbone = backbone or backbone_of(config.model_type)
    if backbone is None:
        raise MapleLoadError(
            f"{name_or_path}: a {config.model_type!r} checkpoint, neither a MAPLE one nor a backbone MAPLE knows (MLLMs: "
            f"{', '.join(SUPPORTED_MLLMS)}; two-tower image-text models: {', '.join(DUAL_ENCODER_MODEL_TYPES)}); name "
            "the backbone of another two-tower image-text model, 'dual_encoder' (`maple train --backbone dual_encoder`, "
            f"`load_maple(backbone='dual_encoder')`){PAIRING_ADVICE}"
        )
    if backbone not in BACKBONES:
        raise MapleLoadError(f"{name_or_path}: unknown backbone {backbone!r}, expected one of {', '.join(BACKBONES)}")
    # What `MapleModel.from_backbone` would refuse only once the weights are loaded.
    if backbone == "mllm" and config.model_type not in SUPPORTED_MLLMS:
        raise MapleLoadError(
            f"{name_or_path}: a {config.model_type!r} checkpoint cannot be the 'mllm' backbone, which takes one of "
            f"{', '.join(SUPPORTED_MLLMS)}"
        )
    if backbone == "dual_encoder" and config.model_type in SUPPORTED_MLLMS:
        raise MapleLoadError(
            f"{name_or_path}: a {config.model_type!r} checkpoint is an MLLM, not a two-tower image-text model: load it "
            "as the 'mllm' backbone (the default for it)"
        )
    if backbone == "dual_encoder" and not is_two_tower(config):
        raise MapleLoadError(
            f"{name_or_path}: a {config.model_type!r} checkpoint is not a two-tower image-text model (no vision and text "
            f"config), and load_maple wraps only those (CLIP, SigLIP) as 'dual_encoder'{PAIRING_ADVICE}"
        )
    # (before the processor, which `MapleProcessor.from_backbone` would read from the repo's top folder)
    if processor_only:  # load_maple_processor's are FILE_LOADING_KWARGS, none of which a backbone's processor takes
        taken = ()
        why = (f"load_maple_processor takes {', '.join(FILE_LOADING_KWARGS)} for a MAPLE checkpoint only: "
               "MapleProcessor.from_backbone reads a backbone's files with revision and token")
    else:
        taken = BACKBONE_LOADING_KWARGS
        why = f"MapleModel.from_backbone takes only {', '.join(BACKBONE_LOADING_KWARGS)}, revision and token"
    unused = sorted(set(from_pretrained_kwargs) - set(taken))
    if unused:
        raise BackboneLoadingError(f"{name_or_path}: {', '.join(unused)} cannot be passed when building from a backbone ({why})")
    return backbone, config


__all__ = ["BackboneLoadingError", "MapleLoadError", "load_maple", "load_maple_model", "load_maple_processor"]
