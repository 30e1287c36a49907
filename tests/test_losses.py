"""The losses against straightforward loops over the paper's formulas (MAPLE, arXiv 2506.06970, section 3), their
gradients (gradcheck in float64), and the cross-process gathering of `contrastive_loss` (2 processes, gloo)."""

import math

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from trainer.losses import (
    bidirectional_rpa_loss,
    contrastive_loss,
    maple_loss,
    preference_agreement,
    rpa_listwise_loss,
    rpa_pairwise_loss,
)



@pytest.fixture(autouse=True)
def float64():
    """Compare at 1e-6 without float32 round-off; restored so other test modules in the worker are unaffected."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


# ----------------------------------------------------------------------------------------- reference loops
def _ranked(scores, alphas, mask, i):
    """Row i's real candidates as (score, alpha) pairs ranked by judge score, best first."""
    row = [(float(scores[i, j]), float(alphas[i, j])) for j in range(scores.shape[1]) if mask is None or mask[i, j]]
    return sorted(row, key=lambda pair: -pair[1])


def naive_pairwise(scores, alphas, mask=None):
    total = 0.0
    for i in range(scores.shape[0]):
        ranked = _ranked(scores, alphas, mask, i)
        for k in range(len(ranked)):
            for l in range(k + 1, len(ranked)):
                (s_k, a_k), (s_l, a_l) = ranked[k], ranked[l]
                total += (a_k - a_l) * math.log(1 / (1 + math.exp(-(s_k - s_l))))
    return -total / scores.shape[0]


def naive_listwise(scores, alphas, mask=None):
    """The paper's listwise formula; ranks tied with k are skipped (they carry no preference)."""
    total = 0.0
    for i in range(scores.shape[0]):
        ranked = _ranked(scores, alphas, mask, i)
        K = len(ranked) - 1
        for k in range(K):
            s_k, a_k = ranked[k]
            below = [ranked[l] for l in range(k + 1, K + 1) if ranked[l][1] != a_k]
            if not below:
                continue
            weight = sum(a_k - a_l for _, a_l in below) / len(below)
            denominator = math.exp(s_k) + sum(math.exp(s_l) for s_l, _ in below)
            total += weight * math.log(math.exp(s_k) / denominator)
    return -total / scores.shape[0]


def naive_listwise_untied(scores, alphas):
    """The paper's formula verbatim: w_k = 1/(K-k) sum_{l>k}, denominator over ranks k..K."""
    total = 0.0
    for i in range(scores.shape[0]):
        ranked = _ranked(scores, alphas, None, i)
        K = len(ranked) - 1
        for k in range(K):
            weight = sum(ranked[k][1] - ranked[l][1] for l in range(k + 1, K + 1)) / (K - k)
            denominator = sum(math.exp(ranked[j][0]) for j in range(k, K + 1))
            total += weight * math.log(math.exp(ranked[k][0]) / denominator)
    return -total / scores.shape[0]


def naive_contrastive(images, texts, scale, negative_images, negative_texts, image_ids, text_ids, neg_image_ids,
                      neg_text_ids, excluded_image_ids=None, excluded_text_ids=None):
    def one_direction(queries, query_ids, positives, negatives, positive_ids, negative_ids, excluded):
        pool, seen = [], {}
        for vector, identity in list(zip(positives, positive_ids)) + list(zip(negatives, negative_ids)):
            if identity not in seen:
                seen[identity] = len(pool)
                pool.append((identity, vector))
        total = 0.0
        for index, (query, own) in enumerate(zip(queries, positive_ids)):
            skipped = set(excluded[index]) - {own} if excluded else set()
            # the positives of other anchors with the same query (another caption of this image) are not negatives
            skipped |= {positive_ids[j] for j in range(len(queries)) if query_ids[j] == query_ids[index]} - {own}
            logits = {identity: scale * float(query @ vector) for identity, vector in pool if identity not in skipped}
            total += -(logits[own] - math.log(sum(math.exp(logit) for logit in logits.values())))
        return total / len(queries)

    text_to_image = one_direction(texts, text_ids, images, negative_images, image_ids, neg_image_ids, excluded_image_ids)
    image_to_text = one_direction(images, image_ids, texts, negative_texts, text_ids, neg_text_ids, excluded_text_ids)
    return (text_to_image + image_to_text) / 2


def naive_contrastive_of(inputs):
    """`naive_contrastive` on the arguments of `contrastive_loss` (with ids and negatives)."""
    return naive_contrastive(
        inputs["image_embeds"], inputs["text_embeds"], float(inputs["inverse_temperature"]),
        inputs["negative_image_embeds"], inputs["negative_text_embeds"], inputs["image_ids"].tolist(),
        inputs["text_ids"].tolist(), inputs["negative_image_ids"].tolist(), inputs["negative_text_ids"].tolist(),
    )


# ----------------------------------------------------------------------------------------- inputs
def random_rpa_inputs(seed, num_anchors=6, num_candidates=5, ties=False, masked=False):
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(num_anchors, num_candidates, generator=generator) * 3
    alphas = torch.rand(num_anchors, num_candidates, generator=generator)
    if ties:  # a coarse grid makes many equal judge scores
        alphas = (alphas * 3).round() / 3
    mask = None
    if masked:
        mask = torch.rand(num_anchors, num_candidates, generator=generator) < 0.7
        mask[:, 0] = True
        mask[0] = False  # an anchor without any real candidate...
        mask[0, 0] = True  # ...but its own: contributes nothing
        scores = scores.masked_fill(~mask, float("nan"))  # padding may hold anything
    return scores, alphas, mask


def normalised(rows, dim, generator):
    return F.normalize(torch.randn(rows, dim, generator=generator), dim=-1)


# ----------------------------------------------------------------------------------------- RPA
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_rpa_losses_match_paper_loops(seed, ties, masked):
    scores, alphas, mask = random_rpa_inputs(seed, ties=ties, masked=masked)
    assert rpa_pairwise_loss(scores, alphas, mask).item() == pytest.approx(naive_pairwise(scores, alphas, mask), abs=1e-6)
    assert rpa_listwise_loss(scores, alphas, mask).item() == pytest.approx(naive_listwise(scores, alphas, mask), abs=1e-6)


def test_listwise_without_ties_is_the_paper_formula_verbatim():
    scores, alphas, _ = random_rpa_inputs(7)
    assert rpa_listwise_loss(scores, alphas).item() == pytest.approx(naive_listwise_untied(scores, alphas), abs=1e-6)


def test_rpa_losses_do_not_depend_on_candidate_order_even_with_ties():
    scores, alphas, _ = random_rpa_inputs(3, ties=True)
    permutation = torch.randperm(scores.shape[1], generator=torch.Generator().manual_seed(0))
    for loss in (rpa_pairwise_loss, rpa_listwise_loss):
        assert loss(scores[:, permutation], alphas[:, permutation]).item() == pytest.approx(loss(scores, alphas).item())


def test_tied_candidates_carry_no_preference():
    scores = torch.randn(4, 3)
    tied = torch.full((4, 3), 0.5)
    assert rpa_pairwise_loss(scores, tied).item() == 0.0
    assert rpa_listwise_loss(scores, tied).item() == 0.0
    # A tie between the two worse candidates: moving their scores against each other changes nothing.
    alphas = torch.tensor([[0.9, 0.2, 0.2]])
    for loss in (rpa_pairwise_loss, rpa_listwise_loss):
        assert loss(torch.tensor([[1.0, 0.3, -0.4]]), alphas).item() == pytest.approx(
            loss(torch.tensor([[1.0, -0.4, 0.3]]), alphas).item()
        )


def test_rpa_losses_reward_the_judges_ranking():
    alphas = torch.tensor([[0.9, 0.5, 0.1]])
    agreeing, reversed_ = torch.tensor([[3.0, 0.0, -3.0]]), torch.tensor([[-3.0, 0.0, 3.0]])
    for loss in (rpa_pairwise_loss, rpa_listwise_loss):
        assert loss(agreeing, alphas) < loss(reversed_, alphas)


@pytest.mark.parametrize("loss", [rpa_pairwise_loss, rpa_listwise_loss])
@pytest.mark.parametrize("ties,masked", [(False, False), (True, True)])
def test_rpa_gradcheck(loss, ties, masked):
    scores, alphas, mask = random_rpa_inputs(11, num_anchors=3, num_candidates=4, ties=ties, masked=masked)
    scores = scores.nan_to_num(0.0).requires_grad_()
    assert torch.autograd.gradcheck(lambda s: loss(s, alphas, mask), (scores,))


def test_rpa_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="num_anchors, num_candidates"):
        rpa_pairwise_loss(torch.randn(2, 3), torch.rand(2, 4))
    with pytest.raises(ValueError, match="mask must be a bool tensor"):
        rpa_listwise_loss(torch.randn(2, 3), torch.rand(2, 3), torch.ones(2, 3))


@pytest.mark.parametrize("loss", [rpa_pairwise_loss, rpa_listwise_loss])
def test_rpa_losses_per_anchor_are_each_anchors_own_loss(loss):
    scores, alphas, mask = random_rpa_inputs(5, ties=True, masked=True)
    per_anchor = loss(scores, alphas, mask, reduction="none")
    assert per_anchor.shape == (scores.shape[0],)
    for i in range(scores.shape[0]):
        assert per_anchor[i].item() == pytest.approx(loss(scores[i : i + 1], alphas[i : i + 1], mask[i : i + 1]).item())
    assert per_anchor.mean().item() == pytest.approx(loss(scores, alphas, mask).item())
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'none', got 'sum'"):
        loss(scores, alphas, mask, reduction="sum")


def test_preference_agreement_per_anchor_counts_each_anchors_own_pairs():
    scores = torch.tensor([[3.0, 0.0, -3.0], [1.0, 2.0, 0.0], [1.0, 2.0, 3.0]])
    alphas = torch.tensor([[0.9, 0.5, 0.1], [0.9, 0.5, 0.5], [0.5, 0.5, 0.5]])  # row 2: no strict preference
    accuracies, margins = preference_agreement(scores, alphas, reduction="none")
    assert accuracies[:2].tolist() == [1.0, 0.5] and margins[:2].tolist() == [4.0, 0.0]
    assert accuracies[2].isnan() and margins[2].isnan()
    pooled = preference_agreement(scores, alphas)  # over the 5 preferred pairs of all anchors
    assert pooled[0].item() == pytest.approx(4 / 5) and pooled[1].item() == pytest.approx(12 / 5)
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'none', got 'sum'"):
        preference_agreement(scores, alphas, reduction="sum")


def test_preference_agreement_counts_a_tie_in_scores_as_no_agreement():
    """DPO's rewards/accuracies counts a pair only when the chosen one scores strictly higher: a collapsed model that
    scores every candidate alike follows none of the judge's preferences."""
    scores = torch.zeros(2, 3)
    alphas = torch.tensor([[0.9, 0.5, 0.1], [0.2, 0.4, 0.6]])
    accuracies, margins = preference_agreement(scores, alphas, reduction="none")
    assert accuracies.tolist() == [0.0, 0.0] and margins.tolist() == [0.0, 0.0]
    assert preference_agreement(scores, alphas)[0].item() == 0.0


# ----------------------------------------------------------------------------------------- InfoNCE
def contrastive_inputs(seed, num_anchors=4, num_negatives=5, dim=8):
    """Anchors and negatives whose ids repeat: negative 0 is anchor 1's image, negatives 2 and 3 are the same image,
    and anchors 2 and 3 share an image (as one image with two captions would)."""
    generator = torch.Generator().manual_seed(seed)
    images, texts = normalised(num_anchors, dim, generator), normalised(num_anchors, dim, generator)
    negative_images, negative_texts = normalised(num_negatives, dim, generator), normalised(num_negatives, dim, generator)
    image_ids, text_ids = torch.arange(num_anchors), torch.arange(num_anchors) + 100
    negative_image_ids, negative_text_ids = torch.arange(num_negatives) + 10, torch.arange(num_negatives) + 110
    images[3] = images[2]
    image_ids[3] = image_ids[2]
    negative_images[0], negative_image_ids[0] = images[1], image_ids[1]
    negative_images[3], negative_image_ids[3] = negative_images[2], negative_image_ids[2]
    negative_texts[4], negative_text_ids[4] = texts[0], text_ids[0]
    return dict(
        image_embeds=images, text_embeds=texts, inverse_temperature=torch.tensor(1 / 0.07),
        negative_image_embeds=negative_images, negative_text_embeds=negative_texts, image_ids=image_ids,
        text_ids=text_ids, negative_image_ids=negative_image_ids, negative_text_ids=negative_text_ids,
    )


def test_contrastive_loss_without_negatives_is_clip():
    generator = torch.Generator().manual_seed(0)
    images, texts = normalised(5, 8, generator), normalised(5, 8, generator)
    logits = 14.0 * images @ texts.T
    expected = (F.cross_entropy(logits, torch.arange(5)) + F.cross_entropy(logits.T, torch.arange(5))) / 2
    assert contrastive_loss(images, texts, torch.tensor(14.0)).item() == pytest.approx(expected.item(), abs=1e-6)


def test_contrastive_loss_per_anchor_averages_its_two_directions():
    generator = torch.Generator().manual_seed(0)
    images, texts = normalised(5, 8, generator), normalised(5, 8, generator)
    logits = 14.0 * images @ texts.T
    expected = (F.cross_entropy(logits, torch.arange(5), reduction="none")
                + F.cross_entropy(logits.T, torch.arange(5), reduction="none")) / 2
    torch.testing.assert_close(contrastive_loss(images, texts, torch.tensor(14.0), reduction="none"), expected)
    inputs = contrastive_inputs(0)
    per_anchor = contrastive_loss(**inputs, reduction="none")
    assert per_anchor.mean().item() == pytest.approx(contrastive_loss(**inputs).item())


@pytest.mark.parametrize("seed", range(3))
def test_contrastive_loss_with_expanded_deduplicated_negatives_matches_loop(seed):
    inputs = contrastive_inputs(seed)
    expected = naive_contrastive_of(inputs)
    assert contrastive_loss(**inputs).item() == pytest.approx(expected, abs=1e-6)


def test_per_anchor_exclusions_leave_only_that_anchors_denominator():
    inputs = contrastive_inputs(0)
    # text 0 must not be pushed from image 1 (anchor 1's image) nor image 11; image 2 keeps all but text 100 and
    # text 101; other rows exclude only their own id, which never counts
    inputs["excluded_image_ids"] = torch.tensor([[1, 11], [1, 1], [2, 2], [2, 2]])
    inputs["excluded_text_ids"] = torch.tensor([[100, 100], [101, 101], [100, 101], [103, 103]])
    expected = naive_contrastive(
        inputs["image_embeds"], inputs["text_embeds"], float(inputs["inverse_temperature"]),
        inputs["negative_image_embeds"], inputs["negative_text_embeds"], inputs["image_ids"].tolist(),
        inputs["text_ids"].tolist(), inputs["negative_image_ids"].tolist(), inputs["negative_text_ids"].tolist(),
        inputs["excluded_image_ids"].tolist(), inputs["excluded_text_ids"].tolist(),
    )
    assert contrastive_loss(**inputs).item() == pytest.approx(expected, abs=1e-6)
    without = {key: value for key, value in inputs.items() if not key.startswith("excluded")}
    assert contrastive_loss(**without).item() > expected  # fewer negatives, lower loss
    del inputs["image_ids"], inputs["negative_image_ids"]
    with pytest.raises(ValueError, match="per-anchor exclusions are ids"):
        contrastive_loss(**inputs)


def test_another_caption_of_the_same_image_is_not_its_negative():
    # Anchors 2 and 3 share an image: image -> text, caption 3 leaves image 2's denominator (and caption 2 image 3's)
    inputs = contrastive_inputs(0)
    texts, images, scale = inputs["text_embeds"], inputs["image_embeds"], inputs["inverse_temperature"]
    negative_images, negative_texts = inputs["negative_image_embeds"], inputs["negative_text_embeds"]
    image_pool = torch.cat([images[:3], negative_images[1:3], negative_images[4:]])  # without the duplicates
    text_pool = torch.cat([texts, negative_texts[:4]])  # negative text 4 is text 0 again
    for anchor, sibling in ((2, 3), (3, 2)):
        text_to_image = -(scale * texts[anchor] @ images[anchor] - (scale * texts[anchor] @ image_pool.T).logsumexp(0))
        logits = scale * images[anchor] @ text_pool.T
        image_to_text = -(logits[anchor] - torch.cat([logits[:sibling], logits[sibling + 1 :]]).logsumexp(0))
        per_anchor = contrastive_loss(**inputs, reduction="none")[anchor]
        assert per_anchor.item() == pytest.approx(((text_to_image + image_to_text) / 2).item(), abs=1e-5)
        assert -(logits[anchor] - logits.logsumexp(0)) > image_to_text  # the sibling caption was pushed away before
    # A caption shared by two images: text -> image likewise
    inputs = contrastive_inputs(1)
    inputs["text_embeds"][1], inputs["text_ids"][1] = inputs["text_embeds"][0], inputs["text_ids"][0]
    expected = naive_contrastive_of(inputs)
    assert contrastive_loss(**inputs).item() == pytest.approx(expected, abs=1e-6)


def test_siblings_are_found_by_id_whatever_the_order_of_the_anchors():
    """Anchors (A, X), (B, Y), (A, Y): caption Y describes image A too, so it is no negative of query A, though its
    first copy sits in anchor (B, Y)'s column (the first version masked columns and missed it)."""
    generator = torch.Generator().manual_seed(0)
    images, texts = normalised(2, 8, generator), normalised(2, 8, generator)
    image_rows, text_rows = [0, 1, 0], [0, 1, 1]
    inputs = dict(
        image_embeds=images[image_rows], text_embeds=texts[text_rows], inverse_temperature=torch.tensor(1 / 0.07),
        image_ids=torch.tensor(image_rows), text_ids=torch.tensor(text_rows) + 100,
    )
    expected = naive_contrastive(
        inputs["image_embeds"], inputs["text_embeds"], float(inputs["inverse_temperature"]), [], [],
        image_rows, [row + 100 for row in text_rows], [], [],
    )
    assert contrastive_loss(**inputs).item() == pytest.approx(expected, abs=1e-5)
    reversed_inputs = {key: value.flip(0) if key != "inverse_temperature" else value for key, value in inputs.items()}
    torch.testing.assert_close(contrastive_loss(**reversed_inputs, reduction="none").flip(0), contrastive_loss(**inputs, reduction="none"))


def test_duplicates_change_the_loss_unless_removed():
    inputs = contrastive_inputs(0)
    without_ids = {key: value for key, value in inputs.items() if not key.endswith("_ids")}
    assert contrastive_loss(**without_ids).item() != pytest.approx(contrastive_loss(**inputs).item())


def test_contrastive_gradcheck():
    inputs = contrastive_inputs(1, dim=4)
    names = ["image_embeds", "text_embeds", "inverse_temperature", "negative_image_embeds", "negative_text_embeds"]
    tensors = tuple(inputs[name].clone().requires_grad_() for name in names)
    ids = {key: value for key, value in inputs.items() if key.endswith("_ids")}
    assert torch.autograd.gradcheck(lambda *args: contrastive_loss(*args, **ids), tensors)


def test_contrastive_loss_requires_ids_on_both_sides():
    inputs = contrastive_inputs(0)
    del inputs["negative_image_ids"]
    with pytest.raises(ValueError, match="ids for both"):
        contrastive_loss(**inputs)


# ----------------------------------------------------------------------------------------- 2 processes (gloo)
def _two_process_worker(rank, world_size, store_file, inputs, anchor_splits, negative_splits, results):
    import torch.distributed as dist

    torch.set_default_dtype(torch.float64)
    # a file store: no port to pick and lose to another process before gloo binds it
    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=world_size)
    try:
        anchors, negatives = anchor_splits[rank], negative_splits[rank]
        local = {
            key: (value[negatives] if key.startswith("negative") else value[anchors] if value.dim() else value).clone()
            for key, value in inputs.items()
        }
        for key in ("image_embeds", "text_embeds", "negative_image_embeds", "negative_text_embeds"):
            local[key].requires_grad_()
        losses = contrastive_loss(**local, reduction="none")
        losses.sum().backward()
        results[rank] = (losses.detach(), local["image_embeds"].grad, local["negative_text_embeds"].grad)
    finally:
        dist.destroy_process_group()


def test_gathered_loss_on_two_processes_equals_the_global_batch_loss(tmp_path):
    """Each process's anchors get their losses in the global batch, and the gradients of the summed losses reach every
    process's rows. The processes hold different numbers of anchors (1 and 3) and of negatives (2 and 3), so the
    second's first anchor is row 1 of the gathered pool, not row `rank * rows`; a duplicate crosses processes each
    way (negative image 0 is anchor 1's image, negative text 4 anchor 0's text)."""
    inputs = contrastive_inputs(5, num_anchors=4, num_negatives=5)
    anchor_splits, negative_splits = [slice(0, 1), slice(1, 4)], [slice(0, 2), slice(2, 5)]
    results = mp.Manager().dict()
    store_file = tmp_path / "store"
    mp.spawn(_two_process_worker, args=(2, store_file, inputs, anchor_splits, negative_splits, results), nprocs=2,
             join=True)

    global_inputs = {key: value.clone().requires_grad_(key.endswith("embeds")) for key, value in inputs.items()}
    global_losses = contrastive_loss(**global_inputs, reduction="none")
    global_losses.sum().backward()
    torch.testing.assert_close(torch.cat([results[0][0], results[1][0]]), global_losses.detach(), atol=1e-6, rtol=0)
    # gradients of sums: DDP's average of the processes' gradients of their mean losses is that of the global mean only
    # for equal anchor counts, which the trainer's even batches give (test_trainer_distributed.py)
    image_grads = torch.cat([results[0][1], results[1][1]])
    negative_text_grads = torch.cat([results[0][2], results[1][2]])
    torch.testing.assert_close(image_grads, global_inputs["image_embeds"].grad, atol=1e-6, rtol=0)
    torch.testing.assert_close(negative_text_grads, global_inputs["negative_text_embeds"].grad, atol=1e-6, rtol=0)


def test_the_models_own_loss_is_the_trainers_infonce_without_expanded_negatives():
    """`MapleModel(return_loss=True)` computes InfoNCE in the modeling file, which loads without this package (remote
    code), so it cannot import `contrastive_loss`: the two must stay equal."""
    from modeling_maple.modeling_maple import clip_contrastive_loss

    generator = torch.Generator().manual_seed(0)
    images = F.normalize(torch.randn(6, 8, generator=generator), dim=-1)
    texts = F.normalize(torch.randn(6, 8, generator=generator), dim=-1)
    inverse_temperature = torch.tensor(14.3)
    expected = contrastive_loss(images, texts, inverse_temperature, gather_across_processes=False)
    torch.testing.assert_close(clip_contrastive_loss(inverse_temperature * texts @ images.T), expected)


def test_the_rpa_loss_of_both_directions_is_their_mean_and_the_objective_mixes_it_with_infonce():
    """MAPLE_METHOD: L_RPA = (L^txt2img + L^img2txt) / 2 and L = lambda L_RPA + (1 - lambda) L_contrast; the two
    directions may rank different numbers of candidates."""
    generator = torch.Generator().manual_seed(0)
    text_to_image = (torch.randn(3, 4, generator=generator), torch.rand(3, 4, generator=generator),
                     torch.tensor([[True] * 4, [True] * 3 + [False], [True] * 4]))
    image_to_text = (torch.randn(3, 6, generator=generator), torch.rand(3, 6, generator=generator), None)
    for form, loss in (("listwise", rpa_listwise_loss), ("pairwise", rpa_pairwise_loss)):
        per_anchor = bidirectional_rpa_loss(text_to_image, image_to_text, rpa_loss=form, reduction="none")
        expected = (loss(*text_to_image, reduction="none") + loss(*image_to_text, reduction="none")) / 2
        torch.testing.assert_close(per_anchor, expected)
        torch.testing.assert_close(bidirectional_rpa_loss(text_to_image, image_to_text, rpa_loss=form), expected.mean())
    contrastive = torch.tensor([0.5, 1.0, 2.0])
    torch.testing.assert_close(maple_loss(per_anchor, contrastive, 0.25), 0.25 * per_anchor + 0.75 * contrastive)


@pytest.mark.parametrize("seed", range(4))
def test_first_occurrence_finds_each_ids_first_position(seed):
    """`_first_occurrence` (by a stable sort, no data-dependent size) against a list's `index`, with repeats, a single
    id, ids far apart, and no ids."""
    from trainer.losses import _first_occurrence

    generator = torch.Generator().manual_seed(seed)
    for length, high in [(0, 1), (1, 1), (7, 1), (40, 5), (40, 40), (200, 10**12)]:
        ids = torch.randint(0, high, (length,), generator=generator)
        expected = [ids.tolist().index(value) for value in ids.tolist()]
        assert _first_occurrence(ids).tolist() == expected
