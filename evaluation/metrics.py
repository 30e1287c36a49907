"""Plain metric functions: retrieval recall / MRR, Winoground group scores, modality gap.

These are the single source of truth for every number MAPLE reports. The `evaluate` modules in
`metrics/` wrap them, and the benchmark runners in `evaluation.protocols` call them, so a metric is
defined in exactly one place. All accuracies are returned on the paper's 0-100 scale.

Ties are scored pessimistically everywhere: a relevant candidate that ties with an irrelevant one
does not outrank it (retrieval), and a tied pair is not "preferred" (group scores use a strict
`>`, as in the Winoground paper). A collapsed model that gives every candidate the same score
therefore scores 0, never chance.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence, Set

import numpy as np
import torch

from .metric_names import DEFAULT_KS

RelevantIndices = Sequence[int | Sequence[int]]


def relevant_index_lists(relevant: RelevantIndices, num_queries: int, num_candidates: int) -> list[list[int]]:
    """Normalise `relevant` (one int or a list of ints per query, in query order; a tensor or array of them too, and
    0-d or 1-d tensors or arrays as entries; not a dict or a set) and check it against the matrix. A candidate listed
    twice for a query counts once."""
    if isinstance(relevant, (torch.Tensor, np.ndarray)):
        relevant = relevant.tolist()
    # iterated, a dict gives its keys (the relevant indices of {0: 1, 1: 0} were read as [0, 1]), a set its items in
    # no query order
    if isinstance(relevant, (Mapping, Set)):
        raise TypeError(
            f"relevant indices: expected one entry per query, in query order (a list), got a {type(relevant).__name__}; "
            "for a dict by query, pass [relevant[query] for query in range(num_queries)]"
        )
    if len(relevant) != num_queries:
        raise ValueError(
            f"relevant indices: expected one entry per query ({num_queries}), got {len(relevant)}"
        )
    lists = []
    for query, entry in enumerate(relevant):
        indices = relevant_entry_indices(entry, query)
        if not indices:
            raise ValueError(f"relevant indices: query {query} has no relevant candidate")
        bad = [i for i in indices if not 0 <= i < num_candidates]
        if bad:
            raise ValueError(
                f"relevant indices: query {query} refers to candidates {bad}, "
                f"expected indices in [0, {num_candidates})"
            )
        lists.append(list(dict.fromkeys(indices)))
    return lists


def relevant_entry_indices(entry: int | Sequence[int], query: int | None = None) -> list[int]:
    """The candidate indices of one query's entry of `relevant` (an int or a list, set, tensor or array of them) as a
    list of ints, unchecked against the candidates; a TypeError naming the query (`query`, where known) for anything
    else: a string, a float, a bool."""
    if isinstance(entry, (torch.Tensor, np.ndarray)):
        entry = entry.tolist()  # a 0-d tensor or array gives its one index
    # a string is a sequence too, and int() reads digits: "12" would be candidates 1 and 2
    several = isinstance(entry, (Sequence, Set)) and not isinstance(entry, str)
    indices = sorted(entry) if isinstance(entry, Set) else list(entry) if several else [entry]
    # a bool is an int to Python: True would be candidate 1
    if not all(isinstance(index, (int, np.integer)) and not isinstance(index, bool) for index in indices):
        holder = "a query" if query is None else f"query {query}"
        raise TypeError(f"relevant indices: {holder} has {entry!r:.80}; expected a candidate index or a list of them")
    return [int(index) for index in indices]


def relevant_pairs(
    relevant: list[list[int]], device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (query, candidate) pairs of `relevant` (from `relevant_index_lists`) as two (P,) int64 tensors on `device`:
    rows[p] is the query and cols[p] the candidate of pair p, queries in order."""
    rows = torch.tensor([q for q, indices in enumerate(relevant) for _ in indices], dtype=torch.long, device=device)
    cols = torch.tensor([c for indices in relevant for c in indices], dtype=torch.long, device=device)
    return rows, cols


def relevance_mask(relevant: list[list[int]], num_candidates: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean (Q, C) mask on `device`, True where candidate c is relevant to query q."""
    mask = torch.zeros(len(relevant), num_candidates, dtype=torch.bool, device=device)
    mask[relevant_pairs(relevant, device)] = True
    return mask


def checked_ks(ks: int | Iterable[int]) -> tuple[int, ...]:
    """The recall cut-offs `ks` (one, or several) as a tuple, or a ValueError unless they are one or more positive
    integers: recall@0 is 0 for every model and "recall@1.5" is recall@1, scores that read as results rather than
    typos."""
    ks = ks.tolist() if hasattr(ks, "tolist") else ks  # an array or tensor (of any dimension) as Python numbers
    ks = tuple(ks) if isinstance(ks, Iterable) else (ks,)
    if not ks or not all(isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 1 for k in ks):
        raise ValueError(f"ks: expected positive integers, got {ks}")
    return ks


def recall_from_ranks(ranks: torch.Tensor | Sequence[int], ks: int | Iterable[int] = DEFAULT_KS) -> dict[str, float]:
    """Recall@k (for each k in `ks`, positive integers) and mean reciprocal rank from the (Q,) 1-based ranks of each
    query's first relevant candidate.

    recall@k = 100 * mean_q [rank_q <= k];  mrr = 100 * mean_q 1 / rank_q. A ValueError without queries (NaN, a mean
    of nothing, would pass for a score), and for ranks that are not one integer of at least 1 per query: 0-based ones
    (argsort positions) gave an MRR of inf and recall@k the recall at k + 1, a (Q, 1) column an MRR over other queries.
    """
    ks = checked_ks(ks)
    ranks = torch.as_tensor(ranks)
    if ranks.ndim != 1:
        raise ValueError(f"ranks: expected one rank per query, shape (Q,), got shape {tuple(ranks.shape)}")
    if ranks.numel() == 0:
        raise ValueError("ranks: got no queries; recall@k and MRR are means over queries")
    if ranks.dtype == torch.bool:  # True would pass for rank 1
        raise ValueError("ranks: got booleans; expected 1-based integer ranks (1: the first)")
    ranks = ranks.to(torch.float64)
    # a NaN rank is not its floor; an infinite one is no rank of a finite candidate list
    bad = ((ranks < 1) | (ranks != ranks.floor()) | ranks.isinf()).nonzero().flatten()
    if len(bad):
        query = bad[0].item()
        raise ValueError(
            f"ranks: query {query} has rank {ranks[query].item():g}; expected 1-based integer ranks (1: the first)"
        )
    result = {f"recall@{k}": 100.0 * (ranks <= k).double().mean().item() for k in ks}
    result["mrr"] = 100.0 * (1.0 / ranks).mean().item()
    return result


def first_relevant_ranks(similarities: torch.Tensor, relevant: RelevantIndices) -> torch.Tensor:
    """1-based rank of the best-ranked relevant candidate of each query in a dense score matrix.

    similarities: (Q, C), higher = more similar. relevant: per query, one index or a list of
    indices into the C candidates (several captions per image). With s* the best relevant score of
    query q: rank_q = 1 + #{c not relevant : s_qc >= s*} (ties rank the relevant one last). Returns (Q,) int64.
    """
    similarities = torch.as_tensor(similarities)
    if similarities.ndim != 2:
        raise ValueError(f"similarities: expected a (queries, candidates) matrix, got shape {tuple(similarities.shape)}")
    relevant_lists = relevant_index_lists(relevant, *similarities.shape)
    if similarities.shape[0] == 0:  # no ranks, as `chunked_ranks` gives none (amax has no row maximum without candidates)
        return torch.empty(0, dtype=torch.long, device=similarities.device)
    is_relevant = relevance_mask(relevant_lists, similarities.shape[1], device=similarities.device)
    best_relevant = similarities.masked_fill(~is_relevant, float("-inf")).amax(dim=1)
    outranks = (similarities >= best_relevant[:, None]) & ~is_relevant
    return 1 + outranks.sum(dim=1)


def retrieval_recall(
    similarities: torch.Tensor | np.ndarray | Sequence[Sequence[float]],
    relevant: RelevantIndices,
    ks: int | Iterable[int] = DEFAULT_KS,
) -> dict[str, float]:
    """Recall@k (for each k in `ks`) and MRR, on a 0-100 scale, of a dense (Q, C) score matrix.

    A query counts as a hit at k when any of its relevant candidates is among its top k (so for
    image->text on COCO, any of the image's 5 captions). See `first_relevant_ranks` for ties.
    """
    ks = checked_ks(ks)
    _check_row_lengths(similarities, "similarities")
    similarities = torch.from_numpy(_float64_array(similarities))  # (a missing score, None, reads as NaN)
    if similarities.ndim == 1 and similarities.numel() == 0:  # none given ([]): "got no queries", not a shape error
        similarities = similarities.reshape(0, 0)
    if not torch.isfinite(similarities).all():  # a NaN score compares false with everything: it would rank first
        rows = (~torch.isfinite(similarities)).any(dim=-1).nonzero().flatten()
        raise ValueError(f"similarities: rows {rows[:5].tolist()} hold NaN, inf or missing scores, which cannot be ranked")
    return recall_from_ranks(first_relevant_ranks(similarities, relevant), ks)


def _check_row_lengths(rows, name: str) -> None:
    """A ValueError naming the first row of `rows` (a list of score rows) whose length is not row 0's: torch and NumPy
    refuse such a ragged list without naming a row. Tensors and arrays, whose rows are alike, pass unchecked."""
    if isinstance(rows, (torch.Tensor, np.ndarray)) or not isinstance(rows, Sequence) or not rows:
        return
    try:
        lengths = [len(row) for row in rows]
    except TypeError:  # rows that are numbers: a shape error, reported by the caller
        return
    ragged = next((row for row, length in enumerate(lengths) if length != lengths[0]), None)
    if ragged is not None:
        raise ValueError(f"{name}: row {ragged} has {lengths[ragged]} scores, row 0 has {lengths[0]}")


def _float64_array(scores) -> np.ndarray:
    """Scores given as a list, an array or a tensor (any device or dtype, bf16 and autograd too) as float64 NumPy; a
    missing score (None) is NaN, which the callers refuse by row."""
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().to("cpu", torch.float64)  # NumPy reads neither CUDA nor bf16 tensors
    return np.asarray(scores, dtype=np.float64)


def _quadruple_matrix(quadruple_similarities: torch.Tensor | np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """The (n, 4) quadruple similarities as float64 NumPy, checked for shape and finiteness."""
    _check_row_lengths(quadruple_similarities, "quadruple similarities")
    scores = _float64_array(quadruple_similarities)
    if scores.ndim == 1 and scores.size == 0:  # none given ([]): "got no quadruples" (`group_scores`), not a shape error
        scores = scores.reshape(0, 4)
    if scores.ndim != 2 or scores.shape[1] != 4:
        raise ValueError(
            "quadruple similarities: expected shape (n, 4) = [s(I0,T0), s(I0,T1), s(I1,T0), s(I1,T1)] "
            f"per quadruple, got shape {scores.shape}"
        )
    # NaN compares false with everything: it would lose every comparison (scores of 0) and reach the gap as inf.
    if not np.isfinite(scores).all():
        rows = np.flatnonzero(~np.isfinite(scores).all(axis=1))
        raise ValueError(f"quadruple similarities: rows {rows[:5].tolist()} hold NaN, inf or missing scores")
    return scores


def group_score_hits(quadruple_similarities) -> dict[str, np.ndarray]:
    """Per-quadruple Winoground hits (boolean arrays of length n).

    Each row is [s(I0,T0), s(I0,T1), s(I1,T0), s(I1,T1)].
      text:  s(I0,T0) > s(I0,T1) and s(I1,T1) > s(I1,T0)   (each image prefers its caption)
      image: s(I0,T0) > s(I1,T0) and s(I1,T1) > s(I0,T1)   (each caption prefers its image)
      group: text and image.
    """
    s00, s01, s10, s11 = _quadruple_matrix(quadruple_similarities).T
    text = (s00 > s01) & (s11 > s10)
    image = (s00 > s10) & (s11 > s01)
    return {"text_score": text, "image_score": image, "group_score": text & image}


def group_scores(quadruple_similarities) -> dict[str, float]:
    """Winoground text, image and group scores (0-100) over quadruples; see `group_score_hits`."""
    hits = group_score_hits(quadruple_similarities)
    if len(hits["text_score"]) == 0:
        raise ValueError("quadruple similarities: got no quadruples")
    return {name: 100.0 * float(values.mean()) for name, values in hits.items()}


def wasserstein_1d(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """1-Wasserstein distance between the empirical distributions of two 1-D samples.

    W(P_A, P_B) = integral |F_A(x) - F_B(x)| dx over the two empirical CDFs; for two samples of
    equal size n this is (1/n) sum_i |a_(i) - b_(i)| over the sorted samples.

    Samples near float64's largest values (about 1e308) are scaled down by a power of two for the sums, so that a
    distance float64 holds comes out finite; one past float64's range (W([-1e308], [1e308])) is inf. Scaled, the
    subnormal values beside them (below about 1e-307) lose their lowest bits: W([1e308, 2e-323], [1e308, 0]) is 0.
    """
    a = np.sort(_float64_array(a).ravel())
    b = np.sort(_float64_array(b).ravel())
    if a.size == 0 or b.size == 0:
        raise ValueError(f"wasserstein_1d: both samples must be non-empty, got sizes {a.size} and {b.size}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):  # NaN sorts last and would make the distance NaN
        raise ValueError("wasserstein_1d: the samples hold NaN or inf")
    scale_exponent = _overflow_scale_exponent(max(abs(a[0]), abs(a[-1]), abs(b[0]), abs(b[-1])), a.size + b.size)
    # exact (a power of two), and 1.0 unless the sums would overflow: the distance is then the same to the bit
    a, b = a * 2.0**-scale_exponent, b * 2.0**-scale_exponent
    if a.size == b.size:  # the sorted-pairs form: exact where the CDF form's widths round (0.25 came out 0.2499...)
        distance = float(np.mean(np.abs(a - b)))
    else:
        support = np.sort(np.concatenate([a, b]))
        widths = np.diff(support)
        cdf_a = np.searchsorted(a, support[:-1], side="right") / a.size
        cdf_b = np.searchsorted(b, support[:-1], side="right") / b.size
        distance = float(np.sum(np.abs(cdf_a - cdf_b) * widths))
    return distance * 2.0**scale_exponent  # a Python float: past float64's range, inf (no warning)


def _overflow_scale_exponent(peak: float, count: int) -> int:
    """The least e >= 0 such that `count` differences of values of magnitude at most `peak` (each at most 2 * peak),
    scaled by 2**-e, sum below float64's largest value (2**1024): 0 for all but values near it."""
    _, peak_exponent = np.frexp(peak)  # peak < 2**peak_exponent
    return max(0, 1 + (count - 1).bit_length() + int(peak_exponent) - 1024)


def modality_gap_from_scores(matched, intra_modal, mismatched) -> dict[str, float]:
    """The paper's modality-gap ratio from three samples of scores (each of any shape, taken flat, of any size).

    w_dist = W(matched image-text scores, text-text scores)   (cross- vs intra-modal)
    w_disc = W(matched image-text scores, mismatched scores)  (how well pairs are told apart)
    delta_gap = w_dist / w_disc, lower is better. Values are on the score scale (the paper prints
    them x100); delta_gap is a ratio and scale-free.
    """
    w_dist = wasserstein_1d(matched, intra_modal)
    w_disc = wasserstein_1d(matched, mismatched)
    delta_gap = w_dist / w_disc if w_disc > 0 else float("inf")
    return {"w_dist": w_dist, "w_disc": w_disc, "delta_gap": delta_gap}


def modality_gap_from_quadruples(quadruple_similarities, text_text_similarities) -> dict[str, float]:
    """Modality gap on Winoground-style quadruples.

    quadruple_similarities: (n, 4) rows [s(I0,T0), s(I0,T1), s(I1,T0), s(I1,T1)];
    text_text_similarities: (n,) s(T0, T1). Matched = s(I0,T0), s(I1,T1); mismatched = s(I0,T1),
    s(I1,T0); intra-modal = s(T0,T1).
    """
    scores = _quadruple_matrix(quadruple_similarities)
    if scores.shape[0] == 0:  # as `group_scores` says it: Wasserstein's "both samples must be non-empty" named neither
        raise ValueError("quadruple similarities: got no quadruples")
    text_text = _float64_array(text_text_similarities).ravel()
    if text_text.shape[0] != scores.shape[0]:
        raise ValueError(
            f"text-text similarities: expected one per quadruple ({scores.shape[0]}), got {text_text.shape[0]}"
        )
    if not np.isfinite(text_text).all():  # by row, as the quadruple similarities are (Wasserstein named none)
        rows = np.flatnonzero(~np.isfinite(text_text))
        raise ValueError(f"text-text similarities: rows {rows[:5].tolist()} hold NaN, inf or missing scores")
    return modality_gap_from_scores(
        matched=scores[:, [0, 3]], intra_modal=text_text, mismatched=scores[:, [1, 2]]
    )
