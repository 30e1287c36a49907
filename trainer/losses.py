"""The losses of MAPLE (arXiv 2506.06970, section 3): Relative Preference Alignment (RPA) and InfoNCE with an
expanded, de-duplicated negative pool.

Plain functions on scores and embeddings, independent of the trainer, so they can be tested against the paper's
formulas and reused in other training loops.

Conventions shared by the RPA losses:

- ``scores[i, j] = beta * <z_i, z_{i,j}>``: the scaled similarity between anchor ``i`` and its candidate ``j``, in the
  dataset's candidate order (not sorted).
- ``judge_scores[i, j]``: the judge's alpha for the same pair, in ``[0, 1]``.
- ``mask[i, j]``: ``False`` for padding where row ``i`` has fewer candidates; padded entries may hold any value.
- Candidate ``k`` is *preferred* over ``l`` when ``alpha_k > alpha_l`` strictly. Candidates with equal judge scores
  carry no preference: a tied pair gets zero weight in the pairwise loss, and in the listwise loss a candidate only
  competes with the candidates strictly below it. Without ties this is exactly the paper's sorted formulation; with
  ties it is what makes the loss independent of how a sort would order the tied candidates.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "RPA_LOSSES",
    "bidirectional_rpa_loss",
    "contrastive_loss",
    "maple_loss",
    "preference_agreement",
    "rpa_listwise_loss",
    "rpa_pairwise_loss",
]


def rpa_pairwise_loss(
    scores: Tensor, judge_scores: Tensor, mask: Tensor | None = None, reduction: Literal["mean", "none"] = "mean"
) -> Tensor:
    r"""Pairwise Relative Preference Alignment loss (MAPLE, eq. for :math:`\mathcal{L}_{pair}`).

    .. math::
        \mathcal{L}_{pair} = -\frac{1}{N} \sum_{i=1}^{N} \sum_{0 \le k < l \le K}
            (\alpha_{i,r_k} - \alpha_{i,r_l}) \log \sigma(s_{i,k} - s_{i,l})

    where candidates are ranked by judge score, :math:`\alpha_{i,r_0} \ge \dots \ge \alpha_{i,r_K}`. It is DPO
    (Rafailov et al., 2023, arXiv 2305.18290) without a reference model, with :math:`\beta \log \pi(y|x)` replaced by
    the scaled similarity and each pair weighted by the judge's margin. The sum over ranked pairs equals the sum over
    all pairs with :math:`\alpha_k > \alpha_l`, so no sort is needed.

    Args:
        scores: ``(N, C)`` scaled similarities anchor -> candidate.
        judge_scores: ``(N, C)`` judge alphas, same order.
        mask: optional ``(N, C)`` bool, ``False`` for padded candidates.
        reduction: ``"none"`` for each anchor's loss.

    Returns:
        The scalar loss, averaged over the ``N`` anchors, or the ``(N,)`` losses of the anchors.
    """
    scores, mask = _check_rpa_inputs(scores, judge_scores, mask)
    preferred = _strict_preferences(judge_scores, mask)
    margins = _judge_margins(judge_scores, preferred)
    log_likelihoods = F.logsigmoid(scores.unsqueeze(2) - scores.unsqueeze(1))
    return _reduce(-(margins * log_likelihoods).sum(dim=(1, 2)), reduction)


def rpa_listwise_loss(
    scores: Tensor, judge_scores: Tensor, mask: Tensor | None = None, reduction: Literal["mean", "none"] = "mean"
) -> Tensor:
    r"""Listwise Relative Preference Alignment loss (MAPLE, eq. for :math:`\mathcal{L}_{list}`).

    A Plackett-Luce likelihood of the judge's ranking, each step weighted by the judge's mean margin (as in PRO,
    Song et al., 2024, arXiv 2306.17492):

    .. math::
        w_{i,k} = \frac{1}{K-k} \sum_{l=k+1}^{K} (\alpha_{i,r_k} - \alpha_{i,r_l}), \qquad
        \mathcal{L}_{list} = -\frac{1}{N} \sum_{i=1}^{N} \sum_{k=0}^{K-1}
            w_{i,k} \log \frac{\exp(s_{i,k})}{\sum_{j=k}^{K} \exp(s_{i,j})}

    with candidates ranked by judge score. Candidate ``k`` competes with the candidates strictly below it: ``w_{i,k}``
    is its mean margin over them and its denominator holds ``k`` and them. For distinct scores these are the ranks
    ``k+1..K``, the formula above. With ties the formula depends on how a sort orders the tied candidates (for alphas
    ``[1, 1, 0]`` the first tied one gets ``w = 0.5`` and a denominator that holds the other); here each gets its
    margin over the candidates below both (``w = 1``), and neither is in the other's denominator.

    Args:
        scores: ``(N, C)`` scaled similarities anchor -> candidate.
        judge_scores: ``(N, C)`` judge alphas, same order.
        mask: optional ``(N, C)`` bool, ``False`` for padded candidates.
        reduction: ``"none"`` for each anchor's loss.

    Returns:
        The scalar loss, averaged over the ``N`` anchors, or the ``(N,)`` losses of the anchors.
    """
    scores, mask = _check_rpa_inputs(scores, judge_scores, mask)
    preferred = _strict_preferences(judge_scores, mask)  # [i, k, l]: k is ranked strictly above l
    margins = _judge_margins(judge_scores, preferred)
    num_below = preferred.sum(dim=2)  # K - k in the paper's notation
    weights = margins.sum(dim=2) / num_below.clamp(min=1)
    itself = torch.eye(scores.shape[1], dtype=torch.bool, device=scores.device)
    competitors = preferred | itself  # the denominator of step k: k itself and every candidate below it
    log_normalisers = torch.logsumexp(scores.unsqueeze(1).masked_fill(~competitors, float("-inf")), dim=2)
    return _reduce(-(weights * (scores - log_normalisers)).sum(dim=1), reduction)


RPA_LOSSES = {"listwise": rpa_listwise_loss, "pairwise": rpa_pairwise_loss}


def bidirectional_rpa_loss(
    text_to_image: tuple[Tensor, Tensor, Tensor],
    image_to_text: tuple[Tensor, Tensor, Tensor],
    rpa_loss: Literal["listwise", "pairwise"] = "listwise",
    reduction: Literal["mean", "none"] = "mean",
) -> Tensor:
    r"""MAPLE's :math:`\mathcal{L}_{RPA}`: the mean of the RPA losses of the two retrieval directions (section 3),
    each anchor ranking its candidate images (text -> image) and its candidate texts (image -> text).

    Args:
        text_to_image, image_to_text: ``(scores, judge_scores, mask)`` of one direction, each ``(N, C)`` as in
            `rpa_listwise_loss` (``C`` may differ between the directions).
        rpa_loss: ``"listwise"`` (`rpa_listwise_loss`) or ``"pairwise"`` (`rpa_pairwise_loss`), as
            `RPAConfig.rpa_loss` names them (`RPA_LOSSES`).
        reduction: ``"none"`` for each anchor's loss.

    Returns:
        The scalar loss, averaged over the ``N`` anchors, or the ``(N,)`` losses of the anchors.
    """
    rpa = RPA_LOSSES[rpa_loss]
    return (rpa(*text_to_image, reduction=reduction) + rpa(*image_to_text, reduction=reduction)) / 2


def maple_loss(rpa: Tensor, contrastive: Tensor, rpa_weight: float) -> Tensor:
    r"""MAPLE's training objective (section 3):

    .. math::
        \mathcal{L} = \lambda \, \mathcal{L}_{RPA} + (1 - \lambda) \, \mathcal{L}_{InfoNCE}

    The paper's lambda sweep finds general retrieval best near :math:`\lambda` = 0.1-0.2 and fine-grained scores
    rising up to about 0.6 (listwise); RPA alone (:math:`\lambda = 1`) hurts general retrieval.

    Args:
        rpa: `bidirectional_rpa_loss`, a scalar or ``(N,)`` per anchor.
        contrastive: `contrastive_loss`, of the same shape.
        rpa_weight: :math:`\lambda` in ``[0, 1]``.
    """
    return rpa_weight * rpa + (1 - rpa_weight) * contrastive


def contrastive_loss(
    image_embeds: Tensor,
    text_embeds: Tensor,
    inverse_temperature: Tensor,
    negative_image_embeds: Tensor | None = None,
    negative_text_embeds: Tensor | None = None,
    *,
    image_ids: Tensor | None = None,
    text_ids: Tensor | None = None,
    negative_image_ids: Tensor | None = None,
    negative_text_ids: Tensor | None = None,
    excluded_image_ids: Tensor | None = None,
    excluded_text_ids: Tensor | None = None,
    gather_across_processes: bool = True,
    reduction: Literal["mean", "none"] = "mean",
) -> Tensor:
    r"""Symmetric CLIP InfoNCE (Radford et al., 2021) with MAPLE's expanded negatives.

    .. math::
        \mathcal{L} = \frac{1}{2}\left(
            -\frac{1}{N}\sum_i \log \frac{e^{\tau^{-1}\langle t_i, v_i\rangle}}
                                     {\sum_{v \in \mathcal{P}_{img}} e^{\tau^{-1}\langle t_i, v\rangle}}
            -\frac{1}{N}\sum_i \log \frac{e^{\tau^{-1}\langle v_i, t_i\rangle}}
                                     {\sum_{t \in \mathcal{P}_{txt}} e^{\tau^{-1}\langle v_i, t\rangle}}
        \right)

    The image pool :math:`\mathcal{P}_{img}` holds the anchor images and the hard-negative images of *every* anchor
    (MAPLE section 3.3, "expanded negatives"); likewise for texts. Under several processes the pools are gathered from
    all of them with gradients (`_AllGatherWithGradient`), and each process computes the loss
    of its own anchors against the global pools (open_clip's ``local_loss``): averaging the per-process losses, as
    DDP does with their gradients, gives the loss of the global batch when every process holds as many anchors.

    Passing ids (e.g. content hashes) removes duplicates from the pools: a hard negative of one anchor is often
    another anchor of the batch, or a repeated candidate, and a duplicate in the denominator would count a false
    negative twice. The first occurrence is kept, anchors first, and a query's target is the first occurrence of its
    own id, so anchors that share an image (one image with several captions) share a column; and each of them
    leaves the other anchors' captions of its image out of its image -> text denominator (likewise for a caption
    shared by several images), as they are no negatives of it.

    Per-anchor exclusions (by id) take items out of one anchor's denominator only, e.g. candidates its judge rates
    as highly as the anchor's own pair, which are no negatives for it though they are for the other anchors.

    Args:
        image_embeds: ``(N, D)`` L2-normalised anchor images.
        text_embeds: ``(N, D)`` L2-normalised anchor texts; row ``i`` describes image ``i``.
        inverse_temperature: scalar :math:`\tau^{-1}` (the exponentiated CLIP ``logit_scale``).
        negative_image_embeds: optional ``(M, D)`` extra images for the text -> image denominator.
        negative_text_embeds: optional ``(M', D)`` extra texts for the image -> text denominator.
        image_ids, text_ids, negative_image_ids, negative_text_ids: optional int64 ids of the rows above; give the
            ids of a modality for its anchors and negatives together to de-duplicate that pool.
        excluded_image_ids: optional ``(N, E)`` ids of pool images left out of text ``i``'s denominator (text ->
            image); pad rows with the anchor's own image id, which is never excluded. Needs the image ids.
        excluded_text_ids: the same for image ``i``'s texts (image -> text).
        gather_across_processes: gather the pools from every process when ``torch.distributed`` runs more than one.
        reduction: ``"none"`` for each anchor's loss (the mean of its two directions).

    Returns:
        The scalar loss of this process's anchors, or their ``(N,)`` losses.
    """
    if image_embeds.shape != text_embeds.shape:
        raise ValueError(
            f"image_embeds and text_embeds must pair up row by row, got shapes {tuple(image_embeds.shape)} and "
            f"{tuple(text_embeds.shape)}"
        )
    gather = gather_across_processes and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    text_to_image = _expanded_info_nce(
        queries=text_embeds, query_ids=text_ids,
        positives=image_embeds, positive_ids=image_ids,
        negatives=negative_image_embeds, negative_ids=negative_image_ids,
        excluded_ids=excluded_image_ids, inverse_temperature=inverse_temperature, gather=gather,
    )
    image_to_text = _expanded_info_nce(
        queries=image_embeds, query_ids=image_ids,
        positives=text_embeds, positive_ids=text_ids,
        negatives=negative_text_embeds, negative_ids=negative_text_ids,
        excluded_ids=excluded_text_ids, inverse_temperature=inverse_temperature, gather=gather,
    )
    return _reduce((text_to_image + image_to_text) / 2, reduction)


def _expanded_info_nce(
    *,
    queries: Tensor,
    positives: Tensor,
    negatives: Tensor | None,
    query_ids: Tensor | None,
    positive_ids: Tensor | None,
    negative_ids: Tensor | None,
    excluded_ids: Tensor | None,
    inverse_temperature: Tensor,
    gather: bool,
) -> Tensor:
    """One direction of `contrastive_loss`, each local query's loss: the query against the (gathered, de-duplicated)
    pool of all positives followed by all negatives, less its excluded ids. The target of query ``i`` is its own
    positive. With `query_ids`, the positives of the other anchors with the same query (another caption of the
    same image) are no negatives for it and leave its denominator."""
    if (negative_ids is not None and (positive_ids is None or negatives is None)) or (
        positive_ids is not None and negatives is not None and negative_ids is None
    ):
        raise ValueError("give ids for both the anchors and the negatives of a modality, or for neither")
    if excluded_ids is not None and positive_ids is None:
        raise ValueError("per-anchor exclusions are ids: give the ids of that modality too")
    local_targets = torch.arange(queries.shape[0], device=queries.device)
    all_query_ids = query_ids
    if gather:
        # each process's row counts, read once for the tensors that share them: the anchors' (queries, positives and
        # their ids) and the negatives'
        anchor_rows = _rows_per_process(positives)
        local_targets = local_targets + sum(anchor_rows[: dist.get_rank()])
        positives = _all_gather_rows(positives, anchor_rows, with_grad=True)
        all_query_ids = None if query_ids is None else _all_gather_rows(query_ids, anchor_rows, with_grad=False)
        positive_ids = None if positive_ids is None else _all_gather_rows(positive_ids, anchor_rows, with_grad=False)
        if negatives is not None:
            negative_rows = _rows_per_process(negatives)
            negatives = _all_gather_rows(negatives, negative_rows, with_grad=True)
            negative_ids = None if negative_ids is None else _all_gather_rows(negative_ids, negative_rows, with_grad=False)
    pool = positives if negatives is None else torch.cat([positives, negatives])
    logits = inverse_temperature * queries @ pool.T
    if positive_ids is not None:
        pool_ids = positive_ids if negative_ids is None else torch.cat([positive_ids, negative_ids])
        first_index = _first_occurrence(pool_ids)
        is_duplicate = first_index != torch.arange(len(pool_ids), device=pool_ids.device)
        logits = logits.masked_fill(is_duplicate, float("-inf"))
        local_targets = first_index[local_targets]
        if excluded_ids is not None:
            excluded = (excluded_ids.unsqueeze(2) == pool_ids.view(1, 1, -1)).any(dim=1)  # (N, pool)
            excluded[torch.arange(len(local_targets), device=excluded.device), local_targets] = False
            logits = logits.masked_fill(excluded, float("-inf"))
    if query_ids is not None:
        # The positives of the anchors with this query's id (another caption of this image) leave its denominator, its
        # own target aside. Each anchor's positive is in the column of its id's first copy, which may be another
        # anchor's: de-duplication keeps one column per id.
        anchors = len(all_query_ids)
        positive_column = first_index[:anchors] if positive_ids is not None else torch.arange(anchors, device=logits.device)
        same_query = (query_ids.unsqueeze(1) == all_query_ids.unsqueeze(0)).float()  # (N, anchors)
        # sibling[i, positive_column[j]] for each same_query[i, j]: scattered as a max, since columns repeat
        columns = positive_column.unsqueeze(0).expand_as(same_query)
        sibling = same_query.new_zeros(logits.shape).scatter_reduce(1, columns, same_query, "amax") > 0
        sibling[torch.arange(len(local_targets), device=logits.device), local_targets] = False
        logits = logits.masked_fill(sibling, float("-inf"))
    return F.cross_entropy(logits, local_targets, reduction="none")


def _reduce(per_anchor: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return per_anchor.mean()
    if reduction == "none":
        return per_anchor
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def _first_occurrence(ids: Tensor) -> Tensor:
    """For each position of the ``(n,)`` `ids`, the index of the first position holding the same id. Computed by a
    stable sort, whose output has a fixed size (`torch.unique`'s does not, and would wait for the device)."""
    sorted_ids, order = torch.sort(ids, stable=True)
    positions = torch.arange(len(ids), device=ids.device)
    starts_run = torch.ones_like(sorted_ids, dtype=torch.bool)
    starts_run[1:] = sorted_ids[1:] != sorted_ids[:-1]
    # each sorted position's run start; the sort is stable, so a run's first entry is its id's first position
    run_start = torch.where(starts_run, positions, 0).cummax(0).values
    first = torch.empty_like(order)
    first[order] = order[run_start]
    return first


def _rows_per_process(tensor: Tensor) -> list[int]:
    """The number of rows of `tensor` on every process, in rank order: one small gather, read to the host once."""
    local = torch.tensor([tensor.shape[0]], device=tensor.device)
    counts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, local)
    return torch.cat(counts).tolist()


def _all_gather_rows(tensor: Tensor, rows_per_process: list[int], with_grad: bool) -> Tensor:
    """Concatenates the rows of `tensor` from every process in rank order; processes may hold different numbers of
    rows, `rows_per_process` (`_rows_per_process`). With `with_grad`, gradients flow back to every process's rows (the
    backward pass sums the gradients all processes computed for them)."""
    # all_gather needs equal shapes: pad to the largest, trim after
    padded = F.pad(tensor, (0, 0) * (tensor.dim() - 1) + (0, max(rows_per_process) - tensor.shape[0]))
    if with_grad:
        gathered = _AllGatherWithGradient.apply(padded)
    else:
        gathered = [torch.empty_like(padded) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, padded)
    return torch.cat([part[:rows] for part, rows in zip(gathered, rows_per_process)])


class _AllGatherWithGradient(torch.autograd.Function):
    """`all_gather` whose backward pass gives each process the sum of the gradients every process computed for its
    rows (what `torch.distributed.nn.functional.all_gather`, deprecated in torch 2.13, does). Returns the
    ``(world_size, *tensor.shape)`` stack of every process's tensor."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, gradient: Tensor) -> Tensor:
        # A copy: autograd may hand this same tensor to another branch of the graph, which an in-place sum would change.
        gradient = gradient.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(gradient)  # the sum over processes of their gradients for every process's rows
        return gradient[dist.get_rank()]


def _strict_preferences(judge_scores: Tensor, mask: Tensor) -> Tensor:
    """``(N, C, C)`` bool, ``[i, k, l]`` true when candidate ``k`` of anchor ``i`` has a strictly higher judge score
    than candidate ``l`` and both are real candidates."""
    both_valid = mask.unsqueeze(2) & mask.unsqueeze(1)
    return (judge_scores.unsqueeze(2) > judge_scores.unsqueeze(1)) & both_valid


def _judge_margins(judge_scores: Tensor, preferred: Tensor) -> Tensor:
    """``(N, C, C)``: ``alpha_k - alpha_l`` of anchor ``i`` where ``preferred[i, k, l]``, else 0."""
    return (judge_scores.unsqueeze(2) - judge_scores.unsqueeze(1)).masked_fill(~preferred, 0.0)


def _check_rpa_inputs(scores: Tensor, judge_scores: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Validates shapes and returns scores with padding zeroed (so NaN padding cannot leak into the loss) and a
    boolean mask."""
    if scores.dim() != 2 or scores.shape != judge_scores.shape:
        raise ValueError(
            f"scores and judge_scores must both be (num_anchors, num_candidates), got {tuple(scores.shape)} and "
            f"{tuple(judge_scores.shape)}"
        )
    if mask is None:
        return scores, torch.ones_like(scores, dtype=torch.bool)
    if mask.shape != scores.shape or mask.dtype != torch.bool:
        raise ValueError(
            f"mask must be a bool tensor of shape {tuple(scores.shape)}, got {mask.dtype} {tuple(mask.shape)}"
        )
    return scores.masked_fill(~mask, 0.0), mask


def preference_agreement(
    scores: Tensor, judge_scores: Tensor, mask: Tensor | None = None, reduction: Literal["mean", "none"] = "mean"
) -> tuple[Tensor, Tensor]:
    """How well the scores follow the judge, over all strictly preferred pairs ``(k, l)`` (DPO's reward metrics):
    the fraction with ``s_k > s_l`` (``rewards/accuracies``) and the mean ``s_k - s_l`` (``rewards/margins``).
    Both are NaN when no pair is strictly preferred. `reduction`: ``"mean"`` over the preferred pairs of all anchors
    together, ``"none"`` for the ``(N,)`` values over each anchor's own pairs."""
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    scores, mask = _check_rpa_inputs(scores, judge_scores, mask)
    preferred = _strict_preferences(judge_scores, mask)
    differences = scores.unsqueeze(2) - scores.unsqueeze(1)
    # sums over the preferred pairs, not `differences[preferred]`, whose data-dependent size would wait for the device
    dims = (1, 2) if reduction == "none" else (0, 1, 2)
    pairs = preferred.sum(dim=dims)
    agreeing = ((differences > 0) & preferred).sum(dim=dims)
    return agreeing / pairs, differences.masked_fill(~preferred, 0.0).sum(dim=dims) / pairs
