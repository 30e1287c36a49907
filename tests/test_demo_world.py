"""The demo world: deterministic, its captions readable back, its test sets held out."""

import random

import pytest

from maple.demo.world import (
    CATEGORIES,
    TEMPLATES,
    ObjectGroup,
    Scene,
    WorldConfig,
    build_world,
    describe,
    edit_swap,
    image_fingerprint,
    parse_caption,
)

SMALL = WorldConfig(seed=3, n_train_families=60, n_retrieval=40, n_quadruples_per_category=20)


@pytest.fixture(scope="module")
def world():
    return build_world(SMALL)


def test_same_seed_draws_the_same_world(world):
    again = build_world(SMALL)
    assert [e.caption for e in again.train] == [e.caption for e in world.train]
    assert [image_fingerprint(e.image) for e in again.train] == [image_fingerprint(e.image) for e in world.train]
    assert [(q.first.caption, q.second.caption) for q in again.quadruples] == [
        (q.first.caption, q.second.caption) for q in world.quadruples
    ]


def test_another_seed_draws_another_world(world):
    other = build_world(WorldConfig(seed=4, n_train_families=60, n_retrieval=40, n_quadruples_per_category=20))
    assert [e.caption for e in other.retrieval] != [e.caption for e in world.retrieval]


def test_test_sets_do_not_depend_on_the_training_corpus_size(world):
    bigger = build_world(WorldConfig(seed=3, n_train_families=200, n_retrieval=40, n_quadruples_per_category=20))
    assert len(bigger.train) > len(world.train)
    assert [e.caption for e in bigger.retrieval] == [e.caption for e in world.retrieval]
    assert [image_fingerprint(q.second.image) for q in bigger.quadruples] == [
        image_fingerprint(q.second.image) for q in world.quadruples
    ]


def test_no_test_composition_is_seen_in_training(world):
    train_scenes = {e.scene for e in world.train}
    assert train_scenes.isdisjoint(world.test_scenes)
    assert len(world.test_scenes) >= SMALL.n_retrieval + 2 * 3 * SMALL.n_quadruples_per_category - 10


def test_every_caption_reads_back_as_its_scene(world):
    examples = world.train + world.retrieval + [e for q in world.quadruples for e in (q.first, q.second)]
    assert all(parse_caption(e.caption) == e.scene for e in examples)
    assert all(world.registry.scene_of(e.image) == e.scene for e in examples)


def test_quadruples_differ_by_one_edit_of_their_category(world):
    counts = {category: 0 for category in CATEGORIES}
    for quad in world.quadruples:
        counts[quad.category] += 1
        first, second = quad.first.scene, quad.second.scene
        assert first != second and quad.first.caption != quad.second.caption
        if quad.category == "swap":
            # same attributes and objects, bound differently: a bag of attributes cannot tell
            assert sorted(map(repr, _attribute_bag(first))) == sorted(map(repr, _attribute_bag(second)))
            assert _words(quad.first.caption) == _words(quad.second.caption)
        elif quad.category == "add":
            small, large = sorted((first, second), key=lambda s: (len(s.groups), sum(g.count for g in s.groups)))
            assert len(large.groups) > len(small.groups) or sum(g.count for g in large.groups) == sum(g.count for g in small.groups) + 1
        else:
            assert first.layout == second.layout
            changed = [i for i, (a, b) in enumerate(zip(first.groups, second.groups)) if a != b]
            assert len(changed) == 1
    assert counts == {category: SMALL.n_quadruples_per_category for category in CATEGORIES}
    assert {q.kind for q in world.quadruples if q.category == "swap"} >= {"position", "colour"}


def _words(caption: str) -> list[str]:
    return sorted(word.removesuffix("s") for word in caption.split())  # "a circle"/"two circles"


def _attribute_bag(scene: Scene) -> list:
    return [(attribute, getattr(g, attribute)) for g in scene.groups for attribute in ("shape", "colour", "size", "count")]


def test_attribute_swap_binds_differently():
    scene = Scene(
        groups=(ObjectGroup("circle", "red", "small"), ObjectGroup("square", "blue", "small")), layout="horizontal"
    )
    kinds = {edit_swap(scene, random.Random(i))[1] for i in range(50)}
    assert Scene(groups=(ObjectGroup("circle", "blue", "small"), ObjectGroup("square", "red", "small")), layout="horizontal") in kinds
    assert Scene(groups=tuple(reversed(scene.groups)), layout="horizontal") in kinds


def test_templates_state_the_relation_with_both_orders_of_mention():
    scene = Scene(groups=(ObjectGroup("circle", "red", "small"), ObjectGroup("square", "blue", "large", 2)), layout="vertical")
    captions = {describe(scene, i) for i in range(len(TEMPLATES["vertical"]))}
    assert "a small red circle above two large blue squares" in captions
    assert "two large blue squares below a small red circle" in captions
    assert {parse_caption(c) for c in captions} == {scene}


def test_text_outside_the_grammar_parses_to_none():
    assert parse_caption("a dog on a sofa") is None
    assert parse_caption("a small red circle to the left of a small red circle") is None


@pytest.mark.parametrize(
    "kwargs, message",
    [({"n_retrieval": 0}, "n_retrieval"), ({"image_size": 8}, "image_size"), ({"n_train_families": 2.5}, "n_train_families")],
)
def test_bad_world_config_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WorldConfig(**kwargs)


def test_bad_scene_is_refused():
    with pytest.raises(ValueError, match="colour"):
        ObjectGroup("circle", "pink", "small")
    with pytest.raises(ValueError, match="differ"):
        Scene(groups=(ObjectGroup("circle", "red", "small"),) * 2, layout="horizontal")


def test_asking_for_more_test_scenes_than_the_world_can_spare_fails_before_drawing():
    with pytest.raises(ValueError, match="more than half of the world's 12720"):
        WorldConfig(n_retrieval=6_000, n_quadruples_per_category=100)
