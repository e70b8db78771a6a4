"""How the verification settings behave on finished runs: every (query, top-R image) pair is
matched once per matching method from the stored local features, then each combination of
``min_inliers``, ``min_inlier_ratio``, ``chance_factor``, ``max_inliers`` and ``inlier_weight``
re-ranks the shortlists: R@1 and the queries made better / worse (first positive's rank
against the global ranking), summed over the runs, and the largest share of worse queries
in any one run. The defaults of ``VERIFICATION_DEFAULTS`` come from here.

    python benchmarks/sweep_verification.py RUN_DIR [RUN_DIR ...] --model gem --features sift

Each RUN_DIR holds ``results/`` of a run with the global ``--model`` searched by ``--search``
and the local ``--features`` model extracted (``results/local/<features>/shard_*``).
Never run by the tests.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import pandas as pd

from vprflow.local.store import LocalFeatureStore
from vprflow.local.verification import VERIFICATION_DEFAULTS, FeatureCache, verified_ranking, verify_shortlists
from vprflow.tables import POSITIVE_LABELS

from rerank_effect import first_hits


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--model", default="gem")
    parser.add_argument("--search", default="exact")
    parser.add_argument("--features", default="sift")
    parser.add_argument("--top-r", type=int, default=20)
    parser.add_argument("--geometry", default="homography")
    parser.add_argument("--ransac-threshold", type=float, help="fraction of the longest side (default: the geometry's)")
    parser.add_argument("--min-inliers", default="8,10,12,15,20,30")
    parser.add_argument("--min-inlier-ratio", default="0,0.05,0.1,0.2")
    parser.add_argument("--chance-factor", default="0,1.5,2,3")
    parser.add_argument("--max-inliers", default="20,40,100")
    parser.add_argument("--inlier-weight", default="0.5,1,1000", help="1000: verified pairs first")
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args()


def values(text: str) -> list:
    return [None if v == "none" else (int(v) if v.isdigit() else float(v)) for v in text.split(",")]


def main() -> None:
    args = parse_args()
    verified = {}
    for run, matching in itertools.product(args.runs, ("mutual", "ratio")):
        results = run / "results"
        neighbours = pd.read_parquet(results / "search" / args.model / args.search / "neighbours.parquet")
        store = LocalFeatureStore(sorted((results / "local" / args.features).glob("shard_*")))
        settings = {**VERIFICATION_DEFAULTS, "top_r": args.top_r, "geometry": args.geometry, "matching": matching,
                    "ransac_threshold": args.ransac_threshold}
        truth = pd.read_parquet(results / "ground_truth.parquet")
        positives = set(zip(*truth.loc[truth["label"].isin(POSITIVE_LABELS), ["query_id", "db_id"]].to_numpy().T))
        verified[run, matching] = (verify_shortlists(neighbours, FeatureCache(store.get), settings, args.threads),
                                   first_hits(neighbours, positives), positives)
    rows = []
    for matching, minimum, share, chance, cap, weight in itertools.product(
            ("mutual", "ratio"), values(args.min_inliers), values(args.min_inlier_ratio), values(args.chance_factor),
            values(args.max_inliers), values(args.inlier_weight)):
        totals = {"R@1 before": 0, "R@1 after": 0, "better": 0, "worse": 0, "queries": 0, "worst run": 0.0}
        for run in args.runs:
            (shortlists, inliers, matches), before, positives = verified[run, matching]
            settings = {**VERIFICATION_DEFAULTS, "top_r": args.top_r, "geometry": args.geometry, "min_inliers": minimum,
                        "min_inlier_ratio": share, "chance_factor": chance, "max_inliers": cap,
                        "inlier_weight": weight}
            reranked = verified_ranking(shortlists, inliers, matches, settings)
            after = first_hits(reranked, positives).reindex(before.index)
            totals["R@1 before"] += int((before == 0).sum())
            totals["R@1 after"] += int((after == 0).sum())
            totals["better"] += int((after < before).sum())
            totals["worse"] += int((after > before).sum())
            totals["queries"] += len(before)
            totals["worst run"] = max(totals["worst run"], round(float((after > before).mean()), 3))
        rows.append({"matching": matching, "min_inliers": minimum, "min_inlier_ratio": share, "chance_factor": chance,
                     "max_inliers": cap, "inlier_weight": weight, **totals})
    table = pd.DataFrame(rows)
    runs = [run.name for run in args.runs]
    print(f"{args.model}/{args.search} verified by {args.features}, top {args.top_r}, over {runs}")
    print(table.sort_values(["worse", "R@1 after"], ascending=[True, False]).to_string(index=False))


if __name__ == "__main__":
    main()
