"""Chunked retrieval vs the dense score matrix: peak extra memory and throughput as the corpus grows.

Each (method, size) runs in a fresh process so that its peak resident memory (ru_maxrss) is its
own; "extra MiB" is that peak minus the resident memory once the embeddings exist. Queries and
candidates are N random L2-normalised fp32 vectors of dimension D; relevant = the diagonal.

    OMP_NUM_THREADS=1 python benchmarks/bench_retrieval.py --sizes 10000 20000 50000 100000 --dense-max 20000
    OMP_NUM_THREADS=1 python benchmarks/bench_retrieval.py --sizes 5000 10000 20000 --repeats 3  # throughput

Methods:
  dense_matmul   queries @ candidates.T only (the throughput reference; N x N matrix)
  dense_ranks    the dense matrix + `evaluation.metrics.first_relevant_ranks`
  chunked_topk   `evaluation.retrieval.chunked_topk`, k = 10
  chunked_ranks  `evaluation.retrieval.chunked_ranks` (exact ranks -> recall@k, MRR)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import psutil
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from evaluation.metrics import first_relevant_ranks  # noqa: E402
from evaluation.retrieval import chunked_ranks, chunked_topk  # noqa: E402

METHODS = ("dense_matmul", "dense_ranks", "chunked_topk", "chunked_ranks")
DENSE_METHODS = ("dense_matmul", "dense_ranks")


def _run_method(method: str, size: int, dim: int, repeats: int) -> dict[str, float]:
    generator = torch.Generator().manual_seed(0)
    queries = torch.nn.functional.normalize(torch.randn(size, dim, generator=generator), dim=1)
    candidates = torch.nn.functional.normalize(torch.randn(size, dim, generator=generator), dim=1)
    relevant = list(range(size))
    resident_before = psutil.Process().memory_info().rss
    seconds = float("inf")
    for _ in range(repeats):  # the fastest repeat: the machine may be shared
        start = time.perf_counter()
        if method == "dense_matmul":
            queries @ candidates.T
        elif method == "dense_ranks":
            first_relevant_ranks(queries @ candidates.T, relevant)
        elif method == "chunked_topk":
            chunked_topk(queries, candidates, k=10)
        elif method == "chunked_ranks":
            chunked_ranks(queries, candidates, relevant)
        seconds = min(seconds, time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return {
        "method": method,
        "size": size,
        "dim": dim,
        "seconds": seconds,
        "pairs_per_second": size * size / seconds,
        "extra_mib": max(peak - resident_before, 0) / 2**20,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 20000, 50000, 100000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--dense-max", type=int, default=20000, help="largest N for the dense methods (N*N*4 bytes)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--repeats", type=int, default=1, help="time the fastest of this many runs")
    parser.add_argument("--single", action="store_true", help=argparse.SUPPRESS)  # child process mode
    args = parser.parse_args(argv)
    if args.single:
        print(json.dumps(_run_method(args.methods[0], args.sizes[0], args.dim, args.repeats)))
        return 0
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, D = {args.dim}, fp32, best of {args.repeats}")
    print("| method | N (queries = candidates) | seconds | M pairs / s | extra MiB |")
    print("|---|---|---|---|---|")
    for size in args.sizes:
        for method in args.methods:
            if method in DENSE_METHODS and size > args.dense_max:
                print(f"| {method} | {size:,} | - | - | {size * size * 4 / 2**20:,.0f} needed, skipped |")
                continue
            child = subprocess.run(
                [sys.executable, __file__, "--single", "--methods", method, "--sizes", str(size), "--dim", str(args.dim),
                 "--repeats", str(args.repeats)],
                check=True, capture_output=True, text=True,
            )
            row = json.loads(child.stdout)
            print(
                f"| {method} | {size:,} | {row['seconds']:.2f} | {row['pairs_per_second'] / 1e6:,.0f} | {row['extra_mib']:,.0f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
