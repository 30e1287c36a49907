"""MAPLE processor: turns texts and images into the inputs of `MapleModel`."""

from __future__ import annotations

import copyreg
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_utils import get_size_dict, select_best_resolution
from transformers.processing_utils import ProcessorMixin

from .configuration_maple import (
    BACKBONES,
    IDEFICS3_MLLMS,
    IMAGE_TOKEN_TYPE_INPUTS,
    LLAVA_MLLMS,
    MLLM_FAMILIES,
    PIXTRAL_MLLMS,
    QWEN_VL_MLLMS,
    SUPPORTED_MLLMS,
    mllm_family,
)

# Paper prompts (E5-V style summarisation, MAPLE section 3.1). `{image}` expands to the MLLM's
# image tokens, `{text}` to the text itself.
MLLM_IMAGE_PROMPT = "{image} Describe this image in one word:"
MLLM_TEXT_PROMPT = "{text} Describe this text in one word:"
# Qwen2-VL / Qwen2.5-VL / Qwen3-VL vision placeholders.
VISION_START, IMAGE_PAD, VISION_END = "<|vision_start|>", "<|image_pad|>", "<|vision_end|>"
# Idefics3 / SmolVLM: the tokens around each tile's image tokens, and the global view's tag.
FAKE_IMAGE_TOKEN, GLOBAL_IMAGE_TOKEN = "<fake_token_around_image>", "<global-img>"
# Gemma 3: the tokens around an image's soft tokens; its chat template writes the first where an image goes.
START_OF_IMAGE, END_OF_IMAGE = "<start_of_image>", "<end_of_image>"
# Pixtral / Mistral 3: the tokens that end each row of an image's `[IMG]` tokens, and its last row.
IMAGE_BREAK, IMAGE_END = "[IMG_BREAK]", "[IMG_END]"
# Families whose image token count follows each image's size: their processors need no `image_seq_length`.
SIZE_DEPENDENT_MLLMS = (*QWEN_VL_MLLMS, *PIXTRAL_MLLMS)
# What a dual encoder's image processor returns that its vision tower takes: the pixels, and for a NaFlex tower
# (SigLIP2) the mask of each image's real patches and its patch grid.
DUAL_ENCODER_IMAGE_INPUTS = ("pixel_values", "pixel_attention_mask", "spatial_shapes")
# Text towers that pool their last position (SigLIP's): every text must be padded to one length, or its embedding
# would depend on the longest text of its batch.
LAST_POSITION_TEXT_TOWERS = ("siglip_text_model", "siglip2_text_model")
# Dual encoders' vision towers that take images of their config's `image_size` only (MapleModel does not ask them to
# interpolate their position embeddings): CLIP's refuses another size, SigLIP's fails on it with a bare shape error.
FIXED_SIZE_VISION_TOWERS = ("clip_vision_model", "siglip_vision_model")
# The processor_config.json entry recording the image processor's backend ("pil" or "torchvision").
IMAGE_PROCESSOR_BACKEND_KEY = "image_processor_backend"


def to_rgb(image: Image.Image) -> Image.Image:
    """`image` in RGB, any transparency composited onto white, as transformers' image processors do
    (`image_transforms.convert_to_rgb`): a plain `convert("RGB")` keeps the colour under transparent pixels,
    often black, which turns black line art on a transparent background into a black square. A 16-bit greyscale
    image (mode I;16, or I holding values above 255, as 16-bit PNGs load) is scaled to 8 bits first: `convert` clips
    it at 255, which turned it white (transformers' `convert_to_rgb` too). An integer greyscale image's (mode I or
    I;16) transparent colour is matched against its own values: Pillow compares only its low byte with the 8-bit
    pixels, so a 16-bit one (or one above 255 in an image within 8 bits) turned another value's pixels white."""
    if image.mode.startswith("I"):
        values = image.convert("I")
        transparency = image.info.get("transparency")
        sixteen_bit = image.mode.startswith("I;16") or values.getextrema()[1] > 255
        image = (values.point(lambda value: value / 257) if sixteen_bit else values).convert("L")
        image.info.pop("transparency", None)
        if transparency is not None:
            image.putalpha(Image.fromarray(np.where(np.asarray(values) == transparency, 0, 255).astype(np.uint8)))
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        image = Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), image.convert("RGBA"))
    return image.convert("RGB")


def exif_turn(image: Image.Image) -> int | None:
    """The EXIF Orientation (2-8) by which loading turns or mirrors `image` upright (`ImageOps.exif_transpose`), or
    None for an image that loads as it is stored."""
    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    return orientation if orientation in range(2, 9) else None


def load_image(image: Any, index: int) -> Image.Image:
    """An upright RGB PIL image (`to_rgb`) from a PIL image or a file path; `index` names the item in error messages.

    Upright: turned as its EXIF Orientation tag says (cameras store a photo as shot and tag how to turn it), as
    transformers' `load_image` and `datasets.Image` read images; an image without the tag is left as it is."""
    if isinstance(image, (str, os.PathLike)):
        try:
            with Image.open(image) as opened:
                return to_rgb(ImageOps.exif_transpose(opened))
        except (OSError, UnidentifiedImageError) as error:
            raise ValueError(f"images[{index}]: cannot read image file {os.fspath(image)!r}: {error}") from error
    if isinstance(image, Image.Image):
        try:
            image.load()  # a lazily loaded, truncated file fails here
            # an upright RGB image as it is: each of exif_transpose and convert would copy it (a twentieth of decoding)
            if image.mode == "RGB" and image.info.get("transparency") is None and exif_turn(image) is None:
                return image
            return to_rgb(ImageOps.exif_transpose(image))
        except OSError as error:
            raise ValueError(f"images[{index}]: corrupt image data: {error}") from error
    raise ValueError(f"images[{index}] is a {type(image).__name__}; expected a PIL image or an image file path.")


def qwen_vl_image_token_counts(image_grid_thw: torch.Tensor, merge_size: int) -> list[int]:
    """Number of vision tokens of each image in a Qwen2-VL family prompt: its patches `(t, h, w)` from
    `image_grid_thw` (num_images, 3), merged `merge_size` x `merge_size` into one token."""
    return (image_grid_thw.prod(dim=-1) // merge_size**2).tolist()


def llava_next_image_layout(
    image_size: Sequence[int], grid_pinpoints: Sequence[Sequence[int]], tile_size: Sequence[int], tile_tokens: int
) -> tuple[int, int]:
    """(tiles, image tokens) of an image of `image_size` (height, width) in LLaVA-NeXT's any-resolution layout.

    The image is resized and letterboxed into the pinpoint (height, width) that fits it best, which is cut into a
    grid of `tile_size` (height, width) tiles; a base view of the whole image comes first. Each tile gives a square
    grid of `tile_tokens` patches. `LlavaNextModel` joins the tiles' grids, drops the rows or columns that cover only
    the letterbox (`unpad_image`) and ends each row with `image_newline`; the base view's tokens come first, as
    `LlavaNextProcessor._get_number_of_features` counts them."""
    height, width = image_size
    best_height, best_width = select_best_resolution((height, width), grid_pinpoints)
    rows, cols = best_height // tile_size[0], best_width // tile_size[1]
    side = math.isqrt(tile_tokens)  # patches along a tile's side
    grid_height, grid_width = rows * side, cols * side
    # the same float operations as `unpad_image`, so that rounding falls the same way
    if width / height > grid_width / grid_height:
        grid_height -= 2 * ((grid_height - int(round(height * (grid_width / width), 7))) // 2)
    else:
        grid_width -= 2 * ((grid_width - int(round(width * (grid_height / height), 7))) // 2)
    return 1 + rows * cols, tile_tokens + grid_height * (grid_width + 1)


def fill_image_placeholders(prompt: str, image_texts: Iterable[str], placeholder: str = IMAGE_PAD) -> str:
    """Replace the i-th `placeholder` of `prompt` by `image_texts[i]` (a ValueError if the numbers of
    placeholders and images differ)."""
    pieces = prompt.split(placeholder)
    image_texts = list(image_texts)
    if len(pieces) - 1 != len(image_texts):
        raise ValueError(f"prompt has {len(pieces) - 1} {placeholder} placeholders but {len(image_texts)} images")
    return pieces[0] + "".join(image_text + piece for image_text, piece in zip(image_texts, pieces[1:]))


@dataclass(frozen=True)
class EncodedImages:
    """Output of an MLLM's image processor for a batch of images, with what each image becomes in a prompt.

    pixel_values: the processed pixels, in the family's layout (Qwen-VL: (total_patches, patch
        features); LLaVA: (num_images, channels, height, width); LLaVA-NeXT, InternVL, Idefics3:
        (total_tiles, channels, height, width), each image's tiles unpadded and in the images' order; Pixtral,
        Mistral 3: (num_images, channels, max_height, max_width), each image at its own size, zero-padded at the bottom
        and right to the largest).
    num_tokens: number of image placeholder tokens each image takes in the prompt.
    extra: other tensors the model needs beside the pixels, each indexed along its first dimension
        by image (Qwen-VL: image_grid_thw, (num_images, 3); LLaVA-NeXT: image_sizes, (num_images, 2),
        each image's (height, width) before processing, from which the model counts its tiles; Pixtral, Mistral 3:
        image_sizes, (num_images, 2), each image's (height, width) after resizing, the part of its padded pixels the
        vision tower reads) or like
        `pixel_values` (Idefics3: pixel_attention_mask, one per tile). `concatenate` joins batches by concatenating each
        extra tensor along its first dimension, which keeps either kind in the images' order.
    image_texts: the text each image's placeholder becomes in the prompt, for families that wrap or
        tile it (InternVL's `<img>...</img>`, Idefics3's grid of tiles, Gemma 3's `<start_of_image>...<end_of_image>`,
        Pixtral's rows of `[IMG]` ended by `[IMG_BREAK]` and `[IMG_END]`);
        None: the placeholder repeated `num_tokens` times.
    """

    pixel_values: torch.Tensor
    num_tokens: list[int]
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    image_texts: list[str] | None = None

    @classmethod
    def concatenate(cls, parts: Sequence[EncodedImages]) -> EncodedImages:
        """The images of `parts`, in order, as one batch."""
        pixel_values = [part.pixel_values for part in parts]
        if pixel_values[0].dim() == 4:
            # (images or tiles, channels, height, width): Pixtral's parts are each padded to their own largest image,
            # so they are padded on to the largest of all, with zeros at the bottom and right as PixtralImageProcessor
            # pads a batch (the model reads each image's own part, by `image_sizes`); the other families' are equal.
            height, width = max(pixels.shape[2] for pixels in pixel_values), max(pixels.shape[3] for pixels in pixel_values)
            pixel_values = [
                torch.nn.functional.pad(pixels, (0, width - pixels.shape[3], 0, height - pixels.shape[2]))
                for pixels in pixel_values
            ]
        return cls(
            pixel_values=torch.cat(pixel_values),
            num_tokens=[count for part in parts for count in part.num_tokens],
            extra={key: torch.cat([part.extra[key] for part in parts]) for key in parts[0].extra},
            image_texts=None if parts[0].image_texts is None else [text for part in parts for text in part.image_texts],
        )

    def image_text(self, index: int, placeholder: str) -> str:
        """What the `index`-th image's `placeholder` becomes in the prompt."""
        return placeholder * self.num_tokens[index] if self.image_texts is None else self.image_texts[index]


def mllm_image_seq_length(mllm_config) -> int | None:
    """Image tokens per image (LLaVA, Gemma 3) or per tile (LLaVA-NeXT, InternVL, Idefics3/SmolVLM) of an MLLM
    with config `mllm_config`, as the family's own processor counts them; None for the Qwen-VL, Pixtral and Mistral 3
    families, whose count follows each image's size. A LLaVA-NeXT image adds its tiles' tokens to those of its
    base view (`llava_next_image_layout`).

    Raises a ValueError for a LLaVA, LLaVA-NeXT, Pixtral or Gemma 3 config whose image tokens MAPLE cannot count."""
    model_type, vision = mllm_config.model_type, getattr(mllm_config, "vision_config", None)
    if mllm_family(mllm_config) == "pixtral":
        # Every patch is an image token: the "default" strategy would drop the batch's first one, and the model's split
        # of the features by `image_sizes` would then fail.
        if (strategy := mllm_config.vision_feature_select_strategy) != "full":
            raise ValueError(
                f"LLaVA with a 'pixtral' vision tower and vision_feature_select_strategy={strategy!r} is not supported: "
                "expected 'full' (every patch is an image token), as pixtral-12b sets it."
            )
        return None
    if model_type in LLAVA_MLLMS:
        name = "LLaVA-NeXT" if model_type == "llava_next" else "LLaVA"
        if vision.model_type not in ("clip_vision_model", "siglip_vision_model"):
            raise ValueError(
                f"{name} with a {vision.model_type!r} vision tower is not supported: expected a CLIP or SigLIP tower"
                + (" (a Pixtral tower goes with a 'llava' config)." if vision.model_type == "pixtral" else ".")
            )
        # The tower's tokens (its patches, plus CLS for a CLIP tower; SigLIP has none), less the first one
        # under the "default" feature strategy, which the model drops whatever it is.
        patches = (vision.image_size // vision.patch_size) ** 2
        has_cls = vision.model_type == "clip_vision_model"
        strategy = mllm_config.vision_feature_select_strategy
        tokens = patches + int(has_cls) - int(strategy == "default")
        if model_type == "llava":
            return tokens
        # `LlavaNextModel` lays each tile's tokens out as its square grid of patches: a kept CLS, or a patch
        # dropped, breaks the grid.
        if tokens != patches:
            expected = "default" if has_cls else "full"
            raise ValueError(
                f"LLaVA-NeXT with a {vision.model_type!r} vision tower and vision_feature_select_strategy={strategy!r} is "
                f"not supported: its tiles' features are not a grid of patches (expected {expected!r})."
            )
        # Each pinpoint (a resolution the image is resized to) is cut into whole tiles of the tower's image size.
        if uneven := [pinpoint for pinpoint in mllm_config.image_grid_pinpoints if any(side % vision.image_size for side in pinpoint)]:
            raise ValueError(
                f"LLaVA-NeXT image_grid_pinpoints {uneven} are not multiples of the vision tower's image_size "
                f"{vision.image_size}: not supported."
            )
        return patches
    if model_type == "internvl":
        # Each tile's patches, shuffled into `downsample_ratio**2` as many tokens.
        (height, width), (patch_height, patch_width) = _pair(vision.image_size), _pair(vision.patch_size)
        return int((height // patch_height) * (width // patch_width) * mllm_config.downsample_ratio**2)
    if model_type in IDEFICS3_MLLMS:
        return (vision.image_size // vision.patch_size) ** 2 // mllm_config.scale_factor**2
    if model_type == "gemma3":
        # `Gemma3MultiModalProjector` average-pools the tower's square grid of patches into a square grid of
        # `mm_tokens_per_image` tokens: any other number would not match the features it gives.
        tokens, patches_per_side = mllm_config.mm_tokens_per_image, vision.image_size // vision.patch_size
        side = math.isqrt(tokens)
        if side**2 != tokens or patches_per_side % side:
            raise ValueError(
                f"Gemma 3 mm_tokens_per_image={tokens} is not supported: it must be a square number whose side divides "
                f"the vision tower's {patches_per_side} patches per side (image_size // patch_size)."
            )
        return tokens
    return None


def mllm_image_processor_problem(mllm_config, image_processor) -> str | None:
    """Why `image_processor` cannot feed the MLLM with config `mllm_config`, or None. LLaVA-NeXT's model counts each
    image's tiles from its config (`image_grid_pinpoints`, the tower's `image_size`), so the image processor must cut
    them alike: a mismatch (e.g. pinpoints overridden on one side only, to spend fewer tiles) would otherwise fail deep
    in the forward with a bare shape error. Gemma 3: `gemma3_image_processor_problem`, and images resized to the vision
    tower's `image_size` (its SigLIP tower fails on any other with a bare shape error). Pixtral, Mistral 3: the image
    processor's patches are the tower's (it resizes images to whole patches, merged ones for Mistral 3, from which
    each image's tokens are counted), and it resizes no image beyond the tower's `image_size`, the reach of its 2-D
    rotary positions; it resizes, pads and does not crop, as `PixtralProcessor` needs. Qwen-VL: the image processor's
    `patch_size`, `merge_size` and `temporal_patch_size` are the vision tower's (the model reads the flattened patches
    back by them). LLaVA (a CLIP or SigLIP tower), InternVL, Idefics3/SmolVLM: images, or tiles, of the vision
    tower's `image_size` (`image_size_problem`): LLaVA's tower takes no other size, and InternVL's and Idefics3's image
    tokens are counted for a tile of that size (`mllm_image_seq_length`)."""
    if mllm_family(mllm_config) in PIXTRAL_MLLMS:
        return pixtral_image_processor_problem(mllm_config.vision_config, image_processor)
    if mllm_config.model_type in QWEN_VL_MLLMS:
        # the processor flattens patches, merges and frames as the vision tower reads them back
        vision = mllm_config.vision_config
        pairs = {"patch_size": "patch_size", "merge_size": "spatial_merge_size", "temporal_patch_size": "temporal_patch_size"}
        if unlike := [f"{ours}={getattr(image_processor, ours)} (vision_config.{theirs}={getattr(vision, theirs)})"
                      for ours, theirs in pairs.items() if getattr(image_processor, ours, None) != getattr(vision, theirs, None)]:
            return (f"the image processor cuts images unlike the model's vision tower: {', '.join(unlike)}: set both "
                    "alike")
        return None
    if mllm_config.model_type == "gemma3":
        if (problem := gemma3_image_processor_problem(image_processor)) is not None:
            return problem
        size, tower = image_processor.size, mllm_config.vision_config.image_size
        if (size.height, size.width) != (tower, tower):
            return (f"the image processor resizes images to {size.height}x{size.width}, but the model's vision tower "
                    f"takes {tower}x{tower} (vision_config.image_size): set both alike")
        return None
    if mllm_config.model_type in ("llava", "internvl", *IDEFICS3_MLLMS):
        return image_size_problem(image_processor, mllm_config.vision_config.image_size)
    if mllm_config.model_type != "llava_next":
        return None
    # `LlavaNextImageProcessor`'s tile side: its crop height, else its size's height or shortest edge
    crop_size, size = image_processor.crop_size, image_processor.size
    tile = (crop_size.height if crop_size else None) or size.height or size.shortest_edge
    model_pinpoints = [list(pinpoint) for pinpoint in mllm_config.image_grid_pinpoints]
    processor_pinpoints = [list(pinpoint) for pinpoint in image_processor.image_grid_pinpoints]
    if processor_pinpoints != model_pinpoints:
        return (f"the image processor's image_grid_pinpoints {processor_pinpoints} differ from the model config's "
                f"{model_pinpoints}, by which the model counts each image's tiles: set both alike")
    if tile != mllm_config.vision_config.image_size:
        return (f"the image processor cuts {tile}-pixel tiles, but the model's vision tower takes "
                f"{mllm_config.vision_config.image_size}-pixel images (vision_config.image_size): set both alike")
    return None


def dual_encoder_image_processor_problem(vision_config, image_processor) -> str | None:
    """Why `image_processor` cannot feed a dual encoder's vision tower of config `vision_config`, or None: a CLIP or
    SigLIP tower (`FIXED_SIZE_VISION_TOWERS`) takes images of its `image_size` only (`image_size_problem`); other
    towers (DINOv2, which interpolates its position embeddings; SigLIP2's NaFlex) take what their processor gives."""
    if vision_config.model_type not in FIXED_SIZE_VISION_TOWERS:
        return None
    return image_size_problem(image_processor, vision_config.image_size)


MAPLE_IMAGE_PROCESSOR_SETTINGS = "image_processor_kwargs (load_maple, from_backbone) or on processor.image_processor"
"""Where a `MapleProcessor`'s image processor takes its settings: where a `MixedImageSizesError` says to set them (a
`HardNegativeMiner.from_pretrained` one's: `dataset_builders.miner.FROM_PRETRAINED_IMAGE_PROCESSOR_SETTINGS`)."""


class MixedImageSizesError(ValueError):
    """Images an image processor made of several sizes, which a vision tower cannot take as one batch
    (`process_image_batch`).

    It holds the facts, so that a caller can name the images and where the settings are set in its own terms:
    `indices`, the positions of the two first images of different sizes in the caller's list; `image_sizes` and
    `processed_sizes`, their (height, width) before and after the image processor, named `image_processor_name`;
    `unset_settings`, its settings turned off that leave each image a size of its own (`"do_center_crop=False"`);
    `fixes`, the settings that make one size. `problem` and `advice` word them; the message is `advice()`, which names
    the images `images[i]` and the settings' place as `MapleProcessor`'s (`MAPLE_IMAGE_PROCESSOR_SETTINGS`).

    A processor loaded with `trust_remote_code` raises its checkpoint's copy of this class, another class of the same
    name: a caller catching it from either tells it by `is_mixed_image_sizes_error`."""

    def __init__(
        self,
        image_processor,
        indices: tuple[int, int],
        image_sizes: tuple[tuple[int, int], tuple[int, int]],
        processed_sizes: tuple[tuple[int, int], tuple[int, int]],
    ) -> None:
        self.indices = indices
        self.image_sizes = image_sizes
        self.processed_sizes = processed_sizes
        self.image_processor_name = type(image_processor).__name__
        self.unset_settings = [
            f"{name}=False" for name in ("do_resize", "do_center_crop") if getattr(image_processor, name, None) is False
        ]
        fixes = ["do_center_crop=True (images cropped to crop_size)"] if hasattr(image_processor, "do_center_crop") else []
        # with do_resize=False, `size` is never read
        resize = "do_resize=True, " if getattr(image_processor, "do_resize", None) is False else ""
        fixes.append(f"{resize}size={{'height': ..., 'width': ...}} (every image resized to it, its aspect ratio not kept)")
        self.fixes = " or ".join(fixes)
        super().__init__(self.advice())

    def problem(self, describe: Callable[[int], str] | None = None) -> str:
        """What is wrong: the two images, each named `describe(index)` (default `images[index]`), their sizes, and why
        the image processor made them so."""
        describe = describe or "images[{}]".format
        described = [
            f"{describe(index)} ({height}x{width} px) became {processed[0]}x{processed[1]}"
            for index, (height, width), processed in zip(self.indices, self.image_sizes, self.processed_sizes)
        ]
        settings = f" ({', '.join(self.unset_settings)})" if self.unset_settings else ""
        return (f"{' but '.join(described)} (height x width): the image processor ({self.image_processor_name}) gives "
                f"each image a size that follows its own{settings}, but the vision tower takes a batch at one size")

    def advice(
        self, describe: Callable[[int], str] | None = None, set_in: str = MAPLE_IMAGE_PROCESSOR_SETTINGS
    ) -> str:
        """`problem(describe)` and what to do about it: set `fixes` in `set_in` (where the caller's image processor
        takes its settings), or give images of one size."""
        return f"{self.problem(describe)}. Set {self.fixes} in {set_in}, or give images of one size."

    def __reduce__(self) -> tuple:
        # Rebuilt from its message and attributes, without __init__ (which takes the image processor): BaseException's
        # own would call the class with the message alone, a TypeError in pickle.loads (multiprocessing, a datasets map
        # with num_proc).
        return copyreg.__newobj__, (type(self), *self.args), self.__dict__


def is_mixed_image_sizes_error(error: BaseException) -> bool:
    """Whether `error` is a `MixedImageSizesError` of this module or of a checkpoint's own copy of it: a processor
    loaded with `trust_remote_code` (before this package is imported) runs its checkpoint's processing_maple.py, whose
    class `except MixedImageSizesError` does not catch. Told by the class's name and module, the one thing both copies
    share: the checkpoint's copy cannot import this package, which it must load without."""
    return any(
        cls.__name__ == "MixedImageSizesError" and cls.__module__.rpartition(".")[2] == "processing_maple"
        for cls in type(error).__mro__
    )


def process_image_batch(image_processor, images: Sequence[Image.Image], first_index: int = 0) -> BatchFeature:
    """What `image_processor` makes of `images` (the caller's `images[first_index:]`), in PyTorch tensors, for a dual
    encoder's vision tower; a `MixedImageSizesError` where it makes them of several sizes. A tower that takes any size
    (DINOv2) still takes one per batch, and an image processor whose output follows each image's aspect ratio (CLIP's
    without its center crop) makes several: transformers then fails with numpy's bare "inhomogeneous shape" error, so
    the sizes are checked before the tensors are made. Resizing the images to one size, or padding them, would change
    what the tower sees of each image by the batch it is in, so the error names the two first of different sizes."""
    processed = image_processor(images=images, return_tensors=None)
    sizes = [tuple(pixels.shape[-2:]) for pixels in processed["pixel_values"]]
    other = next((position for position, size in enumerate(sizes) if size != sizes[0]), None)
    if other is not None:
        raise MixedImageSizesError(
            image_processor,
            indices=(first_index, first_index + other),
            image_sizes=((images[0].height, images[0].width), (images[other].height, images[other].width)),
            processed_sizes=(sizes[0], sizes[other]),
        )
    return processed.convert_to_tensors("pt")


def image_size_problem(image_processor, image_size: int | Sequence[int]) -> str | None:
    """Why `image_processor` does not make images (or tiles) of `image_size` pixels (an int, or height and width), the
    only size a vision tower takes, or None. Read from what it makes of one image twice as wide as high (without a
    center crop, CLIP's size follows the aspect ratio); one of the tower's own size where it does not resize (images
    sized beforehand, as `image_processor_kwargs_problem` lets pass)."""
    height, width = _pair(image_size)
    probe = (width, height) if getattr(image_processor, "do_resize", True) is False else (2 * width, height)
    pixel_values = image_processor(images=[Image.new("RGB", probe)], return_tensors="pt")["pixel_values"]
    made = tuple(pixel_values.shape[-2:])
    if made == (height, width):
        return None
    return (f"the image processor makes {made[0]}x{made[1]}-pixel images (or tiles) of a {probe[1]}x{probe[0]} one "
            f"(height x width), but the model's vision tower takes {height}x{width} (vision_config.image_size): set its "
            "output size to the tower's (crop_size, or size without center crop; InternVL: size; Idefics3/SmolVLM: "
            "max_image_size)")


# `from_pretrained` arguments that say where and how files are read, not what the image processor does
IMAGE_PROCESSOR_LOADING_KEYWORDS = (
    "backend", "revision", "token", "trust_remote_code", "cache_dir", "force_download", "local_files_only", "subfolder",
)


def image_processor_loading_problem(
    image_processor_kwargs: dict[str, Any] | None, allowed: Sequence[str] = ()
) -> str | None:
    """Why `image_processor_kwargs` cannot be passed to the image processor's `from_pretrained` beside the loading
    arguments (`IMAGE_PROCESSOR_LOADING_KEYWORDS` but those `allowed`: a caller's own argument given twice is a
    TypeError, another would reach the image processor's files only), or None. Checked before anything is read."""
    if loading := [key for key in image_processor_kwargs or {} if key in IMAGE_PROCESSOR_LOADING_KEYWORDS and key not in allowed]:
        return (f"image_processor_kwargs hold {', '.join(loading)}: loading arguments, not image processor settings (they "
                "would reach the image processor's files only)")
    return None


def load_image_processor(
    name_or_path: str, image_processor_kwargs: dict[str, Any] | None = None, *, allowed: Sequence[str] = (),
    **loading: Any,
):
    """`AutoImageProcessor.from_pretrained(name_or_path, **loading)`, its settings overridden by
    `image_processor_kwargs`. A ValueError naming `name_or_path` for a loading argument among the settings (but those
    `allowed`; `image_processor_loading_problem`), before anything is read, and for a setting the image processor does
    not have or fails on (`image_processor_kwargs_problem`)."""
    if (problem := image_processor_loading_problem(image_processor_kwargs, allowed)) is not None:
        raise ValueError(f"{name_or_path}: {problem}")
    image_processor = AutoImageProcessor.from_pretrained(name_or_path, **loading, **(image_processor_kwargs or {}))
    if (problem := image_processor_kwargs_problem(image_processor, image_processor_kwargs)) is not None:
        raise ValueError(f"{name_or_path}: {problem}")
    return image_processor


def image_processor_kwargs_problem(image_processor, image_processor_kwargs: dict[str, Any] | None) -> str | None:
    """Why `image_processor_kwargs` are not all usable settings of `image_processor`, loaded with them, or None:
    `from_pretrained` silently drops keyword arguments the image processor class does not know, and takes values it
    cannot use until the first image. A setting is known if it is an attribute or one of the class's `valid_kwargs`
    (Qwen-VL's `max_pixels` is stored as `size["longest_edge"]`, so attributes alone cannot tell); the settings are
    then tried on one image, 448 x 224: its sides are whole numbers of every family's patch grid (Qwen2-VL's 28 px,
    Qwen3-VL's 32), so settings that leave images unresized (`do_resize=False`, for images sized beforehand) pass."""
    if not image_processor_kwargs:
        return None
    valid_kwargs = type(image_processor).valid_kwargs
    known = {key for typed_dict in valid_kwargs.__mro__ for key in getattr(typed_dict, "__annotations__", {})}
    if unknown := [key for key in image_processor_kwargs if key not in known and not hasattr(image_processor, key)]:
        return (f"{', '.join(unknown)} is not a setting of its image processor ({type(image_processor).__name__}). Image "
                "size settings differ by family: Qwen-VL max_pixels, InternVL max_patches (tiles), Idefics3/SmolVLM "
                "size={'longest_edge': ...}")
    try:
        image_processor(images=[Image.new("RGB", (448, 224))])
    except Exception as error:  # noqa: BLE001 (any failure of a bad value: transformers raises several kinds)
        problem = " ".join(str(error).split())
        return (f"its image processor ({type(image_processor).__name__}) cannot process an image with "
                f"image_processor_kwargs {image_processor_kwargs} ({type(error).__name__}: {problem})")
    return None


def pixtral_image_processor_problem(vision_config, image_processor) -> str | None:
    """Why `image_processor` cannot feed a Pixtral vision tower of config `vision_config`, or None
    (`mllm_image_processor_problem`)."""
    # Each image's tokens are counted from its size after resizing to whole patches; images of several sizes are
    # padded into one batch, and `image_sizes` gives back each one's own.
    switched = {"do_resize": False, "do_pad": False, "do_center_crop": True}
    if unsupported := [f"{name}={value}" for name, value in switched.items() if getattr(image_processor, name, None) is value]:
        return (f"the image processor sets {', '.join(unsupported)}, but each image must be resized to whole patches "
                "and padded into the batch as PixtralProcessor does: set do_resize=True, do_pad=True, do_center_crop=False")
    (height, width), tower_patch = pixtral_patch_size(image_processor), vision_config.patch_size
    if (height, width) != (tower_patch, tower_patch):
        return (f"the image processor's patch_size is {height}x{width}, but the model's vision tower's is "
                f"{tower_patch}x{tower_patch} (vision_config.patch_size): set both alike")
    longest_edge = image_processor.size.longest_edge
    if not longest_edge or longest_edge > vision_config.image_size:
        return (f"the image processor's size is {dict(image_processor.size)}, but the model's vision tower takes images "
                f"of at most {vision_config.image_size} px a side (vision_config.image_size): set "
                f"size={{'longest_edge': {vision_config.image_size}}} or less")
    return None


def pixtral_patch_size(image_processor) -> tuple[int, int]:
    """(height, width) of a Pixtral image processor's `patch_size`, which it keeps as given: an int or a dict."""
    size = get_size_dict(image_processor.patch_size, default_to_square=True)
    return size["height"], size["width"]


def mllm_spatial_merge_size(mllm_config) -> int:
    """Patches merged along each side into one image token before the language model: Mistral 3's patch merger
    (`spatial_merge_size`), 1 for the other families whose image tokens `encode_mllm_images` counts by it (Pixtral)."""
    return mllm_config.spatial_merge_size if mllm_config.model_type == "mistral3" else 1


def gemma3_image_processor_problem(image_processor) -> str | None:
    """Why a Gemma 3 `image_processor` cannot be used, or None. Pan-and-scan (`do_pan_and_scan`, off in Gemma 3's
    checkpoints) is refused: it adds crops whose number follows each image's aspect ratio, and `Gemma3Processor` puts
    them in the prompt inside an English sentence ("Here is the original image ... and here are some crops to help you
    see better ..."), which an embedding prompt would have to carry; MAPLE prompts take each image whole."""
    if getattr(image_processor, "do_pan_and_scan", None):
        return "the image processor has do_pan_and_scan=True, which MAPLE does not support: set do_pan_and_scan=False"
    return None


QWEN_VL_MAX_ASPECT_RATIO = 200  # Qwen-VL image processors (`smart_resize`) refuse more elongated images


def mllm_image_problem(
    mllm_type: str, size: tuple[int, int], image_processor=None, spatial_merge_size: int = 1
) -> str | None:
    """Why an image of `size` (width, height) cannot go through a `mllm_type` image processor and model, or None.
    Pixtral and Mistral 3 (checked when `image_processor` is given):

    - an image so elongated that scaling its long side down to the image processor's `longest_edge` leaves its short
      side no pixel (the processor fails with a bare size error);
    - Mistral 3: an image that fits in one token cell (`patch_size` x `spatial_merge_size` px: 28 x 28 for its
      checkpoints) makes a single image token, and `Mistral3Model.get_image_features` squeezes a batch of one image
      token to no token dimension (a bare RuntimeError in `torch.split` whenever that image is alone in a batch)."""
    ratio = max(size) / max(1, min(size))
    if mllm_type in QWEN_VL_MLLMS and ratio > QWEN_VL_MAX_ASPECT_RATIO:
        return f"aspect ratio {ratio:.0f}:1 is above the {QWEN_VL_MAX_ASPECT_RATIO}:1 that {mllm_type} image processors accept"
    if mllm_type in PIXTRAL_MLLMS and image_processor is not None:
        longest_edge = image_processor.size.longest_edge
        # the processor's own arithmetic (`get_resize_output_image_size`)
        scale = max(1.0, max(size) / longest_edge)
        resized = [math.floor(side / scale) for side in size]
        if min(resized) == 0:
            return (f"aspect ratio {ratio:.0f}:1 leaves no pixel of its short side once its long side is resized to "
                    f"{longest_edge} px, as the {mllm_type} image processor does")
        cell = pixtral_patch_size(image_processor)[0] * spatial_merge_size
        if mllm_type == "mistral3" and max(resized) <= cell:
            return (f"{size[0]}x{size[1]} px fits in one {cell}x{cell} token cell, and a single image token is more "
                    "than transformers' Mistral 3 model can take: use an image larger than one cell")
    return None


def check_tokens_known(tokenizer, tokens: Iterable[str], needed_by: str) -> None:
    """Raise a ValueError naming the first of `tokens` that `tokenizer` does not have (`needed_by`: what needs it)."""
    for token in tokens:
        if tokenizer.convert_tokens_to_ids(token) in (None, tokenizer.unk_token_id):
            raise ValueError(f"The tokenizer has no {token!r} token, which {needed_by} need.")


def mllm_image_tokens(mllm_type: str, tokenizer) -> tuple[str, ...]:
    """The special tokens, besides the image placeholder, that an `mllm_type` prompt puts around images."""
    if mllm_type in QWEN_VL_MLLMS:
        return (VISION_START, VISION_END)
    if mllm_type == "internvl":
        return (getattr(tokenizer, "start_image_token", None) or "<img>", getattr(tokenizer, "end_image_token", None) or "</img>")
    if mllm_type in IDEFICS3_MLLMS:
        return (FAKE_IMAGE_TOKEN, GLOBAL_IMAGE_TOKEN)
    if mllm_type == "gemma3":
        return (getattr(tokenizer, "boi_token", None) or START_OF_IMAGE, getattr(tokenizer, "eoi_token", None) or END_OF_IMAGE)
    if mllm_type in PIXTRAL_MLLMS:
        return (IMAGE_BREAK, IMAGE_END)
    return ()


def encode_mllm_images(
    mllm_type: str,
    image_processor,
    tokenizer,
    images: Sequence[Any],
    image_token: str,
    image_seq_length: int | None,
    first_index: int = 0,
    spatial_merge_size: int = 1,
) -> EncodedImages:
    """Pixels of `images` (PIL images or file paths) for an MLLM of `mllm_type`, and what each image's
    `image_token` placeholder becomes in a prompt, as the family's own processor builds them:

    - Qwen-VL: dynamic-resolution patches, one token per `merge_size` x `merge_size` merged patches (2 x 2 in their
      checkpoints);
    - LLaVA: fixed-size images, `image_seq_length` tokens each;
    - LLaVA-NeXT: a base view plus a grid of tiles that follows the image's size, `image_seq_length` tokens per tile
      less the letterbox, plus one `image_newline` per row (`llava_next_image_layout`);
    - InternVL: up to `max_patches` tiles plus a thumbnail (`InternVLProcessor`'s tiling), each tile
      `image_seq_length` tokens, the whole image between `<img>` and `</img>`;
    - Idefics3, SmolVLM: a grid of tiles plus a global view, each tile `image_seq_length` tokens
      after its `<row_r_col_c>` tag (`Idefics3Processor`'s prompt string);
    - Gemma 3: fixed-size images, `image_seq_length` tokens each between `<start_of_image>` and `<end_of_image>`, set
      apart by blank lines (`Gemma3Processor.full_image_sequence`); pan-and-scan crops are refused
      (`gemma3_image_processor_problem`);
    - Pixtral, Mistral 3: each image at its own size, resized to whole token cells (`patch_size` x
      `spatial_merge_size` pixels, `mllm_spatial_merge_size`), a row of `[IMG]` per row of cells, each row ended by
      `[IMG_BREAK]` and the last by `[IMG_END]` (`PixtralProcessor.replace_image_token`).

    An image that cannot be read, or that the family's image processor would refuse (`mllm_image_problem`), is a
    ValueError naming it `images[first_index + position]`.
    """
    images = [load_image(image, index) for index, image in enumerate(images, start=first_index)]
    for index, image in enumerate(images, start=first_index):
        if (problem := mllm_image_problem(mllm_type, image.size, image_processor, spatial_merge_size)) is not None:
            raise ValueError(f"images[{index}]: {problem}.")
    if mllm_type in QWEN_VL_MLLMS:
        processed = image_processor(images=images, return_tensors="pt")
        grid_thw = processed["image_grid_thw"]
        num_tokens = qwen_vl_image_token_counts(grid_thw, image_processor.merge_size)
        return EncodedImages(processed["pixel_values"], num_tokens, {"image_grid_thw": grid_thw})
    if mllm_type == "llava":
        pixel_values = image_processor(images=images, return_tensors="pt")["pixel_values"]
        return EncodedImages(pixel_values, [image_seq_length] * len(images))
    if mllm_type == "gemma3":
        pixel_values = image_processor(images=images, return_tensors="pt")["pixel_values"]
        start, end = mllm_image_tokens(mllm_type, tokenizer)
        image_text = f"\n\n{start}{image_token * image_seq_length}{end}\n\n"
        return EncodedImages(pixel_values, [image_seq_length] * len(images), image_texts=[image_text] * len(images))
    if mllm_type in PIXTRAL_MLLMS:
        # Resized to whole cells of merged patches and padded to the batch's largest image, as PixtralProcessor asks.
        cell = pixtral_patch_size(image_processor)[0] * spatial_merge_size
        processed = image_processor(images=images, patch_size=cell, return_tensors="pt")
        image_sizes = processed["image_sizes"]
        grids = [(height // cell, width // cell) for height, width in image_sizes.tolist()]
        image_break, image_end = mllm_image_tokens(mllm_type, tokenizer)
        image_texts = [((image_token * cols + image_break) * rows).removesuffix(image_break) + image_end for rows, cols in grids]
        num_tokens = [rows * cols for rows, cols in grids]
        return EncodedImages(processed["pixel_values"], num_tokens, {"image_sizes": image_sizes}, image_texts=image_texts)
    if mllm_type == "llava_next":
        # Padded to the batch's most tiles, as `LlavaNextProcessor` asks; each image's own tiles are cut back out, so
        # that batches join by concatenation and no padding tile reaches the model.
        processed = image_processor(images=images, do_pad=True, return_tensors="pt")
        padded, image_sizes = processed["pixel_values"], processed["image_sizes"]
        layouts = [
            llava_next_image_layout(size, image_processor.image_grid_pinpoints, padded.shape[-2:], image_seq_length)
            for size in image_sizes.tolist()
        ]
        pixel_values = torch.cat([pixels[:tiles] for pixels, (tiles, _) in zip(padded, layouts)])
        return EncodedImages(pixel_values, [tokens for _, tokens in layouts], {"image_sizes": image_sizes})
    if mllm_type == "internvl":
        # InternVLProcessor tiles whatever the image processor's own `crop_to_patches` says;
        # `max_patches` caps the tiles, and 1 turns tiling off.
        processed = image_processor(images=images, crop_to_patches=True, return_tensors="pt")
        num_tokens = [int(tiles) * image_seq_length for tiles in processed["num_patches"]]
        start, end = mllm_image_tokens(mllm_type, tokenizer)
        image_texts = [start + image_token * count + end for count in num_tokens]
        return EncodedImages(processed["pixel_values"], num_tokens, image_texts=image_texts)
    if mllm_type in IDEFICS3_MLLMS:
        from transformers.models.smolvlm.processing_smolvlm import get_image_prompt_string

        # One sample holding every image: (1, total_tiles, ...) and one row/column count per image.
        processed = image_processor(images=images, return_row_col_info=True, return_tensors="pt")
        grids = list(zip(processed["rows"][0], processed["cols"][0]))
        image_texts = [
            get_image_prompt_string(rows, cols, image_seq_length, FAKE_IMAGE_TOKEN, image_token, GLOBAL_IMAGE_TOKEN)
            for rows, cols in grids
        ]
        num_tokens = [(rows * cols + 1) * image_seq_length for rows, cols in grids]
        extra = {"pixel_attention_mask": processed["pixel_attention_mask"][0]}
        return EncodedImages(processed["pixel_values"][0], num_tokens, extra, image_texts=image_texts)
    raise ValueError(f"Unsupported MLLM {mllm_type!r}: expected one of {MLLM_FAMILIES}.")


def mllm_pixel_inputs(mllm_type: str, images: EncodedImages) -> dict[str, torch.Tensor]:
    """The keyword arguments an MLLM of `mllm_type` takes for the pixels of `images`, for prompts that
    hold those images in order."""
    inputs = {"pixel_values": images.pixel_values, **images.extra}
    if mllm_type in IDEFICS3_MLLMS:
        # The whole batch's tiles as one sample's images: the model fills the `<image>` tokens of all
        # prompts in reading order, so which prompt a tile belongs to follows from the prompts.
        inputs = {key: value.unsqueeze(0) for key, value in inputs.items()}
    return inputs


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


class MapleProcessor(ProcessorMixin):
    r"""
    Prepares texts and images for [`MapleModel`]: one tokenizer and one image processor.

    For an MLLM backbone, every input is wrapped in a summarisation prompt (`image_prompt`,
    `text_prompt`; the paper's by default) and an image becomes a prompt whose `{image}` slot holds
    the family's image tokens (`encode_mllm_images`); its prompt tensors are returned as
    `image_input_ids`, `image_attention_mask` (and, for Qwen-VL and Gemma 3, `image_mm_token_type_ids`), so
    texts and images fit in one batch.
    For a dual encoder, texts are tokenised as they are (`text_prompt` defaults to `"{text}"`).

    Args:
        image_processor: the backbone's image processor.
        tokenizer: the backbone's tokenizer.
        backbone (`str`): `"mllm"` or `"dual_encoder"`, as in [`MapleConfig`].
        mllm_type (`str`, defaults to `"qwen2_vl"`): the MLLM's family, `mllm_family(config)` (one of
            `MLLM_FAMILIES`): its `model_type`, but `"pixtral"` for a `llava` config with a Pixtral vision tower; the
            Qwen-VL family shares one prompt format.
        image_token (`str`, *optional*): the MLLM's image placeholder token (the one at its config's
            `image_token_id`); defaults to Qwen-VL's `<|image_pad|>`.
        image_seq_length (`int`, *optional*): image tokens per image (LLaVA, Gemma 3) or per tile (LLaVA-NeXT, a
            square number; InternVL, Idefics3/SmolVLM), `mllm_image_seq_length(config)`; the Qwen-VL, Pixtral and
            Mistral 3 families need none.
        spatial_merge_size (`int`, defaults to 1): Pixtral, Mistral 3: patches merged along each side into one image
            token, `mllm_spatial_merge_size(config)` (Mistral 3's patch merger).
        image_prompt (`str`, *optional*): template with an `{image}` slot (MLLM only).
        text_prompt (`str`, *optional*): template with a `{text}` slot.
        max_text_length (`int`, *optional*): truncate each text to this many tokens before it is put
            into `text_prompt`, so a long text never cuts off the instruction. Dual encoders
            otherwise truncate to the tokenizer's `model_max_length` (77 for CLIP).
        text_padding (`str`, defaults to `"longest"`): `"longest"` or `"max_length"` (every text
            prompt padded to the same length: `max_text_length` tokens plus the template's and the
            special tokens, or without `max_text_length` the tower's `model_max_length`; SigLIP's
            text tower pools the last position and needs it).
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        backbone: str = "mllm",
        image_prompt: str | None = None,
        text_prompt: str | None = None,
        max_text_length: int | None = None,
        text_padding: str = "longest",
        mllm_type: str = "qwen2_vl",
        image_token: str | None = None,
        image_seq_length: int | None = None,
        spatial_merge_size: int = 1,
        **kwargs,
    ):
        if backbone not in BACKBONES:
            raise ValueError(f"Unknown backbone {backbone!r}: expected one of {BACKBONES}.")
        if text_padding not in ("longest", "max_length"):
            raise ValueError(f"Unknown text_padding {text_padding!r}: expected 'longest' or 'max_length'.")
        if mllm_type not in MLLM_FAMILIES:
            raise ValueError(f"Unsupported MLLM {mllm_type!r}: expected one of {MLLM_FAMILIES}.")
        if backbone == "mllm" and mllm_type not in SIZE_DEPENDENT_MLLMS and image_seq_length is None:
            raise ValueError(
                f"A {mllm_type} processor needs `image_seq_length` (image tokens per image or tile): "
                "build it with MapleProcessor.from_backbone, or pass mllm_image_seq_length(model_config)."
            )
        if mllm_type == "llava_next" and image_seq_length is not None and math.isqrt(image_seq_length) ** 2 != image_seq_length:
            raise ValueError(
                f"A llava_next processor's `image_seq_length` is the tokens of one tile, a square grid of patches: "
                f"got {image_seq_length}, not a square number."
            )
        self.text_padding = text_padding
        self.backbone = backbone
        self.mllm_type = mllm_type
        self.image_token = image_token or IMAGE_PAD
        self.image_seq_length = image_seq_length
        self.spatial_merge_size = spatial_merge_size
        self.image_prompt = image_prompt or (MLLM_IMAGE_PROMPT if backbone == "mllm" else None)
        self.text_prompt = text_prompt or (MLLM_TEXT_PROMPT if backbone == "mllm" else "{text}")
        if self.image_prompt is not None and "{image}" not in self.image_prompt:
            raise ValueError(f"image_prompt must contain '{{image}}', got {self.image_prompt!r}.")
        if "{text}" not in self.text_prompt:
            raise ValueError(f"text_prompt must contain '{{text}}', got {self.text_prompt!r}.")
        if max_text_length is not None and max_text_length < 1:
            raise ValueError(f"max_text_length must be at least 1 (a token count), got {max_text_length}: "
                             "texts cut to nothing would all embed as the bare prompt.")
        self.max_text_length = max_text_length
        super().__init__(image_processor, tokenizer, **kwargs)
        if tokenizer is not None and tokenizer.pad_token is None:
            raise ValueError(
                f"The tokenizer ({type(tokenizer).__name__}) has no pad token, which batches of texts and image prompts "
                "need: set `tokenizer.pad_token` (e.g. to its EOS token) first."
            )
        if tokenizer is not None and set(tokenizer.get_vocab()) <= set(tokenizer.all_special_tokens):
            # what transformers builds from a checkpoint without tokenizer files: every text would be the same ids
            raise ValueError(
                f"The tokenizer ({type(tokenizer).__name__}) holds only its special tokens "
                f"{sorted(tokenizer.get_vocab())}, so every text would embed alike; transformers builds such an empty "
                "one for a checkpoint saved without its tokenizer files: save the tokenizer with the model."
            )
        if tokenizer is not None and text_padding == "max_length" and max_text_length is None and self._text_tower_limit() is None:
            reason = "an MLLM's texts have no fixed length" if backbone == "mllm" else "the tokenizer sets no `model_max_length`"
            raise ValueError(f"text_padding='max_length' needs `max_text_length`: {reason} to pad to.")
        if backbone == "mllm":
            image_tokens = (self.image_token, *mllm_image_tokens(mllm_type, tokenizer))
            check_tokens_known(tokenizer, image_tokens, needed_by=f"{mllm_type} image prompts")
        if backbone == "mllm" and mllm_type == "gemma3" and (problem := gemma3_image_processor_problem(image_processor)):
            raise ValueError(f"A gemma3 processor: {problem}.")

    def __call__(
        self,
        text: str | list[str] | None = None,
        images: Any = None,
        first_index: int = 0,
        return_tensors: str = "pt",
        **kwargs,
    ) -> BatchFeature:
        """`first_index`: the position of the first text and image in the caller's lists, by which error messages
        name a bad item (`MapleModel.encode` passes each batch's start). Inputs are prepared as the model was
        trained, by the processor's own settings (`text_prompt`, `text_padding`, `max_text_length`): tokenizer and
        image-processor arguments are refused, not ignored; `videos` and `audio` (which `ProcessorMixin` passes) may
        only be None.

        Returns a `BatchFeature` of PyTorch tensors: `input_ids`, `attention_mask` for texts, and
        `pixel_values` for images; for an MLLM also `image_input_ids`, `image_attention_mask` and the
        family's own inputs (Qwen-VL: `image_grid_thw`, `image_mm_token_type_ids`; LLaVA-NeXT, Pixtral, Mistral 3: `image_sizes`;
        Idefics3/SmolVLM: `pixel_attention_mask`; Gemma 3: `image_mm_token_type_ids`); for a SigLIP2 dual encoder also `pixel_attention_mask` and `spatial_shapes`."""
        if unexpected := sorted(key for key, value in kwargs.items() if value is not None or key not in ("videos", "audio")):
            raise TypeError(
                f"MapleProcessor does not take {unexpected}: it prepares texts and images by its own settings "
                "(`text_prompt`, `text_padding`, `max_text_length`; set them on the processor)."
            )
        if return_tensors != "pt":
            raise ValueError(f"MapleProcessor returns PyTorch tensors: return_tensors must be 'pt', got {return_tensors!r}.")
        if text is None and images is None:
            raise ValueError("MapleProcessor needs `text`, `images` or both.")
        data: dict[str, torch.Tensor] = {}
        if text is not None:
            data.update(self._texts(text, first_index))
        if images is not None:
            data.update(self._images(images, first_index))
        return BatchFeature(data=data, tensor_type="pt")

    def _texts(self, texts: str | list[str], first_index: int) -> dict[str, torch.Tensor]:
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise ValueError("`text` is an empty list.")
        for index, text in enumerate(texts, start=first_index):
            if not isinstance(text, str):
                raise ValueError(f"text[{index}] is a {type(text).__name__}; expected a string.")
            if not text.strip():
                raise ValueError(f"text[{index}] is an empty string.")
        if self.max_text_length is not None:
            texts = self._truncated(texts)
        prompts = [self.text_prompt.format(text=text) for text in texts]
        model_limit = self._text_tower_limit()
        encoded = self.tokenizer(prompts, truncation=model_limit is not None, max_length=model_limit)
        length = max(len(ids) for ids in encoded["input_ids"])
        if self.text_padding == "max_length":
            length = max(length, self._max_length_padding(model_limit))
        # A dual encoder's text tower numbers positions from the first token, and `cls` pooling reads that token: left
        # padding (a tokenizer set up for generation) would make a text's embedding depend on the batch's longest.
        padding_side = "right" if self.backbone == "dual_encoder" else None  # None: the tokenizer's own
        encoded = self.tokenizer.pad(
            encoded, padding="max_length", max_length=length, padding_side=padding_side, return_tensors="pt"
        )
        inputs = {"input_ids": encoded["input_ids"]}
        # Towers trained without a text mask (SigLIP) have tokenizers that return none; follow them.
        if "attention_mask" in encoded:
            inputs["attention_mask"] = encoded["attention_mask"]
        return inputs

    def _text_tower_limit(self) -> int | None:
        # An MLLM reads long contexts; a dual encoder's text tower has a hard position limit, which its
        # tokenizer records (transformers' sentinel for "unset" is a huge integer).
        limit = self.tokenizer.model_max_length
        return limit if self.backbone == "dual_encoder" and limit < 1_000_000 else None

    def _max_length_padding(self, model_limit: int | None) -> int:
        """Length of every text prompt under `text_padding="max_length"`: the longest prompt a text
        of `max_text_length` tokens makes (the template and the special tokens included), capped by
        the tower's limit; without `max_text_length`, the tower's limit (64 for SigLIP)."""
        if self.max_text_length is None:
            return model_limit
        template_tokens = len(self.tokenizer(self.text_prompt.format(text=""))["input_ids"])
        length = self.max_text_length + template_tokens
        return length if model_limit is None else min(length, model_limit)

    def _truncated(self, texts: list[str]) -> list[str]:
        """`texts`, each cut to at most `max_text_length` tokens, at a token boundary of the text itself.

        One batched tokenisation finds the texts over the limit; only those are cut. A byte-level BPE splits a
        multi-byte character across tokens, so a cut there (or decoding the first tokens) would leave a broken
        character that re-tokenises longer: the cut moves back a token at a time until the cut text tokenises within
        the limit."""
        encoded = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=self.tokenizer.is_fast)
        offsets = encoded.get("offset_mapping") or [None] * len(texts)  # only fast tokenizers give character offsets
        return [
            text if len(ids) <= self.max_text_length else self._cut(text, ids, text_offsets)
            for text, ids, text_offsets in zip(texts, encoded["input_ids"], offsets)
        ]

    def _cut(self, text: str, ids: list[int], offsets: list[tuple[int, int]] | None) -> str:
        """`text`, of tokens `ids` (character `offsets`, if known), cut to at most `max_text_length` tokens."""
        for keep in range(self.max_text_length, 0, -1):
            if offsets is not None:
                cut = text[: offsets[keep - 1][1]]
            else:
                cut = self.tokenizer.decode(ids[:keep], skip_special_tokens=True)
            if len(self.tokenizer(cut, add_special_tokens=False)["input_ids"]) <= self.max_text_length:
                return cut
        return ""

    def _images(self, images: Any, first_index: int) -> dict[str, torch.Tensor]:
        images = [images] if isinstance(images, (Image.Image, str, os.PathLike)) else list(images)
        if not images:
            raise ValueError("`images` is an empty list.")
        if self.backbone == "dual_encoder":
            images = [load_image(image, index) for index, image in enumerate(images, start=first_index)]
            processed = process_image_batch(self.image_processor, images, first_index)
            return {key: processed[key] for key in DUAL_ENCODER_IMAGE_INPUTS if key in processed}
        encoded = encode_mllm_images(
            self.mllm_type, self.image_processor, self.tokenizer, images, self.image_token, self.image_seq_length,
            first_index, self.spatial_merge_size,
        )
        # Qwen-VL's chat template puts its vision markers around the placeholder; other families'
        # markers are part of what the placeholder becomes (`EncodedImages.image_texts`).
        image_slot = VISION_START + self.image_token + VISION_END if self.mllm_type in QWEN_VL_MLLMS else self.image_token
        image_prompt = self.image_prompt.format(image=image_slot)
        prompts = [
            fill_image_placeholders(image_prompt, [encoded.image_text(index, self.image_token)], self.image_token)
            for index in range(len(images))
        ]
        tokenized = self.tokenizer(prompts, padding=True, return_tensors="pt")
        inputs = {
            **mllm_pixel_inputs(self.mllm_type, encoded),
            "image_input_ids": tokenized["input_ids"],
            "image_attention_mask": tokenized["attention_mask"],
        }
        if self.mllm_type in IMAGE_TOKEN_TYPE_INPUTS:
            # Qwen-VL's multimodal RoPE and Gemma 3's causal mask find the image tokens by this mask.
            image_token_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
            inputs["image_mm_token_type_ids"] = (tokenized["input_ids"] == image_token_id).to(torch.int32)
        return inputs

    def to_dict(self) -> dict[str, Any]:
        # transformers saves the image processor under its backend-neutral type, and loading picks torchvision's
        # where it is installed, PIL's elsewhere: the two resize differently, so the backend is recorded too.
        output = super().to_dict()
        if self.image_processor is not None:
            output[IMAGE_PROCESSOR_BACKEND_KEY] = self.image_processor.backend
        return output

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> "MapleProcessor":
        """`ProcessorMixin.from_pretrained`, with the image processor of the backend it was saved with (`"pil"` or
        `"torchvision"`, recorded by `save_pretrained`) unless `backend` is given; transformers' choice for a processor
        saved without one."""
        # Not passed on: transformers would hand `backend` to the tokenizer as well, which takes it for its own
        # (tokenizers or sentencepiece) and saves it so.
        backend = kwargs.pop("backend", None)
        processor = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        if backend is None:
            processor_dict, _ = cls.get_processor_dict(pretrained_model_name_or_path, **kwargs)
            backend = processor_dict.get(IMAGE_PROCESSOR_BACKEND_KEY)
        if backend is not None and processor.image_processor.backend != backend:
            processor.image_processor = AutoImageProcessor.from_pretrained(
                pretrained_model_name_or_path, backend=backend, **kwargs
            )
        return processor

    @classmethod
    def from_backbone(
        cls,
        name_or_path: str,
        backbone: str = "mllm",
        text_backbone: str | None = None,
        revision: str | None = None,
        backend: str | None = None,
        token: str | None = None,
        image_processor_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> "MapleProcessor":
        """The processor matching [`MapleModel.from_backbone`] with the same arguments (`revision`: of
        `name_or_path`; `token`: the Hub token every file is read with, None: HF_TOKEN or the saved login). `backend`:
        the image processor's, `"pil"` or `"torchvision"` (None: transformers' choice, torchvision's where it is
        installed). `image_processor_kwargs`: settings of the image processor that override the checkpoint's, e.g.
        `{"max_pixels": 392 * 392}` (Qwen-VL; the paper's 384 x 384 images, sized 392 x 392) or `{"max_patches": 6}` (InternVL tiles);
        one it does not have is a ValueError (`image_processor_kwargs_problem`), as is an image processor the model
        cannot take (`mllm_image_processor_problem`, `dual_encoder_image_processor_problem`)."""
        image_processor = load_image_processor(
            name_or_path, image_processor_kwargs, revision=revision, backend=backend, token=token
        )
        tokenizer = AutoTokenizer.from_pretrained(
            text_backbone or name_or_path, revision=None if text_backbone else revision, token=token
        )
        config = AutoConfig.from_pretrained(name_or_path, revision=revision, token=token)
        if backbone == "mllm":
            if config.model_type not in SUPPORTED_MLLMS:
                raise ValueError(f"Unsupported MLLM {config.model_type!r}: expected one of {SUPPORTED_MLLMS}.")
            kwargs.setdefault("mllm_type", mllm_family(config))
            kwargs.setdefault("image_token", tokenizer.convert_ids_to_tokens(config.image_token_id))
            kwargs.setdefault("image_seq_length", mllm_image_seq_length(config))
            kwargs.setdefault("spatial_merge_size", mllm_spatial_merge_size(config))
            if (problem := mllm_image_processor_problem(config, image_processor)) is not None:
                raise ValueError(f"{name_or_path}: {problem}.")
        elif backbone == "dual_encoder":
            # the text tower's config: the text backbone's, or that of the two-tower checkpoint's text side
            text_config = AutoConfig.from_pretrained(text_backbone, token=token) if text_backbone else config
            if (getattr(text_config, "text_config", None) or text_config).model_type in LAST_POSITION_TEXT_TOWERS:
                kwargs.setdefault("text_padding", "max_length")
            # the vision tower's: the two-tower checkpoint's vision side, or the vision encoder's own
            vision_config = getattr(config, "vision_config", None) or config
            if (problem := dual_encoder_image_processor_problem(vision_config, image_processor)) is not None:
                raise ValueError(f"{name_or_path}: {problem}.")
        return cls(image_processor=image_processor, tokenizer=tokenizer, backbone=backbone, **kwargs)


__all__ = [
    "EncodedImages",
    "MapleProcessor",
    "MixedImageSizesError",
    "check_tokens_known",
    "dual_encoder_image_processor_problem",
    "encode_mllm_images",
    "fill_image_placeholders",
    "gemma3_image_processor_problem",
    "image_processor_kwargs_problem",
    "image_processor_loading_problem",
    "image_size_problem",
    "is_mixed_image_sizes_error",
    "llava_next_image_layout",
    "load_image_processor",
    "pixtral_image_processor_problem",
    "process_image_batch",
    "load_image",
    "mllm_image_problem",
    "mllm_image_processor_problem",
    "mllm_image_seq_length",
    "mllm_image_tokens",
    "mllm_pixel_inputs",
    "mllm_spatial_merge_size",
    "qwen_vl_image_token_counts",
    "to_rgb",
]
