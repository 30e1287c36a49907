"""The paper's evaluation protocols on an embedder: retrieval recall, group scores, modality gap.

Every function takes a MAPLE model (anything with `encode(processor, texts=..., images=...)`) and
its processor; embeddings are L2-normalised here, in float32 (a model with `normalize=False` returns raw ones, another
embedder may return bf16), so similarities are float32 cosines.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence, Set
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .benchmarks import (
    BenchmarkFormatError,
    IndexedQuadruples,
    QuadrupleBenchmark,
    RetrievalBenchmark,
    file_key,
)
from .lazy import LazySequence
from .metric_names import refuse_overall_subset
from .metrics import DEFAULT_KS, group_score_hits, modality_gap_from_quadruples, recall_from_ranks
from .retrieval import check_finite_embeddings, chunked_ranks

Quadruples = Sequence[Sequence[Any]]  # each (image0, image1, text0, text1), e.g. `benchmarks.Quadruple`
# over the cosine range [-1, 1]: bins of 0.01, since a trained model's cosines often fill a narrow band (CLIP's matched
# pairs: about 0.2-0.4)
HISTOGRAM_BINS = 200


def _encode(
    model,
    processor,
    texts: Sequence[str],
    images: Sequence[Any],
    batch_size: int,
    text_name: Callable[[int], str],
    image_name: Callable[[int], str],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(text_embeds, image_embeds), (len(texts), D) and (len(images), D), L2-normalised in float32 whatever the dtype
    the model returns (bf16 cosines tie where float32 ones differ, and ties count against the model); a
    `NonFiniteEmbeddingsError` if any is NaN or inf, naming text or image i as `text_name(i)` or `image_name(i)` say:
    the lists embedded are the protocol's own (interleaved, de-duplicated), not the caller's, so it counts distinct
    texts and images, not the caller's copies."""
    text_embeds, image_embeds = model.encode(processor, texts=texts, images=images, batch_size=batch_size)
    check_finite_embeddings(text_embeds, "distinct texts", describe=text_name)
    check_finite_embeddings(image_embeds, "distinct images", describe=image_name)
    return _normalized(text_embeds), _normalized(image_embeds)


def _normalized(embeddings: torch.Tensor) -> torch.Tensor:
    """(N, D) finite `embeddings` L2-normalised in float32, each row first scaled by the power of two that brings its
    largest magnitude into [0.5, 1). That scaling is exact (but for entries some 2**126 below the row's largest, which
    sink into float32's subnormals), so a row of a norm float32 computes, at least `F.normalize`'s floor of 1e-12, gets
    the very bits `F.normalize` gives it (as every unit-length embedding `MapleModel.encode` returns); a row whose
    squares overflow float32 (values past ~1e19: a norm of inf) became a zero vector there, and one whose squares
    underflow it (below ~1e-19) a near-zero one, every cosine of it 0, tying; a row of a norm under 1e-12 was divided
    by that floor, not made unit length."""
    # float64 rows are scaled before they are float32, past whose range (~3e38) they would be inf
    work = embeddings if embeddings.dtype == torch.float64 else embeddings.float()
    largest = torch.linalg.vector_norm(work, float("inf"), dim=-1, keepdim=True)
    exponent = torch.frexp(largest).exponent  # largest = m * 2**exponent, m in [0.5, 1); 0 for a zero row
    # times 2**-exponent in two steps, each a normal number of the dtype whatever the exponent, so each exact
    half = exponent // 2
    scaled = (work * torch.pow(2.0, -half.to(work.dtype))).mul_(torch.pow(2.0, (half - exponent).to(work.dtype)))
    return F.normalize(scaled.float(), dim=-1)


def evaluate_retrieval(
    model, processor, images: Sequence[Any], captions_per_image: Sequence[Sequence[str]], batch_size: int = 32
) -> dict[str, float]:
    """Image->text and text->image recall@1/5/10 and MRR (0-100), COCO/Flickr protocol.

    Image->text: an image query hits when any of its captions is in the top k of all captions.
    Text->image: a caption query hits when its image is in the top k of all images. A caption is relevant to an image
    by its text: one written word for word under several images (COCO has some) describes each of them, so every copy
    counts as a caption of each, and each copy as a query has all of them as its images. Likewise an image is one by
    its content (`_image_keys`): an image listed twice is one image, so each copy's captions are relevant to both.
    Ranks come from `chunked_ranks`, so no (captions x images) matrix is built. Ties count against the model; copies of
    one caption or one image are embedded once, so they tie exactly whatever the batch size.
    Returns keys i2t_r1, i2t_r5, i2t_r10, i2t_mrr, t2i_r1, ..., t2i_mrr, num_images, num_captions.
    """
    _refuse_benchmark(images, "images")
    images, captions_per_image = _in_order(images, "images"), _in_order(captions_per_image, "captions_per_image")
    _check_retrieval_inputs(images, captions_per_image)
    captions = [caption for image_captions in captions_per_image for caption in image_captions]
    # Copies of a caption, or of an image, are embedded once, so they tie exactly; embedded apart, batch padding moved
    # captions ~1e-7.
    caption_copies, image_copies = _Copies.of(captions), _Copies.of(_image_keys(images))
    relevance = _RetrievalRelevance.of(image_copies.index.tolist(), captions_per_image)
    from_benchmark = hasattr(images, "place")  # a benchmark's images say where they are stored

    def image_name(index: int) -> str:  # a distinct image by its first position in the caller's list
        position = image_copies.first[index]
        return images.place(position) if from_benchmark else f"images[{position}]"

    caption_places = [f"captions_per_image[{image}][{caption}]" for image, image_captions in enumerate(captions_per_image)
                      for caption in range(len(image_captions))]

    def caption_name(index: int) -> str:  # a distinct caption by its first place in the caller's lists
        return caption_places[caption_copies.first[index]]

    with _images_named(image_name, benchmark=from_benchmark):
        text_embeds, image_embeds = _encode(
            model,
            processor,
            list(caption_copies.subset(captions)),
            image_copies.subset(images),
            batch_size,
            caption_name,
            image_name,
        )
    text_embeds = text_embeds[caption_copies.index]
    image_embeds = image_embeds[image_copies.index]
    result: dict[str, float] = {}
    for direction, ranks in (
        ("i2t", chunked_ranks(image_embeds, text_embeds, relevance.captions_of_image)),
        ("t2i", chunked_ranks(text_embeds, image_embeds, relevance.images_of_caption)),
    ):
        recall = recall_from_ranks(ranks, DEFAULT_KS)
        result.update({f"{direction}_r{k}": recall[f"recall@{k}"] for k in DEFAULT_KS})
        result[f"{direction}_mrr"] = recall["mrr"]
    return result | {"num_images": len(images), "num_captions": len(captions)}


@dataclass(frozen=True)
class _RetrievalRelevance:
    """Which captions are relevant to which images in a retrieval set, by caption text and image content.

    By position, the copy of image A's caption filed under image B would be an irrelevant candidate for A tied exactly
    with A's own copy, and as ties count against the model, neither image could ever retrieve it first; so would two
    copies of one image for each other's captions. Relevance is therefore (text, image content): copies of one image
    form a group, and a caption text is relevant to every image of every group that lists it."""

    captions_of_image: list[list[int]]  # image position -> the caption positions relevant to it (image->text)
    images_of_caption: list[list[int]]  # caption position -> the image positions relevant to it (text->image)

    @classmethod
    def of(cls, group_of_image: Sequence[int], captions_per_image: Sequence[Sequence[str]]) -> _RetrievalRelevance:
        """`group_of_image[i]` is the group of image i, the groups numbered from 0 (`_Copies.index`)."""
        captions = [caption for image_captions in captions_per_image for caption in image_captions]
        positions_of_text: dict[str, list[int]] = {}  # caption text -> its positions among all captions, in order
        for position, caption in enumerate(captions):
            positions_of_text.setdefault(caption, []).append(position)
        num_groups = max(group_of_image) + 1
        images_of_group: list[list[int]] = [[] for _ in range(num_groups)]
        texts_of_group: list[dict[str, None]] = [{} for _ in range(num_groups)]  # ordered sets
        for image, (group, image_captions) in enumerate(zip(group_of_image, captions_per_image)):
            images_of_group[group].append(image)
            texts_of_group[group].update(dict.fromkeys(image_captions))
        groups_of_text: dict[str, list[int]] = {}
        for group, texts in enumerate(texts_of_group):
            for text in texts:
                groups_of_text.setdefault(text, []).append(group)
        captions_of_group = [
            sorted(position for text in texts for position in positions_of_text[text]) for texts in texts_of_group
        ]
        images_of_text = {text: sorted(image for group in groups for image in images_of_group[group])
                          for text, groups in groups_of_text.items()}
        return cls(
            captions_of_image=[captions_of_group[group] for group in group_of_image],
            images_of_caption=[images_of_text[caption] for caption in captions],
        )


def evaluate_benchmark(
    model, processor, benchmark: RetrievalBenchmark | QuadrupleBenchmark, batch_size: int = 32
) -> dict[str, Any]:
    """A benchmark `load_benchmark` returns, scored with its protocol: `evaluate_retrieval` or `evaluate_quadruples`
    (with its categories)."""
    if isinstance(benchmark, RetrievalBenchmark):
        return evaluate_retrieval(model, processor, benchmark.images, benchmark.captions_per_image, batch_size)
    return evaluate_quadruples(model, processor, benchmark.quadruples, benchmark.categories, batch_size)


def _refuse_benchmark(value: Any, argument: str) -> None:
    if isinstance(value, (RetrievalBenchmark, QuadrupleBenchmark)):
        raise TypeError(
            f"{argument}: got the {value.name} benchmark itself; score it with evaluate_benchmark(model, processor, "
            "benchmark), or pass its fields"
        )


def _in_order(items: Any, argument: str) -> Any:
    """`items`, one per image, read by position: a pandas Series as a lazy view of its `.iloc`, as quadruples are read
    (its `[i]` is by label: an image of a Series indexed from 1 failed with a bare KeyError: 0 where it had a copy, and
    for the index [1, 0, 2] the copies were embedded as the other image, silently), anything else as it is. A table is a
    TypeError naming `argument`: its rows are not images, nor caption lists."""
    if _is_table(items):
        raise TypeError(
            f"{argument}: expected a list, one entry per image, got a table ({type(items).__name__}); pass its column: "
            "table[<column>]"
        )
    return _Subset(_by_position(items), range(len(items))) if hasattr(items, "iloc") else items


def _check_retrieval_inputs(images: Sequence[Any], captions_per_image: Sequence[Sequence[str]]) -> None:
    """Raise a TypeError or ValueError naming the first entry of `captions_per_image` that is not a non-empty list of
    strings with words, or the mismatch of the two lengths. A string is a sequence too: taken for an image's list of
    captions, it would be split into one-character captions, silently."""
    if isinstance(captions_per_image, str) or not isinstance(captions_per_image, Sequence):
        raise TypeError(
            f"captions_per_image: expected a list holding a list of captions per image, got {captions_per_image!r:.80}"
        )
    if len(images) != len(captions_per_image):
        raise ValueError(f"retrieval: {len(images)} images but {len(captions_per_image)} caption lists")
    if len(images) == 0:  # `not images` is an error for an array or tensor of several images
        raise ValueError("retrieval: got no images")
    for index, image_captions in enumerate(captions_per_image):
        if isinstance(image_captions, np.ndarray) and image_captions.ndim == 1:  # a list column read by pandas
            image_captions = image_captions.tolist()
        if isinstance(image_captions, str) or not isinstance(image_captions, Sequence):
            raise TypeError(
                f"captions_per_image[{index}]: expected a list of captions, got {image_captions!r:.80} "
                f"({type(image_captions).__name__}); one caption per image is [[caption] for caption in captions]"
            )
        if not image_captions:
            raise ValueError(f"captions_per_image[{index}]: got no captions; every image needs at least one")
        bad = [caption for caption in image_captions if not isinstance(caption, str)]  # np.str_ is a str
        if bad:
            raise TypeError(
                f"captions_per_image[{index}]: expected caption strings, got {bad[0]!r:.80} ({type(bad[0]).__name__})"
            )
        # MAPLE's processor refuses it too, but by its place among the distinct captions
        blank = next((position for position, caption in enumerate(image_captions) if not caption.strip()), None)
        if blank is not None:
            raise ValueError(
                f"captions_per_image[{index}][{blank}]: {image_captions[blank]!r:.80} is blank; expected a caption "
                "with words"
            )


# How `MapleProcessor` names the image it cannot read: by its index in the list it was given
_PROCESSOR_IMAGE = re.compile(r"^images\[(\d+)\]")


@contextlib.contextmanager
def _images_named(name: Callable[[int], str], benchmark: bool = False) -> Iterator[None]:
    """Re-raise the processor's ValueError about `images[j]` of a list the protocol made (interleaved, de-duplicated)
    naming that image as `name(j)` does, in the caller's terms; for a benchmark's images (`benchmark`) as a
    `BenchmarkFormatError`, like its other row errors. Other errors (a benchmark's images name their file and row
    themselves) pass as they are."""
    try:
        yield
    except ValueError as error:
        place = _PROCESSOR_IMAGE.match(str(error))
        if place is None:
            raise
        error_type = BenchmarkFormatError if benchmark else ValueError
        raise error_type(name(int(place.group(1))) + str(error)[place.end():]) from error


def _image_keys(images: Sequence[Any]) -> list[Hashable]:
    """One key per image, equal for copies of one image: a benchmark's images by their stored bytes (`content_keys`,
    read without decoding), others as `_image_key` says."""
    if hasattr(images, "content_keys"):
        return images.content_keys()
    return [_image_key(image, position) for position, image in enumerate(images)]


def _image_key(image: Any, position: int) -> Hashable:
    """The key of `image`, at `position` among the images: a PIL image by the picture it loads as
    (`maple.content.content_id`, as the trainer tells items apart: pixels, palette, transparency, EXIF turn), a path by
    its file's bytes; an item of any other kind (an embedder's own) by its position, a copy of none."""
    from PIL import Image

    from maple.content import content_id

    if isinstance(image, Image.Image):
        try:
            return ("pixels", content_id(image))
        except OSError:  # corrupt image data: the processor reports it, by its position
            return ("position", position)
    if isinstance(image, (str, os.PathLike)) and os.path.isfile(image):
        return file_key(image)
    return ("position", position)


@dataclass(frozen=True)
class _Copies:
    """Items told apart by a key, each embedded once: `first[d]` is the position of distinct item d, and `index[p]`
    the distinct item at position p (a (positions,) int64 tensor that spreads the distinct items' embeddings back)."""

    first: list[int]
    index: torch.Tensor

    @classmethod
    def of(cls, keys: Sequence[Hashable]) -> _Copies:
        distinct: dict[Hashable, int] = {}  # key -> its distinct item
        first, index = [], []
        for position, key in enumerate(keys):
            if key not in distinct:
                distinct[key] = len(first)
                first.append(position)
            index.append(distinct[key])
        return cls(first=first, index=torch.tensor(index, dtype=torch.long))

    def subset(self, items: Sequence[Any]) -> Sequence[Any]:
        """The distinct items of `items` (those at `first`): `items` itself where none is a copy, else a lazy
        `_Subset`, so that a benchmark's images are still decoded a batch at a time."""
        return items if len(self.first) == len(items) else _Subset(items, self.first)


class _Subset(LazySequence):
    """The items of `items` at `positions`, fetched on access (lazy benchmark images are decoded a batch at a time)."""

    def __init__(self, items: Sequence[Any], positions: Sequence[int]):
        self._items, self._positions = items, positions

    def __len__(self) -> int:
        return len(self._positions)

    def _item(self, index: int) -> Any:
        return self._items[self._positions[index]]


class _Interleaved(LazySequence):
    """The 2n images of two image columns (a benchmark's) in order I0, I1, I0, I1, ..., fetched on access, so that lazy
    benchmark images are decoded one batch at a time, each once."""

    def __init__(self, images0: Sequence[Any], images1: Sequence[Any]):
        self._columns = (images0, images1)

    def __len__(self) -> int:
        return 2 * len(self._columns[0])

    def _item(self, index: int) -> Any:
        return self._columns[index % 2][index // 2]

    def content_keys(self) -> list[Hashable]:
        """`_image_keys` of the 2n images, read column by column, so a benchmark's are read without decoding its
        images; an image told apart by its position in its column is by its position among the 2n."""
        keys = [key for pair in zip(*map(_image_keys, self._columns)) for key in pair]
        return [("position", index) if key[0] == "position" else key for index, key in enumerate(keys)]

    def place(self, index: int) -> str:
        """Where image `index` is stored, as its column's `place` says (columns whose images say it)."""
        quadruple, column = divmod(index, 2)
        return self._columns[column].place(quadruple)


def _by_position(quadruples: Quadruples) -> Any:
    """What gives `quadruples`' rows by position: a pandas Series' `.iloc`, as its `[i]` is by label (a KeyError: 0
    for an index from 1, and for the index [1, 0] the texts and images of one row scored with another's category),
    else the quadruples themselves."""
    return getattr(quadruples, "iloc", quadruples)


class _RowImages(LazySequence):
    """The 2n images of quadruples read row by row, in order I0, I1, I0, I1, ..., fetched on access, by position. The
    embedder asks for them in order, so the row read for I0 is kept for I1: a lazy set that decodes its images to give
    a row gives each row once to have it embedded (it was read once per image column)."""

    def __init__(self, quadruples: Quadruples):
        self._rows, self._num_rows = _by_position(quadruples), len(quadruples)
        self._last_row: tuple[int, Any] | None = None  # (index, row) of the row read last

    def __len__(self) -> int:
        return 2 * self._num_rows

    def _item(self, index: int) -> Any:
        row, column = divmod(index, 2)
        if self._last_row is None or self._last_row[0] != row:
            self._last_row = (row, self._rows[row])
        return self._last_row[1][column]


@dataclass(frozen=True)
class _QuadrupleColumns:
    """Quadruples as `_columns` reads them: their 2n images in order I0, I1, I0, I1, ... (lazy), a key per image
    (`_image_keys`, equal for copies), the two texts of each quadruple, and where the images say where they are stored
    (a benchmark's), `place(i)` naming image i, else None."""

    images: Sequence[Any]
    image_keys: list[Hashable]
    texts0: list[str]
    texts1: list[str]
    place: Callable[[int], str] | None


def _check_container(quadruples: Any, argument: str) -> None:
    """Raise a TypeError or ValueError naming `argument` unless `quadruples` holds some quadruples, reading none.

    Quadruples are anything with a length and items by position (a list, a NumPy array of objects, a pandas Series,
    read by position whatever its index, a torch Dataset of tuples), but a string, a mapping or a table. A table (a pandas or polars DataFrame, a pyarrow
    Table, a datasets Dataset) holds its quadruples as columns: a DataFrame failed with "'Index' object is not
    callable"; its TypeError says how to pass its rows."""
    _refuse_benchmark(quadruples, argument)
    if _is_table(quadruples):
        raise _table_error(argument, type(quadruples).__name__)
    indexable = hasattr(quadruples, "__len__") and hasattr(quadruples, "__getitem__")
    if not indexable or isinstance(quadruples, (str, bytes, Mapping)):
        raise TypeError(
            f"{argument}: expected a list of (image0, image1, text0, text1), got a {type(quadruples).__name__}"
        )
    if len(quadruples) == 0:
        raise ValueError(f"{argument}: got none")


def _checked_quadruple(quadruples: Quadruples, index: int, argument: str) -> Sequence[Any]:
    """Quadruple `index`, read once, checked to be four fields of which the last two (text0, text1) are strings with
    words: a ValueError or TypeError naming it (`quadruples[2]: ...`). A first quadruple that is a mapping is a
    table's row (a datasets Dataset's dict, say, was named a malformed quadruple): its TypeError says how to pass the
    table's rows."""
    quadruple = _by_position(quadruples)[index]
    if index == 0 and isinstance(quadruple, Mapping):
        raise _table_error(argument, f"{type(quadruples).__name__} of {type(quadruple).__name__} rows")
    # a string of four letters is a sequence of four, not a quadruple; a row of a NumPy array of objects is one
    fields = (isinstance(quadruple, Sequence) and not isinstance(quadruple, str)) or (
        isinstance(quadruple, np.ndarray) and quadruple.ndim == 1)
    if not fields or len(quadruple) != 4:
        got = f"{len(quadruple)} fields" if fields else f"{quadruple!r:.80}"
        raise ValueError(f"{argument}[{index}]: expected (image0, image1, text0, text1), got {got}")
    for field, text in (("text0", quadruple[2]), ("text1", quadruple[3])):
        if not isinstance(text, str):
            raise TypeError(f"{argument}[{index}]: {field} is {text!r:.80} ({type(text).__name__}); expected a string")
        if not text.strip():  # MAPLE's processor refuses it too, but by its place among the interleaved texts
            raise ValueError(f"{argument}[{index}]: {field} is {text!r:.80}, blank; expected a text with words")
    return quadruple


def _columns(quadruples: Quadruples, argument: str) -> _QuadrupleColumns:
    """The `_QuadrupleColumns` of quadruples that `_check_container` passed, every text checked
    (`_checked_quadruple`, errors naming `argument`); nothing is embedded here.

    A benchmark's quadruples hold their fields as columns (`columns()`, lazy images, texts checked when loaded), read
    as such so that no image is decoded to read a text or a key and each once to embed it. Other quadruples are read
    row by row twice: here for their texts and image keys, then by `_RowImages` to embed their images. Once would mean
    holding every row's images, decoded, from this check to the embedding, which lazy sets avoid; the check comes
    first so that a malformed quadruple is refused before anything is embedded, and the keys before the embedding,
    which embeds copies of an image once."""
    if isinstance(quadruples, IndexedQuadruples):
        images0, images1, texts0, texts1 = quadruples.columns()
        images = _Interleaved(images0, images1)
        place = images.place if hasattr(images0, "place") else None  # a benchmark's images say where they are stored
        return _QuadrupleColumns(images, images.content_keys(), list(texts0), list(texts1), place)
    texts0, texts1, image_keys = [], [], []
    # by position, as `_RowImages` reads the images: a torch Dataset without `__iter__` iterates until an IndexError
    for index in range(len(quadruples)):
        image0, image1, text0, text1 = _checked_quadruple(quadruples, index, argument)
        texts0.append(text0)
        texts1.append(text1)
        image_keys += [_image_key(image0, 2 * index), _image_key(image1, 2 * index + 1)]
    return _QuadrupleColumns(_RowImages(quadruples), image_keys, texts0, texts1, None)


# The tables refused as quadruples, by (module, class): none of these modules is imported here, as a table of one
# exists only once it has been
_TABLE_TYPES = (
    ("pandas", "DataFrame"),
    ("polars", "DataFrame"),
    ("pyarrow", "Table"),
    ("pyarrow", "RecordBatch"),
    ("datasets", "Dataset"),
    ("datasets", "IterableDataset"),
)


def _is_table(value: Any) -> bool:
    return any(
        module in sys.modules and isinstance(value, getattr(sys.modules[module], name)) for module, name in _TABLE_TYPES
    )


def _table_error(argument: str, table: str) -> TypeError:
    """The error for a table (described as `table`) given as `argument`: it says how to pass its rows, naming no
    column, as every benchmark names them differently."""
    return TypeError(
        f"{argument}: expected a list of (image0, image1, text0, text1), got a table ({table}); pass its rows: "
        "list(zip(table[<image0 column>], table[<image1 column>], table[<text0 column>], table[<text1 column>]))"
    )


def check_quadruples(quadruples: Any, argument: str = "quadruples") -> None:
    """Raise a TypeError or ValueError naming `argument` for quadruples that `evaluate_quadruples` would refuse on
    sight: something that is not quadruples (a table, say; see `_check_container`), none at all, or a first quadruple
    that is not four fields or whose texts are not strings with words. Only the first quadruple is read (none of a
    benchmark's, whose texts were checked when it was loaded): a lazy dataset may decode its images to give one, and
    reading all of them took seconds per thousand. The others are checked when `evaluate_quadruples` reads them,
    before anything is embedded."""
    _check_container(quadruples, argument)
    if not isinstance(quadruples, IndexedQuadruples):
        _checked_quadruple(quadruples, 0, argument)


def quadruple_similarities(model, processor, quadruples: Quadruples, batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Per quadruple the image-text cosines [s(I0,T0), s(I0,T1), s(I1,T0), s(I1,T1)] (n, 4) and
    the text-text cosine s(T0, T1) (n,). Copies of a text, or of an image (`_image_keys`), are embedded once, so they
    tie exactly. Quadruples that cannot be read are refused as `check_quadruples` says; an image the processor cannot
    read is a ValueError naming its quadruple and field (`quadruples[2], image1: ...`)."""
    _check_container(quadruples, "quadruples")
    return _similarities(model, processor, _columns(quadruples, "quadruples"), batch_size)


def _similarities(model, processor, columns: _QuadrupleColumns, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`quadruple_similarities` of the quadruples' `_columns`, read once by the caller."""
    num_quadruples = len(columns.texts0)
    # Embedded apart, batch padding moved two copies ~1e-7: the batch size decided whether a quadruple whose two
    # captions (or images) are one scored a hit.
    texts = [text for pair in zip(columns.texts0, columns.texts1) for text in pair]
    text_copies, image_copies = _Copies.of(texts), _Copies.of(columns.image_keys)

    def image_name(index: int) -> str:  # the processor's index is into the distinct images, which the caller never made
        position = image_copies.first[index]
        if columns.place is not None:
            return columns.place(position)
        quadruple, column = divmod(position, 2)
        return f"quadruples[{quadruple}], image{column}"

    def text_name(index: int) -> str:
        quadruple, column = divmod(text_copies.first[index], 2)
        return f"quadruples[{quadruple}], text{column}"

    with _images_named(image_name, benchmark=columns.place is not None):
        text_embeds, image_embeds = _encode(
            model, processor, list(text_copies.subset(texts)), image_copies.subset(columns.images), batch_size,
            text_name, image_name
        )
    text_pairs = text_embeds[text_copies.index].view(num_quadruples, 2, -1)
    image_pairs = image_embeds[image_copies.index].view(num_quadruples, 2, -1)
    image_text = torch.einsum("nid,njd->nij", image_pairs, text_pairs)  # [n, image, text]
    text_text = (text_pairs[:, 0] * text_pairs[:, 1]).sum(dim=-1)
    return image_text.reshape(num_quadruples, 4), text_text


def evaluate_quadruples(
    model, processor, quadruples: Quadruples, categories: Sequence[str] | None = None, batch_size: int = 32
) -> dict[str, Any]:
    """Winoground text/image/group scores (0-100), overall and per category, plus the modality gap.

    Returns {"text_score", "image_score", "group_score", "num_quadruples",
    "per_category": {category: {text_score, image_score, group_score, num_quadruples}},
    "modality_gap": {w_dist, w_disc, delta_gap},
    "similarity_histograms": {bin_edges, matched, mismatched, text_text}}; "per_category" only
    with `categories`, none of which may be `OVERALL_SUBSET` in any case ("all" or "All", the results tables' name for
    all the quadruples: a ValueError naming it). The histograms (counts of cosines in `HISTOGRAM_BINS` bins over [-1, 1]) show the gap
    that the Wasserstein distances summarise; model cards plot them.
    """
    _check_container(quadruples, "quadruples")
    # the categories before the quadruples' rows, each of which a lazy dataset may decode images to give
    # a string of 3 letters was 3 categories, a dict its keys; a set has no quadruple order
    if isinstance(categories, (str, bytes, Mapping, Set)):
        raise TypeError(
            f"categories: expected one category name per quadruple (a list), got a {type(categories).__name__} "
            f"({categories!r:.80})"
        )
    if categories is not None and len(categories) != len(quadruples):
        raise ValueError(f"categories: expected one per quadruple ({len(quadruples)}), got {len(categories)}")
    # they are sorted, and name the per-category results
    labels = [] if categories is None else list(categories)
    bad = next((i for i, label in enumerate(labels) if not isinstance(label, str)), None)
    if bad is not None:
        raise TypeError(
            f"categories[{bad}]: {labels[bad]!r:.80} ({type(labels[bad]).__name__}); expected a category name "
            "(a string)"
        )
    refuse_overall_subset(labels, lambda index: f"categories[{index}] (quadruple {index})", ValueError)
    columns = _columns(quadruples, "quadruples")  # read once, each checked, before anything is embedded
    image_text, text_text = _similarities(model, processor, columns, batch_size)
    hits = group_score_hits(image_text)

    def scores(mask: np.ndarray) -> dict[str, float]:
        """The scores (0-100) over the quadruples where the (n,) boolean `mask` is True, and their count."""
        return {name: 100.0 * float(values[mask].mean()) for name, values in hits.items()} | {
            "num_quadruples": int(mask.sum())
        }

    result = scores(np.ones(len(quadruples), dtype=bool))
    if categories is not None:
        as_array = np.array(labels, dtype=object)
        result["per_category"] = {category: scores(as_array == category) for category in sorted(set(labels))}
    result["modality_gap"] = modality_gap_from_quadruples(image_text, text_text)
    result["similarity_histograms"] = _similarity_histograms(image_text, text_text)
    return result


def _similarity_histograms(image_text: torch.Tensor, text_text: torch.Tensor) -> dict[str, list[int]]:
    """Counts of matched, mismatched and text-text cosines in HISTOGRAM_BINS bins over [-1, 1]."""
    samples = {"matched": image_text[:, [0, 3]], "mismatched": image_text[:, [1, 2]], "text_text": text_text}
    histograms = {}
    for name, values in samples.items():
        # clamped: the cosine of two equal unit vectors often rounds past 1, and histc drops values past its range
        cosines = values.flatten().float().clamp(-1.0, 1.0)
        histograms[name] = torch.histc(cosines, bins=HISTOGRAM_BINS, min=-1.0, max=1.0).long().tolist()
    return {"bin_edges": torch.linspace(-1.0, 1.0, HISTOGRAM_BINS + 1).tolist(), **histograms}

