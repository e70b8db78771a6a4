"""End to end on the tiny demo without a train split: RootSIFT-VLAD's vocabulary from the
database (fit_on auto), a fusion step over two models, and the improved/worse counts."""

import json

import numpy as np
import pandas as pd
import pytest

from conftest import run_snakemake, write_config

pytestmark = pytest.mark.e2e

CONFIG = {
    "dataset": {"name": "demo", "demo": {"size": "tiny", "seed": 0}},
    "shards": {"images_per_shard": 50},
    "split": {"fractions": {"train": 0.0, "val": 0.0, "test": 1.0, "index": 0.0}},
    "models": {"tiny": {"descriptor": "tiny_image"},
               "vlad": {"descriptor": "rootsift_vlad", "vocabulary": 16, "max_keypoints": 200}},
    "searches": {"exact": {"backend": "exact", "metric": "ip", "k": 10}},
    # over the union of the lists (top_r: null), where both models get the same fused scores
    "reranks": {"fuse": {"method": "fusion", "models": {"tiny": 1.0, "vlad": 1.0}, "combine": "score_sum",
                         "top_r": None}},
}


@pytest.fixture(scope="module")
def no_train_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("no_train_run")
    run_snakemake(workdir, write_config(workdir, CONFIG), "results/recall.tsv", "results/map.tsv")
    return workdir


def first_hits(neighbours: pd.DataFrame, truth: pd.DataFrame) -> dict[str, float]:
    """Per query with a positive: the rank of its first positive (inf when none is listed)."""
    positives = set(zip(truth["query_id"], truth["db_id"]))
    hits = {}
    for query in truth["query_id"].unique():
        ranked = neighbours[neighbours["query_id"] == query].sort_values("rank")["db_id"]
        hits[query] = next((r for r, db in enumerate(ranked) if (query, db) in positives), np.inf)
    return hits


def test_vocabulary_from_the_database_when_there_is_no_train_split(no_train_run):
    record = json.loads((no_train_run / "results/models/vlad/trained.json").read_text())
    split = pd.read_parquet(no_train_run / "results/split.parquet")
    assert record["fit_on"] == "database" and record["n_images"] == int(split["is_database"].sum())
    assert "fitted on the database images" in (no_train_run / "logs/train/vlad.log").read_text()


def test_fusion_rows_and_their_improved_and_worse_counts(no_train_run):
    recall = pd.read_csv(no_train_run / "results/recall.tsv", sep="\t").set_index(["model", "search"])
    # both models name each other: the same fused scores under either; images with equal sums
    # (say each first in one model: 1 + 0 = 0 + 1) keep the order of the ranking re-ranked
    fused = {m: pd.read_parquet(no_train_run / f"results/search/{m}/exact+fuse/neighbours.parquet") for m in ("tiny", "vlad")}
    np.testing.assert_array_equal(fused["tiny"]["score"], fused["vlad"]["score"])
    pd.testing.assert_frame_equal(*(f.sort_values(["query_id", "score", "db_id"], ascending=[True, False, True],
                                                  ignore_index=True).drop(columns="rank") for f in fused.values()))
    truth = pd.read_parquet(no_train_run / "results/ground_truth.parquet")
    for model in ("tiny", "vlad"):
        before = first_hits(pd.read_parquet(no_train_run / f"results/search/{model}/exact/neighbours.parquet"), truth)
        after = first_hits(fused[model], truth)
        row = recall.loc[(model, "exact+fuse")]
        assert row["improved"] == sum(after[q] < before[q] for q in before)
        assert row["worse"] == sum(after[q] > before[q] for q in before)
        assert np.isnan(recall.loc[(model, "exact"), "improved"])
    assert recall.loc[("tiny", "exact+fuse"), "improved"] > 0  # RootSIFT-VLAD lifts the thumbnail's ranking
    maps = pd.read_csv(no_train_run / "results/map.tsv", sep="\t")
    assert {"mP@10", "mP@10_toolkit"} <= set(maps.columns)
    assert (maps["mP@10_toolkit"] >= maps["mP@10"] - 1e-9).all()  # k' <= k: never below the plain one
