"""Chunked retrieval equals the dense computation, ties and several relevant candidates included."""

import re

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from evaluation import retrieval as retrieval_module
from evaluation.metrics import first_relevant_ranks, retrieval_recall
from evaluation.protocols import evaluate_retrieval
from evaluation.retrieval import anchor_recall_at_1, chunked_ranks, chunked_retrieval_recall, chunked_topk


def _normalised(n, d, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=generator), dim=1)


@pytest.mark.parametrize("query_chunk, candidate_chunk", [(7, 5), (64, 1000), (1, 1)])
def test_chunked_topk_equals_dense(query_chunk, candidate_chunk):
    queries, candidates = _normalised(23, 16, 0), _normalised(41, 16, 1)
    scores, indices = chunked_topk(queries, candidates, k=6, query_chunk=query_chunk, candidate_chunk=candidate_chunk)
    dense = (queries @ candidates.T).topk(6, dim=1)
    torch.testing.assert_close(scores, dense.values)
    assert torch.equal(indices, dense.indices)


def test_chunked_topk_k_larger_than_corpus():
    queries, candidates = _normalised(3, 8, 0), _normalised(4, 8, 1)
    scores, indices = chunked_topk(queries, candidates, k=10, candidate_chunk=3)
    assert indices.shape == (3, 4)
    assert torch.equal(indices, (queries @ candidates.T).argsort(dim=1, descending=True))


@pytest.mark.parametrize("duplicate_threshold", [0.9999, None])
@pytest.mark.parametrize("query_chunk, candidate_chunk", [(7, 5), (2, 3), (1, 1), (64, 1000)])
def test_chunked_topk_skips_self_and_duplicates_like_the_masked_dense_topk(query_chunk, candidate_chunk, duplicate_threshold):
    candidates = _normalised(19, 8, 4)
    candidates[11] = candidates[2]  # a duplicate of row 2
    # Queries 0..5 are candidates 2, 11, 5, 0, 18, 7; query 6 is not a candidate (-1: no self).
    self_indices = torch.tensor([2, 11, 5, 0, 18, 7, -1])
    queries = torch.cat([candidates[self_indices[:-1]], _normalised(1, 8, 5)])
    scores, indices = chunked_topk(
        queries,
        candidates,
        k=19,
        query_chunk=query_chunk,
        candidate_chunk=candidate_chunk,
        self_indices=self_indices,
        duplicate_threshold=duplicate_threshold,
    )
    dense = queries @ candidates.T
    excluded = torch.zeros_like(dense, dtype=torch.bool) if duplicate_threshold is None else dense >= duplicate_threshold
    excluded[torch.arange(6), self_indices[:-1]] = True
    expected = dense.masked_fill(excluded, float("-inf")).topk(19, dim=1)
    torch.testing.assert_close(scores, expected.values)
    # Candidates 2 and 11 tie, and the excluded ones all score -inf: indices are checked through
    # their scores, and each appears once per query.
    kept = scores > float("-inf")
    rows = torch.arange(7)[:, None].expand_as(indices)[kept]
    torch.testing.assert_close(dense[rows, indices[kept]], scores[kept])
    assert not excluded[rows, indices[kept]].any()
    assert all(len(set(row)) == 19 for row in indices.tolist())
    excluded_per_query = [2, 2, 1, 1, 1, 1, 0] if duplicate_threshold else [1, 1, 1, 1, 1, 1, 0]
    assert (scores == float("-inf")).sum(dim=1).tolist() == excluded_per_query


@pytest.mark.parametrize("duplicate_threshold", [0.9999, None])
@pytest.mark.parametrize("query_chunk, candidate_chunk", [(2, 3), (1, 1), (64, 1000)])
def test_chunked_topk_skips_each_querys_excluded_candidates_and_their_near_duplicates(
    query_chunk, candidate_chunk, duplicate_threshold
):
    candidates = _normalised(12, 8, 6)
    candidates[9] = candidates[4]  # a copy of row 4
    queries = _normalised(3, 8, 7)
    excluded_indices = torch.tensor([[4, 1], [-1, 7], [-1, -1]])  # query 2 excludes nothing
    scores, indices = chunked_topk(queries, candidates, k=12, query_chunk=query_chunk, candidate_chunk=candidate_chunk,
                                   duplicate_threshold=duplicate_threshold, excluded_indices=excluded_indices)
    dense = queries @ candidates.T
    excluded = torch.zeros_like(dense, dtype=torch.bool)
    excluded[0, [1, 4]] = excluded[1, 7] = True
    if duplicate_threshold is not None:
        excluded[0, 9] = True  # the copy of an excluded candidate
    torch.testing.assert_close(scores, dense.masked_fill(excluded, float("-inf")).topk(12, dim=1).values)
    kept = scores > float("-inf")
    assert kept.sum(dim=1).tolist() == [12 - int(excluded[0].sum()), 11, 12]
    assert not excluded[torch.arange(3)[:, None].expand_as(indices)[kept], indices[kept]].any()
    with pytest.raises(ValueError, match=r"excluded_indices: expected shape \(3, m\), got \(2, 2\)"):
        chunked_topk(queries, candidates, k=2, excluded_indices=excluded_indices[:2])


def test_chunked_topk_excludes_scores_exactly_at_the_duplicate_threshold():
    """The threshold is inclusive ("at or above"), against the query and against each excluded candidate. Entries of
    0, 0.5 and 1 make every score exact, so the threshold 0.5 is reached, not approached."""
    query = torch.tensor([[1.0, 0, 0, 0, 0, 0, 0, 0]])
    candidates = torch.tensor([
        [0.5, 0.5, 0.5, 0.5, 0, 0, 0, 0],  # scores 0.5 against the query
        [0, 0, 0, 0, 1.0, 0, 0, 0],  # excluded by index
        [0, 0, 0, 0, 0.5, 0.5, 0.5, 0.5],  # scores 0.5 against candidate 1, 0 against the query
        [0, 0, 0, 0, 0, 0, 0, 1.0],  # scores 0 against everything
    ])

    def retrieved(duplicate_threshold):
        scores, indices = chunked_topk(query, candidates, k=4, candidate_chunk=3, duplicate_threshold=duplicate_threshold,
                                       excluded_indices=torch.tensor([[1]]))
        return sorted(indices[scores > float("-inf")].tolist())

    assert retrieved(0.5) == [3]
    assert retrieved(0.5001) == [0, 2, 3]


@pytest.mark.parametrize("candidate_chunk", [24, 5, 7])
def test_chunked_topk_orders_more_than_16_ties_by_candidate_index(candidate_chunk):
    """Equal scores come in candidate order. Past 16 columns torch's default (unstable) sort reorders equal keys, so
    only a stable sort keeps that order for k > 16."""
    high, low = [1.0, 0.0], [0.5, 0.5]  # exact scores 1 and 0.5 against the query
    candidates = torch.tensor([high if c % 2 else low for c in range(24)])
    scores, indices = chunked_topk(torch.tensor([[1.0, 0.0]]), candidates, k=20, candidate_chunk=candidate_chunk)
    assert indices[0].tolist() == list(range(1, 24, 2)) + list(range(0, 16, 2))
    assert scores[0].tolist() == [1.0] * 12 + [0.5] * 8


@pytest.mark.parametrize("query_chunk, candidate_chunk", [(1, 1), (3, 2), (7, 13), (64, 256)])
def test_chunked_topk_settles_many_ties_by_candidate_index_at_any_block_shape(query_chunk, candidate_chunk):
    """Binary vectors give exact scores with many ties per row, some at -inf (self, near-duplicates): every block
    shape returns the candidates sorted by score, then index."""
    candidates = torch.randint(0, 2, (40, 3), generator=torch.Generator().manual_seed(0)).float()
    dense = candidates @ candidates.T
    masked = dense.masked_fill(dense >= 2.5, float("-inf")).fill_diagonal_(float("-inf"))
    expected = [sorted(range(40), key=lambda column: (-row[column].item(), column))[:25] for row in masked]
    scores, indices = chunked_topk(candidates, candidates, k=25, query_chunk=query_chunk, candidate_chunk=candidate_chunk,
                                   self_indices=torch.arange(40), duplicate_threshold=2.5)
    assert indices.tolist() == expected
    assert torch.equal(scores, masked.gather(1, indices))


def test_chunked_topk_without_queries():
    scores, indices = chunked_topk(torch.zeros(0, 4), _normalised(5, 4, 0), k=3)
    assert scores.shape == indices.shape == (0, 3)


def test_chunked_topk_with_k_zero_returns_no_candidates():
    scores, indices = chunked_topk(_normalised(3, 4, 0), _normalised(5, 4, 1), k=0, candidate_chunk=2)
    assert scores.shape == indices.shape == (3, 0)


def test_chunked_topk_on_an_empty_gallery_returns_no_candidates_whatever_is_excluded():
    """With a duplicate threshold the excluded candidates' vectors were gathered from the empty gallery: IndexError."""
    scores, indices = chunked_topk(_normalised(2, 4, 0), torch.zeros(0, 4), k=3, self_indices=torch.tensor([0, 1]),
                                   duplicate_threshold=0.9, excluded_indices=torch.tensor([[-1], [-1]]))
    assert scores.shape == indices.shape == (2, 0)


def test_chunked_topk_refuses_one_dimensional_excluded_indices():
    """A (Q,) tensor, one excluded candidate per query, passes the length check; it must be (Q, 1)."""
    with pytest.raises(ValueError, match=r"excluded_indices: expected shape \(3, m\), got \(3,\)"):
        chunked_topk(_normalised(3, 4, 0), _normalised(5, 4, 1), k=2, excluded_indices=torch.tensor([0, 1, 2]))


def test_chunked_ranks_without_queries_and_with_zero_dimensional_entries():
    """Zero queries raised torch.cat's 'expected a non-empty list of Tensors' (chunked_topk returns empty results);
    0-d tensors as entries raised 'iteration over a 0-d tensor'."""
    candidates = _normalised(5, 4, 0)
    assert chunked_ranks(torch.zeros(0, 4), candidates, []).shape == (0,)
    queries = _normalised(3, 4, 1)
    labels = torch.tensor([4, 0, 2])
    assert torch.equal(chunked_ranks(queries, candidates, [labels[i] for i in range(3)]), chunked_ranks(queries, candidates, labels))
    with pytest.raises(ValueError, match="ranks: got no queries"):
        chunked_retrieval_recall(torch.zeros(0, 4), candidates, [])


@pytest.mark.parametrize("query_chunk, candidate_chunk", [(5, 7), (3, 2), (100, 100)])
def test_chunked_ranks_equal_dense_with_several_captions_per_image(query_chunk, candidate_chunk):
    images, captions = _normalised(12, 16, 2), _normalised(36, 16, 3)
    captions_of_image = [[3 * i, 3 * i + 1, 3 * i + 2] for i in range(12)]
    image_of_caption = [c // 3 for c in range(36)]
    dense = images @ captions.T
    i2t = chunked_ranks(images, captions, captions_of_image, query_chunk, candidate_chunk)
    t2i = chunked_ranks(captions, images, image_of_caption, query_chunk, candidate_chunk)
    assert torch.equal(i2t, first_relevant_ranks(dense, captions_of_image))
    assert torch.equal(t2i, first_relevant_ranks(dense.T, image_of_caption))
    assert chunked_retrieval_recall(images, captions, captions_of_image, candidate_chunk=candidate_chunk) == (
        retrieval_recall(dense, captions_of_image)
    )


def test_chunked_ranks_compute_each_score_block_once_when_the_relevant_blocks_are_kept(monkeypatch):
    """The blocks holding a query block's relevant candidates (up to `KEPT_RELEVANT_BLOCKS` of them) are kept from
    the first pass for the count, not computed again: every (query, candidate) score is computed once."""
    computed = []
    score_blocks = retrieval_module._score_blocks

    def recording(*args, **kwargs):
        for c_start, scores in score_blocks(*args, **kwargs):
            computed.append(scores.numel())
            yield c_start, scores

    monkeypatch.setattr(retrieval_module, "_score_blocks", recording)
    queries, candidates = _normalised(6, 8, 0), _normalised(20, 8, 1)
    relevant = [0, 3, 11, [12, 14], 4, 13]  # in the candidate blocks [0, 5) and [10, 15)
    ranks = chunked_ranks(queries, candidates, relevant, query_chunk=6, candidate_chunk=5)
    assert torch.equal(ranks, first_relevant_ranks(queries @ candidates.T, relevant))
    assert sum(computed) == 6 * 20


def test_chunked_ranks_exact_ties_with_duplicates():
    # Integer embeddings make every dot product exact, so ties are real ties in any summation order.
    candidates = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0]])
    relevant = [[1], [2, 3], [0]]
    # query 0 scores [1, 1, 0, 1, 1]: relevant 1 ties with 0, 3, 4 -> rank 4
    # query 1 scores [0, 0, 1, 1, 0]: relevant {2, 3} best 1, no irrelevant >= 1 -> rank 1
    # query 2 scores [2, 2, 1, 3, 2]: relevant 0 = 2; 1, 3, 4 >= 2 -> rank 4
    expected = torch.tensor([4, 1, 4])
    for candidate_chunk in (1, 2, 5):
        assert torch.equal(chunked_ranks(queries, candidates, relevant, query_chunk=2, candidate_chunk=candidate_chunk), expected)
    assert torch.equal(first_relevant_ranks(queries @ candidates.T, relevant), expected)
    # A relevant candidate listed twice counts once (it was taken back out of the count twice: rank 3, not 4).
    twice = [[1, 1], [2, 3, 3], [0, 0]]
    assert torch.equal(chunked_ranks(queries, candidates, twice, query_chunk=2, candidate_chunk=2), expected)
    assert torch.equal(first_relevant_ranks(queries @ candidates.T, twice), expected)


@pytest.mark.parametrize("query_chunk, candidate_chunk", [(1, 1), (64, 4096), (7, 333)])
def test_chunked_ranks_keep_ties_of_float_duplicates_at_any_block_size(query_chunk, candidate_chunk):
    """With float embeddings a separate GEMM for the best relevant score rounded it one ulp away from its exact
    duplicate's (7 x 333 or 1 x 1 blocks), breaking the tie in the model's favour; dense float64 ranks are the truth."""
    torch.manual_seed(0)
    images = F.normalize(torch.randn(140, 768), dim=-1)
    images[1::7] = images[0::7][: len(images[1::7])]  # duplicate images
    captions = F.normalize(torch.randn(700, 768), dim=-1)
    captions[::5] = F.normalize(images + 0.5 * torch.randn(140, 768), dim=-1)
    captions[5::15] = captions[0::15][: len(captions[5::15])]  # a caption of another image, word for word
    captions_of_image = [list(range(5 * image, 5 * image + 5)) for image in range(140)]
    image_of_caption = [caption // 5 for caption in range(700)]
    for queries, candidates, relevant in ((captions, images, image_of_caption), (images, captions, captions_of_image)):
        dense = first_relevant_ranks(queries.double() @ candidates.double().T, relevant)
        chunked = chunked_ranks(queries, candidates, relevant, query_chunk=query_chunk, candidate_chunk=candidate_chunk)
        assert torch.equal(chunked, dense)


def test_mismatched_shapes_are_reported():
    with pytest.raises(ValueError, match=r"got \(2, 3\) and \(4, 5\)"):
        chunked_topk(torch.zeros(2, 3), torch.zeros(4, 5), k=1)
    with pytest.raises(ValueError, match=r"got \(4,\) and \(5, 4\)"):
        chunked_topk(torch.zeros(4), torch.zeros(5, 4), k=1)
    # One position short: the last query would retrieve itself, silently.
    with pytest.raises(ValueError, match=r"self_indices: expected shape \(3,\), got \(2,\)"):
        chunked_topk(_normalised(3, 4, 0), _normalised(5, 4, 1), k=1, self_indices=torch.tensor([0, 1]))


def test_non_finite_embeddings_and_scores_are_refused_not_ranked_first():
    # NaN compares false with everything, so a NaN query used to get rank 1 (recall@1 = 100).
    queries, candidates = torch.randn(4, 8), torch.randn(6, 8)
    queries[2] = float("nan")
    with pytest.raises(ValueError, match=r"1 of the 4 queries are not finite \(NaN or inf\): row 2;"):
        chunked_ranks(queries, candidates, [0, 1, 2, 3])
    candidates[5, 0] = float("inf")
    with pytest.raises(ValueError, match=r"1 of the 6 candidates are not finite"):
        chunked_ranks(torch.randn(4, 8), candidates, [0, 1, 2, 3])
    scores = torch.randn(3, 5)
    scores[1, 4] = float("nan")
    with pytest.raises(ValueError, match=r"rows \[1\] hold NaN, inf or missing scores"):
        retrieval_recall(scores, [0, 1, 2])


def test_chunked_ranks_count_exactly_in_bfloat16():
    # Past 256 ones a bf16 sum rounds; the count is a float32 sum now (exact below 2**24 ones).
    generator = torch.Generator().manual_seed(0)
    queries, candidates = torch.randn(8, 16, generator=generator), torch.randn(4000, 16, generator=generator)
    relevant = list(range(8))
    queries, candidates = queries.bfloat16(), candidates.bfloat16()
    expected = first_relevant_ranks((queries @ candidates.T).float(), relevant)
    ranks = chunked_ranks(queries, candidates, relevant, candidate_chunk=4000)
    assert expected.max() > 1000 and torch.equal(ranks, expected)


@pytest.mark.parametrize("call, message", [
    (lambda: chunked_topk(torch.eye(3), torch.eye(3), k=-1), r"^k: expected a non-negative integer, got -1$"),
    (lambda: chunked_topk(torch.eye(3), torch.eye(3), k=2.5), r"^k: expected a non-negative integer, got 2\.5$"),
    (lambda: chunked_topk(torch.eye(3), torch.eye(3), k=1, query_chunk=0),
     r"^query_chunk: expected a positive integer, got 0$"),
    (lambda: chunked_ranks(torch.eye(3), torch.eye(3), [0, 1, 2], candidate_chunk=-2),
     r"^candidate_chunk: expected a positive integer, got -2$"),
])
def test_sizes_that_are_not_counts_are_named(call, message):
    """They failed inside torch or range(): "negative dimension -6", "range() arg 3 must not be zero",
    "ZeroDivisionError"."""
    with pytest.raises(ValueError, match=message):
        call()


def test_palette_images_differing_only_in_their_palette_are_two_images_in_retrieval():
    """The evaluation tells images apart as the trainer does (`maple.content.content_id`): a recoloured palette copy
    has the same index bytes, and keying by pixels and mode alone made it the same image."""
    from evaluation.protocols import _image_keys

    red = Image.new("P", (4, 4), 0)
    red.putpalette([255, 0, 0] + [0, 0, 0] * 255)
    blue = red.copy()
    blue.putpalette([0, 0, 255] + [0, 0, 0] * 255)
    keys = _image_keys([red, blue, red.copy()])
    assert keys[0] != keys[1] and keys[0] == keys[2]


class _PixelEmbedder:
    """Embeds each text by a lookup table and each PIL image as its top-left pixel's red and green values."""

    TEXTS = {"a red square": [1.0, 0.0], "a green square": [0.0, 1.0], "another red square": [1.0, 0.1]}

    def encode(self, processor, texts, images, batch_size):
        pixels = [images[index].getpixel((0, 0))[:2] for index in range(len(images))]
        return torch.tensor([self.TEXTS[text] for text in texts]), torch.tensor(pixels, dtype=torch.float32)


def test_retrieval_reads_a_series_of_images_and_of_caption_lists_by_position_whatever_its_index():
    """As quadruples are read: a Series' [i] is by label, so the copies of an image (embedded once, fetched by their
    position) were a bare KeyError: 0 for a Series indexed from 1, and for the index [1, 0, 2] the other image,
    silently (every score 0 where a list scored 100); a Series of caption lists was refused as not a list."""
    import pandas as pd

    red, green = Image.new("RGB", (2, 2), (1, 0, 0)), Image.new("RGB", (2, 2), (0, 1, 0))
    images = [red, green, red.copy()]
    captions = [["a red square"], ["a green square"], ["another red square"]]
    expected = evaluate_retrieval(_PixelEmbedder(), None, images, captions)
    assert expected["i2t_r1"] == expected["t2i_r1"] == 100.0
    for index in ([1, 0, 2], [1, 2, 3], ["x", "y", "z"]):
        assert evaluate_retrieval(_PixelEmbedder(), None, pd.Series(images, index=index), captions) == expected
        series = (pd.Series(images, index=index), pd.Series(captions, index=index))
        assert evaluate_retrieval(_PixelEmbedder(), None, *series) == expected


def test_a_table_given_as_retrieval_images_or_captions_is_refused_by_name():
    """A DataFrame's iteration gives its column names, and its [0:32] rows: read as images, it failed in the embedder."""
    import pandas as pd

    table = pd.DataFrame({"image": [[1.0, 0.0]], "captions": [["a"]]})
    with pytest.raises(TypeError, match=r"^images: expected a list, one entry per image, got a table \(DataFrame\); "):
        evaluate_retrieval(_PixelEmbedder(), None, table, [["a"]])
    with pytest.raises(TypeError, match=r"^captions_per_image: expected a list, one entry per image, got a table "):
        evaluate_retrieval(_PixelEmbedder(), None, [[1.0, 0.0]], table)


@pytest.mark.parametrize("search", [lambda q, c: chunked_topk(q, c, k=2), lambda q, c: chunked_ranks(q, c, [0, 1])])
@pytest.mark.parametrize("queries, candidates, got", [
    (torch.eye(2, dtype=torch.long), torch.eye(2, dtype=torch.long), "torch.int64 on cpu and torch.int64 on cpu"),
    (torch.eye(2), torch.eye(2, dtype=torch.float64), "torch.float32 on cpu and torch.float64 on cpu"),
    (torch.eye(2), torch.eye(2, device="meta"), "torch.float32 on cpu and torch.float32 on meta"),
])
def test_searches_refuse_embeddings_of_an_integer_dtype_or_of_two_dtypes_or_devices(search, queries, candidates, got):
    """torch failed mid-search: "value cannot be converted to type int64_t without overflow" (integer embeddings, masked
    with -inf), "expected m1 and m2 to have the same dtype"."""
    message = re.escape(f"embeddings: expected queries and candidates of one floating-point dtype on one device, got {got}")
    with pytest.raises(ValueError, match=message):
        search(queries, candidates)


@pytest.mark.parametrize("rows", [(3, 3, 3, 2), (3, 3, 2, 3), (2, 3, 3, 3), (3, 2, 3, 3)])
def test_anchor_recall_refuses_arguments_of_different_lengths(rows):
    """The ids were paired with zip, which stopped at the shorter list: the pairs past it were dropped silently (a
    caption left with no image), and an embedding short of its ids was an IndexError naming nothing."""
    text_rows, image_rows, text_id_rows, image_id_rows = rows
    arguments = (torch.eye(3)[:text_rows], torch.eye(3)[:image_rows], torch.arange(text_id_rows),
                 torch.arange(10, 10 + image_id_rows))
    expected = {"text_embeds": text_rows, "image_embeds": image_rows, "text_ids": text_id_rows,
                "image_ids": image_id_rows}
    with pytest.raises(ValueError, match=re.escape(f"anchor_recall_at_1: expected one row per anchor pair in each "
                                                   f"argument, got rows {expected}")):
        anchor_recall_at_1(*arguments)
    assert anchor_recall_at_1(torch.eye(3), torch.eye(3), torch.arange(3), torch.arange(10, 13)) == {
        "text_to_image": 100.0, "image_to_text": 100.0}
