"""Batches of preference rows for one forward pass of a `MapleModel`."""

from __future__ import annotations

import copy
import hashlib
import reprlib
from dataclasses import dataclass
from typing import Any

import datasets
import torch
from transformers.data.data_collator import DataCollatorMixin

from maple.content import content_id

from .schema import (
    CONTENT_COLUMNS,
    SCORED_CANDIDATES,
    anchor_not_first_error,
    check_row_columns,
    check_rows,
    first_invalid,
    image_feature,
    with_image_decode,
)

# A field the trainer adds to the rows of a streamed evaluation set: their position in the stream (see
# `batch_dealing.repeated_eval_rows`); the collator passes it on as `row_position`.
ROW_POSITION = "row_position"
# Keys of a collated batch that are not model inputs.
PREFERENCE_KEYS = (
    "anchor_text_index",
    "anchor_image_index",
    "candidate_text_index",
    "candidate_text_mask",
    "candidate_image_index",
    "candidate_image_mask",
    "txt2img_scores",
    "img2txt_scores",
    "text_ids",
    "image_ids",
    "judged_positive_text_ids",
    "judged_positive_image_ids",
    ROW_POSITION,
)


def check_candidate_count(name: str, value: int | None) -> None:
    """A ValueError unless `value`, the `name`d number of candidates per anchor and step (`num_text_candidates`,
    `num_image_candidates`), is None (all of a row's candidates) or an integer of at least 2: the anchor's own
    candidate and one other to rank it against, as a preference needs. The one rule of the collator and `RPAConfig`."""
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 2):
        raise ValueError(
            f"{name} must be an integer of at least 2 (the anchor's own candidate and one to rank it against) or None "
            f"(all), got {value!r}"
        )


@dataclass
class DataCollatorForEmbeddingPreference(DataCollatorMixin):
    """Collates preference rows (see `trainer.schema`) into one batch that a `MapleModel` embeds in a single
    forward: the distinct texts and images of all anchors and their sampled candidates, processed by the
    `MapleProcessor`, plus index tensors that place each anchor and candidate in those embeddings.

    Each step keeps every anchor's own candidate (index 0, the anchor itself) and draws `num_*_candidates - 1` of its
    other candidates uniformly without replacement (all of them when `None`). The draw is seeded by `seed`, the epoch
    (see `set_epoch`) and the row id: fresh every epoch, yet the same in a resumed run and whatever the number of
    processes or the batch a row lands in. Images may come decoded (PIL) or left encoded ({"bytes", "path"}, as
    `with_images_left_encoded` leaves them, which `RPATrainer` does): those are decoded here, only the anchor image
    and the drawn candidates, exactly as `datasets.Image()` decodes them.

    The RPA losses rank distinct items: a candidate whose content repeats an earlier one of its row (a caption listed
    twice, a hard-negative image that copies the anchor's) is masked like padding, the first occurrence kept with its
    judge score; the repeat still took one of the row's `num_*_candidates` slots.

    With `return_judged_positive_ids`, the batch also names, per row, every candidate its judge rates at least as high
    as the anchor's own pair (candidate 0), drawn or not: one left undrawn can still be embedded (as another row's
    anchor or candidate), and `RPAConfig.exclude_judged_positives` takes them all out of the anchor's InfoNCE
    denominator whatever the draw. Of those, only the undrawn images left encoded are decoded, to hash them.

    Args:
        processor: the `MapleProcessor` that turns the batch's texts and images into model inputs.
        num_image_candidates, num_text_candidates: candidates per anchor each step, its own included: at least 2
            (`check_candidate_count`), or None for all.
        seed: seeds the candidate draws, with the epoch and the row id.
        dataset_name: names the dataset in the errors of malformed rows ("train", "eval", ...).
        return_tensors: "pt" only (torch tensors; `DataCollatorMixin` reads it).
        epoch: the pass the draws are seeded with (`set_epoch`).
        return_judged_positive_ids: also return `judged_positive_text_ids` / `judged_positive_image_ids` (`RPATrainer`
            sets it from `RPAConfig.exclude_judged_positives`).

    Returned keys, besides the processor's (`input_ids`, `attention_mask`, `pixel_values`, ...):
        anchor_text_index, anchor_image_index: `(N,)` row of each anchor's caption / image in the embeddings.
        candidate_text_index, candidate_image_index: `(N, C)` rows of the sampled candidates, 0 where masked.
        candidate_text_mask, candidate_image_mask: `(N, C)` bool, False where padded (a row with fewer candidates
            than `C`) and where a candidate repeats an earlier one of its row (by content: `content_id`).
        img2txt_scores, txt2img_scores: `(N, C)` float32 judge scores of those candidates, 0 where masked.
        text_ids, image_ids: int64 content ids of the embedded texts / images (see `content_id`).
        judged_positive_text_ids, judged_positive_image_ids: `(N, E)` int64 content ids of each row's candidate
            texts / images the judge rates at least as high as candidate 0 (by `img2txt_scores` / `txt2img_scores`),
            drawn or not, padded with the anchor's own id; only with `return_judged_positive_ids`.
        row_position: `(N,)` the rows' `ROW_POSITION` field, only when they have one.
    """

    processor: Any
    num_image_candidates: int | None = None
    num_text_candidates: int | None = None
    seed: int = 0
    dataset_name: str = "train"
    return_tensors: str = "pt"
    epoch: int = 0
    return_judged_positive_ids: bool = False

    def __post_init__(self):
        if self.return_tensors != "pt":  # DataCollatorMixin would look for a numpy or tensorflow collation
            raise ValueError(f"return_tensors must be 'pt' (torch tensors), got {self.return_tensors!r}")
        for name in ("num_text_candidates", "num_image_candidates"):
            check_candidate_count(name, getattr(self, name))

    def set_epoch(self, epoch: int) -> None:
        """Seeds the next batches' candidate draws with `epoch` (`RPATrainer` calls it at the start of every pass)."""
        self.epoch = epoch

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        check_row_columns(examples, self.dataset_name)
        check_rows(
            ids=[example["id"] for example in examples],
            candidate_counts={
                column: [None if example[column] is None else len(example[column]) for example in examples]
                for column in SCORED_CANDIDATES
            },
            judge_scores={column: [example[column] for example in examples] for column in SCORED_CANDIDATES.values()},
            invalid={
                column: [first_invalid(example[column], column) for example in examples] for column in CONTENT_COLUMNS
            },
            dataset_name=self.dataset_name,
        )
        texts, images = _DistinctItems(), _DistinctItems()
        anchor_images = [_decoded(example["image"]) for example in examples]
        batch: dict[str, torch.Tensor] = {
            "anchor_text_index": torch.tensor([texts.add(example["caption"]) for example in examples]),
            "anchor_image_index": torch.tensor([images.add(image) for image in anchor_images]),
        }
        batch.update(self._collate_candidates(examples, "text", texts, batch["anchor_text_index"]))
        batch.update(self._collate_candidates(examples, "image", images, batch["anchor_image_index"], anchor_images))
        batch["text_ids"], batch["image_ids"] = torch.tensor(texts.ids), torch.tensor(images.ids)
        if ROW_POSITION in examples[0]:
            batch[ROW_POSITION] = torch.tensor([example[ROW_POSITION] for example in examples])
        try:
            batch.update(self.processor(text=texts.items, images=images.items))
        except ValueError as error:  # e.g. Qwen-VL refuses an aspect ratio above 200:1
            ids = [example["id"] for example in examples]
            raise ValueError(
                f"{self.dataset_name} dataset, the batch of row ids {reprlib.repr(ids)}: the processor refused its "
                f"texts or images: {error}"
            ) from error
        return batch

    def _collate_candidates(
        self,
        examples: list[dict[str, Any]],
        modality: str,
        items: _DistinctItems,
        anchor_index: torch.Tensor,
        anchor_images: list[Any] | None = None,
    ) -> dict[str, torch.Tensor]:
        """One modality's candidates ("text" or "image") of the batch: draws each row's, adds them to `items` (the
        batch's distinct texts or images), checks that candidate 0 is the row's anchor (at `anchor_index` in `items`),
        and returns their `candidate_{modality}_index`, `candidate_{modality}_mask`, judge scores and, with
        `return_judged_positive_ids`, `judged_positive_{modality}_ids`. `anchor_images` (for "image") are the rows'
        anchor images as embedded, which a candidate 0 stored alike reuses rather than decoding again."""
        anchor_column, candidates_column, scores_column = _CANDIDATE_COLUMNS[modality]
        limit = self.num_text_candidates if modality == "text" else self.num_image_candidates
        picks = [
            _sample_candidates(len(example[candidates_column]), limit, self._generator(example["id"], modality))
            for example in examples
        ]
        width = max(len(pick) for pick in picks)
        index = torch.zeros(len(examples), width, dtype=torch.long)
        mask = torch.zeros(len(examples), width, dtype=torch.bool)
        scores = torch.zeros(len(examples), width, dtype=torch.float32)  # whatever torch's default dtype
        judged_positives: list[list[int]] = []
        for row, (example, pick) in enumerate(zip(examples, picks)):
            if modality == "text":
                picked = [example[candidates_column][j] for j in pick]
            else:  # only the drawn candidates are decoded (when left encoded, see `with_images_left_encoded`)
                picked = _picked_images(example, anchor_images[row], pick)
            positions = [items.add(item) for item in picked]
            # an item the row lists again (the same caption twice, a copy of the anchor image) is masked as padding:
            # the RPA losses rank distinct items, and a pair of one item with itself cannot be ordered
            first = _first_occurrences(positions)
            index[row, : len(pick)] = torch.tensor([position if kept else 0 for position, kept in zip(positions, first)])
            mask[row, : len(pick)] = torch.tensor(first)
            scores[row, : len(pick)] = torch.tensor(
                [float(example[scores_column][j]) if kept else 0.0 for j, kept in zip(pick, first)]
            )
            if self.return_judged_positive_ids:
                drawn_ids = {j: items.ids[position] for j, position in zip(pick, positions)}
                judged_positives.append(
                    _judged_positive_ids(example[candidates_column], example[scores_column], drawn_ids)
                )
        # Candidate 0 is the anchor's own pair: always kept, and the judge score the others are compared with
        # (`_judged_positive_ids`). Checked here, where the content ids that tell equal items apart are at hand.
        not_anchor = (index[:, 0] != anchor_index).nonzero().flatten()
        if len(not_anchor):
            where = f"{self.dataset_name} dataset, row id {examples[not_anchor[0].item()]['id']!r}"
            raise anchor_not_first_error(where, anchor_column, candidates_column)
        collated = {f"candidate_{modality}_index": index, f"candidate_{modality}_mask": mask, scores_column: scores}
        if self.return_judged_positive_ids:
            anchor_ids = [items.ids[position] for position in anchor_index.tolist()]
            collated[f"judged_positive_{modality}_ids"] = _padded_ids(judged_positives, anchor_ids)
        return collated

    def _generator(self, row_id: str | int, modality: str) -> torch.Generator:
        """The generator of one row's draw of `modality` ("text" or "image") candidates, seeded by a hash of `seed`,
        the epoch, the row id and the modality: the same in every process and every run (`hash()` is salted)."""
        key = hashlib.blake2b(f"{self.seed}:{self.epoch}:{row_id}:{modality}".encode(), digest_size=8).digest()
        return torch.Generator().manual_seed(int.from_bytes(key, "little"))


def select_rows(batch: dict[str, torch.Tensor], rows: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """The bookkeeping (`PREFERENCE_KEYS` but `row_position`) of a collated batch of `N` rows for the rows where the
    ``(N,)`` bool `rows` is True alone, as if collated from them: their anchor and candidate indices point into the
    ``T'`` texts and ``I'`` images those rows use, in the batch's order, and `text_ids` / `image_ids` are theirs.
    The judged-positive ids, when the batch has them, are the rows' own (content ids, kept as they are; their padding
    may be wider than the rows alone need). Returns it with the ``(T',)`` and ``(I',)`` positions of those texts and
    images in the batch, to select their embeddings (``text_embeds[texts]``)."""
    selected = {
        key: batch[key][rows]
        for key in ("candidate_text_mask", "candidate_image_mask", "txt2img_scores", "img2txt_scores",
                    "judged_positive_text_ids", "judged_positive_image_ids")
        if key in batch
    }
    items = []
    for modality in ("text", "image"):
        ids = batch[f"{modality}_ids"]
        anchors, candidates = batch[f"anchor_{modality}_index"][rows], batch[f"candidate_{modality}_index"][rows]
        mask = selected[f"candidate_{modality}_mask"]
        used = torch.zeros(len(ids), dtype=torch.bool, device=ids.device)
        used[anchors] = True
        used[candidates[mask]] = True
        renumbered = used.cumsum(0) - 1  # an item's position among the used ones
        selected[f"anchor_{modality}_index"] = renumbered[anchors]
        selected[f"candidate_{modality}_index"] = torch.where(mask, renumbered[candidates], 0)  # padding: 0, as collated
        selected[f"{modality}_ids"] = ids[used]
        items.append(used.nonzero().flatten())
    return selected, items[0], items[1]


class _DistinctItems:
    """Texts or images in first-seen order, each stored once; `add` returns the item's position."""

    def __init__(self):
        self.items: list[Any] = []
        self.ids: list[int] = []
        self._position: dict[int, int] = {}

    def add(self, item: Any) -> int:
        identity = content_id(item)
        if identity not in self._position:
            self._position[identity] = len(self.items)
            self.items.append(item)
            self.ids.append(identity)
        return self._position[identity]


# Decodes an image left encoded ({"bytes", "path"}) as a column of `datasets.Image()` would (EXIF orientation applied,
# mode kept): `with_images_left_encoded` leaves only such columns encoded.
_IMAGE_DECODER = datasets.Image()
_IMAGE_COLUMNS = ("image", "candidate_images")
# Per modality of the candidates: the anchor's column, the candidates' column and their judge scores' column.
_CANDIDATE_COLUMNS = {
    "text": ("caption", "candidate_texts", "img2txt_scores"),
    "image": ("image", "candidate_images", "txt2img_scores"),
}


def _decoded(item: Any) -> Any:
    """An item as the collator embeds it: an image left encoded decoded, anything else (a text, a PIL image) as it
    is."""
    return _IMAGE_DECODER.decode_example(item) if isinstance(item, dict) else item


def _judged_positive_ids(candidates: list[Any], judge_scores: list[float], drawn_ids: dict[int, int]) -> list[int]:
    """The content ids of a row's `candidates` (texts, or images as stored) whose judge score is at least that of
    candidate 0, the anchor's own pair, candidate 0 aside, compared in float32 as the RPA losses rank them (two
    float64 scores that round to one are a tie there). `drawn_ids` maps the positions of the drawn candidates to
    their ids; an undrawn one is hashed here, an image decoded first if left encoded."""
    scores = torch.tensor([float(score) for score in judge_scores], dtype=torch.float32)
    return [
        drawn_ids[position] if position in drawn_ids else content_id(_decoded(candidates[position]))
        for position in (scores[1:] >= scores[0]).nonzero().flatten().add(1).tolist()
    ]


def _padded_ids(ids: list[list[int]], padding: list[int]) -> torch.Tensor:
    """``(N, E)`` int64: row ``i`` holds `ids[i]` followed by copies of `padding[i]`, E the longest row's length."""
    width = max(len(row) for row in ids)
    return torch.tensor([row + [pad] * (width - len(row)) for row, pad in zip(ids, padding)], dtype=torch.long)


def _picked_images(example: dict[str, Any], anchor: Any, pick: list[int]) -> list[Any]:
    """A row's drawn candidate images (positions `pick`), decoded. Candidate 0, when stored as the row's `image` is
    (the same bytes, or the same path and no bytes), is `anchor`, the anchor image already decoded, not decoded again."""
    candidates, stored_anchor = example["candidate_images"], example["image"]
    return [
        anchor if position == 0 and _stored_alike(candidates[0], stored_anchor) else _decoded(candidates[position])
        for position in pick
    ]


def _stored_alike(first: Any, other: Any) -> bool:
    """Whether two images left encoded decode from the same data: the same bytes, or the same path with no bytes
    (what `datasets.Image.decode_example` reads)."""
    if not (isinstance(first, dict) and isinstance(other, dict)):
        return False
    if first["bytes"] is not None or other["bytes"] is not None:
        return first["bytes"] == other["bytes"]
    return first["path"] is not None and first["path"] == other["path"]


def with_images_left_encoded(dataset: Any) -> Any:
    """`dataset` with its image columns left encoded ({"bytes", "path"}) for `DataCollatorForEmbeddingPreference`
    to decode: it decodes only the candidates it draws, and the anchor image once when candidate 0 stores the same
    image, where `datasets` would decode every candidate of every row. The same pixels: it decodes them with
    `datasets.Image().decode_example`, so a column is left encoded only where the dataset's own feature decodes that
    way (an `Image()` without `mode`, and no Hub token to read private files with); other columns, and datasets
    without features, are returned as they are. Reads and copies no rows (unlike `cast_column` of a list of images,
    which writes the whole column anew)."""
    features = getattr(dataset, "features", None)
    if features is None or any((getattr(dataset, "_token_per_repo_id", None) or {}).values()):
        return dataset
    encoded = features.copy()
    for column in _IMAGE_COLUMNS:
        feature = features.get(column)
        image = image_feature(feature)
        if isinstance(image, datasets.Image) and image.decode and image.mode is None:
            encoded[column] = with_image_decode(feature, False)
    if encoded == features:
        return dataset
    if isinstance(dataset, datasets.IterableDataset):  # lazy already: the stream decodes as it yields
        return dataset.cast(encoded)
    # what `Dataset.cast_column` does for an `Image` feature: the same Arrow storage, only the features change. These
    # are `datasets` internals (5.2): should they move, `datasets` decodes every image again, slower but the same.
    try:
        from datasets.arrow_dataset import update_metadata_with_features
        from datasets.fingerprint import update_fingerprint

        left_encoded = copy.deepcopy(dataset)  # shares the Arrow tables
        left_encoded._info.features = encoded
        left_encoded._data = update_metadata_with_features(left_encoded._data.cast(encoded.arrow_schema), encoded)
        left_encoded._fingerprint = update_fingerprint(dataset._fingerprint, "with_images_left_encoded", {})
    except (ImportError, AttributeError, TypeError):
        return dataset
    return left_encoded


def _first_occurrences(positions: list[int]) -> list[bool]:
    """Per entry of `positions`, whether no earlier entry holds the same value."""
    seen: set[int] = set()
    first = []
    for position in positions:
        first.append(position not in seen)
        seen.add(position)
    return first


def _sample_candidates(count: int, limit: int | None, generator: torch.Generator) -> list[int]:
    """Candidate 0 (the anchor itself) plus up to `limit - 1` others drawn without replacement, in dataset order."""
    if limit is None or count <= limit:
        return list(range(count))
    others = (torch.randperm(count - 1, generator=generator)[: limit - 1] + 1).sort().values
    return [0, *others.tolist()]
