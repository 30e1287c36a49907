"""The MLLM judge: alpha = P(Yes) / (P(Yes) + P(No)) for "does the image align with the text?".

All candidate texts of one anchor share the image part of the prompt, and with a 7B judge that
part (hundreds of vision tokens) costs far more than the ~30 text tokens after it. With
`reuse_prefix=True` the judge runs the prefix (chat header + image + the question's opening words)
once per anchor, several anchors per forward, keeps the KV cache, and runs the candidate suffixes
in batches, each against its own anchor's cached prefix. `reuse_prefix=False` runs every pair as
one full prompt instead. Both paths feed the model the same token ids at the same positions, so
they agree up to float rounding.
"""

from __future__ import annotations

import inspect
import pickle
import re
import reprlib
import warnings
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence

import PIL.Image
import tokenizers
import torch
from transformers import DynamicCache

from modeling_maple.modeling_maple import last_token_pool

from .interfaces import ENSEMBLE_SEPARATOR, PreferenceJudge, component_name, first_finding
from .scoring import JudgeOutputError
from .vlm_inputs import (
    EncodedImages,
    LoadsFromVLM,
    PromptEncoder,
    answer_start,
    model_settings,
    offloaded_tensor,
    prompt_encoder_for,
    text_part,
    to_model,
)

PROBE_TEXTS = ("a red circle", '"quoted"', "'s apostrophe", " leading space", "", "123", "Émile über ✓", "\nnew line")
"""Awkward candidate texts with which the judge checks that it tokenises a prompt in parts as the whole prompt."""

DEFAULT_JUDGE_PROMPT = 'Does the image align with the text "{text}"? Answer Yes or No.'
"""The paper's judge question; the image comes first, as `<image>` does in the paper."""

# Recorded with every pickled or copied `MLLMJudge` (`__getstate__`): raised whenever the judge gains an attribute or
# one changes meaning, so that a judge pickled before, which lacks it or holds the old meaning, is refused when
# unpickled (`__setstate__`) instead of failing midway or scoring otherwise than it did (what each raise changed:
# `git log -G "JUDGE_STATE_VERSION = "`).
JUDGE_STATE_VERSION = 1

# The shared-prefix path holds an anchor's encoded image (its pixel values) until a batch of equally long prefixes
# fills; at most this many batches' worth wait, so a shard of large images is not all held in memory at once.
PENDING_PREFIX_BATCHES = 4


def _kind(value: object) -> str:
    """How a wrong value is described in an error: its type, and for short text the text."""
    if isinstance(value, str):
        return f"a str ({value[:40]!r})"
    return f"a {type(value).__name__}"


def _check_list(value: object, name: str) -> None:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{name} must be a list or tuple, got {_kind(value)}")


# (type, "a <singular>", "<plural>") of what the judge compares
_IMAGE = (PIL.Image.Image, "a PIL image", "PIL images")
_TEXT = (str, "a str", "texts (str)")


def _check_queries_and_candidates(
    queries: object, query_name: str, query_kind: tuple, candidates: object, candidate_name: str, candidate_kind: tuple
) -> None:
    """Raise a ValueError naming the first malformed item: `queries` a list of one kind, `candidates` a list with one
    list of the other kind per query."""
    _check_list(queries, query_name)
    _check_list(candidates, candidate_name)
    if len(queries) != len(candidates):
        raise ValueError(f"{len(queries)} {query_name} but {len(candidates)} lists of {candidate_name}")
    for index, (query, query_candidates) in enumerate(zip(queries, candidates)):
        if not isinstance(query, query_kind[0]):
            raise ValueError(f"{query_name}[{index}] is {_kind(query)}; expected {query_kind[1]}")
        if not isinstance(query_candidates, (list, tuple)):
            raise ValueError(
                f"{candidate_name}[{index}] is {_kind(query_candidates)}; expected a list of candidate "
                f"{candidate_kind[2]} for {query_name}[{index}]"
            )
        for position, candidate in enumerate(query_candidates):
            if not isinstance(candidate, candidate_kind[0]):
                raise ValueError(f"{candidate_name}[{index}][{position}] is {_kind(candidate)}; expected {candidate_kind[1]}")


def check_score_inputs(images: object, texts: object) -> None:
    """Raise a ValueError naming the first malformed item of `score(images, texts)`'s inputs:
    images a list of PIL images, texts a list with one list of str per image."""
    _check_queries_and_candidates(images, "images", _IMAGE, texts, "texts", _TEXT)


def check_score_images_inputs(texts: object, images: object) -> None:
    """Raise a ValueError naming the first malformed item of `score_images(texts, images)`'s
    inputs: texts a list of str, images a list with one list of PIL images per text."""
    _check_queries_and_candidates(texts, "texts", _TEXT, images, "images", _IMAGE)


def candidate_names(texts: Sequence[Sequence[str]]) -> Iterator[tuple[str, str]]:
    """("texts[i][j]", text) for every candidate text of `score`'s `texts`."""
    for index, candidates in enumerate(texts):
        for position, text in enumerate(candidates):
            yield f"texts[{index}][{position}]", text


def check_special_tokens(judge: MLLMJudge | JudgeEnsemble, named_texts: Iterable[tuple[str, str]]) -> None:
    """A ValueError naming the first of `named_texts` ((name, text) pairs) that holds a special token of the judge's
    tokenizer (its `special_token_in`; an ensemble's: any member's), before any forward."""
    for name, text in named_texts:
        if (token := judge.special_token_in(text)) is not None:
            raise ValueError(
                f"{name} contains the judge's special token {token!r}, which its tokenizer would read as that token, "
                "not as text, breaking the prompt"
            )


def special_tokens(prompt_encoder: PromptEncoder) -> set[str]:
    """Every special token of the prompt encoder's tokenizer: the added tokens marked special, the named ones such as
    eos, and the image placeholder."""
    tokenizer = prompt_encoder.tokenizer
    tokens = {token.content for token in tokenizer.added_tokens_decoder.values() if token.special}
    return (tokens | set(tokenizer.all_special_tokens) | {prompt_encoder.image_token}) - {""}


def special_token_pattern(prompt_encoder: PromptEncoder) -> re.Pattern[str]:
    """A pattern matching every special token of the prompt encoder's tokenizer (`special_tokens`), longest first, so
    that a match names the whole token rather than a shorter one inside it."""
    return re.compile("|".join(re.escape(token) for token in sorted(special_tokens(prompt_encoder), key=len, reverse=True)))


TEXT_MARK = "\ue000maple:text\ue000"
"""An added token (not special) that `plain_text_tokenizer` splits off before the text it marks: the text then starts a
piece of the input after a token, as a candidate text does inside the prompt (Llama's Metaspace marks only the
input's first piece with a "▁"). Its id is dropped; a text holding it is not read as text."""


def plain_text_tokenizer(tokenizer) -> tokenizers.Tokenizer | None:
    """A copy of a fast tokenizer's backend that reads special tokens' strings as the text they spell (the "<", "s",
    ">" of "<s>", as in any text the model was trained on), with `TEXT_MARK` added; None for a tokenizer without a
    backend (a slow one)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    copy = tokenizers.Tokenizer.from_str(backend.to_str())
    # split off before normalising, as added tokens are: a normalizer that prepends "▁" (Llama 2-era) then marks the
    # text as it marks a piece after a special token
    copy.add_tokens([tokenizers.AddedToken(TEXT_MARK, special=False, normalized=False)])
    copy.encode_special_tokens = True
    return copy


def answer_token(prompt_encoder: PromptEncoder, word: str) -> tuple[str, int]:
    """What the judge feeds after the generation prompt, and the token the model would emit first when answering
    `word` in its chat format after it (`answer_start`).

    Tokenizers differ on whether the answer starts a word ("Yes") or continues one (" Yes", as
    after "ASSISTANT:" in LLaVA-style templates), and a thinking template (Qwen3-VL-Thinking's) closes an empty think
    block before the answer; rendering a conversation that ends in the answer gives both as the model was trained on
    them. If the answer's token is only a fragment of `word`, or the template renders no answer, the single-token
    spellings "Yes" / " Yes" are tried; if neither exists the judge cannot score and a ValueError says so, as it
    does when the template's answer is not the word.
    """
    tokenizer = prompt_encoder.tokenizer
    start = answer_start(prompt_encoder, word)
    lead = ""
    if start is not None:
        lead, token = start
        spelled = tokenizer.decode([token]).strip()
        if spelled == word:
            return lead, token
        if not (spelled and word.startswith(spelled)):
            raise ValueError(
                f"the judge's chat template answers {word!r} with the token {spelled!r} after its generation prompt"
                f"{f' and {lead!r}' if lead else ''}; alpha needs the token the model answers {word!r} with"
            )
    for spelling in (word, " " + word):
        ids = tokenizer(spelling, add_special_tokens=False)["input_ids"]
        if len(ids) == 1:
            return lead, ids[0]
    raise ValueError(
        f"the judge's tokenizer has no single token for {word!r} (nor {' ' + word!r}); "
        "alpha needs the next-token logits of one 'Yes' and one 'No' token"
    )


def context_length(model: torch.nn.Module, tokenizer) -> int | None:
    """The most tokens a judge prompt may hold: the smaller of the language model's `max_position_embeddings` (the
    context it was trained on; a rotary model runs past it, on positions it never saw, and scores nonsense) and the
    tokenizer's `model_max_length` where that is set (transformers' "unset" is a huge integer); None if neither is."""
    limits = [getattr(model.config.get_text_config(), "max_position_embeddings", None)]
    if tokenizer.model_max_length < 1_000_000:
        limits.append(tokenizer.model_max_length)
    return min((limit for limit in limits if limit is not None), default=None)


def cache_keyword(model: torch.nn.Module) -> str:
    """The name under which `model.forward` takes a KV cache and its output returns one: `cache` from transformers
    5.24, where `past_key_values` is deprecated (to be removed in 5.40), and `past_key_values` in 5.23, which has no
    `cache` (its forward would take one silently into `**kwargs` and ignore it)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class MLLMJudge(LoadsFromVLM):
    """Scores image-text alignment with a frozen MLLM (paper: Qwen2-VL-7B; InternVL3-1B also helps);
    Qwen2-VL, Qwen2.5-VL, Qwen3-VL, LLaVA, LLaVA-NeXT, InternVL, Idefics3, SmolVLM, Gemma 3, Pixtral and Mistral 3 families
    (`vlm_inputs.PROMPT_ENCODERS`).

    Implements `PreferenceJudge`. Build it with `from_pretrained`, or from a loaded model, tokenizer
    and image processor.

    Args:
        model: an image-text-to-text model of a supported family (`vlm_inputs.PROMPT_ENCODERS`).
        tokenizer, image_processor: the model's own.
        prompt: the question, with `{text}` where the candidate text goes.
        batch_size: (image, text) pairs per forward pass.
        chat_template: overrides the tokenizer's chat template.
        name: how the judge is named in dataset cards; defaults to the model's `name_or_path`.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        image_processor,
        *,
        prompt: str = DEFAULT_JUDGE_PROMPT,
        batch_size: int = 8,
        chat_template: str | None = None,
        name: str | None = None,
    ) -> None:
        self.check_values(prompt=prompt, batch_size=batch_size)
        self.model = model.eval()
        self.prompt = prompt
        self.batch_size = batch_size
        self.name = name or model.config.name_or_path or type(model).__name__
        self.prompt_encoder = prompt_encoder_for(model.config, tokenizer, image_processor, chat_template=chat_template)
        yes_lead, self.yes_id = answer_token(self.prompt_encoder, "Yes")
        no_lead, self.no_id = answer_token(self.prompt_encoder, "No")
        if yes_lead != no_lead:
            raise ValueError(f"the judge's chat template writes {yes_lead!r} before the answer 'Yes' but {no_lead!r} before 'No'")
        # fed after the generation prompt, in both scoring paths (the end of `suffix_template`)
        self.answer_lead = yes_lead
        # The prompt split into the part all candidate texts of an image share and the rest.
        self.prefix_text, self.suffix_template = self._split_prompt()
        self._special_tokens = special_token_pattern(self.prompt_encoder)
        self._plain_suffix_runs = self._suffix_runs()
        self._special_ids = {tokenizer.convert_tokens_to_ids(token) for token in special_tokens(self.prompt_encoder)}
        self._plain_text_tokenizer = plain_text_tokenizer(tokenizer)
        if self._plain_text_tokenizer is not None and not all(
            self._plain_suffix_ids(probe) == self.suffix_ids([probe])[0] for probe in PROBE_TEXTS
        ):
            self._plain_text_tokenizer = None  # its reading of the prompt around a text is not the whole prompt's
        # The prefix differs between images only in the text their placeholder becomes (for most
        # families, how many image tokens it holds): tokenise it once per such text.
        self._prefix_ids_by_image_text: dict[str, list[int]] = {}
        self._offloaded_answer_rows: dict[str, torch.Tensor] = {}  # see `_answer_rows`
        self._prefix_length_by_image_size: dict[tuple[int, int], int] = {}  # see `image_problem`
        self.context_length = context_length(model, tokenizer)
        self._empty_suffix_ids = self.suffix_ids([""])[0]  # ("" is a probe: the plain-text reading's too)
        self._cache_keyword = cache_keyword(self.model.model)

    def __getstate__(self) -> dict:
        """What a pickle or a deep copy holds: the judge's attributes and the version of what they are
        (`JUDGE_STATE_VERSION`)."""
        return {**self.__dict__, "_state_version": JUDGE_STATE_VERSION}

    def __setstate__(self, state: dict) -> None:
        """Unpickled or deep-copied: `encode_special_tokens` is a flag of the `plain_text_tokenizer` copy that its
        serialisation leaves out, so it is set again (without it the copy read a text's "<|im_end|>" as that token,
        and `special_token_in` and `suffix_ids` no longer agreed with the judge's).

        A judge pickled under another `JUDGE_STATE_VERSION` is refused, with advice to build it again: one pickled
        before the version was recorded lacks attributes this one reads, and filling them in would either change how
        it scores (it skipped the rows of texts holding a special token's string and did not cut long texts, say) or
        guess at what an older judge held."""
        state = dict(state)
        if (version := state.pop("_state_version", None)) != JUDGE_STATE_VERSION:
            recorded = "none, pickled before judges recorded one" if version is None else version
            raise pickle.UnpicklingError(
                f"this MLLMJudge was pickled by another version of dataset_builders (judge state version {recorded}; "
                f"this one restores {JUDGE_STATE_VERSION}): restored, it would lack or misread what this judge holds, "
                "and fail or score otherwise than it did. Build the judge again (MLLMJudge.from_pretrained, or "
                "MLLMJudge(model, tokenizer, image_processor)) instead of unpickling it"
            )
        self.__dict__.update(state)
        if self._plain_text_tokenizer is not None:
            self._plain_text_tokenizer.encode_special_tokens = True

    @staticmethod
    def check_values(*, prompt: str | None = None, batch_size: int | None = None, **other_settings) -> None:
        """A ValueError for a given setting no judge can work with; `from_pretrained` checks them before it loads."""
        if prompt is not None and "{text}" not in prompt:
            raise ValueError("the judge prompt needs a '{text}' field for the candidate text")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"MLLMJudge batch_size must be at least 1, got {batch_size}")

    @property
    def settings(self) -> dict:
        """What, beside `name`, decides the judge's scores: the prompt, the chat template, the
        weights dtype and the image processor's settings (e.g. Qwen-VL's max_pixels). The builder's
        manifest records them, so a resumed build never mixes shards scored under other settings.
        Batch size and device change only float rounding and are left out. `answer_logits`: the Yes/No logits are
        read in float32 (`_alphas`), whatever the weights' dtype; `answer_tokens`: the two tokens read
        (`answer_token`); `answer_lead`, where there is one: the text fed after the generation prompt.
        `special_token_strings`, where the judge reads them as text (`special_token_in`; a judge that refuses such
        texts records nothing, as before): the rows of texts holding them are scored, not skipped;
        `context_length`, where there is one: texts are cut to fit it (`_suffix_ids_within_context`), so another
        context (a tokenizer's `model_max_length` changed between runs) scores long texts otherwise."""
        answer_tokens = [self.prompt_encoder.tokenizer.decode([token]) for token in (self.yes_id, self.no_id)]
        return {
            "prompt": self.prompt,
            "answer_logits": "float32",
            "answer_tokens": answer_tokens,
            **({"special_token_strings": "read as text"} if self._plain_text_tokenizer is not None else {}),
            **({"context_length": self.context_length} if self.context_length is not None else {}),
            **model_settings(self.model, self.prompt_encoder, self.answer_lead),
        }

    def _split_prompt(self) -> tuple[str, str]:
        """The rendered prompt, `answer_lead` included, cut into the part shared by all candidate texts and the rest:
        (prefix, suffix template with a `{text}` field).

        The cut must not change tokenisation: ids(prefix) + ids(suffix) has to equal ids(whole),
        or the reused prefix would not be the prompt the judge was asked. The preferred cut is at
        the last space before the candidate text, so the question's opening words are shared too;
        it is kept only if it tokenises consistently for a set of awkward probe texts. Otherwise
        the cut falls right after the image placeholder, a special token, never merged with its
        neighbours; the suffix is then tokenised after that token (`_suffix_lead`, whose ids are
        dropped), because a tokenizer that marks the start of a string (Llama's Metaspace with
        `prepend_scheme="first"`) would read a suffix tokenised alone as one, adding a "▁".
        """
        marker = "\x00TEXT\x00"
        messages = [
            {"role": "user", "content": [{"type": "image"}, text_part(self.prompt.replace("{text}", marker))]}
        ]
        rendered = self.prompt_encoder.render(messages, add_generation_prompt=True) + self.answer_lead
        placeholder = self.prompt_encoder.image_placeholder
        image_end = rendered.index(placeholder) + len(placeholder)
        text_start = rendered.find(marker, image_end)
        if text_start < 0:
            raise ValueError("the chat template must place the image before the question")
        cut = rendered.rfind(" ", image_end, text_start)
        self._suffix_lead = ""
        if cut <= image_end or not self._tokenises_consistently(rendered[:cut], rendered[cut:], marker):
            cut, self._suffix_lead = image_end, placeholder
            if not self._tokenises_consistently(rendered[:cut], rendered[cut:], marker):
                raise ValueError(
                    "the judge's prompt cannot be cut into a shared prefix and a per-text suffix that tokenise as the "
                    f"whole prompt does, even right after the image token: {rendered!r}"
                )
        prefix, suffix = rendered[:cut], rendered[cut:]
        self._suffix_parts = suffix.split(marker)  # the suffix's own text around each place of the candidate text
        return prefix, suffix.replace("{", "{{").replace("}", "}}").replace(marker, "{text}")

    def _tokenises_consistently(self, prefix: str, suffix: str, marker: str) -> bool:
        """Whether ids(prefix) + `_tokenise_suffixes`(suffix) == ids(prefix + suffix) with awkward texts at `marker`."""
        tokenizer = self.prompt_encoder.tokenizer
        prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
        suffixes = [suffix.replace(marker, probe) for probe in PROBE_TEXTS]
        return all(
            prefix_ids + suffix_ids == tokenizer(prefix + suffix, add_special_tokens=False)["input_ids"]
            for suffix, suffix_ids in zip(suffixes, self._tokenise_suffixes(suffixes))
        )

    def _tokenise_suffixes(self, suffixes: list[str]) -> list[list[int]]:
        """Token ids of each suffix as it follows the prefix: tokenised after `_suffix_lead`, whose ids are dropped."""
        if not suffixes:  # (a tokenizer refuses an empty batch)
            return []
        tokenizer = self.prompt_encoder.tokenizer
        lead = len(tokenizer(self._suffix_lead, add_special_tokens=False)["input_ids"]) if self._suffix_lead else 0
        encoded = tokenizer([self._suffix_lead + suffix for suffix in suffixes], add_special_tokens=False)["input_ids"]
        return [ids[lead:] for ids in encoded]

    def image_problem(self, size: tuple[int, int]) -> str | None:
        """Why the judge cannot take an image of `size` (width, height), or None: its image processor refuses it, or
        its prompt does not fit the judge's context even without a candidate text (`_prefix_problem`). The builder
        skips such images up front rather than fail a shard (and with it the build) when `score` meets them.

        The image's tokens follow its size alone, so they are counted on a blank image of that size, once per size."""
        if (problem := self.prompt_encoder.image_problem(size)) is not None or self.context_length is None:
            return problem
        if size not in self._prefix_length_by_image_size:
            blank = self.prompt_encoder.encode_images([PIL.Image.new("RGB", size)])
            # not through `prefix_ids`, whose cache would hold the ids of every size in the source
            self._prefix_length_by_image_size[size] = len(self.prompt_encoder.expand_images(self.prefix_text, blank, [0]))
        return self._prefix_problem(self._prefix_length_by_image_size[size])

    def special_token_in(self, text: str) -> str | None:
        """The first special token of the judge's tokenizer that `text` contains and that the judge cannot read as
        text, or None.

        Tokenised as the chat prompt is, such a string becomes the token itself, not text: `<s>` a BOS, `<|im_end|>`
        the end of the user turn, an image placeholder (`<|image_pad|>`, SmolVLM's literal `<image>`) a claim on image
        features that do not exist. So the judge reads a candidate text's special tokens as the characters they spell
        (`_plain_suffix_ids`), as the model met such strings in its training text, where it can: with a fast tokenizer
        whose plain reading of the prompt around a text is the whole prompt's (checked with `PROBE_TEXTS` when the
        judge is made) and whose vocabulary spells no special token from the text's characters. Otherwise `score` and
        `score_images` refuse such texts, and the builder skips or drops them beforehand."""
        match = self._special_tokens.search(text)
        return None if match is None or self._reads_as_text(text) else match.group()

    def _reads_as_text(self, text: str) -> bool:
        """Whether `_plain_suffix_ids` reads `text`'s special tokens as text: the judge has a plain-text tokenizer and
        the text's tokens add no special token to the suffix."""
        if self._plain_text_tokenizer is None or TEXT_MARK in text:
            return False

        def special_count(ids: list[int]) -> int:
            return sum(token in self._special_ids for token in ids)

        return special_count(self._plain_suffix_ids(text)) == special_count(self._empty_suffix_ids)

    def _suffix_runs(self) -> list[tuple[int | None, list[str]]]:
        """The suffix template cut at the special tokens of its own text, for `_plain_suffix_ids`: per run of text
        between them, the id of the token before it (None for the run starting the suffix) and the template's text
        around each place of the candidate text in the run (the run is that text joined by the candidate text)."""
        tokenizer = self.prompt_encoder.tokenizer
        runs: list[tuple[int | None, list[str]]] = [(None, [])]
        for part in self._suffix_parts:
            texts = self._special_tokens.split(part)
            runs[-1][1].append(texts[0])  # the suffix's start, or the text after a place of the candidate text
            tokens = self._special_tokens.findall(part)
            runs += [(tokenizer.convert_tokens_to_ids(token), [text]) for token, text in zip(tokens, texts[1:])]
        return runs

    def _plain_suffix_ids(self, text: str) -> list[int]:
        """Token ids of the prompt suffix for `text`, its special tokens' strings read as text: the suffix is cut at
        the special tokens of the template's text alone, which stay tokens (`_plain_suffix_runs`), and each run between
        them (one holds the candidate text) is tokenised by `plain_text_tokenizer`; after `TEXT_MARK` where a token
        precedes the run in the prompt, alone where the run starts the suffix, as `suffix_ids` tokenises it."""
        ids: list[int] = []
        for token_id, template_texts in self._plain_suffix_runs:
            if token_id is not None:
                ids.append(token_id)
            if not (run := text.join(template_texts)):
                continue
            if token_id is None and not self._suffix_lead:
                ids += self._plain_text_tokenizer.encode(run, add_special_tokens=False).ids
            else:
                ids += self._plain_text_tokenizer.encode(TEXT_MARK + run, add_special_tokens=False).ids[1:]
        return ids

    def prefix_ids(self, images: EncodedImages, index: int) -> list[int]:
        """Token ids of the shared prompt prefix for the `index`-th of `images` (image tokens
        expanded); `prefix_ids(...) + suffix_ids([text])[0]` is the whole prompt for one pair."""
        image_text = images.image_text(index, self.prompt_encoder.image_token)
        if image_text not in self._prefix_ids_by_image_text:
            self._prefix_ids_by_image_text[image_text] = self.prompt_encoder.expand_images(self.prefix_text, images, [index])
        return list(self._prefix_ids_by_image_text[image_text])

    def suffix_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of the prompt suffix for each candidate text (one batched tokenizer call); a text holding a special
        token's string with its special tokens read as text where the judge can (`special_token_in`), and then by
        `_plain_suffix_ids` alone."""
        plain = [self._read_as_plain_text(text) for text in texts]
        others = [self.suffix_template.format(text=text) for text, is_plain in zip(texts, plain) if not is_plain]
        tokenised = iter(self._tokenise_suffixes(others))
        return [self._plain_suffix_ids(text) if is_plain else next(tokenised) for text, is_plain in zip(texts, plain)]

    def _read_as_plain_text(self, text: str) -> bool:
        """Whether `suffix_ids` tokenises `text` with `plain_text_tokenizer`: it holds a special token's string, and
        the judge has that tokenizer."""
        return self._plain_text_tokenizer is not None and self._special_tokens.search(text) is not None

    def _prefix_problem(self, prefix_length: int) -> str | None:
        """Why an image whose prompt prefix takes `prefix_length` tokens cannot be judged, or None: its prompt, without
        any candidate text, is longer than `context_length`. Cutting texts cannot help there, and the image's tokens
        and the question are never cut."""
        if self.context_length is None or prefix_length + len(self._empty_suffix_ids) <= self.context_length:
            return None
        return (
            f"the judge's prompt for this image takes {prefix_length + len(self._empty_suffix_ids)} tokens before any "
            f"candidate text ({prefix_length} up to the text, the image's included), over the judge's context of "
            f"{self.context_length} tokens; give the judge smaller images (its image processor's size or max_pixels)"
        )

    def _check_prefix_fits(self, image_name: str, prefix_length: int) -> None:
        """A ValueError naming the image if its prompt does not fit the judge's context (`_prefix_problem`); the
        builder has skipped such images (`image_problem`), so only a direct caller of `score` meets it."""
        if (problem := self._prefix_problem(prefix_length)) is not None:
            raise ValueError(f"{image_name}: {problem}")

    def _suffix_ids_within_context(
        self, texts: Sequence[str], prefix_lengths: Sequence[int], cut_texts: list[str]
    ) -> list[list[int]]:
        """`suffix_ids(texts)`, except that a text whose prompt, after a prefix of `prefix_lengths[k]` tokens, would
        be longer than `context_length` is cut to the tokens that fit, keeping its start (and appended to
        `cut_texts`). Only the text is cut: the image tokens and the question around the text stay whole, so the
        judge still reads its answer after the question (`_check_prefix_fits` has made sure they fit)."""
        suffixes = self.suffix_ids(texts)
        if self.context_length is None:
            return suffixes
        fitted = []
        for text, prefix_length, ids in zip(texts, prefix_lengths, suffixes, strict=True):
            room = self.context_length - prefix_length
            if len(ids) > room:
                ids = self._suffix_ids_cut_to(text, room)
                cut_texts.append(text)
            fitted.append(ids)
        return fitted

    def _suffix_ids_cut_to(self, text: str, room: int) -> list[int]:
        """The suffix ids of the longest start of `text`, cut at one of its own token boundaries, whose suffix takes at
        most `room` tokens. A text tokenised inside the prompt may take a token more or less than alone (merges at its
        ends; a byte-level BPE splits a character across tokens), so the cut moves back a token at a time until it
        fits; the empty text fits (`_check_prefix_fits`). A prompt that asks about the text k times holds it k times.

        The text's tokens are counted as `suffix_ids` reads it: a special token's string read as text is several
        tokens, not one, and counted as one the cut started far past the room and moved back a token per try (2045
        suffix tokenisations for one text in a 3000-token context)."""
        tokenizer = self.prompt_encoder.tokenizer
        if self._read_as_plain_text(text):
            encoding = self._plain_text_tokenizer.encode(text, add_special_tokens=False)
            text_ids, offsets = encoding.ids, encoding.offsets
        else:
            encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=tokenizer.is_fast)
            text_ids, offsets = encoded["input_ids"], encoded.get("offset_mapping")  # only fast tokenizers give offsets
        occurrences = len(self._suffix_parts) - 1
        for keep in range(min(len(text_ids), (room - len(self._empty_suffix_ids)) // occurrences), 0, -1):
            cut = text[: offsets[keep - 1][1]] if offsets is not None else tokenizer.decode(text_ids[:keep])
            if len(ids := self.suffix_ids([cut])[0]) <= room:
                return ids
        return list(self._empty_suffix_ids)

    def _answer_rows(self, name: str) -> torch.Tensor | None:
        """The "Yes" and "No" rows of the output embedding's `name` ("weight": (2, hidden); "bias": (2,) or None),
        float32. A head offloaded by a `device_map` (on the meta device) is read from its offload hook once and the
        rows kept: for disk offload a read loads the whole (vocab, hidden) matrix."""
        head = self.model.get_output_embeddings()
        tensor = getattr(head, name, None)
        rows = [self.yes_id, self.no_id]
        if tensor is None or tensor.device.type != "meta":
            return None if tensor is None else tensor[rows].float()
        if name not in self._offloaded_answer_rows:
            values = offloaded_tensor(head, name)
            if values is None:
                raise RuntimeError(f"the judge's output embedding {name} is on the meta device without an offload hook")
            self._offloaded_answer_rows[name] = values[rows].float()
        return self._offloaded_answer_rows[name]

    def _alphas(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(batch, hidden) last-position states -> (batch,) float32 alphas.

        Only the "Yes" and "No" rows of the output embedding are applied, in float32: a bf16 head rounds logits
        near 20 to steps of 0.125, which merges close judgements into ties."""
        logits = hidden_states.float() @ self._answer_rows("weight").to(hidden_states.device).T
        if (bias := self._answer_rows("bias")) is not None:
            logits = logits + bias.to(hidden_states.device)
        return torch.softmax(logits, dim=-1)[:, 0]

    @torch.inference_mode()
    def score(
        self, images: list[PIL.Image.Image], texts: list[list[str]], *, reuse_prefix: bool = True
    ) -> list[torch.Tensor]:
        """alpha(images[i], texts[i][j]); one (len(texts[i]),) float32 CPU tensor per image.

        Malformed inputs (a flat list of texts, a text where an image goes) and texts holding a
        special token of the judge's tokenizer (`special_token_in`) raise a ValueError naming the
        item (`check_score_inputs`), before any forward. `reuse_prefix` (this judge's option, not part of the
        `PreferenceJudge` protocol): False runs every pair as one full prompt, the reference the shared-prefix path
        is tested and benchmarked against.

        A text that would take the prompt past the judge's `context_length` is cut to fit, keeping its start, with a
        warning (`_suffix_ids_within_context`); an image whose prompt does not fit even without a text is a ValueError
        naming it."""
        check_score_inputs(images, texts)
        check_special_tokens(self, candidate_names(texts))
        cut_texts: list[str] = []
        if not reuse_prefix:
            pairs = [
                (f"images[{index}]", image, text)
                for index, (image, candidates) in enumerate(zip(images, texts))
                for text in candidates
            ]
            scores = list(self._score_pairs(pairs, cut_texts).split([len(candidates) for candidates in texts]))
        else:
            scores = self._score_with_shared_prefixes(images, texts, cut_texts)
        self._warn_of_cut_texts(cut_texts)
        return scores

    @torch.inference_mode()
    def score_images(self, texts: list[str], images: list[list[PIL.Image.Image]]) -> list[torch.Tensor]:
        """alpha(images[i][j], texts[i]); one (len(images[i]),) float32 CPU tensor per text.

        The image comes first in the prompt, so candidates share no prefix: this is the per-pair path. (The builder
        does not use it: `scoring.score_both_directions` asks `score` for txt2img pairs grouped by image, which
        shares each image's prefix among its texts.)
        Malformed inputs and texts holding a special token of the judge's tokenizer raise a
        ValueError naming the item (`check_score_images_inputs`, `special_token_in`); a text too long for the judge's
        context is cut as `score` cuts it.
        """
        check_score_images_inputs(texts, images)
        check_special_tokens(self, ((f"texts[{index}]", text) for index, text in enumerate(texts)))
        pairs = [
            (f"images[{index}][{position}]", image, text)
            for index, (text, candidates) in enumerate(zip(texts, images))
            for position, image in enumerate(candidates)
        ]
        cut_texts: list[str] = []
        scores = list(self._score_pairs(pairs, cut_texts).split([len(candidates) for candidates in images]))
        self._warn_of_cut_texts(cut_texts)
        return scores

    def _warn_of_cut_texts(self, cut_texts: list[str]) -> None:
        """One warning for the texts a `score` or `score_images` call cut to fit the context, if any."""
        if cut_texts:
            warnings.warn(
                f"{len(cut_texts)} candidate text(s) made a judge prompt longer than the judge's context of "
                f"{self.context_length} tokens and were judged cut to fit, keeping their start (the first: "
                f"{reprlib.repr(cut_texts[0])})",
                stacklevel=4,  # the caller of `score`, past torch's inference_mode wrapper
            )

    def _score_pairs(self, pairs: Sequence[tuple[str, PIL.Image.Image, str]], cut_texts: list[str]) -> torch.Tensor:
        """(len(pairs),) alphas of (image name, image, text) pairs, each pair run as one full prompt, `batch_size` pairs
        per forward; texts cut to fit the context are appended to `cut_texts`."""
        alphas = []
        for start in range(0, len(pairs), self.batch_size):
            batch = pairs[start : start + self.batch_size]
            encoded = self.prompt_encoder.encode_images([image for _, image, _ in batch])
            prefixes = [self.prefix_ids(encoded, index) for index in range(len(batch))]
            for (name, _, _), prefix in zip(batch, prefixes):
                self._check_prefix_fits(name, len(prefix))
            suffixes = self._suffix_ids_within_context(
                [text for _, _, text in batch], [len(prefix) for prefix in prefixes], cut_texts
            )
            sequences = [prefix + suffix for prefix, suffix in zip(prefixes, suffixes)]
            inputs = to_model(self.prompt_encoder.model_inputs(sequences, encoded, padding_side="right"), self.model)
            outputs = self.model.model(**inputs, use_cache=False)
            alphas.append(self._alphas(last_token_pool(outputs.last_hidden_state, inputs["attention_mask"])))
        return torch.cat(alphas).cpu() if alphas else torch.empty(0)

    def _score_with_shared_prefixes(
        self, images: Sequence[PIL.Image.Image], texts: Sequence[Sequence[str]], cut_texts: list[str]
    ) -> list[torch.Tensor]:
        """Per image, (len(texts[i]),) alphas, each anchor's prefix run once.

        Anchors whose prefixes have the same length (for most families: the same number of image tokens) share
        prefix forwards, `batch_size` anchors at a time; their (anchor, text) pairs then run in batches of
        `batch_size`, each pair against its own anchor's rows of the prefix cache. So short candidate lists still fill
        the batches. Images are encoded as they come and a group runs once it is full: at most
        `PENDING_PREFIX_BATCHES * batch_size` encoded images are held, the fullest group running early when they
        reach that. Texts cut to fit the context are appended to `cut_texts`.
        """
        alphas: list[torch.Tensor] = [torch.empty(0) for _ in images]
        pending: dict[int, list[tuple[int, EncodedImages]]] = defaultdict(list)  # prefix length -> (anchor, encoded)

        def run_group(prefix_length: int) -> None:
            group = pending.pop(prefix_length)
            scores = self._score_prefix_group(
                [encoded for _, encoded in group], [texts[index] for index, _ in group], cut_texts
            )
            for (index, _), anchor_alphas in zip(group, scores):
                alphas[index] = anchor_alphas

        for index, candidates in enumerate(texts):
            if not candidates:
                continue
            encoded = self.prompt_encoder.encode_images([images[index]])
            prefix_length = len(self.prefix_ids(encoded, 0))
            self._check_prefix_fits(f"images[{index}]", prefix_length)
            pending[prefix_length].append((index, encoded))
            if len(pending[prefix_length]) == self.batch_size:
                run_group(prefix_length)
            elif sum(len(group) for group in pending.values()) >= PENDING_PREFIX_BATCHES * self.batch_size:
                run_group(max(pending, key=lambda length: len(pending[length])))
        for prefix_length in list(pending):
            run_group(prefix_length)
        return alphas

    def _score_prefix_group(
        self, encoded: list[EncodedImages], texts: list[Sequence[str]], cut_texts: list[str]
    ) -> list[torch.Tensor]:
        """Alphas for anchors with equally long prefixes: one batched prefix forward, then the
        candidate suffixes in batches against the cached prefixes (texts cut to fit the context appended to
        `cut_texts`)."""
        images = EncodedImages.concatenate(encoded)
        prefix_ids = [self.prefix_ids(images, index) for index in range(len(encoded))]
        prefix = to_model(self.prompt_encoder.model_inputs(prefix_ids, images, padding_side="right"), self.model)
        prefix_positions, position_offsets = self.prompt_encoder.prefix_positions(self.model, prefix)
        # A cache of full layers: the one the model builds itself keeps only the last `sliding_window - 1` tokens in a
        # sliding-window layer (Gemma 3's), which the suffix forward, given the whole prefix's mask, cannot continue
        prefix_outputs = self.model.model(
            **prefix, position_ids=prefix_positions, use_cache=True, **{self._cache_keyword: DynamicCache()}
        )
        prefix_cache = getattr(prefix_outputs, self._cache_keyword)
        prefix_length = prefix["input_ids"].shape[1]

        pairs = [(anchor, text) for anchor, candidates in enumerate(texts) for text in candidates]
        alphas = []
        for start in range(0, len(pairs), self.batch_size):
            batch_pairs = pairs[start : start + self.batch_size]
            fitted = self._suffix_ids_within_context(
                [text for _, text in batch_pairs], [prefix_length] * len(batch_pairs), cut_texts
            )
            suffix_ids, suffix_mask = self.prompt_encoder.pad(fitted, padding_side="right")
            suffix_ids, suffix_mask = suffix_ids.to(self.model.device), suffix_mask.to(self.model.device)
            batch, length = suffix_ids.shape
            # on the CPU: it indexes cached layers that a `device_map` spreads over several GPUs
            anchors = torch.tensor([anchor for anchor, _ in batch_pairs])
            offsets = position_offsets[anchors] if isinstance(position_offsets, torch.Tensor) else position_offsets
            positions = self.prompt_encoder.continuation_positions(prefix_length, length, batch, offsets, suffix_ids.device)
            # Each pair attends to its own anchor's cached prefix.
            cache = DynamicCache(ddp_cache_data=[(layer.keys[anchors], layer.values[anchors]) for layer in prefix_cache.layers])
            outputs = self.model.model(
                input_ids=suffix_ids,
                attention_mask=torch.cat([suffix_mask.new_ones(batch, prefix_length), suffix_mask], dim=1),
                position_ids=positions,
                use_cache=True,
                **{self._cache_keyword: cache},
            )
            alphas.append(self._alphas(last_token_pool(outputs.last_hidden_state, suffix_mask)))
        return list(torch.cat(alphas).cpu().split([len(candidates) for candidates in texts]))


class JudgeEnsemble:
    """Mean alpha of several judges: averaging different models dampens one model's biases.

    Implements `PreferenceJudge`; members may be any `PreferenceJudge`s.
    """

    def __init__(self, judges: Sequence[PreferenceJudge], *, name: str | None = None) -> None:
        if not judges:
            raise ValueError("a judge ensemble needs at least one judge")
        self.judges = list(judges)
        self.name = name or ENSEMBLE_SEPARATOR.join(component_name(judge) for judge in self.judges)

    @property
    def prompt(self) -> str | None:
        """The question the members ask: the one they share, else one "name: prompt" line per member
        ("not recorded" for a member without a `prompt`). None when no member records one."""
        prompts = [getattr(judge, "prompt", None) for judge in self.judges]
        if len(set(prompts)) == 1:
            return prompts[0]
        return "\n".join(
            f"{component_name(judge)}: {'not recorded' if prompt is None else prompt}" for judge, prompt in zip(self.judges, prompts)
        )

    @property
    def settings(self) -> dict:
        """Each member's `settings` (None for a member without them), in order."""
        return {"judges": [getattr(judge, "settings", None) for judge in self.judges]}

    def image_problem(self, size: tuple[int, int]) -> str | None:
        """The first member judge's reason not to take an image of `size`, or None."""
        found = first_finding(enumerate(self.judges), "image_problem", size)
        return None if found is None else found[1]

    def special_token_in(self, text: str) -> str | None:
        """The first special token of a member judge's tokenizer that `text` contains, or None
        (members without `special_token_in` read any text)."""
        found = first_finding(enumerate(self.judges), "special_token_in", text)
        return None if found is None else found[1]

    def score(self, images: list[PIL.Image.Image], texts: list[list[str]]) -> list[torch.Tensor]:
        """Per image, the mean over judges of alpha(images[i], texts[i][j]). Malformed inputs and a text holding a
        special token of any member's tokenizer are a ValueError before any member scores."""
        check_score_inputs(images, texts)  # members need not check
        check_special_tokens(self, candidate_names(texts))
        per_judge = [judge.score(images, texts) for judge in self.judges]
        return self._mean_scores(per_judge, [len(candidates) for candidates in texts], "images")

    def score_images(self, texts: list[str], images: list[list[PIL.Image.Image]]) -> list[torch.Tensor]:
        """Per text, the mean over judges of alpha(images[i][j], texts[i]); every judge must have `score_images`
        (which `PreferenceJudge` does not ask for). Inputs are checked as `score` checks them, before any member
        scores."""
        check_score_images_inputs(texts, images)
        if lacking := [component_name(judge) for judge in self.judges if not hasattr(judge, "score_images")]:
            raise TypeError(f"score_images() needs every judge of the ensemble to have it; these have not: {', '.join(lacking)}")
        check_special_tokens(self, ((f"texts[{index}]", text) for index, text in enumerate(texts)))
        per_judge = [judge.score_images(texts, images) for judge in self.judges]
        return self._mean_scores(per_judge, [len(candidates) for candidates in images], "texts")

    def _mean_scores(self, per_judge: list[list[torch.Tensor]], counts: list[int], query_name: str) -> list[torch.Tensor]:
        """Per query (`query_name`[i]), the mean of the members' scores, after checking that each member answered one
        row of `counts[i]` scores per query: a `JudgeOutputError` names the member and the query otherwise (the rows
        were zipped, so a member's short answer cut the ensemble's short silently, and a row of another length was a
        bare stacking error)."""
        for judge, scores in zip(self.judges, per_judge):
            member = f"ensemble member {component_name(judge)}"
            if len(scores) != len(counts):
                raise JudgeOutputError(f"{member} returned {len(scores)} score rows for {len(counts)} {query_name}")
            for index, (row, count) in enumerate(zip(scores, counts)):
                if (shape := tuple(torch.as_tensor(row).shape)) != (count,):
                    raise JudgeOutputError(
                        f"{member} returned scores of shape {shape} for {query_name}[{index}]; expected ({count},)"
                    )
        return [torch.stack([torch.as_tensor(row) for row in rows]).mean(dim=0) for rows in zip(*per_judge)]
