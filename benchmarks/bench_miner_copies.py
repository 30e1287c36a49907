"""Hard-negative mining when many copies of one image are among the queries' nearest neighbours.

The copies count as one neighbour (duplicates of a better one are dropped), so a query short of k searches again.
`top_k_neighbours` searches again at depth k with the neighbours found and their duplicates excluded; an earlier
version doubled the depth until k remained, up to the number of copies. Queries are `--queries` random 768-d vectors
around one image, which is copied `--copies` times; `--others` random rows fill the corpus.

    OMP_NUM_THREADS=1 python benchmarks/bench_miner_copies.py --copies 500 2000

Prints one JSON line per size: seconds of `top_k_neighbours(k=3)` over the queries (best of `--repeats`).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from dataset_builders.miner import top_k_neighbours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, nargs="+", default=[500, 2000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--others", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(1, 768, generator=generator)
    queries = image + 0.8 * torch.randn(args.queries, 768, generator=generator)  # each query's nearest is a copy
    others = torch.randn(args.others, 768, generator=generator)
    for copies in args.copies:
        embeddings = torch.cat([queries, image.repeat(copies, 1), others])
        seconds = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            top_k_neighbours(embeddings, 3, query_rows=torch.arange(args.queries))
            seconds.append(time.perf_counter() - started)
        print(json.dumps({"copies": copies, "queries": args.queries, "seconds": round(min(seconds), 3)}))


if __name__ == "__main__":
    main()
