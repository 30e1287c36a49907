"""Cost of `vlm_inputs.weights_digest`, which the preference builder's manifest reads for every model.

Builds a random Qwen2 language model of the Qwen2-0.5B shape (width 896, 24 layers, 152k vocabulary: about
630 M parameters, bf16) and times
the digest, best of `--repeats`. The digest reads 1,024 strided values per tensor, so its cost follows the
number of tensors, not their size.

    OMP_NUM_THREADS=1 python benchmarks/bench_weights_digest.py
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402
from transformers import Qwen2Config, Qwen2ForCausalLM  # noqa: E402

from dataset_builders.vlm_inputs import weights_digest  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=24, help="decoder layers (Qwen2-0.5B: 24)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    config = Qwen2Config(
        hidden_size=896, intermediate_size=4864, num_hidden_layers=args.layers, num_attention_heads=14,
        num_key_value_heads=2, vocab_size=151936,
    )
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    parameters = sum(parameter.numel() for parameter in model.parameters())
    tensors = len(model.state_dict())
    seconds = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        weights_digest(model)
        seconds.append(time.perf_counter() - started)
    print(f"{parameters / 1e6:.0f} M parameters in {tensors} tensors: weights_digest {min(seconds) * 1000:.1f} ms (best of {args.repeats})")


if __name__ == "__main__":
    main()
