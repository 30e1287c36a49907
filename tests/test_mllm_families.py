"""MAPLE embedders on the MLLM families beyond Qwen-VL (LLaVA, LLaVA-NeXT, InternVL, Idefics3/SmolVLM, Gemma 3, Pixtral,
Mistral 3): image prompts
equal to the family's own processor, padding invariance, save/load, `from_backbone`, LoRA on the language model
only, and training steps through `RPATrainer`. The Qwen-VL family is covered by test_modeling.py."""

import copy
import math
import re

import numpy as np
import pytest
import torch
from peft import PeftModel, get_peft_model
from PIL import Image
from transformers import (
    AutoModel,
    AutoProcessor,
    CLIPImageProcessorPil,
    Gemma3ImageProcessorPil,
    GotOcr2ImageProcessorPil,
    Idefics3ImageProcessorPil,
    LlavaNextImageProcessorPil,
    PixtralImageProcessorPil,
    SmolVLMImageProcessorPil,
)

from modeling_maple import MapleConfig, MapleModel, MapleProcessor
from modeling_maple.lora import freeze_backbone_modules_to_save, get_maple_peft_model, maple_lora_config
from modeling_maple.configuration_maple import mllm_family
from modeling_maple.processing_maple import load_image_processor, mllm_image_seq_length, mllm_spatial_merge_size
from modeling_maple.testing import TINY_IMAGE_TOKENS, build_tiny, tiny_mllm_config, tiny_mllm_image_processor, tiny_mllm_tokenizer, tiny_tokenizer
from isolated import run_isolated
from official_processors import official_processor
from trainer import RPATrainer
from trainer.testing import smoke_config, synthetic_preference_dataset

FAMILIES = ["llava", "llava_next", "internvl", "idefics3", "smolvlm", "gemma3", "pixtral", "mistral3"]
TEXTS = ["a red circle", "two blue squares left of a yellow star", "a big green triangle above a small circle"]


def images_of_three_shapes() -> list[Image.Image]:
    """Square, wide and tall images: LLaVA-NeXT, InternVL and Idefics3 tile them differently, Pixtral and Mistral 3 take
    each at its own size, so their prompts differ in length and get padded in a batch (Pixtral's pixels too)."""
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)) for height, width in [(32, 32), (24, 40), (40, 24)]]


@pytest.mark.parametrize("family", ["llava", "llava_next", "internvl", "idefics3", "gemma3", "pixtral", "mistral3"])
def test_image_prompts_and_pixels_are_the_official_processors(family, monkeypatch):
    _, processor = build_tiny("mllm", mllm_type=family)
    official = official_processor(family, monkeypatch)
    # the placeholder the official processor expands: the image token, but Gemma 3's `<start_of_image>`
    prompt = processor.image_prompt.format(image=official.image_token)
    for image in images_of_three_shapes():
        ours = processor(images=[image])
        expected = official(text=[prompt], images=[[image]] if family == "idefics3" else [image], return_tensors="pt")
        assert ours["image_input_ids"][0].tolist() == expected["input_ids"][0].tolist()
        if family == "gemma3":  # the image tokens' mask, by which Gemma 3 opens each image's block in its causal mask
            assert ours["image_mm_token_type_ids"].tolist() == expected["token_type_ids"].tolist()
        if family == "llava_next":  # one image's tiles, (tiles, C, H, W), where LlavaNextProcessor adds a batch dimension
            torch.testing.assert_close(ours["pixel_values"], expected["pixel_values"][0])
        else:
            torch.testing.assert_close(ours["pixel_values"], expected["pixel_values"])
        if family in ("llava_next", "pixtral", "mistral3"):
            assert torch.equal(ours["image_sizes"], expected["image_sizes"])
        if family == "idefics3":
            assert torch.equal(ours["pixel_attention_mask"], expected["pixel_attention_mask"])


@pytest.mark.parametrize("family", ["pixtral", "mistral3"])
def test_pixtral_images_keep_their_size_in_a_batch_as_pixtral_processor_does(family, monkeypatch):
    """Pixtral and Mistral 3 take each image at its own size: rows of `[IMG]` (one per patch, Mistral 3: per 2x2 merged
    patches), each row ended by `[IMG_BREAK]`, the last by `[IMG_END]`. A batch of images of several sizes and aspect
    ratios gets `PixtralProcessor`'s prompt ids, pixels (padded to the largest image) and `image_sizes`."""
    _, processor = build_tiny("mllm", mllm_type=family)
    official = official_processor(family, monkeypatch)
    rng = np.random.default_rng(1)
    images = [*images_of_three_shapes(), Image.fromarray(rng.integers(0, 255, (7, 100, 3), dtype=np.uint8)), Image.new("RGB", (9, 9))]
    prompt = processor.image_prompt.format(image=official.image_token)
    ours = processor(text=TEXTS, images=images)
    expected = official(text=[prompt] * len(images), images=[[image] for image in images], padding=True, return_tensors="pt")
    for row, mask, official_row, official_mask in zip(ours["image_input_ids"], ours["image_attention_mask"],
                                                      expected["input_ids"], expected["attention_mask"]):
        assert row[mask.bool()].tolist() == official_row[official_mask.bool()].tolist()
    torch.testing.assert_close(ours["pixel_values"], expected["pixel_values"])
    assert torch.equal(ours["image_sizes"], expected["image_sizes"])
    cell = 4 * mllm_spatial_merge_size(tiny_mllm_config(family))
    tokenizer = processor.tokenizer
    for ids, (height, width) in zip(ours["image_input_ids"], ours["image_sizes"].tolist()):
        tokens = tokenizer.convert_ids_to_tokens(ids)
        rows, cols = height // cell, width // cell
        image_part = tokens[tokens.index("[IMG]") : tokens.index("[IMG_END]") + 1]
        assert image_part == ((["[IMG]"] * cols + ["[IMG_BREAK]"]) * rows)[:-1] + ["[IMG_END]"]
    assert len({tuple(size) for size in ours["image_sizes"].tolist()}) == len(images)  # every image at its own size


@pytest.mark.parametrize("family", ["pixtral", "mistral3"])
def test_pixtral_images_too_elongated_to_keep_a_pixel_are_refused_by_name(family):
    """Pixtral's image processor scales an image's long side down to its `longest_edge` (32 px for the tiny models), and
    failed with a bare size error on an image whose short side that left no pixel; the embedder's processor and the
    judge (`image_problem`, which the preference builder asks before it reads a row) name it."""
    from dataset_builders.testing import tiny_judge

    _, processor = build_tiny("mllm", mllm_type=family)
    message = f"aspect ratio 40:1 leaves no pixel of its short side once its long side is resized to 32 px, as the {family} image processor does"
    with pytest.raises(ValueError, match=f"^images\\[1\\]: {message}"):
        processor(images=[Image.new("RGB", (16, 16)), Image.new("RGB", (1, 40))])
    assert tiny_judge(family=family).image_problem((40, 1)) == message
    assert processor(images=[Image.new("RGB", (32, 1))])["image_sizes"].tolist() == [[4 * mllm_spatial_merge_size(tiny_mllm_config(family)), 32]]


def test_a_mistral3_image_of_one_token_cell_is_refused_by_name():
    """Mistral 3 merges 2x2 patches into one image token; an image that fits in one cell (8 x 8 px for the tiny model,
    28 x 28 for Mistral 3's checkpoints) makes one token, which `Mistral3Model.get_image_features` squeezes away: a bare
    RuntimeError from `torch.split` whenever that image was alone in a batch (found by a review). The embedder, the
    judge and a miner on the embedder (`image_problem`, which the preference builder asks first) name it instead."""
    from dataset_builders.miner import HardNegativeMiner
    from dataset_builders.testing import tiny_judge

    model, processor = build_tiny("mllm", mllm_type="mistral3")
    message = "8x8 px fits in one 8x8 token cell, and a single image token is more than transformers' Mistral 3 model can take"
    with pytest.raises(ValueError, match=f"^images\\[2\\]: {message}"):
        model.encode(processor, images=[Image.new("RGB", (16, 16)), Image.new("RGB", (9, 9)), Image.new("RGB", (8, 8))], batch_size=2)
    assert model.encode(processor, images=[Image.new("RGB", (9, 9))]).shape[0] == 1  # 2 x 2 cells
    assert tiny_judge(family="mistral3").image_problem((8, 8)).startswith(message)
    assert tiny_judge(family="mistral3").image_problem((9, 8)) is None
    assert HardNegativeMiner.from_maple(model, processor).image_problem((3, 5)).startswith("3x5 px fits in one 8x8 token cell")
    assert tiny_judge(family="pixtral").image_problem((4, 4)) is None  # Pixtral's vision model takes one token


def test_llava_next_tiles_and_image_tokens_follow_each_images_size(monkeypatch):
    """LLaVA-NeXT cuts each image into a base view plus a grid of tiles chosen by its size; its image tokens leave out
    the letterbox and end each row with `image_newline`. A batch of images of 5, 3, 4 and 5 tiles: the prompts are those
    `LlavaNextProcessor` builds, the pixels its own less the padding tiles it adds to fill the batch, the token counts
    the model's features, and each image embeds the same alone as beside the others."""
    model, processor = build_tiny("mllm", mllm_type="llava_next")
    official = official_processor("llava_next", monkeypatch)
    rng = np.random.default_rng(1)
    sizes = [(32, 32), (16, 16), (7, 100), (40, 24)]  # (height, width); (7, 100): every tile row is letterbox
    images = [Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)) for height, width in sizes]
    prompt = processor.image_prompt.format(image=processor.image_token)
    ours = processor(images=images)
    expected = official(text=[prompt] * len(images), images=images, padding=True, return_tensors="pt")
    assert torch.equal(ours["image_input_ids"], expected["input_ids"])
    assert torch.equal(ours["image_sizes"], expected["image_sizes"]) and ours["image_sizes"].tolist() == [list(s) for s in sizes]
    tiles = [5, 3, 4, 5]
    assert expected["pixel_values"].shape[1] == max(tiles)
    torch.testing.assert_close(ours["pixel_values"], torch.cat([pixels[:count] for pixels, count in zip(expected["pixel_values"], tiles)]))

    counts = (ours["image_input_ids"] == model.config.mllm_config.image_token_id).sum(dim=1).tolist()
    assert counts == [88, 36, 16, 56]
    with torch.no_grad():
        features = model.mllm.get_image_features(pixel_values=ours["pixel_values"], image_sizes=ours["image_sizes"]).pooler_output
    assert [len(feature) for feature in features] == counts
    batched = model.encode(processor, images=images)
    for index, image in enumerate(images):
        torch.testing.assert_close(model.encode(processor, images=[image])[0], batched[index], atol=1e-5, rtol=0)


REAL_LLAVA_NEXT_GEOMETRIES = {
    # (tile side, patch side, image_grid_pinpoints, the tower's extra tokens, vision_feature_select_strategy)
    "llava-v1.6 (CLIP 336/14)": (336, 14, [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]], 1, "default"),
    "SigLIP 384/14": (384, 14, [[384, 768], [768, 384], [768, 768], [1152, 384], [384, 1152]], 0, "full"),
    "CLIP 336/14, grids of 1x1 to 6x6 tiles": (336, 14, [[336 * rows, 336 * cols] for rows in range(1, 7) for cols in range(1, 7)], 1, "default"),
}


@pytest.mark.parametrize("geometry", REAL_LLAVA_NEXT_GEOMETRIES)
def test_llava_next_image_layout_counts_as_the_official_processor_and_model_at_real_geometries(geometry):
    """`llava_next_image_layout` against `LlavaNextProcessor._get_number_of_features` (the prompt) and
    `image_size_to_num_patches` and `unpad_image` (what `LlavaNextModel` gives), without a model, at real tile sizes:
    every size to 60 px a side, sizes about the pinpoints' edges, extreme aspect ratios, sizes whose letterbox a
    float's rounding decides (88 x 55: 24 * 55 / 88 is 14.999...) and random sizes to 3000 px."""
    from transformers import LlavaNextProcessor
    from transformers.image_processing_utils import select_best_resolution
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches, unpad_image

    from modeling_maple.processing_maple import llava_next_image_layout

    tile, patch, pinpoints, extra_tokens, strategy = REAL_LLAVA_NEXT_GEOMETRIES[geometry]
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": tile}, crop_size={"height": tile, "width": tile}, image_grid_pinpoints=pinpoints
    )
    official = LlavaNextProcessor(image_processor=image_processor, tokenizer=tiny_tokenizer(), patch_size=patch,
                                  vision_feature_select_strategy=strategy, image_token="<|image_pad|>",
                                  num_additional_image_tokens=extra_tokens)
    side = tile // patch
    edges = [1, 2, 3, 7, 100, 223, 335, 336, 337, 671, 672, 673, 1007, 1008, 1009, 2016, 4000, 10000]
    rng = np.random.default_rng(0)
    sizes = {(height, width) for height in range(1, 61) for width in range(1, 61)}
    sizes |= {(height, width) for height in edges for width in edges}
    sizes |= {(88, 55), (88, 99), (176, 110), (47, 1128), (205, 656), (220, 1056)}
    sizes |= {tuple(size) for size in rng.integers(1, 3001, (1000, 2)).tolist()}
    for height, width in sorted(sizes):
        tiles, tokens = llava_next_image_layout((height, width), pinpoints, (tile, tile), side * side)
        expected = official._get_number_of_features(height, width, tile, tile) - (strategy == "default")
        best_height, best_width = select_best_resolution((height, width), pinpoints)
        grid = unpad_image(torch.empty(1, best_height // tile * side, best_width // tile * side), (height, width))
        assert (tiles, tokens) == (image_size_to_num_patches((height, width), pinpoints, tile), expected), (height, width)
        assert tokens == side * side + grid.shape[1] * (grid.shape[2] + 1), (height, width)


def test_llava_next_configs_whose_image_tokens_cannot_be_counted_are_refused(tmp_path):
    """LLaVA-NeXT lays each tile's features out as a square grid of patches: a tower whose token count follows the
    image (Pixtral's), a kept CLS or a dropped patch, or pinpoints that are not whole tiles make `LlavaNextModel` fail
    with a shape error deep in its forward; MAPLE names the setting up front."""
    clip = tiny_mllm_config("llava_next").vision_config.to_dict()
    siglip = {**clip, "model_type": "siglip_vision_model"}
    pixtral = {"model_type": "pixtral", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
               "num_attention_heads": 2, "image_size": 16, "patch_size": 4}
    refused = [
        ({"vision_config": pixtral}, "LLaVA-NeXT with a 'pixtral' vision tower is not supported: expected a CLIP or SigLIP"),
        ({"vision_feature_select_strategy": "full"},
         "'clip_vision_model' vision tower and vision_feature_select_strategy='full' is not supported.*expected 'default'"),
        ({"vision_config": siglip}, "'siglip_vision_model' vision tower and vision_feature_select_strategy='default' is not supported"),
        ({"image_grid_pinpoints": [[16, 32], [24, 24]]},
         r"image_grid_pinpoints \[\[24, 24\]\] are not multiples of the vision tower's image_size 16"),
    ]
    for overrides, message in refused:
        with pytest.raises(ValueError, match=message):
            mllm_image_seq_length(tiny_mllm_config("llava_next", **overrides))
    assert mllm_image_seq_length(tiny_mllm_config("llava_next", vision_config=siglip, vision_feature_select_strategy="full")) == 16

    folder = tmp_path / "full-strategy"  # a checkpoint: refused when its processor is built
    tiny_mllm_config("llava_next", vision_feature_select_strategy="full").save_pretrained(folder)
    tiny_mllm_image_processor("llava_next").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    with pytest.raises(ValueError, match="vision_feature_select_strategy='full' is not supported"):
        MapleProcessor.from_backbone(str(folder), backbone="mllm")
    with pytest.raises(ValueError, match="image_seq_length` is the tokens of one tile.*got 17, not a square number"):
        MapleProcessor(tiny_mllm_image_processor("llava_next"), tiny_tokenizer(), mllm_type="llava_next",
                       image_token="<|image_pad|>", image_seq_length=17)
    model, processor = build_tiny("mllm", mllm_type="llava_next")
    inputs = processor(images=images_of_three_shapes())
    with pytest.raises(ValueError, match="llava_next embedder needs `image_input_ids` and `image_sizes`"):
        model(pixel_values=inputs["pixel_values"], image_input_ids=inputs["image_input_ids"])


def test_llava_next_image_processors_that_cut_tiles_unlike_the_model_are_refused(tmp_path):
    """`LlavaNextModel` counts an image's tiles from its config, the image processor cuts them by its own settings: a
    difference (pinpoints overridden on one side, to spend fewer tiles) failed in the forward with a bare shape error
    (split_with_sizes). The embedder's processor and the judge's prompt encoder name it up front."""
    from dataset_builders.vlm_inputs import PromptEncoder

    config, tokenizer = tiny_mllm_config("llava_next"), tiny_mllm_tokenizer("llava_next")
    fewer_tiles = LlavaNextImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16},
                                             image_grid_pinpoints=[[16, 32], [32, 16]])
    larger_tiles = LlavaNextImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                              image_grid_pinpoints=config.image_grid_pinpoints)
    refused = [
        (fewer_tiles, r"'s image_grid_pinpoints \[\[16, 32\], \[32, 16\]\] differ from the model config's \[\[16, 32\], "),
        (larger_tiles, " cuts 32-pixel tiles, but the model's vision tower takes 16-pixel images"),
    ]
    assert_refused_where_built(config, tokenizer, [(processor, f"the image processor{message}") for processor, message in refused], tmp_path)
    tiny_mllm_image_processor("llava_next").save_pretrained(tmp_path)  # the model's own tiles: accepted
    assert MapleProcessor.from_backbone(str(tmp_path), backbone="mllm").image_seq_length == 16
    assert PromptEncoder(config, tokenizer, tiny_mllm_image_processor("llava_next")).image_seq_length == 16


def assert_refused_where_built(config, tokenizer, refused, folder) -> None:
    """Each image processor of `refused`, (image processor, message pattern) pairs, is refused with its message where
    the judge's prompt encoder (prefixed by the family) and the embedder's processor (by the checkpoint `folder`,
    where `config`, `tokenizer` and the image processor are saved) are built."""
    from dataset_builders.vlm_inputs import PromptEncoder

    config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    for image_processor, message in refused:
        with pytest.raises(ValueError, match=f"^{mllm_family(config)}: {message}"):
            PromptEncoder(config, tokenizer, image_processor)
        image_processor.save_pretrained(folder)
        with pytest.raises(ValueError, match=f"^{re.escape(str(folder))}: {message}"):
            MapleProcessor.from_backbone(str(folder), backbone="mllm")


@pytest.mark.parametrize("family", FAMILIES)
def test_embeddings_ignore_batching_and_survive_save_load(family, tmp_path):
    model, processor = build_tiny("mllm", mllm_type=family)
    images = images_of_three_shapes()
    text_embeds, image_embeds = model.encode(processor, texts=TEXTS, images=images)
    assert text_embeds.shape == image_embeds.shape == (3, 32)
    for index in range(3):  # alone, unpadded, and with other images' tiles in the batch: the same embedding
        torch.testing.assert_close(model.encode(processor, images=images[index : index + 1])[0], image_embeds[index], atol=1e-5, rtol=0)
        torch.testing.assert_close(model.encode(processor, texts=TEXTS[index : index + 1])[0], text_embeds[index], atol=1e-5, rtol=0)
    assert not torch.allclose(image_embeds[0], image_embeds[1], atol=1e-3)

    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    # the backend the processor was built with (PIL): with torchvision installed, transformers would load its
    # torchvision backend, whose resizing moves embeddings by about 1e-4 (docs/modeling.md)
    loaded, loaded_processor = AutoModel.from_pretrained(tmp_path), AutoProcessor.from_pretrained(tmp_path, backend="pil")
    assert mllm_family(loaded.config.mllm_config) == family
    for name in ("mllm_type", "image_token", "image_seq_length", "spatial_merge_size"):
        assert getattr(loaded_processor, name) == getattr(processor, name)
    for got, expected in zip(loaded.encode(loaded_processor, texts=TEXTS, images=images), (text_embeds, image_embeds)):
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_from_backbone_keeps_every_tensor_and_reads_the_image_settings(family, tmp_path):
    torch.manual_seed(0)
    config = tiny_mllm_config(family)
    source = AutoModel.from_config(config)
    source.save_pretrained(tmp_path)
    tiny_mllm_image_processor(family).save_pretrained(tmp_path)
    tiny_mllm_tokenizer(family).save_pretrained(tmp_path)

    model = MapleModel.from_backbone(str(tmp_path), backbone="mllm")
    source_state = source.state_dict()
    assert set(model.mllm.state_dict()) == set(source_state)
    assert all(torch.equal(tensor, source_state[key]) for key, tensor in model.mllm.state_dict().items())
    processor = MapleProcessor.from_backbone(str(tmp_path), backbone="mllm")
    assert processor.mllm_type == family
    assert processor.image_token == TINY_IMAGE_TOKENS[family]
    expected_seq_length = {"llava": 16, "llava_next": 16, "pixtral": None, "mistral3": None}.get(family, 4)
    assert processor.image_seq_length == mllm_image_seq_length(config) == expected_seq_length
    assert processor.spatial_merge_size == (2 if family == "mistral3" else 1)
    assert model.encode(processor, images=images_of_three_shapes()).shape == (3, 32)


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_trains_the_language_model_only(family):
    model, processor = build_tiny("mllm", mllm_type=family)
    peft_model = get_peft_model(model, maple_lora_config(model, r=4, lora_alpha=4, lora_dropout=0.0))
    peft_model(**processor(text=TEXTS, images=images_of_three_shapes()), return_loss=True).loss.backward()
    named = dict(peft_model.named_parameters())
    lora = [name for name in named if "lora_" in name]
    language_model = "text_model" if family in ("idefics3", "smolvlm") else "language_model"
    assert lora and all(f".{language_model}." in name for name in lora)
    assert all(named[name].grad.abs().sum() > 0 for name in lora if "lora_B" in name)
    frozen = [p for name, p in named.items() if f".{language_model}." not in name and "lora_" not in name]
    assert frozen and all(not p.requires_grad for p in frozen)


@pytest.mark.parametrize("family", ["internvl", "idefics3", "smolvlm", "qwen2_vl"])
def test_lora_trains_maples_head_in_full_and_no_backbone_module_named_like_it(family, tmp_path):
    """PEFT matches `modules_to_save` by name suffix, so "projection", MAPLE's head, also trained and saved InternVL's
    patch embedding (`...patch_embeddings.projection`) and Idefics3/SmolVLM's connector (`...modality_projection`)."""
    _, processor = build_tiny("mllm", mllm_type=family)
    torch.manual_seed(0)
    model = MapleModel(MapleConfig(backbone="mllm", mllm_config=tiny_mllm_config(family), projection_dim=16)).eval()
    model.save_pretrained(tmp_path / "base")
    lookalikes = [name for name, _ in model.named_modules() if name.endswith("projection") and name != "projection"]
    assert bool(lookalikes) == (family != "qwen2_vl")
    originals = {name: copy.deepcopy(model.get_submodule(name).state_dict()) for name in lookalikes}
    inputs = processor(text=TEXTS, images=images_of_three_shapes())

    def trained_in_full(peft_model) -> set[str]:
        return {name.split(".modules_to_save.")[0] for name, p in peft_model.named_parameters() if p.requires_grad and "lora_" not in name}

    peft_model = get_maple_peft_model(model, maple_lora_config(model, r=4, lora_alpha=4, lora_dropout=0.0))
    optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        with peft_model.disable_adapter():  # as RPATrainer's reference pass; leaving it re-enables the adapters
            peft_model(**inputs)
        peft_model(**inputs, return_loss=True).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert trained_in_full(peft_model) == {"base_model.model.projection"}
    expected = peft_model.eval().encode(processor, texts=TEXTS, images=images_of_three_shapes())
    peft_model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(AutoModel.from_pretrained(tmp_path / "base"), tmp_path / "adapter").eval()
    for ours, theirs in zip(expected, reloaded.encode(processor, texts=TEXTS, images=images_of_three_shapes())):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    merged = reloaded.merge_and_unload()
    for name, state in originals.items():
        assert all(torch.equal(tensor, state[key]) for key, tensor in merged.get_submodule(name).state_dict().items()), name

    # An adapter trained before the fix (its copies of the look-alikes trained too) loads and computes as it did.
    old = get_peft_model(MapleModel.from_pretrained(tmp_path / "base"), maple_lora_config(model, r=4, lora_alpha=4))
    with torch.no_grad():
        for name in lookalikes:
            for parameter in old.get_submodule(f"base_model.model.{name}.modules_to_save.default").parameters():
                parameter.add_(0.5)
    old_expected = old.eval().encode(processor, images=images_of_three_shapes())
    old.save_pretrained(tmp_path / "old_adapter")
    reloaded = PeftModel.from_pretrained(AutoModel.from_pretrained(tmp_path / "base"), tmp_path / "old_adapter", is_trainable=True)
    freeze_backbone_modules_to_save(reloaded)
    torch.testing.assert_close(reloaded.eval().encode(processor, images=images_of_three_shapes()), old_expected, rtol=0, atol=0)


@pytest.mark.parametrize("family", ["smolvlm", "llava_next", "gemma3", "pixtral", "mistral3"])
def test_a_family_checkpoint_loads_without_the_package(family, tmp_path):
    """SmolVLM (tiles, one sample holding a batch's images, a pixel mask), LLaVA-NeXT (tiles and image tokens that
    follow each image's size), Gemma 3 (image tokens wrapped in `<start_of_image>`, a BOS-adding tokenizer with
    named image tokens), Pixtral (a `llava` config told apart by its tower) and Mistral 3 (merged patches; images of
    several sizes padded in one batch) through `trust_remote_code` in an interpreter that cannot import this repository: the
    checkpoint's own copy of the processing code builds the same inputs."""
    model, processor = build_tiny("mllm", mllm_type=family)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    for index, image in enumerate(images_of_three_shapes()):
        image.save(tmp_path / f"image{index}.png")
    expected = torch.cat(model.encode(processor, texts=TEXTS, images=[str(tmp_path / f"image{i}.png") for i in range(3)]))
    np.save(tmp_path / "expected.npy", expected.numpy())
    output = run_isolated(
        f"""
        import numpy as np, torch
        from transformers import AutoModel, AutoProcessor
        model = AutoModel.from_pretrained(".", trust_remote_code=True)
        processor = AutoProcessor.from_pretrained(".", trust_remote_code=True, backend="pil")  # as built
        embeds = torch.cat(model.encode(processor, texts={TEXTS!r}, images=["image0.png", "image1.png", "image2.png"]))
        print(type(processor).__module__, processor.mllm_type, np.abs(embeds.numpy() - np.load("expected.npy")).max())
        """,
        cwd=str(tmp_path),
    )
    module, mllm_type, error = output.split()[-3:]
    assert module.startswith("transformers_modules.") and mllm_type == family
    assert float(error) <= 1e-6


@pytest.mark.parametrize("family", ["llava", "llava_next", "idefics3", "gemma3", "pixtral", "mistral3"])
def test_rpa_trainer_trains_the_family_with_lora(family, tmp_path):
    model, processor = build_tiny("mllm", seed=0, mllm_type=family)
    trainer = RPATrainer(
        model,
        args=smoke_config(str(tmp_path), max_steps=6, logging_steps=3, num_text_candidates=2, num_image_candidates=3),
        train_dataset=synthetic_preference_dataset(16, seed=0),
        processing_class=processor,
        peft_config=maple_lora_config(model, r=4, lora_alpha=4, lora_dropout=0.0),
    )
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if "lora_B" in name}
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss/rpa" in entry]
    assert logs and all(math.isfinite(entry["loss"]) and math.isfinite(entry["loss/rpa"]) for entry in logs)
    after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(after[name], tensor) for name, tensor in before.items())


def test_a_causal_gemma3_embedder_attends_within_each_image_as_gemma3model_does(monkeypatch):
    """Gemma 3's causal mask lets an image's soft tokens see one another, found by `token_type_ids`; without them it is
    plainly causal. With `bidirectional=False` MAPLE passes them, so an image embeds as the mean of the states
    `Gemma3Model` gives `Gemma3Processor`'s inputs, alone and in one forward with texts."""
    bidirectional, processor = build_tiny("mllm", mllm_type="gemma3")
    model = MapleModel(MapleConfig(backbone="mllm", mllm_config=tiny_mllm_config("gemma3"), bidirectional=False)).eval()
    model.load_state_dict(bidirectional.state_dict())
    official = official_processor("gemma3", monkeypatch)
    images = images_of_three_shapes()
    prompt = processor.image_prompt.format(image=official.image_token)
    expected = official(text=[prompt] * 3, images=[[image] for image in images], return_tensors="pt")
    with torch.no_grad():
        states = model.mllm(**expected).last_hidden_state
        plainly_causal = model.mllm(**{k: v for k, v in expected.items() if k != "token_type_ids"}).last_hidden_state
    assert not torch.allclose(states, plainly_causal, atol=1e-4)  # the mask matters
    means = torch.nn.functional.normalize(states.mean(dim=1), dim=-1)
    torch.testing.assert_close(model.encode(processor, images=images), means, atol=1e-5, rtol=0)
    with torch.no_grad():  # one forward with the texts, as in training
        torch.testing.assert_close(model(**processor(text=TEXTS, images=images)).image_embeds, means, atol=1e-5, rtol=0)


def test_gemma3_pan_and_scan_and_uncountable_image_tokens_are_refused(tmp_path):
    """Pan-and-scan crops (their number follows each image's aspect ratio, and `Gemma3Processor` wraps them in an
    English sentence) are refused by name where the embedder's processor and the judge's prompt encoder are built; so
    are image token counts `Gemma3MultiModalProjector` cannot pool to."""
    from dataset_builders.vlm_inputs import PromptEncoder

    config, tokenizer = tiny_mllm_config("gemma3"), tiny_mllm_tokenizer("gemma3")
    panning = Gemma3ImageProcessorPil(size={"height": 16, "width": 16}, do_pan_and_scan=True)
    message = "the image processor has do_pan_and_scan=True, which MAPLE does not support: set do_pan_and_scan=False"
    with pytest.raises(ValueError, match=f"^gemma3: {message}"):
        PromptEncoder(config, tokenizer, panning)
    with pytest.raises(ValueError, match=f"^A gemma3 processor: {message}"):
        MapleProcessor(panning, tokenizer, mllm_type="gemma3", image_token="<image_soft_token>", image_seq_length=4)
    config.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    panning.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=f"^{re.escape(str(tmp_path))}: {message}"):
        MapleProcessor.from_backbone(str(tmp_path), backbone="mllm")
    tiny_mllm_image_processor("gemma3").save_pretrained(tmp_path)
    assert MapleProcessor.from_backbone(str(tmp_path), backbone="mllm").image_seq_length == 4
    for tokens in (3, 9):  # not a square; a square whose side (3) does not divide the 4 patches per side
        with pytest.raises(ValueError, match=f"Gemma 3 mm_tokens_per_image={tokens} is not supported"):
            mllm_image_seq_length(tiny_mllm_config("gemma3", mm_tokens_per_image=tokens))
    model, processor = build_tiny("mllm", mllm_type="gemma3")
    model.config.bidirectional = False
    inputs = processor(images=images_of_three_shapes())
    with pytest.raises(ValueError, match="gemma3 embedder needs `image_input_ids` and `image_mm_token_type_ids`"):
        model(pixel_values=inputs["pixel_values"], image_input_ids=inputs["image_input_ids"])


@pytest.mark.parametrize("family, refused, accepted", [
    # LLaVA's CLIP tower: the center crop is the tower's input; without one, CLIP's size follows the aspect ratio
    ("llava", [{"crop_size": {"height": 24, "width": 24}, "size": {"shortest_edge": 24}}, {"do_center_crop": False}],
     [{"size": {"shortest_edge": 32}}, {"do_center_crop": False, "size": {"height": 16, "width": 16}}]),
    ("internvl", [{"size": {"height": 24, "width": 24}}], [{"max_patches": 2}]),
    # tiles of max_image_size (a multiple of the tower's too is refused: its tokens are counted for the tower's);
    # size, the image's longest edge before it is cut into tiles, may be any
    ("idefics3", [{"max_image_size": {"longest_edge": 32}}], [{"size": {"longest_edge": 32}}]),
    ("smolvlm", [{"max_image_size": {"longest_edge": 24}}], [{"do_image_splitting": False}]),
])
def test_image_processors_making_images_unlike_the_vision_towers_are_refused(family, refused, accepted, tmp_path):
    """LLaVA's tower takes images of its `image_size` only, and InternVL's and Idefics3's image tokens are counted for
    tiles of that size: `image_processor_kwargs` making another size loaded, then failed at the first encode in
    transformers' words (found by a review helper). They are refused by name, as `load_maple` promises, and by the
    judge's prompt encoder; settings that make images of the tower's size load and encode."""
    from dataset_builders.vlm_inputs import PromptEncoder

    from modeling_maple import MapleLoadError, load_maple
    from modeling_maple.testing import save_tiny_mllm_backbone

    folder = save_tiny_mllm_backbone(tmp_path, family)
    message = (r"the image processor makes (?!16x16-)\d+x\d+-pixel images \(or tiles\) of a 16x32 one \(height x width\), "
               "but the model's vision tower takes 16x16 ")
    for kwargs in refused:
        with pytest.raises(MapleLoadError, match=f"^{re.escape(folder)}: {message}"):
            load_maple(folder, image_processor_kwargs=kwargs)
        with pytest.raises(ValueError, match=f"^{family}: {message}"):
            PromptEncoder(tiny_mllm_config(family), tiny_mllm_tokenizer(family), load_image_processor(folder, kwargs))
    for kwargs in accepted:
        model, processor = load_maple(folder, image_processor_kwargs=kwargs)
        assert model.eval().encode(processor, images=images_of_three_shapes()).shape[0] == 3


def test_gemma3_image_processors_that_resize_unlike_the_vision_tower_are_refused(tmp_path):
    """Gemma 3's SigLIP tower takes images of its own `image_size` (896 px for gemma-3) and pools its patch grid into
    `mm_tokens_per_image` tokens: an image processor resizing to another size (e.g. `image_processor_kwargs` asking the
    judge for smaller images) failed at the first forward with a bare shape error, after the weights had loaded. The
    embedder's processor and the judge's prompt encoder name it up front."""
    from dataset_builders.vlm_inputs import PromptEncoder

    config, tokenizer = tiny_mllm_config("gemma3"), tiny_mllm_tokenizer("gemma3")
    larger = Gemma3ImageProcessorPil(size={"height": 32, "width": 32})
    message = "the image processor resizes images to 32x32, but the model's vision tower takes 16x16 .*: set both alike"
    with pytest.raises(ValueError, match=f"^gemma3: {message}"):
        PromptEncoder(config, tokenizer, larger)
    config.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    larger.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=f"^{re.escape(str(tmp_path))}: {message}"):
        MapleProcessor.from_backbone(str(tmp_path), backbone="mllm")


@pytest.mark.parametrize("family", ["pixtral", "mistral3"])
def test_pixtral_image_processors_unlike_the_vision_tower_are_refused(family, tmp_path):
    """Pixtral's and Mistral 3's image processors resize each image to whole patches (Mistral 3: merged ones), by which
    its tokens are counted, and the tower's 2-D rotary positions reach `image_size` px a side: a `patch_size` unlike the
    tower's (tokens counted for other patches than the model cuts) or a larger `size` (positions out of its table) is
    refused by name where the embedder's processor and the judge's prompt encoder are built, not in a forward; so is one
    that does not resize (sizes that are no whole patches, beyond the tower's reach), pad (images of several sizes in
    one batch) or that crops (the tokens counted from sizes the crop changes)."""
    from dataset_builders.vlm_inputs import PromptEncoder

    config, tokenizer = tiny_mllm_config(family), tiny_mllm_tokenizer(family)
    refused = [
        (PixtralImageProcessorPil(size={"longest_edge": 32}, patch_size=8),
         "the image processor's patch_size is 8x8, but the model's vision tower's is 4x4 .*: set both alike"),
        (PixtralImageProcessorPil(size={"longest_edge": 64}, patch_size=4),
         "the image processor's size is .*, but the model's vision tower takes images of at most 32 px a side .*"
         "set size={'longest_edge': 32} or less"),
        (PixtralImageProcessorPil(size={"longest_edge": 32}, patch_size=4, do_resize=False, do_pad=False),
         "the image processor sets do_resize=False, do_pad=False, but each image must be resized to whole patches .*"),
        (PixtralImageProcessorPil(size={"longest_edge": 32}, patch_size=4, do_center_crop=True, crop_size=16),
         "the image processor sets do_center_crop=True, .*: set do_resize=True, do_pad=True, do_center_crop=False"),
    ]
    assert_refused_where_built(config, tokenizer, refused, tmp_path)
    tiny_mllm_image_processor(family).save_pretrained(tmp_path)  # the tower's patches and size: accepted
    assert MapleProcessor.from_backbone(str(tmp_path), backbone="mllm").mllm_type == family
    assert PromptEncoder(config, tokenizer, PixtralImageProcessorPil(size={"longest_edge": 16}, patch_size=4)).family == family


def test_bad_family_settings_are_named_errors(tmp_path):
    image_processor, tokenizer = tiny_mllm_image_processor("llava"), tiny_tokenizer()
    padless = tiny_tokenizer()
    padless.pad_token = None
    with pytest.raises(ValueError, match="has no pad token"):
        MapleProcessor(image_processor, padless, mllm_type="llava", image_token="<|image_pad|>", image_seq_length=16)
    with pytest.raises(ValueError, match="Unsupported MLLM 'blip_2'"):
        MapleProcessor(image_processor, tokenizer, mllm_type="blip_2")
    with pytest.raises(ValueError, match="llava processor needs `image_seq_length`"):
        MapleProcessor(image_processor, tokenizer, mllm_type="llava", image_token="<|image_pad|>")
    with pytest.raises(ValueError, match="no '<image>' token"):
        MapleProcessor(image_processor, tokenizer, mllm_type="llava", image_token="<image>", image_seq_length=16)
    with pytest.raises(ValueError, match="no '<img>' token"):
        MapleProcessor(tiny_mllm_image_processor("internvl"), tokenizer, mllm_type="internvl", image_token="<|image_pad|>", image_seq_length=4)
    clip_folder = tmp_path / "clip-vision"
    tiny_mllm_config("llava").vision_config.save_pretrained(clip_folder)
    image_processor.save_pretrained(clip_folder)
    tokenizer.save_pretrained(clip_folder)
    with pytest.raises(ValueError, match="Unsupported MLLM 'clip_vision_model'"):
        MapleProcessor.from_backbone(str(clip_folder), backbone="mllm")
    pixtral_tower = tiny_mllm_config("pixtral").vision_config.to_dict()
    with pytest.raises(ValueError, match="LLaVA-NeXT with a 'pixtral' vision tower is not supported: expected a CLIP or "
                                         r"SigLIP tower \(a Pixtral tower goes with a 'llava' config\)"):
        mllm_image_seq_length(tiny_mllm_config("llava_next", vision_config=pixtral_tower))
    # pixtral-12b's strategy; "default" would drop the batch's first patch, and the model's split by image_sizes fail
    with pytest.raises(ValueError, match="LLaVA with a 'pixtral' vision tower and vision_feature_select_strategy='default' "
                                         "is not supported: expected 'full'"):
        mllm_image_seq_length(tiny_mllm_config("pixtral", vision_feature_select_strategy="default"))
    assert mllm_family(tiny_mllm_config("pixtral")) == "pixtral" and mllm_family(tiny_mllm_config("llava")) == "llava"
    model, processor = build_tiny("mllm", mllm_type="llava")
    with pytest.raises(ValueError, match="llava embedder needs `image_input_ids`"):
        model(pixel_values=processor(images=images_of_three_shapes())["pixel_values"])


@pytest.mark.parametrize("tower", ["clip_vision_model", "siglip_vision_model"])
@pytest.mark.parametrize("strategy", ["default", "full"])
def test_llava_image_token_count_follows_the_tower_and_feature_strategy(tower, strategy):
    """LLaVA drops the tower's first token under the "default" strategy: CLS for CLIP, a patch for SigLIP (which has no
    CLS), as llava-interleave's SigLIP checkpoints do. The count must equal the features the model produces."""
    vision = {"model_type": tower, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
              "num_attention_heads": 2, "image_size": 16, "patch_size": 4}
    config = tiny_mllm_config("llava", vision_config=vision, vision_feature_select_strategy=strategy)
    torch.manual_seed(0)
    model = MapleModel(MapleConfig(backbone="mllm", mllm_config=config)).eval()
    processor = MapleProcessor(tiny_mllm_image_processor("llava"), tiny_tokenizer(), mllm_type="llava",
                               image_token="<|image_pad|>", image_seq_length=mllm_image_seq_length(config))
    batch = processor(images=images_of_three_shapes()[:2])
    with torch.no_grad():
        features = model.mllm.get_image_features(pixel_values=batch["pixel_values"]).pooler_output
    assert processor.image_seq_length == features[0].shape[0] == 16 + (tower == "clip_vision_model") - (strategy == "default")
    assert model.encode(processor, images=images_of_three_shapes()[:2]).shape == (2, 32)


# The image geometry of real checkpoints (at tiny widths), and the image tokens per image or tile their own
# processors use (processor_config.json: image_seq_length / image_seq_len; None where it follows each image's size).
LLAVA_V16_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]  # config and image processor
REAL_GEOMETRY = {
    "llava": (  # llava-hf/llava-1.5-7b-hf
        {"vision_config": {"model_type": "clip_vision_model", "image_size": 336, "patch_size": 14},
         "vision_feature_select_strategy": "default", "vision_feature_layer": -2},
        lambda: CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}), 576),
    "llava_next": (  # llava-hf/llava-v1.6-mistral-7b-hf: 576 tokens per 336-pixel tile, up to 4 tiles and the base view
        {"vision_config": {"model_type": "clip_vision_model", "image_size": 336, "patch_size": 14},
         "vision_feature_select_strategy": "default", "vision_feature_layer": -2,
         "image_grid_pinpoints": LLAVA_V16_PINPOINTS},
        lambda: LlavaNextImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                                           image_grid_pinpoints=LLAVA_V16_PINPOINTS),
        576),
    "internvl": (  # OpenGVLab/InternVL3-1B-hf
        {"vision_config": {"image_size": [448, 448], "patch_size": [14, 14]}, "downsample_ratio": 0.5},
        lambda: GotOcr2ImageProcessorPil(size={"height": 448, "width": 448}, max_patches=4), 256),
    "smolvlm": (  # HuggingFaceTB/SmolVLM-256M-Instruct
        {"vision_config": {"image_size": 512, "patch_size": 16}, "scale_factor": 4},
        lambda: SmolVLMImageProcessorPil(size={"longest_edge": 1024}, max_image_size={"longest_edge": 512}), 64),
    "gemma3": (  # google/gemma-3-4b-it: 896-pixel images, 64x64 patches pooled into 256 tokens
        {"vision_config": {"image_size": 896, "patch_size": 14}, "mm_tokens_per_image": 256},
        lambda: Gemma3ImageProcessorPil(size={"height": 896, "width": 896}), 256),
    "pixtral": (  # mistral-community/pixtral-12b: 16-pixel patches, images up to 1024 px a side, a token per patch
        {"vision_config": {"image_size": 1024, "patch_size": 16}, "vision_feature_select_strategy": "full"},
        lambda: PixtralImageProcessorPil(size={"longest_edge": 1024}, patch_size=16), None),
    "mistral3": (  # mistralai/Mistral-Small-3.1-24B-Instruct-2503: 14-pixel patches merged 2x2, up to 1540 px a side
        {"vision_config": {"image_size": 1540, "patch_size": 14}, "spatial_merge_size": 2},
        lambda: PixtralImageProcessorPil(size={"longest_edge": 1540}, patch_size=14), None),
    "idefics3": (  # HuggingFaceM4/Idefics3-8B-Llama3
        {"vision_config": {"image_size": 364, "patch_size": 14}, "scale_factor": 2},
        lambda: Idefics3ImageProcessorPil(size={"longest_edge": 728}, max_image_size={"longest_edge": 364}), 169),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_real_checkpoint_geometry_gives_their_processors_token_counts(family):
    overrides, image_processor, expected_tokens = REAL_GEOMETRY[family]
    vision = {**tiny_mllm_config(family).vision_config.to_dict(), "num_hidden_layers": 1, **overrides["vision_config"]}
    config = tiny_mllm_config(family, **{**overrides, "vision_config": vision})
    assert mllm_image_seq_length(config) == expected_tokens
    torch.manual_seed(0)
    model = MapleModel(MapleConfig(backbone="mllm", mllm_config=config)).eval()
    processor = MapleProcessor(image_processor(), tiny_mllm_tokenizer(family), mllm_type=family,
                               image_token=TINY_IMAGE_TOKENS[family], image_seq_length=expected_tokens,
                               spatial_merge_size=mllm_spatial_merge_size(config))
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)) for shape in [(300, 400, 3), (400, 200, 3)]]
    both = model.encode(processor, images=images)  # a count that differs from the model's features raises here
    torch.testing.assert_close(model.encode(processor, images=images[1:])[0], both[1], atol=1e-5, rtol=0)
