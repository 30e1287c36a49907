"""Overhead of the MAPLE embedder over a bare backbone forward on the same inputs.

MAPLE adds prompt-free work around the backbone: pooling, projection, normalisation and the
similarity matrix. This measures `MapleModel.forward(texts + images)` against the backbone's own
forward calls on the very same tensors, alternating the two so machine noise hits both alike.

    python benchmarks/bench_embedder_overhead.py [--repeats 20] [--batch 16]
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import BertConfig, CLIPImageProcessorPil, CLIPVisionConfig  # noqa: E402

from modeling_maple import MapleConfig, MapleModel, MapleProcessor  # noqa: E402
from modeling_maple.testing import tiny_image_processor, tiny_qwen2_vl_config, tiny_tokenizer  # noqa: E402


def small_models() -> dict[str, tuple[MapleModel, MapleProcessor]]:
    """Backbones big enough that timings are not all Python overhead (a few million parameters)."""
    tokenizer = tiny_tokenizer()
    text_config = tiny_qwen2_vl_config().text_config.to_dict()
    del text_config["layer_types"]  # re-derived for the new depth
    mllm_config = tiny_qwen2_vl_config(
        text_config={**text_config, "hidden_size": 256, "intermediate_size": 1024,
                     "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 4,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]}},
        vision_config={**tiny_qwen2_vl_config().vision_config.to_dict(), "depth": 2, "embed_dim": 128, "hidden_size": 256,
                       "num_heads": 4},
    )
    mllm = MapleModel(MapleConfig(backbone="mllm", mllm_config=mllm_config)).eval()
    mllm_processor = MapleProcessor(tiny_image_processor(image_size=64), tokenizer, backbone="mllm")
    dual_config = MapleConfig(
        backbone="dual_encoder",
        vision_config=CLIPVisionConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=8,
                                       image_size=64, patch_size=8),
        text_config=BertConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                               num_attention_heads=8),
        projection_dim=256,
    )
    dual = MapleModel(dual_config).eval()
    dual_processor = MapleProcessor(
        CLIPImageProcessorPil(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}), tokenizer,
        backbone="dual_encoder",
    )
    return {"mllm (Qwen2-VL-style)": (mllm, mllm_processor), "dual_encoder (CLIP ViT + BERT)": (dual, dual_processor)}


def bare_backbone_forward(model: MapleModel, batch: dict) -> None:
    """The backbone calls MAPLE makes, with nothing around them."""
    if model.config.backbone == "mllm":
        model.mllm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
        model.mllm(input_ids=batch["image_input_ids"], attention_mask=batch["image_attention_mask"],
                   pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"],
                   mm_token_type_ids=batch["image_mm_token_type_ids"], use_cache=False)
    else:
        model.text_tower(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        model.vision_tower(pixel_values=batch["pixel_values"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(args.batch)]
    texts = [f"{n} red circles left of a blue square and a small yellow star" for n in range(args.batch)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch} texts + {args.batch} images")
    print("| backbone | bare backbone (ms) | MAPLE forward (ms) | ratio |\n|---|---|---|---|")
    for name, (model, processor) in small_models().items():
        batch = dict(processor(text=texts, images=images))
        bare, maple = [], []
        with torch.inference_mode():
            for _ in range(3):  # warm-up
                bare_backbone_forward(model, batch)
                model(**batch)
            for _ in range(args.repeats):
                start = time.perf_counter()
                bare_backbone_forward(model, batch)
                bare.append(time.perf_counter() - start)
                start = time.perf_counter()
                model(**batch)
                maple.append(time.perf_counter() - start)
        bare_ms, maple_ms = statistics.median(bare) * 1e3, statistics.median(maple) * 1e3
        print(f"| {name} | {bare_ms:.1f} | {maple_ms:.1f} | {maple_ms / bare_ms:.3f}x |")


if __name__ == "__main__":
    main()
