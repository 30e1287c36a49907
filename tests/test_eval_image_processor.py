"""`maple eval --image-processor-kwargs JSON`: image processor settings that override every model's
(`load_embedder(..., image_processor_kwargs=)`), part of each stored result's fingerprint."""

import json
import re

import pytest
from PIL import Image

from evaluation.cli import _model_folder_name, main
from test_loading import image_grid

MORE_PIXELS = '{"max_pixels": 1024}'  # the tiny Qwen2-VL image processor's own cap is 256 pixels


@pytest.fixture(scope="module")
def qwen2_vl_folder(tmp_path_factory):
    """A plain tiny Qwen2-VL checkpoint, as on the Hub: its image processor resizes images to at most 256 pixels, so
    the benchmarks' 24 x 24 pictures are seen at 16 x 16 unless max_pixels says otherwise."""
    from modeling_maple.testing import save_tiny_mllm_backbone

    folder = tmp_path_factory.mktemp("qwen2-vl")
    save_tiny_mllm_backbone(folder)
    return folder


def test_load_embedder_applies_the_settings_to_a_backbone_and_to_an_adapters_base(qwen2_vl_folder, tmp_path):
    from evaluation.models import load_embedder
    from modeling_maple.lora import get_maple_peft_model

    model, processor = load_embedder(str(qwen2_vl_folder))
    assert image_grid(processor) == [[1, 4, 4]]
    assert image_grid(load_embedder(str(qwen2_vl_folder), image_processor_kwargs={"max_pixels": 1024})[1]) == [[1, 8, 8]]

    get_maple_peft_model(model).save_pretrained(tmp_path / "adapter")
    adapter, adapter_processor = load_embedder(str(tmp_path / "adapter"), image_processor_kwargs={"max_pixels": 1024})
    assert image_grid(adapter_processor) == [[1, 8, 8]] and type(adapter).__name__ == "PeftModel"


def test_the_option_changes_a_backbones_image_grid_and_scores(qwen2_vl_folder, benchmark_sources, tmp_path, monkeypatch):
    import evaluation.models

    grids, load = [], evaluation.models.load_embedder

    def load_and_spy(model_ref, **kwargs):
        model, processor = load(model_ref, **kwargs)
        grids.append(processor(images=[Image.new("RGB", (24, 24), "red")])["image_grid_thw"].tolist())
        return model, processor

    monkeypatch.setattr(evaluation.models, "load_embedder", load_and_spy)
    argv = [str(qwen2_vl_folder), "--benchmarks", "bivlc", "--source", f"bivlc={benchmark_sources['bivlc']}"]
    assert main([*argv, "--out", str(tmp_path / "default")]) == 0
    assert main([*argv, "--out", str(tmp_path / "more_pixels"), "--image-processor-kwargs", MORE_PIXELS]) == 0
    assert grids == [[[1, 4, 4]], [[1, 6, 6]]]  # 24 x 24 pictures: cut to 16 x 16 by default, whole at 1,024 pixels
    default, more_pixels = (json.loads((tmp_path / out / "results.json").read_text())[str(qwen2_vl_folder)]["bivlc"]
                            for out in ("default", "more_pixels"))
    assert default["similarity_histograms"] != more_pixels["similarity_histograms"]
    assert default["modality_gap"] != more_pixels["modality_gap"]
    # results.md says which settings its results were scored with
    assert (tmp_path / "more_pixels" / "results.md").read_text().endswith(
        f"Weights in float32; image processor settings: {json.dumps(json.loads(MORE_PIXELS))}.\n")


def test_a_rerun_with_other_settings_recomputes_and_with_the_same_ones_reuses(qwen2_vl_folder, benchmark_sources, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = [str(qwen2_vl_folder), "--benchmarks", "mmvp", "--source", f"mmvp={benchmark_sources['mmvp']}", "--out", str(out)]
    assert main([*argv, "--image-processor-kwargs", MORE_PIXELS]) == 0
    stored = out / _model_folder_name(str(qwen2_vl_folder)) / "mmvp.json"
    assert json.loads(stored.read_text())["run"]["image_processor_kwargs"] == {"max_pixels": 1024}
    capsys.readouterr()
    assert main([*argv, "--image-processor-kwargs", '{ "max_pixels" : 1024 }']) == 0  # the same settings, other spacing
    assert "mmvp already done" in capsys.readouterr().out
    assert main([*argv, "--image-processor-kwargs", '{"max_pixels": 576}']) == 0
    assert ("mmvp: stored result is from another image processor override ({'max_pixels': 1024} then, "
            "{'max_pixels': 576} now), recomputing\n") in capsys.readouterr().out
    assert main(argv) == 0  # without the option: the checkpoint's own settings, another run
    assert ("mmvp: stored result is from another image processor override ({'max_pixels': 576} then, None now), "
            "recomputing\n") in capsys.readouterr().out
    assert json.loads(stored.read_text())["run"]["image_processor_kwargs"] is None
    assert main([*argv, "--image-processor-kwargs", "{}"]) == 0  # no settings: no override
    assert "mmvp already done" in capsys.readouterr().out


def test_results_stored_before_the_option_count_as_computed_without_an_override(benchmark_sources, tmp_path, capsys):
    """A fingerprint written before the option existed has no image_processor_kwargs entry: it was computed with the
    checkpoint's settings, so a run without the option reuses it (it is no other protocol) and one with it does not."""
    from modeling_maple.testing import build_tiny

    model, processor = build_tiny("mllm", seed=0)
    model.save_pretrained(tmp_path / "maple")
    processor.save_pretrained(tmp_path / "maple")
    out = tmp_path / "eval"
    argv = [str(tmp_path / "maple"), "--benchmarks", "mmvp", "--source", f"mmvp={benchmark_sources['mmvp']}", "--out", str(out)]
    assert main(argv) == 0
    stored = out / _model_folder_name(str(tmp_path / "maple")) / "mmvp.json"
    record = json.loads(stored.read_text())
    del record["run"]["image_processor_kwargs"]
    record["metrics"]["text_score"] = -1.0  # a mark: reused, not recomputed
    stored.write_text(json.dumps(record))
    capsys.readouterr()
    assert main(argv) == 0
    assert "mmvp already done" in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text())[str(tmp_path / "maple")]["mmvp"]["text_score"] == -1.0
    assert main([*argv, "--image-processor-kwargs", MORE_PIXELS]) == 0
    assert "stored result is from another image processor override (None then, {'max_pixels': 1024} now)" in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text())[str(tmp_path / "maple")]["mmvp"]["text_score"] >= 0


def test_the_fingerprint_reads_a_missing_entry_as_no_override():
    from evaluation.cli import _run_differences, _same_run

    old = {"model": "m", "model_state": {"files": {}}, "dtype": "float32", "source": "s", "source_files": None, "protocol": 6}
    current = {**old, "image_processor_kwargs": None}
    assert _same_run(old, current) and _run_differences(old, current) == []
    overridden = {**old, "image_processor_kwargs": {"max_pixels": 147456}}
    assert not _same_run(old, overridden) and not _same_run(overridden, current)
    assert _run_differences(old, overridden) == ["image processor override (None then, {'max_pixels': 147456} now)"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", "--image-processor-kwargs is empty; expected a JSON object of image processor settings, "
             "e.g. '{\"max_pixels\": 153664}'"),
        (" ", "--image-processor-kwargs is empty; expected a JSON object"),
        ("{max_pixels: 1024}", "--image-processor-kwargs '{max_pixels: 1024}' is not valid JSON (Expecting property name "
                               "enclosed in double quotes: line 1 column 2 (char 1)); expected a JSON object"),
        ("[1024]", "--image-processor-kwargs '[1024]' is not a JSON object; expected one of image processor settings"),
        ("147456", "--image-processor-kwargs '147456' is not a JSON object"),
        ("null", "--image-processor-kwargs 'null' is not a JSON object"),
    ],
    ids=["empty", "blank", "not_json", "a_list", "a_number", "null"],
)
def test_settings_that_are_not_a_json_object_are_a_usage_error_before_anything_loads(
    value, expected, benchmark_sources, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr("evaluation.models.load_embedder", lambda *args, **kwargs: pytest.fail("the model was loaded"))
    monkeypatch.setattr("evaluation.models.checkpoint_config", lambda *args, **kwargs: pytest.fail("a config was read"))
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), "--benchmarks", "coco", "--source", f"coco={benchmark_sources['coco']}",
              "--out", str(tmp_path / "eval"), "--image-processor-kwargs", value])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith(f"maple eval: error: {expected}") and error.count("\n") == 1, error
    assert not (tmp_path / "eval").exists()


def test_a_setting_a_compared_models_image_processor_lacks_is_one_line_before_the_first_model_loads(
    qwen2_vl_folder, benchmark_sources, tmp_path, capsys, monkeypatch
):
    """max_pixels is a Qwen-VL setting: a CLIP-like image processor has none, which `from_pretrained` would drop
    silently; it is named, with the model, before the first model (which takes it) is evaluated."""
    from modeling_maple.testing import build_tiny

    model, processor = build_tiny("dual_encoder", seed=0)
    model.save_pretrained(tmp_path / "clip_maple")
    processor.save_pretrained(tmp_path / "clip_maple")
    capsys.readouterr()  # saving's progress bar
    monkeypatch.setattr("evaluation.models.load_embedder", lambda *args, **kwargs: pytest.fail("a model was loaded"))
    out = tmp_path / "eval"
    argv = [str(qwen2_vl_folder), "--compare", str(tmp_path / "clip_maple"), "--benchmarks", "coco",
            "--source", f"coco={benchmark_sources['coco']}", "--out", str(out), "--image-processor-kwargs", MORE_PIXELS,
            "--no-progress"]  # datasets' bars, read the local source first (unless a test before read it), on stderr
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"maple eval: error: {tmp_path / 'clip_maple'}: max_pixels is not a setting of its image processor")
    assert error.count("\n") == 1, error
    assert not out.exists()


def test_a_setting_its_image_processor_lacks_is_a_load_error_naming_the_model_or_the_adapter(qwen2_vl_folder, tmp_path):
    from evaluation.models import ModelLoadError, load_processor, load_embedder
    from modeling_maple import MapleModel
    from modeling_maple.lora import get_maple_peft_model

    folder = str(qwen2_vl_folder)
    for call in (load_embedder, load_processor):
        with pytest.raises(ModelLoadError, match=rf"^{re.escape(folder)}: max_patches is not a setting of its image processor"):
            call(folder, image_processor_kwargs={"max_patches": 6})
    get_maple_peft_model(MapleModel.from_backbone(folder)).save_pretrained(tmp_path / "adapter")
    for call in (load_embedder, load_processor):
        with pytest.raises(ModelLoadError, match=rf"^{re.escape(str(tmp_path / 'adapter'))}: its base model {re.escape(folder)}: max_patches is not"):
            call(str(tmp_path / "adapter"), image_processor_kwargs={"max_patches": 6})
    assert image_grid(load_processor(str(tmp_path / "adapter"), {"max_pixels": 1024})) == [[1, 8, 8]]  # one it has


@pytest.mark.parametrize("settings", [[], ["--image-processor-kwargs", MORE_PIXELS]], ids=["own", "overridden"])
def test_each_models_processor_is_loaded_once(settings, qwen2_vl_folder, benchmark_sources, tmp_path, monkeypatch):
    """With --image-processor-kwargs the check before the first model loaded each model's processor, and loading the
    model loaded it again; an adapter's is its base's, loaded once too."""
    import modeling_maple.loading
    from modeling_maple import MapleModel
    from modeling_maple.lora import get_maple_peft_model

    get_maple_peft_model(MapleModel.from_backbone(str(qwen2_vl_folder))).save_pretrained(tmp_path / "adapter")
    loaded, load = [], modeling_maple.loading._load_processor

    def load_and_count(name_or_path, *args, **kwargs):
        loaded.append(name_or_path)
        return load(name_or_path, *args, **kwargs)

    monkeypatch.setattr(modeling_maple.loading, "_load_processor", load_and_count)
    argv = [str(qwen2_vl_folder), "--compare", str(tmp_path / "adapter"), "--benchmarks", "mmvp",
            "--source", f"mmvp={benchmark_sources['mmvp']}", "--out", str(tmp_path / "eval")]
    assert main(argv + settings) == 0
    assert loaded == [str(qwen2_vl_folder)] * 2  # the backbone's, then the adapter's base's
