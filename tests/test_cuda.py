"""The CUDA paths, against the CPU: training in bf16 with evaluation, embedding, retrieval, mining and judging.

The rest of the suite runs with CUDA hidden (its expected values are float32 CPU numbers, see conftest.py), so on a
GPU machine run these with `MAPLE_TEST_CUDA=1 python -m pytest tests/test_cuda.py`; without a GPU they are skipped.
Tolerances allow for bf16 and for the TF32 convolutions that cuDNN uses by default.
"""

import math

import pytest
import torch

from dataset_builders.testing import thumbnail_miner, tiny_judge
from evaluation import evaluate_quadruples, evaluate_retrieval
from evaluation.retrieval import chunked_ranks, chunked_topk
from modeling_maple.testing import build_tiny
from trainer import RPATrainer
from trainer.testing import describe_scene, draw_scene, smoke_config, synthetic_preference_dataset

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (MAPLE_TEST_CUDA=1)")

TEXTS = ["a red square on the left", "a blue square on the right", "a green square on the left"]


@pytest.mark.parametrize("backbone", ["dual_encoder", "mllm"])
def test_trainer_trains_in_bf16_on_cuda_and_evaluates_retrieval_and_quadruples(backbone, tmp_path):
    model, processor = build_tiny(backbone, seed=0)
    args = smoke_config(str(tmp_path / "run"), per_device_train_batch_size=8, per_device_eval_batch_size=16,
                        max_steps=6, logging_steps=2, dataloader_num_workers=0)
    assert args.bf16, "the default on a bf16 GPU"
    quadruples = {"sides": [(draw_scene(colour, "left"), draw_scene(colour, "right"), describe_scene(colour, "left"),
                             describe_scene(colour, "right")) for colour in ("red", "blue")]}
    trainer = RPATrainer(model, args=args, train_dataset=synthetic_preference_dataset(32, seed=0),
                         eval_dataset=synthetic_preference_dataset(16, seed=1), processing_class=processor,
                         eval_quadruples=quadruples)
    trainer.train()
    assert next(trainer.model.parameters()).device.type == "cuda"
    metrics = trainer.evaluate()
    for key in ("eval_loss", "eval_recall@1/text_to_image", "eval_recall@1/image_to_text", "eval_sides/group_score"):
        assert math.isfinite(metrics[key]), (key, metrics)


@pytest.mark.parametrize("backbone", ["dual_encoder", "mllm"])
def test_encode_on_cuda_matches_the_cpu(backbone):
    model, processor = build_tiny(backbone, seed=1)
    images = [draw_scene(colour, side) for colour, side in (("red", "left"), ("blue", "right"), ("green", "left"))]
    on_cpu = model.encode(processor, texts=TEXTS, images=images)
    on_cuda = model.to("cuda").encode(processor, texts=TEXTS, images=images)
    for got, want in zip(on_cuda, on_cpu):
        assert got.device.type == "cpu" and got.dtype == torch.float32  # as documented, wherever the model is
        torch.testing.assert_close(got, want, atol=5e-3, rtol=0)


def test_evaluation_on_cuda_matches_the_cpu():
    model, processor = build_tiny("dual_encoder", seed=2)
    images = [draw_scene(colour, side) for colour in ("red", "blue", "green") for side in ("left", "right")]
    captions = [[describe_scene(colour, side)] for colour in ("red", "blue", "green") for side in ("left", "right")]
    quadruples = [(images[0], images[1], captions[0][0], captions[1][0]), (images[2], images[3], captions[2][0], captions[3][0])]
    on_cpu = evaluate_retrieval(model, processor, images, captions), evaluate_quadruples(model, processor, quadruples)
    model.to("cuda")
    on_cuda = evaluate_retrieval(model, processor, images, captions), evaluate_quadruples(model, processor, quadruples)
    assert on_cuda[0] == pytest.approx(on_cpu[0], abs=20.0)  # one of 6 queries may flip on a near tie
    assert on_cuda[1]["modality_gap"] == pytest.approx(on_cpu[1]["modality_gap"], rel=0.05)


def test_chunked_search_on_cuda_equals_the_cpu():
    embeddings = torch.nn.functional.normalize(torch.randn(300, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    queries, candidates = embeddings[:100].double(), embeddings[100:].double()  # float64: no rounding ties
    cpu_scores, cpu_indices = chunked_topk(queries, candidates, k=5, query_chunk=32, candidate_chunk=64)
    cuda_scores, cuda_indices = chunked_topk(queries.cuda(), candidates.cuda(), k=5, query_chunk=32, candidate_chunk=64)
    assert torch.equal(cuda_indices.cpu(), cpu_indices)
    torch.testing.assert_close(cuda_scores.cpu(), cpu_scores)
    relevant = list(range(100))
    assert torch.equal(chunked_ranks(queries.cuda(), candidates.cuda(), relevant).cpu(),
                       chunked_ranks(queries, candidates, relevant))


def test_miner_searches_on_cuda_like_on_the_cpu():
    """Random rows have no near ties (which GPU and CPU sums could order differently); rows 1 and 2 copy row 0, so
    the duplicate filter runs too."""
    embeddings = torch.randn(200, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    embeddings[1] = embeddings[2] = embeddings[0]
    cpu_miner, cuda_miner = thumbnail_miner(search_device="cpu"), thumbnail_miner(search_device="cuda")
    on_cpu, on_cuda = cpu_miner.mine(embeddings, k=3), cuda_miner.mine(embeddings, k=3)
    assert torch.equal(on_cuda.indices.cpu(), on_cpu.indices)
    assert not {1, 2} & set(on_cpu.indices[0].tolist())
    assert cuda_miner.deduplicate(embeddings, num_clusters=4, epsilon=0.01).kept.tolist() == \
        cpu_miner.deduplicate(embeddings, num_clusters=4, epsilon=0.01).kept.tolist()


def test_judge_in_bf16_on_cuda_is_close_to_float32_on_the_cpu():
    judge = tiny_judge(seed=0)
    images = [draw_scene("red", "left"), draw_scene("blue", "right")]
    candidates = [[describe_scene("red", "left"), describe_scene("red", "right")]] * 2
    on_cpu = judge.score(images, candidates)
    judge.model.to(device="cuda", dtype=torch.bfloat16)
    on_cuda = judge.score(images, candidates)
    for got, want in zip(on_cuda, on_cpu):
        assert got.device.type == "cpu"
        torch.testing.assert_close(got.float(), want.float(), atol=0.05, rtol=0)


def test_the_losses_see_float32_similarities_under_bf16_autocast_on_cuda(tmp_path, similarity_dtypes):
    """The GPU twin of test_trainer.py's check, which runs under CPU autocast: accelerate's bf16 autocast covers the
    model's forward only, so beta times a cosine is never computed from bfloat16 embeddings."""
    model, processor = build_tiny("mllm", seed=0)
    args = smoke_config(str(tmp_path / "run"), per_device_train_batch_size=4, max_steps=1, dataloader_num_workers=0)
    trainer = RPATrainer(model, args=args, train_dataset=synthetic_preference_dataset(8, seed=0),
                         processing_class=processor)
    assert trainer.accelerator.mixed_precision == "bf16"
    trainer.train()
    assert similarity_dtypes == [(torch.float32,) * 4 + (False,)]
