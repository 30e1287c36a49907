"""`modeling_maple.load_maple`, the one loading path of `maple train`, `RPATrainer(model="...")` and `maple eval`."""

import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from hub_server import run_client
from modeling_maple import MapleLoadError, MapleModel, MapleProcessor, load_maple
from modeling_maple.testing import build_tiny, tiny_tokenizer

TINY_TOWER = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 4}


@pytest.fixture
def clip_folder(tmp_path):
    """A plain CLIP checkpoint (weights, image processor, tokenizer), as on the Hub."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    torch.manual_seed(0)
    folder = tmp_path / "clip"
    CLIPModel(CLIPConfig(text_config=TINY_TOWER, vision_config={**TINY_TOWER, "image_size": 16, "patch_size": 4})).save_pretrained(folder)
    CLIPImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def embeddings(model, processor):
    images = [Image.new("RGB", (16, 16), colour) for colour in ("red", "blue")]
    return model.eval().encode(processor, texts=["a red square", "a blue square"], images=images)


def cached_hub_repo(cache: Path, repo_id: str, *parts, subfolder: str = "") -> Path:
    """`parts` (a model, its processor) saved in `subfolder` of Hub repo `repo_id` as huggingface_hub lays out a
    downloaded one in the cache folder `cache`: a snapshot at commit 0...0 that `main` points to. The snapshot folder."""
    commit = "0" * 40
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    for part in parts:
        part.save_pretrained(snapshot / subfolder)
    return snapshot


# The start of a child process's script that records the URL of every request huggingface_hub sends (`requested`)
RECORDING_HUB_REQUESTS = """
from huggingface_hub.utils import httpx

requested, send = [], httpx.Client.send

def recording_send(client, request, **kwargs):
    requested.append(str(request.url))
    return send(client, request, **kwargs)

httpx.Client.send = recording_send
"""


def test_a_maple_checkpoint_and_a_backbone_load_as_maple_embedders(tmp_path, clip_folder):
    model, processor = build_tiny("dual_encoder", seed=0)
    model.save_pretrained(tmp_path / "maple")
    processor.save_pretrained(tmp_path / "maple")
    loaded, loaded_processor = load_maple(str(tmp_path / "maple"))
    for ours, theirs in zip(embeddings(model, processor), embeddings(loaded, loaded_processor)):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)

    wrapped, wrapped_processor = load_maple(str(clip_folder), dtype=torch.bfloat16)
    assert isinstance(wrapped, MapleModel) and isinstance(wrapped_processor, MapleProcessor)
    assert wrapped.config.backbone == "dual_encoder" and wrapped.vision_tower.dtype == torch.bfloat16
    assert wrapped.config._name_or_path == str(clip_folder)  # what model cards name as the base model


def test_a_local_checkpoint_loads_whatever_token_is_passed(tmp_path, clip_folder):
    """The token is for Hub reads only: one that could not be sent (`maple.hub.token_problem`, refused for a Hub repo:
    tests/test_hub_tokens.py) does not stop a folder from loading."""
    model, processor = build_tiny("dual_encoder", seed=0)
    model.save_pretrained(tmp_path / "maple")
    processor.save_pretrained(tmp_path / "maple")
    for folder in (tmp_path / "maple", clip_folder):
        for token in ("", "hf_pasted_with_its_newline\n", "hf_pasted_with_\u00e9"):
            loaded, _ = load_maple(str(folder), token=token)
            assert isinstance(loaded, MapleModel)


def test_the_trainer_and_the_evaluation_build_the_same_embedder_from_a_backbone(tmp_path, clip_folder):
    """`RPATrainer(model=<backbone id>)` wraps the backbone as `maple train` and `maple eval` do, so a baseline and
    the model trained from it start from the same embeddings."""
    from evaluation.models import load_embedder
    from trainer import RPATrainer
    from trainer.testing import smoke_config, synthetic_preference_dataset

    trainer = RPATrainer(str(clip_folder), args=smoke_config(str(tmp_path / "run")), train_dataset=synthetic_preference_dataset(8))
    assert isinstance(trainer.model, MapleModel) and isinstance(trainer.processing_class, MapleProcessor)
    evaluated = load_embedder(str(clip_folder))
    for ours, theirs in zip(embeddings(trainer.model, trainer.processing_class), embeddings(*evaluated)):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_checkpoints_it_cannot_load_are_refused_before_any_weights_load(tmp_path, clip_folder, monkeypatch):
    from transformers import BertConfig, BertModel, SamConfig

    from modeling_maple import BackboneLoadingError, load_maple_processor

    BertModel(BertConfig(vocab_size=99, **TINY_TOWER)).save_pretrained(tmp_path / "bert")
    monkeypatch.setattr(MapleModel, "from_backbone", lambda *args, **kwargs: pytest.fail("weights were loaded"))
    with pytest.raises(MapleLoadError, match=r"bert: .*'bert' checkpoint, neither a MAPLE one .*text_backbone="):
        load_maple(str(tmp_path / "bert"))
    with pytest.raises(MapleLoadError, match=r"clip: device_map cannot be passed when building from a backbone"):
        load_maple(str(clip_folder), device_map="cpu")
    # the processor alone: named what load_maple_processor takes, not what MapleModel.from_backbone does (dtype, ...)
    with pytest.raises(BackboneLoadingError, match=r"^\S*clip: cache_dir, local_files_only cannot be passed when building "
                                                   r"from a backbone \(load_maple_processor takes subfolder, cache_dir, "
                                                   r"force_download, local_files_only, proxies for a MAPLE checkpoint "
                                                   r"only: MapleProcessor.from_backbone reads a backbone's files with "
                                                   r"revision and token\)$"):
        load_maple_processor(str(clip_folder), cache_dir=str(tmp_path / "cache"), local_files_only=True)
    with pytest.raises(MapleLoadError, match=r"clip: a 'clip' checkpoint cannot be the 'mllm' backbone"):
        load_maple(str(clip_folder), backbone="mllm")  # the backbone named, not the one the config suggests
    SamConfig().save_pretrained(tmp_path / "sam")  # a vision config, but no text one
    with pytest.raises(MapleLoadError, match=r"sam: a 'sam' checkpoint is not a two-tower image-text model"):
        load_maple(str(tmp_path / "sam"), backbone="dual_encoder")
    with pytest.raises(MapleLoadError, match=r"^\S*missing: no such folder$"):
        load_maple(str(tmp_path / "missing"))
    monkeypatch.chdir(tmp_path)
    for relative in ("./missing", "../missing", "runs/a/b"):  # no Hub ids either: a repo id's rules were quoted
        with pytest.raises(MapleLoadError, match=rf"^{re.escape(relative)}: no such folder$"):
            load_maple(relative)


def test_a_maple_checkpoint_pooling_a_causal_text_towers_first_token_is_refused_before_any_weights_load(
    tmp_path, monkeypatch
):
    """pooling='cls' is refused for a decoder's text tower (GPT-2's), whose first token sees only itself, as the model is
    built: a checkpoint saved with it before that refusal, or asked for it by a config override, was a bare ValueError
    from within `from_pretrained`, which `maple train` and `maple eval` showed as a traceback."""
    import transformers
    from transformers import GPT2Config

    from modeling_maple import MapleConfig, load_maple_model
    from modeling_maple.testing import tiny_dual_encoder_config

    text_config = GPT2Config(n_layer=1, n_embd=32, n_head=4, vocab_size=64)
    model = MapleModel(MapleConfig(backbone="dual_encoder", vision_config=tiny_dual_encoder_config().vision_config,
                                   text_config=text_config, projection_dim=8, pooling="mean"))
    model.save_pretrained(tmp_path / "mean")
    model.config.pooling = "cls"  # as saved before the refusal
    model.save_pretrained(tmp_path / "cls")
    refused = r": pooling='cls' reads each text's first token, which a causal text tower \(gpt2\) lets see only itself"
    with monkeypatch.context() as patch:
        patch.setattr(transformers.AutoModel, "from_pretrained", lambda *args, **kwargs: pytest.fail("weights were loaded"))
        with pytest.raises(MapleLoadError, match="^" + re.escape(str(tmp_path / "cls")) + refused):
            load_maple(str(tmp_path / "cls"))  # before its processor too, which it was saved without
    # (the override's refusal names it: ConfigOverrideError, a MapleLoadError)
    with pytest.raises(MapleLoadError, match="^" + re.escape(str(tmp_path / "mean")) + r": config overrides \['pooling'\]"
                                             + refused):
        load_maple_model(str(tmp_path / "mean"), pooling="cls")
    assert load_maple_model(str(tmp_path / "mean")).config.pooling == "mean"


@pytest.mark.parametrize("text_tower", ["gpt2", "owlv2"])
def test_a_maple_checkpoint_saved_pooling_a_causal_text_towers_first_token_loads_with_an_override_that_sets_it_right(
    tmp_path, text_tower
):
    """The saved config was checked, not the one `from_pretrained` builds the model with: `pooling="mean"`, which the
    error advises, was refused as the saved 'cls' (and an OWLv2 config, which refuses it as it is read, also had its
    processor alone refused), though `AutoModel.from_pretrained` loads it so (found by a review)."""
    import json

    from transformers import GPT2Config, Owlv2TextConfig

    from modeling_maple import MapleConfig, load_maple_model, load_maple_processor
    from modeling_maple.testing import tiny_dual_encoder_config

    if text_tower == "gpt2":
        text_config = GPT2Config(n_layer=1, n_embd=32, n_head=4, vocab_size=2000)
    else:
        text_config = Owlv2TextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                                      vocab_size=2000)
    _, processor = build_tiny("dual_encoder")
    model = MapleModel(MapleConfig(backbone="dual_encoder", vision_config=tiny_dual_encoder_config().vision_config,
                                   text_config=text_config, projection_dim=8, pooling="mean"))
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**saved, "pooling": "cls"}))  # as saved before the refusal

    with pytest.raises(MapleLoadError, match=r": pooling='cls' reads each text's first token"):
        load_maple(str(tmp_path))
    loaded, _ = load_maple(str(tmp_path), pooling="mean")
    assert loaded.config.pooling == "mean"
    assert load_maple_model(str(tmp_path), pooling="mean").config.pooling == "mean"
    assert type(load_maple_processor(str(tmp_path))) is type(processor)
    # a config given is the one the model is built with, as AutoModel builds it, not the saved one
    given = MapleConfig.from_dict({**saved, "pooling": "mean"})
    assert load_maple_model(str(tmp_path), config=given).config.pooling == "mean"
    if text_tower == "gpt2":  # (an OWLv2 config refuses 'cls' as it is made)
        with pytest.raises(MapleLoadError, match=r": the config given: pooling='cls' reads each text's first token"):
            load_maple_model(str(tmp_path), config=MapleConfig.from_dict({**saved, "pooling": "cls"}))
    if text_tower == "gpt2":  # a decoder made bidirectional keeps its first token's pooling
        bidirectional = load_maple_model(str(tmp_path), text_config={"is_causal": False})
        assert (bidirectional.config.pooling, bidirectional.config.text_config.is_causal) == ("cls", False)


def test_config_overrides_a_checkpoint_refuses_are_told_as_the_overrides(tmp_path):
    """A checkpoint that loads as saved, given overrides its config refuses (`pooling="bogus"`, or `"cls"` on a decoder
    text tower), is a ConfigOverrideError naming them, which `maple train` reports as --model_init_kwargs' problem: it
    was a MapleLoadError, reported as --model_name_or_path's (found by a review)."""
    from transformers import GPT2Config

    from modeling_maple import ConfigOverrideError, MapleConfig
    from modeling_maple.testing import tiny_dual_encoder_config
    from trainer.cli import ModelArguments, TrainingInputError, load_model_and_processor
    from trainer.rpa_config import RPAConfig

    _, processor = build_tiny("dual_encoder")
    model = MapleModel(MapleConfig(backbone="dual_encoder", vision_config=tiny_dual_encoder_config().vision_config,
                                   text_config=GPT2Config(n_layer=1, n_embd=32, n_head=4, vocab_size=2000),
                                   projection_dim=8, pooling="mean"))
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    with pytest.raises(ConfigOverrideError, match=rf"^{tmp_path}: config overrides \['pooling'\]: .*'bogus'"):
        load_maple(str(tmp_path), pooling="bogus")
    with pytest.raises(ConfigOverrideError, match=r"config overrides \['pooling'\]: pooling='cls' reads each text's"):
        load_maple(str(tmp_path), pooling="cls")
    arguments = RPAConfig(output_dir=str(tmp_path / "out"), model_init_kwargs={"pooling": "bogus"})
    # (maple train passes a dtype too)
    with pytest.raises(TrainingInputError, match=rf"^--model_init_kwargs: {tmp_path}: config overrides \[.*'pooling'\]: "
                                                 r"Unknown pooling 'bogus'"):
        load_model_and_processor(ModelArguments(model_name_or_path=str(tmp_path)), arguments)


def test_config_overrides_do_not_read_a_hub_checkpoints_config_again(hub_server, tmp_path):
    """`load_maple` read a MAPLE checkpoint's config as saved, then again with the caller's overrides: one more request
    for the repo's revision per load from the Hub. The overridden config is built from the one read, and a load with
    overrides asks the Hub what one without them asks (its files cached by a first load)."""
    load = RECORDING_HUB_REQUESTS + """
import json
import tempfile
from huggingface_hub import HfApi
from modeling_maple import load_maple
from modeling_maple.testing import build_tiny

with tempfile.TemporaryDirectory() as folder:
    for part in build_tiny("dual_encoder", seed=0):
        part.save_pretrained(folder)
    HfApi().create_repo("maple-tester/tiny-overridden")
    HfApi().upload_folder(repo_id="maple-tester/tiny-overridden", folder_path=folder)
load_maple("maple-tester/tiny-overridden")  # (downloads the files)
for overrides in ({}, {"pooling": "cls", "normalize": False}):
    requested.clear()
    model, _ = load_maple("maple-tester/tiny-overridden", **overrides)
    print(json.dumps([model.config.pooling, model.config.normalize, requested]))
"""
    as_saved, overridden = map(json.loads, run_client(hub_server, tmp_path, load).splitlines()[-2:])
    assert as_saved[:2] == ["mean", True] and overridden[:2] == ["cls", False]
    assert overridden[2] == as_saved[2]


def test_a_home_relative_path_loads_as_a_folder(tmp_path, monkeypatch):
    """"~/ckpt" passed the folder check (which expanded it), and transformers then read it as a Hub id."""
    from modeling_maple import load_maple_model, load_maple_processor

    monkeypatch.setenv("HOME", str(tmp_path))
    model, processor = build_tiny("dual_encoder", seed=0)
    model.save_pretrained(tmp_path / "ckpt")
    processor.save_pretrained(tmp_path / "ckpt")
    loaded, _ = load_maple("~/ckpt")
    assert loaded.name_or_path == str(tmp_path / "ckpt")
    assert isinstance(load_maple_model("~/ckpt"), MapleModel) and load_maple_processor("~/ckpt") is not None
    with pytest.raises(MapleLoadError, match=r"^~/missing: no such folder$"):
        load_maple("~/missing")


def test_a_checkpoint_in_a_subfolder_or_a_cache_of_its_own_is_read_there_config_and_processor_too(tmp_path):
    """`subfolder` and `cache_dir` reached the weights only: the config and processor were read from the repo's top
    folder (another checkpoint's processor, with the subfolder's weights) and from the default cache."""
    from modeling_maple import load_maple_model, load_maple_processor

    for part in build_tiny("mllm", seed=0):  # another checkpoint at the top
        part.save_pretrained(tmp_path / "repo")
    model, processor = build_tiny("dual_encoder", seed=1)
    for folder in (tmp_path / "repo" / "run", tmp_path / "repo-without-top" / "run"):
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
    loaded, loaded_processor = load_maple(str(tmp_path / "repo"), subfolder="run")
    assert loaded_processor.backbone == loaded.config.backbone == "dual_encoder"
    for ours, theirs in zip(embeddings(model, processor), embeddings(loaded, loaded_processor)):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert load_maple_model(str(tmp_path / "repo-without-top"), subfolder="run").config.backbone == "dual_encoder"
    # the processor alone too (it took no such argument)
    assert load_maple_processor(str(tmp_path / "repo"), subfolder="run").backbone == "dual_encoder"
    with pytest.raises(TypeError, match=r"^load_maple_processor\(\) got unexpected keyword arguments dtype: it takes, "
                                        r"besides its own, only those that say where the checkpoint's files are "
                                        r"\(subfolder, cache_dir, force_download, local_files_only, proxies\)$"):
        load_maple_processor(str(tmp_path / "repo"), subfolder="run", dtype=torch.bfloat16)

    # a Hub repo in a cache folder of its own, read offline (HF_HUB_OFFLINE, conftest)
    cached_hub_repo(tmp_path / "cache", "maple-org/tiny", model, processor)
    loaded, loaded_processor = load_maple("maple-org/tiny", cache_dir=str(tmp_path / "cache"))
    for ours, theirs in zip(embeddings(model, processor), embeddings(loaded, loaded_processor)):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert load_maple_processor("maple-org/tiny", cache_dir=str(tmp_path / "cache")).backbone == "dual_encoder"


def test_a_subfolder_that_is_not_there_is_named(tmp_path):
    """A local repo's missing subfolder, or one without config.json, read as a config without a model type
    ("Unrecognized model in <repo>", whose config.json was fine); a cached Hub repo's, offline, as the repo missing
    from the cache."""
    model, processor = build_tiny("dual_encoder", seed=0)
    for part in (model, processor):
        part.save_pretrained(tmp_path / "repo")
    (tmp_path / "repo" / "logs").mkdir()  # a subfolder without a checkpoint
    repo = re.escape(str(tmp_path / "repo"))
    with pytest.raises(MapleLoadError, match=rf"^{repo}: no subfolder 'run'$"):
        load_maple(str(tmp_path / "repo"), subfolder="run")
    with pytest.raises(MapleLoadError, match=rf"^{repo}: no config.json in subfolder 'logs'$"):
        load_maple(str(tmp_path / "repo"), subfolder="logs")
    cached_hub_repo(tmp_path / "cache", "maple-org/tiny", model, processor)
    with pytest.raises(MapleLoadError, match=r"^maple-org/tiny: subfolder 'run' of model repo 'maple-org/tiny' on \S+ "
                                             r"is not in the local cache and the Hub is offline or unreachable$"):
        load_maple("maple-org/tiny", subfolder="run", cache_dir=str(tmp_path / "cache"))


def test_a_hub_repos_subfolder_without_config_json_is_named(hub_server, tmp_path):
    """The Hub's 404 for the subfolder's config.json read as a config without a model type ("Unrecognized model in
    <repo>. Should have a `model_type` key in its config.json")."""
    load = """
import tempfile
from huggingface_hub import HfApi
from modeling_maple import MapleLoadError, load_maple
from modeling_maple.testing import build_tiny

with tempfile.TemporaryDirectory() as folder:
    for part in build_tiny("dual_encoder", seed=0):
        part.save_pretrained(folder)
    HfApi().create_repo("maple-tester/tiny-in-run")
    HfApi().upload_folder(repo_id="maple-tester/tiny-in-run", folder_path=folder, path_in_repo="run")
print(load_maple("maple-tester/tiny-in-run", subfolder="run")[0].config.backbone)
try:
    load_maple("maple-tester/tiny-in-run", subfolder="nope")
except MapleLoadError as error:
    print(error)
"""
    assert run_client(hub_server, tmp_path, load).splitlines() == [
        "dual_encoder",
        f"maple-tester/tiny-in-run: subfolder 'nope' of model repo 'maple-tester/tiny-in-run' on {hub_server.url} has "
        "no config.json",
    ]


@pytest.mark.parametrize("offline", ["0", "1"])
def test_a_hub_repos_subfolder_without_config_json_is_named_from_the_cache_without_asking_the_hub(
    hub_server, tmp_path, offline
):
    """The Hub's 404 for the subfolder's config.json, which huggingface_hub records in the cache, is read there: with
    the Hub unreachable and HF_HUB_OFFLINE unset, asking for the file again cost some 20 s of retries; offline, asking
    could not tell that the file is not there."""
    cache = tmp_path / "home" / "hub"
    snapshot = cached_hub_repo(cache, "maple-org/tiny", *build_tiny("dual_encoder", seed=0), subfolder="run")
    no_exist = snapshot.parent.parent / ".no_exist" / snapshot.name / "nope" / "config.json"  # as huggingface_hub writes it
    no_exist.parent.mkdir(parents=True)
    no_exist.touch()
    load = RECORDING_HUB_REQUESTS + """
from modeling_maple import MapleLoadError, load_maple
try:
    load_maple("maple-org/tiny", subfolder="nope")
except MapleLoadError as error:
    print(error)
print([url for url in requested if url.endswith("/nope/config.json")])  # (transformers asks for the repo's commit)
"""
    closed = "http://127.0.0.1:9"  # the discard port: nothing listens
    printed = run_client(hub_server, tmp_path, load, HF_ENDPOINT=closed, HF_HOME=str(tmp_path / "home"),
                         HF_HUB_OFFLINE=offline)
    assert printed.splitlines() == [
        f"maple-org/tiny: subfolder 'nope' of model repo 'maple-org/tiny' on {closed} has no config.json", "[]"
    ]


@pytest.mark.parametrize("loading", [{"local_files_only": True}, {"force_download": True}])
def test_where_a_hub_repos_files_are_reaches_every_file_read_the_adapter_lookup_too(tmp_path, monkeypatch, loading):
    """`subfolder`, `cache_dir`, `local_files_only` and `force_download` reach every file read from a Hub repo: the
    config's, the processor's, the weights', and AutoModel's look for a PEFT adapter's adapter_config.json, which had
    `revision` and `token` only (the default cache, the repo's top folder, neither of the other two)."""
    import transformers.utils.hub

    cache = tmp_path / "cache"
    cached_hub_repo(cache, "maple-org/tiny", *build_tiny("dual_encoder", seed=0), subfolder="run")
    (argument, value), = loading.items()
    asked, download = [], transformers.utils.hub.hf_hub_download

    def recording_download(repo_id, filename, **kwargs):
        asked.append((filename, kwargs["subfolder"], kwargs["cache_dir"], kwargs[argument]))
        # offline (conftest): a file asked for afresh is read from the cache
        return download(repo_id, filename, **(kwargs | {"force_download": False}))

    monkeypatch.setattr(transformers.utils.hub, "hf_hub_download", recording_download)
    load_maple("maple-org/tiny", subfolder="run", cache_dir=str(cache), **loading)
    assert "adapter_config.json" in {filename for filename, *_ in asked}
    assert {tuple(where) for _, *where in asked} == {("run", str(cache), value)}


def test_a_callers_own_adapter_kwargs_win_over_where_the_checkpoints_files_are(tmp_path, monkeypatch):
    """`load_maple` merges the arguments that say where the files are into AutoModel's `adapter_kwargs`, under those
    the caller gives: a PEFT adapter kept apart from its checkpoint (another subfolder, another cache) is looked for
    where the caller says, with the rest of where the files are."""
    from transformers.models.auto import auto_factory

    from modeling_maple import load_maple_model

    for part in build_tiny("dual_encoder", seed=0):
        part.save_pretrained(tmp_path / "repo" / "run")
    looked_in, find_adapter_config_file = [], auto_factory.find_adapter_config_file

    def recording_find(model_id, **adapter_kwargs):
        looked_in.append({key: adapter_kwargs.get(key) for key in ("subfolder", "cache_dir", "local_files_only")})
        return find_adapter_config_file(model_id, **adapter_kwargs)

    monkeypatch.setattr(auto_factory, "find_adapter_config_file", recording_find)
    own = {"subfolder": "adapter", "cache_dir": str(tmp_path / "adapter-cache")}
    load_maple_model(str(tmp_path / "repo"), subfolder="run", cache_dir=str(tmp_path / "cache"), local_files_only=True,
                     adapter_kwargs=own)
    assert looked_in == [own | {"local_files_only": True}]


def test_local_files_only_loads_a_cached_hub_repo_without_asking_the_hub(hub_server, tmp_path):
    """With `local_files_only` and HF_HUB_OFFLINE unset, AutoModel's look for a PEFT adapter asked the Hub for
    adapter_config.json all the same: an unreachable Hub cost each load some 20 s of retries."""
    cached_hub_repo(tmp_path / "home" / "hub", "maple-org/tiny", *build_tiny("dual_encoder", seed=0))
    load = RECORDING_HUB_REQUESTS + """
from modeling_maple import load_maple
load_maple("maple-org/tiny", local_files_only=True)
print([url for url in requested if "maple-org/tiny" in url])  # (huggingface_hub asks for more than repos' files)
"""
    closed = "http://127.0.0.1:9"  # the discard port: nothing listens
    assert run_client(hub_server, tmp_path, load, HF_ENDPOINT=closed, HF_HOME=str(tmp_path / "home")).strip() == "[]"


def test_a_checkpoint_saved_without_its_processor_is_a_load_error_naming_it(tmp_path):
    """It was transformers' bare OSError, which `maple eval` showed as a traceback; the model alone still loads."""
    from modeling_maple import load_maple_model

    build_tiny("dual_encoder", seed=0)[0].save_pretrained(tmp_path / "weights-only")
    with pytest.raises(MapleLoadError, match=rf"^{re.escape(str(tmp_path / 'weights-only'))}: its processor cannot be "
                                             r"loaded \(.*\); save the processor with the model, or load the model "
                                             r"alone with load_maple_model and pass a processor$"):
        load_maple(str(tmp_path / "weights-only"))
    assert isinstance(load_maple_model(str(tmp_path / "weights-only")), MapleModel)


def test_a_backbone_saved_without_its_tokenizer_or_image_processor_is_a_load_error_naming_it(clip_folder):
    """Without tokenizer files transformers builds an empty tokenizer (its special tokens only), with which every text
    embedded alike, silently; without an image processor it was transformers' bare OSError, a traceback in `maple eval`
    (both found by a review helper)."""
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json"):
        (clip_folder / name).unlink(missing_ok=True)
    with pytest.raises(MapleLoadError, match=rf"^{re.escape(str(clip_folder))}: The tokenizer \(CLIPTokenizer\) holds only its "
                                             r"special tokens .* save the tokenizer with the model\.$"):
        load_maple(str(clip_folder))
    tiny_tokenizer().save_pretrained(clip_folder)
    (clip_folder / "preprocessor_config.json").unlink()
    with pytest.raises(MapleLoadError, match=rf"^{re.escape(str(clip_folder))}: its processor cannot be loaded \(.*\)$"):
        load_maple(str(clip_folder))


@pytest.mark.parametrize("backbone", ["mllm", "dual_encoder", "two_towers"])
def test_a_backbone_named_for_a_checkpoint_that_cannot_be_it_is_refused_before_any_weights_load(tmp_path, monkeypatch, backbone):
    """A DINOv2 named as 'mllm' or 'dual_encoder' loaded its weights, then failed with a plain ValueError (which `maple
    train` showed as a traceback) whose advice, `text_backbone=`, load_maple does not take."""
    from transformers import Dinov2Config, Dinov2Model

    Dinov2Model(Dinov2Config(image_size=16, patch_size=4, **TINY_TOWER)).save_pretrained(tmp_path / "dinov2")
    monkeypatch.setattr(MapleModel, "from_backbone", lambda *args, **kwargs: pytest.fail("weights were loaded"))
    expected = {
        "mllm": r"dinov2: a 'dinov2' checkpoint cannot be the 'mllm' backbone, which takes one of qwen2_vl, ",
        "dual_encoder": r"dinov2: a 'dinov2' checkpoint is not a two-tower image-text model .* build the embedder with "
        r"MapleModel\.from_backbone\(<vision encoder>, backbone='dual_encoder', text_backbone=<text encoder>\) .* load that folder",
        "two_towers": r"dinov2: unknown backbone 'two_towers', expected one of mllm, dual_encoder",
    }
    with pytest.raises(MapleLoadError, match=expected[backbone]):
        load_maple(str(tmp_path / "dinov2"), backbone=backbone)


def test_an_mllm_named_as_a_dual_encoder_is_refused_before_any_weights_load(tmp_path, monkeypatch):
    """Its config has a vision and a text config, as a CLIP's does: the weights loaded, then a bare error (Qwen2-VL,
    LLaVA), or, for SmolVLM, a 'dual encoder' of its ViT and a bare Llama (found by a review helper)."""
    import transformers

    from modeling_maple.testing import save_tiny_mllm_backbone

    save_tiny_mllm_backbone(tmp_path / "qwen2-vl")
    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", lambda *args, **kwargs: pytest.fail("weights were loaded"))
    with pytest.raises(MapleLoadError, match=r"qwen2-vl: a 'qwen2_vl' checkpoint is an MLLM, not a two-tower image-text "
                                             r"model: load it as the 'mllm' backbone"):
        load_maple(str(tmp_path / "qwen2-vl"), backbone="dual_encoder")
    for text_backbone in (None, str(tmp_path / "qwen2-vl")):
        with pytest.raises(ValueError, match=r"is an MLLM \(qwen2_vl\), not a dual encoder's: build it with backbone='mllm'"):
            MapleModel.from_backbone(str(tmp_path / "qwen2-vl"), backbone="dual_encoder", text_backbone=text_backbone)
    # a vision-language model MAPLE does not support: its SigLIP tower's weights are named otherwise, so taking that
    # tower of it left the tower at random initialisation (found by a review of the fix above)
    transformers.PaliGemmaConfig(vision_config=TINY_TOWER, text_config=TINY_TOWER).save_pretrained(tmp_path / "paligemma")
    with pytest.raises(ValueError, match=r"\(paligemma\) holds a vision and a text model; MAPLE takes one tower of a clip, "):
        MapleModel.from_backbone(str(tmp_path / "paligemma"), backbone="dual_encoder", text_backbone=str(tmp_path / "qwen2-vl"))


def test_a_two_tower_model_paired_with_another_encoder_gives_its_tower_of_that_side(tmp_path, clip_folder):
    """`from_backbone(clip, text_backbone=bert)` wrapped the whole CLIPModel as the vision tower (and a CLIP as the text
    side likewise): built, then failing at the first encode in transformers' words (found by a review helper)."""
    from transformers import BertConfig, BertModel, CLIPModel

    BertModel(BertConfig(vocab_size=400, **TINY_TOWER)).save_pretrained(tmp_path / "bert")
    tiny_tokenizer().save_pretrained(tmp_path / "bert")
    clip = CLIPModel.from_pretrained(clip_folder)
    model = MapleModel.from_backbone(str(clip_folder), backbone="dual_encoder", text_backbone=str(tmp_path / "bert"))
    assert type(model.vision_tower).__name__ == "CLIPVisionModel"
    assert all(torch.equal(value, clip.vision_model.state_dict()[key.removeprefix("vision_model.")])
               for key, value in model.vision_tower.state_dict().items())
    processor = MapleProcessor.from_backbone(str(clip_folder), backbone="dual_encoder", text_backbone=str(tmp_path / "bert"))
    text_embeds, image_embeds = embeddings(model, processor)
    assert text_embeds.shape[0] == image_embeds.shape[0] == 2

    swapped = MapleModel.from_backbone(str(clip_folder), backbone="dual_encoder", text_backbone=str(clip_folder))
    assert type(swapped.text_tower).__name__ == "CLIPTextModel"
    assert all(torch.equal(value, clip.text_model.state_dict()[key.removeprefix("text_model.")])
               for key, value in swapped.text_tower.state_dict().items())


def test_a_siglip_text_tower_pads_texts_to_one_length_whichever_vision_tower_it_is_paired_with(tmp_path, clip_folder):
    """SigLIP's text tower pools its last position, so its texts must all be padded to one length:
    `MapleProcessor.from_backbone` did so for a SigLIP checkpoint taken whole only, and with a SigLIP `text_backbone` a
    text's embedding depended on its batch's longest text (found by a review helper). A SigLIP vision tower paired with
    another text tower needs no such padding."""
    from transformers import BertConfig, BertModel, SiglipConfig, SiglipImageProcessorPil, SiglipModel

    torch.manual_seed(0)
    siglip = tmp_path / "siglip"
    text_tower = {**TINY_TOWER, "vocab_size": len(tiny_tokenizer()), "max_position_embeddings": 16}
    SiglipModel(SiglipConfig(text_config=text_tower, vision_config={**TINY_TOWER, "image_size": 16, "patch_size": 4})).save_pretrained(siglip)
    SiglipImageProcessorPil(size={"height": 16, "width": 16}).save_pretrained(siglip)
    tokenizer = tiny_tokenizer()
    tokenizer.model_max_length = 16
    tokenizer.save_pretrained(siglip)
    texts = ["a red circle", "two small blue squares left of a star"]
    for vision in (siglip, clip_folder):
        model = MapleModel.from_backbone(str(vision), backbone="dual_encoder", text_backbone=str(siglip), pooling="pooler")
        processor = MapleProcessor.from_backbone(str(vision), backbone="dual_encoder", text_backbone=str(siglip))
        assert processor.text_padding == "max_length"
        batched = model.eval().encode(processor, texts=texts)
        torch.testing.assert_close(model.encode(processor, texts=texts, batch_size=1), batched)
    BertModel(BertConfig(vocab_size=400, **TINY_TOWER)).save_pretrained(tmp_path / "bert")
    tiny_tokenizer().save_pretrained(tmp_path / "bert")
    paired = MapleProcessor.from_backbone(str(siglip), backbone="dual_encoder", text_backbone=str(tmp_path / "bert"))
    assert paired.text_padding == "longest"


def test_image_processor_settings_a_fixed_size_vision_tower_cannot_take_are_refused(tmp_path, clip_folder):
    """CLIP's and SigLIP's towers take images of their `image_size` only (MapleModel does not interpolate their
    position embeddings): `image_processor_kwargs` making another size loaded, for a backbone or a MAPLE checkpoint,
    then failed at the first encode in transformers' words (found by a review helper). They are refused by name, as is
    a checkpoint's own image processor making another size, also for a tower paired with another text encoder; a
    DINOv2 tower, which interpolates, takes any size."""
    from transformers import (
        BertConfig, BertModel, CLIPImageProcessorPil, Dinov2Config, Dinov2Model, SiglipConfig, SiglipImageProcessorPil,
        SiglipModel,
    )

    model, processor = build_tiny("dual_encoder", seed=0)
    model.save_pretrained(tmp_path / "maple")
    processor.save_pretrained(tmp_path / "maple")
    larger = {"crop_size": {"height": 24, "width": 24}, "size": {"shortest_edge": 24}}
    message = (r"the image processor makes {}-pixel images \(or tiles\) of a 16x32 one \(height x width\), but the model's "
               "vision tower takes 16x16 ")
    for folder in (str(clip_folder), str(tmp_path / "maple")):
        with pytest.raises(MapleLoadError, match=f"^{re.escape(folder)}: {message.format('24x24')}"):
            load_maple(folder, image_processor_kwargs=larger)
        # without its center crop, CLIP's size follows the aspect ratio
        with pytest.raises(MapleLoadError, match=f"^{re.escape(folder)}: {message.format('16x32')}"):
            load_maple(folder, image_processor_kwargs={"do_center_crop": False})
        # resized larger, then cropped to the tower's size
        embeddings(*load_maple(folder, image_processor_kwargs={"size": {"shortest_edge": 32}}))
    BertModel(BertConfig(vocab_size=400, **TINY_TOWER)).save_pretrained(tmp_path / "bert")
    tiny_tokenizer().save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match=f"^{re.escape(str(clip_folder))}: {message.format('24x24')}"):
        MapleProcessor.from_backbone(str(clip_folder), backbone="dual_encoder", text_backbone=str(tmp_path / "bert"),
                                     image_processor_kwargs=larger)
    SiglipModel(SiglipConfig(text_config=TINY_TOWER, vision_config={**TINY_TOWER, "image_size": 16, "patch_size": 4})).save_pretrained(tmp_path / "siglip")
    SiglipImageProcessorPil(size={"height": 24, "width": 24}).save_pretrained(tmp_path / "siglip")
    tiny_tokenizer().save_pretrained(tmp_path / "siglip")
    with pytest.raises(MapleLoadError, match=f"^{re.escape(str(tmp_path / 'siglip'))}: {message.format('24x24')}"):
        load_maple(str(tmp_path / "siglip"))
    Dinov2Model(Dinov2Config(**TINY_TOWER, image_size=16, patch_size=4)).save_pretrained(tmp_path / "dinov2")
    CLIPImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}).save_pretrained(tmp_path / "dinov2")
    pairing = {"backbone": "dual_encoder", "text_backbone": str(tmp_path / "bert")}
    dinov2 = MapleModel.from_backbone(str(tmp_path / "dinov2"), **pairing, projection_dim=16)
    embeddings(dinov2, MapleProcessor.from_backbone(str(tmp_path / "dinov2"), **pairing, image_processor_kwargs=larger))


def test_the_trainer_loads_only_the_model_when_given_a_processor_and_takes_trust_remote_code_from_either_place(tmp_path):
    """`RPATrainer(model=path, processing_class=...)` loaded the checkpoint's processor anyway, failing on a folder
    saved without one; `model_init_kwargs={"trust_remote_code": True}` collided with `args.trust_remote_code`."""
    from trainer import RPATrainer
    from trainer.testing import smoke_config, synthetic_preference_dataset

    model, processor = build_tiny("dual_encoder", seed=0)
    model.save_pretrained(tmp_path / "weights-only")
    for init_kwargs in (None, {"trust_remote_code": True}):
        trainer = RPATrainer(str(tmp_path / "weights-only"), processing_class=processor, train_dataset=synthetic_preference_dataset(8),
                             args=smoke_config(str(tmp_path / "run"), model_init_kwargs=init_kwargs))
        assert trainer.processing_class is processor


def test_a_saved_processor_loads_with_the_image_processor_backend_it_was_built_with(tmp_path, monkeypatch):
    """transformers saves an image processor under its backend-neutral type and loads torchvision's wherever that is
    installed, which resizes differently from the PIL processor a checkpoint was built with; `load_maple` and
    `load_maple_processor` took no `backend`; an explicit `backend` reached the tokenizer, which saved it as its own."""
    import json

    from transformers import AutoImageProcessor

    from modeling_maple import load_maple_processor

    model, processor = build_tiny("mllm", seed=0)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    config_file = tmp_path / "processor_config.json"
    assert json.loads(config_file.read_text())["image_processor_backend"] == "pil"
    loaded = load_maple_processor(str(tmp_path), backend="pil")
    assert loaded.image_processor.backend == "pil" and loaded.tokenizer.backend == processor.tokenizer.backend
    assert load_maple(str(tmp_path), backend="pil")[1].image_processor.backend == "pil"

    requested = []  # the backends asked of AutoImageProcessor (None: transformers' choice)
    load_image_processor = AutoImageProcessor.from_pretrained.__func__
    monkeypatch.setattr(AutoImageProcessor, "from_pretrained", classmethod(
        lambda cls, *args, **kwargs: requested.append(kwargs.get("backend")) or load_image_processor(cls, *args, **kwargs)
    ))
    # as if saved where torchvision is installed: its processor is asked for (this machine has none: PIL's comes back)
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "image_processor_backend": "torchvision"}))
    load_maple_processor(str(tmp_path))
    assert requested[-1] == "torchvision"
    requested.clear()
    load_maple_processor(str(tmp_path), backend="pil")  # an explicit backend wins: the first load is the one asked
    assert requested == [None]
    as_saved = load_maple_processor(str(tmp_path)).image_processor.backend
    requested.clear()  # the image processor loaded again with new settings keeps the backend of the one loaded as saved
    overridden = load_maple_processor(str(tmp_path), image_processor_kwargs={"max_pixels": 1024})
    assert requested[-1] == as_saved == overridden.image_processor.backend


def test_the_revision_asked_for_reaches_the_config_the_weights_and_the_processor(tmp_path, clip_folder, monkeypatch):
    """`load_maple(revision=...)` reads the config and takes the weights and the processor from that one snapshot, for
    a MAPLE checkpoint and a backbone alike (tests/test_hub_model.py makes the round trip through a Hub server); a
    MAPLE checkpoint's three get `trust_remote_code` too, and all of them the `token` (tests/test_hub_tokens.py reads a
    private repo with it)."""
    from transformers import AutoConfig, AutoModel, AutoProcessor

    from modeling_maple.testing import tiny_dual_encoder_config

    calls = {}

    def recorder(part, load=lambda *args, **kwargs: None):
        def record(*args, revision=None, trust_remote_code=None, token=None, **kwargs):
            calls[part] = (revision, trust_remote_code, token)
            return load(*args, revision=revision, **kwargs)
        return record

    monkeypatch.setattr(AutoConfig, "from_pretrained", recorder("config", AutoConfig.from_pretrained))
    for owner, loader, part in ((AutoModel, "from_pretrained", "weights"), (MapleModel, "from_backbone", "weights"),
                                (AutoProcessor, "from_pretrained", "processor"),
                                (MapleProcessor, "from_backbone", "processor")):
        monkeypatch.setattr(owner, loader, recorder(part))
    tiny_dual_encoder_config().save_pretrained(tmp_path / "maple")
    load_maple(str(tmp_path / "maple"), revision="v2", trust_remote_code=True, token="hf_x")
    assert calls == {"config": ("v2", True, "hf_x"), "weights": ("v2", True, "hf_x"), "processor": ("v2", True, "hf_x")}
    calls.clear()
    load_maple(str(clip_folder), revision="v2", token="hf_x")
    assert {part: (revision, token) for part, (revision, _, token) in calls.items()} == {
        "config": ("v2", "hf_x"), "weights": ("v2", "hf_x"), "processor": ("v2", "hf_x")}


def test_a_models_revision_is_its_backbones_not_its_text_backbones(monkeypatch):
    """`MapleModel.from_backbone(..., revision=...)` loads an MLLM, or a vision tower, from that snapshot (its config
    too, read first to tell a single tower from a two-tower model); a text backbone, another repo, from its own default
    branch."""
    from transformers import AutoConfig, AutoModel, BertConfig

    class Loaded(Exception):
        """Stops the build once the backbone that matters here is asked for."""

    loads, configs = [], []

    def load(name, revision=None, **kwargs):
        loads.append((name, revision))
        if name != "org/vision":
            raise Loaded

    def load_config(name, revision=None, **kwargs):
        configs.append((name, revision))
        return BertConfig()  # a single tower

    monkeypatch.setattr(AutoModel, "from_pretrained", load)
    monkeypatch.setattr(AutoConfig, "from_pretrained", load_config)
    with pytest.raises(Loaded):
        MapleModel.from_backbone("org/mllm", backbone="mllm", revision="v2")
    with pytest.raises(Loaded):
        MapleModel.from_backbone("org/vision", backbone="dual_encoder", text_backbone="org/text", revision="v2")
    assert loads == [("org/mllm", "v2"), ("org/vision", "v2"), ("org/text", None)]
    assert configs == [("org/vision", "v2"), ("org/text", None)]


def test_a_processors_revision_is_its_vision_backbones_not_its_text_backbones(monkeypatch):
    """`MapleProcessor.from_backbone(..., text_backbone=..., revision=...)`: the revision names a snapshot of the
    vision backbone's repo; the text backbone's tokenizer, another repo's, comes from its own default branch."""
    from types import SimpleNamespace

    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

    from modeling_maple.testing import tiny_image_processor

    revisions = {}
    for owner, made in ((AutoImageProcessor, tiny_image_processor()), (AutoTokenizer, tiny_tokenizer()),
                        (AutoConfig, SimpleNamespace(model_type="dinov2"))):
        monkeypatch.setattr(owner, "from_pretrained",
                            lambda name, revision=None, made=made, **kwargs: revisions.update({name: revision}) or made)
    MapleProcessor.from_backbone("org/vision", backbone="dual_encoder", text_backbone="org/text", revision="v2")
    assert revisions == {"org/vision": "v2", "org/text": None}


@pytest.fixture
def qwen2_vl_folder(tmp_path):
    """A plain tiny Qwen2-VL checkpoint, as on the Hub: its image processor resizes images to at most 256 pixels."""
    from modeling_maple.testing import save_tiny_mllm_backbone

    save_tiny_mllm_backbone(tmp_path / "qwen2-vl")
    return tmp_path / "qwen2-vl"


def image_grid(processor) -> list[list[int]]:
    """The patch grid a 32 x 32 image (1,024 pixels) gets: (1, 4, 4) patches at the tiny default of 256 pixels."""
    return processor(images=[Image.new("RGB", (32, 32), "red")])["image_grid_thw"].tolist()


def test_image_processor_settings_override_a_backbones_and_a_maple_checkpoints(tmp_path, qwen2_vl_folder):
    """`image_processor_kwargs` (e.g. the paper's 384 x 384 images as Qwen-VL's max_pixels) reach the image processor of
    a backbone and of a MAPLE checkpoint, whose processor keeps its own settings around it."""
    from modeling_maple import load_maple_processor

    assert image_grid(load_maple_processor(str(qwen2_vl_folder))) == [[1, 4, 4]]
    model, processor = load_maple(str(qwen2_vl_folder), image_processor_kwargs={"max_pixels": 1024})
    assert image_grid(processor) == [[1, 8, 8]] and model.config.backbone == "mllm"

    trained, trained_processor = build_tiny("mllm", seed=0)
    trained_processor.text_prompt = "Text: {text}\nIn one word:"  # a setting of MAPLE's own, to be kept
    trained.save_pretrained(tmp_path / "maple")
    trained_processor.save_pretrained(tmp_path / "maple")
    overridden = load_maple_processor(str(tmp_path / "maple"), image_processor_kwargs={"max_pixels": 1024})
    assert image_grid(overridden) == [[1, 8, 8]] and image_grid(trained_processor) == [[1, 4, 4]]
    assert overridden.text_prompt == "Text: {text}\nIn one word:" and type(overridden) is type(trained_processor)


def test_an_image_processor_setting_it_does_not_have_is_refused_before_any_weights_load(tmp_path, qwen2_vl_folder, monkeypatch):
    """`from_pretrained` drops a keyword the image processor class does not know, silently; here it is named."""
    import modeling_maple.loading as loading

    monkeypatch.setattr(loading, "_load_model", lambda *args: pytest.fail("weights loaded before the processor"))
    model, processor = build_tiny("mllm", seed=0)
    model.save_pretrained(tmp_path / "maple")
    processor.save_pretrained(tmp_path / "maple")
    for folder in (qwen2_vl_folder, tmp_path / "maple"):
        message = rf"^{re.escape(str(folder))}: max_patches is not a setting of its image processor \(Qwen2VLImageProcessor"
        with pytest.raises(MapleLoadError, match=message):
            load_maple(str(folder), image_processor_kwargs={"max_patches": 6})


def test_image_processor_settings_the_model_cannot_take_are_refused_for_a_maple_checkpoint(tmp_path):
    """A LLaVA-NeXT model counts each image's tiles from its config: fewer pinpoints on the processor's side only (to
    spend fewer tiles) would fail in the forward with a bare shape error, so loading refuses them, as building from
    the backbone does."""
    model, processor = build_tiny("mllm", mllm_type="llava_next", seed=0)
    model.save_pretrained(tmp_path / "maple")
    processor.save_pretrained(tmp_path / "maple")
    with pytest.raises(MapleLoadError, match=r"image_grid_pinpoints \[\[32, 32\]\] differ from the model config's"):
        load_maple(str(tmp_path / "maple"), image_processor_kwargs={"image_grid_pinpoints": [[32, 32]]})


def test_adapters_of_a_model_built_from_a_backbone_name_it_as_their_base(tmp_path, clip_folder):
    """PEFT records `model.name_or_path` as the adapters' base; `from_backbone` left it empty, so `maple eval` refused
    the adapters for not naming their base model."""
    import json

    from modeling_maple.lora import get_maple_peft_model

    model = MapleModel.from_backbone(str(clip_folder), backbone="dual_encoder")
    assert model.name_or_path == model.config._name_or_path == str(clip_folder)
    get_maple_peft_model(model).save_pretrained(tmp_path / "adapters")
    assert json.loads((tmp_path / "adapters" / "adapter_config.json").read_text())["base_model_name_or_path"] == str(clip_folder)


def test_settings_that_leave_images_unresized_are_not_refused_by_the_settings_check():
    """The check tried the settings on a 64 x 48 image, which Qwen2-VL cannot cut into 28 px patch pairs unresized:
    `do_resize=False`, for images sized beforehand, was refused."""
    from transformers import Qwen2VLImageProcessorPil

    from modeling_maple.processing_maple import image_processor_kwargs_problem

    assert image_processor_kwargs_problem(Qwen2VLImageProcessorPil(do_resize=False), {"do_resize": False}) is None


@pytest.mark.parametrize("settings, message", [
    # the model reads the flattened patches back by its own sizes: a bare shape error in the first forward
    ({"merge_size": 3}, r"the image processor cuts images unlike the model's vision tower: merge_size=3 "
                        r"\(vision_config.spatial_merge_size=2\): set both alike"),
    ({"patch_size": 8}, r"the image processor cuts images unlike the model's vision tower: patch_size=8 "
                        r"\(vision_config.patch_size=4\)"),
    # a value the image processor takes, and fails on at the first image
    ({"size": {"longest_edge": 768}}, r"its image processor \(Qwen2VLImageProcessorPil\) cannot process an image with "
                                      r"image_processor_kwargs \{'size': \{'longest_edge': 768\}\} \(ValueError: "),
    # a loading argument given as a setting (a TypeError, "got multiple values", before)
    ({"backend": "pil"}, r"image_processor_kwargs hold backend: loading arguments, not image processor settings"),
    ({"revision": "main"}, r"image_processor_kwargs hold revision: loading arguments, not image processor settings"),
])
def test_image_processor_settings_that_would_fail_later_are_refused_when_loading(tmp_path, qwen2_vl_folder, monkeypatch,
                                                                                 settings, message):
    import modeling_maple.loading as loading

    monkeypatch.setattr(loading, "_load_model", lambda *args: pytest.fail("weights loaded before the processor"))
    model, processor = build_tiny("mllm", seed=0)
    model.save_pretrained(tmp_path / "maple")
    processor.save_pretrained(tmp_path / "maple")
    for folder in (qwen2_vl_folder, tmp_path / "maple"):
        with pytest.raises(MapleLoadError, match=rf"^{re.escape(str(folder))}: {message}"):
            load_maple(str(folder), image_processor_kwargs=settings)
