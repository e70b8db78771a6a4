"""Folder datasets where each query has exactly one true match among many distractors: the
case where re-ranking by raw inlier counts fails (a wrong image with a few chance inliers
overtakes the single right one), which a set with dozens of positives per query hides.

From a place-labelled folder set (default: ../shared/data/paris5), one set per place P:
the queries are P's photos but one; the database is that one photo of P (the single
positive) and every photo of the other places (the distractors). Images are symbolic links
to the source files, so nothing is copied; run the sets through ``bench_quality.py``:

    python benchmarks/one_positive_sets.py --out /tmp/one_positive
    python benchmarks/bench_quality.py --data /tmp/one_positive --configurations global

Which photo of P stays in the database is drawn with ``--seed``. Never run by the tests.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pandas as pd

SHARED = Path(__file__).resolve().parents[2] / "shared"


def one_positive_manifests(manifest: pd.DataFrame, seed: int) -> dict[str, pd.DataFrame]:
    """Per place, the manifest of its set: ``path``, ``role`` (query | database), ``place``."""
    rng = np.random.default_rng(seed)
    sets = {}
    for place in sorted(manifest["place"].unique()):
        own = manifest[manifest["place"] == place]
        kept = own.index[rng.integers(len(own))]
        queries = own.drop(index=kept).assign(role="query")
        database = pd.concat([own.loc[[kept]], manifest[manifest["place"] != place]]).assign(role="database")
        sets[place] = pd.concat([queries, database])[["path", "role", "place"]]
    return sets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=SHARED / "data" / "paris5")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    manifest = pd.read_csv(args.source / "manifest.csv")
    if "place" not in manifest:
        raise SystemExit(f"{args.source / 'manifest.csv'}: needs a place column")
    for place, table in one_positive_manifests(manifest, args.seed).items():
        folder = args.out / f"{args.source.name}_one_{place}"
        folder.mkdir(parents=True, exist_ok=True)
        for path in table["path"]:
            link = folder / path
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                os.symlink((args.source / path).resolve(), link)
        table.to_csv(folder / "manifest.csv", index=False)
        counts = table["role"].value_counts()
        print(f"{folder}: {counts['query']} queries, {counts['database']} database images, one positive each")


if __name__ == "__main__":
    main()
