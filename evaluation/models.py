"""Load the embedder to evaluate from a local folder or a Hub repo id, with clear errors.

MAPLE checkpoints (`model_type: maple`) load through `AutoModel`/`AutoProcessor`; where the
`modeling_maple` package is not importable their own code runs (`trust_remote_code`). Plain
CLIP/SigLIP and Qwen2-VL-family checkpoints are wrapped with `MapleModel.from_backbone`, so
baselines are evaluated by the same code path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MAPLE_MODEL_TYPE = "maple"
DUAL_ENCODER_MODEL_TYPES = ("clip", "siglip", "siglip2")
MLLM_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


class ModelLoadError(RuntimeError):
    """A model reference that is missing, unreachable, or not an embedder MAPLE can evaluate."""


def _hub_config(repo_id: str, revision: str | None) -> dict[str, Any]:
    """config.json of a Hub model repo; Hub failures become `ModelLoadError`s naming the repo."""
    from huggingface_hub import HfApi, constants, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"model repo {repo_id!r} on {constants.ENDPOINT}"
    try:
        # The info call is not retried, so an unreachable or failing Hub is reported at once.
        HfApi().model_info(repo_id, revision=revision)
        return json.loads(Path(hf_hub_download(repo_id, "config.json", revision=revision)).read_text())
    except GatedRepoError as error:
        raise ModelLoadError(f"{where} is gated: accept its terms and log in (HF_TOKEN)") from error
    except RepositoryNotFoundError as error:
        status = error.response.status_code if error.response is not None else "?"
        raise ModelLoadError(
            f"{where} was not found or is not accessible with the current token (HTTP {status})"
        ) from error
    except RevisionNotFoundError as error:
        raise ModelLoadError(f"{where} has no revision {revision!r}") from error
    except EntryNotFoundError as error:
        raise ModelLoadError(f"{where} has no config.json: not a transformers checkpoint") from error
    except LocalEntryNotFoundError as error:
        raise ModelLoadError(f"{where} is not in the local cache and the Hub is offline or unreachable") from error
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else "?"
        if status in (401, 403):
            raise ModelLoadError(f"{where} refused the token (HTTP {status}): check HF_TOKEN") from error
        raise ModelLoadError(f"{where} could not be read: HTTP {status} from the server") from error


def _local_config(folder: Path) -> dict[str, Any]:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{folder} has no config.json: not a transformers checkpoint folder")
    try:
        return json.loads(config_file.read_text())
    except json.JSONDecodeError as error:
        raise ModelLoadError(f"{config_file} is not valid JSON: {error}") from error


def load_embedder(model_ref: str, revision: str | None = None, trust_remote_code: bool = True):
    """(model, processor) for `model_ref`, a local folder or a Hub repo id, in eval mode.

    Raises `ModelLoadError` naming the folder or repo when it cannot be read or is not a MAPLE,
    CLIP/SigLIP or Qwen2-VL-family checkpoint.
    """
    folder = Path(model_ref).expanduser()
    config = _local_config(folder) if folder.is_dir() else _hub_config(model_ref, revision)
    model_type = config.get("model_type")
    if model_type != MAPLE_MODEL_TYPE and model_type not in DUAL_ENCODER_MODEL_TYPES + MLLM_MODEL_TYPES:
        raise ModelLoadError(
            f"{model_ref!r} is a {model_type!r} checkpoint; expected a MAPLE checkpoint (model_type 'maple') "
            f"or a backbone MAPLE can wrap: {', '.join(DUAL_ENCODER_MODEL_TYPES + MLLM_MODEL_TYPES)}"
        )

    from transformers import AutoModel, AutoProcessor

    try:  # register the MAPLE classes where the package is installed; else the checkpoint's code runs
        import modeling_maple
    except ImportError:
        modeling_maple = None

    if model_type == MAPLE_MODEL_TYPE:
        model = AutoModel.from_pretrained(model_ref, revision=revision, trust_remote_code=trust_remote_code)
        processor = AutoProcessor.from_pretrained(model_ref, revision=revision, trust_remote_code=trust_remote_code)
        return model.eval(), processor
    if modeling_maple is None:
        raise ModelLoadError(f"evaluating the {model_type} checkpoint {model_ref!r} needs the modeling_maple package")
    backbone = "mllm" if model_type in MLLM_MODEL_TYPES else "dual_encoder"
    model = modeling_maple.MapleModel.from_backbone(model_ref, backbone=backbone)
    processor = modeling_maple.MapleProcessor.from_backbone(model_ref, backbone=backbone)
    return model.eval(), processor
