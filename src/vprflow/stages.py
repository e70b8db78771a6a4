"""One function per workflow step, working on paths: what a rule's script calls.

Each takes input paths, settings and output paths, so a step runs the same from
Snakemake, from Python, or from a test.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import descriptors
from .datasets import demo, registry
from .extract import extract_features, read_ids, stack_features
from .ground_truth import build_ground_truth
from .logs import log
from .manifest import build_manifest_shard, merge_tables
from .masks import build_masks
from .metrics import chance_recall, recall_at
from .pose import assign_top1
from .search.run import build_index, search_block, select_rows, write_pairs
from .split import make_split


def demo_world(size: str, seed: int, root: str | Path) -> None:
    demo.generate(root, size, seed)


def fetch_dataset(dataset: dict[str, Any], done_out) -> None:
    registry.fetch(dataset)
    Path(done_out).write_text(f"{dataset['name']}\n")


def write_listing(dataset: dict[str, Any], listing_out, truth_out) -> None:
    listing, truth = registry.read_listing(dataset)
    listing.to_parquet(listing_out, index=False)
    truth.to_parquet(truth_out, index=False)
    log.info("listing: %d images, %d labelled pairs from %s", len(listing), len(truth), registry.root_of(dataset))


def manifest_shard(listing_path, root, shard: int, shards: int, manifest_out, rejects_out, workers: int) -> None:
    listing = pd.read_parquet(listing_path)
    manifest, rejects = build_manifest_shard(root, listing, registry.shard_bounds(len(listing), shard, shards),
                                             workers)
    manifest.insert(1, "shard", shard)
    manifest.to_parquet(manifest_out, index=False)
    rejects.to_parquet(rejects_out, index=False)


def merge_manifest(manifest_shards, reject_shards, manifest_out, rejects_out) -> None:
    manifest = merge_tables(manifest_shards)
    rejects = merge_tables(reject_shards)
    manifest.to_parquet(manifest_out, index=False)
    rejects.to_csv(rejects_out, sep="\t", index=False)
    log.info("manifest: %d images; %d rejected (see %s)", len(manifest), len(rejects), rejects_out)


def clean(manifest_path, clean_out, settings: dict[str, Any]) -> None:
    manifest = pd.read_parquet(manifest_path)
    table = pd.DataFrame({"image_id": manifest["image_id"], "keep": True, "reason": ""})
    table.to_parquet(clean_out, index=False)
    log.info("clean (method %s): kept %d of %d", settings["method"], table["keep"].sum(), len(table))


def kept_images(manifest_path, clean_path) -> pd.DataFrame:
    manifest = pd.read_parquet(manifest_path)
    keep = pd.read_parquet(clean_path, columns=["image_id", "keep"])
    return manifest.merge(keep[keep["keep"]][["image_id"]], on="image_id")


def split(manifest_path, clean_path, split_out, settings: dict[str, Any], cell_m: float) -> None:
    images = kept_images(manifest_path, clean_path)
    table = make_split(images, settings["fractions"], settings["strategy"], cell_m, settings["seed"],
                       settings["query_splits"], settings["database_splits"])
    table.to_parquet(split_out, index=False)


def ground_truth(manifest_path, split_path, listed_truth_path, truth_out, method: str, radius_m: float) -> None:
    images = pd.read_parquet(manifest_path)
    table = build_ground_truth(images, pd.read_parquet(split_path), method, radius_m,
                               pd.read_parquet(listed_truth_path))
    table.to_parquet(truth_out, index=False)
    n_queries = table["query_id"].nunique()
    log.info("ground truth: %d labelled pairs for %d queries (%s)", len(table), n_queries,
             table["label"].value_counts().to_dict())


def masks(manifest_path, split_path, masks_out) -> None:
    table = build_masks(pd.read_parquet(manifest_path), pd.read_parquet(split_path))
    table.to_parquet(masks_out, index=False)
    log.info("masks: %s", table["reason"].value_counts().to_dict())


def extract_shard(manifest_path, clean_path, root, shard: int, settings: dict[str, Any],
                  model_dir, features_out, batch_size: int, workers: int, threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, threads))
    images = kept_images(manifest_path, clean_path)
    images = images[images["shard"] == shard]
    descriptor = descriptors.load(settings, model_dir)
    paths = [Path(root) / p for p in images["path"]]
    dim = extract_features(descriptor, paths, images["image_id"].tolist(), features_out, batch_size, workers)
    log.info("extracted %d images of shard %d with %s, %d dims", len(paths), shard, settings["descriptor"], dim)


def stack(shards, vectors_out, ids_out) -> None:
    stack_features(shards, vectors_out, ids_out)


def _database(vectors_path, ids_path, split_path):
    vectors = np.load(vectors_path, mmap_mode="r")
    ids = read_ids(ids_path)
    table = pd.read_parquet(split_path)
    rows = select_rows(ids, table.loc[table["is_database"], "image_id"])
    return vectors, ids, table, rows


def index(vectors_path, ids_path, split_path, settings: dict[str, Any], index_dir, record_out) -> None:
    vectors, ids, _, rows = _database(vectors_path, ids_path, split_path)
    index_dir = Path(index_dir)
    build_index(settings, np.asarray(vectors[rows], dtype=np.float32), index_dir)
    Path(record_out).write_text(json.dumps({"backend": settings["backend"], "n_database": len(rows),
                                            "dim": int(vectors.shape[1])}, indent=1))


def search(vectors_path, ids_path, split_path, manifest_path, masks_path, index_dir, shard: int,
           settings: dict[str, Any], block_out, threads: int) -> None:
    import faiss

    faiss.omp_set_num_threads(max(1, threads))
    vectors, ids, table, db_rows = _database(vectors_path, ids_path, split_path)
    manifest = pd.read_parquet(manifest_path, columns=["image_id", "shard"])
    block = manifest[manifest["shard"] == shard]
    wanted = table.loc[table["is_query"] & table["image_id"].isin(block["image_id"]), "image_id"]
    q_rows = select_rows(ids, wanted)
    result = search_block(settings, Path(index_dir), np.asarray(vectors[db_rows], dtype=np.float32), ids[db_rows],
                          np.asarray(vectors[q_rows], dtype=np.float32), ids[q_rows], pd.read_parquet(masks_path))
    result.to_parquet(block_out, index=False)


def merge_neighbours(blocks, manifest_path, neighbours_out, pairs_out) -> None:
    neighbours = merge_tables(blocks)
    neighbours.to_parquet(neighbours_out, index=False)
    manifest = pd.read_parquet(manifest_path, columns=["image_id", "path"])
    write_pairs(neighbours, dict(zip(manifest["image_id"], manifest["path"])), pairs_out)
    log.info("neighbours: %d queries", neighbours["query_id"].nunique() if len(neighbours) else 0)


def evaluate(neighbours_path, truth_path, split_path, model: str, search_name: str, ns, recall_out) -> None:
    neighbours = pd.read_parquet(neighbours_path)
    truth = pd.read_parquet(truth_path)
    row = {"model": model, "search": search_name, **recall_at(neighbours, truth, ns)}
    n_database = int(pd.read_parquet(split_path)["is_database"].sum())
    chance = chance_recall(truth, n_database, ns)
    n_eval = neighbours["query_id"].nunique()
    log.info("%s/%s: %s over %d queries with a positive (%d searched); chance: %s", model, search_name,
             {k: round(v, 4) for k, v in row.items() if k.startswith("R@")}, row["n_queries"], n_eval,
             {k: round(v, 4) for k, v in chance.items()})
    pd.DataFrame([row]).to_csv(recall_out, sep="\t", index=False, float_format="%.4f")


def pose(neighbours_path, manifest_path, model: str, search_name: str, poses_out) -> None:
    table = assign_top1(pd.read_parquet(neighbours_path), pd.read_parquet(manifest_path))
    table.insert(0, "search", search_name)
    table.insert(0, "model", model)
    table.to_csv(poses_out, index=False, float_format="%.3f")
    errors = table["error_m"].dropna()
    if len(errors):
        log.info("%s/%s: median position error %.2f m over %d queries", model, search_name,
                 float(errors.median()), len(errors))


def concatenate(tables, out, sep: str) -> None:
    frames = [pd.read_csv(t, sep=sep) for t in tables if os.path.getsize(t) > 0]
    pd.concat(frames, ignore_index=True).to_csv(out, sep=sep, index=False, float_format="%.4f")
