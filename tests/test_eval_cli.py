"""The protocols on a tiny MAPLE model against the metric functions, and `maple eval` end to end:
JSON + markdown, side-by-side comparison, resuming after an interruption."""

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from evaluation.benchmarks import load_benchmark
from evaluation.cli import main
from evaluation.metrics import group_scores, modality_gap_from_quadruples, retrieval_recall
from evaluation.protocols import evaluate_quadruples, evaluate_retrieval, quadruple_similarities
from evaluation.testing import LookupEmbedder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny dual-encoder MAPLE model, its processor, and two saved checkpoints (seeds 0 and 1)."""
    from modeling_maple.testing import build_tiny

    folders = []
    for seed in (0, 1):
        model, processor = build_tiny("dual_encoder", seed=seed)
        folder = tmp_path_factory.mktemp(f"tiny_{seed}")
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        folders.append(folder)
        if seed == 0:
            first = (model, processor)
    return (*first, folders)


def _store_as_hub_models_result(out: Path, evaluated: Path, hub_model: str, **run) -> None:
    """Files the coco result stored for the model folder `evaluated` as `hub_model`'s (at a made-up commit, `run` over
    its fingerprint): a Hub model with its result stored, which needs no Hub access."""
    from evaluation.cli import _model_folder_name

    record = json.loads((out / _model_folder_name(str(evaluated)) / "coco.json").read_text())
    record["run"] |= {"model": hub_model, "model_state": {"commit": "0" * 40}, **run}
    (out / _model_folder_name(hub_model)).mkdir()
    (out / _model_folder_name(hub_model) / "coco.json").write_text(json.dumps(record))


def test_retrieval_protocol_equals_dense_metrics(tiny, benchmark_sources):
    model, processor, _ = tiny
    coco = load_benchmark("coco", str(benchmark_sources["coco"]))
    result = evaluate_retrieval(model, processor, coco.images, coco.captions_per_image, batch_size=4)
    captions = [c for cs in coco.captions_per_image for c in cs]
    text, image = model.encode(processor, texts=captions, images=list(coco.images))
    owners = [i for i, cs in enumerate(coco.captions_per_image) for _ in cs]
    i2t = retrieval_recall(image @ text.T, [[c for c, o in enumerate(owners) if o == i] for i in range(3)])
    t2i = retrieval_recall(text @ image.T, owners)
    assert result == pytest.approx(
        {f"i2t_r{k}": i2t[f"recall@{k}"] for k in (1, 5, 10)} | {"i2t_mrr": i2t["mrr"]}
        | {f"t2i_r{k}": t2i[f"recall@{k}"] for k in (1, 5, 10)} | {"t2i_mrr": t2i["mrr"], "num_images": 3, "num_captions": 16}
    )
    # 3 images: every image is within the top 3 of 3 -> r5 = r10 = 100 in text->image
    assert result["t2i_r5"] == result["t2i_r10"] == 100.0


def test_retrieval_with_a_caption_shared_by_two_images_does_not_depend_on_the_batch_size():
    """The two copies of a caption were embedded apart, and batch padding moves an embedding by ~1e-7, so whether
    their tie (which counts against the model) was a tie depended on the batch size (R@1 25 at batch size 1, 50 at 2
    in a review's case). Here a model whose text embeddings move with their place in the batch, as padding does."""
    directions = {"a dog": [1.0, 0.0, 0.0], "a cat": [0.0, 1.0, 0.0], "a cat on a mat": [0.0, 0.9, 0.1]}

    class PaddingSensitiveModel:
        def encode(self, processor, texts, images, batch_size):
            text_embeds = torch.tensor([directions[text] for text in texts])
            text_embeds[:, 2] += 1e-3 * (torch.arange(len(texts)) % batch_size)  # the place in the batch
            return text_embeds, torch.tensor(images)

    images = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    captions = [["a dog"], ["a dog", "a cat", "a cat on a mat"]]  # "a dog" also (wrongly) under image 1
    results = [evaluate_retrieval(PaddingSensitiveModel(), None, images, captions, batch_size=size) for size in (1, 2, 4)]
    assert all(result == results[0] for result in results[1:])
    # every query finds a relevant item first: "a dog" is relevant to both images, whichever copy ranks first
    assert (results[0]["i2t_r1"], results[0]["t2i_r1"]) == (100.0, 100.0)


def test_a_caption_written_under_two_images_is_relevant_to_both_in_each_direction():
    """By position, the copy of image 0's caption filed under image 1 was an irrelevant candidate for image 0, tied
    exactly with image 0's own copy, so (ties count against the model) image 0 could never retrieve it first (a
    perfect model got i2t R@1 50); and image 0 outranked image 1 for image 1's copy as a query."""
    model = LookupEmbedder({"a surfer": [1.0, 0.0, 0.0], "a bus": [0.0, 1.0, 0.0], "a cat": [0.0, 0.0, 1.0]})
    images = [[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.0, 0.0, 1.0]]
    captions = [["a surfer"], ["a surfer", "a bus"], ["a cat"]]
    result = evaluate_retrieval(model, None, images, captions)
    assert (result["i2t_r1"], result["t2i_r1"], result["num_captions"]) == (100.0, 100.0, 4)
    # the dense metric with relevance by text: caption positions 0 and 1 are both "a surfer", of images 0 and 1
    text, image = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), torch.tensor(images)
    i2t = retrieval_recall(image @ text.T, [[0, 1], [0, 1, 2], [3]])
    t2i = retrieval_recall(text @ image.T, [[0, 1], [0, 1], [1], [2]])
    assert result == pytest.approx(
        {f"i2t_r{k}": i2t[f"recall@{k}"] for k in (1, 5, 10)} | {"i2t_mrr": i2t["mrr"]}
        | {f"t2i_r{k}": t2i[f"recall@{k}"] for k in (1, 5, 10)} | {"t2i_mrr": t2i["mrr"], "num_images": 3, "num_captions": 4}
    )


@pytest.mark.parametrize(
    ("images", "captions_per_image", "error", "message"),
    [
        # one caption string per image was split into one-character captions, silently
        ([[1.0], [2.0]], ["a cat", "a dog"], TypeError,
         r"captions_per_image\[0\]: expected a list of captions, got 'a cat' \(str\); one caption per image is \[\[caption\]"),
        ([[1.0]], "a cat", TypeError, r"captions_per_image: expected a list holding a list of captions per image, got 'a cat'"),
        ([[1.0], [2.0]], [["a cat"], 7], TypeError, r"captions_per_image\[1\]: expected a list of captions, got 7 \(int\)"),
        ([[1.0], [2.0]], [["a cat"], ["a dog", None]], TypeError, r"captions_per_image\[1\]: expected caption strings, got None"),
        ([[1.0], [2.0]], [["a cat"], []], ValueError, r"captions_per_image\[1\]: got no captions"),
        # MAPLE's processor refuses a blank text, by its place among the distinct captions ("text[1]"), not the caller's
        ([[1.0], [2.0]], [["a cat"], ["a dog", " "]], ValueError,
         r"captions_per_image\[1\]\[1\]: ' ' is blank; expected a caption with words"),
        ([], [], ValueError, r"retrieval: got no images"),
        ([[1.0]], [["a cat"], ["a dog"]], ValueError, r"retrieval: 1 images but 2 caption lists"),
    ],
)
def test_retrieval_inputs_of_the_wrong_shape_are_refused(images, captions_per_image, error, message):
    with pytest.raises(error, match=message):
        evaluate_retrieval(LookupEmbedder({}), None, images, captions_per_image)


def test_caption_lists_read_as_arrays_are_caption_lists():
    """A list column read by pandas gives an array per row (of np.str_): refused as 'not a list' (found by review)."""
    import numpy as np

    model = LookupEmbedder({"a surfer": [1.0, 0.0], "a bus": [0.0, 1.0]})
    images, captions = [[1.0, 0.0], [0.0, 1.0]], [["a surfer"], ["a bus"]]
    as_arrays = [np.array(image_captions) for image_captions in captions]
    assert evaluate_retrieval(model, None, images, as_arrays) == evaluate_retrieval(model, None, images, captions)


def test_quadruple_protocol_equals_group_scores(tiny, benchmark_sources):
    model, processor, _ = tiny
    bivlc = load_benchmark("bivlc", str(benchmark_sources["bivlc"]))
    result = evaluate_quadruples(model, processor, bivlc.quadruples, bivlc.categories)
    quadruples = list(bivlc.quadruples)
    text = model.encode(processor, texts=[t for q in quadruples for t in q[2:]]).view(3, 2, -1)
    image = model.encode(processor, images=[i for q in quadruples for i in q[:2]]).view(3, 2, -1)
    similarities = torch.stack([image[:, i] @ text[:, j].T for i in (0, 1) for j in (0, 1)]).diagonal(dim1=1, dim2=2).T
    # each cosine in its place, [s(I0,T0), s(I0,T1), s(I1,T0), s(I1,T1)]: the group scores are 0 here, so only the
    # cosines themselves tell s(I0,T1) from s(I1,T0) (an einsum giving [n, text, image] passed)
    image_text, text_text = quadruple_similarities(model, processor, bivlc.quadruples)
    torch.testing.assert_close(image_text, similarities)
    torch.testing.assert_close(text_text, (text[:, 0] * text[:, 1]).sum(-1))
    assert {k: result[k] for k in ("text_score", "image_score", "group_score")} == pytest.approx(group_scores(similarities))
    assert result["per_category"]["swap"] == pytest.approx(group_scores(similarities[1:2]) | {"num_quadruples": 1})
    text_text = (text[:, 0] * text[:, 1]).sum(-1)
    assert result["modality_gap"] == pytest.approx(modality_gap_from_quadruples(similarities, text_text), rel=1e-5)
    histograms = result["similarity_histograms"]
    assert len(histograms["bin_edges"]) == 201 and histograms["bin_edges"][0] == -1.0 and histograms["bin_edges"][-1] == 1.0
    assert (sum(histograms["matched"]), sum(histograms["mismatched"]), sum(histograms["text_text"])) == (6, 6, 3)
    bin_of_s00 = int((similarities[0, 0].item() + 1) / 2 * (len(histograms["bin_edges"]) - 1))
    assert histograms["matched"][bin_of_s00] >= 1


def test_quadruple_scores_on_known_cosines():
    """Quadruples whose cosines are known by construction, with a text hit and no image hit and the reverse: the
    scores of a model whose s(I0,T1) and s(I1,T0) traded places (text and image scores swapped) would fail."""
    model = LookupEmbedder({"t0": [1.0, 0.0, 0.0], "t1": [0.0, 1.0, 0.0]})
    text_only = ([0.8, 0.6, 0.0], [0.0, 0.5, math.sqrt(0.75)], "t0", "t1")  # cosines 0.8, 0.6, 0.0, 0.5
    image_only = ([0.8, 0.0, 0.6], [0.6, 0.5, math.sqrt(0.39)], "t0", "t1")  # cosines 0.8, 0.0, 0.6, 0.5
    image_text, text_text = quadruple_similarities(model, None, [text_only, image_only])
    torch.testing.assert_close(image_text, torch.tensor([[0.8, 0.6, 0.0, 0.5], [0.8, 0.0, 0.6, 0.5]]))
    torch.testing.assert_close(text_text, torch.zeros(2))
    result = evaluate_quadruples(model, None, [text_only, image_only], ["text", "image"])
    assert (result["text_score"], result["image_score"], result["group_score"]) == (50.0, 50.0, 0.0)
    assert result["per_category"]["text"] == {"text_score": 100.0, "image_score": 0.0, "group_score": 0.0, "num_quadruples": 1}
    assert result["per_category"]["image"] == {"text_score": 0.0, "image_score": 100.0, "group_score": 0.0, "num_quadruples": 1}


def test_a_quadruple_whose_two_captions_or_images_are_one_ties_whatever_the_batch_size():
    """A quadruple's two texts (and two images) were embedded apart, and batch padding moves an embedding by ~1e-7, so
    whether two copies of one caption, or of one picture, tied (ties count against the model) depended on the batch
    size: such a quadruple scored a text or image hit at batch size 2. Here a model whose embeddings move with their
    place in the batch, as padding does: copies are embedded once, so they tie exactly, and score no hit."""
    from PIL import Image

    class PaddingSensitiveModel:
        def encode(self, processor, texts, images, batch_size):
            from modeling_maple.processing_maple import load_image

            text_embeds = torch.tensor([[1.0, 0.0, 0.0] if "red" in text else [0.0, 0.0, 1.0] for text in texts])
            image_embeds = torch.tensor(np.array([np.asarray(load_image(image, index), dtype=np.float32).mean(axis=(0, 1))
                                                  for index, image in enumerate(images)])) / 255
            for embeds in (text_embeds, image_embeds):
                embeds[:, 1] += 1e-3 * (torch.arange(len(embeds)) % batch_size)  # the place in the batch
            return text_embeds, image_embeds

    red, also_red, blue = (Image.new("RGB", (8, 8), colour) for colour in ("red", "red", "blue"))
    quadruples = [(red, blue, "a red dog", "a red dog"), (red, also_red, "a red cat", "a blue cat")]
    for size in (1, 2, 3, 4):
        result = evaluate_quadruples(PaddingSensitiveModel(), None, quadruples, batch_size=size)
        assert (result["text_score"], result["image_score"], result["group_score"]) == (0.0, 0.0, 0.0), size


def test_protocols_use_cosines_for_a_model_without_normalisation(tiny, benchmark_sources):
    model, processor, _ = tiny
    raw = type(model)(model.config.__class__.from_dict({**model.config.to_dict(), "normalize": False})).eval()
    raw.load_state_dict(model.state_dict())
    assert not torch.allclose(raw.encode(processor, texts=["a red circle"]).norm(dim=-1), torch.ones(1))
    bivlc = load_benchmark("bivlc", str(benchmark_sources["bivlc"]))
    coco = load_benchmark("coco", str(benchmark_sources["coco"]))
    for got, want in zip(quadruple_similarities(raw, processor, bivlc.quadruples), quadruple_similarities(model, processor, bivlc.quadruples)):
        torch.testing.assert_close(got, want)
    retrieval = (coco.images, coco.captions_per_image)
    assert evaluate_retrieval(raw, processor, *retrieval) == pytest.approx(evaluate_retrieval(model, processor, *retrieval))


def test_cli_compares_models_writes_tables_and_resumes(tiny, benchmark_sources, tmp_path, capsys):
    _, _, (first, second) = tiny
    sources = [f"coco={benchmark_sources['coco']}", f"winoground={benchmark_sources['winoground']}"]
    out = tmp_path / "eval"
    argv = [str(first), "--benchmarks", "coco", "winoground", "--source", *sources, "--out", str(out), "--batch-size", "4"]
    assert main(argv + ["--compare", str(second)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results) == [str(first), str(second)]
    assert set(results[str(first)]) == {"coco", "winoground"}
    assert results[str(first)]["winoground"]["per_category"]["relation"]["num_quadruples"] == 1
    table = (out / "results.md").read_text()
    assert table.count(f"| {first} | coco |") == 1 and table.count(f"| {second} | winoground | object |") == 1
    assert table.endswith("\nWeights in float32; image processor settings: each checkpoint's own.\n")

    # A finished benchmark is read back, not recomputed (here: a marked result survives a rerun).
    done = next(out.glob("*tiny_0*/coco.json"))
    marked = json.loads(done.read_text())
    marked["metrics"]["i2t_r1"] = -1.0
    done.write_text(json.dumps(marked))
    assert main(argv) == 0
    assert json.loads((out / "results.json").read_text())[str(first)]["coco"]["i2t_r1"] == -1.0
    assert "coco already done" in capsys.readouterr().out

    # ... unless the checkpoint or the source changed since: retrained weights, a re-saved processor (another
    # prompt is another model) or a benchmark file replaced at the same path.
    # The message says which changed (it named "model state, dtype, source or protocol version" for any).
    coco_source = Path(str(benchmark_sources["coco"]))
    weights = next(first.glob("*.safetensors"))
    for changed, reason in ((weights, f"model state (changed files: {weights.name})"),
                            (first / "processor_config.json", "model state (changed files: processor_config.json)"),
                            (coco_source, f"source (changed files: {coco_source.name})")):
        marked = json.loads(done.read_text())  # the fingerprint of the run before: one change at a time
        marked["metrics"]["i2t_r1"] = -1.0
        done.write_text(json.dumps(marked))
        changed.write_bytes(changed.read_bytes())  # same bytes, new modification time
        assert main(argv) == 0
        assert f"coco: stored result is from another {reason}, recomputing\n" in capsys.readouterr().out
        assert json.loads((out / "results.json").read_text())[str(first)]["coco"]["i2t_r1"] >= 0


def test_results_written_inside_the_model_folder_do_not_change_its_fingerprint(tiny, benchmark_sources, tmp_path, capsys, monkeypatch):
    """`maple eval .` from inside a checkpoint writes maple_eval/ there; loading reads the folder's files only."""
    import shutil

    _, _, (first, _) = tiny
    model = tmp_path / "ckpt"
    shutil.copytree(first, model)
    monkeypatch.chdir(model)
    argv = [".", "--benchmarks", "coco", "--source", f"coco={benchmark_sources['coco']}"]
    assert main(argv) == 0
    (model / "checkpoint-10").mkdir()  # a later training checkpoint in a subfolder
    (model / "checkpoint-10" / "model.safetensors").write_bytes(b"")
    capsys.readouterr()
    assert main(argv) == 0
    assert ".: coco already done" in capsys.readouterr().out


def test_a_local_source_named_another_way_is_the_same_source(tiny, benchmark_sources, tmp_path, capsys, monkeypatch):
    """The source was compared as typed: the same parquet file named by its absolute path, then relative to the working
    folder, recomputed the benchmark as "from another source" (found by a docs walkthrough)."""
    _, _, (first, _) = tiny
    source = benchmark_sources["coco"]
    out = tmp_path / "eval"
    assert main([str(first), "--benchmarks", "coco", "--source", f"coco={source}", "--out", str(out)]) == 0
    monkeypatch.chdir(source.parent)
    capsys.readouterr()
    assert main([str(first), "--benchmarks", "coco", "--source", f"coco=./{source.name}", "--out", str(out)]) == 0
    assert "coco already done" in capsys.readouterr().out


def test_a_local_model_named_another_way_is_the_same_model(tiny, benchmark_sources, tmp_path, capsys, monkeypatch):
    """The model was compared as typed: `./m` after `/abs/m` (one result folder) recomputed every benchmark as "from
    another model reference", each spelling overwriting the other's result (found by a review helper)."""
    _, _, (first, _) = tiny
    out, source = tmp_path / "eval", f"coco={benchmark_sources['coco']}"
    assert main([str(first), "--benchmarks", "coco", "--source", source, "--out", str(out)]) == 0
    monkeypatch.chdir(first.parent)
    for spelling in (f"./{first.name}", f"{first.name}/"):
        capsys.readouterr()
        assert main([spelling, "--benchmarks", "coco", "--source", source, "--out", str(out)]) == 0
        assert "coco already done" in capsys.readouterr().out, spelling


def test_a_moved_checkpoint_with_stored_results_is_reported_as_missing(tiny, benchmark_sources, tmp_path, capsys, monkeypatch):
    import shutil

    _, _, (first, _) = tiny
    shutil.copytree(first, tmp_path / "ckpt")
    monkeypatch.chdir(tmp_path)
    argv = ["./ckpt", "--benchmarks", "coco", "--source", f"coco={benchmark_sources['coco']}"]
    assert main(argv) == 0
    (tmp_path / "ckpt").rename(tmp_path / "moved")
    capsys.readouterr()
    assert main(argv) == 2
    assert capsys.readouterr().err == "maple eval: error: no such folder: ./ckpt\n"


def test_an_adapters_hub_base_unknown_offline_matches_its_stored_commit():
    from evaluation.cli import _same_run

    stored = {"model": "adapter", "model_state": {"files": {"a": [1, 2]}, "base": {"model": "org/base", "commit": "abc"}}}
    offline = {"model": "adapter", "model_state": {"files": {"a": [1, 2]}, "base": {"model": "org/base", "commit": None}}}
    moved_on = {"model": "adapter", "model_state": {"files": {"a": [1, 2]}, "base": {"model": "org/base", "commit": "def"}}}
    assert _same_run(stored, offline) and not _same_run(stored, moved_on)
    assert not _same_run(stored, {**offline, "model_state": {**offline["model_state"], "files": {"a": [1, 3]}}})


def test_an_adapters_state_has_its_base_at_the_revision_the_adapter_records(tmp_path, monkeypatch):
    """Before the fix the base's commit was read at main, so an adapter over `org/base@v1` looked unchanged when
    main moved and changed when only main did."""
    import evaluation.models
    from evaluation.cli import _model_state

    commits = {"v1": "1" * 40, None: "2" * 40}

    def cached_config(repo_id, revision=None, token=None):
        return tmp_path / "snapshots" / commits[revision] / "config.json"

    monkeypatch.setattr(evaluation.models, "hub_checkpoint_config_file", cached_config)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "org/base", "revision": "v1"}))
    assert _model_state(str(adapter))["base"] == {"model": "org/base", "commit": "1" * 40}


def test_interrupted_run_keeps_finished_benchmarks(tiny, benchmark_sources, tmp_path, capsys, monkeypatch):
    _, _, (first, _) = tiny
    out = tmp_path / "eval"
    argv = [str(first), "--benchmarks", "coco", "bivlc", "--out", str(out),
            "--source", f"coco={benchmark_sources['coco']}", f"bivlc={benchmark_sources['bivlc']}"]

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("evaluation.protocols.evaluate_quadruples", interrupt)  # Ctrl-C during bivlc, after coco
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    assert [p.name for p in out.glob("*/*.json")] == ["coco.json"]
    monkeypatch.undo()
    assert main(argv) == 0
    assert "coco already done" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("*/*.json")) == ["bivlc.json", "coco.json"]


def test_a_source_in_the_wrong_schema_is_reported_before_the_model_loads(tiny, benchmark_sources, tmp_path, capsys, monkeypatch):
    _, _, (first, _) = tiny
    out = tmp_path / "eval"
    broken = f"bivlc={benchmark_sources['winoground']}"  # the columns of another benchmark
    argv = [str(first), "--benchmarks", "coco", "bivlc", "--out", str(out), "--source", f"coco={benchmark_sources['coco']}", broken]
    monkeypatch.setattr("evaluation.models.load_embedder", lambda *args, **kwargs: pytest.fail("the model was loaded"))
    assert main(argv) == 2
    # datasets may draw a progress bar first, while it converts the parquet file (when no test has cached it yet)
    lines = [line.split("\r")[-1] for line in capsys.readouterr().err.splitlines()]
    errors = [line for line in lines if line.startswith("maple eval: error:")]
    assert len(errors) == 1 and errors[0].startswith(f"maple eval: error: {benchmark_sources['winoground']}: benchmark 'bivlc' needs columns")
    assert not out.exists()


def test_cli_rejects_a_bad_source_argument(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), "--source", "imagenet=/data"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("maple eval: error: --source expects BENCHMARK=PATH_OR_HUB_ID") and error.count("\n") == 1, error


def test_repeated_compare_and_source_options_add_up(tiny, tmp_path, capsys):
    """argparse's default keeps the last one only: the first --compare or --source would be dropped unsaid."""
    _, _, (first, second) = tiny
    assert main([str(first), "--compare", "./no_such_checkpoint", "--compare", str(second), "--out", str(tmp_path / "eval")]) == 2
    assert capsys.readouterr().err == "maple eval: error: no such folder: ./no_such_checkpoint\n"
    with pytest.raises(SystemExit):
        main([str(first), "--source", "coco=", "--source", f"mmvp={tmp_path}", "--out", str(tmp_path / "eval")])
    assert "--source 'coco=': no path or Hub id after '='" in capsys.readouterr().err


def test_a_benchmark_given_two_sources_is_refused(tmp_path, capsys):
    """The last --source of a benchmark was read and the others dropped unsaid (found by a review)."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), "--source", "coco=a.parquet", "--source", "coco=b.parquet"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "maple eval: error: --source gives coco twice (a.parquet and b.parquet): give one\n"


@pytest.mark.parametrize("value", ["", " "])
def test_cli_rejects_an_empty_source(value, tmp_path, capsys):
    """`--source coco=` read the official Hub dataset, as if the option were not there."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), "--source", f"coco={value}"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        f"maple eval: error: --source 'coco={value}': no path or Hub id after '='; leave coco out of --source to read "
        "its official dataset, nlphuji/mscoco_2014_5k_test_image_text_retrieval\n"
    )


def test_cli_refuses_to_push_results_of_a_local_folder_or_source_before_evaluating(tiny, benchmark_sources, tmp_path, capsys):
    """In one line: they printed argparse's usage lines first, which say nothing about these errors."""
    _, _, (first, _) = tiny
    with pytest.raises(SystemExit) as exit_info:
        main([str(first), "--benchmarks", "coco", "--out", str(tmp_path / "eval"), "--push-to-hub"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        f"maple eval: error: --push-to-hub writes into the card of MODEL's Hub repo, but {first} is a local folder: "
        "push the checkpoint first and evaluate it by repo id\n"
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["maple-org/model", "--benchmarks", "coco", "--source", f"coco={benchmark_sources['coco']}",
              "--out", str(tmp_path / "eval"), "--push-to-hub"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        "maple eval: error: --push-to-hub publishes results under the benchmarks' Hub datasets, but "
        f"coco={benchmark_sources['coco']} is a local copy: evaluate from the Hub (the default source, or another Hub "
        "id) to push\n"
    )
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize("size", ["0", "-1"])
def test_cli_rejects_a_batch_size_below_one(tmp_path, capsys, size):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), "--batch-size", size])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err  # argparse's own error: the usage lines, then the error
    assert error.startswith("usage: maple eval ") and error.endswith(f"\nmaple eval: error: argument --batch-size: must be a finite number above zero, got {size}\n")


# `~nosuchuser`, a home folder of no user, was a RuntimeError traceback (Path.expanduser); a shell leaves it as typed
@pytest.mark.parametrize("missing", ["./no_such_checkpoint", "{tmp_path}/models/no_such_checkpoint", "~nosuchuser/checkpoint"])
def test_cli_reports_a_missing_model_folder_before_loading_any_model(tiny, benchmark_sources, tmp_path, monkeypatch, capsys, missing):
    _, _, (first, _) = tiny
    monkeypatch.chdir(tmp_path)
    missing = missing.format(tmp_path=tmp_path)
    out = tmp_path / "eval"
    argv = [str(first), "--compare", missing, "--benchmarks", "coco", "--source", f"coco={benchmark_sources['coco']}", "--out", str(out)]
    assert main(argv) == 2
    assert capsys.readouterr().err == f"maple eval: error: no such folder: {missing}\n"
    assert not out.exists()  # nothing evaluated (not even the first model), no folder for the missing one


def test_a_benchmark_only_a_compared_model_needs_is_read_before_the_first_model_loads(tiny, benchmark_sources, tmp_path, capsys):
    """The first model's stored winoground result (from a Hub copy, offline and not cached now) let it go on to coco;
    the second model, which still needed winoground, failed to read it only after the first had been evaluated (found
    by a review helper)."""
    from evaluation.cli import _model_folder_name

    _, _, (first, second) = tiny
    out, hub_copy = tmp_path / "eval", "maple-org/winoground-copy"
    assert main([str(first), "--benchmarks", "winoground", "--source", f"winoground={benchmark_sources['winoground']}",
                 "--out", str(out)]) == 0
    stored = out / _model_folder_name(str(first)) / "winoground.json"
    record = json.loads(stored.read_text())
    record["run"] |= {"source": hub_copy, "source_files": None}  # as if read from the Hub copy then
    stored.write_text(json.dumps(record))
    capsys.readouterr()
    argv = [str(first), "--compare", str(second), "--benchmarks", "coco", "winoground", "--source",
            f"coco={benchmark_sources['coco']}", "--source", f"winoground={hub_copy}", "--out", str(out)]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "evaluating" not in captured.out
    assert captured.err.splitlines()[-1].startswith(f"maple eval: error: benchmark 'winoground': cannot read source {hub_copy!r}")
    assert not (out / _model_folder_name(str(first)) / "coco.json").exists()


@pytest.mark.parametrize("kind", ["uncached hub repo", "mistyped local path", "unsupported checkpoint", "no processor"])
def test_cli_reports_a_bad_compared_model_before_evaluating_the_first(tiny, benchmark_sources, tmp_path, capsys, kind, monkeypatch):
    model, _, (first, _) = tiny
    if kind == "uncached hub repo":  # the tests run offline (HF_HUB_OFFLINE=1), and this repo was never downloaded
        bad, expected = "maple-org/never-downloaded", "is not in the local cache and the Hub is offline or unreachable\n"
    elif kind == "mistyped local path":  # it could be a Hub id, so it is looked up there; runs/ says it is a typo
        monkeypatch.chdir(tmp_path)
        (tmp_path / "runs").mkdir()
        bad, expected = "runs/modle", "offline or unreachable (nor is it a local folder: runs/ exists here, but not runs/modle)\n"
    elif kind == "unsupported checkpoint":
        bad = tmp_path / "bert"
        bad.mkdir()
        (bad / "config.json").write_text('{"model_type": "bert"}')
        expected = "is a 'bert' checkpoint; expected a MAPLE checkpoint"
    else:  # found once the first model had been evaluated: each model's processor loaded with the model
        bad = tmp_path / "weights_only"
        model.save_pretrained(bad)
        capsys.readouterr()  # saving's progress bar
        expected = f"{bad}: its processor cannot be loaded ("
    out = tmp_path / "eval"
    # --no-progress: datasets' bars, reading the local source first (unless a test before read it), go to stderr
    argv = [str(first), "--compare", str(bad), "--benchmarks", "coco", "--source", f"coco={benchmark_sources['coco']}",
            "--out", str(out), "--no-progress"]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("maple eval: error: ") and expected in error and error.count("\n") == 1
    assert not out.exists()  # the first model was not evaluated


def test_cli_reruns_offline_a_hub_model_whose_results_are_all_stored(tiny, benchmark_sources, tmp_path, capsys):
    """The up-front config check is for models with work left: one whose results are stored needs no Hub access."""
    _, _, (first, _) = tiny
    out, source = tmp_path / "eval", f"coco={benchmark_sources['coco']}"
    assert main([str(first), "--benchmarks", "coco", "--source", source, "--out", str(out)]) == 0
    hub_model = "maple-org/never-downloaded"  # offline, and not in the cache: its config cannot be read
    _store_as_hub_models_result(out, first, hub_model)
    capsys.readouterr()
    assert main([str(first), "--compare", hub_model, "--benchmarks", "coco", "--source", source, "--out", str(out)]) == 0
    assert f"{hub_model}: coco already done" in capsys.readouterr().out
    assert set(json.loads((out / "results.json").read_text())) == {str(first), hub_model}


def test_cli_reports_a_refused_push_in_one_line_and_keeps_the_results(tiny, benchmark_sources, tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils import httpx

    from maple.hub import TOKEN_SOURCES

    _, _, (first, _) = tiny
    out, source = tmp_path / "eval", f"coco={benchmark_sources['coco']}"
    assert main([str(first), "--benchmarks", "coco", "--source", source, "--out", str(out)]) == 0
    hub_model, hub_source = "maple-org/not-yours", "maple-org/coco-copy"  # pushed results come from the Hub
    _store_as_hub_models_result(out, first, hub_model, source=hub_source, source_files=None)

    def refuse(repo_id, results, dataset_ids, token):
        response = httpx.Response(403, request=httpx.Request("POST", f"https://hub/{repo_id}"))
        raise HfHubHTTPError("403 Forbidden", response=response)

    monkeypatch.setattr("evaluation.cli.push_results", refuse)
    capsys.readouterr()
    assert main([hub_model, "--benchmarks", "coco", "--source", f"coco={hub_source}", "--out", str(out), "--push-to-hub"]) == 1
    assert capsys.readouterr().err == (f"maple eval: error: pushing the results failed: model repo {hub_model!r} on "
                                       f"{constants.ENDPOINT} refused the token (HTTP 403): check the one used "
                                       f"({TOKEN_SOURCES}); they are saved in {out}\n")
    assert hub_model in json.loads((out / "results.json").read_text())


def test_cli_pushes_the_results_with_their_sources_hub_ids(tiny, benchmark_sources, tmp_path, capsys, monkeypatch):
    """A local copy given for a benchmark not evaluated now does not stop the push: its results are not published, nor
    its path (it was written into the repo's maple_eval_results.json)."""
    _, _, (first, _) = tiny
    out, source = tmp_path / "eval", f"coco={benchmark_sources['coco']}"
    assert main([str(first), "--benchmarks", "coco", "--source", source, "--out", str(out)]) == 0
    hub_model, hub_source = "maple-org/mine", "maple-org/coco-copy"
    _store_as_hub_models_result(out, first, hub_model, source=hub_source, source_files=None)
    pushed = []
    # the push dropped the bivlc results pushed before, for other weights
    monkeypatch.setattr("evaluation.cli.push_results", lambda *args, **kwargs: pushed.append((args, kwargs)) or ["bivlc"])
    argv = [hub_model, "--benchmarks", "coco", "--source", f"coco={hub_source}", f"mmvp={benchmark_sources['mmvp']}",
            "--out", str(out), "--push-to-hub"]
    capsys.readouterr()
    assert main(argv) == 0
    [((repo_id, results), kwargs)] = pushed
    assert repo_id == hub_model and list(results) == ["coco"]
    assert kwargs["dataset_ids"] == {"coco": hub_source}
    assert capsys.readouterr().out.endswith(f"{hub_model}: the card no longer shows the results pushed before for bivlc: "
                                            "they were computed from other weights than the repo holds now; evaluate "
                                            "them again to publish them\n")


def test_a_results_record_the_hub_fails_to_serve_fails_the_push(monkeypatch):
    """Only a repo without maple_eval_results.json starts a new record. One the Hub failed to serve (a 5xx, offline:
    LocalEntryNotFoundError, also an EntryNotFoundError) must fail the push, not drop the results pushed before for
    other benchmarks from the card."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    from evaluation.cli import PUSHED_RESULTS_FILE, push_results

    def unreachable(repo_id, filename, **kwargs):
        raise LocalEntryNotFoundError(f"{filename}: the Hub did not answer and it is not in the cache")

    commits = []
    monkeypatch.setattr(huggingface_hub.ModelCard, "load", classmethod(lambda cls, *args, **kwargs: cls("# mine\n")))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", lambda self, *args, **kwargs: commits.append(args))
    with pytest.raises(LocalEntryNotFoundError, match=PUSHED_RESULTS_FILE):
        push_results("maple-org/mine", {"bivlc": {"text_score": 50.0, "image_score": 25.0, "group_score": 25.0}})
    assert commits == []


def test_cli_reports_a_missing_or_unreachable_benchmark_source(tiny, tmp_path, capsys):
    _, _, (first, _) = tiny
    out = tmp_path / "eval"
    assert main([str(first), "--benchmarks", "coco", "--source", f"coco={tmp_path / 'coco.parquet'}", "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"maple eval: error: benchmark 'coco': no such file or folder: {tmp_path / 'coco.parquet'}\n"
    assert main([str(first), "--benchmarks", "coco", "--source", "coco=~nosuchuser/coco.parquet", "--out", str(out)]) == 2
    assert capsys.readouterr().err == "maple eval: error: benchmark 'coco': no such file or folder: ~nosuchuser/coco.parquet\n"
    assert not out.exists()
    assert main([str(first), "--benchmarks", "coco", "--out", str(out)]) == 2  # offline: the official source is not cached
    error = capsys.readouterr().err
    assert error.startswith("maple eval: error: benchmark 'coco': cannot read source 'nlphuji/mscoco_2014_5k_test_image_text_retrieval'")
    assert error.count("\n") == 1
    # every unreadable benchmark at once, not one per rerun
    assert main([str(first), "--benchmarks", "coco", "winoground", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("maple eval: error: 2 benchmarks cannot be read: benchmark 'coco': cannot read source")
    assert "; benchmark 'winoground': cannot read source" in error and error.endswith("(a local copy is read with --source NAME=PATH)\n")
    assert error.count("\n") == 1


def test_cli_reports_an_unreadable_image_file_of_a_folder_layout(tiny, benchmark_sources, tmp_path, capsys):
    """It was a traceback (exit status 1) naming the image's place in its batch."""
    import shutil

    _, _, (first, _) = tiny
    mmvp = shutil.copytree(benchmark_sources["mmvp"], tmp_path / "mmvp")
    broken = mmvp / "MLLM_VLM Images" / "Color and Appearance" / "4.jpg"
    broken.write_bytes(b"not an image")
    assert main([str(first), "--benchmarks", "mmvp", "--source", f"mmvp={mmvp}", "--out", str(tmp_path / "eval")]) == 2
    error = capsys.readouterr().err.splitlines()[-1]  # after the weights' loading bar
    assert error.startswith(f"maple eval: error: {mmvp / 'Questions.csv'}, line 5: unreadable image file {broken} (")


def test_image_files_a_table_names_outside_itself_are_part_of_its_fingerprint(tiny, tmp_path, capsys, monkeypatch):
    """A parquet source's images kept as file paths were not fingerprinted: images replaced (or, for relative paths,
    another working folder's) reused the stored result of the old ones (found by a review)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    _, _, (first, _) = tiny
    for folder in ("a", "b"):
        (tmp_path / folder / "images").mkdir(parents=True)
        for index in range(4):
            Image.new("RGB", (16, 16), (60 * index, 0, 255 if folder == "a" else 0)).save(tmp_path / folder / "images" / f"{index}.png")
    source = tmp_path / "coco.parquet"
    pq.write_table(pa.table({"image": [f"images/{index}.png" for index in range(4)],
                             "caption": [[f"a red circle {index}"] for index in range(4)]}), source)
    argv = [str(first), "--benchmarks", "coco", "--source", f"coco={source}", "--out", str(tmp_path / "eval")]
    monkeypatch.chdir(tmp_path / "a")
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 0
    assert "coco already done" in capsys.readouterr().out
    done = next((tmp_path / "eval").glob("*/coco.json"))
    record = json.loads(done.read_text())
    record["run"].pop("image_files")  # a result stored before they were fingerprinted: the files named, not their states
    done.write_text(json.dumps(record))
    assert main(argv) == 0
    assert "coco: stored result is from another source (changed files: " in capsys.readouterr().out
    image = tmp_path / "a" / "images" / "2.png"
    image.write_bytes(image.read_bytes())  # same bytes, new modification time
    assert main(argv) == 0
    assert f"coco: stored result is from another source (changed files: {image}), recomputing\n" in capsys.readouterr().out
    monkeypatch.chdir(tmp_path / "b")  # the same table names other files
    assert main(argv) == 0
    assert "coco: stored result is from another source (changed files: " in capsys.readouterr().out


@pytest.mark.parametrize("out_holds_the_source", [False, True])
def test_a_changed_image_in_a_source_folders_subfolder_is_recomputed(tiny, benchmark_sources, tmp_path, capsys,
                                                                     out_holds_the_source):
    """A folder layout keeps its images in subfolders: they are part of the source's fingerprint, also where the
    source lies inside --out (a review of the fix below found the source's files all left out then)."""
    _, _, (first, _) = tiny
    out = tmp_path / "eval"
    mmvp = shutil.copytree(benchmark_sources["mmvp"], (out if out_holds_the_source else tmp_path) / "mmvp")
    argv = [str(first), "--benchmarks", "mmvp", "--source", f"mmvp={mmvp}", "--out", str(out)]
    assert main(argv) == 0
    image = Path("MLLM_VLM Images") / "Color and Appearance" / "4.jpg"
    (mmvp / image).write_bytes((mmvp / image).read_bytes())  # same bytes, new modification time
    capsys.readouterr()
    assert main(argv) == 0
    assert f"mmvp: stored result is from another source (changed files: {image}), recomputing\n" in capsys.readouterr().out


def test_results_written_inside_the_source_folder_do_not_change_its_fingerprint(tiny, benchmark_sources, tmp_path, capsys):
    """An --out inside a source folder: each run's own results changed the source's files, so every rerun recomputed
    ("from another source (changed files: out/...)"); found by a review helper."""
    _, _, (first, _) = tiny
    mmvp = shutil.copytree(benchmark_sources["mmvp"], tmp_path / "mmvp")
    argv = [str(first), "--benchmarks", "mmvp", "--source", f"mmvp={mmvp}", "--out", str(mmvp / "eval")]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 0
    assert "mmvp already done" in capsys.readouterr().out


def test_lora_adapter_folder_loads_on_its_base(tiny, tmp_path, monkeypatch):
    from peft import get_peft_model

    from evaluation.models import ModelLoadError, load_embedder
    from modeling_maple.lora import maple_lora_config

    _, processor, (base_folder, _) = tiny
    base, _ = load_embedder(str(base_folder))
    adapted = get_peft_model(base, maple_lora_config(base, r=4, lora_alpha=8))
    with torch.no_grad():  # LoRA's B starts at zero: make the adapter matter
        for name, parameter in adapted.named_parameters():
            if "lora_B" in name:
                parameter.fill_(0.05)
    adapted.peft_config["default"].base_model_name_or_path = str(base_folder)
    adapted.save_pretrained(tmp_path / "adapter")
    expected = adapted.encode(processor, texts=["a red square on the left"])

    loaded, loaded_processor = load_embedder(str(tmp_path / "adapter"))
    assert torch.equal(loaded.encode(loaded_processor, texts=["a red square on the left"]), expected)
    assert not torch.equal(load_embedder(str(base_folder))[0].encode(processor, texts=["a red square on the left"]), expected)
    # `~/adapter` (`--compare=~/adapter`, which the shell leaves as typed) passed the checks, read its config and its
    # base, then PEFT took it for a Hub id: a traceback once the base's weights had loaded (found by a review)
    monkeypatch.setenv("HOME", str(tmp_path))
    loaded, loaded_processor = load_embedder("~/adapter")
    assert torch.equal(loaded.encode(loaded_processor, texts=["a red square on the left"]), expected)

    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text()) | {"base_model_name_or_path": None}
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"adapter_config.json does not name its base model"):
        load_embedder(str(tmp_path / "adapter"))


def test_one_model_named_several_ways_is_evaluated_once(tiny, benchmark_sources, tmp_path, capsys, monkeypatch):
    """`m --compare m/ ../x/m` evaluated the folder three times, each run overwriting the one result folder."""
    import shutil

    _, _, (first, _) = tiny
    shutil.copytree(first, tmp_path / "x" / "m")
    monkeypatch.chdir(tmp_path / "x")
    out = tmp_path / "eval"
    argv = ["m", "--compare", "m/", "../x/m", "--benchmarks", "coco", "--source", f"coco={benchmark_sources['coco']}"]
    assert main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "m/: the same model as m, evaluated once" in printed and "../x/m: the same model as m, evaluated once" in printed
    assert printed.count("evaluating coco") == 1
    assert list(json.loads((out / "results.json").read_text())) == ["m"]
    assert len(list(out.glob("*/coco.json"))) == 1


def test_a_deep_local_model_path_names_a_result_folder_a_file_system_takes(tmp_path):
    """The folder name held the whole absolute path: one of 258 characters was over the 255-byte limit of a file name,
    an OSError before anything ran (found by a review). A long name keeps its end after a hash of the whole."""
    from evaluation.cli import _MAX_FOLDER_NAME, _model_folder_name

    deep = [tmp_path.joinpath(*(f"component_number_{part:02d}" for part in range(12)), run, "checkpoint-12000")
            for run in ("run-a", "run-b")]
    for folder in deep:
        folder.mkdir(parents=True)
    names = [_model_folder_name(str(folder)) for folder in deep]
    assert names[0] != names[1]
    for name in names:
        assert len(name.encode()) <= _MAX_FOLDER_NAME and name.startswith("local--") and name.endswith("--checkpoint-12000")
        (tmp_path / name).mkdir()  # a name the file system takes
    # a name within the bound is as it was, and so are the results stored under it (a bound of 200 bytes had moved
    # names of 201-255 bytes, found by a review)
    near = tmp_path.joinpath(*["checkpoint_folder_" + "x" * 20] * 4)
    near.mkdir(parents=True)
    assert 200 < len(_model_folder_name(str(near))) <= 255
    assert _model_folder_name(str(near)) == "local--" + "--".join(str(near).strip("/").split("/"))


def test_result_folders_stay_inside_out_and_apart(tmp_path, monkeypatch):
    from evaluation.cli import _distinct_models, _model_folder_name

    (tmp_path / "org" / "m").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "org" / "m")
    names = {ref: _model_folder_name(ref) for ref in (".", "..", "../m", str(tmp_path / "org" / "m"))}
    assert all(name not in (".", "..") and "/" not in name for name in names.values())
    assert names["."] == names["../m"] == names[str(tmp_path / "org" / "m")] != names[".."]  # one folder, one name
    monkeypatch.chdir(tmp_path)
    assert _model_folder_name("org/m") != _model_folder_name("org/missing") == "org--missing"  # a local folder is not the Hub id
    assert _model_folder_name(str(tmp_path / "org" / "m")).startswith("local--")  # nor a Hub id that spells its path
    # `/x/a b` reads `x--a--b` as `/x/a/b` does: with --compare it was dropped as "the same model" as the other, its
    # results never computed (found by a review); side by side they are refused, one model named twice is one
    for folder in ("a/b", "a b"):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
    assert _distinct_models([str(tmp_path / "a b"), str(tmp_path / "a" / ".." / "a b")]) == [str(tmp_path / "a b")]
    with pytest.raises(ValueError, match=rf"^{tmp_path}/a/b and {tmp_path}/a b are two models whose results would "
                                         rf"share one folder, local--.*--a--b: evaluate them with two --out folders$"):
        _distinct_models([str(tmp_path / "a/b"), str(tmp_path / "a b")])


@pytest.mark.parametrize(
    ("device", "cuda_devices", "error"),
    [
        ("cuda", 0, "--device 'cuda': no cuda device is available on this machine"),
        ("cuda:3", 0, "--device 'cuda:3': no cuda device is available on this machine"),
        ("cuda:2", 2, "--device 'cuda:2': this machine has 2 cuda device(s), cuda:0 to cuda:1"),
        ("mps", 0, "--device 'mps': no mps device is available on this machine"),
        ("meta", 0, "--device 'meta': models cannot run on a 'meta' device"),
    ],
)
def test_a_device_this_machine_lacks_is_a_usage_error(device, cuda_devices, error, tmp_path, capsys, monkeypatch):
    """It was an AssertionError traceback once the first model had loaded (torch's 'Torch not compiled with CUDA')."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda_devices)
    monkeypatch.setattr(torch.mps, "device_count", lambda: 0)
    with pytest.raises(SystemExit) as exit_info:
        main(["some/model", "--device", device, "--out", str(tmp_path / "eval")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"maple eval: error: {error}\n"
    assert not (tmp_path / "eval").exists()


def test_models_embed_on_cuda_when_available_unless_a_device_is_given(monkeypatch):
    import argparse

    from evaluation.cli import _embedding_device

    parser = argparse.ArgumentParser()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _embedding_device(parser, None) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert (_embedding_device(parser, None), _embedding_device(parser, "cpu")) == ("cuda", "cpu")


def test_device_dtype_and_trust_remote_code_are_checked_and_used(tiny, tmp_path, benchmark_sources, capsys, monkeypatch):
    _, _, (first, _) = tiny
    with pytest.raises(SystemExit):
        main([str(first), "--device", "nonsense", "--out", str(tmp_path / "eval")])
    assert "--device 'nonsense'" in capsys.readouterr().err
    import evaluation.models

    moved_to, dtypes, trusted, load = [], [], [], evaluation.models.load_embedder

    def load_and_spy(model_ref, **kwargs):
        model, processor = load(model_ref, **kwargs)
        dtypes.append((model.dtype, model.logit_scale.dtype))
        trusted.append(kwargs["trust_remote_code"])
        to = model.to
        monkeypatch.setattr(model, "to", lambda device: moved_to.append(device) or to(device))
        return model, processor

    monkeypatch.setattr(evaluation.models, "load_embedder", load_and_spy)
    argv = [str(first), "--benchmarks", "coco", "--source", f"coco={benchmark_sources['coco']}", "--out", str(tmp_path / "eval")]
    assert main([*argv, "--device", "cpu"]) == 0 and moved_to == ["cpu"]
    # --dtype: the weights load in it (MAPLE's scales stay float32), and results in another dtype are recomputed
    capsys.readouterr()
    assert main([*argv, "--device", "cpu", "--dtype", "bfloat16"]) == 0
    assert "coco: stored result is from another dtype ('float32' then, 'bfloat16' now), recomputing\n" in capsys.readouterr().out
    assert dtypes == [(torch.float32, torch.float32), (torch.bfloat16, torch.float32)]
    # a checkpoint's repo code runs only when asked for
    assert main([*argv, "--device", "cpu", "--out", str(tmp_path / "eval_trusted"), "--trust-remote-code"]) == 0
    assert trusted == [False, False, True]


def test_results_stored_under_another_protocol_are_recomputed(tiny, benchmark_sources, tmp_path, capsys):
    from evaluation.cli import PROTOCOL_VERSION, _model_folder_name

    _, _, (first, _) = tiny
    out = tmp_path / "eval"
    argv = [str(first), "--benchmarks", "mmvp", "--source", f"mmvp={benchmark_sources['mmvp']}", "--out", str(out)]
    assert main(argv) == 0
    stored = out / _model_folder_name(str(first)) / "mmvp.json"
    record = json.loads(stored.read_text())
    assert record["run"]["protocol"] == PROTOCOL_VERSION
    record["run"]["protocol"] = PROTOCOL_VERSION - 1  # e.g. MMVP texts without "a photo of "
    stored.write_text(json.dumps(record))
    capsys.readouterr()
    assert main(argv) == 0
    assert f"mmvp: stored result is from another protocol version ({PROTOCOL_VERSION - 1} then, {PROTOCOL_VERSION} now), recomputing\n" in capsys.readouterr().out


def test_a_checkpoint_folder_as_its_own_out_reuses_its_results(tiny, benchmark_sources, tmp_path, capsys):
    """`maple eval . --out .` in a checkpoint folder: the results.json and results.md it writes there changed the
    folder's files, so every rerun recomputed; so did a rewritten card or picture, which loading never reads."""
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(tiny[2][0], checkpoint)
    argv = [str(checkpoint), "--benchmarks", "mmvp", "--source", f"mmvp={benchmark_sources['mmvp']}", "--out", str(checkpoint)]
    assert main(argv) == 0 and (checkpoint / "results.json").exists()
    (checkpoint / "README.md").write_text("a card rewritten")  # as a rerun of the demo rewrites its model's
    (checkpoint / "training_curves.png").write_bytes(b"png")
    capsys.readouterr()
    assert main(argv) == 0
    assert "recomputing" not in capsys.readouterr().out
    (checkpoint / "tokenizer.json").write_text((checkpoint / "tokenizer.json").read_text() + " ")  # loading reads it
    assert main(argv) == 0
    assert "another model state (changed files: tokenizer.json), recomputing" in capsys.readouterr().out


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "(default: 32)" in help_text and "(default: float32)" in help_text and "(default: maple_eval)" in help_text
    assert "(default: None)" not in help_text and "(default: False)" not in help_text and "(default: [])" not in help_text


@pytest.mark.parametrize("kind", ["file", "under a file"])
def test_an_out_that_is_a_file_is_a_usage_error_before_the_model_loads(kind, tiny, benchmark_sources, tmp_path, capsys, monkeypatch):
    """It was a NotADirectoryError traceback once the model had loaded and been evaluated (a user-journey review)."""
    _, _, (first, _) = tiny
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    out = a_file if kind == "file" else a_file / "eval"
    monkeypatch.setattr("evaluation.models.load_embedder", lambda *args, **kwargs: pytest.fail("the model was loaded"))
    with pytest.raises(SystemExit) as exit_info:
        main([str(first), "--benchmarks", "coco", "--source", f"coco={benchmark_sources['coco']}", "--out", str(out)])
    assert exit_info.value.code == 2
    expected = f"--out {out} is a file; expected a folder" if kind == "file" else f"--out {out} is inside {a_file}, a file"
    error = capsys.readouterr().err
    assert error.startswith(f"maple eval: error: {expected}") and error.count("\n") == 1, error
    assert a_file.read_text() == "mine"


def test_an_empty_out_is_a_usage_error_before_it_becomes_the_current_folder(tmp_path, capsys, monkeypatch):
    """argparse's type made `--out ""` (an unset variable) Path(""), the current folder, where the results went."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("evaluation.models.load_embedder", lambda *args, **kwargs: pytest.fail("the model was loaded"))
    with pytest.raises(SystemExit) as exit_info:
        main(["some/checkpoint", "--benchmarks", "coco", "--out", ""])
    assert exit_info.value.code == 2
    assert "maple eval: error: argument --out: empty; expected a folder (created if missing)" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("written", ["demo results.json", "results.md alone", "not json", "empty json"])
def test_an_out_holding_another_commands_results_is_refused(written, tiny, benchmark_sources, tmp_path, capsys, monkeypatch):
    """`cd demo_out && maple eval maple-model ... --out .` overwrote the demo's own results.json and results.md."""
    _, _, (first, _) = tiny
    out = tmp_path / "demo_out"
    out.mkdir()
    files = {"demo results.json": {"results.json": json.dumps({"maple": {"group_score": {"mean": 5.0, "std": 0.0}}}),
                                   "results.md": "# demo\n"},
             "results.md alone": {"results.md": "# someone's table\n"},
             "not json": {"results.json": "{\"maple\": "},
             "empty json": {"results.json": "{}"}}[written]  # maple eval writes at least one model's results
    for name, text in files.items():
        (out / name).write_text(text)
    monkeypatch.setattr("evaluation.models.load_embedder", lambda *args, **kwargs: pytest.fail("the model was loaded"))
    with pytest.raises(SystemExit) as exit_info:
        main([str(first), "--benchmarks", "coco", "--source", f"coco={benchmark_sources['coco']}", "--out", str(out)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith(f"maple eval: error: --out {out} holds a results.") and "choose another folder" in error
    assert error.count("\n") == 1
    assert {name: (out / name).read_text() for name in files} == files
    assert sorted(path.name for path in out.iterdir()) == sorted(files)


def test_results_are_written_atomically_and_recognised_on_a_rerun(tiny, benchmark_sources, tmp_path, capsys, monkeypatch):
    import maple.files

    _, _, (first, _) = tiny
    out = tmp_path / "eval"
    argv = [str(first), "--benchmarks", "coco", "--source", f"coco={benchmark_sources['coco']}", "--out", str(out)]
    written = []
    atomic = maple.files.atomic_write  # what every atomic_write_* goes through
    monkeypatch.setattr(maple.files, "atomic_write", lambda path, write: (written.append(Path(path).name), atomic(path, write)))
    assert main(argv) == 0
    assert {"results.json", "results.md"} <= set(written)
    assert main(argv) == 0  # its own results.json: the --out check lets the rerun through
    assert "coco already done" in capsys.readouterr().out


@pytest.mark.parametrize("source", ["test_sets/nope.parquet", "nope.parquet", "data/Questions.CSV"])
def test_a_missing_relative_source_file_is_no_such_file_not_a_hub_problem(source, tiny, tmp_path, capsys, monkeypatch):
    """`--source coco=test_sets/nope.parquet` is a valid Hub id by its form, and was reported as "Couldn't reach
    'test_sets/nope.parquet' on the Hub (OfflineModeIsEnabled)" (a user-journey review)."""
    _, _, (first, _) = tiny
    monkeypatch.chdir(tmp_path)
    assert main([str(first), "--benchmarks", "coco", "--source", f"coco={source}", "--out", "eval"]) == 2
    assert capsys.readouterr().err == f"maple eval: error: benchmark 'coco': no such file or folder: {source}\n"


def test_a_benchmark_named_twice_is_evaluated_once_in_the_order_given(tiny, benchmark_sources, tmp_path, capsys):
    _, _, (first, _) = tiny
    out = tmp_path / "eval"
    assert main([str(first), "--benchmarks", "mmvp", "coco", "mmvp", "coco", "--out", str(out),
                 "--source", f"coco={benchmark_sources['coco']}", f"mmvp={benchmark_sources['mmvp']}"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("evaluating coco") == printed.count("evaluating mmvp") == 1
    assert list(json.loads((out / "results.json").read_text())[str(first)]) == ["mmvp", "coco"]


def test_the_recompute_message_says_what_changed():
    from evaluation.cli import _run_differences

    stored = {"model": "m", "model_state": {"files": {"a": [1, 2], "b": [3, 4]}}, "dtype": "float32", "source": "s",
              "source_files": None, "protocol": 4}
    assert _run_differences(stored, {**stored, "model_state": {"files": {"a": [1, 2], "c": [5, 6]}}, "protocol": 5}) == [
        "model state (changed files: b, c)", "protocol version (4 then, 5 now)"]
    assert _run_differences(stored, {**stored, "source": "t"}) == ["source ('s' then, 't' now)"]
    # another source file has other files: one "source" (it was said twice)
    assert _run_differences(stored, {**stored, "source": "t", "source_files": {"t": [1, 2]}}) == ["source ('s' then, 't' now)"]
    assert _run_differences({**stored, "source_files": {"s": [1, 2]}}, {**stored, "source_files": {"s": [1, 3]}}) == [
        "source (changed files: s)"]
    assert _run_differences({}, stored)[0].startswith("model reference (None then, 'm' now)")
    many = {name: [1, 2] for name in "vwxyz"}
    assert _run_differences(stored, {**stored, "model_state": {"files": many}}) == [
        "model state (changed files: a, b, v and 4 more)"]


def test_no_progress_hides_the_bars_of_datasets_and_of_loading_and_puts_them_back(tiny, benchmark_sources, tmp_path, capsys):
    """`maple eval` had no --no-progress, while `maple demo` and `maple build-preferences` have one."""
    import shutil

    import datasets
    import transformers

    _, _, (first, _) = tiny
    coco = shutil.copy(benchmark_sources["coco"], tmp_path / "fresh_coco.parquet")  # a file datasets has not converted yet
    capsys.readouterr()
    assert main([str(first), "--benchmarks", "coco", "--source", f"coco={coco}", "--out", str(tmp_path / "eval"), "--no-progress"]) == 0
    error = capsys.readouterr().err
    assert "Generating train split" not in error and "Loading weights" not in error, error
    assert not datasets.are_progress_bars_disabled() and transformers.utils.logging.is_progress_bar_enabled()


def test_a_diverged_model_is_one_error_line_naming_the_model_and_the_benchmark(
    tiny, benchmark_sources, tmp_path, capsys, monkeypatch
):
    """NaN embeddings were a traceback of `NonFiniteEmbeddingsError` that named neither the model nor the benchmark;
    the benchmarks finished before it stay stored."""
    import evaluation.models

    _, _, (first, _) = tiny
    load = evaluation.models.load_embedder

    def load_diverged(model_ref, **kwargs):
        model, processor = load(model_ref, **kwargs)
        encode = model.encode
        # coco is finite, winoground (evaluated second) is not
        monkeypatch.setattr(model, "encode", lambda *args, **kw: tuple(
            embeds.fill_(float("nan")) if len(kw["texts"]) == 6 else embeds for embeds in encode(*args, **kw)))
        return model, processor

    monkeypatch.setattr(evaluation.models, "load_embedder", load_diverged)
    out = tmp_path / "eval"
    argv = [str(first), "--benchmarks", "coco", "winoground", "--out", str(out),
            "--source", f"coco={benchmark_sources['coco']}", f"winoground={benchmark_sources['winoground']}"]
    assert main(argv) == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert error.startswith(f"maple eval: error: {first}: winoground: embeddings: ") and "are not finite" in error
    assert [path.name for path in out.glob("*/*.json")] == ["coco.json"]


def test_an_unreadable_image_of_a_quadruple_given_from_python_names_the_quadruple(tiny, tmp_path):
    """The images of n quadruples are embedded as one list I0, I1, I0, I1, ...: the processor's error named
    "images[5]", a list the caller never made, for quadruple 2's second image."""
    from PIL import Image

    model, processor, _ = tiny
    picture = Image.new("RGB", (24, 24))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    quadruples = [(picture, picture, "a", "b"), (picture, picture, "c", "d"), (picture, str(broken), "e", "f")]
    with pytest.raises(ValueError, match=rf"^quadruples\[2\], image1: cannot read image file '{broken}'"):
        evaluate_quadruples(model, processor, quadruples, batch_size=2)
    with pytest.raises(ValueError, match=r"^quadruples\[0\], image0 is a int; expected a PIL image"):
        evaluate_quadruples(model, processor, [(3, picture, "a", "b")])


@pytest.mark.parametrize("as_batch", [np.eye, torch.eye], ids=["numpy", "torch"])
def test_images_given_as_one_array_or_tensor_are_a_sequence_of_images(as_batch):
    """`if not images` asked an array or tensor of several images for its truth value (an error) before the embedder,
    which may well take them (this one takes vectors), was called."""
    model = LookupEmbedder({"a": [1.0, 0.0], "b": [0.0, 1.0]})
    assert evaluate_retrieval(model, None, as_batch(2), [["a"], ["b"]])["i2t_r1"] == 100.0


def _edited(record: str, *keys: str, value: object = None) -> str:
    """`record` (a stored result's JSON) with the metric at `keys` (a path into its metrics) deleted, or set to
    `value`."""
    loaded = json.loads(record)
    *parents, last = keys
    holder = loaded["metrics"]
    for key in parents:
        holder = holder[key]
    if value is None:
        del holder[last]
    else:
        holder[last] = value
    return json.dumps(loaded)


@pytest.mark.parametrize(
    "benchmark, edit",
    [
        ("mmvp", lambda record: ""),
        ("mmvp", lambda record: "{not json"),
        ("mmvp", lambda record: "[1, 2]"),
        ("mmvp", lambda record: '{"run": {}}'),
        # still JSON with its run: a KeyError in the tables (found by a review helper)
        ("coco", lambda record: _edited(record, "i2t_r5")),
        ("mmvp", lambda record: _edited(record, "group_score")),
        ("mmvp", lambda record: _edited(record, "modality_gap", "delta_gap")),
        ("mmvp", lambda record: _edited(record, "text_score", value="50.0")),
    ],
    ids=["empty", "not_json", "a_list", "no_metrics", "a_recall_deleted", "a_score_deleted", "the_gap_deleted", "a_score_as_text"],
)
def test_a_stored_result_that_does_not_read_is_recomputed_not_a_traceback(
    benchmark, edit, tiny, benchmark_sources, tmp_path, capsys
):
    """A result file emptied or edited by hand (or by a full disk) was a JSONDecodeError, AttributeError or KeyError
    traceback on every later run, until the user found and deleted it."""
    from evaluation.cli import _model_folder_name

    _, _, (first, _) = tiny
    out = tmp_path / "eval"
    argv = [str(first), "--benchmarks", benchmark, "--source", f"{benchmark}={benchmark_sources[benchmark]}", "--out", str(out)]
    assert main(argv) == 0
    stored = out / _model_folder_name(str(first)) / f"{benchmark}.json"
    stored.write_text(edit(stored.read_text()))
    capsys.readouterr()
    assert main(argv) == 0
    assert f"{first}: {benchmark}: stored result {stored} does not read as one, recomputing\n" in capsys.readouterr().out
    assert "metrics" in json.loads(stored.read_text())


class _ColourEmbedder:
    """Embeds a PIL image as its mean colour and a caption by the colour it names; counts the images it embeds."""

    colours = {"red": [255.0, 0.0, 0.0], "blue": [0.0, 0.0, 255.0], "green": [0.0, 255.0, 0.0]}

    def __init__(self):
        self.images = 0

    def encode(self, processor, texts, images, batch_size):
        from modeling_maple.processing_maple import load_image

        self.images += len(images)
        pictures = [load_image(image, index) for index, image in enumerate(images)]
        means = np.array([np.asarray(picture, dtype=np.float32).mean(axis=(0, 1)) for picture in pictures])
        return torch.tensor([self.colours[text.split()[1]] for text in texts]), torch.tensor(means)


def test_an_image_listed_twice_is_embedded_once_and_relevant_to_the_captions_of_both():
    """By position, two copies of one image tied exactly, and ties count against the model: a perfect model could
    retrieve neither copy's captions first from the other copy, nor either copy first for them (i2t and t2i R@1 33
    here). As for captions, the copies are one image: each copy's captions are relevant to both."""
    from PIL import Image

    red, also_red, blue = (Image.new("RGB", (8, 8), colour) for colour in ("red", "red", "blue"))
    captions = [["a red square"], ["a red box"], ["a blue square"]]
    model = _ColourEmbedder()
    result = evaluate_retrieval(model, None, [red, also_red, blue], captions)
    assert (result["i2t_r1"], result["t2i_r1"], result["num_images"], result["num_captions"]) == (100.0, 100.0, 3, 3)
    assert model.images == 2
    # the dense metric with relevance by content: images 0 and 1 are one, so captions 0 and 1 are relevant to both
    scores = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert retrieval_recall(scores, [[0, 1], [0, 1], [2]])["recall@1"] == 100.0
    assert retrieval_recall(scores, [[0], [1], [2]])["recall@1"] == pytest.approx(100 / 3)  # by position


def test_a_benchmark_table_listing_one_image_twice_scores_it_as_one(tmp_path):
    from conftest import make_picture, write_parquet

    from evaluation.benchmarks import load_benchmark

    picture = make_picture(3)
    source = write_parquet(tmp_path / "coco.parquet", {
        "image": [picture, make_picture(4), picture],
        "caption": [["a red cat"], ["a blue cat"], ["a red dog"]],
    }, ("image",))
    coco = load_benchmark("coco", str(source))
    model = _ColourEmbedder()
    evaluate_retrieval(model, None, coco.images, coco.captions_per_image)
    assert model.images == 2
    # a column of file paths: two rows naming one file, and a copy of it, are one image
    picture.save(tmp_path / "a.png")
    make_picture(4).save(tmp_path / "b.png")
    (tmp_path / "copy_of_a.png").write_bytes((tmp_path / "a.png").read_bytes())
    paths = [str(tmp_path / name) for name in ("a.png", "b.png", "a.png", "copy_of_a.png")]
    source = write_parquet(tmp_path / "paths.parquet", {"image": paths, "caption": [["a red cat"]] * 4}, ())
    coco = load_benchmark("coco", str(source))
    model = _ColourEmbedder()
    evaluate_retrieval(model, None, coco.images, coco.captions_per_image)
    assert model.images == 2


def test_an_unreadable_image_of_a_retrieval_set_is_named_by_its_place_in_the_callers_list(tmp_path):
    """Distinct images are embedded, in a list of their own: the processor's index is mapped back to the caller's."""
    from PIL import Image

    picture = Image.new("RGB", (8, 8), "red")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match=rf"^images\[3\]: cannot read image file '{broken}'"):
        evaluate_retrieval(_ColourEmbedder(), None, [picture, picture, Image.new("RGB", (8, 8), "blue"), str(broken)],
                           [["a red a"], ["a red b"], ["a blue c"], ["a red d"]])


def test_nan_embeddings_are_named_by_their_place_in_the_callers_lists():
    """The protocols embed lists of their own (quadruples' texts and images interleaved, a retrieval set's distinct
    captions and images): a NaN embedding was named by its row there ("row 3"), not the text or image that gave it."""
    nan = float("nan")
    model = LookupEmbedder({"a": [1.0, 0.0], "b": [0.0, 1.0], "c": [1.0, 1.0], "d": [nan, 1.0]})
    with pytest.raises(ValueError, match=r"1 of the 4 distinct texts are not finite \(NaN or inf\): quadruples\[1\], text1;"):
        evaluate_quadruples(model, None, [([1.0, 0.0], [0.0, 1.0], "a", "b"), ([1.0, 0.0], [0.0, 1.0], "c", "d")])
    with pytest.raises(ValueError, match=r"1 of the 4 distinct images are not finite \(NaN or inf\): quadruples\[1\], image1;"):
        evaluate_quadruples(model, None, [([1.0, 0.0], [0.0, 1.0], "a", "b"), ([1.0, 0.0], [nan, 1.0], "c", "b")])
    # "d" is the fourth distinct caption, and the fifth caption given
    with pytest.raises(ValueError, match=r"1 of the 4 distinct texts are not finite \(NaN or inf\): captions_per_image\[2\]\[0\];"):
        evaluate_retrieval(model, None, [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], [["a", "b"], ["a", "c"], ["d"]])
    with pytest.raises(ValueError, match=r"1 of the 3 distinct images are not finite \(NaN or inf\): images\[2\];"):
        evaluate_retrieval(model, None, [[1.0, 0.0], [0.0, 1.0], [nan, 1.0]], [["a", "b"], ["a", "c"], ["c"]])


def test_nan_embeddings_are_counted_among_the_distinct_texts_and_images_embedded():
    """Copies are embedded once, and the count was of those: two quadruples (a, d), (a, d) with d NaN said "1 of the
    2 texts", of the 4 given. Likewise for a retrieval set's captions."""
    nan = float("nan")
    model = LookupEmbedder({"a": [1.0, 0.0], "d": [nan, 1.0]})
    with pytest.raises(ValueError, match=r"embeddings: 1 of the 2 distinct texts are not finite \(NaN or inf\): "
                                         r"quadruples\[0\], text1;"):
        evaluate_quadruples(model, None, [([1.0, 0.0], [0.0, 1.0], "a", "d")] * 2)
    with pytest.raises(ValueError, match=r"embeddings: 1 of the 2 distinct texts are not finite \(NaN or inf\): "
                                         r"captions_per_image\[0\]\[1\];"):
        evaluate_retrieval(model, None, [[1.0, 0.0], [0.0, 1.0]], [["a", "d"], ["d", "a"]])


def test_an_image_the_models_processor_refuses_is_named_by_its_file_row_and_column(benchmark_sources, tmp_path, capsys):
    """Qwen-VL image processors refuse an aspect ratio above 200:1; `maple eval` died with a traceback naming the
    image's place in the protocol's list (`images[1]`), not the benchmark file's row."""
    import datasets
    from PIL import Image

    from conftest import make_picture, write_parquet
    from evaluation.benchmarks import BenchmarkFormatError
    from modeling_maple.testing import build_tiny

    model, processor = build_tiny("mllm")
    checkpoint = tmp_path / "qwen"
    model.save_pretrained(checkpoint)
    processor.save_pretrained(checkpoint)
    wide = Image.new("RGB", (600, 2), "red")
    coco = datasets.Dataset.from_parquet(str(benchmark_sources["coco"])).to_dict()
    coco["image"] = [make_picture(0), wide, make_picture(2)]
    source = write_parquet(tmp_path / "coco.parquet", coco, ("image",))
    assert main([str(checkpoint), "--benchmarks", "coco", "--source", f"coco={source}", "--out", str(tmp_path / "eval")]) == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert error.startswith(f"maple eval: error: {source}: row 1, column 'image': aspect ratio 300:1 is above the 200:1")

    winoground = datasets.Dataset.from_parquet(str(benchmark_sources["winoground"])).to_dict()
    winoground["image_1"][2] = wide
    quadruples = load_benchmark("winoground", str(write_parquet(tmp_path / "wino.parquet", winoground, ("image_0", "image_1"))))
    with pytest.raises(BenchmarkFormatError, match=r"wino\.parquet: row 2, column 'image_1': aspect ratio 300:1"):
        evaluate_quadruples(model, processor, quadruples.quadruples, batch_size=2)
    with pytest.raises(ValueError, match=r"^quadruples\[0\], image1: aspect ratio 300:1"):  # a list: by its place in it
        evaluate_quadruples(model, processor, [(make_picture(0), wide, "a cat", "a dog")])


def test_a_compared_models_processor_saved_anew_before_it_runs_is_not_stored_under_the_new_files(
    tiny, benchmark_sources, tmp_path, monkeypatch
):
    """Every model's processor loads before the first model runs; its files' state was taken only when its turn came,
    so a processor saved anew in between (a training run saving into the folder) was scored with the old one and stored
    under the new files' state, and reused by the next run (found by a review of 238b3ed)."""
    import evaluation.cli as cli

    _, _, (first, second) = tiny
    a, b = tmp_path / "A", tmp_path / "B"
    shutil.copytree(first, a)
    shutil.copytree(second, b)
    sources = ["--source", f"winoground={benchmark_sources['winoground']}", "--benchmarks", "winoground"]
    evaluate_model = cli.evaluate_model

    def resaving_b_after_a(model_ref, *args, **kwargs):
        result = evaluate_model(model_ref, *args, **kwargs)
        if model_ref == str(a):
            config = json.loads((b / "processor_config.json").read_text())
            config["image_processor"] |= {"image_mean": [0.0, 0.0, 0.0], "image_std": [0.05, 0.05, 0.05]}
            (b / "processor_config.json").write_text(json.dumps(config, indent=2))
        return result

    monkeypatch.setattr(cli, "evaluate_model", resaving_b_after_a)
    assert main([str(a), "--compare", str(b), *sources, "--out", str(tmp_path / "eval")]) == 0
    monkeypatch.setattr(cli, "evaluate_model", evaluate_model)
    assert main([str(b), *sources, "--out", str(tmp_path / "eval")]) == 0  # B's processor changed: scored again
    assert main([str(b), *sources, "--out", str(tmp_path / "fresh")]) == 0
    scores = [json.loads((tmp_path / out / "results.json").read_text())[str(b)]["winoground"] for out in ("eval", "fresh")]
    assert scores[0] == scores[1]


def test_results_md_escapes_the_datas_categories_and_out_expands_a_tilde(tiny, benchmark_sources, tmp_path, monkeypatch):
    """A category holding `|` added a column to results.md, a line break split its row (the card escaped both); and
    `--out=~/evals`, which the shell leaves as typed, was a folder named `~` (found by a review)."""
    import datasets

    _, _, (first, _) = tiny
    table = datasets.load_dataset("parquet", data_files=str(benchmark_sources["winoground"]), split="train")
    tags = ["Ob|ject", "Relation\nX"] + table["collapsed_tag"][2:]
    table.remove_columns("collapsed_tag").add_column("collapsed_tag", tags).to_parquet(str(tmp_path / "wino.parquet"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    argv = [str(first), "--benchmarks", "winoground", "--source", "winoground=wino.parquet", "--out=~/evals"]
    assert main(argv + ["--batch-size", "4"]) == 0
    assert not (tmp_path / "~").exists()
    rows = [line for line in (tmp_path / "home" / "evals" / "results.md").read_text().splitlines() if line.startswith("|")]
    # model, benchmark, subset, text, image, group, Δgap: 8 unescaped bars a row
    assert {len(re.findall(r"(?<!\\)\|", line)) for line in rows} == {8}
    assert any("| ob\\|ject |" in line for line in rows) and any("| relation x |" in line for line in rows)
