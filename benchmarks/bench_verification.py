"""Geometric verification speed: image pairs per second, side by side in one run.

The pairs: every image of a folder dataset as a query with its top R by the tiny-image
descriptor (a realistic mix of true and false pairs). Timed in turns, ``--rounds`` times:

* ``bare OpenCV, per pair``: decode both images, SIFT detect+compute, brute-force kNN with
  Lowe's ratio test, ``findHomography`` RANSAC -- what a script would do pair by pair;
* ``bare OpenCV, per image``: the same, each image's SIFT computed once (the fair floor);
* ``before`` (``--before-src``): today's ``spatial`` re-ranking from another checkout's
  ``src`` (SIFT extracted during re-ranking), run in a subprocess on the same pairs;
* ``spatial``: this checkout's ``spatial`` (SIFT extracted during re-ranking, the
  verification of ``method: local``);
* ``local``: ``method: local`` on features the extraction stage stored (read back from the
  shard; the extraction's own images/s are printed apart).

Wall and CPU time (this process and its children); pairs/s as min and median over rounds.

    python benchmarks/bench_verification.py                                   # ukbench56
    python benchmarks/bench_verification.py --images ../shared/data/paris5 --top-r 20
    git archive c82cfff src | tar -x -C /tmp/before
    python benchmarks/bench_verification.py --before-src /tmp/before/src

Never run by the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import faiss
import numpy as np
import pandas as pd

from clock import Clock
from vprflow.datasets.folder import read_folder
from vprflow.descriptors import load
from vprflow.extract import encode_images
from vprflow.images import read_rgb
from vprflow.local.extract import extract_local_features
from vprflow.local.store import LocalFeatureStore
from vprflow.local.verification import VERIFICATION_DEFAULTS, FeatureCache, verified_ranking, verify_shortlists
from vprflow.rerank.spatial import spatial_verification

SHARED = next((p / "shared" for p in Path(__file__).resolve().parents if (p / "shared" / "data").is_dir()),
              Path("../shared"))
MAX_SIDE, MAX_KEYPOINTS = 640, 2000


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default=str(SHARED / "data" / "ukbench56"), help="folder dataset (manifest.csv)")
    parser.add_argument("--queries", type=int, default=40, help="queries (the first images of the folder)")
    parser.add_argument("--top-r", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1, help="DataLoader processes decoding for spatial/extraction")
    parser.add_argument("--matching", default="ratio", choices=["ratio", "mutual"])
    parser.add_argument("--before-src", help="src/ of the checkout whose spatial re-ranking is 'before'")
    return parser.parse_args()


def tiny_shortlists(paths: list[str], ids: list[str], queries: int, top_r: int) -> pd.DataFrame:
    vectors = encode_images(load({"descriptor": "tiny_image"}), paths, 32, 0)
    scores, rows = faiss.knn(np.ascontiguousarray(vectors[:queries]), np.ascontiguousarray(vectors), top_r + 1,
                             metric=faiss.METRIC_INNER_PRODUCT)
    records = []
    for q in range(queries):
        kept = [(r, s) for r, s in zip(rows[q], scores[q]) if r != q][:top_r]
        records += [(ids[q], rank, ids[r], np.float32(s)) for rank, (r, s) in enumerate(kept)]
    return pd.DataFrame(records, columns=["query_id", "rank", "db_id", "score"])


def bare_sift(path: str):
    grey = cv2.cvtColor(read_rgb(path), cv2.COLOR_RGB2GRAY)
    factor = MAX_SIDE / max(grey.shape)
    if factor < 1:
        grey = cv2.resize(grey, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
    return cv2.SIFT_create(nfeatures=MAX_KEYPOINTS).detectAndCompute(grey, None)


def bare_verify(first, second, matcher) -> int:
    (kp_a, des_a), (kp_b, des_b) = first, second
    if des_a is None or des_b is None or len(des_b) < 2:
        return 0
    pairs = [p for p in matcher.knnMatch(des_a, des_b, k=2) if len(p) == 2]
    good = [m for m, n in pairs if m.distance < 0.8 * n.distance]
    if len(good) < 4:
        return 0
    a = np.float32([kp_a[m.queryIdx].pt for m in good])
    b = np.float32([kp_b[m.trainIdx].pt for m in good])
    _, mask = cv2.findHomography(a, b, cv2.RANSAC, 5.0)
    return 0 if mask is None else int(mask.sum())


def run_bare(pairs, path_of, per_image: bool) -> None:
    matcher = cv2.BFMatcher(cv2.NORM_L2)
    cache = {}
    for query_id, db_id in pairs:
        if per_image:
            for image_id in (query_id, db_id):
                if image_id not in cache:
                    cache[image_id] = bare_sift(path_of[image_id])
            bare_verify(cache[query_id], cache[db_id], matcher)
        else:
            bare_verify(bare_sift(path_of[query_id]), bare_sift(path_of[db_id]), matcher)


BEFORE_SCRIPT = """
import json, sys, time, resource
import pandas as pd
from vprflow.rerank.spatial import spatial_verification
neighbours = pd.read_parquet(sys.argv[1])
paths = json.loads(open(sys.argv[2]).read())
def cpu():
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
wall, used = time.perf_counter(), cpu()
spatial_verification(neighbours, paths, int(sys.argv[3]), workers=int(sys.argv[4]))
print(json.dumps({"wall": time.perf_counter() - wall, "cpu": cpu() - used}))
"""


def run_before(src: str, neighbours_file: Path, paths_file: Path, top_r: int, workers: int) -> tuple[float, float]:
    """Today's spatial in a subprocess on ``src``; its own timing of the re-ranking call."""
    env = {**os.environ, "PYTHONPATH": src}
    result = subprocess.run([sys.executable, "-c", BEFORE_SCRIPT, str(neighbours_file), str(paths_file), str(top_r),
                             str(workers)], env=env, capture_output=True, text=True, check=True)
    timing = json.loads(result.stdout.strip().splitlines()[-1])
    return timing["wall"], timing["cpu"]


def main() -> None:
    args = parse_args()
    cv2.setNumThreads(1)
    faiss.omp_set_num_threads(1)
    listing = read_folder(args.images)
    paths = [str(Path(args.images) / p) for p in listing["path"]]
    ids = list(listing["path"])
    path_of = dict(zip(ids, paths))
    neighbours = tiny_shortlists(paths, ids, min(args.queries, len(ids)), args.top_r)
    pairs = list(zip(neighbours["query_id"], neighbours["db_id"]))
    n_pairs, n_images = len(pairs), len(set(neighbours["query_id"]) | set(neighbours["db_id"]))
    settings = {**VERIFICATION_DEFAULTS, "top_r": args.top_r, "matching": args.matching}
    print(f"{n_pairs} pairs ({neighbours['query_id'].nunique()} queries x top {args.top_r}) over {n_images} images of "
          f"{args.images}; SIFT at most {MAX_SIDE} px, {MAX_KEYPOINTS} keypoints; {args.threads} verification "
          f"threads, {args.workers} loader worker(s); matching {args.matching}; {args.rounds} rounds")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with Clock() as extraction:
            extract_local_features(load({"descriptor": "sift"}), paths, ids, tmp / "shard", 16, args.workers)
        print(f"extraction stage (sift, once per image): {len(paths) / extraction.wall:.1f} images/s wall, "
              f"{len(paths) / extraction.cpu:.1f} per CPU-second")
        store = LocalFeatureStore([tmp / "shard"])
        neighbours.to_parquet(tmp / "neighbours.parquet")
        (tmp / "paths.json").write_text(json.dumps(path_of))

        methods = {
            "bare OpenCV, per pair": lambda: run_bare(pairs, path_of, per_image=False),
            "bare OpenCV, per image": lambda: run_bare(pairs, path_of, per_image=True),
            "spatial (SIFT during re-ranking)": lambda: spatial_verification(
                neighbours, path_of, args.top_r, workers=args.workers, matching=args.matching),
            "local (stored features)": lambda: verified_ranking(*verify_shortlists(
                neighbours, FeatureCache(store.get), settings, threads=args.threads), settings),
        }
        timings = {name: [] for name in methods}
        if args.before_src:
            timings["before: spatial at --before-src"] = []
        for _ in range(args.rounds):
            for name, method in methods.items():
                with Clock() as clock:
                    method()
                timings[name].append((clock.wall, clock.cpu))
            if args.before_src:
                timings["before: spatial at --before-src"].append(
                    run_before(args.before_src, tmp / "neighbours.parquet", tmp / "paths.json", args.top_r,
                               args.workers))
    rows = []
    reference = np.median([w for w, _ in timings["bare OpenCV, per pair"]])
    for name, values in timings.items():
        walls, cpus = np.array(values).T
        rows.append({"method": name, "pairs/s (best)": n_pairs / walls.min(),
                     "pairs/s (median)": n_pairs / np.median(walls),
                     "pairs per CPU-second (median)": n_pairs / np.median(cpus),
                     "ms per query (median)": 1000 * np.median(walls) / neighbours["query_id"].nunique(),
                     "speed / bare per pair (median wall)": reference / np.median(walls)})
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.2f}"))


if __name__ == "__main__":
    main()
