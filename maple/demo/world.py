"""A procedurally drawn fine-grained image-caption world whose ground truth is known exactly.

Every image is drawn with PIL from a scene graph: one or two object groups, each with a shape,
a colour, a size and a count (one or two instances), and, for two groups, a spatial relation
(left of / above). Captions are written from the scene graph with varied templates, and
`parse_caption` reads them back, so a judge can check any caption against any image.

The held-out test sets are fixed by their definition (the world seed) before anything is
trained: a retrieval set, and Winoground/BiVLC-style quadruples (I0, I1, T0, T1) whose two
scenes differ by one *replace* (an attribute or a whole object), one *swap* (an attribute
exchanged between the two groups, or their positions exchanged) or one *add* (an extra object
group or an extra instance). No test scene occurs in the training set, so every test
composition is unseen in training.

Swaps are where a bag-of-attributes embedder fails: both scenes hold the same shapes, colours,
sizes and counts, only their binding (which colour goes with which shape, which object is
where) differs; both captions contain the same words in a different order.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Literal

from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 45, 40),
    "green": (40, 160, 60),
    "blue": (45, 85, 215),
    "yellow": (230, 195, 30),
    "purple": (140, 60, 175),
}
# object side as a fraction of the canvas side
SIZES: dict[str, float] = {"small": 0.2, "large": 0.34}
COUNTS: tuple[int, ...] = (1, 2)

_NUM_GROUPS = len(SHAPES) * len(COLOURS) * len(SIZES) * len(COUNTS)
NUM_SCENES = _NUM_GROUPS + 2 * _NUM_GROUPS * (_NUM_GROUPS - 1)  # single + two ordered groups x 2 layouts

Layout = Literal["single", "horizontal", "vertical"]
Category = Literal["replace", "swap", "add"]
CATEGORIES: tuple[Category, ...] = ("replace", "swap", "add")
ATTRIBUTES: tuple[str, ...] = ("shape", "colour", "size", "count")


@dataclass(frozen=True)
class ObjectGroup:
    """`count` identical instances of one kind of object."""

    shape: str
    colour: str
    size: str
    count: int = 1

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("shape", self.shape, SHAPES),
            ("colour", self.colour, tuple(COLOURS)),
            ("size", self.size, tuple(SIZES)),
            ("count", self.count, COUNTS),
        ):
            if value not in allowed:
                raise ValueError(f"ObjectGroup.{name} must be one of {allowed}, got {value!r}")

    @property
    def phrase(self) -> str:
        """The noun phrase for this group, e.g. 'two small red circles'."""
        determiner, plural = ("a", "") if self.count == 1 else ("two", "s")
        return f"{determiner} {self.size} {self.colour} {self.shape}{plural}"


@dataclass(frozen=True)
class Scene:
    """The scene graph of one image.

    With two groups, `groups[0]` is left of (layout "horizontal") or above (layout "vertical")
    `groups[1]`; the relation is implied by the order, so swapping positions swaps the groups.
    """

    groups: tuple[ObjectGroup, ...]
    layout: Layout

    def __post_init__(self) -> None:
        expected = 1 if self.layout == "single" else 2
        if self.layout not in ("single", "horizontal", "vertical"):
            raise ValueError(f"Scene.layout must be single, horizontal or vertical, got {self.layout!r}")
        if len(self.groups) != expected:
            raise ValueError(f"a {self.layout} scene has {expected} object group(s), got {len(self.groups)}")
        if expected == 2 and self.groups[0] == self.groups[1]:
            raise ValueError("the two object groups of a scene must differ")


# One caption template per way of stating a layout; {0} and {1} are the phrases of groups[0]
# and groups[1]. Both orders of mention occur, so word order alone never tells the relation.
TEMPLATES: dict[Layout, tuple[str, ...]] = {
    "single": ("{0}", "{0} in the middle", "a picture of {0}", "{0} alone"),
    "horizontal": (
        "{0} to the left of {1}",
        "{1} to the right of {0}",
        "{0} on the left and {1} on the right",
        "{1} on the right and {0} on the left",
    ),
    "vertical": (
        "{0} above {1}",
        "{1} below {0}",
        "{0} at the top and {1} at the bottom",
        "{1} at the bottom and {0} at the top",
    ),
}


def describe(scene: Scene, template_index: int) -> str:
    """The caption of `scene` written with template `template_index` of its layout."""
    templates = TEMPLATES[scene.layout]
    return templates[template_index % len(templates)].format(*(group.phrase for group in scene.groups))


_PHRASE = (
    r"(?P<det{i}>a|two) (?P<size{i}>{sizes}) (?P<colour{i}>{colours}) (?P<shape{i}>{shapes})s?"
)


def _template_pattern(template: str) -> re.Pattern[str]:
    pattern = re.escape(template)
    for i in (0, 1):
        phrase = _PHRASE.format(
            i=i, sizes="|".join(SIZES), colours="|".join(COLOURS), shapes="|".join(SHAPES)
        )
        pattern = pattern.replace(re.escape("{%d}" % i), phrase)
    return re.compile(pattern)


_PATTERNS: tuple[tuple[Layout, re.Pattern[str]], ...] = tuple(
    (layout, _template_pattern(template)) for layout, templates in TEMPLATES.items() for template in templates
)


def parse_caption(text: str) -> Scene | None:
    """The scene a caption of this world states, or None if the text is not in its grammar."""
    normalised = " ".join(text.lower().strip().rstrip(".").split())
    for layout, pattern in _PATTERNS:
        match = pattern.fullmatch(normalised)
        if match is None:
            continue
        n_groups = 1 if layout == "single" else 2
        try:
            groups = tuple(
                ObjectGroup(
                    shape=match[f"shape{i}"],
                    colour=match[f"colour{i}"],
                    size=match[f"size{i}"],
                    count=1 if match[f"det{i}"] == "a" else 2,
                )
                for i in range(n_groups)
            )
            return Scene(groups=groups, layout=layout)
        except ValueError:  # e.g. "a red circle to the left of a red circle"
            return None
    return None


def render(scene: Scene, rng: random.Random, image_size: int = 48) -> Image.Image:
    """Draw `scene` with jittered positions, colours and background."""
    grey = rng.randint(215, 245)
    image = Image.new("RGB", (image_size, image_size), (grey, grey, grey))
    draw = ImageDraw.Draw(image)
    half = image_size / 2
    slots = {
        "single": [(0.0, 0.0, image_size, image_size)],
        "horizontal": [(0.0, 0.0, half, image_size), (half, 0.0, image_size, image_size)],
        "vertical": [(0.0, 0.0, image_size, half), (0.0, half, image_size, image_size)],
    }[scene.layout]
    for group, (x0, y0, x1, y1) in zip(scene.groups, slots):
        side = SIZES[group.size] * image_size
        for sx0, sy0, sx1, sy1 in _split(x0, y0, x1, y1, group.count):
            cx = rng.uniform(sx0 + side / 2 + 1, max(sx0 + side / 2 + 1, sx1 - side / 2 - 1))
            cy = rng.uniform(sy0 + side / 2 + 1, max(sy0 + side / 2 + 1, sy1 - side / 2 - 1))
            colour = tuple(min(255, max(0, c + rng.randint(-15, 15))) for c in COLOURS[group.colour])
            _draw_shape(draw, group.shape, cx, cy, side, colour)
    return image


def _split(x0: float, y0: float, x1: float, y1: float, count: int) -> list[tuple[float, float, float, float]]:
    """`count` equal sub-slots of a slot, cut across its longer side."""
    if count == 1:
        return [(x0, y0, x1, y1)]
    if x1 - x0 >= y1 - y0:
        mid = (x0 + x1) / 2
        return [(x0, y0, mid, y1), (mid, y0, x1, y1)]
    mid = (y0 + y1) / 2
    return [(x0, y0, x1, mid), (x0, mid, x1, y1)]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, side: float, colour: tuple[int, ...]) -> None:
    r = side / 2
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=colour)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=colour)
    else:
        raise ValueError(f"unknown shape {shape!r}")


# --- scene sampling and minimal edits ---------------------------------------------------------


def sample_group(rng: random.Random, count_two_probability: float = 0.25) -> ObjectGroup:
    return ObjectGroup(
        shape=rng.choice(SHAPES),
        colour=rng.choice(tuple(COLOURS)),
        size=rng.choice(tuple(SIZES)),
        count=2 if rng.random() < count_two_probability else 1,
    )


def sample_scene(rng: random.Random, single_probability: float = 0.15) -> Scene:
    if rng.random() < single_probability:
        return Scene(groups=(sample_group(rng),), layout="single")
    first = sample_group(rng)
    second = sample_group(rng)
    while second == first:
        second = sample_group(rng)
    return Scene(groups=(first, second), layout=rng.choice(("horizontal", "vertical")))


_VALUES: dict[str, tuple] = {"shape": SHAPES, "colour": tuple(COLOURS), "size": tuple(SIZES), "count": COUNTS}


def edit_replace(scene: Scene, rng: random.Random) -> tuple[str, Scene] | None:
    """Change one attribute of one group, or replace a group by a new kind of object (new
    shape and colour). Returns (kind, edited scene), or None if the edit would merge two groups."""
    index = rng.randrange(len(scene.groups))
    group = scene.groups[index]
    kind = rng.choice(("shape", "colour", "size", "object"))
    if kind == "object":
        new_group = replace(
            group,
            shape=rng.choice([s for s in SHAPES if s != group.shape]),
            colour=rng.choice([c for c in COLOURS if c != group.colour]),
        )
    else:
        new_group = replace(group, **{kind: rng.choice([v for v in _VALUES[kind] if v != getattr(group, kind)])})
    groups = scene.groups[:index] + (new_group,) + scene.groups[index + 1 :]
    if len(set(groups)) != len(groups):
        return None
    return kind, Scene(groups=groups, layout=scene.layout)


def edit_swap(scene: Scene, rng: random.Random) -> tuple[str, Scene] | None:
    """Exchange the positions of the two groups, or one attribute between them. An attribute
    swap is only offered when it differs from a position swap (the groups differ in more than
    that attribute). Returns None for a scene with no valid swap."""
    if len(scene.groups) != 2:
        return None
    first, second = scene.groups
    kinds = ["position"] + [
        attribute
        for attribute in ATTRIBUTES
        if getattr(first, attribute) != getattr(second, attribute)
        and any(getattr(first, other) != getattr(second, other) for other in ATTRIBUTES if other != attribute)
    ]
    kind = rng.choice(kinds)
    if kind == "position":
        return kind, Scene(groups=(second, first), layout=scene.layout)
    swapped = (
        replace(first, **{kind: getattr(second, kind)}),
        replace(second, **{kind: getattr(first, kind)}),
    )
    return kind, Scene(groups=swapped, layout=scene.layout)


def edit_add(scene: Scene, rng: random.Random) -> tuple[str, Scene] | None:
    """Add a second object group to a single-group scene, or a second instance to a group.
    Returns None when neither is possible."""
    if scene.layout == "single":
        extra = sample_group(rng, count_two_probability=0.0)
        if extra == scene.groups[0]:
            return None
        groups = (scene.groups[0], extra) if rng.random() < 0.5 else (extra, scene.groups[0])
        return "object", Scene(groups=groups, layout=rng.choice(("horizontal", "vertical")))
    singles = [i for i, group in enumerate(scene.groups) if group.count == 1]
    if not singles:
        return None
    index = rng.choice(singles)
    groups = tuple(replace(g, count=2) if i == index else g for i, g in enumerate(scene.groups))
    if len(set(groups)) != len(groups):
        return None
    return "count", Scene(groups=groups, layout=scene.layout)


EDITS = {"replace": edit_replace, "swap": edit_swap, "add": edit_add}


# --- the world: training corpus and held-out test sets ----------------------------------------


def image_fingerprint(image: Image.Image) -> str:
    """A key for an image's pixels that survives a lossless (PNG/parquet) round trip."""
    rgb = image.convert("RGB")
    return hashlib.sha1(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()


@dataclass
class SceneRegistry:
    """The scene graph of every image the world drew, keyed by pixel fingerprint, so a judge or
    captioner handed only the image (e.g. after a parquet round trip) can find its scene."""

    scenes: dict[str, Scene] = field(default_factory=dict)

    def register(self, image: Image.Image, scene: Scene) -> None:
        self.scenes[image_fingerprint(image)] = scene

    def scene_of(self, image: Image.Image) -> Scene:
        try:
            return self.scenes[image_fingerprint(image)]
        except KeyError:
            raise KeyError(
                "this image was not drawn by the demo world, so its scene graph is unknown; the "
                "scene-graph judge and captioner only work on images from `build_world`"
            ) from None

    def __len__(self) -> int:
        return len(self.scenes)


@dataclass(frozen=True, eq=False)
class Example:
    """One drawn image with its caption and scene graph."""

    image: Image.Image
    caption: str
    scene: Scene


@dataclass(frozen=True, eq=False)
class Quadruple:
    """A Winoground-style test item: caption i is true of image i, and the two scenes differ by
    one edit of `category` (replace/swap/add) and `kind` (the attribute, 'object', 'position')."""

    category: Category
    kind: str
    first: Example
    second: Example


def is_positive_integer(value: object) -> bool:
    """Whether a setting is an integer >= 1; a bool is an int to Python, never a count here."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass(frozen=True)
class WorldConfig:
    """Everything that defines a world. The test sets depend only on `seed`, `image_size`,
    `n_retrieval` and `n_quadruples_per_category`, never on the training corpus size, so a
    quick run's training corpus is smaller but its test items are those of a full run."""

    seed: int = 0
    image_size: int = 48
    n_train_families: int = 1200
    n_retrieval: int = 500
    n_quadruples_per_category: int = 150

    def __post_init__(self) -> None:
        for name in ("image_size", "n_train_families", "n_retrieval", "n_quadruples_per_category"):
            value = getattr(self, name)
            if not is_positive_integer(value):
                raise ValueError(f"WorldConfig.{name} must be a positive integer, got {value!r}")
        if self.image_size < 24:
            raise ValueError(f"WorldConfig.image_size must be at least 24 pixels, got {self.image_size}")
        test_scenes = self.n_retrieval + 2 * len(CATEGORIES) * self.n_quadruples_per_category
        if test_scenes > NUM_SCENES // 2:  # keep at least half of all scenes for training
            raise ValueError(
                f"WorldConfig asks for {test_scenes} test scenes, more than half of the world's {NUM_SCENES}: "
                "lower n_retrieval or n_quadruples_per_category"
            )


@dataclass(eq=False)
class World:
    """The training corpus, the held-out test sets and the registry of every drawn scene."""

    config: WorldConfig
    train: list[Example]
    retrieval: list[Example]
    quadruples: list[Quadruple]
    registry: SceneRegistry

    @property
    def test_scenes(self) -> set[Scene]:
        return {example.scene for example in self.retrieval} | {
            example.scene for quad in self.quadruples for example in (quad.first, quad.second)
        }


def build_world(config: WorldConfig = WorldConfig()) -> World:
    """Draw the world: the test sets first (fixed by the seed), then a training corpus that
    avoids every test scene.

    The training corpus is made of families: a sampled scene plus one replace, one swap and
    one add edit of it (those that apply and are not test scenes), as a real corpus holds many
    near-duplicates; this is what gives the hard-negative miner close neighbours to find.
    """
    registry = SceneRegistry()

    def draw(scene: Scene, stream: str, template_index: int | None = None) -> Example:
        rng = random.Random(f"{config.seed}/{stream}")
        if template_index is None:
            template_index = rng.randrange(len(TEMPLATES[scene.layout]))
        example = Example(render(scene, rng, config.image_size), describe(scene, template_index), scene)
        registry.register(example.image, example.scene)
        return example

    def draw_pair(scene0: Scene, scene1: Scene, stream: str) -> tuple[Example, Example]:
        # one template for both captions, so where layouts agree T0 and T1 differ only by the edit
        rng = random.Random(f"{config.seed}/{stream}")
        if rng.random() < 0.5:  # the edited scene is I0 as often as I1
            scene0, scene1 = scene1, scene0
        template_index = rng.randrange(len(TEMPLATES["horizontal"]))
        return draw(scene0, f"{stream}/0", template_index), draw(scene1, f"{stream}/1", template_index)

    quadruples = [
        Quadruple(category, kind, *draw_pair(scene0, scene1, f"quadruple/{category}/{i}"))
        for category in CATEGORIES
        for i, (kind, scene0, scene1) in enumerate(
            _edited_pairs(category, config.n_quadruples_per_category, random.Random(f"{config.seed}/{category}"))
        )
    ]
    used = {example.scene for quad in quadruples for example in (quad.first, quad.second)}
    retrieval: list[Example] = []
    for scene in _distinct_scenes(random.Random(f"{config.seed}/retrieval"), exclude=used):
        retrieval.append(draw(scene, f"retrieval/{len(retrieval)}"))
        if len(retrieval) == config.n_retrieval:
            break
    held_out = used | {example.scene for example in retrieval}

    train: list[Example] = []
    family_rng = random.Random(f"{config.seed}/train")
    in_train: set[Scene] = set()
    for n_families, base in enumerate(_distinct_scenes(family_rng, exclude=held_out), start=1):
        edited = (edit(base, family_rng) for edit in EDITS.values())
        for scene in [base] + [result[1] for result in edited if result is not None]:
            if scene not in held_out and scene not in in_train:
                in_train.add(scene)
                train.append(draw(scene, f"train/{len(train)}"))
        if n_families == config.n_train_families:
            break
    return World(config=config, train=train, retrieval=retrieval, quadruples=quadruples, registry=registry)


_MAX_REJECTED_SAMPLES = 10_000


def _distinct_scenes(rng: random.Random, exclude: set[Scene]) -> Iterator[Scene]:
    """Sampled scenes, each once, none of them in `exclude`; ends with an error once new scenes
    stop turning up (the world holds about 12,700 distinct scenes)."""
    yielded: set[Scene] = set()
    rejected = 0
    while rejected < _MAX_REJECTED_SAMPLES:
        scene = sample_scene(rng)
        if scene in exclude or scene in yielded:
            rejected += 1
            continue
        rejected = 0
        yielded.add(scene)
        yield scene
    raise ValueError(
        f"the world ran out of distinct scenes after {len(yielded)} (plus {len(exclude)} held out): "
        "ask for fewer retrieval items, quadruples or training families"
    )


def _edited_pairs(category: Category, n: int, rng: random.Random) -> Iterator[tuple[str, Scene, Scene]]:
    """`n` (kind, scene, edited scene) triples of one edit category, no scene used twice.
    Add pairs start from single-group scenes half of the time, so both add kinds occur."""
    used: set[Scene] = set()
    made = 0
    while made < n:
        base = sample_scene(rng, single_probability=0.5 if category == "add" else 0.0)
        result = EDITS[category](base, rng)
        if result is None or base in used or result[1] in used:
            continue
        used.update((base, result[1]))
        made += 1
        yield result[0], base, result[1]
