"""Hard-negative mining: each image's nearest other images under an image encoder.

The paper takes an anchor's top-K DINOv2 neighbours (cosine) as its hard-negative images, after
de-duplicating the corpus with SemDeDup. Both steps are exact and run in fixed-size blocks, so
memory stays bounded at any corpus size: the search (`evaluation.retrieval.chunked_topk`, the
evaluation's own block-wise top-k) never holds more than one (query_chunk_size, key_chunk_size)
similarity block plus a (query_chunk_size, k) running top-k.
"""

from __future__ import annotations

import copyreg
import math
import numbers
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import PIL.Image
import torch

from evaluation.retrieval import check_finite_embeddings, chunked_topk

from .interfaces import check_settings, with_device_map

if TYPE_CHECKING:
    from modeling_maple.processing_maple import MixedImageSizesError

ImageEncoder = Callable[[Sequence[PIL.Image.Image]], torch.Tensor]
"""Maps a batch of images to their embeddings, a float tensor of shape (batch, dim)."""

FROM_PRETRAINED_IMAGE_PROCESSOR_SETTINGS = "image_processor_kwargs (HardNegativeMiner.from_pretrained)"
"""Where a `from_pretrained` miner's image processor takes its settings; a `from_maple` one's, as its MapleProcessor's
(`modeling_maple.processing_maple.MAPLE_IMAGE_PROCESSOR_SETTINGS`)."""

DEFAULT_DUPLICATE_THRESHOLD = 1.0 - 1e-5
"""Cosine at or above which two embeddings count as the same image. Identical images embed to
cosine 1 up to float32 rounding (about 1e-6); genuinely different images sit far below."""


class MinerOutputError(RuntimeError):
    """A miner's image encoder returned something other than one embedding, of one size for all, per image; the
    message names the miner, the images and the shape it returned."""


class MinerInputError(ValueError):
    """Images the miner's encoder cannot take in one batch: its image processor made them of several sizes (`mixed`,
    which names them by their position among the images embedded). `problem` names two of them by
    `HardNegativeMiner.embed`'s `describe` and gives their sizes; `fixes`, the image processor settings that make one
    size; the message says to set them in `set_in`, where the miner's image processor takes its settings.

    It keeps these words, not `mixed` and `describe`: `describe` is often a closure over the caller's rows, which would
    not pickle, and `mixed` may be of a checkpoint's own copy of its class (`is_mixed_image_sizes_error`)."""

    def __init__(self, mixed: MixedImageSizesError, describe: Callable[[int], str] | None, set_in: str) -> None:
        super().__init__(mixed.advice(describe, set_in))
        self.problem = mixed.problem(describe)
        self.fixes = mixed.fixes

    def __reduce__(self) -> tuple:
        # Rebuilt from its message and attributes, without __init__ (whose `describe` it does not keep): BaseException's
        # own would call the class with the message alone, a TypeError in pickle.loads (multiprocessing).
        return copyreg.__newobj__, (type(self), *self.args), self.__dict__


@dataclass(frozen=True)
class Neighbours:
    """Top-k neighbours of every query, best first.

    indices: (num_queries, k) int64 row indices into the searched embeddings, -1 where fewer than k
        eligible neighbours exist.
    scores: (num_queries, k) float32 cosine similarities, -inf where `indices` is -1.
    """

    indices: torch.Tensor
    scores: torch.Tensor


def top_k_neighbours(
    embeddings: torch.Tensor,
    k: int,
    *,
    query_rows: torch.Tensor | None = None,
    query_chunk_size: int = 1024,
    key_chunk_size: int = 8192,
    duplicate_threshold: float = DEFAULT_DUPLICATE_THRESHOLD,
) -> Neighbours:
    """Exact top-k cosine neighbours of every row of `embeddings` (or of the rows `query_rows`) among
    the other rows.

    A row never lists itself, nor any row whose cosine to it reaches `duplicate_threshold` (exact
    duplicates would be useless hard negatives: the judge cannot tell them apart), nor a row that
    duplicates a better neighbour kept in the same way (two copies of one image would fill two of the k
    places with one negative). The search is `evaluation.retrieval.chunked_topk` of the queried rows
    against all rows, with the first two exclusions; the third filters its results, and a row left
    short of k searches again, its neighbours and their duplicates excluded too, until k remain or no
    eligible row is left.

    Args:
        embeddings: (N, D) float tensor, on the device the search should run on (a GPU makes
            100k+ images take seconds); normalised here, in float32, so any scale and dtype is fine.
        k: neighbours per row.
        query_rows: (Q,) int64 rows to search for; all rows when None. Results follow its order.
        query_chunk_size, key_chunk_size: block shape; peak extra memory is about one
            query_chunk_size x key_chunk_size float32 block plus a bool block of the same shape
            (40 MiB at the defaults), the (Q, D) gathered query rows when `query_rows` is given, and
            in a deeper search the (query_chunk_size, k, D) neighbours of a block of the rows still short of k.
        duplicate_threshold: cosine at or above which a row counts as a duplicate.

    Returns `Neighbours` on the CPU: (Q, k) indices, -1 where fewer than k rows are eligible, and
    their scores, -inf there. Of rows whose computed scores are equal, the lower are kept, in any block shape; the
    scores are block matrix products, though, which may round differently in blocks of another shape or on another
    device, so rows that tie in exact arithmetic (exact copies of one image) may be ranked differently there.
    """
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {tuple(embeddings.shape)}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if query_chunk_size < 1 or key_chunk_size < 1:
        raise ValueError("chunk sizes must be positive")
    check_finite_embeddings(embeddings, "images")
    # float32 whatever the encoder's dtype: duplicates sit within ~1e-6 of cosine 1, finer than
    # half precision can tell apart from genuine near neighbours.
    normalised = torch.nn.functional.normalize(embeddings.float(), dim=-1)
    if query_rows is None:
        query_rows = torch.arange(normalised.shape[0], device=normalised.device)
        queries = normalised
    else:
        query_rows = query_rows.to(device=normalised.device, dtype=torch.long)
        queries = normalised[query_rows]
    all_indices = torch.full((len(query_rows), k), -1, dtype=torch.long)
    all_scores = torch.full((len(query_rows), k), float("-inf"))
    found = torch.zeros(len(query_rows), dtype=torch.long)  # neighbours kept so far, per query
    # Rows short of k neighbours once duplicates of better ones are dropped search again, only they, with the
    # neighbours they have and their duplicates excluded: each search adds at least one neighbour, so there are at most k,
    # and a group of copies among a row's nearest costs one search, not one as deep as the group.
    pending, found_rows = torch.arange(len(query_rows)), None
    while len(pending):
        on_device = pending.to(normalised.device)
        scores, indices = chunked_topk(
            queries[on_device],
            normalised,
            k,
            query_chunk=query_chunk_size,
            candidate_chunk=key_chunk_size,
            self_indices=query_rows[on_device],
            duplicate_threshold=duplicate_threshold,
            excluded_indices=found_rows,
        )
        # chunked_topk gives min(k, N) columns, excluded rows last at -inf
        kept = (scores > float("-inf")) & ~_duplicates_of_better_neighbours(normalised, indices, scores, duplicate_threshold)
        # the kept neighbours first, in their order, appended after those found before, up to k
        order = torch.sort((~kept).to(torch.int8), dim=1, stable=True).indices
        added = torch.minimum(kept.sum(dim=1).cpu(), k - found[pending])
        rows, columns = (torch.arange(order.shape[1]) < added[:, None]).nonzero(as_tuple=True)
        targets = (pending[rows], found[pending][rows] + columns)
        all_indices[targets] = indices.gather(1, order).cpu()[rows, columns]
        all_scores[targets] = scores.gather(1, order).cpu()[rows, columns]
        found[pending] += added
        # a column at -inf: the search ran out of eligible rows, and another finds no more
        exhausted = (scores == float("-inf")).any(dim=1).cpu()
        pending = pending[(found[pending] < k) & ~exhausted]
        found_rows = all_indices[pending]  # (P, k), -1 past each row's neighbours
    return Neighbours(indices=all_indices, scores=all_scores)


def _duplicates_of_better_neighbours(
    normalised: torch.Tensor, indices: torch.Tensor, scores: torch.Tensor, threshold: float, max_elements: int = 1 << 23
) -> torch.Tensor:
    """(Q, depth) bool: True where a neighbour's cosine to a better-ranked neighbour of the same query that is kept
    reaches `threshold`. Kept: real (not -inf) and not itself such a duplicate; walking the ranking best first, each
    neighbour is kept unless it duplicates one kept before it, so a deeper search, which excludes the duplicates of
    the kept ones, continues the same order. Rows are compared a chunk at a time, of about `max_elements` floats."""
    depth = indices.shape[1]
    duplicates = torch.zeros_like(indices, dtype=torch.bool)
    chunk_size = max(1, max_elements // max(1, depth * (normalised.shape[1] + depth)))
    for start in range(0, indices.shape[0], chunk_size):
        rows = slice(start, start + chunk_size)
        neighbours = normalised[indices[rows].clamp(min=0)]  # (chunk, depth, D)
        similar = neighbours @ neighbours.transpose(1, 2) >= threshold  # (chunk, depth, depth)
        real = scores[rows] > float("-inf")
        for position in range(1, depth):  # depth is k: a few steps
            kept_before = real[:, :position] & ~duplicates[rows, :position]
            duplicates[rows, position] = (similar[:, position, :position] & kept_before).any(dim=1)
    return duplicates


@dataclass(frozen=True)
class DedupResult:
    """Outcome of SemDeDup.

    kept: (num_kept,) int64 indices of the rows that survive, ascending.
    removed: {removed row: the row it duplicates} for every dropped row.
    """

    kept: torch.Tensor
    removed: dict[int, int]


def check_semdedup_clusters(num_clusters: int, num_rows: int) -> None:
    """Raise a ValueError unless `num_clusters` k-means clusters leave at least two of `num_rows`
    rows per cluster on average, and unless there is at least one cluster: none failed inside
    k-means with an IndexError, and a negative count clustered into that many fewer than the rows
    (it sliced the random first centroids), finding almost no duplicates, silently.

    SemDeDup compares rows only within their cluster. With about as many clusters as rows most rows
    sit alone and their duplicates go unnoticed (at num_clusters >= num_rows every row does, and
    nothing is removed), silently: the paper's 50,000 clusters suit its ~700k images, 14 per
    cluster, not a corpus of 50k.
    """
    if num_clusters < 1:
        raise ValueError(f"SemDeDup needs at least 1 cluster, got num_clusters={num_clusters} (to turn de-duplication "
                         "off, pass semdedup_clusters=None, CLI --semdedup-clusters 0)")
    if 2 * num_clusters > num_rows:
        off = "turn de-duplication off (semdedup_clusters=None, CLI --semdedup-clusters 0)"
        if num_rows // 14 >= 2:
            advice = (f"use about {num_rows // 14} clusters (rows / 14, as the paper's 50,000 clusters for ~700k images; "
                      f"semdedup_clusters=..., CLI --semdedup-clusters) or {off}")
        else:  # rows / 14 would be one cluster (or none): k-means has nothing to split
            advice = f"{off}; {num_rows} rows are too few to cluster (at the paper's rows / 14, under 28 rows make fewer than 2 clusters)"
        raise ValueError(
            f"SemDeDup with {num_clusters} clusters on {num_rows} rows leaves fewer than 2 rows per cluster, and rows "
            f"are compared only within their cluster, so most duplicates would go unnoticed: {advice}"
        )


def spherical_kmeans(
    embeddings: torch.Tensor, num_clusters: int, *, iterations: int = 20, seed: int = 0, chunk_size: int = 8192
) -> torch.Tensor:
    """Cluster unit vectors by cosine; returns the (N,) int64 cluster of every row, on the device
    of `embeddings`.

    Assignment runs in chunks of `chunk_size` rows so no (N, num_clusters) matrix is built.
    """
    normalised = torch.nn.functional.normalize(embeddings.float(), dim=-1)
    num_rows = normalised.shape[0]
    num_clusters = min(num_clusters, num_rows)
    generator = torch.Generator().manual_seed(seed)
    initial = torch.randperm(num_rows, generator=generator)[:num_clusters].to(normalised.device)
    centroids = normalised[initial].clone()
    assignment = torch.zeros(num_rows, dtype=torch.long, device=normalised.device)
    for _ in range(iterations):
        for start in range(0, num_rows, chunk_size):
            block = normalised[start : start + chunk_size]
            assignment[start : start + chunk_size] = (block @ centroids.T).argmax(dim=1)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, normalised)
        empty = sums.norm(dim=1) == 0
        # An empty cluster keeps its old centroid rather than collapsing to the zero vector.
        sums[empty] = centroids[empty]
        centroids = torch.nn.functional.normalize(sums, dim=-1)
    return assignment


# Below it the float32 cosines of exact copies, which round about 1e-7 either side of 1, decide whether they are
# duplicates: at 1e-9 an arbitrary share of them was, which changed with the block size
MIN_SEMDEDUP_EPSILON = 1e-5


def semdedup(
    embeddings: torch.Tensor,
    *,
    num_clusters: int,
    epsilon: float,
    iterations: int = 20,
    seed: int = 0,
    max_elements: int = 1 << 24,
) -> DedupResult:
    """SemDeDup (Abbas et al., 2023): cluster, then inside each cluster drop every row whose cosine
    to another row of the cluster exceeds 1 - epsilon.

    Inside a cluster rows are ordered by similarity to the centroid, least typical first, and a row
    is dropped when it duplicates any row ordered before it; so of each duplicate group the row
    farthest from the centroid (the least prototypical) survives, SemDeDup's default, and of exact
    copies the first (the sort is stable, so CPU and GPU keep the same one). The paper
    uses 50,000 clusters and epsilon 0.07 on DINOv2 embeddings.

    Args:
        embeddings: (N, D) float tensor, on the device the clustering should run on.
        num_clusters: k-means clusters, at most N / 2 (`check_semdedup_clusters`).
        epsilon: duplicates have cosine > 1 - epsilon.

    Memory: a (cluster size, block) similarity block of about `max_elements` floats at a time (64 MiB at the
    default), so a large cluster (thousands of copies of one placeholder image) does not need (cluster size)^2.
    """
    if not MIN_SEMDEDUP_EPSILON <= epsilon < 1.0:
        raise ValueError(f"epsilon must be in [{MIN_SEMDEDUP_EPSILON}, 1), got {epsilon}")
    check_semdedup_clusters(num_clusters, embeddings.shape[0])
    check_finite_embeddings(embeddings, "images")
    normalised = torch.nn.functional.normalize(embeddings.float(), dim=-1)
    assignment = spherical_kmeans(normalised, num_clusters, iterations=iterations, seed=seed)
    # Rows grouped by cluster with one sort, instead of one scan of all rows per cluster.
    by_cluster = assignment.argsort(stable=True)
    cluster_sizes = torch.bincount(assignment).tolist()
    removed: dict[int, int] = {}
    for members in by_cluster.split(cluster_sizes):
        if members.numel() < 2:
            continue
        vectors = normalised[members]
        centroid = torch.nn.functional.normalize(vectors.sum(0), dim=0)
        order = (vectors @ centroid).argsort(stable=True)
        members, vectors = members[order], vectors[order]
        best, best_row = _best_earlier_rows(vectors, max_elements)
        for position in (best > 1.0 - epsilon).nonzero().squeeze(1).tolist():
            removed[int(members[position])] = int(members[best_row[position]])
    kept = torch.tensor(sorted(set(range(normalised.shape[0])) - removed.keys()), dtype=torch.long)  # on the CPU
    return DedupResult(kept=kept, removed=removed)


def _best_earlier_rows(vectors: torch.Tensor, max_elements: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row j of `vectors` (n, D), the largest similarity to a row i < j and that row (the first of equals);
    (0, 0) for row 0. Columns are computed a block at a time, each against all rows."""
    n = vectors.shape[0]
    best, best_row = torch.empty(n, device=vectors.device), torch.empty(n, dtype=torch.long, device=vectors.device)
    columns_per_block = max(1, max_elements // max(1, n))
    rows = torch.arange(n, device=vectors.device)
    for start in range(0, n, columns_per_block):
        columns = rows[start : start + columns_per_block]
        # similarities[i, j] for i < j only: row j is compared with the rows ordered before it.
        similarities = (vectors @ vectors[columns].T).masked_fill(rows[:, None] >= columns[None, :], 0.0)
        best[columns], best_row[columns] = similarities.max(dim=0)
    return best, best_row


class HardNegativeMiner:
    """Embeds images with any image encoder and finds each image's hard negatives.

    Build it from a Hub id or local path of a transformers image model (`from_pretrained`, e.g.
    "facebook/dinov2-base" as in the paper), from a MAPLE embedder (`from_maple`), or from any
    callable mapping a batch of images to a (batch, dim) tensor. `name` identifies the encoder in
    dataset cards and cache keys. Neighbour search and SemDeDup run on `search_device` (default: the
    GPU if there is one), embeddings are kept on the CPU.
    """

    def __init__(
        self,
        encode_images: ImageEncoder,
        *,
        batch_size: int = 64,
        query_chunk_size: int = 1024,
        key_chunk_size: int = 8192,
        duplicate_threshold: float = DEFAULT_DUPLICATE_THRESHOLD,
        name: str | None = None,
        search_device: str | torch.device | None = None,
    ) -> None:
        self.check_values(batch_size=batch_size, query_chunk_size=query_chunk_size, key_chunk_size=key_chunk_size,
                          duplicate_threshold=duplicate_threshold)
        self.encode_images = encode_images
        self.search_device = torch.device(search_device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.name = name or getattr(encode_images, "__qualname__", type(encode_images).__name__)
        self.batch_size = batch_size
        self.query_chunk_size = query_chunk_size
        self.key_chunk_size = key_chunk_size
        self.duplicate_threshold = duplicate_threshold

    @staticmethod
    def check_values(**settings: Any) -> None:
        """A ValueError naming every given size (`batch_size`, `query_chunk_size`, `key_chunk_size`) that is no integer
        (a float failed once the images were checked, or embedded) or is below 1, and a given `duplicate_threshold`
        that is no finite number (a NaN one, recorded in the builder's manifest, never equals itself: the build refused
        its own work dir). None is no default of any of them: given, it is refused too (it failed once every image was
        embedded). `from_pretrained` checks the ones it is given before it loads."""
        problems = []
        for setting in ("batch_size", "query_chunk_size", "key_chunk_size"):
            if setting not in settings:
                continue
            value = settings[setting]
            if not isinstance(value, numbers.Integral) or isinstance(value, bool):
                problems.append(f"{setting} must be an integer, got {value!r} ({type(value).__name__})")
            elif value < 1:
                problems.append(f"{setting} must be at least 1, got {value}")
        if "duplicate_threshold" in settings:
            threshold = settings["duplicate_threshold"]
            if not (isinstance(threshold, numbers.Real) and not isinstance(threshold, bool) and math.isfinite(threshold)):
                problems.append(f"duplicate_threshold must be a finite number (a cosine), got {threshold!r}")
        if problems:
            raise ValueError("invalid HardNegativeMiner settings: " + "; ".join(problems))

    @classmethod
    def from_pretrained(
        cls,
        model_id_or_path: str,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        device_map: str | dict | None = None,
        image_processor_kwargs: dict | None = None,
        model_kwargs: dict | None = None,
        token: str | None = None,
        **kwargs,
    ) -> HardNegativeMiner:
        """A miner on a transformers image encoder (AutoModel + AutoImageProcessor), or on a saved MAPLE embedder
        (`model_type` "maple", either backbone: `load_maple`, then as `from_maple`).

        The embedding is the encoder's `get_image_features` where it has one (CLIP, SigLIP, MAPLE),
        else its pooled output (DINOv2: the layer-normed CLS token), else the first token of the
        last hidden state. The encoder goes on `device` (default: the CPU), or where `device_map`
        places it, and so do the neighbour search and SemDeDup unless `search_device` says otherwise
        (without a `device`: the GPU if there is one); so each rank of a multi-GPU build that passes
        its own device searches on it. `image_processor_kwargs` override the image processor's settings (e.g.
        `{"do_center_crop": True}`; one it does not have, or fails on, is a ValueError before the weights load, as for
        the judge and the captioner); `model_kwargs` are more `from_pretrained` arguments (e.g.
        `attn_implementation`); `token` is the Hub token the config, weights and image processor are read with (None:
        HF_TOKEN or the saved login); `kwargs` go to the miner, and a keyword that is none of these is a TypeError
        saying where it goes (`interfaces.check_settings`), as for the judge and the captioner.
        """
        from transformers import AutoConfig, AutoModel

        from modeling_maple.processing_maple import load_image_processor

        check_settings(cls, kwargs, ("device", "dtype", "device_map", "image_processor_kwargs", "model_kwargs", "token"))
        cls.check_values(**kwargs)
        model_kwargs = with_device_map(f"{cls.__name__}.from_pretrained", model_kwargs, device_map)
        config = AutoConfig.from_pretrained(model_id_or_path, token=token)
        encoder_class = _TransformersImageEncoder
        if config.model_type == "maple":
            # A MAPLE embedder takes its images from its MapleProcessor (an MLLM backbone's need its image tokens), not
            # from an image processor alone: loaded as a plain encoder, an MLLM one failed at its first batch.
            from modeling_maple.loading import load_maple

            model, image_processor = load_maple(model_id_or_path, token=token, image_processor_kwargs=image_processor_kwargs,
                                                dtype=dtype, **model_kwargs)
            encoder_class = _MapleImageEncoder
        else:
            if (problem := encoder_config_problem(model_id_or_path, config.to_dict())) is not None:
                raise ValueError(problem)  # it would load, and fail at its first batch of images
            image_processor = load_image_processor(model_id_or_path, image_processor_kwargs, token=token)
            model = AutoModel.from_pretrained(model_id_or_path, dtype=dtype, token=token, **model_kwargs)
        model = model.eval()
        if "device_map" not in model_kwargs:
            model = model.to(device or "cpu")
        kwargs.setdefault("name", model_id_or_path)
        if device is not None:
            kwargs.setdefault("search_device", device)
        return cls(encoder_class(model, image_processor), **kwargs)

    @classmethod
    def from_maple(cls, model, processor, **kwargs) -> HardNegativeMiner:
        """A miner on a MAPLE embedder: its normalised image embeddings (`MapleModel.encode`)."""
        from modeling_maple.processing_maple import MAPLE_IMAGE_PROCESSOR_SETTINGS

        kwargs.setdefault("name", f"maple:{model.config.name_or_path or 'in-memory'}")
        return cls(_MapleImageEncoder(model, processor, settings_set_in=MAPLE_IMAGE_PROCESSOR_SETTINGS), **kwargs)

    @property
    def settings(self) -> dict:
        """What, beside `name`, decides the neighbours: the duplicate threshold and the encoder's own
        `settings` where it has them (from `from_pretrained`: weights dtype and image-processor
        settings). Recorded in the builder's manifest; batch and chunk sizes only move float rounding (which may
        settle a tie of exact copies another way: `top_k_neighbours`)."""
        return {"duplicate_threshold": self.duplicate_threshold, "encoder": getattr(self.encode_images, "settings", None)}

    @torch.inference_mode()
    def embed(self, images: Iterable[PIL.Image.Image], *, describe: Callable[[int], str] | None = None) -> torch.Tensor:
        """(N, D) float32 L2-normalised embeddings of `images` (PIL images or file paths),
        encoded `batch_size` at a time. The encoder gets RGB images; an unreadable one is a
        ValueError naming its position in `images`. A batch the image processor of a `from_pretrained` or `from_maple`
        miner makes of several sizes is a `MinerInputError` naming two of its images by `describe(position in images)`
        (default: `images[i]`; the builder names source rows and ids)."""
        # Imported here: importing modeling_maple pulls in transformers, which a process that only
        # builds from finished embeddings (or prints --help) should not pay for.
        from modeling_maple.processing_maple import is_mixed_image_sizes_error, load_image

        pending: list[PIL.Image.Image] = []
        embeddings: list[torch.Tensor] = []

        def encode(first: int) -> torch.Tensor:  # `pending` holds images first, first + 1, ...
            # The miner's own encoders (MAPLE's included) name a bad image by its position in `images`, which
            # `describe` words in the caller's terms; any other callable takes a batch.
            if isinstance(self.encode_images, _TransformersImageEncoder):
                try:
                    encoded = self.encode_images(pending, first_index=first)
                except ValueError as error:
                    # not `except MixedImageSizesError`: a `from_maple` processor loaded with trust_remote_code raises
                    # its checkpoint's copy of the class
                    if not is_mixed_image_sizes_error(error):
                        raise
                    raise MinerInputError(error, describe, self.encode_images.settings_set_in) from None
            else:
                encoded = self.encode_images(pending)
            # another shape would pair embeddings with the wrong rows, silently; another size than the first batch's
            # was torch.cat's bare RuntimeError once every image was encoded
            size = embeddings[0].shape[1] if embeddings else None
            if not (isinstance(encoded, torch.Tensor) and encoded.ndim == 2 and encoded.shape[0] == len(pending)
                    and encoded.shape[1] > 0 and size in (None, encoded.shape[1])):
                got = tuple(encoded.shape) if isinstance(encoded, torch.Tensor) else type(encoded).__name__
                which = f"images {first}-{first + len(pending) - 1}" if len(pending) > 1 else f"image {first}"
                expected = (f"({len(pending)}, D) tensor" if size is None
                            else f"({len(pending)}, {size}) tensor, as for the images before")
                raise MinerOutputError(f"the image encoder of miner {self.name!r} returned {got} for {which}; expected a "
                                       f"{expected}, one row per image")
            return encoded.float().cpu()

        for index, image in enumerate(images):
            pending.append(load_image(image, index))
            if len(pending) == self.batch_size:
                embeddings.append(encode(index + 1 - len(pending)))
                pending = []
        if pending:
            embeddings.append(encode(index + 1 - len(pending)))
        if not embeddings:
            raise ValueError("no images to embed")
        return torch.nn.functional.normalize(torch.cat(embeddings), dim=-1)

    def mine(self, embeddings: torch.Tensor, k: int, *, query_rows: torch.Tensor | None = None) -> Neighbours:
        """Top-`k` neighbours of every row of `embeddings` (N, D) (or of `query_rows` only),
        excluding itself and duplicates."""
        return top_k_neighbours(
            embeddings.to(self.search_device),
            k,
            query_rows=query_rows,
            query_chunk_size=self.query_chunk_size,
            key_chunk_size=self.key_chunk_size,
            duplicate_threshold=self.duplicate_threshold,
        )

    def image_problem(self, size: tuple[int, int]) -> str | None:
        """Why the encoder cannot take an image of `size` (width, height) (its own `image_problem`), or None."""
        check = getattr(self.encode_images, "image_problem", None)
        return None if check is None else check(size)

    def deduplicate(self, embeddings: torch.Tensor, *, num_clusters: int, epsilon: float, seed: int = 0) -> DedupResult:
        """SemDeDup over `embeddings` (N, D); see `semdedup`."""
        return semdedup(embeddings.to(self.search_device), num_clusters=num_clusters, epsilon=epsilon, seed=seed)


GENERATIVE_HEADS = ("ForConditionalGeneration", "ForCausalLM", "ForImageTextToText")


def encoder_config_problem(model_ref: str, config: dict[str, Any]) -> str | None:
    """Why `HardNegativeMiner.from_pretrained` cannot mine with the checkpoint whose config.json is `config`, or None:
    an MLLM (a supported judge family, or any generative head) returns no image embedding from its forward (its
    `get_image_features` gives a tuple of per-image token features), so it failed only at the first batch it embedded."""
    from modeling_maple.configuration_maple import SUPPORTED_MLLMS

    model_type = config.get("model_type")
    generative = [name for name in config.get("architectures") or [] if name.endswith(GENERATIVE_HEADS)]
    if model_type not in SUPPORTED_MLLMS and not generative:
        return None
    what = f"a {model_type!r} MLLM" + (f" ({generative[0]})" if generative else "")
    return (f"{model_ref} is {what}, not an image encoder: mine with one (facebook/dinov2-base, a CLIP or SigLIP "
            "model), or with a MAPLE embedder of it (HardNegativeMiner.from_maple)")


class _TransformersImageEncoder:
    """Callable image encoder over a transformers model and its image processor, whose settings are set in
    `settings_set_in` (what a `MinerInputError` advises)."""

    def __init__(
        self, model: torch.nn.Module, image_processor, settings_set_in: str = FROM_PRETRAINED_IMAGE_PROCESSOR_SETTINGS
    ) -> None:
        self.model = model
        self.image_processor = image_processor
        self.settings_set_in = settings_set_in

    @property
    def settings(self) -> dict:
        """The weights (`weights_digest`), their dtype and the image processor's settings: all change the embeddings."""
        from .vlm_inputs import image_processor_settings, weights_digest  # transformers: loaded already for this encoder

        return {
            "weights": weights_digest(self.model),
            "dtype": str(self.model.dtype),
            "image_processor": image_processor_settings(self.image_processor),
        }

    def __call__(self, images: Sequence[PIL.Image.Image], first_index: int = 0) -> torch.Tensor:
        """(len(images), D) embeddings of `images`, RGB already (`HardNegativeMiner.embed` loads every image with
        `load_image`), the caller's `images[first_index:]`. A batch the image processor makes of several sizes (DINOv2
        takes any size; CLIP's image processor without its center crop keeps each image's aspect ratio) is a
        `MixedImageSizesError` naming two of them by their index in the caller's images (`process_image_batch`)."""
        from modeling_maple.processing_maple import process_image_batch

        inputs = process_image_batch(self.image_processor, list(images), first_index).to(self.model.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        if hasattr(self.model, "get_image_features"):
            features = self.model.get_image_features(**inputs)
        else:
            features = self.model(**inputs, return_dict=True)  # read by name, whatever `config.return_dict` says
        if isinstance(features, torch.Tensor):
            return features
        if getattr(features, "pooler_output", None) is not None:
            return features.pooler_output
        return features.last_hidden_state[:, 0]


class _MapleImageEncoder(_TransformersImageEncoder):
    """Callable image encoder over a `MapleModel`: its `MapleProcessor` stands for the image processor (its settings,
    prompts included, are recorded alike), its normalised embeddings come from `MapleModel.encode`; a dual encoder's
    batch of several sizes is its processor's `MixedImageSizesError` (the checkpoint's copy of the class, for a
    processor loaded with trust_remote_code), as for a transformers encoder."""

    def __call__(self, images: Sequence[PIL.Image.Image], first_index: int = 0) -> torch.Tensor:
        return self.model.encode(self.image_processor, images=list(images), batch_size=len(images),
                                 first_index=first_index)

    def image_problem(self, size: tuple[int, int]) -> str | None:
        """Why an MLLM embedder cannot take an image of `size` (width, height), or None (`mllm_image_problem`: Pixtral's
        and Mistral 3's rules read the image processor's `longest_edge` and token cell)."""
        from modeling_maple.processing_maple import mllm_image_problem

        processor = self.image_processor
        if processor.backbone != "mllm":
            return None
        return mllm_image_problem(processor.mllm_type, size, processor.image_processor, processor.spatial_merge_size)
