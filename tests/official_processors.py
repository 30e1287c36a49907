"""The transformers processors of the MLLM families, around the tiny tokenizers and image processors of
`modeling_maple.testing`: the reference that the judge's and the embedder's image prompts are tested against."""

import sys
import types

from transformers import ProcessorMixin

from modeling_maple.testing import (
    tiny_gemma3_tokenizer,
    tiny_idefics3_tokenizer,
    tiny_internvl_tokenizer,
    tiny_mllm_image_processor,
    tiny_pixtral_tokenizer,
    tiny_tokenizer,
)


def official_processor(family: str, monkeypatch, tokenizer=None) -> ProcessorMixin:
    """`LlavaProcessor`, `LlavaNextProcessor`, `InternVLProcessor`, `Idefics3Processor` (for "idefics3" and
    "smolvlm", whose prompt strings are the same), `Gemma3Processor` or `PixtralProcessor` (for "pixtral" and "mistral3",
    whose processor it is too) with the tiny models' settings and chat templates; LLaVA's and LLaVA-NeXT's take another
    `tokenizer`."""
    image_processor = tiny_mllm_image_processor(family)
    if family in ("llava", "llava_next"):
        from transformers import LlavaNextProcessor, LlavaProcessor

        # llava-1.5-hf's and llava-v1.6's settings: CLS counted, then dropped by the "default" feature strategy.
        tokenizer = tokenizer or tiny_tokenizer()
        processor_class = LlavaProcessor if family == "llava" else LlavaNextProcessor
        return processor_class(image_processor=image_processor, tokenizer=tokenizer, patch_size=4,
                               vision_feature_select_strategy="default", image_token="<|image_pad|>",
                               num_additional_image_tokens=1, chat_template=tokenizer.chat_template)
    if family == "internvl":
        from transformers import InternVLProcessor

        # Built without its video processor, whose class needs torchvision.
        monkeypatch.setattr(ProcessorMixin, "check_argument_for_proper_class", lambda self, name, value: None)
        tokenizer = tiny_internvl_tokenizer()
        for name, token in [("start_image_token", "<img>"), ("end_image_token", "</img>"),
                            ("context_image_token", "<IMG_CONTEXT>"), ("video_token", "<video>")]:
            setattr(tokenizer, name, token)
            setattr(tokenizer, f"{name}_id", tokenizer.convert_tokens_to_ids(token))
        return InternVLProcessor(image_processor=image_processor, tokenizer=tokenizer, image_seq_length=4,
                                 chat_template=tokenizer.chat_template)
    if family in ("idefics3", "smolvlm"):
        from transformers import Idefics3Processor

        tokenizer = tiny_idefics3_tokenizer()
        return Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=4,
                                 chat_template=tokenizer.chat_template)
    if family == "gemma3":
        from transformers import Gemma3Processor

        tokenizer = tiny_gemma3_tokenizer()
        return Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_length=4,
                               chat_template=tokenizer.chat_template)
    if family in ("pixtral", "mistral3"):
        # processing_pixtral imports the torchvision image processor for one helper, which the PIL one has too
        from transformers.models.pixtral import image_processing_pil_pixtral

        torchvision_module = types.ModuleType("transformers.models.pixtral.image_processing_pixtral")
        torchvision_module.get_resize_output_image_size = image_processing_pil_pixtral.get_resize_output_image_size
        monkeypatch.setitem(sys.modules, torchvision_module.__name__, torchvision_module)
        from transformers.models.pixtral.processing_pixtral import PixtralProcessor

        tokenizer = tiny_pixtral_tokenizer()
        return PixtralProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=4,
                                spatial_merge_size=2 if family == "mistral3" else 1, chat_template=tokenizer.chat_template)
    raise ValueError(f"no official processor for {family!r} here")


# mistral-community/pixtral-12b's own chat template (its Hub chat_template.json, as transformers' Pixtral docs use it):
# a text part's words are read under "content", not "text", and an assistant turn's content is concatenated with the
# EOS as a string, so a list of parts there is a TypeError.
PIXTRAL_12B_CHAT_TEMPLATE = (
    '{%- if messages[0]["role"] == "system" %}{%- set system_message = messages[0]["content"] %}'
    '{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}{%- endif %}'
    "{{- bos_token }}"
    "{%- for message in loop_messages %}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif %}"
    '{%- if message["role"] == "user" %}'
    '{%- if loop.last and system_message is defined %}{{- "[INST]" + system_message + "\\n\\n" }}{%- else %}{{- "[INST]" }}{%- endif %}'
    '{%- if message["content"] is not string %}{%- for chunk in message["content"] %}'
    '{%- if chunk["type"] == "text" %}{{- chunk["content"] }}{%- elif chunk["type"] == "image" %}{{- "[IMG]" }}'
    '{%- else %}{{- raise_exception("Unrecognized content type!") }}{%- endif %}{%- endfor %}'
    '{%- else %}{{- message["content"] }}{%- endif %}{{- "[/INST]" }}'
    '{%- elif message["role"] == "assistant" %}{{- message["content"] + eos_token}}'
    '{%- else %}{{- raise_exception("Only user and assistant roles are supported, with the exception of an initial '
    'optional system message!") }}{%- endif %}'
    "{%- endfor %}"
)
