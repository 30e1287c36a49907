"""The scene-graph judge and captioner that stand in for MLLMs in the demo."""

import dataclasses
import io

import pytest
import torch
from PIL import Image

from maple.demo.scene_judge import SceneFeatureEncoder, SceneGraphCaptioner, SceneGraphJudge, check_caption
from maple.demo.world import ObjectGroup, Scene, WorldConfig, build_world, describe, parse_caption


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
