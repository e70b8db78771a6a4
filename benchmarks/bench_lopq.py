"""LOPQ (both coarse quantizers) against faiss OPQ-IVF-PQ at equal code bytes: recall@10 and query time.

Default: 100k x 128 synthetic vectors from overlapping Gaussian clusters (each
with its own random orientation and a decaying spectrum), 1000 held-out queries.
Recall@10 is measured against exact L2 search. Every index uses ``m``-byte PQ
codes; the cell (LOPQ) or list (IVF) id is counted in bytes per vector as if
stored (2 bytes for up to 65536 cells). LOPQ runs with its inverted multi-index
(``--coarse-k`` centroids per half) and with its IVF coarse quantizer
(``--ivf-k`` cells); faiss is ``OPQ{m},IVF{nlist},PQ{m}``. All train on the same
sample (``--train-size``). Each index is swept over its own knob (LOPQ: the
candidate budget; faiss: nprobe), every setting timed as the best of ``--repeats``
runs taken in turns with all the others, so all see the same machine. The verdict
pairs each faiss setting with the cheapest budget of each LOPQ variant whose recall
is at least as high (matched recall), and with the cheaper of the two ("best"),
and prints the ratios of their query times (CPU time: least disturbed by other
work on a shared machine).

    python benchmarks/bench_lopq.py                       # 100k synthetic comparison
    python benchmarks/bench_lopq.py --features f.npy      # rows of a feature matrix,
                                                          # L2-normalised, last rows as queries
    python benchmarks/bench_lopq.py --million             # the same at 1M x 128 (IVF4096, 5000 queries)
    python benchmarks/bench_lopq.py --variants ivf        # one LOPQ variant only
    python benchmarks/bench_lopq.py --stages              # multi-index LOPQ query time split by stage

Threads (numpy BLAS and faiss OpenMP) default to 1 so timings compare like with like.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import sys
import time


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", help="float32 .npy feature matrix instead of synthetic data")
    parser.add_argument("--million", action="store_true",
                        help="1M x 128 database, 5000 queries, IVF4096 for faiss and LOPQ's IVF, 300k training vectors")
    parser.add_argument("--stages", action="store_true",
                        help="LOPQ only: microseconds per query in each search stage, at each budget")
    parser.add_argument("--n", type=int, default=100_000, help="database size (synthetic)")
    parser.add_argument("--dim", type=int, default=128, help="dimension (synthetic)")
    parser.add_argument("--clusters", type=int, default=1000, help="Gaussian clusters (synthetic)")
    parser.add_argument("--center-scale", type=float, default=0.05,
                        help="std of the cluster centres (synthetic); smaller = more overlap")
    parser.add_argument("--spectrum-decay", type=float, default=0.75,
                        help="within-cluster std of direction i is 0.5 * i**-decay (synthetic)")
    parser.add_argument("--queries", type=int, help="held-out queries (default 1000, --million 5000)")
    parser.add_argument("--m", type=int, default=16, help="code bytes (subquantizers) for both indexes")
    parser.add_argument("--variants", default="multi_index,ivf", help="LOPQ coarse quantizers to run")
    parser.add_argument("--coarse-k", type=int, default=256, help="LOPQ multi-index: centroids per half")
    parser.add_argument("--ivf-k", type=int, help="LOPQ IVF cells (default: --nlist)")
    parser.add_argument("--nlist", type=int, help="faiss IVF lists (default 1024, --million 4096)")
    parser.add_argument("--candidates", default="50,60,75,90,100,115,130,150,170,195,220,250,280,320,360,400,450,500,"
                                                  "550,620,700,800,900,1000,1200,1400,1700,2000,2400,2800,3400,4000",
                        help="comma-separated LOPQ candidate budgets")
    parser.add_argument("--nprobes", default="1,2,3,4,5,6,8,10,12,16,20,24,32,48",
                        help="comma-separated faiss nprobe settings")
    parser.add_argument("--rerank", type=int, default=100, help="shortlist re-ranked exactly in the +rerank column")
    parser.add_argument("--train-size", type=int, help="training sample of every index (default 100k, --million 300k)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3,
                        help="query timings are the best of this many runs, LOPQ and faiss alternating")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


ARGS = parse_args()
ARGS.nlist = ARGS.nlist or (4096 if ARGS.million else 1024)
ARGS.ivf_k = ARGS.ivf_k or ARGS.nlist
ARGS.train_size = ARGS.train_size or (300_000 if ARGS.million else 100_000)
for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[variable] = str(ARGS.threads)  # before numpy and faiss load their thread pools

import vprflow  # noqa: E402,F401  before faiss: picks the OpenBLAS kernels faiss uses (vprflow.blas)
import faiss  # noqa: E402
import numpy as np  # noqa: E402

from vprflow.search.lopq import kernels as lopq_kernels  # noqa: E402
from vprflow.search.lopq.index import LOPQIndex  # noqa: E402
from vprflow.search.lopq.ivf import IVFLOPQIndex  # noqa: E402

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
    """``(result, wall seconds, CPU seconds)``: CPU time is less disturbed by other
    work on a shared machine; with one thread it equals wall time on an idle one."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def best_timed(repeats: int, *functions):
    """Run ``functions`` in turn ``repeats`` times; per function the last result and
    the best wall and CPU seconds (alternating so all see the same machine load)."""
    best = [[None, float("inf"), float("inf")] for _ in functions]
    for _ in range(repeats):
        for slot, function in zip(best, functions):
            result, wall, cpu = timed(function)
            slot[:] = [result, min(slot[1], wall), min(slot[2], cpu)]
    return best


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def array_mib(index) -> float:
    """Memory held by the index's arrays (model and encoded database)."""
    return sum(v.nbytes for v in vars(index).values() if isinstance(v, np.ndarray)) / 2**20


def load_data() -> tuple[np.ndarray, np.ndarray, str]:
    n_queries = ARGS.queries or (5000 if ARGS.million else 1000)
    if ARGS.features:
        features = np.load(ARGS.features).astype(np.float32)
        features /= np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
        if len(features) <= n_queries:
            sys.exit(f"{ARGS.features}: {len(features)} rows, need more than --queries={n_queries}")
        return features[:-n_queries], features[-n_queries:], f"{ARGS.features} (L2-normalised)"
    n = 1_000_000 if ARGS.million else ARGS.n
    vectors = clustered_vectors(n + n_queries, ARGS.dim, ARGS.seed)
    return vectors[:n], vectors[n:], (f"synthetic {ARGS.clusters} clusters, centre std {ARGS.center_scale}, "
                                      f"spectrum decay {ARGS.spectrum_decay}")


def train_subset(database: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(ARGS.seed + 1)
    size = min(ARGS.train_size, len(database))
    return database[np.sort(rng.choice(len(database), size, replace=False))]


def budgets() -> list[int]:
    return [int(c) for c in ARGS.candidates.split(",")]


def nprobes() -> list[int]:
    return [int(p) for p in ARGS.nprobes.split(",")]


def scanned_per_query(index: LOPQIndex, queries: np.ndarray, budget: int) -> float:
    """Database vectors LOPQ scores per query at ``budget`` (whole cells: a few more)."""
    halves = [np.ascontiguousarray(queries[:, h * index.half_dim : (h + 1) * index.half_dim]) for h in range(2)]
    keys = [lopq_kernels.sorted_centroids(index._coarse_distances(halves[h], h)) for h in range(2)]
    _, _, cells, taken = lopq_kernels.select_cells(*keys, index._cell_sizes, budget)
    return sum(index._cell_sizes[cells[q, : taken[q]]].sum() for q in range(len(queries))) / len(queries)


def lopq_errors(index: LOPQIndex, x: np.ndarray) -> tuple[float, float]:
    """Mean squared residual of ``x`` after the multi-index, and after decoding its codes."""
    cells, codes = index._encode(x)
    coarse_error = code_error = 0.0
    for h, centroid in enumerate(np.divmod(cells, index.coarse_k)):
        residual = x[:, h * index.half_dim : (h + 1) * index.half_dim] - index.coarse_centroids[h][centroid]
        coarse_error += float(np.mean((residual**2).sum(1)))
        half_codes = codes[:, h * index.half_m : (h + 1) * index.half_m]
        local = index.codebooks[h, np.arange(index.half_m), half_codes].reshape(len(x), -1)
        decoded = np.einsum("ne,nde->nd", local, index.rotations[h, centroid]) + index.local_means[h, centroid]
        code_error += float(np.mean(((residual - decoded) ** 2).sum(1)))
    return coarse_error, code_error


def ivf_lopq_errors(index: IVFLOPQIndex, x: np.ndarray) -> tuple[float, float]:
    """The same for LOPQ's IVF coarse quantizer."""
    cells, codes = index._encode(x)
    residual = x - index.centroids[cells]
    local = index.codebooks[np.arange(index.m), codes].reshape(len(x), -1)
    decoded = np.einsum("ne,nde->nd", local, index.rotations[cells]) + index.local_means[cells]
    return float(np.mean((residual**2).sum(1))), float(np.mean(((residual - decoded) ** 2).sum(1)))


def faiss_errors(index, x: np.ndarray) -> tuple[float, float]:
    """The same for ``OPQ,IVF,PQ`` (the OPQ rotation keeps distances)."""
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    rotated = faiss.downcast_VectorTransform(index.chain.at(0)).apply(x)
    _, lists = ivf.quantizer.search(rotated, 1)
    residual = rotated - ivf.quantizer.reconstruct_n(0, ivf.nlist)[lists[:, 0]]
    decoded = ivf.pq.decode(ivf.pq.compute_codes(residual))
    return float(np.mean((residual**2).sum(1))), float(np.mean(((residual - decoded) ** 2).sum(1)))


def build_lopq(variant: str, train: np.ndarray, database: np.ndarray):
    """(index, description, train seconds, add seconds) of one LOPQ variant."""
    if variant == "ivf":
        index, train_s, _ = timed(IVFLOPQIndex.train, train, ARGS.ivf_k, ARGS.m, seed=ARGS.seed)
        described = f"LOPQ ivf {ARGS.ivf_k} cells"
    else:
        index, train_s, _ = timed(LOPQIndex.train, train, ARGS.coarse_k, ARGS.m, seed=ARGS.seed)
        described = f"LOPQ multi_index {ARGS.coarse_k}x{ARGS.coarse_k} cells"
    _, add_s, _ = timed(index.add, database)
    return index, described, train_s, add_s


def scanned_per_query_ivf(index: IVFLOPQIndex, queries: np.ndarray, budget: int) -> float:
    """Database vectors LOPQ's IVF scores per query at ``budget`` (whole cells: a few more)."""
    cells, taken = lopq_kernels.select_lists(queries, index.centroids, index._centroid_norms, index._cell_sizes,
                                             budget)
    return sum(index._cell_sizes[cells[q, : taken[q]]].sum() for q in range(len(queries))) / len(queries)


def compare() -> None:
    database, queries, source = load_data()
    n, dim = database.shape
    variants = ARGS.variants.split(",")
    print(f"data: {source}, database {n} x {dim}, {len(queries)} queries, k={ARGS.k}, threads={ARGS.threads}, "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}", flush=True)
    (_, truth), truth_s, _ = timed(faiss.knn, queries, database, ARGS.k)
    train = train_subset(database)
    print(f"exact ground truth in {truth_s:.1f} s; every index trains on {len(train)} vectors", flush=True)

    lopq = {}
    sample = database[np.random.default_rng(ARGS.seed + 2).choice(n, min(n, 5000), replace=False)]
    print(f"per vector, on {len(sample)} database vectors with energy {np.mean((sample ** 2).sum(1)):.4f}: "
          "energy left by the coarse quantizer / squared error after the codes")
    for variant in variants:
        index, described, train_s, add_s = build_lopq(variant, train, database)
        lopq[variant] = index
        errors = ivf_lopq_errors(index, sample) if variant == "ivf" else lopq_errors(index, sample)
        print(f"{described}, m={ARGS.m}: {index.bytes_per_vector} bytes/vector ({ARGS.m} code + cell id), "
              f"train {train_s:.1f} s, add {add_s:.1f} s; {errors[0]:.4f} / {errors[1]:.4f}; "
              f"index arrays {array_mib(index):.0f} MiB, peak RSS {peak_rss_gib():.2f} GiB", flush=True)
    factory = f"OPQ{ARGS.m},IVF{ARGS.nlist},PQ{ARGS.m}"
    ivf = faiss.index_factory(dim, factory)
    _, faiss_train, _ = timed(ivf.train, train)
    _, faiss_add, _ = timed(ivf.add, database)
    del train
    faiss_bytes = ARGS.m + (math.ceil(math.log2(ARGS.nlist)) + 7) // 8
    print(f"faiss {factory}: {faiss_bytes} bytes/vector ({ARGS.m} code + list id), "
          f"train {faiss_train:.1f} s, add {faiss_add:.1f} s; {{:.4f}} / {{:.4f}}".format(*faiss_errors(ivf, sample)),
          flush=True)

    ivf_parameters = faiss.extract_index_ivf(ivf)
    for index in lopq.values():
        index.nearest(queries[:8], ARGS.k, candidates=budgets()[0])  # compiled kernels loaded before timing

    def faiss_search(nprobe):
        ivf_parameters.nprobe = nprobe
        return ivf.search(queries, ARGS.k)[1]

    settings = [(variant, b, lambda index=index, b=b: index.nearest(queries, ARGS.k, candidates=b)[1])
                for variant, index in lopq.items() for b in budgets()]
    settings += [("faiss", p, lambda p=p: faiss_search(p)) for p in nprobes()]
    timings = best_timed(ARGS.repeats, *(function for _, _, function in settings))
    per_query = 1000 / len(queries)
    rows = {kind: [] for kind in [*lopq, "faiss"]}
    for (kind, knob, _), (ids, wall, cpu) in zip(settings, timings):
        if kind == "faiss":
            faiss.cvar.indexIVF_stats.reset()
            faiss_search(knob)
            scanned = faiss.cvar.indexIVF_stats.ndis / len(queries)
        elif kind == "ivf":
            scanned = scanned_per_query_ivf(lopq[kind], queries[:500], knob)
        else:
            scanned = scanned_per_query(lopq[kind], queries[:500], knob)
        rows[kind].append((knob, scanned, recall_at(ids, truth), wall * per_query, cpu * per_query))
    print(f"query times: ms per query, best of {ARGS.repeats}, wall / CPU; scanned: database vectors scored per query")
    for variant, index in lopq.items():
        print(f"LOPQ {variant}")
        print(f"{'candidates':>10} {'scanned':>8} {'R@10':>6} {'+rerank':>8} {'ms':>13}")
        for budget, scanned, lopq_recall, wall, cpu in rows[variant]:
            _, reranked = index.nearest(queries, ARGS.k, candidates=budget, rerank=ARGS.rerank, vectors=database)
            print(f"{budget:>10} {scanned:>8.0f} {lopq_recall:>6.3f} {recall_at(reranked, truth):>8.3f} "
                  f"{wall:>6.3f}/{cpu:.3f}", flush=True)
    print(f"(+rerank: LOPQ with exact re-ranking of {ARGS.rerank}, untimed)")
    print(f"faiss {factory}")
    print(f"{'nprobe':>10} {'scanned':>8} {'R@10':>6} {'ms':>13}")
    for nprobe, scanned, faiss_recall, wall, cpu in rows["faiss"]:
        print(f"{nprobe:>10} {scanned:>8.0f} {faiss_recall:>6.3f} {wall:>6.3f}/{cpu:.3f}")

    print("matched recall: each faiss setting against the cheapest budget of each LOPQ variant reaching its recall "
          "(CPU ms/query; time ratio LOPQ / faiss)")
    ratios = {variant: [] for variant in [*lopq, "best"]}
    for nprobe, _, faiss_recall, _, faiss_ms in rows["faiss"]:
        line = f"  nprobe {nprobe:>3}: R@10 {faiss_recall:.3f} in {faiss_ms:.3f} ms;"
        cheapest = math.inf
        for variant in lopq:
            reaching = [(ms, budget, r) for budget, _, r, _, ms in rows[variant] if r >= faiss_recall]
            if not reaching:
                line += f" {variant}: none reaches it;"
                ratios[variant].append(math.inf)
                continue
            ms, budget, lopq_recall = min(reaching)
            cheapest = min(cheapest, ms)
            ratios[variant].append(ms / faiss_ms)
            line += f" {variant} {budget:>5}: {lopq_recall:.3f} in {ms:.3f} ms ({ms / faiss_ms:.2f});"
        ratios["best"].append(cheapest / faiss_ms)
        print(line + f" best {cheapest / faiss_ms:.2f}")
    highest = {kind: max(r for _, _, r, _, _ in kind_rows) for kind, kind_rows in rows.items()}
    for variant, values in ratios.items():
        print(f"verdict {variant}: LOPQ time / faiss time at matched recall: worst {max(values):.2f}, median "
              f"{float(np.median(values)):.2f}")
    print("highest R@10 reached: " + ", ".join(f"{kind} {value:.3f}" for kind, value in highest.items()))
    print(f"peak RSS {peak_rss_gib():.2f} GiB")


def stages() -> None:
    """The stages of ``LOPQIndex._search_batch`` run one by one on the batches the
    library cuts, each timed as the best of ``--repeats`` runs (CPU seconds)."""
    database, queries, source = load_data()
    index = LOPQIndex.train(train_subset(database), ARGS.coarse_k, ARGS.m, seed=ARGS.seed)
    index.add(database)
    sized = lopq_kernels.sized_kernels(index.half_m, index.sub_dim, index.half_dim)
    print(f"data: {source}, database {database.shape[0]} x {database.shape[1]}, {len(queries)} queries, "
          f"threads={ARGS.threads}; microseconds per query, best of {ARGS.repeats}")
    print(f"{'candidates':>10} {'batch':>6} {'coarse':>8} {'cells':>8} {'frames':>8} {'scan':>8} {'search':>8} "
          f"{'frames/q':>9}")

    def best(function):
        result, seconds = None, float("inf")
        for _ in range(ARGS.repeats):
            result, _, cpu = timed(function)
            seconds = min(seconds, cpu)
        return result, seconds

    def coarse(halves):
        return [lopq_kernels.sorted_centroids(index._coarse_distances(halves[h], h)) for h in range(2)]

    index.nearest(queries[:8], ARGS.k, candidates=budgets()[0])  # compiled kernels loaded before timing
    for budget in budgets():
        batch = index.batch_size(budget)
        seconds, frame_count = np.zeros(4), 0
        for start in range(0, len(queries), batch):
            part = queries[start : start + batch]
            halves = [np.ascontiguousarray(part[:, h * index.half_dim : (h + 1) * index.half_dim]) for h in range(2)]
            keys, coarse_s = best(lambda: coarse(halves))
            (ranks1, ranks2, cells, taken), cells_s = best(
                lambda: lopq_kernels.select_cells(*keys, index._cell_sizes, budget))
            ranks = (ranks1, ranks2)
            frames, frames_s = best(lambda: [index._local_frames_of(halves[h], keys[h], ranks[h], taken, h,
                                                                    sized.rotate) for h in range(2)])
            work = [np.empty(budget + index._largest_cell, dtype) for dtype in (np.int64, np.float32)]
            _, scan_s = best(lambda: sized.scan(cells, taken, *frames[0], *frames[1], index._cell_bounds,
                                                index._codes, index._codewords[0], index._codewords[1], ARGS.k, *work))
            seconds += (coarse_s, cells_s, frames_s, scan_s)
            frame_count += len(frames[0][0]) + len(frames[1][0])
        _, search_s = best(lambda: index.nearest(queries, ARGS.k, candidates=budget))
        microseconds = [1e6 * s / len(queries) for s in (*seconds, search_s)]
        print(f"{budget:>10} {batch:>6} " + " ".join(f"{us:>8.1f}" for us in microseconds)
              + f" {frame_count / len(queries):>9.0f}", flush=True)
    print("frames/q: local frames (a d/2 x d/2 rotation each) per query, both halves; search: the whole "
          "search call")


if __name__ == "__main__":
    if ARGS.stages:
        stages()
    else:
        compare()
