"""LOPQ against faiss OPQ-IVF-PQ at equal code bytes: recall@10 and query time.

Default: 100k x 128 synthetic clustered vectors (each cluster with its own random
orientation and a decaying spectrum, the structure LOPQ's local rotations are
made for), 1000 held-out queries. Recall@10 is measured against exact L2 search.
Both indexes scan about the same number of database vectors at each operating
point: LOPQ's candidate budget ``c`` is paired with ``nprobe = c * nlist / n``.

    python benchmarks/bench_lopq.py                       # 100k synthetic comparison
    python benchmarks/bench_lopq.py --features f.npy      # rows of a feature matrix,
                                                          # L2-normalised, last rows as queries
    python benchmarks/bench_lopq.py --million             # LOPQ build + 10k queries on 1M x 128

Threads (numpy BLAS and faiss OpenMP) default to 1 so timings compare like with like.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", help="float32 .npy feature matrix instead of synthetic data")
    parser.add_argument("--million", action="store_true", help="1M x 128 LOPQ build and 10k queries")
    parser.add_argument("--n", type=int, default=100_000, help="database size (synthetic)")
    parser.add_argument("--dim", type=int, default=128, help="dimension (synthetic)")
    parser.add_argument("--clusters", type=int, default=1000, help="Gaussian clusters (synthetic)")
    parser.add_argument("--center-scale", type=float, default=0.05,
                        help="std of the cluster centres (synthetic); smaller = more overlap")
    parser.add_argument("--spectrum-decay", type=float, default=0.75,
                        help="within-cluster std of direction i is 0.5 * i**-decay (synthetic)")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--m", type=int, default=16, help="code bytes (subquantizers) for both indexes")
    parser.add_argument("--coarse-k", type=int, default=256, help="LOPQ centroids per half")
    parser.add_argument("--nlist", type=int, default=1024, help="faiss IVF lists")
    parser.add_argument("--candidates", default="500,1000,2000,4000,8000",
                        help="comma-separated LOPQ candidate budgets")
    parser.add_argument("--train-size", type=int, default=100_000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3,
                        help="query timings are the best of this many runs, LOPQ and faiss alternating")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


ARGS = parse_args()
for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[variable] = str(ARGS.threads)  # before numpy and faiss load their thread pools

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from vprflow.search.lopq import LOPQIndex  # noqa: E402

faiss.omp_set_num_threads(ARGS.threads)


def clustered_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    """Overlapping Gaussian clusters, each with its own random rotation of a decaying spectrum."""
    rng = np.random.default_rng(seed)
    clusters = ARGS.clusters
    centers = rng.normal(size=(clusters, dim)).astype(np.float32) * ARGS.center_scale
    spectrum = (np.arange(1, dim + 1) ** -ARGS.spectrum_decay).astype(np.float32) * 0.5
    labels = rng.integers(clusters, size=n)
    out = np.empty((n, dim), np.float32)
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(clusters + 1))
    for cluster in range(clusters):
        members = order[bounds[cluster] : bounds[cluster + 1]]
        rotation = np.linalg.qr(rng.normal(size=(dim, dim)))[0].astype(np.float32)
        noise = rng.normal(size=(len(members), dim)).astype(np.float32) * spectrum
        out[members] = noise @ rotation + centers[cluster]
    return out


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the true k nearest neighbours that were returned."""
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth))
    return hits / truth.size


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def load_data() -> tuple[np.ndarray, np.ndarray, str]:
    if ARGS.features:
        features = np.load(ARGS.features).astype(np.float32)
        features /= np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
        if len(features) <= ARGS.queries:
            sys.exit(f"{ARGS.features}: {len(features)} rows, need more than --queries={ARGS.queries}")
        return features[: -ARGS.queries], features[-ARGS.queries :], f"{ARGS.features} (L2-normalised)"
    n = 1_000_000 if ARGS.million else ARGS.n
    vectors = clustered_vectors(n + ARGS.queries, ARGS.dim, ARGS.seed)
    return vectors[:n], vectors[n:], (f"synthetic {ARGS.clusters} clusters, centre std {ARGS.center_scale}, "
                                      f"spectrum decay {ARGS.spectrum_decay}")


def train_subset(database: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(ARGS.seed + 1)
    size = min(ARGS.train_size, len(database))
    return database[np.sort(rng.choice(len(database), size, replace=False))]


def build_lopq(database: np.ndarray) -> tuple[LOPQIndex, float, float]:
    index, train_seconds = timed(LOPQIndex.train, train_subset(database), ARGS.coarse_k, ARGS.m, seed=ARGS.seed)
    _, add_seconds = timed(index.add, database)
    return index, train_seconds, add_seconds


def compare() -> None:
    database, queries, source = load_data()
    n, dim = database.shape
    print(f"data: {source}, database {n} x {dim}, {len(queries)} queries, k={ARGS.k}, threads={ARGS.threads}")
    _, truth = faiss.knn(queries, database, ARGS.k)

    lopq, lopq_train, lopq_add = build_lopq(database)
    factory = f"OPQ{ARGS.m},IVF{ARGS.nlist},PQ{ARGS.m}"
    ivf = faiss.index_factory(dim, factory)
    _, faiss_train = timed(ivf.train, train_subset(database))
    _, faiss_add = timed(ivf.add, database)
    faiss_bytes = ARGS.m + (int(np.ceil(np.log2(ARGS.nlist))) + 7) // 8
    print(f"LOPQ  K={ARGS.coarse_k}x{ARGS.coarse_k} cells, m={ARGS.m}: {lopq.bytes_per_vector} bytes/vector "
          f"({ARGS.m} code + cell id), train {lopq_train:.1f} s, add {lopq_add:.1f} s")
    print(f"faiss {factory}: {faiss_bytes} bytes/vector ({ARGS.m} code + list id), "
          f"train {faiss_train:.1f} s, add {faiss_add:.1f} s")

    header = ("candidates", "nprobe", "LOPQ R@10", "faiss R@10", "R ratio", "LOPQ ms/q", "faiss ms/q", "t ratio")
    print(" ".join(f"{h:>10}" for h in header))
    ivf_parameters = faiss.extract_index_ivf(ivf)
    for budget in (int(c) for c in ARGS.candidates.split(",")):
        nprobe = max(1, round(budget * ARGS.nlist / n))
        ivf_parameters.nprobe = nprobe
        lopq_seconds = faiss_seconds = float("inf")
        for _ in range(ARGS.repeats):  # alternate so both see the same machine load
            (_, lopq_ids), seconds = timed(lopq.search, queries, ARGS.k, candidates=budget)
            lopq_seconds = min(lopq_seconds, seconds)
            (_, faiss_ids), seconds = timed(ivf.search, queries, ARGS.k)
            faiss_seconds = min(faiss_seconds, seconds)
        lopq_recall, faiss_recall = recall_at(lopq_ids, truth), recall_at(faiss_ids, truth)
        lopq_ms, faiss_ms = 1000 * lopq_seconds / len(queries), 1000 * faiss_seconds / len(queries)
        row = (budget, nprobe, f"{lopq_recall:.3f}", f"{faiss_recall:.3f}", f"{lopq_recall / faiss_recall:.2f}",
               f"{lopq_ms:.3f}", f"{faiss_ms:.3f}", f"{lopq_ms / faiss_ms:.2f}")
        print(" ".join(f"{v:>10}" for v in row), flush=True)
    (_, reranked), seconds = timed(lopq.search, queries, ARGS.k, candidates=budget, rerank=10 * ARGS.k,
                                   vectors=database)
    print(f"LOPQ candidates={budget} + exact rerank of {10 * ARGS.k}: R@10 {recall_at(reranked, truth):.3f}, "
          f"{1000 * seconds / len(queries):.3f} ms/q")
    print(f"peak RSS {peak_rss_gib():.2f} GiB")


def million() -> None:
    database, queries, source = load_data()
    queries = queries[: ARGS.queries]
    print(f"data: {source}, database {database.shape[0]} x {database.shape[1]}, {len(queries)} queries, "
          f"threads={ARGS.threads}; RSS with data {peak_rss_gib():.2f} GiB")
    train = train_subset(database)
    lopq, train_seconds = timed(LOPQIndex.train, train, ARGS.coarse_k, ARGS.m, seed=ARGS.seed)
    del train
    print(f"train ({ARGS.train_size} vectors, K={ARGS.coarse_k}, m={ARGS.m}) {train_seconds:.1f} s, "
          f"peak RSS {peak_rss_gib():.2f} GiB", flush=True)
    _, add_seconds = timed(lopq.add, database)
    print(f"add {len(database)} vectors {add_seconds:.1f} s, {lopq.bytes_per_vector} bytes/vector, "
          f"peak RSS {peak_rss_gib():.2f} GiB", flush=True)
    (_, truth), truth_seconds = timed(faiss.knn, queries, database, ARGS.k)
    print(f"exact ground truth (faiss.knn) {truth_seconds:.1f} s", flush=True)
    for budget in (int(c) for c in ARGS.candidates.split(",")):
        (_, ids), seconds = timed(lopq.search, queries, ARGS.k, candidates=budget)
        print(f"candidates={budget}: R@10 {recall_at(ids, truth):.3f}, {1000 * seconds / len(queries):.3f} ms/q, "
              f"total {seconds:.1f} s", flush=True)
    print(f"peak RSS {peak_rss_gib():.2f} GiB")


if __name__ == "__main__":
    if ARGS.million:
        million()
    else:
        compare()
