"""A scene-graph judge and captioner: stand-ins for the MLLMs of the paper in the offline demo.

No image-text model weights can be had offline, so the demo's judge and captioner read the
ground truth instead of looking at pixels: each image's scene graph is found in the world's
`SceneRegistry` (keyed by pixel fingerprint, so it survives the preference dataset's parquet
round trip), and each caption is read back with the world's grammar (`parse_caption`).

They implement the same protocols as `dataset_builders.MLLMJudge` and
`dataset_builders.ContrastiveCaptioner` (`PreferenceJudge`, `CandidateCaptioner`), so the
preference builder runs unchanged with either; `maple demo --judge MODEL_ID` swaps in a real
MLLM judge.

The judge's alpha is graded like an MLLM's P(Yes): a caption with no false claim about the image
gets a confident Yes, each false claim (a wrong shape, colour, size or count of a mentioned
object, an object that is not there, a wrong spatial relation) costs `false_claim_penalty` on
the logit, and each object of the image the caption leaves out costs `omission_penalty`.
Optional Gaussian noise on the logit mimics an imperfect judge.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass

import torch
from PIL import Image

from .world import (
    ATTRIBUTES,
    COLOURS,
    COUNTS,
    SHAPES,
    SIZES,
    TEMPLATES,
    Scene,
    SceneRegistry,
    describe,
    image_fingerprint,
    is_positive_integer,
    parse_caption,
)

_ATTRIBUTE_VALUES = {"shape": SHAPES, "colour": tuple(COLOURS), "size": tuple(SIZES), "count": COUNTS}


@dataclass(frozen=True)
class ClaimCheck:
    """What is wrong with a caption as a description of an image."""

    false_claims: int  # wrong attributes of mentioned objects, missing objects, a wrong relation
    omissions: int  # objects of the image the caption does not mention


def check_caption(stated: Scene, actual: Scene) -> ClaimCheck:
    """Count the false claims and omissions of the caption scene `stated` about the image scene
    `actual`, under the most charitable reading: the matching of mentioned objects to drawn
    objects with the fewest false claims."""
    fewest_false_claims: int | None = None
    n_stated, n_actual = len(stated.groups), len(actual.groups)
    # targets[i]: the drawn object mentioned object i is read as, or None; as many matched as can be, and any
    # mentioned object may be the unmatched one (a caption of two objects about an image of one).
    for targets in itertools.permutations([*range(n_actual), *[None] * n_stated], n_stated):
        matched = [index for index in targets if index is not None]
        if len(matched) < min(n_stated, n_actual):
            continue
        false_claims = n_stated - len(matched)  # mentioned objects with nothing left to match
        for stated_group, index in zip(stated.groups, targets):
            if index is not None:
                actual_group = actual.groups[index]
                false_claims += sum(getattr(stated_group, a) != getattr(actual_group, a) for a in ATTRIBUTES)
        if n_stated == 2:
            order_kept = matched == sorted(matched)
            relation_holds = len(matched) == 2 and order_kept and stated.layout == actual.layout
            false_claims += not relation_holds
        if fewest_false_claims is None or false_claims < fewest_false_claims:
            fewest_false_claims = false_claims
    assert fewest_false_claims is not None  # permutations() always yields at least the empty matching
    return ClaimCheck(false_claims=fewest_false_claims, omissions=max(0, n_actual - n_stated))


@dataclass
class SceneGraphJudge:
    """`PreferenceJudge` that scores a caption against an image's scene graph (an MLLM stand-in).

    alpha = sigmoid(yes_logit - false_claim_penalty * false claims - omission_penalty * omissions
    + noise). A text outside the world's grammar states nothing checkable and gets
    sigmoid(-yes_logit), a confident No. The noise is a fixed function of (seed, image, text), so
    scores are reproducible.
    """

    registry: SceneRegistry
    yes_logit: float = 2.5
    false_claim_penalty: float = 3.0
    omission_penalty: float = 1.5
    noise: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.false_claim_penalty <= 0 or self.omission_penalty < 0:
            raise ValueError("false_claim_penalty must be > 0 and omission_penalty >= 0")
        if not (math.isfinite(self.noise) and self.noise >= 0):
            raise ValueError(f"noise is a standard deviation and must be finite and >= 0, got {self.noise}")

    def alpha(self, image: Image.Image, text: str) -> float:
        """P(Yes) for 'Does the image align with the text?'."""
        stated = parse_caption(text)
        if stated is None:
            logit = -self.yes_logit
        else:
            check = check_caption(stated, self.registry.scene_of(image))
            logit = (
                self.yes_logit
                - self.false_claim_penalty * check.false_claims
                - self.omission_penalty * check.omissions
            )
        if self.noise:
            logit += random.Random(f"{self.seed}/{image_fingerprint(image)}/{text}").gauss(0.0, self.noise)
        return 1.0 / (1.0 + math.exp(-max(logit, -700.0)))  # exp overflows a float above 709

    def score(self, images: list[Image.Image], texts: list[list[str]]) -> list[torch.Tensor]:
        """alpha(images[i], texts[i][j]); one tensor per image (img2txt)."""
        if len(images) != len(texts):
            raise ValueError(f"score() needs one list of texts per image, got {len(images)} images and {len(texts)} lists")
        return [
            torch.tensor([self.alpha(image, text) for text in candidates], dtype=torch.float32)
            for image, candidates in zip(images, texts)
        ]

    def score_images(self, texts: list[str], images: list[list[Image.Image]]) -> list[torch.Tensor]:
        """alpha(images[i][j], texts[i]); one tensor per text (txt2img)."""
        if len(images) != len(texts):
            raise ValueError(f"score_images() needs one list of images per text, got {len(texts)} texts and {len(images)} lists")
        return [
            torch.tensor([self.alpha(image, text) for image in candidates], dtype=torch.float32)
            for text, candidates in zip(texts, images)
        ]


@dataclass
class SceneGraphCaptioner:
    """`CandidateCaptioner` that writes captions of an anchor and its hard negative from their
    scene graphs (an MLLM stand-in).

    Each sample writes both captions with the same template, so where the layouts agree the two
    captions differ exactly where the scenes differ: the stress on differences the paper asks
    its MLLM captioner for. `n_samples` plays the role of the paper's repeated sampling; each
    sample uses another template.

    `caption_anchors=False` writes only the negatives' captions. The demo uses it because
    `RPATrainer`'s expanded InfoNCE treats every candidate text as a negative, and a second true
    caption of the anchor would be a false negative there.
    """

    registry: SceneRegistry
    n_samples: int = 1
    caption_anchors: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if not is_positive_integer(self.n_samples):
            raise ValueError(f"n_samples must be a positive integer, got {self.n_samples!r}")

    def caption(self, anchors: list[Image.Image], negatives: list[Image.Image]) -> list[list[str]]:
        """Per (anchor, negative) pair and sample: the anchor's caption (if `caption_anchors`),
        then the negative's."""
        if len(anchors) != len(negatives):
            raise ValueError(f"caption() needs one negative per anchor, got {len(anchors)} and {len(negatives)}")
        captions = []
        for anchor, negative in zip(anchors, negatives):
            anchor_scene, negative_scene = self.registry.scene_of(anchor), self.registry.scene_of(negative)
            rng = random.Random(f"{self.seed}/{image_fingerprint(anchor)}/{image_fingerprint(negative)}")
            first = rng.randrange(len(TEMPLATES["horizontal"]))
            pair_captions = []
            for sample in range(self.n_samples):
                template_index = first + sample
                if self.caption_anchors:
                    pair_captions.append(describe(anchor_scene, template_index))
                pair_captions.append(describe(negative_scene, template_index))
            captions.append(pair_captions)
        return captions


@dataclass
class SceneFeatureEncoder:
    """An image encoder for `HardNegativeMiner` that embeds an image's scene graph: a stand-in for
    the strong separate image encoder (DINOv2) the paper mines hard negatives with.

    The embedding is a bag of attributes (each group's shape, colour, size and count, one-hot and
    summed) plus, at `binding_weight`, which attributes sit in which slot and the layout. Its
    nearest neighbours are therefore the scenes with the most attributes in common: swaps (same
    bag, other binding) and single replacements, the hard cases of the test sets. Swap partners
    are near but never identical, so the miner does not drop them as duplicates.
    """

    registry: SceneRegistry
    binding_weight: float = 0.5

    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        """(len(images), D) float features (the miner normalises them)."""
        return torch.stack([self.features(self.registry.scene_of(image)) for image in images])

    def features(self, scene: Scene) -> torch.Tensor:
        slots = [self._one_hot(group) for group in scene.groups]
        bag = torch.stack(slots).sum(dim=0)
        bound = torch.cat(slots + [torch.zeros_like(bag)] * (2 - len(slots)))
        layout = torch.tensor([float(scene.layout == name) for name in TEMPLATES])
        return torch.cat([bag, self.binding_weight * bound, self.binding_weight * layout])

    @staticmethod
    def _one_hot(group) -> torch.Tensor:
        return torch.tensor(
            [float(getattr(group, attribute) == value) for attribute in ATTRIBUTES for value in _ATTRIBUTE_VALUES[attribute]]
        )
