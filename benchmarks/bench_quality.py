"""Retrieval quality of configurations on real photographs, through the pipeline itself.

Every folder dataset (default: each set in ../shared/data with a manifest.csv) is run
through Snakemake with every configuration, a named config snippet written as a user
writes config.yaml (``dataset: folder``); one leaderboard gathers R@1/5/10, mAP and, for
each re-ranking step, the queries whose first correct result it moved up (``improved``)
and down (``worse``) against the search it re-ranks.

    python benchmarks/bench_quality.py                               # every set, every configuration
    python benchmarks/bench_quality.py --datasets paris5 --configurations global
    python benchmarks/bench_quality.py --snippets my_rows.yaml       # configurations from a YAML file
    python benchmarks/bench_quality.py --repo /path/to/other/checkout  # the same rows from other code

A snippet file is a YAML mapping ``name: {config keys}``; ``@WEIGHTS`` anywhere in it stands
for ``--weights`` (a local torchvision state dict: CNN rows need no download). Snippets are
merged over the dataset's own settings (``DATASET_SETTINGS``: radius, split strategy) and
the common base (every image kept, as the sets' protocols count them). A configuration that
fails leaves its finished rows and says why; runs are kept under ``--out`` (reruns reuse them;
``--forcerun extract_local rerank`` runs those stages again after a change to the code).
Never run by the tests.
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
# ../shared beside the repository (or beside a folder of worktrees above it)
SHARED = next((p / "shared" for p in REPO.parents if (p / "shared" / "data").is_dir()), REPO.parent / "shared")
WEIGHTS = "@WEIGHTS"

BASE = {"clean": {"method": "none"}, "shards": {"images_per_shard": 5000},
        "searches": {"exact": {"backend": "exact", "metric": "ip", "k": 100}},
        "evaluate": {"recall_at": [1, 5, 10], "map_at": [1, 5, 10]}}
DATASET_SETTINGS = {
    "corridor": {"ground_truth": {"radius_m": 2}},  # positives: within 2 frames
    "paris5": {"split": {"strategy": "stratified"}},  # 5 landmarks: each must reach train and test
}
CNN = {"descriptor": "cnn", "backbone": "mobilenet_v2", "weights": WEIGHTS, "width": 320, "height": 240}
ALL_EVALUATED = {"fractions": {"train": 0.0, "val": 0.0, "test": 1.0, "index": 0.0}}
HALF_FOR_TRAINING = {"fractions": {"train": 0.5, "val": 0.1, "test": 0.4, "index": 0.0}}

GEM = {**CNN, "pooling": "gem"}
CONFIGURATIONS = {
    # Every image evaluated, no train split: unsupervised fits on the database, query-side
    # averaging, SIFT verification (a local model, extracted once), fusion.
    "global": {
        "split": ALL_EVALUATED,
        "models": {
            "tiny": {"descriptor": "tiny_image"},
            "gem": GEM,
            "gem_ms_flip": {**GEM, "query_scales": [1.0, 0.707, 1.414], "query_flip": True},
            "gem_pca_db": {**GEM, "dim": 48, "fit_on": "database"},
            "rootsift_vlad": {"descriptor": "rootsift_vlad", "fit_on": "database"},
            "sift": {"descriptor": "sift"},
        },
        "reranks": {
            "sv": {"method": "local", "features": "sift"},
            # for the weak thumbnail only: verified pairs climb 3x the global range, from 10 inliers
            "sv_weak": {"method": "local", "features": "sift", "inlier_weight": 3.0, "min_inliers": 10,
                        "apply_to": ["tiny"]},
            "fuse": {"method": "fusion", "models": {"gem": 1.0, "rootsift_vlad": 1.0}, "combine": "score_sum"},
            "rrf": {"method": "fusion", "models": {"gem": 1.0, "rootsift_vlad": 1.0}, "combine": "rrf"},
        },
    },
    # Half of the places for training: off the shelf against fine-tuned, PCA against learned whitening.
    "trained": {
        "split": HALF_FOR_TRAINING,
        "models": {
            "gem": GEM,
            "gem_pca": {**GEM, "dim": 24},
            "gem_lw": {**GEM, "dim": 24, "whitening": "learned"},
            "gem_ft": {**GEM, "train": "triplet", "epochs": 5, "negatives": 5},
            "rootsift_vlad": {"descriptor": "rootsift_vlad"},
            "sift": {"descriptor": "sift"},
        },
        "reranks": {"sv": {"method": "local", "features": "sift"},
                    "fuse": {"method": "fusion", "models": {"gem_ft": 1.0, "rootsift_vlad": 1.0}}},
    },
    # DELF trained on the train split's places (two steps), against SIFT, verifying the same shortlists.
    "trained_delf": {
        "split": HALF_FOR_TRAINING,
        "models": {
            "tiny": {"descriptor": "tiny_image"},
            "gem": GEM,
            "sift": {"descriptor": "sift"},
            "delf": {"descriptor": "delf", "backbone": "mobilenet_v2", "weights": WEIGHTS, "label": "place"},
        },
        "reranks": {"sv": {"method": "local", "features": "sift"}, "dv": {"method": "local", "features": "delf"}},
    },
}
NOT_FOR = {"trained_delf": {"corridor": "no place labels: DELF trains by place classification"}}
"""Configurations a dataset cannot run, and why (skipped with that reason)."""


def merged(base: dict, extra: dict) -> dict:
    """``extra`` over ``base``, nested mappings merged key by key."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def with_weights(value, weights: str):
    if isinstance(value, dict):
        return {k: with_weights(v, weights) for k, v in value.items()}
    if isinstance(value, list):
        return [with_weights(v, weights) for v in value]
    return weights if value == WEIGHTS else value


def run(repo: Path, workdir: Path, config: dict, cores: int, forcerun: list[str] = ()) -> tuple[bool, float, str]:
    """Snakemake on one (dataset, configuration): (succeeded, seconds, the error's tail).
    ``forcerun``: rules to run again in a kept run (a changed default in the code is not in
    the rules' params, so it reruns nothing by itself)."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    command = [sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), "-d", str(workdir), "--configfile",
               str(workdir / "config.yaml"), "--cores", str(cores), "--keep-going", "results/recall.tsv",
               "results/map.tsv"]
    if forcerun:
        command += ["--forcerun", *forcerun]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=repo)
    seconds = time.perf_counter() - started
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "Error" in line or "error:" in line]
    return result.returncode == 0, seconds, "; ".join(dict.fromkeys(errors))[-600:]


def leaderboard_rows(workdir: Path, dataset: str, configuration: str) -> list[dict]:
    """One row per evaluated (model, ranking), read from the per-ranking tables (so a failed
    model leaves the others' rows)."""
    rows = []
    for recall_file in sorted((workdir / "results" / "eval").glob("*/*/recall.tsv")):
        recall = pd.read_csv(recall_file, sep="\t").iloc[0].to_dict()
        maps = pd.read_csv(recall_file.with_name("map.tsv"), sep="\t")
        protocol = maps[maps["protocol"].isin(["plain", "medium"])].iloc[0]
        rows.append({"dataset": dataset, "configuration": configuration, "model": recall["model"],
                     "ranking": recall["search"], "R@1": recall["R@1"], "R@5": recall["R@5"],
                     "R@10": recall["R@10"], "mAP": protocol["mAP"], "mP@10": protocol.get("mP@10"),
                     "mP@10_toolkit": protocol.get("mP@10_toolkit"), "improved": recall.get("improved"),
                     "worse": recall.get("worse"), "n_queries": recall["n_queries"]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = SHARED / "data"
    parser.add_argument("--data", type=Path, default=data, help="folder whose sub-folders are the datasets")
    parser.add_argument("--datasets", nargs="+", help="default: every sub-folder of --data with a manifest.csv")
    parser.add_argument("--configurations", nargs="+", help="names among the snippets (default: all)")
    parser.add_argument("--snippets", type=Path, help="a YAML file of named configurations replacing the built-in ones")
    parser.add_argument("--weights", default=str(SHARED / "weights" / "mobilenet_v2_imagenet.pth"))
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout whose Snakefile runs")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "quality")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--forcerun", nargs="+", default=[], metavar="RULE",
                        help="rules to run again in kept runs, e.g. extract_local rerank after a code change")
    args = parser.parse_args()

    snippets = yaml.safe_load(args.snippets.read_text()) if args.snippets else CONFIGURATIONS
    names = args.configurations or list(snippets)
    datasets = args.datasets or sorted(p.parent.name for p in args.data.glob("*/manifest.csv"))
    rows, failures = [], []
    for dataset in datasets:
        base = merged(BASE, {"dataset": {"name": "folder", "folder": {"root": str((args.data / dataset).resolve())}}})
        base = merged(base, DATASET_SETTINGS.get(dataset, {}))
        for name in names:
            if dataset in NOT_FOR.get(name, {}):
                print(f"{dataset} / {name}: skipped ({NOT_FOR[name][dataset]})", flush=True)
                continue
            config = with_weights(merged(base, snippets[name]), args.weights)
            workdir = args.out / dataset / name
            ok, seconds, error = run(args.repo.resolve(), workdir, config, args.cores, args.forcerun)
            found = leaderboard_rows(workdir, dataset, name)
            print(f"{dataset} / {name}: {len(found)} rows in {seconds:.0f} s" + ("" if ok else f"; FAILED: {error}"),
                  flush=True)
            rows += found
            if not ok:
                failures.append(f"{dataset} / {name}: {error}")
    table = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "leaderboard.tsv", sep="\t", index=False, float_format="%.4f")
    if len(table):
        for column in ("improved", "worse"):
            table[column] = table[column].astype("Int64").astype(str).replace("<NA>", "")
        with pd.option_context("display.width", 250, "display.max_rows", None):
            print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"leaderboard: {args.out / 'leaderboard.tsv'}")
    for failure in failures:
        print("failed:", failure)


if __name__ == "__main__":
    main()
