"""One function per workflow step, working on paths: what a rule's script calls.

Each takes input paths, settings and output paths, so a step runs the same from
Snakemake, from Python, or from a test.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import descriptors, reranking, viz
from .datasets import demo, registry
from .evaluate_map import place_vote_accuracy, plain_map, precision_at_k, recall_curve, revisited_map
from .extract import extract_features, read_ids, stack_features
from .ground_truth import build_ground_truth
from .logs import log
from .manifest import build_manifest_shard, merge_tables
from .masks import build_masks
from .metrics import POSITIVE_LABELS, chance_recall, recall_at
from .pose import assign_top1
from .pose_consensus import consensus_pose, pose_error_summary
from .search.run import agreement_with_exact, build_index, search_block, select_rows, write_pairs
from .split import make_split, positions_m


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


def masks(manifest_path, split_path, masks_out, min_class_size: int) -> None:
    table = build_masks(pd.read_parquet(manifest_path), pd.read_parquet(split_path), min_class_size)
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
    dim = extract_features(descriptor, paths, images["image_id"].tolist(), features_out, batch_size, workers,
                           boxes=query_boxes(images))
    log.info("extracted %d images of shard %d with %s, %d dims", len(paths), shard, settings["descriptor"], dim)


def query_boxes(images: pd.DataFrame) -> list | None:
    """Per image its query box (Revisited Oxford/Paris queries are the box's crop), else None."""
    columns = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"]
    if not set(columns) <= set(images.columns):
        return None
    values = images[columns].to_numpy(dtype="float64", na_value=np.nan)
    return [tuple(v) if np.isfinite(v).all() else None for v in values]


def train(manifest_path, clean_path, split_path, settings: dict[str, Any], root, out_dir, threads: int,
          workers: int, curves_png) -> None:
    """Train one model; every trained model gets a curves picture for the report."""
    from .train.stage import train_model

    train_model(manifest_path, clean_path, split_path, settings, root, out_dir, threads, workers)
    if not Path(curves_png).is_file():
        viz.note_figure(f"{Path(out_dir).name}: fitted on the train split without training epochs\n"
                        f"(descriptor {settings['descriptor']}: vocabulary, centroids or whitening only)", curves_png)


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
    stats = build_index(settings, np.asarray(vectors[rows], dtype=np.float32), Path(index_dir))
    Path(record_out).write_text(json.dumps({"backend": settings["backend"], "n_database": len(rows),
                                            "dim": int(vectors.shape[1]), **stats}, indent=1))
    log.info("index %s: %.2f s, %.1f bytes per vector", settings["backend"], stats["build_seconds"],
             stats["bytes_per_vector"])


def search(vectors_path, ids_path, split_path, manifest_path, masks_path, index_dir, shard: int,
           settings: dict[str, Any], block_out, timing_out, threads: int) -> None:
    import faiss

    faiss.omp_set_num_threads(max(1, threads))
    vectors, ids, table, db_rows = _database(vectors_path, ids_path, split_path)
    manifest = pd.read_parquet(manifest_path, columns=["image_id", "shard"])
    block = manifest[manifest["shard"] == shard]
    wanted = table.loc[table["is_query"] & table["image_id"].isin(block["image_id"]), "image_id"]
    q_rows = select_rows(ids, wanted)
    start = time.perf_counter()
    result = search_block(settings, Path(index_dir), np.asarray(vectors[db_rows], dtype=np.float32), ids[db_rows],
                          np.asarray(vectors[q_rows], dtype=np.float32), ids[q_rows], pd.read_parquet(masks_path))
    seconds = time.perf_counter() - start
    result.to_parquet(block_out, index=False)
    Path(timing_out).write_text(json.dumps({"n_queries": len(q_rows), "seconds": seconds}))


def merge_neighbours(blocks, timings, manifest_path, neighbours_out, pairs_out, timing_out) -> None:
    records = [json.loads(Path(t).read_text()) for t in timings]
    total = {k: sum(r[k] for r in records) for k in ("n_queries", "seconds")}
    Path(timing_out).write_text(json.dumps(total))
    neighbours = merge_tables(blocks)
    neighbours.to_parquet(neighbours_out, index=False)
    manifest = pd.read_parquet(manifest_path, columns=["image_id", "path"])
    write_pairs(neighbours, dict(zip(manifest["image_id"], manifest["path"])), pairs_out)
    log.info("neighbours: %d queries", neighbours["query_id"].nunique() if len(neighbours) else 0)


def search_stats(neighbours_path, vectors_path, ids_path, split_path, masks_path, built_path, timing_path,
                 model: str, search_name: str, settings: dict[str, Any], stats_out) -> None:
    """Cost and accuracy of a search: bytes per vector, build and query time, agreement with exact search."""
    neighbours = pd.read_parquet(neighbours_path)
    vectors, ids, _, db_rows = _database(vectors_path, ids_path, split_path)
    q_rows = select_rows(ids, pd.unique(neighbours["query_id"]))
    metric = settings.get("metric", "ip")
    reference = search_block({"backend": "exact", "metric": metric, "k": 10}, None,
                             np.asarray(vectors[db_rows], dtype=np.float32), ids[db_rows],
                             np.asarray(vectors[q_rows], dtype=np.float32), ids[q_rows], pd.read_parquet(masks_path))
    built, timing = json.loads(Path(built_path).read_text()), json.loads(Path(timing_path).read_text())
    row = {"model": model, "search": search_name, "backend": settings["backend"],
           "bytes_per_vector": built["bytes_per_vector"], "build_s": built["build_seconds"],
           "query_ms": 1000 * timing["seconds"] / max(1, timing["n_queries"]),
           **agreement_with_exact(neighbours, reference), "n_database": built["n_database"],
           "n_queries": timing["n_queries"]}
    pd.DataFrame([row]).to_csv(stats_out, sep="\t", index=False, float_format="%.4f")
    log.info("%s/%s: %s", model, search_name, row)


def rerank(neighbours_path, manifest_path, split_path, masks_path, vectors_path, ids_path, root,
           settings: dict[str, Any], out, workers: int) -> None:
    neighbours = pd.read_parquet(neighbours_path)
    result = reranking.rerank(neighbours, settings, pd.read_parquet(manifest_path), root,
                              pd.read_parquet(split_path), pd.read_parquet(masks_path), vectors_path, ids_path,
                              workers)
    result.to_parquet(out, index=False)
    log.info("re-ranked %d queries with %s", result["query_id"].nunique(), settings["method"])


def evaluate(neighbours_path, truth_path, split_path, manifest_path, model: str, ranking: str,
             settings: dict[str, Any], recall_out, map_out, precision_out, curve_out) -> None:
    """All metrics of one ranking: Recall@N, mAP (Revisited E/M/H or plain), P@k and place votes."""
    neighbours = pd.read_parquet(neighbours_path)
    truth = pd.read_parquet(truth_path)
    truth = truth[truth["query_id"].isin(set(neighbours["query_id"]))]
    key = {"model": model, "search": ranking}
    ns = settings["recall_at"]
    row = {**key, **recall_at(neighbours, truth, ns)}
    n_database = int(pd.read_parquet(split_path)["is_database"].sum())
    chance = chance_recall(truth, n_database, ns)
    log.info("%s/%s: %s over %d queries with a positive; chance: %s", model, ranking,
             {k: round(v, 4) for k, v in row.items() if k.startswith("R@")}, row["n_queries"],
             {k: round(v, 4) for k, v in chance.items()})
    pd.DataFrame([row]).to_csv(recall_out, sep="\t", index=False, float_format="%.4f")

    k_max = int(neighbours.groupby("query_id").size().max()) if len(neighbours) else 0
    ks = [k for k in settings["map_at"] if k <= k_max]
    if truth["label"].isin(["easy", "hard"]).any():
        maps = [{**key, "protocol": name, **m.as_row()} for name, m in revisited_map(neighbours, truth, ks).items()]
    else:
        truth_plain = truth[truth["label"].isin(["positive", "junk"])]
        maps = [{**key, "protocol": "plain", **plain_map(neighbours, truth_plain, ks).as_row()}]
    pd.DataFrame(maps).to_csv(map_out, sep="\t", index=False, float_format="%.4f")

    manifest = pd.read_parquet(manifest_path, columns=["image_id", "place"])
    places = manifest.set_index("image_id")["place"].dropna()
    positive = pd.MultiIndex.from_frame(neighbours[["query_id", "db_id"]]).isin(
        pd.MultiIndex.from_frame(truth.loc[truth["label"].isin(POSITIVE_LABELS), ["query_id", "db_id"]]))
    precision = {**key}
    for k in (k for k in settings["precision_at"] if k <= k_max):
        precision[f"P@{k}"] = precision_at_k(neighbours, positive, k)
    voters = neighbours[neighbours["query_id"].isin(places.index) & neighbours["db_id"].isin(places.index)]
    for k in (k for k in settings["precision_at"] if k <= k_max):
        precision[f"vote@{k}"] = place_vote_accuracy(voters, places, places, k) if len(voters) else float("nan")
    precision["n_queries"] = neighbours["query_id"].nunique()
    pd.DataFrame([precision]).to_csv(precision_out, sep="\t", index=False, float_format="%.4f")

    curve = recall_curve(neighbours, truth, k_max, POSITIVE_LABELS) if row["n_queries"] else np.zeros(k_max)
    pd.DataFrame({**key, "N": np.arange(1, k_max + 1), "recall": curve}).to_csv(
        curve_out, sep="\t", index=False, float_format="%.4f")


def pose(neighbours_path, manifest_path, model: str, ranking: str, settings: dict[str, Any], radius_m: float,
         poses_out, summary_out) -> None:
    """Poses by the configured method into ``poses_out``; errors of top-1 and consensus into the summary."""
    neighbours, manifest = pd.read_parquet(neighbours_path), pd.read_parquet(manifest_path)
    table = assign_top1(neighbours, manifest)
    xy = pd.DataFrame(positions_m(manifest), columns=["x", "y"], index=manifest["image_id"])
    consensus = consensus_pose(neighbours, xy, settings["k"], settings["radius_m"] or radius_m).set_index("query_id")
    truth = xy.loc[table["query_id"]].to_numpy()
    guessed = consensus.loc[table["query_id"], ["x", "y"]].to_numpy()
    consensus_error = np.linalg.norm(guessed - truth, axis=1)
    summaries = []
    for method, errors in (("top1", table["error_m"].to_numpy()), ("consensus", consensus_error)):
        known = errors[np.isfinite(truth).all(axis=1)]
        summaries.append({"model": model, "search": ranking, "method": method,
                          **(pose_error_summary(known) if len(known) else {"n": 0})})
    if settings["method"] == "consensus":
        table[["x", "y"]] = guessed
        table["error_m"] = consensus_error
        table["n_agreeing"] = consensus.loc[table["query_id"], "n_agreeing"].to_numpy()
    table.insert(0, "method", settings["method"])
    table.insert(0, "search", ranking)
    table.insert(0, "model", model)
    table.to_csv(poses_out, index=False, float_format="%.3f")
    pd.DataFrame(summaries).to_csv(summary_out, sep="\t", index=False, float_format="%.4f")
    errors = table["error_m"].dropna()
    if len(errors):
        log.info("%s/%s: median position error %.2f m over %d queries (%s)", model, ranking,
                 float(errors.median()), len(errors), settings["method"])


def pictures(neighbours_path, truth_path, curve_path, manifest_path, root, model: str, ranking: str,
             settings: dict[str, Any], grid_out, sidecar_out, curve_png) -> None:
    neighbours = pd.read_parquet(neighbours_path)
    truth = pd.read_parquet(truth_path)
    sample = viz.grid_sample(neighbours, truth, settings["grid_queries"], settings["grid_k"], settings["grid_seed"])
    sample.to_csv(sidecar_out, sep="\t", index=False)
    manifest = pd.read_parquet(manifest_path, columns=["image_id", "path"])
    paths = {i: Path(root) / p for i, p in zip(manifest["image_id"], manifest["path"])}
    viz.draw_grid(sample, paths, grid_out)
    curve = pd.read_csv(curve_path, sep="\t")
    viz.plot_recall_curves({ranking: curve["recall"].to_numpy()}, curve_png, f"{model} / {ranking}")


def model_precision_tables(trained_records) -> list[Path]:
    """Per-head precision of the classification models (written beside their training record)."""
    return [p for p in (Path(r).parent / "precision.tsv" for r in trained_records) if p.is_file()]


def concatenate(tables, out, sep: str) -> None:
    frames = [pd.read_csv(t, sep=sep) for t in tables if os.path.getsize(t) > 0]
    pd.concat(frames, ignore_index=True).to_csv(out, sep=sep, index=False, float_format="%.4f")
