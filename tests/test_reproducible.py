"""Same config, same seeds, same machine: byte-identical results.

Two runs of the tiny demo in two folders, every results/*.tsv and poses.csv compared byte for
byte, and the stacked features too. The only columns left out are the timings of search.tsv
(names ending in ``_s`` or ``_ms``): they are measurements of the machine, not results. The
models cover the sources of randomness the pipeline has: a CNN with random weights and no
training (its seed), a trained NetVLAD (k-means, mining, epochs, PCA-whitening) and
RootSIFT-VLAD (k-means on SIFT), searched exactly and by HNSW (random levels). The runs stop at
the tables (no pictures) to keep the test short.
"""

import hashlib
import io

import pandas as pd
import pytest

from conftest import run_snakemake, write_config

pytestmark = pytest.mark.e2e

SMALL_CNN = {"descriptor": "cnn", "backbone": "mobilenet_v3_small", "weights": "none", "width": 64, "height": 48}
CONFIG = {
    "dataset": {"name": "demo", "demo": {"size": "tiny", "seed": 0}},
    "shards": {"images_per_shard": 100},
    "models": {
        "random_gem": {**SMALL_CNN, "pooling": "gem"},
        "netvlad": {**SMALL_CNN, "pooling": "netvlad", "clusters": 4, "dim": 16, "train": "triplet", "epochs": 1,
                    "negatives": 3},
        "rootsift_vlad": {"descriptor": "rootsift_vlad", "vocabulary": 8, "max_keypoints": 100},
    },
    "searches": {"exact": {"backend": "exact", "k": 10}, "hnsw": {"backend": "faiss", "factory": "HNSW8", "k": 10}},
}


def is_timing(column: str) -> bool:
    return column.endswith(("_s", "_ms"))


def result_bytes(workdir) -> dict[str, bytes]:
    """Every results table as bytes; search.tsv without its timing columns."""
    tables = {}
    for path in sorted((workdir / "results").glob("*.tsv")) + [workdir / "results" / "poses.csv"]:
        data = path.read_bytes()
        if path.name == "search.tsv":
            table = pd.read_csv(io.BytesIO(data), sep="\t", dtype=str, keep_default_na=False)
            data = table.drop(columns=[c for c in table.columns if is_timing(c)]).to_csv(sep="\t", index=False).encode()
        tables[path.name] = data
    for path in sorted((workdir / "results" / "features").glob("*/vectors.npy")):
        tables[f"features/{path.parent.name}"] = path.read_bytes()
    return tables


def test_two_runs_of_the_same_config_give_the_same_bytes(tmp_path, ci_report):
    runs = []
    for name in ("a", "b"):
        workdir = tmp_path / name
        workdir.mkdir()
        run_snakemake(workdir, write_config(workdir, CONFIG), "results/recall.tsv")
        runs.append(result_bytes(workdir))
    first, second = runs
    assert {"recall.tsv", "map.tsv", "precision.tsv", "search.tsv", "pose_summary.tsv", "poses.csv"} <= set(first)
    assert len([name for name in first if name.startswith("features/")]) == len(CONFIG["models"])
    differing = sorted(name for name in first if first[name] != second.get(name))
    assert not differing, f"differ between two runs: {differing}"
    search = pd.read_csv(tmp_path / "a" / "results" / "search.tsv", sep="\t")
    assert [c for c in search.columns if is_timing(c)], "search.tsv has timing columns to leave out"
    digest = hashlib.sha256(b"".join(first[name] for name in sorted(first))).hexdigest()[:16]
    ci_report(f"reproducible: {len(first)} tables and feature files identical in two runs (sha256 {digest})")
