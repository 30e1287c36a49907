"""Contrastive captioning: an MLLM sees an anchor and one of its hard negatives and writes captions
that make their differences explicit (paper: Qwen2.5-VL-72B, temperature 0.7, 3 samples).

These captions are the hard text candidates of the anchor: each is close to the anchor's own
caption but names details that hold for one image and not the other.
"""

from __future__ import annotations

import copy
import json
import math
import re
import warnings

import PIL.Image
import torch
from transformers import GenerationConfig

from .vlm_inputs import LoadsFromVLM, answer_start, model_settings, prompt_encoder_for, text_part, to_model

DEFAULT_CAPTION_PROMPT = (
    "The first image is the anchor; the second is a similar but different image. "
    "Write one caption for each image that makes their visual differences clear. "
    "Answer in exactly two lines:\n"
    "Image 1: <caption of the first image>\n"
    "Image 2: <caption of the second image>"
)
"""The paper does not publish its captioning prompt; this one asks for what the paper describes."""

PLAIN_SAMPLING = {
    "top_k": 0,
    "top_p": 1.0,
    "min_p": None,
    "top_h": None,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "num_beams": 1,
    "num_return_sequences": 1,
}
"""`generate` settings that leave sampling at plain temperature sampling, one answer per prompt.
`generate` takes every setting it is not passed from the checkpoint's generation_config.json, and
Qwen2-VL / Qwen2.5-VL Instruct ship top_k=1, top_p=0.001 and repetition_penalty=1.05
(QwenLM/Qwen3-VL#722): greedy decoding whatever the temperature. Passed explicitly, these values
(each the one `generate` reads as "off") override the checkpoint's."""

# Recorded in `ContrastiveCaptioner.settings` (as `caption_parser`), so that a work dir is not resumed with captions
# read from answers by other rules: raised whenever `parse_captions` or the drop of a caption cut at `max_new_tokens`
# (`_ends_inside`) reads some answer otherwise (what each raise changed: `git log -G "CAPTION_PARSER_VERSION = "`).
# A work dir begun before it was recorded records none. Not raised for changes that read every answer as before.
CAPTION_PARSER_VERSION = 2

# A label "Image N:" or "Caption N:" ("Caption for Image N:", bold "**", a heading "#", a bullet or a list number
# before it, a parenthesis such as "(anchor)" after it): at the start of a line with ":", ".", "-", an en or em dash
# or ")" after it, or alone on its line ("**Image 1**", "### Image 1"), or with ":" after a sentence, a comma or a
# "|". Models that half follow the format write such variants.
_LABEL_NAME = (
    r"(?:\*\*)?(?:(?:caption|description)[ \t]+(?:for|of)[ \t]+(?:the[ \t]+)?)?(?:image|caption)[ \t]*\d+[ \t]*"
    r"(?:\([^)\n]*\))?[ \t]*(?:\*\*)?[ \t]*"
)
_LABEL = re.compile(
    rf"^[ \t]*(?:#+[ \t]*|[-*\u2022][ \t]*|\d+[.)][ \t]*)?{_LABEL_NAME}(?:[:.\-\u2013\u2014)][ \t]*(?:\*\*)?|$)"
    rf"|(?<=[.!?;,|])[ \t]+{_LABEL_NAME}:[ \t]*(?:\*\*)?",
    re.I | re.M,
)
# The verbs after an image's name in a lead; not "has been" ("Image 1 has been taken at night: ..." is no caption)
_LEAD_VERBS = r"shows|depicts|features|contains|displays|presents|portrays|captures|illustrates|has(?![ \t]+been\b)"
# "Image N" (or "Image one"), "the first / second image" (or "one", "picture", "photo"), or "the second" closing a
# clause or before a lead verb ("in the second,", "unlike the first.", "the second shows"): an answer naming two
# images (two numbers) that no label or lead splits describes both in one text
_IMAGE_MENTION = re.compile(
    r"\b(?:image|caption)[ \t]*(\d+|one|two)\b"
    r"|\b(first|second|1st|2nd)[ \t]+(?:image|picture|photo|one)\b"
    rf"|\bthe[ \t]+(first|second|1st|2nd)(?=[ \t]*(?:[,;:.!?)]|$)|[ \t]+(?:{_LEAD_VERBS})\b)",
    re.I | re.M,
)
_ORDINALS = {"one": 1, "first": 1, "1st": 1, "two": 2, "second": 2, "2nd": 2}
# A lead naming one image at the start of a line (after a bullet or a list number, bold or not, with a parenthesis
# such as "(anchor)" after the name): "Image 1 shows", "The first image depicts", "In Image 1,", "In the second
# image,". Models that answer in sentences rather than labelled lines write these. Its first word is capitalised as
# written: a line starting "in the second image, ..." continues a caption wrapped over lines.
_ORDINAL_IMAGE = r"(?:first|second|1st|2nd)[ \t]+image"
_LEAD_NAME_END = r"(?:[ \t]*\([^)\n]*\))?[ \t]*(?:\*\*)?"
_LEAD = (
    r"(?:\*\*)?"
    rf"(?:(?:Image[ \t]*\d+|The[ \t]+(?i:{_ORDINAL_IMAGE})){_LEAD_NAME_END}[ \t]+(?i:{_LEAD_VERBS})\b"
    rf"|In[ \t]+(?i:image[ \t]*\d+|the[ \t]+{_ORDINAL_IMAGE}){_LEAD_NAME_END},)"
    r"[ \t]*(?:\*\*)?[ \t]*"
)
_IMAGE_LEAD = re.compile(rf"^[ \t]*(?:[-*\u2022][ \t]+|\d+[.)][ \t]+)?{_LEAD}", re.M)
# The same lead starting a sentence inside a line: "Image 1: A cat. Image 2 shows a dog." (only read beside a label).
# Not after "e.g." or "i.e.", which lead into what follows them in the same sentence ("e.g. Image 2 shows a dog"). Any
# other period before a capitalised lead ends a sentence, also one ending a number, a letter or an abbreviation ("on
# step 1.", "vitamin C.", "at 3 p.m."), which captions do end with.
_SENTENCE_LEAD = re.compile(rf"(?<=[.!?])(?<!\b(?i:e\.g|i\.e)\.)[ \t]+{_LEAD}")
_CAPTION_START = re.compile(r"[^\W_]|[\"'\u201c\u2018]")  # a letter, a digit or a quote, not ":" or "'s"
_NUMBERED_LINE = re.compile(r"^[ \t]*(\d+)[.)][ \t]+(\S.*?)[ \t]*$")
_SECTION_LINE = re.compile(r"^[\w ]{1,24}:")  # "Note: ...", "Difference: ...": not a caption's continuation
_LABEL_SEPARATORS = ",;| "  # what separates a caption from the next label on the same line: no part of the caption
_CUT_CLAUSE_ENDS = ",; "  # where an answer cut at the token limit ends mid-sentence, as after a word


def _labelled_caption(text: str) -> str:
    """The caption after a label (or a lead): the rest of its line (or, if that is empty, the next non-empty
    line), continued over the following lines while it has not ended a sentence (a caption wrapped over lines), up to
    a blank line or a "Note:"-style line. What follows a finished caption (a comment) is left out."""
    return _labelled_caption_and_end(text)[0]


def _labelled_caption_and_end(text: str) -> tuple[str, int]:
    """`_labelled_caption(text)`, and where in `text` the last of its lines ends."""
    parts: list[str] = []
    caption_end = line_end = -1
    for raw_line in text.split("\n"):
        line, line_end = raw_line.strip(), line_end + 1 + len(raw_line)
        if not line:
            if parts:
                break
            continue
        if parts and (parts[-1].endswith((".", "!", "?")) or _SECTION_LINE.match(line)):
            break
        parts.append(line)
        caption_end = line_end
    return " ".join(parts).rstrip(_LABEL_SEPARATORS), max(caption_end, 0)


def _images_named(text: str) -> set[int]:
    """The images `text` names: N for "Image N", 1 and 2 for "Image one", "the first image", "the second one" or a
    clause-closing "the second" (`_IMAGE_MENTION`)."""
    return {
        int(name) if name.isdigit() else _ORDINALS[name.lower()]
        for names in _IMAGE_MENTION.findall(text)
        for name in names
        if name
    }


def _lead_captions(generated: str) -> list[str] | None:
    """The captions of an answer of one line per image, each starting with a lead naming its image ("Image 1 shows
    ...", "The second image depicts ...", "In Image 1, ...", `_IMAGE_LEAD`): what `_labelled_caption` gives for the
    text after each lead, bold markers around the lead or closing its line left out. None unless the leads name images
    1, 2, ... in order, each caption starts with a letter, a digit or a quote (not the ": a red cube" of "Image 1 shows:
    a red cube", nor the "'s foreground" of "In the first image's foreground") and no caption names another image (a
    comparison, "... unlike image 2", describes both)."""
    leads = list(_IMAGE_LEAD.finditer(generated))
    images_led = [_images_named(lead[0]) for lead in leads]
    if len(leads) < 2 or images_led != [{number} for number in range(1, len(leads) + 1)]:
        return None
    ends = [lead.start() for lead in leads[1:]] + [len(generated)]
    captions: list[str] = []
    for number, (lead, end) in enumerate(zip(leads, ends), start=1):
        caption = _caption_after_lead(lead, generated[lead.end() : end], number)
        if caption is None:
            return None
        captions.append(caption)
    return captions


def _caption_after_lead(lead: re.Match, text: str, number: int) -> str | None:
    """The caption of image `number` in `text`, which follows its `lead`: what `_labelled_caption` gives, bold markers
    the lead opened left out; None unless it starts with a letter, a digit or a quote and names no other image."""
    if lead[0].count("**") % 2:  # a bold span the lead opened closes in the caption: "**Image 1 shows X.**"
        text = text.replace("**", "", 1)
    if not _CAPTION_START.match(text):
        return None
    caption = _labelled_caption(text)
    return None if _images_named(caption) - {number} else caption


def _labelled_captions(generated: str, labels: list[re.Match]) -> list[str]:
    """The caption after each of the answer's `labels` (`_labelled_caption`). Where no label names the image before
    the first label's, a lead naming it before that label gives its caption ("Image 1 shows a cat.\nImage 2: a dog.");
    where no label names the image after a label's, a lead naming it in the label's text ends the label's caption and
    gives that image's ("Image 1: A cat. Image 2 shows a dog."; `_caption_led_in`)."""
    numbers = [_images_named(label[0]) for label in labels]
    captions: list[str] = []
    if len(numbers[0]) == 1 and (previous := min(numbers[0]) - 1) >= 1 and {previous} not in numbers:
        if (led := _caption_led_in(generated[: labels[0].start()], previous)) is not None:
            captions.append(led[1])
    ends = [label.start() for label in labels[1:]] + [len(generated)]
    for label_numbers, label, end in zip(numbers, labels, ends):
        text = generated[label.end() : end]
        caption, caption_end = _labelled_caption_and_end(text)
        led = None
        if len(label_numbers) == 1 and {next_number := min(label_numbers) + 1} not in numbers:
            led = _caption_led_in(text, next_number, caption_end=caption_end)
        captions += [caption] if led is None else [_labelled_caption(text[: led[0]]), led[1]]
    return captions


def _caption_led_in(text: str, number: int, caption_end: int | None = None) -> tuple[int, str] | None:
    """(where the lead starts, the caption after it) for the first lead in `text` that names image `number`, starts a
    line or a sentence and is followed by a caption of that image alone (`_caption_after_lead`); None if there is
    none. A model that labels one image may lead into the other in a sentence, labelling nothing.

    `caption_end`, for a label's text: where the label's caption (`_labelled_caption_and_end`) ends. A lead counts
    inside that caption, or starting the first line after it; one further on is in a comment `_labelled_caption`
    leaves out ("**Differences:**\n- Image 2 shows a dog instead."). Nor does a lead inside a quotation count ('"A
    cat. Image 2 shows a dog."', a double quote left open before it)."""
    leads = [lead for pattern in (_IMAGE_LEAD, _SENTENCE_LEAD) for lead in pattern.finditer(text)]
    for lead in sorted(leads, key=lambda lead: lead.start()):
        before = text[: lead.start()]
        if caption_end is not None and lead.start() >= caption_end and (
            lead.re is not _IMAGE_LEAD or text[caption_end : lead.start()].strip()
        ):
            continue
        if _inside_double_quote(before):
            continue
        if _images_named(lead[0]) == {number} and (caption := _caption_after_lead(lead, text[lead.end() :], number)):
            return lead.start(), caption
    return None


def _inside_double_quote(text: str) -> bool:
    """Whether `text` ends inside a double quotation: a curly one opened and not closed, or a straight one. A straight
    '"' right after a digit while no quotation is open is an inch mark ('a 55" TV'), which opens none; while one is
    open, it closes it ('"Route 66"')."""
    if text.count("\u201c") > text.count("\u201d"):
        return True
    inside = False
    for quote in re.finditer('"', text):
        if inside or not text[quote.start() - 1 : quote.start()].isdigit():
            inside = not inside
    return inside


def parse_captions(generated: str) -> list[str]:
    """Captions in one generated answer: the caption after every "Image N:" label (`_labelled_caption`; a lead naming
    an unlabelled image next to a label's gives that image's caption: `_labelled_captions`); else, for an
    answer of one line per image in order ("Image 1 shows ...", "The second image depicts ...", "In Image 1, ..."),
    the caption after each lead (`_lead_captions`); else the items of a numbered list 1, 2, ... (other lines,
    such as an introduction or a closing comment, left out); else, when the model ignored the format, the whole
    answer as one caption, unless it names two images (`_images_named`: both images' captions run together, which no
    caption of one image is). A label with nothing after it gives no caption; neither does an empty answer."""
    generated = generated.replace("\r\n", "\n").replace("\r", "\n")
    labels = list(_LABEL.finditer(generated))
    if labels:
        pieces = _labelled_captions(generated, labels)
    elif (lead_captions := _lead_captions(generated)) is not None:
        pieces = lead_captions
    else:
        items = [(int(match.group(1)), match.group(2)) for line in generated.split("\n") if (match := _NUMBERED_LINE.match(line))]
        numbered_list = len(items) >= 2 and [number for number, _ in items] == list(range(1, len(items) + 1))
        if numbered_list:
            pieces = [item for _, item in items]
        else:
            pieces = [generated] if len(_images_named(generated)) < 2 else []
    return [caption for caption in (" ".join(piece.split()) for piece in pieces) if caption]


def _ends_inside(answer: str, caption: str) -> bool:
    """Whether an answer cut at the token limit ends inside `caption`, its last parsed caption: the answer ends with
    it, a "," or ";" after either aside ("a blue car beside a tree," was cut in its sentence, whether its caption
    leaves the "," out, as a label's does, or keeps it, as a list item's does), and not at the end of a sentence. A cut
    in a label, a list number or a closing comment, which `parse_captions` leaves out, leaves the caption whole; so does
    one after a "|", which closes a table's cell."""
    caption = caption.rstrip(_CUT_CLAUSE_ENDS)
    return (
        " ".join(answer.split()).rstrip(_CUT_CLAUSE_ENDS).endswith(caption)
        and not caption.endswith((".", "!", "?"))
    )


class ContrastiveCaptioner(LoadsFromVLM):
    """Writes difference-stressing captions with an MLLM of a supported family (Qwen2-VL, Qwen2.5-VL,
    Qwen3-VL, LLaVA, LLaVA-NeXT, InternVL, Idefics3, SmolVLM, Gemma 3, Pixtral, Mistral 3; `vlm_inputs.PROMPT_ENCODERS`).

    Implements `CandidateCaptioner`: `caption(anchors, negatives)` returns, per pair, the distinct
    captions parsed from `num_samples` sampled answers (order of first appearance). Sampling is plain
    temperature sampling (no top-k, top-p or repetition penalty, `PLAIN_SAMPLING`), whatever the
    checkpoint's generation config says; its other entries (e.g. the end-of-turn tokens) still apply.

    Args:
        model, tokenizer, image_processor: the captioning MLLM and its own preprocessors.
        prompt: the instruction shown after the two images.
        temperature, num_samples: sampling settings (paper: 0.7 and 3).
        max_new_tokens: answer length cap.
        batch_size: prompts per `generate` call (each sample of a pair is one prompt).
        chat_template: overrides the tokenizer's chat template.
        name: how the captioner is named in dataset cards.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        image_processor,
        *,
        prompt: str = DEFAULT_CAPTION_PROMPT,
        temperature: float = 0.7,
        num_samples: int = 3,
        max_new_tokens: int = 96,
        batch_size: int = 4,
        chat_template: str | None = None,
        name: str | None = None,
    ) -> None:
        self.check_values(temperature=temperature, num_samples=num_samples, max_new_tokens=max_new_tokens,
                          batch_size=batch_size)
        self.model = model.eval()
        self.prompt = prompt
        self.temperature = temperature
        self.num_samples = num_samples
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.name = name or model.config.name_or_path or type(model).__name__
        self.prompt_encoder = prompt_encoder_for(model.config, tokenizer, image_processor, chat_template=chat_template)
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, text_part(prompt)]}]
        # What the template writes before an answer, fed after the generation prompt: a thinking template's empty
        # think block, without which the model reasons, within max_new_tokens, instead of captioning. Whitespace after
        # it is left to the model: where it falls depends on how the probe word tokenises, not on the template (a
        # tokenizer without " Image" would end the prompt in a space). A template whose answer does not continue its
        # generation prompt is refused, as the judge refuses it: it may be a thinking one that drops the think block.
        start = answer_start(self.prompt_encoder, "Image")
        self.answer_lead = "" if start is None else start[0].rstrip()
        # Every prompt is the same text around two images: render it once, expand images per pair.
        self._prompt_text = self.prompt_encoder.render(messages, add_generation_prompt=True) + self.answer_lead
        self._generate_kwargs = {
            "do_sample": True,
            "temperature": temperature,
            **PLAIN_SAMPLING,
            "max_new_tokens": max_new_tokens,
            "pad_token_id": self.prompt_encoder.tokenizer.pad_token_id,
        }

    @staticmethod
    def check_values(
        *,
        temperature: float | None = None,
        num_samples: int | None = None,
        max_new_tokens: int | None = None,
        batch_size: int | None = None,
        **other_settings,
    ) -> None:
        """A ValueError naming every given setting that no captioner can work with; `from_pretrained` checks them
        before it loads."""
        counts = {"num_samples": num_samples, "max_new_tokens": max_new_tokens, "batch_size": batch_size}
        problems = [
            f"{setting} must be at least 1, got {value}" for setting, value in counts.items() if value is not None and value < 1
        ]
        if temperature is not None and not 0 < temperature < math.inf:  # (NaN fails both)
            problems.insert(0, f"temperature must be positive, got {temperature}")
        if problems:
            raise ValueError("invalid ContrastiveCaptioner settings: " + "; ".join(problems))

    def image_problem(self, size: tuple[int, int]) -> str | None:
        """Why the captioner's image processor cannot take an image of `size` (width, height), or None."""
        return self.prompt_encoder.image_problem(size)

    @property
    def generation_config(self) -> GenerationConfig:
        """What `generate` samples with: the model's generation config (from the checkpoint's
        generation_config.json) with the captioner's settings applied over it."""
        config = copy.deepcopy(self.model.generation_config)
        config.update(**self._generate_kwargs)
        return config

    @property
    def settings(self) -> dict:
        """What, beside `name` and the seed, decides the captions: the prompt, the sampling settings,
        the batch size (all samples draw from one generator, so batching shapes them), the effective
        generation config (`generation_config`, as far as it differs from transformers' defaults),
        the chat template (and the text fed after its generation prompt, where there is one), the weights dtype and
        the image processor's settings; and `caption_parser`, the version of the rules that read an answer's captions
        (`CAPTION_PARSER_VERSION`). Recorded in the builder's manifest."""
        sampling = {
            "prompt": self.prompt, "temperature": self.temperature, "num_samples": self.num_samples,
            "max_new_tokens": self.max_new_tokens, "batch_size": self.batch_size,
            "generation_config": json.loads(self.generation_config.to_json_string(ignore_metadata=True)),
        }
        parser = {"caption_parser": CAPTION_PARSER_VERSION}
        return {**sampling, **parser, **model_settings(self.model, self.prompt_encoder, self.answer_lead)}

    @torch.inference_mode()
    def caption(self, anchors: list[PIL.Image.Image], negatives: list[PIL.Image.Image]) -> list[list[str]]:
        """Per (anchor, negative) pair, the distinct captions of `num_samples` sampled answers.

        Sampling draws from torch's global generator: seed it for reproducible captions."""
        if len(anchors) != len(negatives):
            raise ValueError(f"{len(anchors)} anchors but {len(negatives)} negatives")
        # Every sample is its own prompt, so batches mix pairs and samples freely.
        prompts = [(pair, anchor, negative) for pair, (anchor, negative) in enumerate(zip(anchors, negatives))]
        prompts = [prompt for prompt in prompts for _ in range(self.num_samples)]
        captions: list[list[str]] = [[] for _ in anchors]
        for start in range(0, len(prompts), self.batch_size):
            batch = prompts[start : start + self.batch_size]
            for (pair, _, _), (answer, finished) in zip(batch, self._generate([(a, n) for _, a, n in batch])):
                parsed = parse_captions(answer)
                if not finished and parsed and _ends_inside(answer, parsed[-1]):  # a text no captioner wrote
                    warnings.warn(
                        f"A captioner answer reached max_new_tokens={self.max_new_tokens}: its last caption, cut "
                        "off, is dropped. Raise max_new_tokens if this is frequent.",
                        stacklevel=2,
                    )
                    parsed = parsed[:-1]
                for caption in parsed:
                    # Checked against the growing list: an answer may repeat a caption itself.
                    if caption not in captions[pair]:
                        captions[pair].append(caption)
        return captions

    def _generate(self, pairs: list[tuple[PIL.Image.Image, PIL.Image.Image]]) -> list[tuple[str, bool]]:
        """One sampled answer per (anchor, negative) prompt, and whether it ended (an end-of-sequence token) rather than
        being cut at `max_new_tokens`."""
        encoded = self.prompt_encoder.encode_images([image for pair in pairs for image in pair])
        sequences = [
            self.prompt_encoder.expand_images(self._prompt_text, encoded, [2 * row, 2 * row + 1])
            for row in range(len(pairs))
        ]
        inputs = to_model(self.prompt_encoder.model_inputs(sequences, encoded, padding_side="left"), self.model)
        generated = self.model.generate(**inputs, **self._generate_kwargs)
        answers = generated[:, inputs["input_ids"].shape[1] :]
        # `generate` stops before max_new_tokens only once every answer has ended; a model without an end-of-sequence
        # token cannot tell an ending from a cut, and its answers are taken as they are
        eos = self.generation_config.eos_token_id
        eos_ids = torch.tensor([eos] if isinstance(eos, int) else list(eos or []), device=answers.device)
        if answers.shape[1] < self.max_new_tokens or not len(eos_ids):
            finished = [True] * len(answers)
        else:
            finished = torch.isin(answers, eos_ids).any(dim=1).tolist()
        return list(zip(self.prompt_encoder.tokenizer.batch_decode(answers, skip_special_tokens=True), finished))
