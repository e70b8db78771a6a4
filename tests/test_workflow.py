"""End to end: the tiny demo through Snakemake, reruns, and a folder dataset."""

import shutil

import pandas as pd
import pytest

import reference_metrics as reference
from conftest import needs_shared, planned_jobs, run_snakemake, write_config

pytestmark = pytest.mark.e2e

TINY = {"dataset": {"name": "demo", "demo": {"size": "tiny", "seed": 0}},
        "shards": {"images_per_shard": 50},
        "models": {"tiny": {"descriptor": "tiny_image"}},
        "searches": {"exact": {"backend": "exact", "metric": "ip", "k": 10},
                     "l2": {"backend": "exact", "metric": "l2", "k": 10},
                     "hnsw": {"backend": "faiss", "factory": "HNSW8", "k": 10}},
        "reranks": {"labels": {"method": "label"}}}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tiny_run")
    config = write_config(workdir, TINY)
    run_snakemake(workdir, config)
    return workdir, config


def test_results(tiny_run):
    workdir, _ = tiny_run
    recall = pd.read_csv(workdir / "results/recall.tsv", sep="\t")
    assert list(recall.columns) == ["model", "search", "R@1", "R@5", "R@10", "R@20", "n_queries", "improved",
                                    "worse"]
    assert sorted(recall["search"]) == ["exact", "exact+labels", "hnsw", "hnsw+labels", "l2", "l2+labels"]
    # a re-ranking's row counts the queries whose first correct result it moved up and down; a search's is empty
    steps = recall["search"].str.contains("+", regex=False)
    assert recall.loc[steps, ["improved", "worse"]].notna().all().all()
    assert recall.loc[~steps, ["improved", "worse"]].isna().all().all()
    assert (recall.loc[steps, "improved"] + recall.loc[steps, "worse"] <= recall.loc[steps, "n_queries"]).all()
    assert "\t\t" in (workdir / "results/recall.tsv").read_text()  # counts written as integers, empty for searches
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
    clean = pd.read_parquet(workdir / "results/clean.parquet")
    assert split["image_id"].is_unique
    assert set(split["image_id"]) == set(clean.loc[clean["keep"], "image_id"])  # every kept image, one split
    assert (~clean["keep"]).sum() == 6  # the planted black-and-white pictures and collages
    for log in ("logs/extract/tiny/shard_0000.log", "logs/manifest/shard_0001.log"):
        assert "100%" in (workdir / log).read_text()  # progress bars reach the rule logs


def test_no_change_means_nothing_to_do(tiny_run):
    workdir, config = tiny_run
    assert planned_jobs(workdir, config) == {}


def test_changing_k_reruns_only_that_search(tiny_run, tmp_path):
    workdir, _ = tiny_run
    changed = {**TINY, "searches": {**TINY["searches"], "l2": {"backend": "exact", "metric": "l2", "k": 5}}}
    changed["searches"]["hnsw"] = {**TINY["searches"]["hnsw"], "k": 10}  # written out, same value: no rerun
    config = write_config(tmp_path, changed)
    jobs = planned_jobs(workdir, config)
    n_blocks = 2  # 88 listed images at 50 per shard
    # l2 and l2+labels are evaluated again; exact, its re-ranking and the index are not touched.
    assert jobs == {"search": n_blocks, "neighbours": 1, "search_stats": 1, "rerank": 1, "evaluate": 2, "pose": 2,
                    "pictures": 2, "tables": 1, "all": 1}


def test_tables_and_pictures(tiny_run):
    workdir, _ = tiny_run
    maps = pd.read_csv(workdir / "results/map.tsv", sep="\t")
    assert set(maps["protocol"]) == {"plain"} and maps["mAP"].between(0, 1).all()
    precision = pd.read_csv(workdir / "results/precision.tsv", sep="\t")
    assert {"P@1", "P@5", "vote@1", "vote@5"} <= set(precision.columns)
    search = pd.read_csv(workdir / "results/search.tsv", sep="\t").set_index("search")
    assert search.loc["exact", "recall@10_vs_exact"] == 1.0 and search.loc["l2", "recall@1_vs_exact"] == 1.0
    assert search.loc["exact", "bytes_per_vector"] == 32 * 24 * 3 * 4
    assert 0 < search.loc["hnsw", "recall@10_vs_exact"] <= 1 and (search["query_ms"] > 0).all()
    # pure search time is a part of the jobs' wall time, which also holds start-up, loading and I/O
    timing = {"build_s", "load_s", "query_ms", "search_jobs_s"}
    assert timing <= set(search.columns) and (search[sorted(timing)] >= 0).all().all()
    assert (search["query_ms"] * search["n_queries"] / 1000 + search["load_s"] < search["search_jobs_s"]).all()
    summary = pd.read_csv(workdir / "results/pose_summary.tsv", sep="\t")
    assert set(summary["method"]) == {"top1", "consensus"}
    # The grid sidecar lists exactly the top results of the sampled queries, with their truth.
    sidecar = pd.read_csv(workdir / "results/pictures/tiny/exact.grid.tsv", sep="\t")
    neighbours = pd.read_parquet(workdir / "results/search/tiny/exact/neighbours.parquet")
    truth = pd.read_parquet(workdir / "results/ground_truth.parquet")
    expected = neighbours[neighbours["query_id"].isin(sidecar["query_id"]) & (neighbours["rank"] < 5)]
    assert sorted(zip(sidecar["query_id"], sidecar["rank"], sidecar["db_id"])) == \
        sorted(zip(expected["query_id"], expected["rank"], expected["db_id"]))
    positives = set(zip(truth["query_id"], truth["db_id"]))
    for q, d, t in zip(sidecar["query_id"], sidecar["db_id"], sidecar["truth"]):
        assert t == ("positive" if (q, d) in positives else "negative")
    assert (workdir / "results/pictures/tiny/exact+labels.recall.png").stat().st_size > 1000


def test_tables_equal_an_independent_recomputation(tiny_run):
    """recall.tsv, map.tsv and precision.tsv of every ranking, recomputed from that ranking's
    neighbours and the run's ground truth by the plain loops of reference_metrics, agree
    to 1e-9 once rounded as the tables print them (4 decimals)."""
    workdir, _ = tiny_run
    truth = pd.read_parquet(workdir / "results/ground_truth.parquet")
    tables = {name: pd.read_csv(workdir / f"results/{name}.tsv", sep="\t").set_index("search")
              for name in ("recall", "map", "precision")}
    assert len(tables["recall"]) == 6
    for search in tables["recall"].index:
        neighbours = pd.read_parquet(workdir / f"results/search/tiny/{search}/neighbours.parquet")
        ranked = reference.rankings_of(neighbours)
        labels = {q: by_db for q, by_db in reference.labels_of(truth).items() if q in ranked}  # as evaluate does
        expected = {f"R@{n}": reference.recall_at(ranked, labels, n) for n in (1, 5, 10, 20)}
        expected["n_queries"] = sum(any(v in reference.POSITIVE for v in by_db.values()) for by_db in labels.values())
        expected_map = reference.plain_metrics(ranked, labels, (1, 5, 10))
        expected_precision = {f"P@{k}": reference.precision_at(ranked, labels, k) for k in (1, 5, 10)}
        expected_precision["n_queries"] = len(ranked)
        for name, values in (("recall", expected), ("map", expected_map), ("precision", expected_precision)):
            row = tables[name].loc[search]
            for column, value in values.items():
                assert row[column] == pytest.approx(round(value, 4), abs=1e-9), (name, search, column)
        assert 0 < expected["R@1"] < 1 and 0 < expected_map["mAP"] < 1  # a case that can tell right from wrong


def test_report(tiny_run):
    workdir, config = tiny_run
    run_snakemake(workdir, config, "--report", "report.html")
    html = (workdir / "report.html").read_text(errors="replace")
    assert "Retrieval grids" in html and "recall.tsv" in html


def test_bad_config_stops_before_any_job(tmp_path):
    config = write_config(tmp_path, {**TINY, "searches": {"exact": {"backend": "exact", "k": -1}}})
    result = run_snakemake(tmp_path, config, check=False)
    assert result.returncode != 0
    assert "searches.exact.k: -1 is less than the minimum of 1" in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.shared_data
@pytest.mark.parametrize("name", ["corridor", "ukbench56"])
def test_shared_folder_datasets(tmp_path, name, ci_report):
    """The real photographs through `dataset: folder` (skips in a clone without ../shared)."""
    root = needs_shared(name)
    config = write_config(tmp_path, {
        "dataset": {"name": "folder", "folder": {"root": str(root)}},
        "ground_truth": {"radius_m": 2},
        "clean": {"method": "none"},  # curated benchmark sets: every image counts, as in their protocol
        "split": {"fractions": {"train": 0.0, "val": 0.0, "test": 1.0, "index": 0.0}},
        "models": {"tiny": {"descriptor": "tiny_image"}}})
    run_snakemake(tmp_path, config)
    recall = pd.read_csv(tmp_path / "results/recall.tsv", sep="\t")
    assert recall.loc[0, "n_queries"] == (111 if name == "corridor" else 56)
    ci_report(f"{name}: {recall.to_dict('records')}")


def test_revisited_dataset_through_the_pipeline(tmp_path, tiny_world):
    """A Revisited-style dataset (gnd pickle, easy/hard/junk, query boxes) gets Easy/Medium/Hard mAP."""
    import pickle

    import numpy as np

    root, listing = tiny_world
    data = tmp_path / "roxford5k"
    views = listing[~listing["path"].str.startswith("extra")]
    database, queries = views[views["role"] == "database"], views[views["role"] == "query"].iloc[::8]
    for table, prefix in ((database, "street"), (queries, "corner")):
        for i, path in enumerate(table["path"]):
            target = data / "jpg" / f"{prefix}_{i:06d}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(root / path, target)
    gnd = []
    for _, q in queries.iterrows():
        distance = np.hypot(database["x"].to_numpy() - q["x"], database["y"].to_numpy() - q["y"])
        gnd.append({"bbx": [10.0, 5.0, 120.0, 90.0], "easy": np.flatnonzero(distance < 10),
                    "hard": np.flatnonzero((distance >= 10) & (distance < 25)),
                    "junk": np.flatnonzero((distance >= 25) & (distance < 35))})
    (data / "gnd_roxford5k.pkl").write_bytes(pickle.dumps({
        "imlist": [f"street_{i:06d}" for i in range(len(database))],
        "qimlist": [f"corner_{i:06d}" for i in range(len(queries))], "gnd": gnd}))
    config = write_config(tmp_path, {
        "dataset": {"name": "roxford5k", "revisited": {"root": str(data), "download": False}},
        "split": {"fractions": {"train": 0.0, "val": 0.0, "test": 1.0, "index": 0.0}},
        "clean": {"method": "none"},
        "models": {"tiny": {"descriptor": "tiny_image"}}, "searches": {"exact": {"backend": "exact", "k": 20}}})
    run_snakemake(tmp_path, config, "results/map.tsv")
    maps = pd.read_csv(tmp_path / "results/map.tsv", sep="\t")
    assert list(maps["protocol"]) == ["easy", "medium", "hard"]
    assert maps["mAP"].between(0, 1).all() and (maps["n_queries"] > 0).all()
