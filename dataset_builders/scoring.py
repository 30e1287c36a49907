"""The judge scoring contract of a shard: how the builder puts a shard's candidates to a `PreferenceJudge` and what
it accepts back. `text_pool` makes an anchor's text candidates; `score_both_directions` asks the judge for both
candidate lists (img2txt, txt2img) in one `score` call, each image once, and requires one score per text of each
image; `check_judge_scores` requires every score to be a finite alpha in [0, 1] before the shard is written. A judge
that breaks the contract is a `JudgeOutputError` naming what it got wrong; a captioner whose answer is not one list of
texts per pair (`check_captions`), a `CaptionerOutputError`. Pure functions: no builder state."""

from __future__ import annotations

import reprlib
from collections.abc import Callable, Hashable, Mapping, Sequence

import PIL.Image
import torch

from .interfaces import PreferenceJudge


class JudgeOutputError(RuntimeError):
    """A judge returned something other than one alpha in [0, 1] per candidate; the message names shard, row and
    candidate."""


class CaptionerOutputError(RuntimeError):
    """A captioner returned something other than one list of texts per (anchor, hard negative) pair; the message names
    the shard and the pair."""


def check_captions(shard: int, captioned: object, pairs: Sequence[str]) -> list[list[str]]:
    """The captioner's answer for a shard's (anchor, hard negative) pairs, named by `pairs`, as one list of texts per
    pair; a `CaptionerOutputError` naming the shard and the first pair it got wrong otherwise. Unchecked, a flat list
    of captions was read letter by letter, a short answer left the last pairs without texts, and None became the text
    "None", each judged and written as a candidate."""
    kept = "Shards finished before this one are kept."
    if not isinstance(captioned, (list, tuple)) or len(captioned) != len(pairs):
        got = f"{len(captioned)} answers" if isinstance(captioned, (list, tuple)) else f"a {type(captioned).__name__}"
        raise CaptionerOutputError(f"shard {shard}: the captioner returned {got} for {len(pairs)} (anchor, hard "
                                   f"negative) pairs; expected one list of texts per pair. {kept}")
    for pair, texts in zip(pairs, captioned):
        if not isinstance(texts, (list, tuple)) or not all(isinstance(text, str) for text in texts):
            raise CaptionerOutputError(f"shard {shard}, {pair}: the captioner returned {reprlib.repr(texts)}; expected "
                                       f"a list of texts (strings). {kept}")
    return [list(texts) for texts in captioned]


def text_pool(caption: str, groups: list[list[str]], size: int) -> list[str]:
    """The anchor's text candidates: its caption as given, then at most `size - 1` texts of `groups` (each hard
    negative's candidate texts, in order) with whitespace normalised, empty texts and repeats (of the caption too)
    dropped. Repeats are found by the normalised forms, the caption's included: "a  red square" repeats the caption
    "a red square" (the judge would score the two alike). When the texts do not all fit, the groups take turns (the
    first text of each, then the second, ...), so that every captioned negative is in the pool; the kept texts stay
    in group order. (Turns of one text: a captioner's answers need not come in pairs, nor survive de-duplication
    as pairs.)"""
    if size < 1:  # (a budget below 0 would never run out)
        raise ValueError(f"text_pool: size must be at least 1 (the caption), got {size}")
    seen = {" ".join(caption.split())}
    distinct: list[list[str]] = []
    for group in groups:
        distinct.append([])
        for text in (" ".join(str(candidate).split()) for candidate in group):
            if text and text not in seen:
                distinct[-1].append(text)
                seen.add(text)
    kept, budget = [0] * len(distinct), size - 1
    while budget and any(count < len(texts) for count, texts in zip(kept, distinct)):
        for group, texts in enumerate(distinct):
            if budget and kept[group] < len(texts):
                kept[group] += 1
                budget -= 1
    return [caption] + [text for texts, count in zip(distinct, kept) for text in texts[:count]]


def check_judge_scores(shard: int, ids: list[str], column: str, scores: list[torch.Tensor]) -> None:
    """Raise `JudgeOutputError` naming the shard, row id, column and candidate of the first judge score that is not a
    finite alpha in [0, 1], before the shard is written: training would refuse the row much later. (One score per
    candidate: `score_both_directions` checked the judge's answer and laid it out so.)"""
    for row_id, row_scores in zip(ids, scores, strict=True):
        bad = ~(torch.isfinite(row_scores) & (row_scores >= 0) & (row_scores <= 1))
        if bad.any():
            candidate = int(bad.nonzero()[0])
            raise JudgeOutputError(
                f"shard {shard}, row id {row_id!r}: the judge's {column}[{candidate}] is {float(row_scores[candidate])}; "
                "expected an alpha in [0, 1] (a float16 judge can overflow to NaN: load it in bfloat16 or float32). "
                "Shards finished before this one are kept."
            )


def score_both_directions(
    judge: PreferenceJudge,
    images: Mapping[Hashable, PIL.Image.Image],
    anchors: Sequence[Hashable],
    candidate_texts: Sequence[Sequence[str]],
    captions: Sequence[str],
    candidate_images: Sequence[Sequence[Hashable]],
    *,
    describe: Callable[[Hashable], str] = repr,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(img2txt, txt2img) of a shard from one `judge.score` call: img2txt[i][j] = alpha(images[anchors[i]],
    candidate_texts[i][j]) and txt2img[i][j] = alpha(images[candidate_images[i][j]], captions[i]), images named by
    keys (the builder's: source rows).

    Both lists hold (image, text) pairs, the image first in the prompt, so they are scored alike: each image is asked
    once, with every distinct text it is paired with (an anchor's candidate texts, then the captions of the anchors
    that list it as a hard negative), and each distinct (image, text) pair is scored once. So the anchor's own pair,
    img2txt[i][0] = txt2img[i][0] when candidate_texts[i][0] is captions[i], is scored once, and a judge that shares
    an image's prompt prefix among its texts (`MLLMJudge`) runs each image's prefix once, not once per pair as
    `MLLMJudge.score_images` must (its candidates, the images, come first).

    The judge's answer must hold one score per text of each image, else `JudgeOutputError` (`describe(key)` names the
    image); the scores are then gathered into the anchors' slots, one (len(candidates),) tensor per anchor."""
    slots: dict[Hashable, tuple[int, dict[str, int]]] = {}  # key -> (query, text -> position among its texts)
    query_keys: list[Hashable] = []
    query_texts: list[list[str]] = []

    def slot(key: Hashable, text: str) -> tuple[int, int]:
        if key not in slots:
            slots[key] = (len(query_keys), {})
            query_keys.append(key)
            query_texts.append([])
        query, positions = slots[key]
        if text not in positions:
            positions[text] = len(query_texts[query])
            query_texts[query].append(text)
        return query, positions[text]

    img2txt_slots = [[slot(key, text) for text in texts] for key, texts in zip(anchors, candidate_texts, strict=True)]
    txt2img_slots = [[slot(key, caption) for key in keys] for caption, keys in zip(captions, candidate_images, strict=True)]
    scores = judge.score([images[key] for key in query_keys], query_texts) if query_keys else []
    if len(scores) != len(query_keys):
        first = f" (the first: {describe(query_keys[0])})" if query_keys else ""
        raise JudgeOutputError(f"the judge returned {len(scores)} score rows for {len(query_keys)} images{first}")
    scores = [torch.as_tensor(row) for row in scores]
    for key, texts, row in zip(query_keys, query_texts, scores):
        if tuple(row.shape) != (len(texts),):
            raise JudgeOutputError(f"{describe(key)}: the judge returned scores of shape {tuple(row.shape)} for {len(texts)} texts")

    def gather(anchor_slots: list[tuple[int, int]]) -> torch.Tensor:
        return torch.stack([scores[query][position] for query, position in anchor_slots]) if anchor_slots else torch.empty(0)

    return [gather(anchor_slots) for anchor_slots in img2txt_slots], [gather(anchor_slots) for anchor_slots in txt2img_slots]
