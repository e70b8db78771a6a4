"""Exact inner-product search through faiss against the same process's sgemm speed.

faiss answers ``k``-nearest queries with an sgemm per block of queries and database
vectors followed by a top-k pass over each block of scores; its GFLOP/s (counting
only the ``2 * nq * nb * d`` of the products) is compared with numpy's float32
matmul over the same matrices, tiled into blocks of queries x database vectors
(faiss's own tiling and larger ones). Query batch sizes (how many queries go to
faiss per call) and faiss's database block size are swept; the best of each side
is reported, so the ratio is faiss's best against the best sgemm seen.

    python benchmarks/bench_exact.py                 # 100k x 256 database, 10k queries, k=40
    python benchmarks/bench_exact.py --threads 2
"""

from __future__ import annotations

import argparse
import os
import time


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--k", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--query-batches", default="1024,4096,10000",
                        help="comma-separated queries per faiss call")
    parser.add_argument("--database-blocks", default="1024,4096,16384",
                        help="comma-separated faiss distance_compute_blas_database_bs values")
    parser.add_argument("--sgemm-tiles", default="4096x1024,4096x4096,1024x16384,1024x100000",
                        help="comma-separated QUERIESxDATABASE tiles for the numpy sgemm reference")
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs per setting")
    return parser.parse_args()


ARGS = parse_args()
for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[variable] = str(ARGS.threads)  # before numpy and faiss load their thread pools

import vprflow  # noqa: E402,F401  before faiss: picks the OpenBLAS kernels faiss uses (vprflow.blas)
import faiss  # noqa: E402
import numpy as np  # noqa: E402

faiss.omp_set_num_threads(ARGS.threads)


def best_seconds(function) -> float:
    best = float("inf")
    for _ in range(ARGS.repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def faiss_search(queries: np.ndarray, index: faiss.Index, batch: int) -> None:
    for start in range(0, len(queries), batch):
        index.search(queries[start : start + batch], ARGS.k)


def sgemm(queries: np.ndarray, database: np.ndarray, scores: np.ndarray) -> None:
    """All query-database products, one ``scores``-shaped tile at a time."""
    rows, columns = scores.shape
    for start in range(0, len(queries), rows):
        block = queries[start : start + rows]
        for first in range(0, len(database), columns):
            part = database[first : first + columns]
            np.matmul(block, part.T, out=scores[: len(block), : len(part)])


def main() -> None:
    rng = np.random.default_rng(0)
    database = rng.standard_normal((ARGS.database, ARGS.dim), dtype=np.float32)
    queries = rng.standard_normal((ARGS.queries, ARGS.dim), dtype=np.float32)
    gflop = 2.0 * ARGS.queries * ARGS.database * ARGS.dim / 1e9
    print(f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset: detected by OpenBLAS)')}")
    print(f"database {ARGS.database} x {ARGS.dim}, {ARGS.queries} queries, k={ARGS.k}, "
          f"threads={ARGS.threads}, {gflop:.0f} GFLOP per pass, best of {ARGS.repeats}")

    index = faiss.IndexFlatIP(ARGS.dim)
    index.add(database)
    sgemm_rates = {}
    for tile in ARGS.sgemm_tiles.split(","):
        rows, columns = (int(v) for v in tile.split("x"))
        scores = np.zeros((min(rows, ARGS.queries), min(columns, ARGS.database)), np.float32)  # touched once
        sgemm_rates[tile] = gflop / best_seconds(lambda: sgemm(queries, database, scores))
        print(f"numpy sgemm, tiles of {tile}: {sgemm_rates[tile]:.1f} GFLOP/s", flush=True)
        del scores
    reference = max(sgemm_rates.values())

    batches = [int(b) for b in ARGS.query_batches.split(",")]
    faiss_rates = {}
    for block in (int(b) for b in ARGS.database_blocks.split(",")):
        faiss.cvar.distance_compute_blas_database_bs = block
        for batch in batches:
            faiss_rates[block, batch] = gflop / best_seconds(lambda: faiss_search(queries, index, batch))
            print(f"faiss IndexFlatIP, database block {block}, {batch} queries per call: "
                  f"{faiss_rates[block, batch]:.1f} GFLOP/s ({faiss_rates[block, batch] / reference:.2f} of sgemm)",
                  flush=True)
    (block, batch), rate = max(faiss_rates.items(), key=lambda item: item[1])
    print(f"best faiss: {rate:.1f} GFLOP/s (database block {block}, {batch} queries per call); "
          f"best sgemm: {reference:.1f} GFLOP/s; ratio {rate / reference:.2f}")


if __name__ == "__main__":
    main()
