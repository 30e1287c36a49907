"""Hard-negative mining: exact chunked top-k, bounded memory, duplicates, SemDeDup, encoders."""

import math
import re

import numpy
import pytest
import torch
from PIL import Image

from dataset_builders import HardNegativeMiner, semdedup, top_k_neighbours
from dataset_builders import miner as miner_module
from dataset_builders.miner import MinerInputError, MinerOutputError
from evaluation import retrieval as retrieval_module


def _save_tiny_encoder(path, architecture: str = "dinov2") -> None:
    """A random tiny transformers image encoder ("dinov2" or "vit") and an image processor for 16-pixel images,
    saved to `path` for `HardNegativeMiner.from_pretrained`."""
    from transformers import CLIPImageProcessorPil, Dinov2Config, Dinov2Model, ViTConfig, ViTModel

    config_class, model_class = {"dinov2": (Dinov2Config, Dinov2Model), "vit": (ViTConfig, ViTModel)}[architecture]
    sizes = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=16,
                 patch_size=8)
    torch.manual_seed(0)
    model_class(config_class(**sizes)).save_pretrained(path)
    CLIPImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}).save_pretrained(path)


def _record_searches(monkeypatch) -> list[tuple[int, int]]:
    """The (number of queries, depth k) of every `chunked_topk` search `top_k_neighbours` runs, in order."""
    searches, search = [], miner_module.chunked_topk

    def recording(*args, **kwargs):
        searches.append((len(args[0]), args[2]))
        return search(*args, **kwargs)

    monkeypatch.setattr(miner_module, "chunked_topk", recording)
    return searches


def _brute_force(embeddings: torch.Tensor, k: int) -> torch.Tensor:
    normalised = torch.nn.functional.normalize(embeddings, dim=-1)
    similarities = normalised @ normalised.T
    similarities.fill_diagonal_(float("-inf"))
    return similarities.topk(k, dim=1)


# k = 20: past 16 columns torch's default (unstable) sort reorders equal keys, the kept neighbours among them
@pytest.mark.parametrize("k", [5, 20])
@pytest.mark.parametrize("query_chunk_size, key_chunk_size", [(7, 13), (64, 5), (1000, 1000)])
def test_chunked_search_equals_brute_force(query_chunk_size, key_chunk_size, k):
    embeddings = torch.randn(301, 24, generator=torch.Generator().manual_seed(0)) * 3.0
    expected = _brute_force(embeddings, k=k)
    found = top_k_neighbours(embeddings, k, query_chunk_size=query_chunk_size, key_chunk_size=key_chunk_size)
    assert torch.equal(found.indices, expected.indices)
    torch.testing.assert_close(found.scores, expected.values)


def _record_block_shapes(monkeypatch) -> list[tuple[int, int]]:
    """The (queries, keys) shape of every similarity block the search builds, in order."""
    block_shapes = []
    original = retrieval_module._score_blocks

    def recording(query_block, candidates, candidate_chunk, buffer, starts=None):
        for c_start, scores in original(query_block, candidates, candidate_chunk, buffer, starts):
            block_shapes.append(tuple(scores.shape))
            yield c_start, scores

    monkeypatch.setattr(retrieval_module, "_score_blocks", recording)
    return block_shapes


def test_memory_is_bounded_by_the_block_shape(monkeypatch):
    """No similarity block larger than query_chunk x key_chunk is ever built (no N x N matrix)."""
    block_shapes = _record_block_shapes(monkeypatch)
    num_rows = 5000
    top_k_neighbours(torch.randn(num_rows, 8), 3, query_chunk_size=256, key_chunk_size=1024)
    assert max(q * c for q, c in block_shapes) <= 256 * 1024
    # Every (query, key) pair is compared exactly once.
    assert sum(q * c for q, c in block_shapes) == num_rows * num_rows


def test_search_over_120k_rows_stays_in_blocks_and_is_exact(monkeypatch):
    block_shapes = _record_block_shapes(monkeypatch)
    # 16 dimensions keep neighbour similarities apart, so float rounding cannot reorder them.
    embeddings = torch.randn(120_000, 16, generator=torch.Generator().manual_seed(4))
    queries = torch.arange(0, 120_000, 1500)
    found = top_k_neighbours(embeddings, 3, query_rows=queries, query_chunk_size=32, key_chunk_size=8192)
    assert max(q * c for q, c in block_shapes) <= 32 * 8192
    normalised = torch.nn.functional.normalize(embeddings, dim=-1)
    similarities = normalised[queries] @ normalised.T
    similarities[torch.arange(len(queries)), queries] = float("-inf")
    assert torch.equal(found.indices, similarities.topk(3, dim=1).indices)


def test_self_and_exact_duplicates_are_excluded():
    base = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    embeddings = torch.cat([base, base[:1] * 2.0])  # row 6 duplicates row 0 (same direction)
    found = top_k_neighbours(embeddings, 3, query_chunk_size=2, key_chunk_size=3)
    for row, neighbours in enumerate(found.indices.tolist()):
        assert row not in neighbours
    assert 6 not in found.indices[0].tolist() and 0 not in found.indices[6].tolist()


def test_self_is_excluded_even_where_duplicates_are_kept():
    base = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    embeddings = torch.cat([base, base[:1] * 2.0])  # row 6 duplicates row 0
    # No cosine reaches 2, so nothing counts as a duplicate: only its index keeps each row (cosine 1
    # to itself) out of its own list.
    found = top_k_neighbours(embeddings, 6, query_chunk_size=2, key_chunk_size=3, duplicate_threshold=2.0)
    for row, neighbours in enumerate(found.indices.tolist()):
        assert row not in neighbours and sorted(neighbours) == sorted(set(range(7)) - {row})
    assert found.indices[0, 0] == 6 and found.indices[6, 0] == 0


def test_too_few_neighbours_are_padded_with_minus_one_after_one_search(monkeypatch):
    """A search that comes back with excluded rows at -inf has run out of eligible rows: another would find none."""
    searches = _record_searches(monkeypatch)
    found = top_k_neighbours(torch.randn(3, 4), 5)
    assert searches == [(3, 5)]
    assert (found.indices[:, :2] >= 0).all()
    assert (found.indices[:, 2:] == -1).all()
    assert torch.isinf(found.scores[:, 2:]).all()


@pytest.mark.parametrize("query_chunk_size, key_chunk_size", [(3, 4), (1, 1), (5, 100)])
def test_search_equals_a_dense_reference_with_self_and_duplicates_masked(query_chunk_size, key_chunk_size):
    """Chunks smaller than N, duplicate groups, and rows with fewer than k eligible neighbours."""
    generator = torch.Generator().manual_seed(5)
    base = torch.randn(8, 6, generator=generator)
    # Rows 8..10 point the same way as rows 0, 0, 1: rows 0, 8, 9 form one duplicate group.
    embeddings = torch.cat([base, 2.0 * base[:1], 0.5 * base[:1], 3.0 * base[1:2]])
    k = 10  # more than the eligible neighbours of every row
    normalised = torch.nn.functional.normalize(embeddings, dim=-1)
    similarities = normalised @ normalised.T
    duplicate = similarities >= miner_module.DEFAULT_DUPLICATE_THRESHOLD
    excluded = duplicate | torch.eye(11, dtype=torch.bool)
    # The dense reference: best first, each neighbour kept unless it duplicates one kept before it (one per group)
    expected_scores = torch.full((11, k), float("-inf"))
    for row in range(11):
        kept = []
        for c in similarities[row].argsort(descending=True, stable=True).tolist():
            if not excluded[row, c] and not duplicate[c, kept].any():
                kept.append(c)
        expected_scores[row, : len(kept)] = similarities[row, kept]
    query_rows = torch.tensor([9, 0, 4, 10])
    found = top_k_neighbours(
        embeddings, k, query_rows=query_rows, query_chunk_size=query_chunk_size, key_chunk_size=key_chunk_size
    )
    # Duplicates tie with each other, so the indices are checked through their scores.
    torch.testing.assert_close(found.scores, expected_scores[query_rows])
    valid = found.indices >= 0
    assert torch.equal(valid, found.scores > float("-inf"))
    rows = query_rows[:, None].expand_as(found.indices)[valid]
    torch.testing.assert_close(similarities[rows, found.indices[valid]], found.scores[valid])
    assert not excluded[rows, found.indices[valid]].any()
    for neighbours in (r[r >= 0] for r in found.indices):  # no two of a row's neighbours are duplicates
        assert not (duplicate[neighbours][:, neighbours] & ~torch.eye(len(neighbours), dtype=torch.bool)).any()
    # 11 rows in 9 directions: each query's own direction is excluded, each other group counts once: 7 neighbours
    assert valid.sum(dim=1).tolist() == [7, 7, 7, 7]


def test_a_neighbour_exactly_at_the_duplicate_threshold_of_a_better_one_counts_as_its_duplicate():
    """The threshold is inclusive between neighbours too. Entries of 0 and 0.5 make every cosine exact: rows 1 and 2
    are at 0.5 of each other and at 0.25 of the query, row 3 at 0 of every row."""
    rows = torch.tensor([
        [0.5, 0, 0, 0, 0.5, 0.5, 0.5, 0],
        [0.5, 0.5, 0.5, 0.5, 0, 0, 0, 0],
        [0.5, 0.5, 0.5, -0.5, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 1.0],
    ])
    query = torch.tensor([0])
    assert top_k_neighbours(rows, 2, query_rows=query, duplicate_threshold=0.5).indices.tolist() == [[1, 3]]
    assert top_k_neighbours(rows, 2, query_rows=query, duplicate_threshold=0.5001).indices.tolist() == [[1, 2]]


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="k must be"):
        top_k_neighbours(torch.randn(3, 4), 0)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        top_k_neighbours(torch.randn(3), 1)
    # Before the fix batch_size <= 0 encoded every image in one batch.
    with pytest.raises(ValueError, match=r"batch_size must be at least 1, got 0; key_chunk_size must be at least 1, got -1"):
        HardNegativeMiner(lambda images: torch.zeros(len(images), 2), batch_size=0, key_chunk_size=-1)
    # A float passed and failed once the builder had checked the images (batch_size, "'float' object cannot be
    # interpreted as an integer") or embedded them (the chunk sizes); a string failed here with a TypeError
    with pytest.raises(ValueError, match=r"batch_size must be an integer, got 2\.0 \(float\); query_chunk_size must be an "
                                         r"integer, got '8' \(str\); key_chunk_size must be an integer, got True \(bool\)$"):
        HardNegativeMiner(lambda images: torch.zeros(len(images), 2), batch_size=2.0, query_chunk_size="8", key_chunk_size=True)
    HardNegativeMiner(lambda images: torch.zeros(len(images), 2), batch_size=numpy.int64(2))  # numpy's integers are integers
    # A NaN threshold, recorded in the builder's manifest, never equals itself: the build refused its own work dir
    # ("duplicate_threshold: nan in the work dir, nan now"); a string one failed at the first search, a TypeError
    for threshold in (float("nan"), "0.99"):
        with pytest.raises(ValueError, match=rf"duplicate_threshold must be a finite number \(a cosine\), got {re.escape(repr(threshold))}$"):
            HardNegativeMiner(lambda images: torch.zeros(len(images), 2), duplicate_threshold=threshold)
    # None is no default of any: it passed, and the build failed once every image was embedded
    with pytest.raises(ValueError, match=r"batch_size must be an integer, got None \(NoneType\); query_chunk_size must be an "
                                         r"integer, got None \(NoneType\); key_chunk_size must be an integer, got None "
                                         r"\(NoneType\); duplicate_threshold must be a finite number \(a cosine\), got None$"):
        HardNegativeMiner(lambda images: torch.zeros(len(images), 2), batch_size=None, query_chunk_size=None,
                          key_chunk_size=None, duplicate_threshold=None)


def test_from_pretrained_refuses_bad_sizes_before_it_loads(monkeypatch):
    """The encoder's config was read and its weights loaded first, then the constructor refused the size."""
    monkeypatch.setattr("transformers.AutoConfig.from_pretrained", lambda *args, **kwargs: pytest.fail("the model was read"))
    with pytest.raises(ValueError, match=r"invalid HardNegativeMiner settings: query_chunk_size must be at least 1, got 0"):
        HardNegativeMiner.from_pretrained("facebook/dinov2-base", query_chunk_size=0)
    with pytest.raises(ValueError, match=r"invalid HardNegativeMiner settings: key_chunk_size must be an integer, got None"):
        HardNegativeMiner.from_pretrained("facebook/dinov2-base", key_chunk_size=None)


def test_semdedup_removes_near_duplicates_and_keeps_one_of_each_group():
    generator = torch.Generator().manual_seed(2)
    distinct = torch.nn.functional.normalize(torch.randn(40, 16, generator=generator), dim=-1)
    near_copies = torch.nn.functional.normalize(distinct[:5] + 0.01 * torch.randn(5, 16, generator=generator), dim=-1)
    embeddings = torch.cat([distinct, near_copies])  # rows 40..44 nearly copy rows 0..4
    result = semdedup(embeddings, num_clusters=4, epsilon=0.01)
    assert len(result.removed) == 5
    for removed, original in result.removed.items():
        assert {removed, original} in [{i, 40 + i} for i in range(5)]
    assert torch.equal(result.kept, torch.tensor(sorted(set(range(45)) - result.removed.keys())))
    assert semdedup(distinct, num_clusters=4, epsilon=0.01).removed == {}


@pytest.mark.parametrize("seed", range(4))
def test_semdedup_keeps_the_first_of_exact_copies(seed):
    """Exact copies tie in their similarity to the centroid; an unstable sort kept whichever came first, which
    differed between the CPU and a GPU (an H200 kept row 0 where the CPU kept row 1)."""
    embeddings = torch.randn(200, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    embeddings[1] = embeddings[2] = embeddings[0]
    embeddings[50] = embeddings[7]
    assert semdedup(embeddings, num_clusters=4, epsilon=0.01).removed == {1: 0, 2: 0, 50: 7}


def _at_angle(degrees: float, plane_axis: int) -> list[float]:
    """A unit vector `degrees` from e0 towards e1 or e2 (`plane_axis`), negative degrees the mirror image."""
    vector = [math.cos(math.radians(degrees)), 0.0, 0.0]
    vector[plane_axis] = math.sin(math.radians(degrees))
    return vector


def test_semdedup_keeps_the_least_prototypical_copy_and_maps_each_removed_row_to_its_duplicate():
    """One cluster, mirror-symmetric about e0, so its centroid is e0 and a row's angle to e0 says how prototypical
    it is. Rows 0 and 1 (20 and 25 degrees, 5 apart: cosine 0.996) are duplicates, as are their mirror images 3 and
    4; rows 2 and 5 (22 degrees, in another plane) duplicate nothing and sit between them in the centroid order."""
    rows = torch.tensor([_at_angle(20, 1), _at_angle(25, 1), _at_angle(22, 2),
                         _at_angle(-20, 1), _at_angle(-25, 1), _at_angle(-22, 2)])
    result = semdedup(rows, num_clusters=1, epsilon=0.01)
    # the copies at 25 degrees, farther from the centroid, stay; those at 20 name them
    assert result.removed == {0: 1, 3: 4}
    assert result.kept.tolist() == [1, 2, 4, 5]


def test_semdedup_compares_the_rows_of_a_cluster_of_two():
    """Rows 0 and 1 (one image twice, 1 degree apart) form a cluster of their own, away from rows 2 and 3 (20 degrees
    apart: not duplicates)."""
    rows = torch.tensor([_at_angle(0, 1), _at_angle(1, 1), _at_angle(80, 1), _at_angle(100, 1)])
    assert semdedup(rows, num_clusters=2, epsilon=0.01).removed.keys() in ({0}, {1})


def test_semdedup_duplicates_have_cosine_strictly_above_one_minus_epsilon():
    rows = torch.tensor([[1.0, 0, 0, 0], [0.5, 0.5, 0.5, 0.5]])  # cosine exactly 0.5
    assert semdedup(rows, num_clusters=1, epsilon=0.5).removed == {}
    assert len(semdedup(rows, num_clusters=1, epsilon=0.5001).removed) == 1


@pytest.mark.parametrize("epsilon", [-0.01, 0.0, 1e-9, 1.0])
def test_semdedup_refuses_epsilon_outside_its_range(epsilon):
    """At epsilon 1 every pair with a positive cosine would count as a duplicate; near 0 only a pair whose float32
    cosine rounds above 1 - epsilon, an arbitrary share of exact copies that changed with the block size (found by
    reviews)."""
    with pytest.raises(ValueError, match=re.escape(f"epsilon must be in [1e-05, 1), got {epsilon}")):
        semdedup(torch.eye(4), num_clusters=1, epsilon=epsilon)


@pytest.mark.parametrize("iterations", [1, 2, 5, 20])
def test_spherical_kmeans_groups_rows_by_direction(iterations):
    """Four noisy rows along each of three orthogonal directions. Seed 0 starts from one row of each group, so the
    first assignment finds the groups and every later one keeps them."""
    generator = torch.Generator().manual_seed(0)
    rows = torch.eye(3).repeat_interleave(4, dim=0) + 0.05 * torch.randn(12, 3, generator=generator)
    assignment = miner_module.spherical_kmeans(rows, 3, seed=0, iterations=iterations)
    assert all(len(set(assignment[group : group + 4].tolist())) == 1 for group in (0, 4, 8))
    assert len(set(assignment.tolist())) == 3


@pytest.mark.parametrize("seed", range(5))
def test_spherical_kmeans_recovers_a_cluster_that_goes_empty(seed):
    """Two groups of copies are split whatever two rows k-means starts from. From two copies of one image (seeds 0, 1,
    2 and 4) the second centroid gets no row, as ties go to the first; kept where it was, it takes its copies back once
    the first centroid moves towards the other group. Collapsed to the zero vector it stayed empty, and one cluster
    held everything."""
    rows = torch.tensor([_at_angle(0, 1)] * 5 + [_at_angle(60, 1)] * 5)
    assignment = miner_module.spherical_kmeans(rows, 2, seed=seed).tolist()
    assert len(set(assignment[:5])) == len(set(assignment[5:])) == 1 and assignment[0] != assignment[5]


def test_miner_embeds_with_a_transformers_image_encoder(tmp_path):
    _save_tiny_encoder(tmp_path)
    miner = HardNegativeMiner.from_pretrained(str(tmp_path), batch_size=3)
    images = [Image.new("RGB", (20, 20), colour) for colour in ["red", "blue", "green", "red", "white"]]
    embeddings = miner.embed(images)
    assert embeddings.shape == (5, 16)
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(5))
    # Identical images embed identically, so each is excluded from the other's negatives.
    neighbours = miner.mine(embeddings, k=2)
    assert 3 not in neighbours.indices[0].tolist() and 0 not in neighbours.indices[3].tolist()


def test_miner_embeds_with_the_pooled_output_where_the_encoder_has_one(tmp_path):
    """DINOv2's pooled output is its last hidden state's first token, so only an encoder whose pooler transforms that
    token (ViT: dense and tanh) tells the pooled output from the first-token fallback."""
    from transformers import AutoImageProcessor, ViTModel

    _save_tiny_encoder(tmp_path, "vit")
    images = [Image.new("RGB", (20, 20), colour) for colour in ["red", "blue"]]
    embeddings = HardNegativeMiner.from_pretrained(str(tmp_path)).embed(images)
    inputs = AutoImageProcessor.from_pretrained(tmp_path)(images, return_tensors="pt")
    with torch.no_grad():
        output = ViTModel.from_pretrained(tmp_path)(**inputs)
    torch.testing.assert_close(embeddings, torch.nn.functional.normalize(output.pooler_output, dim=-1))
    assert not torch.allclose(embeddings, torch.nn.functional.normalize(output.last_hidden_state[:, 0], dim=-1))


def test_from_pretrained_refuses_an_mllm_before_loading_it(tmp_path, monkeypatch):
    """An MLLM folder loaded, and its first batch of images failed in `embed` ("'tuple' object has no attribute
    'float'": its get_image_features gives per-image token features)."""
    import transformers

    from dataset_builders.testing import tiny_image_text_model

    tiny_image_text_model("qwen2_vl").config.save_pretrained(tmp_path)
    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", lambda *args, **kwargs: pytest.fail("the MLLM loaded"))
    with pytest.raises(ValueError, match=r"is a 'qwen2_vl' MLLM, not an image encoder"):
        HardNegativeMiner.from_pretrained(str(tmp_path))


def test_miner_embeds_with_a_maple_model():
    from modeling_maple.testing import build_tiny

    model, processor = build_tiny("dual_encoder", seed=0)
    miner = HardNegativeMiner.from_maple(model, processor, batch_size=2)
    images = [Image.new("RGB", (16, 16), colour) for colour in ["red", "blue", "green"]]
    embeddings = miner.embed(images)
    torch.testing.assert_close(embeddings, model.encode(processor, images=images))
    assert miner.mine(embeddings, k=1).indices.shape == (3, 1)
    # an in-memory model retrained in place keeps its name: its weights tell the two apart in the manifest
    before = miner.settings
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    assert miner.settings["encoder"]["weights"] != before["encoder"]["weights"] and miner.name == "maple:in-memory"


@pytest.mark.parametrize("backbone", ["mllm", "dual_encoder"])
def test_from_pretrained_loads_a_saved_maple_embedder_as_from_maple_does(tmp_path, backbone):
    """A saved MAPLE embedder passed `encoder_config_problem` and loaded as a plain encoder, so an MLLM one failed at its
    first batch ("A qwen2_vl embedder needs `image_input_ids` ...": its images need its MapleProcessor; found by a bug
    hunt of `maple build-preferences --miner`). It embeds as `MapleModel.encode` does, with either backbone."""
    from modeling_maple.testing import build_tiny

    model, processor = build_tiny(backbone, seed=0)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    miner = HardNegativeMiner.from_pretrained(str(tmp_path), batch_size=2, search_device="cpu")
    images = [Image.new("RGB", (16, 16), colour) for colour in ["red", "blue", "green"]]
    torch.testing.assert_close(miner.embed(images), model.encode(processor, images=images))
    assert miner.name == str(tmp_path)


def test_a_batch_the_image_processor_makes_of_several_sizes_is_refused_naming_its_images(tmp_path):
    """DINOv2 takes any size, and CLIP's image processor without its center crop keeps each image's aspect ratio: a
    batch of several failed in numpy's words ("inhomogeneous shape"), naming neither image nor setting. Images are
    named by their position among all the miner embeds, with a transformers encoder and with a MAPLE one alike."""
    from transformers import CLIPImageProcessorPil, Dinov2Config

    from modeling_maple import MapleModel, MapleProcessor
    from modeling_maple.testing import tiny_dual_encoder_config, tiny_tokenizer

    _save_tiny_encoder(tmp_path)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16},
                                            do_center_crop=False)
    image_processor.save_pretrained(tmp_path)
    wide, square = Image.new("RGB", (32, 16), "red"), Image.new("RGB", (16, 16), "blue")
    message = (r"^images\[2\] \(16x32 px\) became 16x32 but images\[3\] \(16x16 px\) became 16x16 \(height x width\): the "
               r"image processor \(CLIPImageProcessorPil\) gives each image a size that follows its own "
               r"\(do_center_crop=False\), but the vision tower takes a batch at one size\. Set do_center_crop=True")
    miner = HardNegativeMiner.from_pretrained(str(tmp_path), batch_size=2, search_device="cpu")
    assert miner.embed([wide, wide.copy()]).shape == (2, 16), "images of one size still make a batch"
    with pytest.raises(MinerInputError, match=message):
        miner.embed([wide, wide, wide, square])
    dinov2 = Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, image_size=16, patch_size=4)
    model = MapleModel(tiny_dual_encoder_config(vision_config=dinov2)).eval()
    processor = MapleProcessor(image_processor=image_processor, tokenizer=tiny_tokenizer(), backbone="dual_encoder")
    # a from_maple miner's image processor is its MapleProcessor's, set where that one is
    with pytest.raises(MinerInputError, match=message + r".* in image_processor_kwargs \(load_maple, from_backbone\) or on "
                                                        r"processor\.image_processor, or give images of one size\.$"):
        HardNegativeMiner.from_maple(model, processor, batch_size=2, search_device="cpu").embed([wide, wide, wide, square])


def test_a_miners_batch_of_several_sizes_names_the_image_processor_kwargs_of_from_pretrained(tmp_path):
    """Its message told the user to set the image processor in `load_maple`, `from_backbone` or on
    `processor.image_processor`, none of which reaches a miner (found by a review): `from_pretrained` takes
    `image_processor_kwargs`, and the message names them. A setting the image processor does not have is refused."""
    from transformers import CLIPImageProcessorPil

    _save_tiny_encoder(tmp_path)
    CLIPImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16},
                          do_center_crop=False).save_pretrained(tmp_path)
    images = [Image.new("RGB", (32, 16), "red"), Image.new("RGB", (16, 16), "blue")]
    miner = HardNegativeMiner.from_pretrained(str(tmp_path), batch_size=2, search_device="cpu")
    with pytest.raises(ValueError, match=r"Set do_center_crop=True .* in image_processor_kwargs "
                                         r"\(HardNegativeMiner\.from_pretrained\), or give images of one size\.$"):
        miner.embed(images)
    with pytest.raises(MinerInputError, match=r"^row 10 \(16x32 px\) became 16x32 but row 11 \(16x16 px\)"):
        miner.embed(images, describe=lambda position: f"row {position + 10}")  # as the builder names source rows
    cropping = HardNegativeMiner.from_pretrained(str(tmp_path), batch_size=2, search_device="cpu",
                                                 image_processor_kwargs={"do_center_crop": True})
    assert cropping.embed(images).shape == (2, 16)
    assert cropping.settings["encoder"]["image_processor"] != miner.settings["encoder"]["image_processor"]
    with pytest.raises(ValueError, match=r"max_pixels is not a setting of its image processor \(CLIPImageProcessorPil\)"):
        HardNegativeMiner.from_pretrained(str(tmp_path), image_processor_kwargs={"max_pixels": 256})


def test_a_saved_maple_miners_batch_of_several_sizes_names_the_callers_images_as_a_transformers_one_does(tmp_path):
    """A saved dual-encoder MAPLE embedder as a miner raised its processor's ValueError, naming the images `images[i]`
    whatever `describe` said and advising settings that do not reach a miner: the builder could name no source row, and
    `maple build-preferences` printed a traceback (found by a review). Both encoders now give a `MinerInputError` naming
    the images by `describe`, and the advice names `from_pretrained`'s image_processor_kwargs."""
    from transformers import CLIPImageProcessorPil, Dinov2Config

    from modeling_maple import MapleModel, MapleProcessor
    from modeling_maple.testing import tiny_dual_encoder_config, tiny_tokenizer

    dinov2 = Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, image_size=16, patch_size=4)
    MapleModel(tiny_dual_encoder_config(vision_config=dinov2)).save_pretrained(tmp_path)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16},
                                            do_center_crop=False)
    MapleProcessor(image_processor=image_processor, tokenizer=tiny_tokenizer(), backbone="dual_encoder").save_pretrained(tmp_path)
    miner = HardNegativeMiner.from_pretrained(str(tmp_path), batch_size=2, search_device="cpu")
    images = [Image.new("RGB", (16, 16), "red"), Image.new("RGB", (16, 16), "blue"), Image.new("RGB", (32, 16), "red")]
    with pytest.raises(MinerInputError, match=r"^row 12 \(16x32 px\) became 16x32 but row 13 \(16x16 px\) became 16x16 "
                                              r"\(height x width\): .* Set do_center_crop=True .* in image_processor_kwargs "
                                              r"\(HardNegativeMiner\.from_pretrained\), or give images of one size\.$"):
        miner.embed([*images, images[1]], describe=lambda position: f"row {position + 10}")
    cropping = HardNegativeMiner.from_pretrained(str(tmp_path), batch_size=2, search_device="cpu",
                                                 image_processor_kwargs={"do_center_crop": True})
    assert cropping.embed(images).shape == (3, 16)


def test_a_maple_miners_processor_of_the_checkpoints_own_code_names_the_callers_images(tmp_path):
    """A processor loaded with trust_remote_code before this package is imported is of the checkpoint's own
    processing_maple.py, whose MixedImageSizesError is another class than the package's: `embed` let it through,
    `describe` unused, and `maple build-preferences` printed a traceback (found by a review). It is a MinerInputError
    naming the caller's images, as with the package's processor."""
    from transformers import CLIPImageProcessorPil, Dinov2Config
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    from modeling_maple import MapleModel, MapleProcessor
    from modeling_maple.testing import tiny_dual_encoder_config, tiny_tokenizer

    dinov2 = Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, image_size=16, patch_size=4)
    model = MapleModel(tiny_dual_encoder_config(vision_config=dinov2)).eval()
    model.save_pretrained(tmp_path)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16},
                                            do_center_crop=False)
    MapleProcessor(image_processor=image_processor, tokenizer=tiny_tokenizer(), backbone="dual_encoder").save_pretrained(tmp_path)
    # the class AutoProcessor.from_pretrained(tmp_path, trust_remote_code=True) loads where the package is not imported
    remote_processor_class = get_class_from_dynamic_module("processing_maple.MapleProcessor", str(tmp_path))
    assert remote_processor_class.__module__.startswith("transformers_modules.")
    miner = HardNegativeMiner.from_maple(model, remote_processor_class.from_pretrained(tmp_path), batch_size=2,
                                         search_device="cpu")
    images = [Image.new("RGB", (16, 16), "red"), Image.new("RGB", (32, 16), "blue")]
    with pytest.raises(MinerInputError, match=r"^row 10 \(16x16 px\) became 16x16 but row 11 \(16x32 px\) became 16x32 "
                                              r"\(height x width\): .* in image_processor_kwargs \(load_maple, "
                                              r"from_backbone\) or on processor\.image_processor, or give images of one "
                                              r"size\.$"):
        miner.embed(images, describe=lambda position: f"row {position + 10}")


def test_a_miner_input_error_round_trips_through_pickle(tmp_path):
    """`pickle.loads` called the class with the message alone, a TypeError (missing arguments), so multiprocessing
    could not hand it back (found by a review). It comes back with its message, `problem` and `fixes`, though
    `describe`, which worded them, is a closure that does not pickle."""
    import pickle

    from transformers import CLIPImageProcessorPil

    _save_tiny_encoder(tmp_path)
    CLIPImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16},
                          do_center_crop=False).save_pretrained(tmp_path)
    miner = HardNegativeMiner.from_pretrained(str(tmp_path), batch_size=2, search_device="cpu")
    with pytest.raises(MinerInputError) as error:
        miner.embed([Image.new("RGB", (32, 16)), Image.new("RGB", (16, 16))], describe=lambda position: f"row {position + 10}")
    restored = pickle.loads(pickle.dumps(error.value))
    assert type(restored) is MinerInputError and str(restored) == str(error.value)
    assert (restored.problem, restored.fixes) == (error.value.problem, error.value.fixes)
    assert restored.problem.startswith("row 10 (16x32 px) became 16x32 but row 11 (16x16 px)")


def test_query_subset_matches_the_full_search():
    embeddings = torch.randn(97, 8, generator=torch.Generator().manual_seed(3))
    full = top_k_neighbours(embeddings, 4, query_chunk_size=10, key_chunk_size=17)
    rows = torch.tensor([90, 3, 41, 42])
    subset = top_k_neighbours(embeddings, 4, query_rows=rows, query_chunk_size=3, key_chunk_size=17)
    assert torch.equal(subset.indices, full.indices[rows])
    torch.testing.assert_close(subset.scores, full.scores[rows])


def test_from_pretrained_searches_on_the_encoder_device(tmp_path, monkeypatch):
    """Each rank of a multi-GPU build loads its miner with device=cuda:LOCAL_RANK; its neighbour
    search and SemDeDup must go there too, not to the default cuda (cuda:0) on every rank."""
    _save_tiny_encoder(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU machine
    assert HardNegativeMiner.from_pretrained(str(tmp_path), device="cpu").search_device == torch.device("cpu")
    explicit = HardNegativeMiner.from_pretrained(str(tmp_path), device="cpu", search_device="meta")
    assert explicit.search_device == torch.device("meta")
    assert HardNegativeMiner.from_pretrained(str(tmp_path)).search_device == torch.device("cuda"), "no device: the GPU"


def test_from_pretrained_takes_the_loading_keywords_the_judge_takes(tmp_path):
    _save_tiny_encoder(tmp_path)
    miner = HardNegativeMiner.from_pretrained(str(tmp_path), dtype=torch.bfloat16, device_map="cpu", model_kwargs={"attn_implementation": "eager"})
    assert miner.encode_images.model.dtype == torch.bfloat16 and miner.encode_images.model.config._attn_implementation == "eager"
    with pytest.raises(TypeError, match=r"HardNegativeMiner.from_pretrained got an unknown keyword 'attn_implementation'.*model_kwargs="):
        HardNegativeMiner.from_pretrained(str(tmp_path), attn_implementation="eager")
    with pytest.raises(TypeError, match=r"'revision' would reach the model's weights only, not its .*image processor"):
        HardNegativeMiner.from_pretrained(str(tmp_path), model_kwargs={"revision": "v2"})


def test_embed_reads_paths_and_names_a_corrupt_image(tmp_path):
    import io

    import numpy

    seen = []

    def encode_images(images):
        seen.extend(image.mode for image in images)
        return torch.stack([torch.from_numpy(numpy.asarray(image.resize((2, 2)), dtype=numpy.float32)).flatten() for image in images])

    miner = HardNegativeMiner(encode_images, batch_size=2, search_device="cpu")
    Image.new("L", (8, 8), 128).save(tmp_path / "grey.png")
    images = [Image.new("RGBA", (8, 8), "red"), tmp_path / "grey.png", Image.new("RGB", (8, 8), "blue")]
    assert miner.embed(images).shape == (3, 12)
    assert seen == ["RGB"] * 3, "every encoder gets RGB images"
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "green").save(buffer, format="PNG")
    truncated = Image.open(io.BytesIO(buffer.getvalue()[:60]))
    # The position counts over the whole stream, not within the batch.
    with pytest.raises(ValueError, match=r"images\[3\]: corrupt image data"):
        miner.embed(images + [truncated])


def test_an_encoder_answer_of_another_shape_is_refused_naming_the_images():
    """An encoder that returned fewer rows than images (or one vector per batch) paired the embeddings with the wrong
    source rows, silently; one whose embedding size changed from batch to batch was torch.cat's bare RuntimeError
    once every image was encoded (found by a review)."""
    def one_row_short(images):
        return torch.randn(len(images) - 1, 4)

    images = [Image.new("RGB", (8, 8), colour) for colour in ("red", "green", "blue")]
    with pytest.raises(MinerOutputError, match=r"^the image encoder of miner 'short' returned \(1, 4\) for images 0-1; "
                                               r"expected a \(2, D\) tensor, one row per image$"):
        HardNegativeMiner(one_row_short, batch_size=2, name="short", search_device="cpu").embed(images)
    with pytest.raises(MinerOutputError, match=r"returned \(4,\) for image 0; expected a \(1, D\) tensor"):
        HardNegativeMiner(lambda batch: torch.randn(4), batch_size=1, name="flat", search_device="cpu").embed(images)
    with pytest.raises(MinerOutputError, match=r"returned list for images 0-1"):
        HardNegativeMiner(lambda batch: [[0.0] * 4] * len(batch), batch_size=2, search_device="cpu").embed(images)
    with pytest.raises(MinerOutputError, match=r"^the image encoder of miner 'growing' returned \(1, 5\) for image 2; "
                                               r"expected a \(1, 6\) tensor, as for the images before, one row per image$"):
        HardNegativeMiner(lambda batch: torch.randn(len(batch), 4 + len(batch)), batch_size=2, name="growing",
                          search_device="cpu").embed(images)
    # embeddings of no size were taken, and one size of 0 read as none given ("(2, D)" after a (2, 0) batch)
    with pytest.raises(MinerOutputError, match=r"returned \(2, 0\) for images 0-1; expected a \(2, D\) tensor"):
        HardNegativeMiner(lambda batch: torch.randn(len(batch), 0), batch_size=2, search_device="cpu").embed(images)


def test_non_finite_embeddings_are_refused_naming_their_rows():
    """Before the fix a NaN row became every row's top neighbour (top-k ranks NaN highest)."""
    embeddings = torch.randn(6, 4)
    embeddings[3] = float("nan")
    embeddings[5, 0] = float("inf")
    with pytest.raises(ValueError, match=r"2 of the 6 images are not finite \(NaN or inf\): row 3, row 5;"):
        top_k_neighbours(embeddings, 2)
    with pytest.raises(ValueError, match=r"row 3, row 5"):
        semdedup(embeddings, num_clusters=2, epsilon=0.01)


def test_semdedup_refuses_clusters_too_many_to_find_duplicates():
    """Before the fix num_clusters >= N was capped at N: every row alone in its cluster, nothing
    removed, silently (the paper's 50,000 clusters on a corpus under 50k images)."""
    # A seeded draw: from the global generator, whose state depends on the tests run before on the worker, two rows
    # came within the threshold of each other for 1.6% of the states
    embeddings = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
    embeddings[1] = embeddings[0]
    # too few rows for the paper's rows / 14 ("use about 1 clusters", it said): only turning it off is advised
    with pytest.raises(ValueError, match=r"10 clusters on 10 rows .*off .*--semdedup-clusters 0\); 10 rows are too few to cluster"):
        semdedup(embeddings, num_clusters=10, epsilon=0.01)
    with pytest.raises(ValueError, match=r"30 clusters on 56 rows .* use about 4 clusters .*--semdedup-clusters 0"):
        miner_module.check_semdedup_clusters(30, 56)
    with pytest.raises(ValueError, match="6 clusters on 10 rows"):
        semdedup(embeddings, num_clusters=6, epsilon=0.01)
    assert semdedup(embeddings, num_clusters=5, epsilon=0.01).removed.keys() <= {0, 1}


@pytest.mark.parametrize("num_clusters", [0, -3])
def test_semdedup_refuses_fewer_than_one_cluster(num_clusters):
    """Before the fix 0 clusters failed inside k-means with an IndexError (argmax over no centroids), and -3 clustered
    10 rows into 7 clusters (the first centroids were a random permutation sliced [:-3]), silently."""
    embeddings = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=rf"at least 1 cluster, got num_clusters={num_clusters}"):
        semdedup(embeddings, num_clusters=num_clusters, epsilon=0.01)


def test_settings_hold_the_duplicate_threshold_and_the_encoders_dtype_and_image_processor(tmp_path):
    _save_tiny_encoder(tmp_path)
    settings = HardNegativeMiner.from_pretrained(str(tmp_path), duplicate_threshold=0.9).settings
    assert settings["duplicate_threshold"] == 0.9
    assert settings["encoder"]["dtype"] == "torch.float32" and len(settings["encoder"]["weights"]) == 16
    assert settings["encoder"]["image_processor"]["crop_size"] == {"height": 16, "width": 16}
    assert HardNegativeMiner.from_pretrained(str(tmp_path), dtype=torch.bfloat16).settings["encoder"]["dtype"] == "torch.bfloat16"
    # A plain callable encoder has no settings of its own.
    assert HardNegativeMiner(lambda images: torch.zeros(len(images), 2)).settings["encoder"] is None


def test_duplicate_neighbours_count_once_and_ties_go_to_the_lower_row_whatever_the_blocks():
    # Rows 1 and 2 are one image twice, as are rows 3 and 4: they filled two of row 0's places each
    copies = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.6, 0.8], [0.8, 0.6], [0.8, 0.6]])
    for query_chunk_size, key_chunk_size in ((1, 1), (5, 5), (2, 3)):
        found = top_k_neighbours(copies, 4, query_chunk_size=query_chunk_size, key_chunk_size=key_chunk_size)
        assert found.indices[0].tolist() == [3, 1, -1, -1]
    # Rows 1 and 3 tie for row 0's second place: the lower row, with blocks of any shape (it was 1 or 3)
    tied = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6], [0.6, -0.8]])
    for query_chunk_size, key_chunk_size in ((1, 1), (4, 4), (2, 3), (1, 2)):
        found = top_k_neighbours(tied, 2, query_chunk_size=query_chunk_size, key_chunk_size=key_chunk_size)
        assert found.indices[0].tolist() == [2, 1]


def test_rows_whose_duplicates_exhaust_the_corpus_stop_after_one_search(monkeypatch):
    """Copies of one image are each other's duplicates, so every row is excluded for every query: the search
    doubled its depth up to N, comparing depth² neighbour pairs each time (500 copies took seconds, 2,000 minutes)."""
    searches = _record_searches(monkeypatch)
    neighbours = top_k_neighbours(torch.randn(1, 16).repeat(64, 1), k=3)
    assert searches == [(64, 3)]
    assert bool((neighbours.indices == -1).all()) and bool((neighbours.scores == float("-inf")).all())


def test_semdedup_in_column_blocks_removes_what_one_block_removes():
    """One (cluster size)^2 similarity matrix per cluster: 16,000 copies of one image took 2.2 GB, 100,000 would take
    about 80 GB. Blocks of columns give the same result in bounded memory."""
    torch.manual_seed(0)
    distinct = torch.randn(40, 16)
    rows = torch.cat([distinct, distinct[:10].repeat(3, 1), distinct[10:20] + 1e-4 * torch.randn(10, 16)])
    whole = semdedup(rows, num_clusters=4, epsilon=0.01)
    for max_elements in (1, 7, 200):  # one column per block, ragged blocks, a few columns
        blocked = semdedup(rows, num_clusters=4, epsilon=0.01, max_elements=max_elements)
        assert blocked.removed == whole.removed and torch.equal(blocked.kept, whole.kept)
    assert len(whole.removed) >= 30  # every exact copy (copies share a cluster), and near-copies that share one


def test_a_group_of_copies_among_a_rows_nearest_costs_one_more_search_not_one_as_deep_as_the_group(monkeypatch):
    """Copies of one image that are a query's nearest neighbours (not its duplicates) filled the search with one
    negative: the depth doubled up to the group's size, comparing depth² neighbour pairs each time. Searches now
    exclude the duplicates of the neighbours found, at the same depth."""
    searches = _record_searches(monkeypatch)
    generator = torch.Generator().manual_seed(3)
    query, others = torch.randn(1, 16, generator=generator), torch.randn(5, 16, generator=generator)
    copies = (query + 0.3 * torch.randn(1, 16, generator=generator)).repeat(300, 1)  # the query's nearest, 300 times
    embeddings = torch.cat([query, copies, others])
    found = top_k_neighbours(embeddings, 3, query_rows=torch.tensor([0]), key_chunk_size=64)
    assert searches == [(1, 3), (1, 3)]  # was 3, 6, ..., 384: 8 searches
    normalised = torch.nn.functional.normalize(embeddings, dim=-1)
    expected = (normalised[0] @ normalised[301:].T).topk(2).indices + 301  # one copy, then the two best others
    assert found.indices[0, 0] == 1 and found.indices[0, 1:].tolist() == expected.tolist()


def test_neighbours_are_distinct_rows_even_where_a_row_misses_its_own_duplicate_threshold():
    """At a threshold of 1.0 a normalised row's cosine to itself can round to 0.99999994: a deeper search excluded the
    neighbours found by similarity only, and found one again (a review's repro)."""
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        base = torch.randn(8, 32, generator=generator)
        copy = base[1] * (1 + 1e-7) + 1e-8 * torch.randn(32, generator=generator)
        found = top_k_neighbours(torch.cat([base, copy[None]]), 4, duplicate_threshold=1.0)
        for neighbours in found.indices.tolist():
            real = [row for row in neighbours if row >= 0]
            assert len(set(real)) == len(real)


def test_a_deeper_search_continues_the_best_first_order_of_the_first():
    """Each neighbour is kept unless it duplicates a kept better one. Dropping also the duplicates of dropped ones, as
    a first search did, let a deeper search re-admit such a row after worse ones (a review's repro: a chain F ~ E ~ X
    at threshold 0.9 with F and X apart)."""
    def unit(**parts):
        vector = torch.zeros(16)
        for dimension, value in parts.items():
            vector[int(dimension[1:])] = value
        return vector / vector.norm()

    def in_chain(a, degrees):  # cosine a to the query, the rest at an angle in the e2-e3 plane
        rest, angle = math.sqrt(1 - a * a), math.radians(degrees)
        return unit(e0=a, e2=rest * math.cos(angle), e3=rest * math.sin(angle))

    query = unit(e0=1.0)
    top = unit(e0=0.6, e1=0.8)
    copies_of_top = [unit(e0=a, e1=math.sqrt(1 - a * a), **{f"e{dimension}": 0.02}) for a, dimension in
                     ((0.59, 10), (0.585, 11), (0.58, 12))]
    chain = [in_chain(0.52, 0), in_chain(0.51, 25), in_chain(0.50, 50)]  # F ~ E ~ X, F and X apart
    far = unit(e0=0.3, e6=math.sqrt(1 - 0.09))
    fillers = [unit(e0=0.1, **{f"e{7 + i}": 1.0}) for i in range(6)]
    rows = torch.stack([query, top, *copies_of_top, *chain, far, *fillers])
    found = top_k_neighbours(rows, 4, query_rows=torch.tensor([0]), duplicate_threshold=0.9)
    # best first: the top row (its copies dropped), F, then X (it duplicates only E, which F's duplicate drops), then far
    assert found.indices[0].tolist() == [1, 5, 7, 8]
    assert found.scores[0].tolist() == sorted(found.scores[0].tolist(), reverse=True)


def test_semdedup_at_its_smallest_epsilon_finds_every_exact_copy_whatever_the_block_size():
    torch.manual_seed(0)
    base = torch.randn(200, 384)
    copies = torch.cat([base, base])
    for max_elements in (7, 1 << 26):
        assert len(semdedup(copies, num_clusters=4, epsilon=1e-5, max_elements=max_elements).removed) == 200


def test_miner_embeds_with_an_encoder_whose_config_returns_tuples(tmp_path):
    """A checkpoint saved with `return_dict=False` gives its forward's outputs as a tuple: the miner asks for them by
    name ("'tuple' object has no attribute 'last_hidden_state'")."""
    from transformers import AutoConfig

    _save_tiny_encoder(tmp_path, "vit")
    images = [Image.new("RGB", (20, 20), colour) for colour in ["red", "blue"]]
    expected = HardNegativeMiner.from_pretrained(str(tmp_path)).embed(images)
    config = AutoConfig.from_pretrained(tmp_path)
    config.return_dict = False
    config.save_pretrained(tmp_path)
    torch.testing.assert_close(HardNegativeMiner.from_pretrained(str(tmp_path)).embed(images), expected)
