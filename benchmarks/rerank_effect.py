"""What each re-ranking did, from finished runs: R@1/5/10 and mAP per (model, ranking), and for
each ``<search>+<step>`` ranking the queries it made better and worse (the rank of the first
positive moved up or down against ``<search>``).

    python benchmarks/rerank_effect.py RUN_DIR [RUN_DIR ...]     # folders holding results/

Reads ``results/recall.tsv``, ``results/map.tsv``, ``results/ground_truth.parquet`` and each
ranking's ``neighbours.parquet``. Never run by the tests.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from vprflow.tables import POSITIVE_LABELS


def first_hits(neighbours: pd.DataFrame, positives: set[tuple[str, str]]) -> pd.Series:
    """Per query, the 0-based rank of its first positive (inf when none is listed)."""
    ranked = neighbours.sort_values(["query_id", "rank"])
    hit = [(q, d) in positives for q, d in zip(ranked["query_id"], ranked["db_id"])]
    position = ranked.groupby("query_id").cumcount()
    found = position[np.array(hit)].groupby(ranked["query_id"][np.array(hit)]).min()
    return found.reindex(pd.unique(ranked["query_id"])).fillna(np.inf)


def effect(run: Path) -> pd.DataFrame:
    results = run / "results"
    recall = pd.read_csv(results / "recall.tsv", sep="\t")
    maps = pd.read_csv(results / "map.tsv", sep="\t")
    maps = maps[maps["protocol"].isin(["plain", "medium"])][["model", "search", "mAP"]]
    truth = pd.read_parquet(results / "ground_truth.parquet")
    positives = set(zip(*truth.loc[truth["label"].isin(POSITIVE_LABELS), ["query_id", "db_id"]].to_numpy().T))
    table = recall.merge(maps, on=["model", "search"])
    better, worse = [], []
    for model, ranking in zip(table["model"], table["search"]):
        search, _, step = ranking.partition("+")
        if not step:
            better.append(np.nan), worse.append(np.nan)
            continue
        before = first_hits(pd.read_parquet(results / "search" / model / search / "neighbours.parquet"), positives)
        after = first_hits(pd.read_parquet(results / "search" / model / ranking / "neighbours.parquet"), positives)
        after = after.reindex(before.index)
        better.append(int((after < before).sum())), worse.append(int((after > before).sum()))
    table["better"], table["worse"] = better, worse
    table.insert(0, "run", run.name)
    return table[["run", "model", "search", "R@1", "R@5", "R@10", "mAP", "better", "worse", "n_queries"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    table = pd.concat([effect(run) for run in args.runs], ignore_index=True)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
