"""The two roles the preference builder needs filled: a judge that scores image-text fit and a
captioner that writes candidate texts. `MLLMJudge` and `ContrastiveCaptioner` fill them with real
MLLMs; anything else with these methods (the demo's scene-graph judge, a test double) works too.

Optional attributes the builder reads when a judge, captioner or miner has them (each absent one changes nothing):

- `name: str`: how cards, cache keys and the work dir's manifest name it (default: its class name);
- `settings: dict`: what else shapes its output (prompt, dtype, image-processor settings, ...), recorded in the
  manifest, so that a resumed build with other settings is refused instead of mixed;
- `prompt: str` (judge): quoted in the dataset card;
- `image_problem(size) -> str | None`: why it cannot take an image of this (width, height); a source row with such
  an image is skipped with that reason instead of failing its shard;
- `special_token_in(text) -> str | None` (judge): a special token of its tokenizer that `text` holds, which the judge
  would read as that token: a source row whose caption holds one is skipped, a generated text holding one is left
  out of the pool.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

import PIL.Image
import torch


@runtime_checkable
class PreferenceJudge(Protocol):
    """Scores how well an image and a text align, as alpha in [0, 1].

    `score` groups the pairs by image. The builder scores both candidate lists of a shard with it
    (`scoring.score_both_directions`: each image once with all the texts it is paired with), so alpha(image, text)
    must not depend on the direction it is asked for. (`MLLMJudge` also has `score_images`, the same alphas grouped
    by text, for direct use; the builder does not need it.)"""

    def score(self, images: list[PIL.Image.Image], texts: list[list[str]]) -> list[torch.Tensor]:
        """alpha(images[i], texts[i][j]) in [0, 1]; one float tensor of shape (len(texts[i]),) per
        image (img2txt)."""
        ...


@runtime_checkable
class CandidateCaptioner(Protocol):
    """Writes candidate captions for an anchor image, guided by one of its hard negatives."""

    def caption(self, anchors: list[PIL.Image.Image], negatives: list[PIL.Image.Image]) -> list[list[str]]:
        """For each (anchor, hard negative) pair, captions that stress their visual differences;
        returns, per pair, the generated candidate texts (captions of the anchor and of the
        negative)."""
        ...


# Joins the names of a `JudgeEnsemble`'s members into its own.
ENSEMBLE_SEPARATOR = " + "


def member_names(name: str) -> list[str]:
    """The names of a `JudgeEnsemble`'s members in its `name`; a lone judge's own name."""
    return name.split(ENSEMBLE_SEPARATOR)


def renamed_members(name: str, rename: Callable[[str], str]) -> str:
    """`name` of a judge, or of a `JudgeEnsemble` (its members' names joined), with each member's name `rename`d."""
    return ENSEMBLE_SEPARATOR.join(rename(member) for member in member_names(name))


def component_name(component: Any) -> str:
    """How a judge, captioner or miner is named in cards, cache keys and ensembles: its `name`, else its class name."""
    return getattr(component, "name", type(component).__name__)


def first_finding(components: Iterable[tuple[str, Any]], check: str, *args: Any) -> tuple[str, Any] | None:
    """The first `(name, finding)` for which `component.<check>(*args)` is not None, in order; None if there is none.

    `image_problem(size)` and `special_token_in(text)` are optional checks of judges, captioners and miners (`MLLMJudge`
    has both): a component without the check accepts everything, so it is passed over."""
    for name, component in components:
        method = getattr(component, check, None)
        if method is not None and (finding := method(*args)) is not None:
            return name, finding
    return None


# `from_pretrained` arguments that choose which files are read: `model_kwargs` reach the weights' `from_pretrained`
# only, so there they would pair the weights of one snapshot with the tokenizer and image processor of another.
FILE_SELECTING_KEYWORDS = (
    "revision", "token", "cache_dir", "subfolder", "local_files_only", "force_download", "trust_remote_code",
)


def _file_selecting(owner: str, key: str) -> TypeError:
    if key == "token":  # one that every loader of `from_pretrained` takes
        return TypeError(f"{owner}: 'token' in model_kwargs would reach the model's weights only; pass token=... to "
                         "from_pretrained itself, which reads every file with it")
    return TypeError(
        f"{owner}: {key!r} would reach the model's weights only, not its tokenizer and image processor; fetch the "
        f"snapshot you want first (huggingface_hub.snapshot_download(repo_id, {key}=...)) and pass its folder"
    )


def check_settings(owner: type, settings: dict[str, Any], loading_keywords: Sequence[str]) -> None:
    """Raise a TypeError for a keyword of `owner.from_pretrained` that is neither one of its `loading_keywords` nor a
    keyword of `owner`'s constructor: a transformers loading argument (`attn_implementation`, `revision`, ...) passed
    at top level would otherwise surface as an unexpected argument of the constructor, not saying where it goes. A
    constructor that takes `**kwargs` (a subclass passing settings on) is trusted with every keyword."""
    parameters = inspect.signature(owner.__init__).parameters.values()
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters):
        return
    own = [parameter.name for parameter in parameters if parameter.kind is inspect.Parameter.KEYWORD_ONLY]
    for key in settings:
        if key in FILE_SELECTING_KEYWORDS:
            raise _file_selecting(f"{owner.__name__}.from_pretrained", key)
        if key not in own:
            raise TypeError(
                f"{owner.__name__}.from_pretrained got an unknown keyword {key!r}: it takes the loading keywords "
                f"{', '.join(loading_keywords)} and the {owner.__name__} settings {', '.join(own)}; other arguments of "
                f"the model's from_pretrained go in model_kwargs={{{key!r}: ...}}"
            )


def with_device_map(owner: str, model_kwargs: dict | None, device_map: str | dict | None) -> dict:
    """A copy of `model_kwargs` (transformers `from_pretrained` arguments) with `device_map` added unless it is None;
    `device_map` given also inside `model_kwargs`, or a `FILE_SELECTING_KEYWORDS` argument there, is a TypeError
    naming `owner`."""
    model_kwargs = dict(model_kwargs or {})
    if selecting := [key for key in model_kwargs if key in FILE_SELECTING_KEYWORDS]:
        raise _file_selecting(owner, selecting[0])
    if device_map is not None:
        if "device_map" in model_kwargs:
            raise TypeError(f"{owner}: device_map given both on its own and in model_kwargs; give it once")
        model_kwargs["device_map"] = device_map
    return model_kwargs
