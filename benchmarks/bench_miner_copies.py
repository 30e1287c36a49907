"""Hard-negative mining when many copies of one image are among the queries' nearest neighbours.

The copies count as one neighbour (duplicates of a better one are dropped), so a query short of k searches again.
`top_k_neighbours` searches again at depth k with the neighbours found and their duplicates excluded; an earlier
version doubled the depth until k remained, up to the number of copies. Queries are `--queries` random 768-d vectors
around one image, which is copied `--copies` times; random rows fill the corpus to `--corpus` rows, so that only the
number of copies changes from one size to the next.

    OMP_NUM_THREADS=1 python benchmarks/bench_miner_copies.py --copies 500 2000

Prints one JSON line per size: seconds of `top_k_neighbours(k=3)` over the queries (best of `--repeats`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from dataset_builders.miner import top_k_neighbours  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, nargs="+", default=[500, 2000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--corpus", type=int, default=5200, help="rows in all: queries, copies and random others")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(1, 768, generator=generator)
    queries = image + 0.8 * torch.randn(args.queries, 768, generator=generator)  # each query's nearest is a copy
    others = torch.randn(args.corpus, 768, generator=generator)
    for copies in args.copies:
        if args.queries + copies > args.corpus:
            parser.error(f"--corpus {args.corpus} holds fewer rows than --queries plus --copies {copies}")
        embeddings = torch.cat([queries, image.repeat(copies, 1), others[: args.corpus - args.queries - copies]])
        seconds = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            top_k_neighbours(embeddings, 3, query_rows=torch.arange(args.queries))
            seconds.append(time.perf_counter() - started)
        print(json.dumps({"copies": copies, "queries": args.queries, "corpus": len(embeddings),
                          "seconds": round(min(seconds), 3)}))


if __name__ == "__main__":
    main()
