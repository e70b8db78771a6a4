"""End to end on the tiny demo: local models (sift, delf) extracted once per shard, read by
`method: local` re-ranking of every search, drawn in matching pictures; what reruns when
a local setting changes; a bad reference stops the run before any job."""

import pandas as pd
import pytest

from conftest import planned_jobs, run_snakemake, write_config

pytestmark = pytest.mark.e2e

DELF = {"descriptor": "delf", "backbone": "resnet18", "weights": "none", "max_side": 128, "scales": [1.0, 2.0],
        "width": 128, "height": 96, "finetune_epochs": 1, "attention_epochs": 1, "dim": 16, "fit_images": 20}
CONFIG = {"dataset": {"name": "demo", "demo": {"size": "tiny", "seed": 0}},
          "shards": {"images_per_shard": 50},
          "models": {"tiny": {"descriptor": "tiny_image"}, "sift": {"descriptor": "sift"}, "delf": DELF},
          "searches": {"exact": {"backend": "exact", "metric": "ip", "k": 10}},
          "reranks": {"sift": {"method": "local", "features": "sift", "top_r": 5},
                      "delf": {"method": "local", "features": "delf", "top_r": 5}},
          "evaluate": {"grid_queries": 3}}


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("local_run")
    config = write_config(workdir, CONFIG)
    run_snakemake(workdir, config)
    return workdir, config


def test_local_models_give_rerank_rows_not_searches(local_run):
    workdir, _ = local_run
    recall = pd.read_csv(workdir / "results/recall.tsv", sep="\t")
    assert sorted(zip(recall["model"], recall["search"])) == [("tiny", "exact"), ("tiny", "exact+delf"),
                                                              ("tiny", "exact+sift")]
    assert not (workdir / "results/features/sift").exists() and not (workdir / "results/search/delf").exists()
    for model in ("sift", "delf"):
        assert sorted(p.name for p in (workdir / f"results/local/{model}").iterdir()) == ["shard_0000", "shard_0001"]
    assert (workdir / "results/models/delf/curves.png").is_file()
    # the re-ranking read stored features: no extraction in its log, each image read once
    for step in ("sift", "delf"):
        log = (workdir / f"logs/rerank/tiny/exact+{step}.log").read_text()
        assert "images read once each" in log and "extract" not in log
    base = pd.read_parquet(workdir / "results/search/tiny/exact/neighbours.parquet")
    for step in ("sift", "delf"):
        reranked = pd.read_parquet(workdir / f"results/search/tiny/exact+{step}/neighbours.parquet")
        # a permutation of each shortlist: same ids per query, rows below R untouched
        assert sorted(zip(reranked["query_id"], reranked["db_id"])) == sorted(zip(base["query_id"], base["db_id"]))
        below = reranked[reranked["rank"] >= 5].sort_values(["query_id", "rank"])
        expected = base[base["rank"] >= 5].sort_values(["query_id", "rank"])
        assert list(zip(below["query_id"], below["db_id"])) == list(zip(expected["query_id"], expected["db_id"]))
        assert (workdir / f"results/pictures/tiny/exact+{step}.matches.png").stat().st_size > 10_000


def test_changing_a_verification_setting_reruns_only_that_step(local_run, tmp_path):
    workdir, _ = local_run
    changed = {**CONFIG, "reranks": {**CONFIG["reranks"], "sift": {**CONFIG["reranks"]["sift"], "min_inliers": 20}}}
    assert planned_jobs(workdir, write_config(tmp_path, changed)) == {
        "rerank": 1, "evaluate": 1, "pose": 1, "pictures": 1, "match_pictures": 1, "tables": 1, "all": 1}
    retrained = {**CONFIG, "models": {**CONFIG["models"], "delf": {**DELF, "attention_epochs": 2}}}
    assert planned_jobs(workdir, write_config(tmp_path, retrained)) == {
        "train": 1, "extract_local": 2, "rerank": 1, "evaluate": 1, "pose": 1, "pictures": 1, "match_pictures": 1,
        "tables": 1, "all": 1}


def test_a_local_step_must_name_a_local_model(tmp_path):
    bad = {**CONFIG, "reranks": {"sv": {"method": "local", "features": "tiny"}}}
    result = run_snakemake(tmp_path, write_config(tmp_path, bad), check=False)
    assert result.returncode != 0
    assert "reranks.sv.features: 'tiny' is not a model with local features; name one of ['delf', 'sift']" in \
        result.stdout + result.stderr
    assert not (tmp_path / "results").exists()
