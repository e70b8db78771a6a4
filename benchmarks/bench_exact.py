"""Exact inner-product search through faiss against the same process's sgemm speed.

faiss answers ``k``-nearest queries with an sgemm per block of queries and database
vectors followed by a top-k pass over each block of scores; its GFLOP/s (counting
only the ``2 * nq * nb * d`` of the products) is compared with numpy's float32
matmul over the same matrices, tiled into blocks of queries x database vectors
(faiss's own tiling and larger ones). Query batch sizes (how many queries go to
faiss per call) and faiss's database block size are swept. Every setting, sgemm
and faiss alike, runs once per round, in turns, for ``--repeats`` rounds, so both sides
see the same machine load; per setting the best and the median round are reported (wall
time, and CPU time, which other work on a shared machine disturbs less). The verdict is
faiss's best setting against the best sgemm tiling: over the best times, and round by
round (min and median of the per-round ratios).

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
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each runs every setting once, in turns")
    return parser.parse_args()


ARGS = parse_args()
for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[variable] = str(ARGS.threads)  # before numpy and faiss load their thread pools

import vprflow  # noqa: E402,F401  before faiss: picks the OpenBLAS kernels faiss uses (vprflow.blas)
import faiss  # noqa: E402
import numpy as np  # noqa: E402

faiss.omp_set_num_threads(ARGS.threads)


def timed(function) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu


def in_turns(functions: dict, repeats: int) -> dict[object, np.ndarray]:
    """Per key, the ``[repeats, 2]`` wall and CPU seconds of its function, each round
    calling every function once, in turns (so all see the same machine load)."""
    seconds = {key: [] for key in functions}
    for round_ in range(repeats):
        for key, function in functions.items():
            seconds[key].append(timed(function))
        print(f"round {round_ + 1} of {repeats} done", flush=True)
    return {key: np.array(values) for key, values in seconds.items()}


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
          f"threads={ARGS.threads}, {gflop:.0f} GFLOP per pass, {ARGS.repeats} rounds in turns")

    index = faiss.IndexFlatIP(ARGS.dim)
    index.add(database)
    tiles = [tuple(min(int(v), limit) for v, limit in zip(tile.split("x"), (ARGS.queries, ARGS.database)))
             for tile in ARGS.sgemm_tiles.split(",")]
    buffer = np.zeros(max(rows * columns for rows, columns in tiles), np.float32)  # touched once, shared by tiles
    functions = {("sgemm", tile): (lambda t=tile: sgemm(queries, database, buffer[: t[0] * t[1]].reshape(t)))
                 for tile in tiles}

    def faiss_setting(block: int, batch: int):
        def run() -> None:
            faiss.cvar.distance_compute_blas_database_bs = block
            faiss_search(queries, index, batch)
        return run

    for block in (int(b) for b in ARGS.database_blocks.split(",")):
        for batch in (int(b) for b in ARGS.query_batches.split(",")):
            functions["faiss", (block, batch)] = faiss_setting(block, batch)
    seconds = in_turns(functions, ARGS.repeats)

    print("GFLOP/s: best round / median round, wall time (CPU time)")
    for (kind, setting), times in seconds.items():
        wall, cpu = times[:, 0], times[:, 1]
        name = f"numpy sgemm, tiles of {setting[0]}x{setting[1]}" if kind == "sgemm" else \
            f"faiss IndexFlatIP, database block {setting[0]}, {setting[1]} queries per call"
        print(f"{name}: {gflop / wall.min():.1f} / {gflop / np.median(wall):.1f} "
              f"({gflop / cpu.min():.1f} / {gflop / np.median(cpu):.1f})", flush=True)

    def best(kind: str, column: int) -> tuple[object, np.ndarray]:
        """The setting of ``kind`` with the lowest best time, and its times per round."""
        setting = min((s for k, s in seconds if k == kind), key=lambda s: seconds[kind, s][:, column].min())
        return setting, seconds[kind, setting][:, column]

    for column, clock in ((0, "wall"), (1, "CPU")):
        (block, batch), faiss_times = best("faiss", column)
        tile, sgemm_times = best("sgemm", column)
        per_round = sgemm_times / faiss_times  # faiss's rate over sgemm's, round by round
        print(f"{clock}: best faiss {gflop / faiss_times.min():.1f} GFLOP/s (database block {block}, {batch} queries "
              f"per call); best sgemm {gflop / sgemm_times.min():.1f} GFLOP/s (tiles {tile[0]}x{tile[1]}); "
              f"ratio of bests {sgemm_times.min() / faiss_times.min():.2f}; per round min "
              f"{per_round.min():.2f}, median {np.median(per_round):.2f}")


if __name__ == "__main__":
    main()
