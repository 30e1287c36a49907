"""Model inputs for chat prompts with images, built from the tokenizer, the image processor and the
chat template, without AutoProcessor.

Qwen2-VL processors insist on a torchvision video processor; the judge and the captioner need only
the tokenizer, the (PIL) image processor and the chat template, and the judge must see the token
boundary between the image prefix and the text suffix anyway to reuse the prefix's KV cache. So a
`PromptEncoder` renders the chat template, expands the single image placeholder the template emits
into one token per image feature, and builds the tensors the model family needs. One subclass per
family; `prompt_encoder_for` picks it from the model config.

How each family processes images and what an image placeholder becomes (`encode_mllm_images`,
`EncodedImages`, `mllm_pixel_inputs`) is `modeling_maple.processing_maple`'s, the code `MapleProcessor`
uses, so the judge, the captioner and the embedder build vision prompts the same way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import PIL.Image
import torch
from jinja2 import TemplateError

from modeling_maple.configuration_maple import IMAGE_TOKEN_TYPE_INPUTS, QWEN_VL_MLLMS, SUPPORTED_MLLMS, mllm_family
from modeling_maple.processing_maple import (
    EncodedImages,
    check_tokens_known,
    encode_mllm_images,
    fill_image_placeholders,
    load_image_processor,
    mllm_image_problem,
    mllm_image_processor_problem,
    mllm_image_seq_length,
    mllm_image_tokens,
    mllm_pixel_inputs,
    mllm_spatial_merge_size,
)

from .interfaces import check_settings, with_device_map

Message = dict[str, object]
"""One chat message: {"role": ..., "content": [{"type": "image"} | `text_part(...)`]}."""


def text_part(text: str) -> dict[str, str]:
    """A chat message's text part, its words under both keys templates read them by: "text" (most families'), and
    "content" (pixtral-12b's template, which would render a part without it as nothing)."""
    return {"type": "text", "text": text, "content": text}


class PromptEncoder:
    """Turns chat messages and images into model inputs for one model family.

    Shared by all families: chat rendering, image processing and placeholder expansion
    (`encode_mllm_images`), the image tokens' mask for the families whose model takes one (Qwen-VL, Gemma 3),
    padding and plain 1-D positions. A subclass says how a family's positions differ (Qwen-VL's multimodal RoPE).

    The chat template writes one placeholder where each image goes (`image_placeholder`): the image token (the one
    at `config.image_token_id`), but Gemma 3's `<start_of_image>`, which `Gemma3Processor` expands into the image's
    whole sequence.

    A family is a config's `model_type`, but "pixtral" for a `llava` config with a Pixtral vision tower
    (`mllm_family`), whose images become rows of `[IMG]` tokens.

    Args:
        config: the model's config; its `image_token_id` is the image token.
        tokenizer: the model's tokenizer; must carry a chat template (or pass `chat_template`).
        image_processor: the model's image processor (the PIL classes are fine).
        chat_template: overrides the tokenizer's template.
    """

    def __init__(self, config, tokenizer, image_processor, *, chat_template: str | None = None) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.chat_template = chat_template or tokenizer.chat_template
        if not self.chat_template:
            raise ValueError("the tokenizer has no chat template; pass chat_template=... explicitly")
        self.image_token_id = config.image_token_id
        self.image_token = tokenizer.convert_ids_to_tokens(self.image_token_id)
        if self.image_token is None or self.tokenizer.convert_tokens_to_ids(self.image_token) != self.image_token_id:
            raise ValueError(f"the tokenizer has no token for the model's image token id {self.image_token_id}")
        self.family = mllm_family(config)
        image_tokens = mllm_image_tokens(self.family, tokenizer)
        check_tokens_known(tokenizer, image_tokens, needed_by=f"{self.family} prompts around images")
        self.image_placeholder = image_tokens[0] if self.family == "gemma3" else self.image_token
        self.image_seq_length = mllm_image_seq_length(config)
        self.spatial_merge_size = mllm_spatial_merge_size(config)
        if (problem := mllm_image_processor_problem(config, image_processor)) is not None:
            raise ValueError(f"{self.family}: {problem}")
        self.leading_special_ids = _leading_special_ids(tokenizer)

    def image_problem(self, size: tuple[int, int]) -> str | None:
        """Why an image of `size` (width, height) cannot be encoded for this model, or None."""
        return mllm_image_problem(self.family, size, self.image_processor, self.spatial_merge_size)

    def render(self, messages: list[Message], *, add_generation_prompt: bool) -> str:
        """The chat template applied to `messages`, as text with one placeholder per image."""
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.chat_template, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def encode_images(self, images: Sequence[PIL.Image.Image]) -> EncodedImages:
        """Pixels and token counts of `images`, in order (PIL images or file paths; a corrupt one
        is a ValueError naming its position in `images`)."""
        return encode_mllm_images(
            self.family, self.image_processor, self.tokenizer, images, self.image_token, self.image_seq_length,
            spatial_merge_size=self.spatial_merge_size,
        )

    def expand_images(self, text: str, images: EncodedImages, indices: Sequence[int]) -> list[int]:
        """Token ids of the rendered prompt `text`, or of its start, with its k-th `image_placeholder`
        filled for image `indices[k]` of `images` (`EncodedImages.image_text`; a ValueError if the
        numbers of placeholders and images differ). Placeholders and the tokens they become are
        special tokens, so filling before or after tokenising is the same.

        The tokens the tokenizer puts before a text (Llama's BOS) lead the ids unless the template
        wrote the BOS itself (Gemma 3's does), as a processor's `apply_chat_template(tokenize=True)` does:
        LLaVA-1.5's template has no BOS, and the model was trained with one."""
        image_texts = [images.image_text(index, self.image_token) for index in indices]
        expanded = fill_image_placeholders(text, image_texts, placeholder=self.image_placeholder)
        ids = self.tokenizer(expanded, add_special_tokens=False)["input_ids"]
        bos = self.tokenizer.bos_token
        return ids if bos is not None and text.startswith(bos) else self.leading_special_ids + ids

    def pad(self, sequences: Sequence[Sequence[int]], *, padding_side: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask), both (batch, longest), padded on `padding_side`."""
        longest = max(len(sequence) for sequence in sequences)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
        for row, sequence in enumerate(sequences):
            span = slice(0, len(sequence)) if padding_side == "right" else slice(longest - len(sequence), longest)
            input_ids[row, span] = torch.tensor(sequence, dtype=torch.long)
            attention_mask[row, span] = 1
        return input_ids, attention_mask

    def model_inputs(
        self, sequences: Sequence[Sequence[int]], images: EncodedImages, *, padding_side: str
    ) -> dict[str, torch.Tensor]:
        """Everything a forward pass or `generate` needs for a padded batch of prompts whose
        images, in reading order, are `images`; for Qwen-VL and Gemma 3 with the mask of the image tokens, by which
        Qwen-VL's multimodal RoPE and Gemma 3's causal mask (each image's tokens see one another) find them."""
        input_ids, attention_mask = self.pad(sequences, padding_side=padding_side)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, **mllm_pixel_inputs(self.family, images)}
        if (token_type_input := IMAGE_TOKEN_TYPE_INPUTS.get(self.family)) is not None:
            inputs[token_type_input] = (input_ids == self.image_token_id).int()
        return inputs

    def prefix_positions(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor | None, int | torch.Tensor]:
        """Position ids for a batch of unpadded, equally long prompt prefixes (None: the model's
        default), and the offset by which the positions of text continuing each prefix differ from
        the token index: 0, or a (batch, 1) tensor."""
        return None, 0

    def continuation_positions(
        self, start: int, length: int, batch: int, offset: int | torch.Tensor, device: torch.device
    ) -> torch.Tensor:
        """(batch, length) position ids of `length` text tokens continuing prefixes of `start`
        tokens; `offset` is 0 or (batch, 1) as from `prefix_positions`."""
        return (torch.arange(start, start + length, device=device) + offset).expand(batch, length)


class QwenVLPromptEncoder(PromptEncoder):
    """Qwen2-VL, Qwen2.5-VL, Qwen3-VL: dynamic-resolution patches, one token per `merge_size` x `merge_size` merged
    patches (2 x 2 in their checkpoints), M-RoPE."""

    def prefix_positions(self, model, inputs):
        """M-RoPE positions (3, batch, length): image tokens get 2-D grid positions, so the text
        after an image continues from the grid's extent, not from the token count (`rope_delta`,
        (batch, 1))."""
        positions, rope_delta = model.model.get_rope_index(
            inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"], image_grid_thw=inputs["image_grid_thw"]
        )
        return positions, rope_delta

    def continuation_positions(self, start, length, batch, offset, device):
        """(3, batch, length): text tokens use the same position in all three M-RoPE sections."""
        return super().continuation_positions(start, length, batch, offset, device).unsqueeze(0).expand(3, batch, length)


def _leading_special_ids(tokenizer) -> list[int]:
    """The ids `tokenizer` puts before a text when it adds special tokens (Llama: [BOS]; Qwen: none); those it
    puts after one (an EOS) are left out, as a prompt prefix must not end the sequence."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    start = next((i for i in range(len(full) - len(plain) + 1) if full[i : i + len(plain)] == plain), 0)
    return full[:start]


def answer_start(prompt_encoder: PromptEncoder, word: str) -> tuple[str, int] | None:
    """Where the model's answer `word` starts in its chat format: (lead, token), the text the chat template writes
    between the generation prompt and the answer, and the first token of the answer after it.

    The lead is empty for most templates. A thinking model's (Qwen3-VL-Thinking's) generation prompt ends in an open
    think block that a finished answer closes empty first ("\n</think>\n\n"): a prompt fed without the lead has the
    model start reasoning, not answering. Read from a conversation rendered with the answer `word` and tokenised
    whole, the answer's token being the one that starts at the word or at the whitespace before it (LLaVA's
    "ASSISTANT:" is answered " Yes", one token). None when the template renders no answer (`word` is not in the
    answered conversation); a ValueError when it renders the answer but not after its generation prompt, or inside
    a token that starts before it."""
    question = [{"role": "user", "content": [text_part("?")]}]
    prompt = prompt_encoder.render(question, add_generation_prompt=True)
    starts, problems = [], []
    # The answer's content as a list of parts and as a string: some templates (SmolVLM's, Idefics3's) render only
    # the first and render a string as nothing; pixtral-12b's adds the EOS to the content as a string, so a list of
    # parts is a TypeError there; one that prints the content as it is renders a list as its repr, the word inside.
    for content in ([text_part(word)], word):
        try:
            answered = prompt_encoder.render(question + [{"role": "assistant", "content": content}], add_generation_prompt=False)
        except (TypeError, TemplateError):
            continue
        try:
            start = _answer_start_after(prompt, answered, word, prompt_encoder.tokenizer)
        except ValueError as problem:
            problems.append(problem)
            continue
        if start is not None:
            starts.append(start)
    if starts:
        return min(starts, key=lambda start: len(start[0]))  # the template's own text, not a list's repr
    if problems:
        raise problems[0]
    return None


def _answer_start_after(prompt: str, answered: str, word: str, tokenizer) -> tuple[str, int] | None:
    """`answer_start` in one rendering `answered` of the conversation the generation prompt `prompt` asks for."""
    if not answered.startswith(prompt):
        if word not in answered:
            return None
        raise ValueError(
            f"the chat template renders an answered conversation that does not continue its generation prompt, so "
            f"where the answer {word!r} starts is unknown: the prompt ends {prompt[-40:]!r}, the answered "
            f"conversation {answered[-60:]!r}"
        )
    after_prompt = answered[len(prompt) :]
    if (at := after_prompt.find(word)) < 0:
        return None
    answered_ids = tokenizer(answered, add_special_tokens=False)["input_ids"]
    for cut in range(at, len(after_prompt[:at].rstrip()) - 1, -1):  # at the word, or at the whitespace before it
        lead_ids = tokenizer(prompt + after_prompt[:cut], add_special_tokens=False)["input_ids"]
        if answered_ids[: len(lead_ids)] == lead_ids and len(answered_ids) > len(lead_ids):
            return after_prompt[:cut], answered_ids[len(lead_ids)]
    raise ValueError(
        f"no token of the chat template's answered conversation starts at its answer {word!r}: after the "
        f"generation prompt it reads {after_prompt!r}"
    )


def image_processor_settings(image_processor) -> dict:
    """An image processor's settings as plain JSON values (sizes, pixel budgets such as Qwen-VL's
    max_pixels, normalisation), for recipe manifests: they change what a model sees."""
    return json.loads(image_processor.to_json_string())


def weights_digest(model: torch.nn.Module, values_per_tensor: int = 1024) -> str:
    """A digest of a model's weights, for recipe manifests: a model retrained in place or loaded at another
    revision keeps its name. Each tensor's name, shape, dtype and the exact bytes of up to `values_per_tensor`
    evenly strided values, so it is the same on any device and cheap for a 72B model."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name} {tuple(tensor.shape)} {tensor.dtype}".encode())
        if tensor.device.type == "meta":  # offloaded by a device map: the values are in its offload hook
            module_name, _, tensor_name = name.rpartition(".")
            tensor = offloaded_tensor(model.get_submodule(module_name), tensor_name)
            if tensor is None:
                continue
        values = tensor.detach().reshape(-1)
        values = values[:: max(1, values.numel() // values_per_tensor)][:values_per_tensor]
        digest.update(values.cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def offloaded_tensor(module: torch.nn.Module, tensor_name: str) -> torch.Tensor | None:
    """The values of `module.<tensor_name>` where accelerate offloaded it (to the CPU or disk; the module then holds
    a meta tensor): its offload hook keeps them in a `weights_map`. None if it has none."""
    hook = getattr(module, "_hf_hook", None)
    for each in getattr(hook, "hooks", [hook]):  # a SequentialHook holds several
        weights_map = getattr(each, "weights_map", None)
        if weights_map is not None:
            try:  # not `in`: a Mapping's `in` reads the tensor, which for disk offload means reading it twice
                return weights_map[tensor_name]
            except KeyError:
                continue
    return None


def model_settings(model: torch.nn.Module, prompt_encoder: PromptEncoder, answer_lead: str) -> dict:
    """What shapes a VLM's outputs for a given prompt: its weights (`weights_digest`), the chat template, the
    special tokens the tokenizer puts before a prompt (LLaVA's BOS), the text fed after the generation prompt
    (`answer_start`'s lead; recorded only where there is one, so that other manifests read as before), the weights
    dtype and the image processor's settings."""
    return {
        "weights": weights_digest(model),
        "chat_template": prompt_encoder.chat_template,
        "leading_special_ids": prompt_encoder.leading_special_ids,
        **({"answer_lead": answer_lead} if answer_lead else {}),
        "dtype": str(model.dtype),
        "image_processor": image_processor_settings(prompt_encoder.image_processor),
    }


def to_model(inputs: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """`inputs` on the model's device, pixels in its dtype (a bf16 model gets bf16 pixels)."""
    moved = {key: value.to(model.device) for key, value in inputs.items()}
    moved["pixel_values"] = moved["pixel_values"].to(model.dtype)
    return moved


PROMPT_ENCODERS: dict[str, type[PromptEncoder]] = {
    # The families whose images `encode_mllm_images` prepares, the embedder's too; all but Qwen-VL's
    # multimodal RoPE use plain 1-D positions.
    model_type: QwenVLPromptEncoder if model_type in QWEN_VL_MLLMS else PromptEncoder
    for model_type in SUPPORTED_MLLMS
}
"""Model families the judge and the captioner can drive, by `config.model_type`."""


def check_supported(model_type: str | None) -> None:
    """Raise a clear error for a model family (a config's `model_type`) without a prompt encoder."""
    if model_type not in PROMPT_ENCODERS:
        raise NotImplementedError(f"model type {model_type!r} is not supported yet; supported: {', '.join(PROMPT_ENCODERS)}")


def prompt_encoder_for(config, tokenizer, image_processor, *, chat_template: str | None = None) -> PromptEncoder:
    """The prompt encoder of `config`'s model family."""
    check_supported(config.model_type)
    return PROMPT_ENCODERS[config.model_type](config, tokenizer, image_processor, chat_template=chat_template)


@dataclass(frozen=True)
class LoadedVLM:
    """A model of a supported family with its own tokenizer and image processor."""

    model: torch.nn.Module
    tokenizer: object
    image_processor: object


def load_vlm(
    model_id_or_path: str,
    *,
    device: str | torch.device | None = "cpu",
    dtype: torch.dtype | str = "auto",
    image_processor_kwargs: dict | None = None,
    model_kwargs: dict | None = None,
    token: str | None = None,
    chat_template: str | None = None,
) -> LoadedVLM:
    """Load an image-text-to-text model by Hub id or local path, after checking its family is
    supported, its image processor settings and that it has a chat template (so bad input fails before any weights
    are downloaded).

    Args:
        device: where the model goes; ignored when `model_kwargs` holds a `device_map` (large
            models such as a 72B captioner spread over several GPUs).
        dtype: weights dtype ("auto": as saved).
        image_processor_kwargs: settings of the image processor, e.g. `{"max_pixels": 392 * 392}` for
            Qwen2-VL, `{"max_patches": 6}` (tiles per image) for InternVL; one it does not have is a
            ValueError.
        model_kwargs: more `from_pretrained` arguments (`device_map`, `attn_implementation`, ...).
        token: the Hub token every file (config, image processor, tokenizer, weights) is read with; None: HF_TOKEN or
            the token `hf auth login` saved.
        chat_template: the chat template to use instead of the checkpoint's. Without it, the processor's
            (`processor_chat_template`), which `AutoProcessor` renders with, else the tokenizer's (a checkpoint in the
            legacy layout may keep a text-only template for its tokenizer and the image one in chat_template.json); the
            returned tokenizer carries the one in use.
    """
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoTokenizer

    check_supported(AutoConfig.from_pretrained(model_id_or_path, token=token).model_type)
    # `backend` ("pil", "torchvision") picks the image processor's class: a choice of its own here
    image_processor = load_image_processor(model_id_or_path, image_processor_kwargs, allowed=("backend",), token=token)
    tokenizer = AutoTokenizer.from_pretrained(model_id_or_path, token=token)
    tokenizer.chat_template = chat_template or processor_chat_template(model_id_or_path, token) or tokenizer.chat_template
    if not tokenizer.chat_template:
        raise ValueError(
            f"{model_id_or_path} has no chat template (neither in its tokenizer nor in chat_template.jinja or "
            "chat_template.json): a judge or captioner answers in a chat format, so use an instruction-tuned "
            "checkpoint, add its template to the checkpoint's folder as chat_template.jinja, or pass chat_template=..."
        )
    model_kwargs = dict(model_kwargs or {})
    model = AutoModelForImageTextToText.from_pretrained(model_id_or_path, dtype=dtype, token=token, **model_kwargs)
    if "device_map" not in model_kwargs and device is not None:
        model = model.to(device)
    return LoadedVLM(model=model, tokenizer=tokenizer, image_processor=image_processor)


def processor_chat_template(model_id_or_path: str, token: str | None = None) -> str | None:
    """The chat template a checkpoint keeps for its processor rather than its tokenizer (the legacy
    chat_template.json, a chat_template.jinja or processor_config.json; its default one where there are several), as
    `AutoProcessor` reads it, without building the processor (Qwen2-VL's insists on a torchvision video processor);
    None if it has none."""
    from transformers import ProcessorMixin

    processor_dict, _ = ProcessorMixin.get_processor_dict(model_id_or_path, token=token)
    template = processor_dict.get("chat_template")
    return template.get("default") if isinstance(template, dict) else template


VLM_LOADING_KEYWORDS = ("device", "dtype", "device_map", "image_processor_kwargs", "model_kwargs", "token")
"""What `MLLMJudge.from_pretrained` and `ContrastiveCaptioner.from_pretrained` take at top level for `load_vlm`, as
transformers' `from_pretrained` takes `dtype` and `device_map`; `device_map` goes into `model_kwargs`."""


def vlm_loading_kwargs(owner: str, loading_kwargs: dict | None, **given) -> dict:
    """`load_vlm`'s keywords from a `from_pretrained`'s `loading_kwargs` dict and its top-level loading keywords
    (`VLM_LOADING_KEYWORDS`; None means not given), `device_map` moved into `model_kwargs`. A keyword given twice,
    or a key of `loading_kwargs` that `load_vlm` does not take, is a TypeError naming `owner`."""
    merged = dict(loading_kwargs or {})
    if unknown := [key for key in merged if key not in VLM_LOADING_KEYWORDS]:
        raise TypeError(f"{owner}: loading_kwargs has {', '.join(unknown)}; it takes {', '.join(VLM_LOADING_KEYWORDS)}")
    for key, value in given.items():
        if value is None:
            continue
        if key in merged:
            raise TypeError(f"{owner}: {key} given both at top level and in loading_kwargs; give it once")
        merged[key] = value
    if "device_map" in merged or "model_kwargs" in merged:
        merged["model_kwargs"] = with_device_map(owner, merged.get("model_kwargs"), merged.pop("device_map", None))
    return merged


VLMComponent = TypeVar("VLMComponent", bound="LoadsFromVLM")


class LoadsFromVLM:
    """A component made from a VLM's model, tokenizer and image processor (`MLLMJudge`, `ContrastiveCaptioner`),
    built by Hub id or path with `from_pretrained`. Subclasses take `(model, tokenizer, image_processor, *, name, ...)`
    and define `check_values(**settings)`."""

    @classmethod
    def from_pretrained(
        cls: type[VLMComponent],
        model_id_or_path: str,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        device_map: str | dict | None = None,
        image_processor_kwargs: dict | None = None,
        model_kwargs: dict | None = None,
        token: str | None = None,
        loading_kwargs: dict | None = None,
        **settings,
    ) -> VLMComponent:
        """Load by Hub id or local path with the loading keywords of transformers' `from_pretrained`, e.g.
        `MLLMJudge.from_pretrained("Qwen/Qwen2-VL-7B-Instruct", dtype=torch.bfloat16, device_map="auto")`; named after
        the model unless `settings` name it.

        Loading keywords go to `load_vlm`: `device` (default: the CPU; ignored with a `device_map`), `dtype` (default
        "auto": as saved), `device_map`, `image_processor_kwargs` (e.g. `{"max_pixels": 392 * 392}`), `model_kwargs`
        (other `from_pretrained` arguments, e.g. `attn_implementation`) and `token` (the Hub token every file is read
        with; None: HF_TOKEN or the saved login); `loading_kwargs` may hold them as one dict instead. `settings` go to
        the constructor: a keyword that is neither is a TypeError saying where it goes (`interfaces.check_settings`),
        and a value `check_values` refuses is a ValueError before anything loads. A checkpoint without a chat template
        (its tokenizer's or its processor's) is a ValueError before the weights load, unless `settings` hold a
        `chat_template`.
        """
        check_settings(cls, settings, VLM_LOADING_KEYWORDS)
        cls.check_values(**settings)
        given = dict(device=device, dtype=dtype, device_map=device_map, image_processor_kwargs=image_processor_kwargs,
                     model_kwargs=model_kwargs, token=token)
        loading = vlm_loading_kwargs(f"{cls.__name__}.from_pretrained", loading_kwargs, **given)
        loaded = load_vlm(model_id_or_path, chat_template=settings.get("chat_template"), **loading)
        return cls(loaded.model, loaded.tokenizer, loaded.image_processor, **{"name": model_id_or_path, **settings})


