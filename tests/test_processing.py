"""`MapleProcessor`'s inputs against their references: Qwen-VL image prompts against `Qwen2VLProcessor`, the dual
encoder's bare text, `text_padding="max_length"` lengths, and images as transformers' own readers and image processors
take them (EXIF orientation, Qwen-VL's aspect-ratio limit). Embeddings are test_modeling.py's; the other MLLM families'
image prompts are test_mllm_families.py's."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessorPil, Dinov2Config, ProcessorMixin, Qwen2VLProcessor

from modeling_maple import MapleModel, MapleProcessor
from modeling_maple.processing_maple import (
    QWEN_VL_MAX_ASPECT_RATIO,
    MixedImageSizesError,
    load_image,
    mllm_image_problem,
    process_image_batch,
)
from modeling_maple.testing import build_tiny, tiny_dual_encoder_config, tiny_image_processor, tiny_tokenizer

TEXTS = ["a red circle", "two blue squares left of a yellow star"]


def test_qwen_vl_image_prompts_are_the_official_processors(monkeypatch):
    """The image between `<|vision_start|>` and `<|vision_end|>`, as Qwen2-VL's chat template writes it and the model
    was trained: ids, pixels, grid and the mask M-RoPE finds the image tokens by are `Qwen2VLProcessor`'s."""
    _, processor = build_tiny("mllm")
    # Built without its video processor, whose class needs torchvision.
    monkeypatch.setattr(ProcessorMixin, "check_argument_for_proper_class", lambda self, name, value: None)
    official = Qwen2VLProcessor(image_processor=processor.image_processor, tokenizer=processor.tokenizer)
    prompt = processor.image_prompt.format(image="<|vision_start|><|image_pad|><|vision_end|>")
    rng = np.random.default_rng(0)
    for height, width in [(32, 32), (24, 40)]:
        image = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
        ours = processor(images=[image])
        expected = official(text=[prompt], images=[image], return_tensors="pt")
        assert ours["image_input_ids"].tolist() == expected["input_ids"].tolist()
        assert ours["image_mm_token_type_ids"].tolist() == expected["mm_token_type_ids"].tolist()
        assert torch.equal(ours["image_grid_thw"], expected["image_grid_thw"])
        torch.testing.assert_close(ours["pixel_values"], expected["pixel_values"], rtol=0, atol=0)


def test_dual_encoder_texts_are_tokenised_as_they_are():
    """A dual encoder's text tower was trained on bare captions: no summarisation prompt around them."""
    _, processor = build_tiny("dual_encoder")
    batch = processor(text=TEXTS[:1])
    assert batch["input_ids"][0].tolist() == processor.tokenizer(TEXTS[0])["input_ids"]


@pytest.mark.parametrize("backbone", ["mllm", "dual_encoder"])
def test_max_length_padding_pads_short_texts_to_max_text_length_plus_the_prompt(backbone):
    """Every text prompt takes `max_text_length` tokens plus its template's (the MLLM's summarisation prompt) and
    special tokens, however short the batch's texts are."""
    _, processor = build_tiny(backbone)
    padded = MapleProcessor(
        processor.image_processor, processor.tokenizer, backbone=backbone, max_text_length=6, text_padding="max_length"
    )
    template = len(processor.tokenizer(padded.text_prompt.format(text=""))["input_ids"])
    batch = padded(text=["a", "a red circle"])
    assert batch["input_ids"].shape == (2, 6 + template)


def test_max_length_padding_holds_a_prompt_that_tokenises_longer_than_its_parts():
    """Byte-level BPE reads "'D" as a contraction, so "'Does it'" takes more tokens than "Does it" and "''" apart: the
    padded length is at least the longest prompt, or the batch would be ragged."""
    _, processor = build_tiny("dual_encoder")
    tokenizer = processor.tokenizer
    quoted = MapleProcessor(processor.image_processor, tokenizer, backbone="dual_encoder", text_prompt="'{text}'",
                            max_text_length=3, text_padding="max_length")
    longest = len(tokenizer("'Does it'")["input_ids"])
    assert len(tokenizer("Does it", add_special_tokens=False)["input_ids"]) <= 3
    assert longest > 3 + len(tokenizer("''")["input_ids"])
    batch = quoted(text=["Does it", "a"])
    assert batch["input_ids"].shape == (2, longest)
    assert batch["attention_mask"][0].all() and not batch["attention_mask"][1].all()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_applied_as_transformers_reads_the_photo(orientation, tmp_path):
    """Orientations 2-8 (mirrored, turned, or both) each change the pixels; 1 and no tag leave them as stored."""
    from transformers.image_utils import load_image as transformers_load_image

    pixels = np.zeros((16, 32, 3), dtype=np.uint8)
    pixels[:8, :16] = (255, 0, 0)  # one red quarter: every turn and mirror moves it elsewhere
    photo = Image.fromarray(pixels)
    exif = photo.getexif()
    exif[0x0112] = orientation
    path = tmp_path / "photo.png"
    photo.save(path, exif=exif.tobytes())
    expected = np.asarray(transformers_load_image(str(path)))
    assert (orientation == 1) == (expected.shape == pixels.shape and (expected == pixels).all())
    with Image.open(path) as opened:
        np.testing.assert_array_equal(np.asarray(load_image(opened, 0)), expected)


@pytest.mark.parametrize("size", [(200, 1), (201, 1), (1, 200), (1, 201), (1600, 8), (1608, 8)])
def test_the_qwen_vl_aspect_ratio_limit_is_the_image_processors_own(size):
    """Images are refused up front (and skipped by the builder) exactly when the Qwen-VL image processor would refuse
    them: 200:1 passes, anything more elongated does not."""
    image = Image.new("RGB", size)
    problem = mllm_image_problem("qwen2_vl", size)
    if max(size) / min(size) <= QWEN_VL_MAX_ASPECT_RATIO:
        assert problem is None
        tiny_image_processor()(images=[image], return_tensors="pt")
    else:
        assert "aspect ratio 201:1" in problem
        with pytest.raises(ValueError, match="aspect ratio"):
            tiny_image_processor()(images=[image], return_tensors="pt")


def test_a_batch_an_image_processor_makes_of_several_sizes_is_refused_by_name():
    """A DINOv2 tower takes any size, so `image_processor_kwargs={"do_center_crop": False}` loads; CLIP's image
    processor then keeps each image's aspect ratio, and a batch of several failed in numpy's words ("inhomogeneous
    shape"), naming neither image nor setting. Images of one size still make a batch; an encode names images by their
    position in the whole list."""
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16},
                                            do_center_crop=False)
    processor = MapleProcessor(image_processor=image_processor, tokenizer=tiny_tokenizer(), backbone="dual_encoder")
    dinov2 = Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, image_size=16, patch_size=4)
    model = MapleModel(tiny_dual_encoder_config(vision_config=dinov2)).eval()
    wide, square = Image.new("RGB", (32, 16)), Image.new("RGB", (16, 16), "red")
    assert model.encode(processor, images=[wide, wide.copy()]).shape == (2, 16)
    message = (r"^images\[2\] \(16x32 px\) became 16x32 but images\[3\] \(16x16 px\) became 16x16 \(height x width\): the "
               r"image processor \(CLIPImageProcessorPil\) gives each image a size that follows its own "
               r"\(do_center_crop=False\), but the vision tower takes a batch at one size\. Set do_center_crop=True .* or "
               r"size=\{'height': \.\.\., 'width': \.\.\.\}")
    with pytest.raises(MixedImageSizesError, match=message) as error:  # a ValueError
        model.encode(processor, images=[wide, wide, wide, square], batch_size=2)
    # the facts, for a caller (the miner) to name the images in its own terms
    assert (error.value.indices, error.value.image_sizes, error.value.processed_sizes) == (
        (2, 3), ((16, 32), (16, 16)), ((16, 32), (16, 16)))


def test_a_batch_of_several_sizes_unresized_is_told_to_resize_as_well_as_to_set_a_size():
    """With `do_resize=False`, `size` is never read: the advice `size={...}` alone left the batch at several sizes
    (found by a review)."""
    images = [Image.new("RGB", (32, 16)), Image.new("RGB", (16, 16))]
    unresized = CLIPImageProcessorPil(do_resize=False, do_center_crop=False)
    with pytest.raises(MixedImageSizesError) as unresized_error:
        process_image_batch(unresized, images)
    assert "(do_resize=False, do_center_crop=False)" in str(unresized_error.value)
    assert "or do_resize=True, size={'height': ..., 'width': ...} (every image resized to it" in str(unresized_error.value)
    resized = CLIPImageProcessorPil(do_resize=True, size={"height": 16, "width": 16}, do_center_crop=False)
    assert process_image_batch(resized, images)["pixel_values"].shape == (2, 3, 16, 16)
    resizing = CLIPImageProcessorPil(size={"shortest_edge": 16}, do_center_crop=False)
    with pytest.raises(MixedImageSizesError) as resizing_error:
        process_image_batch(resizing, images)
    assert "or size={'height': ..., 'width': ...}" in str(resizing_error.value)
    assert "do_resize=True" not in str(resizing_error.value)


def test_a_batch_of_several_sizes_error_round_trips_through_pickle():
    """`pickle.loads` called the class with the message alone, a TypeError (missing arguments): multiprocessing and a
    datasets map with num_proc could not hand the error back (found by a review). It comes back whole."""
    images = [Image.new("RGB", (32, 16)), Image.new("RGB", (16, 16))]
    with pytest.raises(MixedImageSizesError) as error:
        process_image_batch(CLIPImageProcessorPil(do_resize=False, do_center_crop=False), images, first_index=4)
    restored = pickle.loads(pickle.dumps(error.value))
    assert type(restored) is MixedImageSizesError and restored.args == error.value.args
    assert vars(restored) == vars(error.value) and restored.indices == (4, 5)
    assert restored.advice("row {}".format, "here").startswith("row 4 (16x32 px) became 16x32 but row 5 (16x16 px)")


def test_a_16_bit_greyscale_image_is_scaled_to_8_bits_not_clipped_white(tmp_path):
    """`convert("RGB")` clips I;16 and I values at 255: a 16-bit PNG became a white square, two different ones one
    image to the miner, SemDeDup, the judge and the embedder alike (found by a bug hunt)."""
    halves = np.zeros((8, 8), dtype=np.uint16)
    halves[:, :4], halves[:, 4:] = 60000, 3000
    Image.fromarray(halves).save(tmp_path / "halves.png")
    assert Image.open(tmp_path / "halves.png").mode == "I;16"
    pixels = np.asarray(load_image(str(tmp_path / "halves.png"), 0))
    assert pixels.shape == (8, 8, 3) and (pixels[0, 0, 0], pixels[0, 7, 0]) == (60000 // 257, 3000 // 257)
    as_int = Image.fromarray(halves.astype(np.int32))  # mode I, as some loaders give 16-bit data
    assert np.array_equal(np.asarray(load_image(as_int, 0)), pixels)
    eight_bit = Image.fromarray(np.array([[0, 100, 255]], dtype=np.int32))  # mode I within 8 bits: as it was
    assert np.asarray(load_image(eight_bit, 0))[0, :, 0].tolist() == [0, 100, 255]


def test_the_transparent_colour_of_a_16_bit_image_is_matched_before_scaling(tmp_path):
    """Its 16-bit value had been compared with the scaled pixels: the transparent pixel stayed dark, and with
    transparency 0 every value 1-256 turned white (found by a review)."""
    for values, transparency, expected in (([0, 1000, 30000, 65535], 1000, [0, 255, 116, 255]),
                                           ([0, 200, 30000, 65535], 0, [255, 0, 116, 255])):
        Image.fromarray(np.array([values], dtype=np.uint16)).save(tmp_path / "key.png", transparency=transparency)
        assert np.asarray(load_image(str(tmp_path / "key.png"), 0))[0, :, 0].tolist() == expected


def test_the_transparent_colour_of_an_integer_image_within_8_bits_is_matched_against_its_own_values():
    """Pillow matches a mode I image's transparent colour with the 8-bit pixels by its low byte: with transparency 300,
    the pixel of value 44 (300 - 256) turned white (found by a review). Only a pixel of the transparent value does."""
    image = Image.fromarray(np.array([[44, 200, 255]], dtype=np.int32))
    assert image.mode == "I"
    for transparency, expected in ((300, [44, 200, 255]), (44, [255, 200, 255]), (200, [44, 255, 255])):
        image.info["transparency"] = transparency
        assert np.asarray(load_image(image, 0))[0, :, 0].tolist() == expected
