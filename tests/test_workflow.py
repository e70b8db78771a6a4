"""End to end: the tiny demo through Snakemake, reruns, and a folder dataset."""

import shutil

import pandas as pd
import pytest

from conftest import needs_shared, planned_jobs, run_snakemake, write_config

pytestmark = pytest.mark.e2e

TINY = {"dataset": {"name": "demo", "demo": {"size": "tiny", "seed": 0}},
        "shards": {"images_per_shard": 50},
        "models": {"tiny": {"descriptor": "tiny_image"}},
        "searches": {"exact": {"backend": "exact", "metric": "ip", "k": 10},
                     "l2": {"backend": "exact", "metric": "l2", "k": 10}}}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tiny_run")
    config = write_config(workdir, TINY)
    run_snakemake(workdir, config)
    return workdir, config


def test_results(tiny_run):
    workdir, _ = tiny_run
    recall = pd.read_csv(workdir / "results/recall.tsv", sep="\t")
    assert list(recall.columns) == ["model", "search", "R@1", "R@5", "R@10", "R@20", "n_queries"]
    assert sorted(recall["search"]) == ["exact", "l2"]
    assert (recall["n_queries"] > 0).all() and recall["R@1"].between(0, 1).all()
    poses = pd.read_csv(workdir / "results/poses.csv")
    assert {"model", "search", "query_id", "db_id", "x", "y", "error_m"} <= set(poses.columns)
    assert poses["error_m"].notna().all()
    rejects = pd.read_csv(workdir / "results/rejects.tsv", sep="\t")
    assert sorted(rejects["path"]) == ["extra/corrupt000.jpg", "extra/corrupt001.jpg"]
    neighbours = pd.read_parquet(workdir / "results/search/tiny/exact/neighbours.parquet")
    assert neighbours.groupby("query_id").size().max() == 10
    pairs = (workdir / "results/search/tiny/exact/pairs.txt").read_text().splitlines()
    assert len(pairs) == len(neighbours) and pairs[0].startswith("query/")
    split = pd.read_parquet(workdir / "results/split.parquet")
    manifest = pd.read_parquet(workdir / "results/manifest.parquet")
    assert set(split["image_id"]) == set(manifest["image_id"])  # every kept image has exactly one split
    for log in ("logs/extract/tiny/shard_0000.log", "logs/manifest/shard_0001.log"):
        assert "100%" in (workdir / log).read_text()  # progress bars reach the rule logs


def test_no_change_means_nothing_to_do(tiny_run):
    workdir, config = tiny_run
    assert planned_jobs(workdir, config) == {}


def test_changing_k_reruns_only_that_search(tiny_run, tmp_path):
    workdir, _ = tiny_run
    changed = {**TINY, "searches": {**TINY["searches"], "l2": {"backend": "exact", "metric": "l2", "k": 5}}}
    config = write_config(tmp_path, changed)
    jobs = planned_jobs(workdir, config)
    n_blocks = 2  # 88 listed images at 50 per shard
    assert jobs == {"search": n_blocks, "neighbours": 1, "evaluate": 1, "pose": 1,
                    "recall_table": 1, "poses_table": 1, "all": 1}


def test_bad_config_stops_before_any_job(tmp_path):
    config = write_config(tmp_path, {**TINY, "searches": {"exact": {"backend": "exact", "k": -1}}})
    result = run_snakemake(tmp_path, config, check=False)
    assert result.returncode != 0
    assert "searches.exact.k: -1 is less than the minimum of 1" in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.shared_data
@pytest.mark.parametrize("name", ["corridor", "ukbench56"])
def test_shared_folder_datasets(tmp_path, name):
    """The real photographs through `dataset: folder` (skips in a clone without ../shared)."""
    root = needs_shared(name)
    config = write_config(tmp_path, {
        "dataset": {"name": "folder", "folder": {"root": str(root)}},
        "ground_truth": {"radius_m": 2},
        "split": {"fractions": {"train": 0.0, "val": 0.0, "test": 1.0, "index": 0.0}},
        "models": {"tiny": {"descriptor": "tiny_image"}}})
    run_snakemake(tmp_path, config)
    recall = pd.read_csv(tmp_path / "results/recall.tsv", sep="\t")
    assert recall.loc[0, "n_queries"] == (111 if name == "corridor" else 56)
    print(name, recall.to_dict("records"))
