"""Metric values against hand-computed ones, and the `evaluate` modules against the plain functions."""

import math
import re
import warnings

import numpy as np
import pytest
import torch

from evaluation.metrics import (
    first_relevant_ranks,
    group_score_hits,
    group_scores,
    relevance_mask,
    modality_gap_from_quadruples,
    retrieval_recall,
    wasserstein_1d,
)


def test_recall_ranks_ties_against_the_query():
    similarities = [
        [0.9, 0.1, 0.5],  # relevant 0 is best: rank 1
        [0.2, 0.2, 0.1],  # relevant 1 ties with candidate 0: rank 2
        [0.3, 0.8, 0.1],  # relevant 2 is worst: rank 3
    ]
    assert first_relevant_ranks(torch.tensor(similarities), [0, 1, 2]).tolist() == [1, 2, 3]
    result = retrieval_recall(similarities, [0, 1, 2], ks=(1, 2, 3))
    assert result == pytest.approx(
        {"recall@1": 100 / 3, "recall@2": 200 / 3, "recall@3": 100.0, "mrr": 100 * (1 + 1 / 2 + 1 / 3) / 3}
    )


def test_recall_with_several_captions_per_image():
    # images 0, 1; captions 0, 1 describe image 0 and captions 2, 3 describe image 1
    image_to_text = [[0.1, 0.7, 0.8, 0.2], [0.9, 0.3, 0.2, 0.4]]
    # image 0: best own caption 0.7, beaten by caption 2 (0.8) -> rank 2
    # image 1: best own caption 0.4, beaten by caption 0 (0.9) -> rank 2
    assert retrieval_recall(image_to_text, [[0, 1], [2, 3]], ks=(1, 2)) == pytest.approx(
        {"recall@1": 0.0, "recall@2": 100.0, "mrr": 50.0}
    )
    text_to_image = torch.tensor(image_to_text).T
    # captions: [0.1, 0.9]->rank 2, [0.7, 0.3]->1, [0.8, 0.2] (own image 1)->2, [0.2, 0.4]->1
    assert retrieval_recall(text_to_image, [0, 0, 1, 1], ks=(1,)) == pytest.approx({"recall@1": 50.0, "mrr": 75.0})


def test_recall_perfect_and_worst():
    assert retrieval_recall(torch.eye(4), list(range(4))) == {
        "recall@1": 100.0, "recall@5": 100.0, "recall@10": 100.0, "mrr": 100.0
    }
    worst = 1 - torch.eye(4)  # every relevant candidate scores lowest: rank 4
    assert retrieval_recall(worst, list(range(4)), ks=(1, 3, 4)) == pytest.approx(
        {"recall@1": 0.0, "recall@3": 0.0, "recall@4": 100.0, "mrr": 25.0}
    )
    collapsed = torch.zeros(3, 3)  # all ties: pessimistic, never chance
    assert retrieval_recall(collapsed, [0, 1, 2], ks=(1,))["recall@1"] == 0.0


def test_recall_accepts_relevant_indices_as_a_tensor():
    scores = torch.eye(3)
    assert retrieval_recall(scores, torch.tensor([0, 1, 2]), ks=(1,)) == retrieval_recall(scores, [0, 1, 2], ks=(1,))


def test_recall_accepts_zero_dimensional_tensors_and_arrays_as_entries():
    """Entries such as `labels[i]` (a 0-d tensor) raised 'iteration over a 0-d tensor'."""
    import numpy as np

    scores = torch.eye(3)
    mixed = [torch.tensor(0), np.array(1), torch.tensor([2])]
    assert retrieval_recall(scores, mixed, ks=(1,)) == retrieval_recall(scores, [0, 1, 2], ks=(1,))
    assert retrieval_recall(scores, [{0}, frozenset({1, 2}), (2,)], ks=(1,))["recall@1"] == 100.0  # sets, as before


@pytest.mark.parametrize("entry", ["12", 1.0, None])
def test_recall_refuses_entries_that_are_not_indices(entry):
    with pytest.raises(TypeError, match=re.escape(f"query 1 has {entry!r}; expected a candidate index or a list of them")):
        retrieval_recall(torch.zeros(2, 20), [0, entry])


def test_recall_without_queries_is_an_error_not_nan():
    with pytest.raises(ValueError, match="ranks: got no queries"):
        retrieval_recall(torch.zeros(0, 3), [])


@pytest.mark.parametrize(
    "relevant, message",
    [
        ([0, 1], "one entry per query (3)"),
        ([0, 1, 5], "query 2 refers to candidates [5]"),
        ([0, 1, 3], "query 2 refers to candidates [3], expected indices in [0, 3)"),  # one past the last candidate
        ([0, [1, -1], 2], "query 1 refers to candidates [-1]"),  # not Python's last element
        ([0, [], 1], "query 1 has no"),
    ],
)
def test_recall_bad_input_names_the_problem(relevant, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        retrieval_recall(torch.zeros(3, 3), relevant)


@pytest.mark.parametrize("ks", [(0,), (1, -5), ()])
def test_recall_refuses_cutoffs_below_one(ks):
    """recall@0 would be 0 for every model, a score that reads as a failure rather than a typo."""
    with pytest.raises(ValueError, match=re.escape(f"ks: expected positive integers, got {ks}")):
        retrieval_recall(torch.eye(3), [0, 1, 2], ks=ks)


def test_group_scores_hand_computed():
    quadruples = [
        [1.0, 0.0, 0.0, 1.0],  # text, image, group
        [1.0, 0.0, 2.0, 1.0],  # I1 prefers T0: no text; T0 prefers I1: no image
        [1.0, 2.0, 0.0, 3.0],  # I0 prefers T1: no text; both captions prefer their image: image
        [0.5, 0.5, 0.5, 0.5],  # ties are failures
    ]
    assert group_scores(quadruples) == {"text_score": 25.0, "image_score": 50.0, "group_score": 25.0}
    with pytest.raises(ValueError, match=r"expected shape \(n, 4\)"):
        group_scores([[1.0, 2.0, 3.0]])


def test_group_score_hits_tell_the_off_diagonal_scores_apart():
    """Each hit compares the matched score with the right mismatched one: [s00, s01, s10, s11] per row, and
    the image score asks s(I1,T1) > s(I0,T1), the text score s(I1,T1) > s(I1,T0). The rows above never separate
    s01 from s10, so an image score comparing s11 with s10 (or a text score comparing it with s01) passed."""
    quadruples = [
        [1.0, 3.0, 0.0, 2.0],  # T1 prefers I0 (3 > 2): no image, though s11 > s10; I0 prefers T1: no text
        [1.0, 0.0, 3.0, 2.0],  # I1 prefers T0 (3 > 2): no text, though s11 > s01; T0 prefers I1: no image
        [2.0, 0.0, 1.0, 3.0],  # every comparison won: text, image, group
        [3.0, 2.0, 0.0, 1.0],  # I1 prefers T1 (1 > 0) and I0 T0: text; T1 prefers I0 (2 > 1): no image
        [3.0, 0.0, 2.0, 1.0],  # T1 prefers I1 (1 > 0) and T0 I0: image; I1 prefers T0 (2 > 1): no text
    ]
    hits = group_score_hits(quadruples)
    assert hits["text_score"].tolist() == [False, False, True, True, False]
    assert hits["image_score"].tolist() == [False, False, True, False, True]
    assert hits["group_score"].tolist() == [False, False, True, False, False]


def test_metrics_take_scores_as_tensors_of_any_dtype_and_device():
    """Training code hands over bf16 tensors that may require grad or live on a GPU; NumPy reads none of these."""
    quadruples = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 2.0, 0.0, 3.0]], dtype=torch.bfloat16, requires_grad=True)
    assert group_scores(quadruples) == {"text_score": 50.0, "image_score": 100.0, "group_score": 50.0}
    text_text = torch.tensor([0.5, 0.5], dtype=torch.bfloat16)
    assert modality_gap_from_quadruples(quadruples, text_text) == modality_gap_from_quadruples(
        quadruples.float().tolist(), [0.5, 0.5])
    # the relevance mask is built where the scores are (a CUDA tensor's mask on the CPU failed in `masked_fill`)
    assert relevance_mask([[1], [0]], 2, device="meta").device.type == "meta"


def test_wasserstein_equal_and_unequal_sizes():
    assert wasserstein_1d([0.0, 1.0], [3.0, 1.0]) == pytest.approx((1 + 2) / 2)  # sorted pairs (0,1), (1,3)
    # quantile functions 0 vs (0 below u=1/2, 2 above): mean |difference| = 1
    assert wasserstein_1d([0.0], [0.0, 2.0]) == pytest.approx(1.0)
    assert wasserstein_1d([0.2, 0.7], [0.7, 0.2]) == 0.0


def test_wasserstein_of_samples_near_the_largest_float_is_finite_where_float64_holds_it():
    """The differences and their sum overflowed: W([1e308, 1e308], [0, 0]) = 1e308 came out inf (with a warning), as did
    W([1.7e308], [-1e300, 1e300]) = 1.7e308 in the CDF form; the samples are now scaled down by a power of two for the
    sums, so a distance past float64's range alone is inf, and ordinary samples' distances are unchanged to the bit."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warning either
        assert wasserstein_1d([1e308, 1e308], [0.0, 0.0]) == 1e308
        assert wasserstein_1d([1e308, -1e308], [-1e308, 1e308]) == 0.0
        assert wasserstein_1d([1.7e308], [-1e300, 1e300]) == 1.7e308
        assert wasserstein_1d([-1e308], [1e308]) == math.inf  # 2e308: past float64's range
    rng = np.random.default_rng(0)
    a, b, c = rng.normal(size=100), rng.normal(size=100), rng.normal(size=37)
    assert wasserstein_1d(a, b) == float(np.mean(np.abs(np.sort(a) - np.sort(b))))
    # the scaled distance is the distance of samples scaled by the same power of two, to the bit
    assert wasserstein_1d(a * 2.0**1016, c * 2.0**1016) == wasserstein_1d(a, c) * 2.0**1016


@pytest.mark.parametrize("a, b", [([], [0.5]), ([0.5], [])])
def test_wasserstein_refuses_an_empty_sample(a, b):
    """An empty sample has no distribution: its CDF would divide by zero and the distance come out NaN."""
    with pytest.raises(ValueError, match=rf"both samples must be non-empty, got sizes {len(a)} and {len(b)}"):
        wasserstein_1d(a, b)


def test_modality_gap_hand_computed():
    quadruples = [[0.3, 0.1, 0.2, 0.5], [0.4, 0.2, 0.0, 0.6]]
    text_text = [0.9, 0.7]
    # matched {.3,.4,.5,.6} vs text-text {.7,.9}: quantile gaps .4,.3,.4,.3 -> 0.35
    # matched vs mismatched {0,.1,.2,.2}: sorted gaps .3,.3,.3,.4 -> 0.325
    result = modality_gap_from_quadruples(quadruples, text_text)
    assert result == pytest.approx({"w_dist": 0.35, "w_disc": 0.325, "delta_gap": 0.35 / 0.325})
    with pytest.raises(ValueError, match=r"one per quadruple \(2\), got 1"):
        modality_gap_from_quadruples(quadruples, [0.9])


def test_modality_gap_without_discrimination_is_infinite():
    assert math.isinf(modality_gap_from_quadruples([[0.5, 0.5, 0.5, 0.5]], [0.9])["delta_gap"])


def test_nan_scores_are_refused_rather_than_counted_as_misses():
    """NaN compares false with everything: it lost every comparison (a score of 0) and made the gap inf."""
    scores = torch.tensor([[0.9, 0.1, 0.2, 0.8], [float("nan"), 0.1, 0.2, 0.8]])
    with pytest.raises(ValueError, match=r"rows \[1\] hold NaN, inf or missing"):
        group_scores(scores)
    with pytest.raises(ValueError, match=r"rows \[1\] hold NaN, inf or missing"):
        modality_gap_from_quadruples(scores, torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="samples hold NaN or inf"):
        wasserstein_1d([0.1, float("nan")], [0.2, 0.3])


@pytest.mark.parametrize("ks", [(0,), (1, -5), (), (1.5,), (True,)])
def test_recall_from_ranks_refuses_the_cutoffs_the_dense_recall_refuses(ks):
    """The chunked recall (`maple eval`'s and the trainer's) took ks=(0,) and reported recall@0 = 0, and ks=(1.5,) as
    "recall@1.5": the check lived in `retrieval_recall` alone."""
    from evaluation.metrics import recall_from_ranks
    from evaluation.retrieval import chunked_retrieval_recall

    with pytest.raises(ValueError, match=re.escape(f"ks: expected positive integers, got {ks}")):
        recall_from_ranks(torch.tensor([1, 2]), ks)
    with pytest.raises(ValueError, match=re.escape(f"ks: expected positive integers, got {ks}")):
        chunked_retrieval_recall(torch.eye(3), torch.eye(3), [0, 1, 2], ks=ks)


def test_metrics_name_edge_inputs_plainly():
    """A bare cut-off (ks=5) was "'int' object is not iterable"; no quadruples at all ([]) a shape error; a missing
    (None) score a TypeError from torch naming no row; and two equal-sized samples' distance came out 0.2499... for
    0.25, as the modality-gap module's docstring example shows it (found by a review)."""
    for ks in (2, np.int64(2), np.array(2), torch.tensor(2), torch.tensor([2]), np.array([2])):
        assert retrieval_recall(torch.eye(3), [0, 1, 2], ks=ks) == {"recall@2": 100.0, "mrr": 100.0}
    with pytest.raises(ValueError, match="got no quadruples"):
        group_scores([])
    with pytest.raises(ValueError, match=r"expected shape \(n, 4\).*got shape \(3, 0\)"):  # rows without scores
        group_scores([[], [], []])
    with pytest.raises(ValueError, match=r"rows \[1\] hold NaN, inf or missing scores"):
        retrieval_recall([[0.9, 0.1], [None, 0.8]], [0, 1])
    assert wasserstein_1d([0.3, 0.5], [0.1, 0.2]) == 0.25
    assert modality_gap_from_quadruples([[0.3, 0.1, 0.2, 0.5]], [0.9]) == {"w_dist": 0.5, "w_disc": 0.25, "delta_gap": 2.0}


def test_recall_refuses_a_boolean_for_a_candidate_index():
    """True is an int to Python: it was taken for candidate 1."""
    with pytest.raises(TypeError, match=re.escape("query 0 has True; expected a candidate index")):
        retrieval_recall([[0.1, 0.9]], [True])


@pytest.mark.parametrize("function, rows", [
    (retrieval_recall, [[0.1, 0.9], [0.2, 0.3], [0.5]]),
    (group_scores, [[0.9, 0.1, 0.2, 0.8], [0.9, 0.1, 0.2]]),
])
def test_score_rows_of_different_lengths_name_the_first_short_or_long_row(function, rows):
    """A ragged list of rows failed in torch or NumPy ("expected sequence of length 2 at dim 1 (got 1)", "inhomogeneous
    shape"), naming no row."""
    last = len(rows) - 1
    expected = len(rows[0])
    args = (rows, [0] * len(rows)) if function is retrieval_recall else (rows,)
    with pytest.raises(ValueError, match=re.escape(f"row {last} has {len(rows[last])} scores, row 0 has {expected}")):
        function(*args)


@pytest.mark.parametrize("relevant", [{0: 1, 1: 0}, {1: [0], 0: [1]}, {1, 0}])
def test_relevant_indices_in_a_dict_or_a_set_are_refused_not_read_as_their_keys(relevant):
    """Iterated, a dict gives its keys: {0: 1, 1: 0} (each query's relevant candidate the other's) was read as [0, 1],
    and the identity scored recall@1 100 for 0, silently; a set has no query order."""
    from evaluation.retrieval import chunked_retrieval_recall

    message = rf"^relevant indices: expected one entry per query, in query order \(a list\), got a {type(relevant).__name__}"
    with pytest.raises(TypeError, match=message):
        retrieval_recall(torch.eye(2), relevant)
    with pytest.raises(TypeError, match=message):
        chunked_retrieval_recall(torch.eye(2), torch.eye(2), relevant)


@pytest.mark.parametrize("ranks, message", [
    (torch.tensor([1, 0, 2]), r"^ranks: query 1 has rank 0; expected 1-based integer ranks \(1: the first\)$"),
    (torch.tensor([1.0, 1.5]), r"^ranks: query 1 has rank 1\.5; "),
    (torch.tensor([1.0, float("nan")]), r"^ranks: query 1 has rank nan; "),
    (torch.tensor([[1], [2]]), r"^ranks: expected one rank per query, shape \(Q,\), got shape \(2, 1\)$"),
    (torch.tensor([1.0, float("inf")]), r"^ranks: query 1 has rank inf; "),
    (torch.tensor([True, True]), r"^ranks: got booleans; expected 1-based integer ranks \(1: the first\)$"),
])
def test_recall_from_ranks_refuses_ranks_that_are_not_one_based_integers_per_query(ranks, message):
    """0-based ranks (argsort positions) gave an MRR of inf and each recall@k the recall at k + 1; a rank of 1.5 an MRR
    of 2/3; a (Q, 1) column of ranks passed as it is."""
    from evaluation.metrics import recall_from_ranks

    with pytest.raises(ValueError, match=message):
        recall_from_ranks(ranks)
    assert recall_from_ranks([1, 2], ks=(1,)) == {"recall@1": 50.0, "mrr": 75.0}  # a list of ranks reads too


def test_no_inputs_and_non_finite_text_text_scores_are_named_as_the_other_inputs_are():
    """retrieval_recall([], []) was a shape error ("got shape (0,)") and modality_gap_from_quadruples([], []) a
    Wasserstein error about empty samples, where group_scores([]) says "got no quadruples"; a NaN, inf or missing
    text-text score was "wasserstein_1d: the samples hold NaN or inf", naming no row, where a quadruple's names it."""
    with pytest.raises(ValueError, match=r"^ranks: got no queries"):
        retrieval_recall([], [])
    with pytest.raises(ValueError, match=r"^quadruple similarities: got no quadruples$"):
        modality_gap_from_quadruples([], [])
    quadruples = [[0.3, 0.1, 0.2, 0.5]] * 3
    for bad in (float("nan"), float("inf"), None):
        with pytest.raises(ValueError, match=r"^text-text similarities: rows \[1\] hold NaN, inf or missing scores$"):
            modality_gap_from_quadruples(quadruples, [0.9, bad, 0.8])
