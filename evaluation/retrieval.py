"""Retrieval over large corpora without materialising the (queries x candidates) score matrix.

Scores are inner products of the embeddings given (cosines for MAPLE's L2-normalised ones). The two search functions
walk the score matrix in (query_chunk x candidate_chunk) blocks, so peak extra memory is a few blocks of
query_chunk * candidate_chunk * 4 bytes (64 MiB at the defaults) whatever the corpus size: the reused block buffer,
and in `chunked_ranks` up to `KEPT_RELEVANT_BLOCKS` kept blocks.

- `chunked_topk` keeps a running top-k per query: the k best candidates seen so far are merged
  with each block's own top-k. It can skip, block by block, each query's own row and its
  near-duplicates (self-retrieval, as in hard-negative mining: `dataset_builders.miner`), and more
  candidates given per query and their near-duplicates (the neighbours a deeper search already has).
- `chunked_ranks` gives the exact 1-based rank of each query's first relevant candidate, with the
  same tie rule as `evaluation.metrics.first_relevant_ranks`, so recall@k for any k and MRR equal
  the dense computation.

`anchor_recall_at_1` is the recall@1 that `RPATrainer` reports over an evaluation set's anchor pairs.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator

import torch

from .metrics import (
    DEFAULT_KS, RelevantIndices, checked_ks, recall_from_ranks, relevant_index_lists, relevant_pairs,
)

DEFAULT_QUERY_CHUNK = 1024
DEFAULT_CANDIDATE_CHUNK = 16384
# Score blocks `chunked_ranks` keeps between its two passes (each as large as the block buffer, 64 MiB at the
# defaults): enough for the one or two blocks that hold a query block's relevant candidates in COCO-style data.
KEPT_RELEVANT_BLOCKS = 2


def _check_embeddings(queries: torch.Tensor, candidates: torch.Tensor) -> None:
    if queries.ndim != 2 or candidates.ndim != 2 or queries.shape[1] != candidates.shape[1]:
        raise ValueError(
            "embeddings: expected queries (Q, D) and candidates (C, D) with the same D, "
            f"got {tuple(queries.shape)} and {tuple(candidates.shape)}"
        )
    # scores are computed in their dtype, on their device (and masked with -inf): torch said "value cannot be converted
    # to type int64_t without overflow" for integer ones, "expected m1 and m2 to have the same dtype" for two dtypes
    if not (queries.is_floating_point() and queries.dtype == candidates.dtype and queries.device == candidates.device):
        raise ValueError(
            "embeddings: expected queries and candidates of one floating-point dtype on one device, got "
            f"{queries.dtype} on {queries.device} and {candidates.dtype} on {candidates.device}"
        )
    check_finite_embeddings(queries, "queries")
    check_finite_embeddings(candidates, "candidates")


def _check_counts(query_chunk: int, candidate_chunk: int, k: int | None = None) -> None:
    """A ValueError naming a block size that is not a positive integer, or a `k` that is not a non-negative one (they
    failed inside torch or `range()`, naming neither)."""
    for name, value in (("query_chunk", query_chunk), ("candidate_chunk", candidate_chunk)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    if k is not None and (not isinstance(k, numbers.Integral) or isinstance(k, bool) or k < 0):
        raise ValueError(f"k: expected a non-negative integer, got {k!r}")


class NonFiniteEmbeddingsError(ValueError):
    """Embeddings with NaN or inf rows: a diverged or overflowing model, which no score describes."""


def check_finite_embeddings(
    embeddings: torch.Tensor, name: str, *, describe: Callable[[int], str] = lambda row: f"row {row}"
) -> None:
    """Raise `NonFiniteEmbeddingsError` naming the rows of (N, D) `embeddings` that hold NaN or inf, the first 10 as
    `describe(row)` says. A NaN score compares false with everything, so such a row would rank first or lose every
    comparison: a plausible-looking score, or every other row's nearest neighbour in a hard-negative search."""
    rows = (~torch.isfinite(embeddings)).any(dim=-1).nonzero().flatten().tolist()
    if rows:
        named = ", ".join(describe(row) for row in rows[:10]) + (f" and {len(rows) - 10} more" if len(rows) > 10 else "")
        raise NonFiniteEmbeddingsError(
            f"embeddings: {len(rows)} of the {embeddings.shape[0]} {name} are not finite (NaN or inf): {named}; a "
            "diverged or overflowing model gives these (check it, e.g. load it in float32 rather than half precision)"
        )


def _block_buffers(
    count: int, queries: torch.Tensor, candidates: torch.Tensor, query_chunk: int, candidate_chunk: int
) -> torch.Tensor:
    """(count, block size) storage for score blocks, allocated once per call: a fresh 64 MiB tensor per block (per
    query block, per pass) costs page faults comparable to the matmul itself."""
    return queries.new_empty((count, min(query_chunk, queries.shape[0]) * min(candidate_chunk, candidates.shape[0])))


def _score_blocks(
    query_block: torch.Tensor,
    candidates: torch.Tensor,
    candidate_chunk: int,
    buffer: torch.Tensor,
    starts: Iterable[int] | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (first candidate index, query_block @ candidate_block.T) over the candidate blocks, or over those
    starting at `starts` (multiples of `candidate_chunk`): a block's scores are the same bits on every pass.

    Every block is written into `buffer` (one of `_block_buffers`), so the yielded tensor is overwritten by the next
    block.
    """
    for c_start in range(0, candidates.shape[0], candidate_chunk) if starts is None else starts:
        candidate_block = candidates[c_start : c_start + candidate_chunk]
        scores = buffer[: query_block.shape[0] * candidate_block.shape[0]].view(query_block.shape[0], -1)
        torch.matmul(query_block, candidate_block.T, out=scores)
        yield c_start, scores


def _exclude_in_block(
    block_scores: torch.Tensor,
    candidate_block: torch.Tensor,
    c_start: int,
    self_indices: torch.Tensor | None,
    duplicate_threshold: float | None,
    excluded: tuple[torch.Tensor, torch.Tensor] | None,
) -> None:
    """Set to -inf, in place, the scores of the candidates a query must not retrieve.

    block_scores: (q, c) scores of a query block against `candidate_block` (c, D), the candidates
    [c_start, c_start + c); self_indices: (q,) int64 position of each query among all candidates, or None;
    excluded: per query, (q, m) int64 positions of more candidates it must not retrieve (-1: none) and their (q, m, D)
    vectors, whose near-duplicates it must not retrieve either (None without a `duplicate_threshold`).
    """
    if duplicate_threshold is not None:
        block_scores.masked_fill_(block_scores >= duplicate_threshold, float("-inf"))
    if self_indices is not None:
        # One (row, column) per query whose own row lies in this block: no (q, c) mask for it.
        _exclude_columns(block_scores, self_indices[:, None] - c_start)
    if excluded is not None:
        indices, vectors = excluded
        _exclude_columns(block_scores, indices - c_start)  # by position too: a vector need not reach the threshold
        for slot in range(indices.shape[1] if duplicate_threshold is not None else 0):
            # one (q, c) block per slot: the (q, m, c) scores at once would be m blocks
            near = (vectors[:, slot] @ candidate_block.T >= duplicate_threshold) & (indices[:, slot, None] >= 0)
            block_scores.masked_fill_(near, float("-inf"))


def _exclude_columns(block_scores: torch.Tensor, columns: torch.Tensor) -> None:
    """Set block_scores[row, columns[row, j]] to -inf, in place, for the (q, m) `columns` inside the block."""
    rows, slots = ((columns >= 0) & (columns < block_scores.shape[1])).nonzero(as_tuple=True)
    block_scores[rows, columns[rows, slots]] = float("-inf")


def _topk_first_columns(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`scores.topk(k, dim=1)` with exact ties settled the same way whatever the blocks: of equal scores, those in the
    first columns, and the k sorted by score, then column. Returns (values, columns), each (Q, k)."""
    # One more than asked: a row whose (k+1)-th score equals its k-th has a tie to settle across the cut.
    top = scores.topk(min(k + 1, scores.shape[1]), dim=1)
    values, columns = top.values[:, :k], top.indices[:, :k]
    if k == 0:
        return values, columns
    kth = values[:, -1:]
    open_rows = (top.values[:, k] == kth[:, 0]).nonzero().flatten() if top.values.shape[1] > k else kth[:0, 0].long()
    if len(open_rows):  # they take the tied scores in their first columns
        open_scores, open_kth = scores[open_rows], kth[open_rows]
        above, at = open_scores > open_kth, open_scores == open_kth
        chosen = above | (at & (at.cumsum(dim=1) <= k - above.sum(dim=1, keepdim=True)))
        columns = columns.clone()
        columns[open_rows] = chosen.nonzero()[:, 1].view(len(open_rows), k)
    # by score, then column
    columns = columns.sort(dim=1).values
    values = scores.gather(1, columns)
    order = values.sort(dim=1, descending=True, stable=True).indices
    return values.gather(1, order), columns.gather(1, order)


@torch.no_grad()
def chunked_topk(
    queries: torch.Tensor,
    candidates: torch.Tensor,
    k: int,
    query_chunk: int = DEFAULT_QUERY_CHUNK,
    candidate_chunk: int = DEFAULT_CANDIDATE_CHUNK,
    *,
    self_indices: torch.Tensor | None = None,
    duplicate_threshold: float | None = None,
    excluded_indices: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k highest-scoring candidates of every query, scores = queries @ candidates.T.

    Args:
        queries: (Q, D); the search runs on their device, in their dtype.
        candidates: (C, D), on the same device.
        k: candidates per query; at most C are returned.
        query_chunk, candidate_chunk: block shape; peak extra memory is one
            query_chunk x candidate_chunk score block (plus a bool block of the same shape
            with `duplicate_threshold`).
        self_indices: (Q,) int64 position of each query among the candidates when the queries are
            candidates themselves; a query never retrieves its own position. An index outside
            [0, C) excludes nothing.
        duplicate_threshold: candidates scoring at or above it are never retrieved (near-duplicates
            of the query).
        excluded_indices: (Q, m) int64 per query, up to m more candidates it never retrieves, nor (with
            `duplicate_threshold`) their near-duplicates (scoring at or above it against one of them); -1
            excludes nothing. The miner's deeper searches pass the neighbours a query already has. Costs m
            more block products.

    Returns (scores, indices), each (Q, min(k, C)), sorted best first; equal to
    `(queries @ candidates.T).topk(k)`, exact ties settled by the lower candidate index whatever the
    block shapes (given scores computed alike in every block shape), with the excluded
    candidates' scores set to -inf. Where fewer than min(k, C) candidates are left, the trailing
    columns hold excluded candidates at -inf: callers tell them apart by that score.
    """
    _check_embeddings(queries, candidates)
    _check_counts(query_chunk, candidate_chunk, k)
    if self_indices is not None and self_indices.shape != (queries.shape[0],):
        raise ValueError(f"self_indices: expected shape ({queries.shape[0]},), got {tuple(self_indices.shape)}")
    if excluded_indices is not None and (excluded_indices.ndim != 2 or len(excluded_indices) != len(queries)):
        raise ValueError(f"excluded_indices: expected shape ({queries.shape[0]}, m), got {tuple(excluded_indices.shape)}")
    k = min(k, candidates.shape[0])
    excluding = self_indices is not None or duplicate_threshold is not None or excluded_indices is not None
    if self_indices is not None:
        self_indices = self_indices.to(device=queries.device, dtype=torch.long)
    # Filled block by block: no list of per-block results to concatenate (and Q = 0 just works).
    all_scores = queries.new_empty((queries.shape[0], k))
    all_indices = torch.empty((queries.shape[0], k), dtype=torch.long, device=queries.device)
    (buffer,) = _block_buffers(1, queries, candidates, query_chunk, candidate_chunk)
    for q_start in range(0, queries.shape[0], query_chunk):
        query_block = queries[q_start : q_start + query_chunk]
        block_self = None if self_indices is None else self_indices[q_start : q_start + query_chunk]
        block_excluded = None
        if excluded_indices is not None:
            indices = excluded_indices[q_start : q_start + query_chunk].to(device=queries.device, dtype=torch.long)
            # their vectors only to find their near-duplicates (an empty gallery has no blocks, and no vectors)
            vectors = candidates[indices.clamp(min=0)] if duplicate_threshold is not None and len(candidates) else None
            block_excluded = (indices, vectors)
        best_scores = query_block.new_full((query_block.shape[0], 0), float("-inf"))
        best_indices = torch.empty((query_block.shape[0], 0), dtype=torch.long, device=queries.device)
        for c_start, block_scores in _score_blocks(query_block, candidates, candidate_chunk, buffer):
            if excluding:
                candidate_block = candidates[c_start : c_start + block_scores.shape[1]]
                _exclude_in_block(block_scores, candidate_block, c_start, block_self, duplicate_threshold, block_excluded)
            top_scores, top_columns = _topk_first_columns(block_scores, min(k, block_scores.shape[1]))
            # the kept candidates (all before this block) then this block's, each by score then index: among equal
            # scores the merged columns are in candidate order, so ties still go to the lower index
            merged_scores = torch.cat([best_scores, top_scores], dim=1)
            merged_indices = torch.cat([best_indices, top_columns + c_start], dim=1)
            best_scores, columns = _topk_first_columns(merged_scores, min(k, merged_scores.shape[1]))
            best_indices = merged_indices.gather(1, columns)
        all_scores[q_start : q_start + query_block.shape[0]] = best_scores
        all_indices[q_start : q_start + query_block.shape[0]] = best_indices
    return all_scores, all_indices


@torch.no_grad()
def chunked_ranks(
    queries: torch.Tensor,
    candidates: torch.Tensor,
    relevant: RelevantIndices,
    query_chunk: int = DEFAULT_QUERY_CHUNK,
    candidate_chunk: int = DEFAULT_CANDIDATE_CHUNK,
) -> torch.Tensor:
    """1-based rank of each query's best relevant candidate, block by block.

    queries: (Q, D); candidates: (C, D); relevant: per query one index or a list of indices into
    the candidates. rank_q = 1 + #{c not relevant : s_qc >= max_{r relevant} s_qr}. Returns (Q,) (empty for Q = 0,
    as `chunked_topk`'s results are).
    """
    _check_embeddings(queries, candidates)
    _check_counts(query_chunk, candidate_chunk)
    relevant_lists = relevant_index_lists(relevant, queries.shape[0], candidates.shape[0])
    # Filled block by block: no list of per-block results to concatenate (and Q = 0 just works).
    ranks = torch.empty(queries.shape[0], dtype=torch.long, device=queries.device)
    # the scores of the block at hand (in either pass), and the blocks kept between the passes
    buffer, *kept_storage = _block_buffers(1 + KEPT_RELEVANT_BLOCKS, queries, candidates, query_chunk, candidate_chunk)
    for q_start in range(0, queries.shape[0], query_chunk):
        query_block = queries[q_start : q_start + query_chunk]
        block_relevant = relevant_lists[q_start : q_start + query_chunk]
        rows, cols = relevant_pairs(block_relevant, queries.device)  # (row in the block, candidate) coordinates
        # Best relevant score per query, read from the very blocks the count below compares against: a separate
        # GEMM may round a relevant score one ulp away from its duplicate's, breaking an exact tie (in the
        # model's favour). The blocks that hold relevant candidates come first (for COCO one or two); up to
        # KEPT_RELEVANT_BLOCKS of them are kept for the count, the others computed again.
        best_relevant = query_block.new_full((query_block.shape[0],), float("-inf"))
        relevant_starts = (cols // candidate_chunk * candidate_chunk).unique().tolist()
        kept: dict[int, torch.Tensor] = {}
        for c_start, block_scores in _score_blocks(query_block, candidates, candidate_chunk, buffer, relevant_starts):
            block_rows, block_cols = _relevant_in_block(rows, cols, c_start, block_scores.shape[1])
            best_relevant.scatter_reduce_(0, block_rows, block_scores[block_rows, block_cols], reduce="amax")
            if len(kept) < KEPT_RELEVANT_BLOCKS:
                storage = kept_storage[len(kept)][: block_scores.numel()]
                kept[c_start] = storage.view_as(block_scores).copy_(block_scores)
        at_least_best = torch.zeros(query_block.shape[0], dtype=torch.long, device=queries.device)
        other_starts = [start for start in range(0, candidates.shape[0], candidate_chunk) if start not in kept]
        for c_start, block_scores in itertools.chain(
            kept.items(), _score_blocks(query_block, candidates, candidate_chunk, buffer, other_starts)
        ):
            # The relevant candidates of this block are counted below, take them back out.
            block_rows, block_cols = _relevant_in_block(rows, cols, c_start, block_scores.shape[1])
            relevant_hits = block_scores[block_rows, block_cols] >= best_relevant[block_rows]
            at_least_best.scatter_add_(0, block_rows, -relevant_hits.long())
            # In place, as 0./1. floats: cheaper than a bool tensor. Summed in float32, exact below 2**24 ones (a bf16
            # sum of more than 256 is not), without an int64 copy of the block.
            at_least_best += block_scores.ge_(best_relevant[:, None]).sum(dim=1, dtype=torch.float32).long()
        ranks[q_start : q_start + query_block.shape[0]] = at_least_best + 1
    return ranks


def _relevant_in_block(
    rows: torch.Tensor, cols: torch.Tensor, c_start: int, block_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (row, column within the block) coordinates of the relevant pairs `(rows, cols)` whose candidate lies in
    the block of `block_size` candidates starting at `c_start`."""
    in_block = (cols >= c_start) & (cols < c_start + block_size)
    return rows[in_block], cols[in_block] - c_start


def chunked_retrieval_recall(
    queries: torch.Tensor,
    candidates: torch.Tensor,
    relevant: RelevantIndices,
    ks: Iterable[int] = DEFAULT_KS,
    query_chunk: int = DEFAULT_QUERY_CHUNK,
    candidate_chunk: int = DEFAULT_CANDIDATE_CHUNK,
) -> dict[str, float]:
    """`evaluation.metrics.retrieval_recall` on (Q, D) query and (C, D) candidate embeddings, without the full score
    matrix."""
    ks = checked_ks(ks)  # before the search, not after it
    ranks = chunked_ranks(queries, candidates, relevant, query_chunk, candidate_chunk)
    return recall_from_ranks(ranks, ks)


def anchor_recall_at_1(
    text_embeds: torch.Tensor, image_embeds: torch.Tensor, text_ids: torch.Tensor, image_ids: torch.Tensor
) -> dict[str, float]:
    """Recall@1 (0-100, `evaluation.retrieval.chunked_retrieval_recall`: no captions x images matrix) between the
    anchors of an evaluation set, row ``i`` pairing caption ``text_ids[i]`` with image ``image_ids[i]``. Captions and
    images are de-duplicated by content id, so each is one query and one key; an image's relevant set is every
    caption paired with it (and a caption's, every image paired with it). The four hold one row per anchor pair, or a
    ValueError names their lengths (zip paired the ids as far as the shorter list went)."""
    rows = {"text_embeds": len(text_embeds), "image_embeds": len(image_embeds), "text_ids": len(text_ids),
            "image_ids": len(image_ids)}
    if len(set(rows.values())) > 1:
        raise ValueError(f"anchor_recall_at_1: expected one row per anchor pair in each argument, got rows {rows}")
    if not (torch.isfinite(text_embeds).all() and torch.isfinite(image_embeds).all()):
        return {"text_to_image": math.nan, "image_to_text": math.nan}  # a diverged model: NaN, like its loss
    text_ids, image_ids = text_ids.tolist(), image_ids.tolist()
    text_rows, image_rows = _first_rows(text_ids), _first_rows(image_ids)
    text_position = {identity: position for position, identity in enumerate(text_rows)}
    image_position = {identity: position for position, identity in enumerate(image_rows)}
    images_of_text: dict[int, set[int]] = defaultdict(set)
    texts_of_image: dict[int, set[int]] = defaultdict(set)
    for text_id, image_id in zip(text_ids, image_ids):
        images_of_text[text_id].add(image_position[image_id])
        texts_of_image[image_id].add(text_position[text_id])
    texts = text_embeds[list(text_rows.values())].float()
    images = image_embeds[list(image_rows.values())].float()
    text_to_image = chunked_retrieval_recall(texts, images, [sorted(images_of_text[i]) for i in text_rows], ks=(1,))
    image_to_text = chunked_retrieval_recall(images, texts, [sorted(texts_of_image[i]) for i in image_rows], ks=(1,))
    return {"text_to_image": text_to_image["recall@1"], "image_to_text": image_to_text["recall@1"]}


def _first_rows(ids: list[int]) -> dict[int, int]:
    """Each distinct id, in first-seen order, mapped to the row where it first appears."""
    rows: dict[int, int] = {}
    for row, identity in enumerate(ids):
        rows.setdefault(identity, row)
    return rows
