"""The scene-graph judge and captioner that stand in for MLLMs in the demo."""

import dataclasses
import io
import math
import random

import pytest
import torch
from PIL import Image

from maple.demo.scene_judge import ClaimCheck, SceneFeatureEncoder, SceneGraphCaptioner, SceneGraphJudge, check_caption
from maple.demo.world import (
    ObjectGroup,
    Scene,
    SceneRegistry,
    WorldConfig,
    build_world,
    describe,
    image_fingerprint,
    parse_caption,
)


@pytest.fixture(scope="module")
def world():
    return build_world(WorldConfig(seed=1, n_train_families=30, n_retrieval=20, n_quadruples_per_category=15))


RED_CIRCLE = ObjectGroup("circle", "red", "small")
BLUE_SQUARE = ObjectGroup("square", "blue", "large")
SCENE = Scene(groups=(RED_CIRCLE, BLUE_SQUARE), layout="horizontal")


@pytest.mark.parametrize(
    "caption, false_claims, omissions",
    [
        ("a small red circle to the left of a large blue square", 0, 0),
        ("a large blue square to the right of a small red circle", 0, 0),
        ("a large blue square to the left of a small red circle", 1, 0),  # position swap
        ("a small red circle above a large blue square", 1, 0),  # wrong relation
        ("a small green circle to the left of a large blue square", 1, 0),  # replace colour
        ("a small blue circle to the left of a large red square", 2, 0),  # colour swap: binding
        ("two small red circles to the left of a large blue square", 1, 0),  # count
        ("a small red circle", 0, 1),  # true but leaves the square out
        ("a small yellow diamond", 2, 1),
    ],
)
def test_claims_are_counted_under_the_most_charitable_reading(caption, false_claims, omissions):
    check = check_caption(parse_caption(caption), SCENE)
    assert (check.false_claims, check.omissions) == (false_claims, omissions)


def test_missing_object_and_its_relation_are_false():
    single = Scene(groups=(RED_CIRCLE,), layout="single")
    check = check_caption(SCENE, single)
    assert (check.false_claims, check.omissions) == (2, 0)
    # whichever of the two mentioned objects is the drawn one
    mentioned_second = Scene(groups=(BLUE_SQUARE, RED_CIRCLE), layout="horizontal")
    assert check_caption(mentioned_second, single) == check


def test_every_mentioned_object_is_read_as_a_drawn_one_while_one_is_left():
    """Charity picks which drawn object a mentioned one is, never that a drawn object is not there: a caption
    wrong in every attribute makes one false claim per wrong attribute, not one for a missing object."""
    single = Scene(groups=(RED_CIRCLE,), layout="single")
    assert check_caption(parse_caption("two large yellow diamonds"), single) == ClaimCheck(false_claims=4, omissions=0)
    # best reading: the diamonds are the blue square and the triangles the red circle (3 + 3), so the relation fails
    caption = "two large yellow diamonds above two small green triangles"
    assert check_caption(parse_caption(caption), SCENE) == ClaimCheck(false_claims=7, omissions=0)


def test_alphas_are_graded_and_the_true_caption_ranks_first(world):
    judge = SceneGraphJudge(world.registry)
    for quad in world.quadruples:
        alphas = judge.score([quad.first.image, quad.second.image], [[quad.first.caption, quad.second.caption]] * 2)
        assert alphas[0][0] > alphas[0][1] and alphas[1][1] > alphas[1][0]
        assert all(((0 < a) & (a < 1)).all() for a in alphas)



def test_each_false_claim_lowers_alpha(world):
    judge = SceneGraphJudge(world.registry)
    example = next(e for e in world.train if e.scene.layout == "horizontal")
    first, second = example.scene.groups
    texts = [
        example.caption,
        describe(Scene(groups=(_recoloured(first, second), second), layout="horizontal"), 0),  # 1 false claim
        describe(Scene(groups=(_recoloured(first, second), second), layout="vertical"), 0),  # 2 false claims
    ]
    (alphas,) = judge.score([example.image], [texts])
    assert alphas[0] > 0.85 > 0.5 > alphas[1] > 0.1 > alphas[2]


def _recoloured(group: ObjectGroup, other: ObjectGroup) -> ObjectGroup:
    """`group` in a colour that neither it nor `other` has, so no reading makes it true."""
    colour = next(c for c in ("red", "green", "blue", "yellow") if c not in (group.colour, other.colour))
    return dataclasses.replace(group, colour=colour)


def test_score_images_matches_score(world):
    judge = SceneGraphJudge(world.registry, noise=0.5, seed=7)
    quad = world.quadruples[0]
    images = [quad.first.image, quad.second.image]
    (by_text,) = judge.score_images([quad.first.caption], [images])
    by_image = torch.stack([judge.score([image], [[quad.first.caption]])[0][0] for image in images])
    torch.testing.assert_close(by_text, by_image)


def test_noise_is_reproducible_and_perturbs(world):
    example = world.train[0]
    clean = SceneGraphJudge(world.registry).alpha(example.image, example.caption)
    noisy = [SceneGraphJudge(world.registry, noise=1.0, seed=s).alpha(example.image, example.caption) for s in (0, 0, 1)]
    assert noisy[0] == noisy[1] != noisy[2] and noisy[0] != clean


def test_scene_survives_a_png_round_trip(world):
    buffer = io.BytesIO()
    world.train[2].image.save(buffer, format="PNG")
    reloaded = Image.open(io.BytesIO(buffer.getvalue()))
    assert world.registry.scene_of(reloaded) == world.train[2].scene


def test_unknown_image_and_foreign_text(world):
    judge = SceneGraphJudge(world.registry)
    with pytest.raises(KeyError, match="not drawn by the demo world"):
        judge.alpha(Image.new("RGB", (48, 48)), "a small red circle")
    assert judge.alpha(world.train[0].image, "a cat on a mat") < 0.1


def test_captioner_writes_minimal_pairs_true_of_each_image(world):
    captioner = SceneGraphCaptioner(world.registry, n_samples=2)
    quads = world.quadruples[:10]
    captions = captioner.caption([q.first.image for q in quads], [q.second.image for q in quads])
    judge = SceneGraphJudge(world.registry)
    for quad, texts in zip(quads, captions):
        assert len(texts) == 4 and texts[0] != texts[2]
        for anchor_text, negative_text in (texts[0:2], texts[2:4]):
            assert parse_caption(anchor_text) == quad.first.scene and parse_caption(negative_text) == quad.second.scene
            assert judge.alpha(quad.first.image, anchor_text) > judge.alpha(quad.first.image, negative_text)


def test_bad_arguments_are_refused(world):
    for noise in (-1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="noise"):
            SceneGraphJudge(world.registry, noise=noise)
    # a huge (finite) noise saturates alpha instead of overflowing exp()
    alphas = [SceneGraphJudge(world.registry, noise=1e4, seed=seed).alpha(world.train[0].image, "a") for seed in range(8)]
    assert all(0.0 <= alpha <= 1.0 for alpha in alphas)
    with pytest.raises(ValueError, match="one list of texts per image"):
        SceneGraphJudge(world.registry).score([world.train[0].image], [])
    with pytest.raises(ValueError, match="n_samples"):
        SceneGraphCaptioner(world.registry, n_samples=0)


def test_captioner_can_leave_out_anchor_captions(world):
    captioner = SceneGraphCaptioner(world.registry, n_samples=2, caption_anchors=False)
    quad = world.quadruples[0]
    (texts,) = captioner.caption([quad.first.image], [quad.second.image])
    assert len(texts) == 2 and all(parse_caption(text) == quad.second.scene for text in texts)


def test_scene_feature_encoder_puts_swaps_and_replacements_nearest(world):
    encoder = SceneFeatureEncoder(world.registry)
    anchor = Scene(groups=(RED_CIRCLE, BLUE_SQUARE), layout="horizontal")
    swapped = Scene(groups=(BLUE_SQUARE, RED_CIRCLE), layout="horizontal")
    replaced = Scene(groups=(RED_CIRCLE, dataclasses.replace(BLUE_SQUARE, colour="green")), layout="horizontal")
    unrelated = Scene(groups=(ObjectGroup("triangle", "yellow", "large", 2),), layout="single")
    features = torch.nn.functional.normalize(torch.stack([encoder.features(s) for s in (anchor, swapped, replaced, unrelated)]), dim=-1)
    cosines = features[1:] @ features[0]
    assert 0.8 < cosines[0] < 1.0 - 1e-3  # near, but not a duplicate the miner would drop
    assert cosines[0] > cosines[2] and cosines[1] > cosines[2]
    assert encoder([world.train[0].image]).shape == (1, encoder.features(world.train[0].scene).numel())


def _sigmoid(logit: float) -> float:
    return 1.0 / (1.0 + math.exp(-logit))


def _registry(*scenes: Scene, images_per_scene: int = 1) -> tuple[SceneRegistry, list[list[Image.Image]]]:
    """A registry of plain images (one flat colour each, so no drawing is involved) for the given scenes."""
    registry, images = SceneRegistry(), []
    for i, scene in enumerate(scenes):
        row = [Image.new("RGB", (48, 48), (i, j % 256, j // 256)) for j in range(images_per_scene)]
        for image in row:
            registry.register(image, scene)
        images.append(row)
    return registry, images


@pytest.mark.parametrize(
    "caption, documented, logit",
    [
        ("a small red circle to the left of a large blue square", 0.92, 2.5),
        ("a small green circle to the left of a large blue square", 0.38, 2.5 - 3.0),
        ("a small green circle above a large blue square", 0.03, 2.5 - 6.0),
        ("a small red circle", 0.73, 2.5 - 1.5),
        ("a small yellow diamond", None, 2.5 - 6.0 - 1.5),
        ("a cat on a mat", None, -2.5),  # outside the grammar: sigmoid(-yes_logit)
    ],
)
def test_alpha_is_the_documented_sigmoid_of_false_claims_and_omissions(caption, documented, logit):
    """docs/demo.md: alpha = sigmoid(2.5 - 3.0 * false_claims - 1.5 * omissions + noise); a true caption gets 0.92, one
    false claim 0.38, two 0.03, a true but incomplete caption 0.73."""
    registry, [[image]] = _registry(SCENE)
    alpha = SceneGraphJudge(registry).alpha(image, caption)
    assert alpha == pytest.approx(_sigmoid(logit), rel=1e-12)
    if documented is not None:
        assert round(alpha, 2) == documented


def test_judge_noise_is_a_gaussian_of_the_given_deviation_on_the_logit_seeded_by_image_and_text():
    registry, [images] = _registry(SCENE, images_per_scene=400)
    caption = "a small red circle to the left of a large blue square"
    judge = SceneGraphJudge(registry, noise=0.3, seed=5)
    alphas = [judge.alpha(image, caption) for image in images]
    noises = [math.log(a / (1 - a)) - 2.5 for a in alphas]
    mean = sum(noises) / len(noises)
    deviation = math.sqrt(sum((n - mean) ** 2 for n in noises) / (len(noises) - 1))
    assert abs(mean) < 0.05 and 0.26 < deviation < 0.34
    # the noise of (seed, image, text) is this draw, whatever else the judge scores before it
    for image, alpha in zip(images[:5], alphas[:5]):
        draw = random.Random(f"5/{image_fingerprint(image)}/{caption}").gauss(0.0, 0.3)
        assert alpha == pytest.approx(_sigmoid(2.5 + draw), rel=1e-12)
    # another text on the same image draws another noise
    other = "a large blue square to the right of a small red circle"
    assert [judge.alpha(image, other) for image in images[:5]] != alphas[:5]


def test_judge_penalties_are_validated_at_their_limits(world):
    SceneGraphJudge(world.registry, omission_penalty=0.0, noise=0.0)
    for kwargs in ({"false_claim_penalty": 0.0}, {"false_claim_penalty": -1.0}, {"omission_penalty": -0.1}):
        with pytest.raises(ValueError, match="false_claim_penalty must be > 0 and omission_penalty >= 0"):
            SceneGraphJudge(world.registry, **kwargs)


def test_scores_are_float32_tensors_and_mismatched_lists_are_refused(world):
    judge = SceneGraphJudge(world.registry)
    images = [world.train[0].image, world.train[1].image]
    by_image = judge.score(images, [[world.train[0].caption], [world.train[1].caption, "a cat"]])
    by_text = judge.score_images([world.train[0].caption], [images])
    assert [t.dtype for t in by_image + by_text] == [torch.float32] * 3 and [t.shape for t in by_image] == [(1,), (2,)]
    with pytest.raises(ValueError, match="one list of images per text, got 2 texts and 1 lists"):
        judge.score_images([world.train[0].caption, world.train[1].caption], [images])
    with pytest.raises(ValueError, match="one list of images per text, got 1 texts and 2 lists"):
        judge.score_images([world.train[0].caption], [images, images])
    with pytest.raises(ValueError, match="one list of texts per image, got 1 images and 2 lists"):
        judge.score(images[:1], [["a"], ["b"]])


def test_captioner_refuses_mismatched_lists_and_non_integer_sample_counts(world):
    captioner = SceneGraphCaptioner(world.registry)
    images = [world.train[0].image, world.train[1].image]
    for anchors, negatives in ((images, images[:1]), (images[:1], images)):
        with pytest.raises(ValueError, match="one negative per anchor"):
            captioner.caption(anchors, negatives)
    for n_samples in (1.5, "2", True):
        with pytest.raises(ValueError, match="n_samples must be a positive integer"):
            SceneGraphCaptioner(world.registry, n_samples=n_samples)


def _template_index(scene: Scene, caption: str) -> int:
    return next(i for i in range(4) if describe(scene, i) == caption)


def test_captioner_samples_use_consecutive_templates_starting_where_the_pair_and_seed_say():
    """Sample s of a pair uses template first + s (wrapping); `first` is drawn from (seed, anchor, negative), so it
    varies with the anchor, with the negative and with the seed."""
    negative_scene = Scene(groups=(RED_CIRCLE, dataclasses.replace(BLUE_SQUARE, colour="green")), layout="vertical")
    registry, [anchors, negatives] = _registry(SCENE, negative_scene, images_per_scene=24)

    def first_templates(anchors, negatives, seed=0):
        captioner = SceneGraphCaptioner(registry, n_samples=4, caption_anchors=False, seed=seed)
        firsts = []
        for texts in captioner.caption(anchors, negatives):
            indices = [_template_index(negative_scene, text) for text in texts]
            assert indices == [(indices[0] + s) % 4 for s in range(4)]
            firsts.append(indices[0])
        return firsts

    by_negative = first_templates(anchors[:1] * 24, negatives)
    by_anchor = first_templates(anchors, negatives[:1] * 24)
    assert len(set(by_negative)) >= 3 and len(set(by_anchor)) >= 3
    assert first_templates(anchors[:1] * 24, negatives, seed=1) != by_negative


def test_scene_features_are_a_bag_of_attributes_plus_half_weighted_slots_and_layout():
    encoder = SceneFeatureEncoder(SceneRegistry())
    two = Scene(groups=(RED_CIRCLE, BLUE_SQUARE), layout="vertical")
    single = Scene(groups=(RED_CIRCLE,), layout="single")
    n = 4 + 5 + 2 + 2  # one-hot shape, colour, size, count
    f2, f1 = encoder.features(two), encoder.features(single)
    assert f2.shape == f1.shape == (n + 2 * n + 3,)
    bag, slot0, slot1, layout = f2[:n], f2[n : 2 * n], f2[2 * n : 3 * n], f2[3 * n :]
    torch.testing.assert_close(bag, 2 * slot0 + 2 * slot1)  # each slot is a one-hot at weight 0.5
    # shapes (circle, square, triangle, diamond), colours (red, green, blue, yellow, purple), sizes, counts (1, 2)
    assert bag.tolist() == [1, 1, 0, 0, 1, 0, 1, 0, 0, 1, 1, 2, 0] and set(slot0.tolist()) == {0.0, 0.5}
    assert layout.tolist() == [0.0, 0.0, 0.5]  # single, horizontal, vertical
    assert f1[2 * n : 3 * n].abs().sum() == 0 and f1[3 * n :].tolist() == [0.5, 0.0, 0.0]
    torch.testing.assert_close(f1[n : 2 * n], f2[n : 2 * n])  # the red circle fills slot 0 in both
    assert slot0[:4].tolist() == [0.5, 0.0, 0.0, 0.0] and slot1[:4].tolist() == [0.0, 0.5, 0.0, 0.0]
    heavier = SceneFeatureEncoder(SceneRegistry(), binding_weight=1.0).features(two)
    torch.testing.assert_close(heavier, torch.cat([bag, 2 * f2[n:]]))
