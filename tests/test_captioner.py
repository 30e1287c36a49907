"""ContrastiveCaptioner on a tiny Qwen2-VL: gibberish captions, real generation plumbing."""

import json
import warnings

import pytest
import torch
from PIL import Image

import dataset_builders.captioner as captioner_module
from dataset_builders import CandidateCaptioner, ContrastiveCaptioner
from dataset_builders.builder import MaplePreferences, WorkDirMismatch
from dataset_builders.captioner import CAPTION_PARSER_VERSION, parse_captions
from dataset_builders.testing import (
    ColourJudge,
    colour_square_source,
    thumbnail_miner,
    tiny_captioner,
    tiny_image_text_model,
    tiny_thinking_tokenizer,
)
from modeling_maple.testing import tiny_image_processor, tiny_tokenizer
from official_processors import PIXTRAL_12B_CHAT_TEMPLATE, official_processor

ANCHORS = [Image.new("RGB", (32, 32), "red"), Image.new("RGB", (40, 24), "blue")]
NEGATIVES = [Image.new("RGB", (32, 32), "orange"), Image.new("RGB", (24, 40), "navy")]


def test_parse_captions_reads_labelled_lines_or_falls_back_to_the_whole_answer():
    assert parse_captions("Image 1: a red cube.\nImage 2: a blue cube.") == ["a red cube.", "a blue cube."]
    assert parse_captions("**Image 1:** a cat\n\n**Image 2**: two cats") == ["a cat", "two cats"]
    assert parse_captions("  a red cube\n on grass ") == ["a red cube on grass"]
    assert parse_captions(" \n ") == []


RED_BLUE = ["a red car", "a blue car"]


@pytest.mark.parametrize("answer, captions", [
    ("Image 1: a red car. Image 2: a blue car.", ["a red car.", "a blue car."]),
    ("Image 1: a red car, Image 2: a blue car", RED_BLUE),
    ("Image 1: a red car | Image 2: a blue car", RED_BLUE),
    ("Image 1: a red car; Image 2: a blue car", RED_BLUE),
    ("Image 1: a red car\rImage 2: a blue car", RED_BLUE),  # old Mac line ends
    ("- Image 1: a red car\n- Image 2: a blue car", RED_BLUE),
    ("Image 1 (anchor): a red car\nImage 2 (negative): a blue car", RED_BLUE),
    ("**Caption for Image 1:**\na red car\n\n**Caption for Image 2:**\na blue car", RED_BLUE),
    ("### Image 1:\na red car\n### Image 2:\na blue car", RED_BLUE),
    ("1. a red car\n2. a blue car", RED_BLUE),
    ("Sure! Here are two captions.\n1. a red car\n2. a blue car\n\nBoth show a street.", RED_BLUE),
    ("Here are the captions:\nImage 1:\na red car\nImage 2:\na blue car\n\nThey differ in colour.", RED_BLUE),
])
def test_parse_captions_splits_answers_that_half_follow_the_format(answer, captions):
    """Each of these was one candidate describing both images, labels included."""
    assert parse_captions(answer) == captions


@pytest.mark.parametrize("answer, captions", [
    ("Image 1: a red cube\nImage 2: a blue cube on a table.\nThe difference is the colour.", ["a red cube", "a blue cube on a table."]),
    ("Image 1: a red cube\nNote: the cubes differ.\nImage 2: a blue cube", ["a red cube", "a blue cube"]),
    ("Image 1: a red cube\r\nImage 2: a blue cube\r\n\r\nThey differ.", ["a red cube", "a blue cube"]),
    ("a bottle of 1.5 litres; image 2-3 cm caps nearby.", ["a bottle of 1.5 litres; image 2-3 cm caps nearby."]),
    ("Image 1: A red car parked on a quiet street,\nwith trees behind it.\nImage 2: A blue car.",
     ["A red car parked on a quiet street, with trees behind it.", "A blue car."]),
    ("**Image 1:**\nA red car\nparked.", ["A red car parked."]),
    ("**Image 1:**\nWhat a red car!\nThe colour stands out.", ["What a red car!"]),
    ("Image 1: a red car beside a sign,\nthe sign reading in large letters: STOP.\nImage 2: a blue car.",
     ["a red car beside a sign, the sign reading in large letters: STOP.", "a blue car."]),
])
def test_parse_captions_keeps_wrapped_captions_and_leaves_out_comments(answer, captions):
    """A caption goes on over the next line until it ends a sentence (with ".", "!" or "?"); a comment after a finished
    caption or on a short "Note:" line is not part of it, while a long line with a colon in it goes on the caption; a
    mid-sentence "image 2-" is no label."""
    assert parse_captions(answer) == captions


def test_captioner_samples_with_the_papers_settings_and_is_reproducible():
    captioner = tiny_captioner(seed=0, batch_size=4)
    assert isinstance(captioner, CandidateCaptioner)
    assert (captioner.temperature, captioner.num_samples) == (0.7, 3)
    pairs = list(zip(ANCHORS, NEGATIVES))
    torch.manual_seed(0)
    first = captioner._generate(pairs)
    torch.manual_seed(0)
    assert captioner._generate(pairs) == first
    # a random model never ends its answer: each is cut at max_new_tokens, so its last (here only) caption is dropped
    assert all(answer and not finished for answer, finished in first)
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="reached max_new_tokens"):
        assert captioner.caption(ANCHORS, NEGATIVES) == [[], []]


@pytest.mark.filterwarnings("ignore:A captioner answer reached max_new_tokens")  # a random model's answers are cut
def test_captioner_shows_both_images_and_the_configured_prompt(monkeypatch):
    captioner = tiny_captioner(seed=0, prompt="Contrast them.", num_samples=2, batch_size=3)
    seen = {}
    original_generate = captioner.model.generate

    def spying_generate(**inputs):
        seen.setdefault("calls", []).append(inputs)
        return original_generate(**inputs)

    monkeypatch.setattr(captioner.model, "generate", spying_generate)
    captioner.caption(ANCHORS, NEGATIVES)
    calls = seen["calls"]
    assert [call["input_ids"].shape[0] for call in calls] == [3, 1]  # 2 pairs x 2 samples, 3 per batch
    first = calls[0]
    assert first["image_grid_thw"].shape[0] == 2 * 3  # anchor + negative per prompt
    assert first["temperature"] == 0.7 and first["do_sample"]
    prompt = captioner.prompt_encoder.tokenizer.decode(first["input_ids"][0])
    assert "Contrast them." in prompt
    assert prompt.endswith("<|im_start|>assistant\n"), "the answer starts in the assistant's turn"
    image_token = captioner.prompt_encoder.image_token_id
    assert (first["mm_token_type_ids"] == (first["input_ids"] == image_token)).all()
    assert (first["attention_mask"][:, -1] == 1).all(), "generation prompts are left-padded"


def test_a_thinking_template_has_the_captioner_answer_after_the_empty_think_block(monkeypatch):
    """The generation prompt ends in an open think block: the model spent max_new_tokens reasoning, and the reasoning,
    unlabelled, became one caption. The captioner feeds the empty think block the template writes before an answer."""
    tokenizer = tiny_thinking_tokenizer()
    model = tiny_image_text_model()
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    captioner = ContrastiveCaptioner(model, tokenizer, tiny_image_processor(), num_samples=1, max_new_tokens=2)
    prompts = []
    monkeypatch.setattr(captioner.model, "generate", lambda input_ids, **inputs: prompts.append(input_ids) or input_ids)
    captioner.caption(ANCHORS[:1], NEGATIVES[:1])
    assert tokenizer.decode(prompts[0][0]).endswith("<|im_start|>assistant\n<think>\n\n</think>")
    assert captioner.settings["answer_lead"] == "\n</think>"  # the whitespace after it is the model's to write
    assert "answer_lead" not in tiny_captioner(seed=0).settings  # a manifest without one reads as before


def test_a_template_whose_answer_does_not_continue_its_generation_prompt_is_refused():
    """As by the judge: such a template may drop a thinking model's think block when it renders an answer, and a
    prompt ending in an open "<think>" has the model reason within max_new_tokens instead of captioning."""
    tokenizer = tiny_thinking_tokenizer(answer_closes_think_block=False)
    model = tiny_image_text_model()
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with pytest.raises(ValueError, match=r"renders an answered conversation that does not continue its generation prompt"):
        ContrastiveCaptioner(model, tokenizer, tiny_image_processor(), num_samples=1, max_new_tokens=2)


@pytest.mark.parametrize("family", ["smolvlm", "idefics3"])
def test_the_captioner_prompt_ends_where_the_template_ends_it_whatever_the_probe_word_tokenises_to(family):
    """These tiny tokenizers have no " Image" token, so the answer "Image" renders as " " + "Image": the space was
    taken for template text, fed after "Assistant:", and recorded in the settings (a work dir built before stopped
    with a mismatch)."""
    captioner = tiny_captioner(seed=0, family=family)
    assert captioner._prompt_text.endswith("Assistant:")
    assert "answer_lead" not in captioner.settings


def test_sampling_is_plain_whatever_the_checkpoints_generation_config_says():
    """Qwen2-VL / Qwen2.5-VL Instruct ship generation_config.json with top_k=1, top_p=0.001 and
    repetition_penalty=1.05 (QwenLM/Qwen3-VL#722); before the fix `generate` took them, and every
    sample was the greedy answer."""
    captioner = tiny_captioner(seed=0, num_samples=6)
    checkpoint_config = captioner.model.generation_config
    checkpoint_config.do_sample, checkpoint_config.top_k, checkpoint_config.top_p = True, 1, 0.001
    checkpoint_config.repetition_penalty = 1.05
    torch.manual_seed(0)
    answers = captioner._generate([(ANCHORS[0], NEGATIVES[0])] * 6)
    assert len(set(answers)) > 1
    for setting, value in {"typical_p": 0.2, "no_repeat_ngram_size": 3, "epsilon_cutoff": 0.1, "min_p": 0.1}.items():
        setattr(checkpoint_config, setting, value)  # every other warper a checkpoint may switch on
    off = {"top_k": 0, "top_p": 1.0, "min_p": None, "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0,
           "repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "num_beams": 1, "num_return_sequences": 1}
    assert {setting: getattr(captioner.generation_config, setting) for setting in off} == off
    recorded = captioner.settings["generation_config"]
    assert recorded["do_sample"] and recorded["temperature"] == 0.7
    assert (recorded["top_k"], recorded["top_p"], recorded["repetition_penalty"]) == (0, 1.0, 1.0)
    assert recorded["eos_token_id"] == checkpoint_config.eos_token_id  # the checkpoint's other entries still apply
    assert checkpoint_config.top_k == 1, "the model's own generation config is left as it was"


def test_each_prompt_shows_the_pairs_negative_beside_its_anchor():
    """Images of other sizes take other numbers of image tokens: a prompt that showed the anchor twice would not
    match the negative's features."""
    captioner = tiny_captioner(seed=0)
    torch.manual_seed(0)
    [(answer, _)] = captioner._generate([(ANCHORS[0], Image.new("RGB", (64, 32), "orange"))])
    assert answer


def test_bad_settings_and_mismatched_inputs_are_rejected():
    with pytest.raises(ValueError, match=r"temperature must be positive, got 0; num_samples must be at least 1, got 0"):
        ContrastiveCaptioner(tiny_image_text_model(), tiny_tokenizer(), tiny_image_processor(), temperature=0, num_samples=0)
    for setting in ("max_new_tokens", "batch_size"):
        with pytest.raises(ValueError, match=rf"{setting} must be at least 1, got -1"):
            ContrastiveCaptioner(tiny_image_text_model(), tiny_tokenizer(), tiny_image_processor(), **{setting: -1})
    for temperature in (float("nan"), float("inf")):  # NaN passed `temperature <= 0`
        with pytest.raises(ValueError, match=rf"temperature must be positive, got {temperature}"):
            ContrastiveCaptioner.check_values(temperature=temperature)
    with pytest.raises(ValueError, match="2 anchors but 1 negatives"):
        tiny_captioner().caption(ANCHORS, NEGATIVES[:1])


def test_from_pretrained_refuses_bad_settings_before_it_loads(monkeypatch):
    """The model (72B for the paper's captioner) loaded first, then the constructor refused the settings."""
    monkeypatch.setattr("dataset_builders.vlm_inputs.load_vlm", lambda *args, **kwargs: pytest.fail("the model was loaded"))
    with pytest.raises(ValueError, match=r"temperature must be positive, got 0; batch_size must be at least 1, got 0"):
        ContrastiveCaptioner.from_pretrained("Qwen/Qwen2-VL-72B-Instruct", temperature=0, batch_size=0)


def test_from_pretrained_takes_loading_keywords_at_top_level_as_the_judge_does(tmp_path):
    source = tiny_captioner()
    for part in (source.model, source.prompt_encoder.tokenizer, source.prompt_encoder.image_processor):
        part.save_pretrained(tmp_path)
    captioner = ContrastiveCaptioner.from_pretrained(str(tmp_path), dtype=torch.bfloat16, device_map="cpu", num_samples=2)
    assert (captioner.model.dtype, captioner.num_samples, captioner.name) == (torch.bfloat16, 2, str(tmp_path))
    legacy = ContrastiveCaptioner.from_pretrained(str(tmp_path), loading_kwargs={"dtype": torch.float32, "model_kwargs": {"device_map": "cpu"}})
    assert legacy.model.dtype == torch.float32
    # model_kwargs reach the weights only: a revision there would pair them with another snapshot's tokenizer
    for kwargs in ({"revision": "v2"}, {"model_kwargs": {"revision": "v2"}}):
        with pytest.raises(TypeError, match=r"'revision' would reach the model's weights only, .*snapshot_download"):
            ContrastiveCaptioner.from_pretrained(str(tmp_path), **kwargs)
    with pytest.raises(TypeError, match=r"got an unknown keyword 'attn_implementation'.*model_kwargs="):
        ContrastiveCaptioner.from_pretrained(str(tmp_path), attn_implementation="eager")

    class SettingsPassedOn(ContrastiveCaptioner):
        def __init__(self, *args, seen=None, **kwargs):
            super().__init__(*args, **kwargs)

    assert SettingsPassedOn.from_pretrained(str(tmp_path), num_samples=2).num_samples == 2


@pytest.mark.parametrize("family", ["llava", "llava_next", "internvl", "smolvlm", "gemma3", "pixtral", "mistral3"])
def test_other_families_caption_from_both_images(family):
    captioner = tiny_captioner(seed=0, family=family, num_samples=2, max_new_tokens=4)
    torch.manual_seed(0)
    answers = captioner._generate(list(zip(ANCHORS, NEGATIVES)))
    assert len(answers) == 2 and all(answer for answer, _ in answers)


# Pairs of differently sized images (LLaVA-NeXT: 5 + 5 and 3 + 4 tiles).
MIXED_PAIRS = [(ANCHORS[0], NEGATIVES[1]), (Image.new("RGB", (16, 16), "green"), Image.new("RGB", (100, 7), "grey"))]


def _sharp_captioner_and_its_generate_inputs(family: str, monkeypatch) -> tuple[ContrastiveCaptioner, dict]:
    """A tiny `family` captioner with large random weights (its logits spread), and the inputs it gives `generate` to
    caption `MIXED_PAIRS` in one batch."""
    captioner = tiny_captioner(seed=0, family=family, num_samples=1, max_new_tokens=4)
    with torch.no_grad():
        for parameter in captioner.model.parameters():
            parameter.normal_(0.0, 0.3)
    captured = {}
    generate = captioner.model.generate

    def recording_generate(**inputs):
        captured.update(inputs)
        return generate(**inputs)

    monkeypatch.setattr(captioner.model, "generate", recording_generate)
    assert len(captioner._generate(MIXED_PAIRS)) == 2
    return captioner, captured


def test_llava_next_captioner_batches_pairs_of_any_sizes_as_its_own_processor_and_model_see_each(monkeypatch):
    """LLaVA-NeXT: tiles and image tokens follow each image's size, so the prompts of pairs of differently sized images
    differ in length and are left-padded in one batch. Each row holds the prompt `LlavaNextProcessor` builds for its pair
    alone, and the model's next-token logits for it (at the positions `generate` gives a left-padded row) are those of
    that pair alone."""
    captioner, captured = _sharp_captioner_and_its_generate_inputs("llava_next", monkeypatch)
    mask = captured["attention_mask"]
    assert len(set(mask.sum(dim=1).tolist())) == 2  # the rows are padded
    assert captured["pixel_values"].shape[0] == 5 + 5 + 3 + 4  # each image's own tiles, no padding tile
    model_inputs = {key: captured[key] for key in ("input_ids", "attention_mask", "pixel_values", "image_sizes")}
    with torch.no_grad():
        batched = captioner.model(**model_inputs, position_ids=(mask.cumsum(dim=1) - 1).clamp(min=0)).logits[:, -1]
    official = official_processor("llava_next", monkeypatch)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": captioner.prompt}]}]
    prompt = official.apply_chat_template(messages, add_generation_prompt=True)
    for row, pair in enumerate(MIXED_PAIRS):
        alone = official(text=[prompt], images=list(pair), return_tensors="pt")
        assert captured["input_ids"][row][mask[row].bool()].tolist() == alone["input_ids"][0].tolist()
        with torch.no_grad():
            torch.testing.assert_close(batched[row], captioner.model(**alone).logits[0, -1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", ["pixtral", "mistral3"])
def test_pixtral_captioner_batches_pairs_of_any_sizes_as_its_own_processor_and_model_see_each(family, monkeypatch):
    """Pixtral and Mistral 3: each image at its own size, its rows of `[IMG]` tokens and its pixels padded to the batch's
    largest image, with `image_sizes`. Each left-padded row holds the prompt `PixtralProcessor` builds for its pair alone
    (the template's BOS, not doubled), and the model's next-token logits for it are those of that pair alone."""
    captioner, captured = _sharp_captioner_and_its_generate_inputs(family, monkeypatch)
    mask = captured["attention_mask"]
    assert len(set(mask.sum(dim=1).tolist())) == 2  # the rows are padded
    assert len(set(map(tuple, captured["image_sizes"].tolist()))) == 4  # every image at its own size
    model_inputs = {key: captured[key] for key in ("input_ids", "attention_mask", "pixel_values", "image_sizes")}
    with torch.no_grad():
        batched = captioner.model(**model_inputs, position_ids=(mask.cumsum(dim=1) - 1).clamp(min=0)).logits[:, -1]
    official = official_processor(family, monkeypatch)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": captioner.prompt}]}]
    prompt = official.apply_chat_template(messages, add_generation_prompt=True)
    for row, pair in enumerate(MIXED_PAIRS):
        # the template wrote the BOS, so `apply_chat_template(tokenize=True)` would add no other
        alone = official(text=[prompt], images=[list(pair)], add_special_tokens=False, return_tensors="pt")
        assert captured["input_ids"][row][mask[row].bool()].tolist() == alone["input_ids"][0].tolist()
        with torch.no_grad():
            torch.testing.assert_close(batched[row], captioner.model(**alone).logits[0, -1], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(batched[0], batched[1], atol=1e-3)  # the two pairs' images are seen


def test_a_pixtral_captioner_with_pixtral_12bs_own_chat_template_keeps_its_instruction():
    """pixtral-12b's chat template reads a text part's words under "content", not "text": the captioner's prompt held
    the two images and no instruction at all, and it sampled captions of nothing it had asked for, silently."""
    captioner = tiny_captioner(family="pixtral", chat_template=PIXTRAL_12B_CHAT_TEMPLATE)
    assert captioner._prompt_text == tiny_captioner(family="pixtral")._prompt_text
    assert captioner.prompt in captioner._prompt_text


def test_gemma3_captioner_prompts_and_logits_are_its_own_processors_and_models_for_each_pair(monkeypatch):
    """Gemma 3: the chat template's BOS and `<start_of_image>` placeholders, expanded as `Gemma3Processor` expands them,
    and `token_type_ids` for its mask within each image reach `generate`. Each row holds the prompt `Gemma3Processor`
    builds for its pair alone, and the model's next-token logits for it are those of that pair alone."""
    captioner, captured = _sharp_captioner_and_its_generate_inputs("gemma3", monkeypatch)
    model_inputs = {key: captured[key] for key in ("input_ids", "attention_mask", "pixel_values", "token_type_ids")}
    with torch.no_grad():
        batched = captioner.model(**model_inputs).logits[:, -1]
    official = official_processor("gemma3", monkeypatch)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": captioner.prompt}]}]
    prompt = official.apply_chat_template(messages, add_generation_prompt=True)
    for row, pair in enumerate(MIXED_PAIRS):
        # the template wrote the BOS, so `apply_chat_template(tokenize=True)` would add no other
        alone = official(text=[prompt], images=[list(pair)], add_special_tokens=False, return_tensors="pt")
        assert captured["input_ids"][row].tolist() == alone["input_ids"][0].tolist()
        assert captured["token_type_ids"][row].tolist() == alone["token_type_ids"][0].tolist()
        with torch.no_grad():
            torch.testing.assert_close(batched[row], captioner.model(**alone).logits[0, -1], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(batched[0], batched[1], atol=1e-3)  # the two pairs' images are seen


def test_captions_repeated_within_one_answer_are_kept_once(monkeypatch):
    captioner = tiny_captioner(seed=0, num_samples=2, batch_size=4)
    answers = ["Image 1: a red cube\nImage 2: a red cube", "Image 1: a blue cube\nImage 2: a red cube\nImage 3: a blue cube"]
    monkeypatch.setattr(captioner, "_generate", lambda pairs: [(answer, True) for answer in answers[: len(pairs)]])
    assert captioner.caption(ANCHORS[:1], NEGATIVES[:1]) == [["a red cube", "a blue cube"]]


def test_the_last_caption_of_an_answer_cut_at_max_new_tokens_is_dropped(monkeypatch):
    """An answer that hits max_new_tokens ends mid-caption ("a blue"): that fragment was judged and trained on as a
    hard text negative."""
    captioner = tiny_captioner(seed=0, num_samples=1, batch_size=2, max_new_tokens=24)
    tokenizer = captioner.prompt_encoder.tokenizer
    eos = captioner.generation_config.eos_token_id
    eos = eos if isinstance(eos, int) else eos[0]
    cut = tokenizer("Image 1: a red circle above a green square\nImage 2: a blue square left of the",
                    add_special_tokens=False)["input_ids"]
    ended = tokenizer("Image 1: a red cube\nImage 2: a blue", add_special_tokens=False)["input_ids"]
    assert len(cut) > 24 and len(ended) < 24
    answers = [cut[:24], ended + [eos] * (24 - len(ended))]

    def generate(input_ids, **kwargs):  # as `generate` pads answers that ended, and cuts the others
        return torch.cat([input_ids, torch.tensor(answers[: len(input_ids)])], dim=1)

    monkeypatch.setattr(captioner.model, "generate", generate)
    with pytest.warns(UserWarning, match="reached max_new_tokens=24: its last caption, cut off, is dropped"):
        captions = captioner.caption(ANCHORS[:2], NEGATIVES[:2])
    assert captions == [["a red circle above a green square"], ["a red cube", "a blue"]]  # an ended one stays whole


@pytest.mark.parametrize("answer, captions", [
    ("Image 1: The car is red.\nImage 2: The car is blue.\nImage", ["The car is red.", "The car is blue."]),
    ("1. A red car on a road.\n2. A blue car on a road.\n3.", ["A red car on a road.", "A blue car on a road."]),
    ("Image 1: a red car\nImage 2: a blue car\n\nThese captions hi", ["a red car", "a blue car"]),
    ("Image 1: a red car\nImage 2: The car is blue.", ["a red car", "The car is blue."]),
    ("Image 1: Is the car red?\nImage 2: What a blue car!", ["Is the car red?", "What a blue car!"]),
    ("Image 1 shows a red car.\nImage 2 shows a blue car.\nThe colours diffe", ["a red car.", "a blue car."]),
    ("Image 1: a red car | Image 2: a blue car |", ["a red car", "a blue car"]),  # a "|" closes a table's cell
])
def test_a_cut_that_falls_after_the_last_caption_keeps_it(monkeypatch, answer, captions):
    """The cut can fall in a label, a list number or a closing comment that parsing leaves out, or right after a
    sentence: every caption is whole then (a review found complete captions dropped)."""
    captioner = tiny_captioner(seed=0, num_samples=1, batch_size=1)
    monkeypatch.setattr(captioner, "_generate", lambda pairs: [(answer, False)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert captioner.caption(ANCHORS[:1], NEGATIVES[:1]) == [captions]


RED_GREEN = ["A red apple.", "A green apple."]


@pytest.mark.parametrize("answer, captions", [
    ("**Image 1**\nA red apple.\n\n**Image 2**\nA green apple.", RED_GREEN),
    ("### Image 1\nA red apple.\n\n### Image 2\nA green apple.", RED_GREEN),
    ("Image 1\nA red apple.\nImage 2\nA green apple.", RED_GREEN),
    ("Image 1 \u2013 A red apple.\nImage 2 \u2013 A green apple.", RED_GREEN),  # en dash
    ("Image 1\u2014A red apple.\nImage 2\u2014A green apple.", RED_GREEN),  # em dash
    # no label to split at: the two captions, labels included, were one candidate text
    ("**Image 1** A red apple. **Image 2** A green apple.", []),
    ("Image 1 shows a red apple and image 2 a green one.", []),
    # one image named (twice), or none: one caption
    ("A red apple; the apple in image 1 is shiny, and image 1 has a knife.",
     ["A red apple; the apple in image 1 is shiny, and image 1 has a knife."]),
])
def test_labels_alone_on_their_line_or_before_a_dash_split_and_unsplittable_labelled_answers_give_nothing(answer, captions):
    """Each of these was one caption describing both images, markup included, which then joined the anchor's pool."""
    assert parse_captions(answer) == captions


RED_BLUE_CUBES = ["a red cube left of a ball.", "a blue cube right of a ball."]


@pytest.mark.parametrize("answer, captions", [
    ("Image 1 shows a red cube left of a ball.\nImage 2 shows a blue cube right of a ball.", RED_BLUE_CUBES),
    ("The first image shows a red cube left of a ball.\nThe second image shows a blue cube right of a ball.",
     RED_BLUE_CUBES),
    ("In Image 1, a red cube left of a ball.\nIn Image 2, a blue cube right of a ball.", RED_BLUE_CUBES),
    ("Here are the captions:\n- **Image 1** shows a red cube left of a ball.\n- **Image 2** shows a blue cube right of"
     " a ball.\n\nThe difference is the colour.", RED_BLUE_CUBES),
    ("1. In the first image, a red cube left of a ball.\n2. In the second image, a blue cube right of a ball.",
     RED_BLUE_CUBES),
    ("In the first image, there is a red cube left of a ball.\nIn the second image, there is a blue cube right of a"
     " ball.", ["there is a red cube left of a ball.", "there is a blue cube right of a ball."]),
    ("Image 1 (anchor) shows A red cube.\nImage 2 (negative) shows A blue cube.", ["A red cube.", "A blue cube."]),
    ("Image 1 (left) shows a red cube.\nImage 2 (right) shows a blue cube.", ["a red cube.", "a blue cube."]),
    ("Image 1 shows a red cube on a\nwooden table.\nImage 2 shows a 1.5 m tall blue cube.",
     ["a red cube on a wooden table.", "a 1.5 m tall blue cube."]),
    # bold around the lead, or around the whole line, is no part of the caption
    ("- **Image 1 shows** a red cube.\n- **Image 2 shows** a blue cube.", ["a red cube.", "a blue cube."]),
    ("**Image 1 shows a red cube.**\n**Image 2 shows a blue cube.**", ["a red cube.", "a blue cube."]),
    # a caption goes on past a "." that ends no sentence, and past one that does, to the end of its line
    ("Image 1 shows Mt. Fuji behind a red car.\nImage 2 shows Mt. Fuji behind a blue car.",
     ["Mt. Fuji behind a red car.", "Mt. Fuji behind a blue car."]),
    ("Image 1 shows a man wearing a No. 7 jersey.\nImage 2 shows a man wearing a No. 9 jersey.",
     ["a man wearing a No. 7 jersey.", "a man wearing a No. 9 jersey."]),
    ("Image 1 shows a red cube, approx. 1.5 m tall.\nImage 2 shows a blue cube, approx. 2 m tall.",
     ["a red cube, approx. 1.5 m tall.", "a blue cube, approx. 2 m tall."]),
    ("Image 1 shows a St. Bernard dog on grass.\nImage 2 shows a St. Bernard dog on snow.",
     ["a St. Bernard dog on grass.", "a St. Bernard dog on snow."]),
    ("Image 1 shows a U.S. flag above a red car.\nImage 2 shows a U.S. flag above a blue car.",
     ["a U.S. flag above a red car.", "a U.S. flag above a blue car."]),
    ("Image 1 shows a red cube at 3 p.m. near a ball.\nImage 2 shows a blue cube at 5 p.m. near a ball.",
     ["a red cube at 3 p.m. near a ball.", "a blue cube at 5 p.m. near a ball."]),
    ("Image 1 shows a sign reading Stop! next to a red car.\nImage 2 shows a sign reading Go! next to a blue car.",
     ["a sign reading Stop! next to a red car.", "a sign reading Go! next to a blue car."]),
    ("Image 1 shows a red cube... and a ball.\nImage 2 shows a blue cube... and a ball.",
     ["a red cube... and a ball.", "a blue cube... and a ball."]),
    # a comment after a blank line is no part of the caption, even one naming the other image
    ("Image 1 shows a red cube.\n\nImage 2 shows a blue cube.\n\nIn the first image the cube is shiny.",
     ["a red cube.", "a blue cube."]),
])
def test_answers_of_one_line_per_image_split_at_their_leads(answer, captions):
    """Each caption is the rest of its lead's line (and the lines it wraps over), as after an "Image N:" label. Cut at
    its first ". " (or "! "), the caption was "Mt.", "a man wearing a No." or "a sign reading Stop!"; bold markers
    were left in ("** a red cube.", "a red cube.**")."""
    assert parse_captions(answer) == captions


@pytest.mark.parametrize("answer", [
    "Image 1 shows a red cube while Image 2 shows a blue one.",
    "The first image shows a red cube while the second image shows a blue one.",
    "In the first image, a red cube; in the second image, a blue one.",
    "Image 1 shows a red cube; image 2 shows a blue one.",
    "Image 2 shows a blue cube.\nImage 1 shows a red cube.",
    "Image 1 shows a red cube, unlike image 2.\nImage 2 shows a blue cube.",
    "Image 1 shows a red cube.\nThe second image shows a cube bluer than the first image.",
    "Image 1 shows a red cube.\nImage 2 shows a blue cube, unlike the first.",
    # a caption goes on to the end of its line: naming the other image there, it is a comparison
    "Image 1 shows a red cube left of a ball. It is shiny.\nImage 2 shows a blue cube right of a ball. Unlike image 1,"
    " it is matte.",
    # leads inside a line start no caption
    "Image 1 depicts a red cube left of a ball. Image 2 depicts a blue cube right of a ball.",
    "Image 1 shows a red cube. Image 2 shows a blue cube instead of the red one.",
    "The first image depicts a red cube. The 2nd image depicts a blue cube.",
    "Both images show a cube. The first image shows it in red. The second image shows it in blue.",
    "image 1 shows a red cube. image 2 shows a blue cube.",
    # a lowercase "in the second image" continues a caption wrapped over lines: it is no lead
    "Image 1 shows a red cube that does not appear\nin the second image.\nImage 2 shows a blue cube.",
    "Image 1 shows a red cube missing\nin the second image.",
    "Image 1 shows a red cube that is missing\nin the second image, which shows a blue cube.",
    # no caption follows the lead: ":", "'s foreground", a list, or no lead at all ("In Image 1 we can see")
    "Image 1 shows: a red cube left of a ball.\nImage 2 shows: a blue cube right of a ball.",
    "- Image 1 shows:\n  - a red cube\n  - a ball\n- Image 2 shows:\n  - a blue cube\n  - a ball",
    "In the first image's foreground, a red cube sits left of a ball.\nIn the second image's foreground, a blue cube"
    " sits right of a ball.",
    "In Image 1 we can see a red cube.\nIn Image 2 we can see a blue cube.",
    "Image 1 has been taken at night: a red cube.\nImage 2 has been taken by day: a blue cube.",
    # the second image named as "the second one", "the second" or "Image two": two images, one text
    "The first image shows a red cube. The second one shows a blue cube.",
    "Image 1 shows a red cube, and the second shows a blue cube.",
    "In the first image, a red cube; in the second, a blue cube.",
    "Image one shows a red cube. Image two shows a blue cube.",
])
def test_leads_that_do_not_give_one_caption_per_image_in_order_give_no_caption(answer):
    """A comparison names both images in one caption: it describes neither alone; what follows "Image 1 shows:" or "In
    the first image" is no caption of it. Before, these gave such captions ("we can see a red cube.", ": a red cube
    left of a ball.", "'s foreground, ...", "been taken at night: ..."), or the whole answer as one."""
    assert parse_captions(answer) == []


@pytest.mark.parametrize("answer, captions", [
    ("Image 1: A cat. Image 2 shows a dog.", ["A cat.", "a dog."]),
    ("Image 1: A red cube on\na table. The second image depicts a dog.", ["A red cube on a table.", "a dog."]),
    ("Image 1: Mt. Fuji behind a car. In the second image, a dog.", ["Mt. Fuji behind a car.", "a dog."]),
    ("**Image 1:** A cat. **Image 2 shows** a dog.", ["A cat.", "a dog."]),
    ("Image 1: A cat\nImage 2 shows a dog", ["A cat", "a dog"]),
    ("Image 1: A cat.\nImage 2 shows a dog.", ["A cat.", "a dog."]),
    # and the other way round: a lead into the first image, then a label for the second
    ("Image 1 shows a cat.\nImage 2: a dog.", ["a cat.", "a dog."]),
    ("Here you go.\nThe first image shows a cat. **Image 2:** a dog.", ["a cat.", "a dog."]),
    # no split: the lead names the labelled image, a label names the next one, or no caption follows the lead
    ("Image 1: A cat. Image 1 shows a dog.", ["A cat. Image 1 shows a dog."]),
    ("Image 1: A cat. Image 2 shows a dog.\nImage 2: A dog.", ["A cat. Image 2 shows a dog.", "A dog."]),
    ("Image 1: A cat. Image 2 shows: a dog.", ["A cat. Image 2 shows: a dog."]),
    ("Image 1 shows a cat.\nImage 1: a cat.\nImage 2: a dog.", ["a cat.", "a dog."]),
    ("Image 1 shows: a cat.\nImage 2: a dog.", ["a dog."]),
    # a lead after a blank line still splits, one in a comment after it does not
    ("Image 1: A cat on a mat.\n\nImage 2 shows a dog on a mat.\n\nBoth are indoors.", ["A cat on a mat.", "a dog on a mat."]),
    ("Image 1: A cat on a couch.\n\n**Differences:**\n- Image 2 shows a dog instead of a cat.", ["A cat on a couch."]),
    ("Image 1: A cat.\nNote: the floor differs. Image 2 shows a dog.", ["A cat."]),
    # nor one inside a quotation, or after a period that ends no sentence
    ('Image 1: "A cat. Image 2 shows a dog."', ['"A cat. Image 2 shows a dog."']),
    ("Image 1: \u201cA cat. Image 2 shows a dog.\u201d", ["\u201cA cat. Image 2 shows a dog.\u201d"]),
    # an inch mark opens no quotation; a '"' after a digit still closes one
    ('Image 1: A 55" TV on a wall. Image 2 shows a 65" TV on a wall.', ['A 55" TV on a wall.', 'a 65" TV on a wall.']),
    ('Image 1: A 55" TV showing "News". Image 2 shows a 65" TV.', ['A 55" TV showing "News".', 'a 65" TV.']),
    ('Image 1: A sign reading "Route 66". Image 2 shows a sign reading "Route 67".',
     ['A sign reading "Route 66".', 'a sign reading "Route 67".']),
    ("Image 1: e.g. Image 2 shows a dog.", ["e.g. Image 2 shows a dog."]),
    ("Image 1: A cat, i.e. Image 2 shows a dog.", ["A cat, i.e. Image 2 shows a dog."]),
    # a caption ending with a number, a lone letter or another abbreviation ends a sentence before a lead
    ("Image 1: A cat sitting on step 1. Image 2 shows a dog sitting on step 2.",
     ["A cat sitting on step 1.", "a dog sitting on step 2."]),
    ("Image 1: A clock showing 5. Image 2 shows a clock showing 7.", ["A clock showing 5.", "a clock showing 7."]),
    ("Image 1: Room no. 5. Image 2 shows room no. 6.", ["Room no. 5.", "room no. 6."]),
    ("Image 1: A sign with the letter A. Image 2 shows a sign with the letter B.",
     ["A sign with the letter A.", "a sign with the letter B."]),
    ("Image 1: A bottle of vitamin C. Image 2 shows a bottle of vitamin D.",
     ["A bottle of vitamin C.", "a bottle of vitamin D."]),
    ("Image 1: A cat at 3 p.m. Image 2 shows a dog at 5 p.m.", ["A cat at 3 p.m.", "a dog at 5 p.m."]),
    ("Image 1: A flag of the U.S. Image 2 shows a flag of the U.K.", ["A flag of the U.S.", "a flag of the U.K."]),
])
def test_a_label_beside_a_lead_into_the_other_image_gives_both_captions(answer, captions):
    """The label's caption ran on over the lead: "A cat. Image 2 shows a dog." was one caption, naming both images
    (and "A cat Image 2 shows a dog" where the label's line ended no sentence); a lead on a line of its own after a
    finished sentence, or before the first label, was lost with its caption. The lead search then read what
    `_labelled_caption` leaves out (a comment after the caption, as an extra caption), split inside a quotation and
    after "e.g." (the caption "e.g."); and its fix took any period after a one-character word or a dotted
    abbreviation ("step 1.", "vitamin C.", "3 p.m.") for one ending no sentence, and an inch mark ('a 55" TV') for an
    open quotation, running both captions together."""
    assert parse_captions(answer) == captions


@pytest.mark.parametrize("answer", [
    "Image 1 shows a red cube.\nImage 2 shows a blue",
    "Image 1 shows a red cube.\nImage 2 shows Mt. Fuji beh",
    "Image 1 shows a red cube.\nImage 2 shows a blue cube. The colours diffe",
    "Image 1: a red cube. Image 2 shows a blu",  # a lead beside a label
    # cut right after a separator that the caption leaves out
    "Image 1: a red cube.\nImage 2: a blue cube beside a ball,",
    "Image 1: a red cube.\nImage 2: a blue cube beside a ball; ",
    "Image 1 shows a red cube.\nImage 2 shows a blue cube beside a ball,",
    "1. a red cube.\n2. a blue cube beside a ball,",  # a list item's caption keeps its ","
    "1. a red cube.\n2. a blue cube beside a ball;",
])
def test_a_caption_cut_at_max_new_tokens_before_its_sentence_ends_is_dropped(monkeypatch, answer):
    """A caption goes on to the end of its line, so a cut after one of its ". " is inside it: cut at "Mt.", the caption
    hid the cut and was kept. So was one cut right after a "," or a ";", which a label's caption leaves out (it separates
    labels on one line) and a list item's keeps: the answer did not end with the caption."""
    captioner = tiny_captioner(seed=0, num_samples=1, batch_size=1)
    monkeypatch.setattr(captioner, "_generate", lambda pairs: [(answer, False)])
    with pytest.warns(UserWarning, match="reached max_new_tokens"):
        assert captioner.caption(ANCHORS[:1], NEGATIVES[:1]) == [["a red cube."]]


def test_a_captioner_answer_naming_both_images_that_cannot_be_split_adds_no_caption(monkeypatch):
    captioner = tiny_captioner(seed=0, num_samples=2, batch_size=2)
    answers = ["Image 1 has a red apple, Image 2 a green one.", "Image 1: A red apple.\nImage 2: A green apple."]
    monkeypatch.setattr(captioner, "_generate", lambda pairs: [(answer, True) for answer in answers[: len(pairs)]])
    assert captioner.caption(ANCHORS[:1], NEGATIVES[:1]) == [RED_GREEN]


def test_labelled_lines_with_nothing_after_the_label_give_no_caption():
    """Before the fix the lazy `(.+?)` captured a lone space: "Image 1:  " gave the caption ' '."""
    assert parse_captions("Image 1:  \nImage 2: a cat") == ["a cat"]
    assert parse_captions("Image 1: \t \nImage 2:") == []


def test_settings_hold_what_changes_the_captions():
    captioner = tiny_captioner(seed=1, temperature=0.9, num_samples=2)
    settings = captioner.settings
    assert settings["temperature"] == 0.9 and settings["num_samples"] == 2 and settings["batch_size"] == 4
    assert settings["prompt"] == captioner.prompt and settings["dtype"] == "torch.float32"
    assert settings["caption_parser"] == CAPTION_PARSER_VERSION
    assert captioner.name == "tiny-captioner-1"  # as given, for the dataset card
    assert settings["image_processor"] == tiny_captioner(seed=1).settings["image_processor"]
    assert settings["image_processor"] != tiny_captioner(seed=1, image_size=64).settings["image_processor"]


def test_a_work_dir_whose_captions_were_read_by_other_parsing_rules_is_refused(tmp_path, monkeypatch):
    """The captioner's settings recorded nothing of how its answers are read into captions: a work dir begun before a
    change to those rules was resumed, mixing its shards' captions with ones read otherwise. Its manifest now records
    the rules' version (`caption_parser`), so a work dir begun before it was recorded, or under another version, is
    refused naming it."""
    captioner = tiny_captioner(num_samples=1)

    def check_work_dir() -> None:
        MaplePreferences(
            config_name="paper", judge=ColourJudge(), captioner=captioner, miner=thumbnail_miner(),
            source_dataset=colour_square_source(), cache_dir=str(tmp_path / "cache"), work_dir=tmp_path / "work",
            progress=False,
        ).check_work_dir()

    check_work_dir()
    path = tmp_path / "work" / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["captioner_settings"]["caption_parser"]  # as the captioner before it was recorded wrote it
    path.write_text(json.dumps(manifest))
    with pytest.raises(
        WorkDirMismatch, match=rf"captioner_settings\.caption_parser: None in the work dir, {CAPTION_PARSER_VERSION} now"
        r".*\(builders before this one did not record caption_parser"
    ):
        check_work_dir()
    path.unlink()
    check_work_dir()
    monkeypatch.setattr(captioner_module, "CAPTION_PARSER_VERSION", CAPTION_PARSER_VERSION + 1)
    with pytest.raises(
        WorkDirMismatch,
        match=rf"captioner_settings\.caption_parser: {CAPTION_PARSER_VERSION} in the work dir, {CAPTION_PARSER_VERSION + 1} now",
    ):
        check_work_dir()
