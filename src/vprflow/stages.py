"""One function per workflow rule, named after it: what the rule's script calls.

Each takes keyword arguments only: the rule's named ``input``, ``output`` and ``params``
(see :func:`rule_arguments`), plus ``threads`` where it uses them. They read and write
paths, so a step runs the same from Snakemake, from Python, or from a test; the work
itself is in the library modules they call.

Each job imports only what its stage needs: the modules that bring heavy libraries
(matplotlib, OpenCV, faiss, torch) are imported inside the stages that use them, so a
job that writes a table does not pay for plotting (``tests/test_imports.py``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .clean import CLEAN_METHODS
from .clean.settings import check_clean_settings, complete_settings
from .datasets import registry
from .descriptors import descriptor_class, load
from .errors import InputError
from .ground_truth import build_ground_truth, check_some_positive
from .heap import keep_freed_memory
from .logs import log, tell_console
from .masks import build_masks
from .metrics.average_precision import plain_map, revisited_map
from .metrics.recall import chance_recall, rank_changes, recall_at, recall_curve
from .metrics.votes import place_vote_accuracy
from .pose import assign_poses
from .registry import own_settings
from .rerank import Inputs
from .rerank import rerank as rerank_with
from .search.run import agreement_with_exact, find_neighbours, process_seconds, write_pairs
from .search.run import build_index as build_search_index
from .split import check_evaluation_sides, make_split
from .tables import POSITIVE_LABELS, merge_tables, read_ids, select_rows
from .train import MODEL_FILE

Paths = Sequence[str | Path]


def rule_arguments(job) -> dict[str, Any]:
    """A running rule's named input, output and params (Snakemake's ``snakemake`` object) as
    one dict of keyword arguments; a name used twice is an error naming the rule."""
    keep_freed_memory()  # taken when vprflow was imported; here it says so in the job's log
    arguments: dict[str, Any] = {}
    for part in (job.input, job.output, job.params):
        for name, value in part.items():
            if name in arguments:
                raise InputError(f"rule {job.rule}: {name!r} names two of its inputs, outputs or params")
            arguments[name] = list(value) if isinstance(value, list) else value
    return arguments


# --------------------------------------------------------------------------- dataset


def demo_world(*, size: str, seed: int, manifest) -> None:
    """Generate the demo world into the folder of its ``manifest`` (written last)."""
    from .datasets import demo

    demo.generate(Path(manifest).parent, size, seed)


def fetch_dataset(*, dataset: dict[str, Any], done) -> None:
    registry.fetch(dataset)
    Path(done).write_text(f"{dataset['name']}\n")


def listing(*, dataset: dict[str, Any], source, listing, truth) -> None:
    """The dataset's listing and its own ground truth; ``source`` is the file whose change relists."""
    images, listed_truth = registry.read_listing(dataset)
    images.to_parquet(listing, index=False)
    listed_truth.to_parquet(truth, index=False)
    log.info("listing: %d images, %d labelled pairs from %s", len(images), len(listed_truth),
             source or registry.root_of(dataset))


# --------------------------------------------------------------------------- manifest, cleaning, split


def manifest_shard(*, listing, root, shard: int, shards: int, workers: int, manifest, rejects) -> None:
    from .manifest import build_manifest_shard

    table = pd.read_parquet(listing)
    kept, rejected = build_manifest_shard(root, table, registry.shard_bounds(len(table), shard, shards), workers)
    kept.insert(1, "shard", shard)
    kept.to_parquet(manifest, index=False)
    rejected.to_parquet(rejects, index=False)


def manifest(*, manifest_shards: Paths, reject_shards: Paths, manifest, rejects) -> None:
    images = merge_tables(manifest_shards)
    rejected = merge_tables(reject_shards)
    images.to_parquet(manifest, index=False)
    rejected.to_csv(rejects, sep="\t", index=False)
    log.info("manifest: %d images; %d rejected (see %s)", len(images), len(rejected), rejects)
    if len(rejected):
        shown = "; ".join(f"{p}: {r}" for p, r in zip(rejected["path"][:3], rejected["reason"][:3]))
        more = f"; and {len(rejected) - 3} more" if len(rejected) > 3 else ""
        tell_console(f"manifest: {len(rejected)} image(s) rejected, listed with the reason in {rejects}: {shown}{more}")


def clean_method(*, settings: dict[str, Any], method) -> str:
    """Decide once which detectors the shards run (``none``, ``fast`` or ``clip``): for
    ``clip``/``auto`` this loads the CLIP weights (fetching a tag into the cache), so
    ``auto`` falls back to the fast detectors once and for all shards alike."""
    from .clean.scoring import load_classifier

    settings = check_clean_settings(settings)
    configured = CLEAN_METHODS.get(settings["method"])
    chosen = configured.name
    if configured.uses_clip:
        chosen = "clip" if load_classifier(settings, "cpu") is not None else "fast"
    Path(method).write_text(json.dumps({"configured": configured.name, "method": chosen}))
    log.info("clean: method %s (configured %s)", chosen, configured.name)
    return chosen


def clean_score(*, manifest, method, settings: dict[str, Any], shard: int, root, batch_size: int, workers: int,
                scores, threads: int = 1) -> None:
    """Score the manifest's images of ``shard`` with the detectors ``method`` (clean_method's record) names."""
    import torch

    from .clean.clip import resolve_device
    from .clean.scoring import load_classifier, score_images

    settings = check_clean_settings(settings)  # before any image is read
    torch.set_num_threads(max(1, threads))
    settings = {**settings, "method": json.loads(Path(method).read_text())["method"]}
    images = pd.read_parquet(manifest, columns=["image_id", "shard", "path"])
    rows = images[images["shard"] == shard]
    if not CLEAN_METHODS.get(settings["method"]).reads_pixels:
        table = pd.DataFrame({"image_id": rows["image_id"]})
    else:
        classifier = load_classifier(settings, resolve_device(settings["clip"]["device"]))
        paths = [Path(root) / p for p in rows["path"]]
        table = score_images(paths, rows["image_id"].tolist(), classifier, batch_size, workers)
        log.info("clean scores of shard %d: %d images, CLIP %s", shard, len(table),
                 "on " + classifier.device if classifier else "not used")
    table.to_parquet(scores, index=False)


def clean(*, manifest, scores: Paths, settings: dict[str, Any], root, clean_table, sheet, report) -> pd.DataFrame:
    """Apply thresholds and group duplicates over all shards; write the clean table, the
    contact sheet of dropped images and the precision/recall of the planted truth."""
    from .clean.report import contact_sheet, truth_report
    from .clean.scoring import drop_decisions, effective_method, reason_kind

    settings = complete_settings(settings)  # the model is not needed here, only the labels
    images = pd.read_parquet(manifest)
    all_scores = merge_tables(list(scores))
    method = effective_method(settings["method"], all_scores, settings["clip"])
    scored = images.merge(all_scores, on="image_id", how="left", validate="one_to_one")
    if "error" in scored:
        scored["error"] = scored["error"].fillna("not scored")
    table = drop_decisions(scored, settings, method)
    table.to_parquet(clean_table, index=False)

    counts = table.loc[~table["keep"], "reason"].map(reason_kind).value_counts()
    log.info("clean (method %s): kept %d of %d; dropped %s", method, int(table["keep"].sum()), len(table),
             ", ".join(f"{kind} {n}" for kind, n in counts.items()) or "none")
    dropped = table[~table["keep"]].merge(images[["image_id", "path"]], on="image_id")
    contact_sheet(dropped.assign(kind=dropped["reason"].map(reason_kind)), root, sheet, settings["sheet"]["per_reason"])
    truth = truth_report(table, images, settings, method)
    truth.to_csv(report, sep="\t", index=False, float_format="%.4f")
    for row in truth.itertuples():
        log.info("clean %s vs %s: precision %.3f recall %.3f (%d planted, %d dropped)", row.detector, row.truth,
                 row.precision, row.recall, row.n_truth, row.n_dropped)
    return table


def kept_images(manifest, clean) -> pd.DataFrame:
    """The manifest's rows that cleaning kept."""
    images = pd.read_parquet(manifest)
    keep = pd.read_parquet(clean, columns=["image_id", "keep"])
    return images.merge(keep[keep["keep"]][["image_id"]], on="image_id")


def split(*, manifest, clean, settings: dict[str, Any], cell_m: float, split_table) -> None:
    images = kept_images(manifest, clean)
    table = make_split(images, settings["fractions"], settings["strategy"], cell_m, settings["seed"],
                       settings["query_splits"], settings["database_splits"])
    check_evaluation_sides(table, images["role"], settings["query_splits"], settings["database_splits"])
    table.to_parquet(split_table, index=False)


def ground_truth(*, manifest, split, listed, method: str, radius_m: float, truth) -> None:
    images = pd.read_parquet(manifest)
    split_table = pd.read_parquet(split)
    table = build_ground_truth(images, split_table, method, radius_m, pd.read_parquet(listed))
    check_some_positive(table, int(split_table["is_query"].sum()), radius_m)
    table.to_parquet(truth, index=False)
    n_queries = table["query_id"].nunique()
    log.info("ground truth: %d labelled pairs for %d queries (%s)", len(table), n_queries,
             table["label"].value_counts().to_dict())


def masks(*, manifest, split, min_class_size: int, mask_table) -> None:
    table = build_masks(pd.read_parquet(manifest), pd.read_parquet(split), min_class_size)
    table.to_parquet(mask_table, index=False)
    log.info("masks: %s", table["reason"].value_counts().to_dict())


# --------------------------------------------------------------------------- training and features


def train(*, manifest, clean, split, settings: dict[str, Any], root, workers: int, record, model, curves,
          curves_table, precision, threads: int = 1) -> None:
    """Train the model ``settings`` (its ``models.<name>`` entry; the name is its folder's)
    on the kept images of the train split, validated on val; unsupervised fits (vocabularies,
    centroids, PCA-whitening) may use the database images instead (``fit_on``).

    Every output lies in one model folder; ``record`` (``trained.json``) is written last.
    Rerun after a kill, training resumes from the checkpoints in the folder's ``work/``.
    """
    import faiss
    import torch

    from . import viz
    from .networks.compute import use_deterministic_algorithms

    use_deterministic_algorithms()
    torch.set_num_threads(max(1, threads))
    faiss.omp_set_num_threads(max(1, threads))
    started = time.time()
    model_dir = Path(record).parent
    model_dir.mkdir(parents=True, exist_ok=True)
    images = kept_images(manifest, clean)
    images = images.merge(pd.read_parquet(split)[["image_id", "split", "is_query", "is_database"]], on="image_id")
    images["abs_path"] = [str(Path(root) / p) for p in images["path"]]
    own = own_settings(settings, "descriptor")
    cls = descriptor_class(settings["descriptor"])
    log.info("train %s (%s): %s", model_dir.name, cls.name, own)
    try:
        fitted = cls.train(own, images, model_dir, workers=workers)
    except InputError as error:
        if str(error).split(":", 1)[0] in cls.DEFAULTS:  # a setting of this model: name its full key
            raise InputError(f"models.{model_dir.name}.{error}") from None
        raise
    heads = pd.DataFrame(fitted.pop("head_precision", []), columns=["head", "P@5", "n"])
    heads.insert(0, "model", model_dir.name)
    heads.to_csv(precision, sep="\t", index=False, float_format="%.4f")
    if not Path(curves).is_file():
        viz.note_figure(f"{model_dir.name}: fitted on the {fitted.get('fit_on', 'train')} images without "
                        f"training epochs\n"
                        f"(descriptor {cls.name}: vocabulary, centroids or whitening only)", curves)
    if not Path(curves_table).is_file():
        pd.DataFrame(columns=["epoch", "train_loss"]).to_csv(curves_table, index=False)
    summary = {"model": model_dir.name, "descriptor": cls.name, **fitted,
               "seconds": round(time.time() - started, 1), "settings": {**cls.DEFAULTS, **own}}
    Path(record).write_text(json.dumps(summary, indent=1, default=str) + "\n")


def train_outputs(model_dir) -> dict[str, Path]:
    """The train rule's outputs in ``model_dir``, by name (for calling :func:`train` by hand)."""
    model_dir = Path(model_dir)
    names = {"record": "trained.json", "model": MODEL_FILE, "curves": "curves.png", "curves_table": "curves.csv",
             "precision": "precision.tsv"}
    return {key: model_dir / name for key, name in names.items()}


def extract(*, manifest, clean, trained, settings: dict[str, Any], shard: int, root, batch_size: int, workers: int,
            features, threads: int = 1, split=None) -> None:
    """Encode the kept images of ``shard``; ``trained`` is the model's training record (empty
    for descriptors that need no training); ``split`` the split table when the descriptor
    encodes queries apart (query-side scales, flip averaging), else empty."""
    import torch

    from .extract import extract_groups
    from .networks.compute import use_deterministic_algorithms

    use_deterministic_algorithms()
    torch.set_num_threads(max(1, threads))
    images = kept_images(manifest, clean)
    images = images[images["shard"] == shard]
    descriptor = load(settings, Path(trained).parent if trained else None)
    paths = [Path(root) / p for p in images["path"]]
    is_query = np.zeros(len(images), bool)
    if split:
        roles = pd.read_parquet(split, columns=["image_id", "is_query"])
        is_query = images["image_id"].isin(roles.loc[roles["is_query"], "image_id"]).to_numpy()
        log.info("%d queries of shard %d encoded with their own scales and flips", int(is_query.sum()), shard)
    groups = [(descriptor, np.flatnonzero(~is_query)), (descriptor.for_queries(), np.flatnonzero(is_query))]
    dim = extract_groups(groups, paths, images["image_id"].tolist(), features, batch_size, workers,
                         boxes=query_boxes(images))
    log.info("extracted %d images of shard %d with %s, %d dims", len(paths), shard, settings["descriptor"], dim)


def query_boxes(images: pd.DataFrame) -> list | None:
    """Per image its query box (Revisited Oxford/Paris queries are the box's crop), else None."""
    columns = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"]
    if not set(columns) <= set(images.columns):
        return None
    values = images[columns].to_numpy(dtype="float64", na_value=np.nan)
    return [tuple(v) if np.isfinite(v).all() else None for v in values]


def stack_features(*, shards: Paths, vectors, ids) -> None:
    from .extract import stack_features as stack_shards

    stack_shards(shards, vectors, ids)


def extract_local(*, manifest, clean, trained, settings: dict[str, Any], shard: int, root, batch_size: int,
                  workers: int, features, threads: int = 1) -> None:
    """Local features (a ``sift`` or ``delf`` model) of the kept images of ``shard``, into the
    shard folder ``features`` (``vprflow.local.store``), read back by ``method: local``."""
    import torch

    from .local.extract import extract_local_features

    torch.set_num_threads(max(1, threads))
    images = kept_images(manifest, clean)
    images = images[images["shard"] == shard]
    descriptor = load(settings, Path(trained).parent if trained else None)
    paths = [Path(root) / p for p in images["path"]]
    started = time.perf_counter()
    n_images, n_keypoints = extract_local_features(descriptor, paths, images["image_id"].tolist(), features,
                                                   batch_size, workers, boxes=query_boxes(images))
    seconds = time.perf_counter() - started
    log.info("extracted local features of %d images of shard %d with %s: %d keypoints (%.0f per image) of %d dims, "
             "%.1f images/s", n_images, shard, settings["descriptor"], n_keypoints, n_keypoints / max(n_images, 1),
             descriptor.dim, n_images / max(seconds, 1e-9))


# --------------------------------------------------------------------------- search


def _database(vectors, ids, split):
    matrix = np.load(vectors, mmap_mode="r")
    all_ids = read_ids(ids)
    table = pd.read_parquet(split)
    rows = select_rows(all_ids, table.loc[table["is_database"], "image_id"])
    return matrix, all_ids, table, rows


def build_index(*, vectors, ids, split, settings: dict[str, Any], built) -> None:
    """The index of the database vectors, in the folder of its record ``built``."""
    matrix, _, _, rows = _database(vectors, ids, split)
    stats = build_search_index(settings, np.asarray(matrix[rows], dtype=np.float32), Path(built).parent)
    Path(built).write_text(json.dumps({"backend": settings["backend"], "n_database": len(rows),
                                       "dim": int(matrix.shape[1]), **stats}, indent=1))
    log.info("index %s: %.2f s, %.1f bytes per vector", settings["backend"], stats["build_seconds"],
             stats["bytes_per_vector"])


def search(*, vectors, ids, split, manifest, masks, built, settings: dict[str, Any], shard: int, block, timing,
           threads: int = 1) -> None:
    """The neighbours of the queries of manifest ``shard`` through the index beside ``built``;
    ``timing`` records the index load, the search calls alone and the job's wall time."""
    import faiss

    started = time.perf_counter()
    faiss.omp_set_num_threads(max(1, threads))
    matrix, all_ids, table, db_rows = _database(vectors, ids, split)
    images = pd.read_parquet(manifest, columns=["image_id", "shard"])
    in_shard = images[images["shard"] == shard]
    wanted = table.loc[table["is_query"] & table["image_id"].isin(in_shard["image_id"]), "image_id"]
    q_rows = select_rows(all_ids, wanted)
    clock: dict[str, float] = {}
    result = find_neighbours(settings, Path(built).parent, np.asarray(matrix[db_rows], dtype=np.float32),
                             all_ids[db_rows], np.asarray(matrix[q_rows], dtype=np.float32), all_ids[q_rows],
                             pd.read_parquet(masks), timings=clock)
    result.to_parquet(block, index=False)
    Path(timing).write_text(json.dumps({"n_queries": len(q_rows), **clock, "job_s": process_seconds(started)}))


TIMINGS = ("n_queries", "load_s", "search_s", "job_s")
"""What each search job records (summed over a search's jobs by ``neighbours``)."""


def neighbours(*, blocks: Paths, timings: Paths, manifest, neighbours, pairs, timing) -> None:
    records = [json.loads(Path(t).read_text()) for t in timings]
    Path(timing).write_text(json.dumps({key: sum(r[key] for r in records) for key in TIMINGS}))
    table = merge_tables(blocks)
    table.to_parquet(neighbours, index=False)
    images = pd.read_parquet(manifest, columns=["image_id", "path"])
    write_pairs(table, dict(zip(images["image_id"], images["path"])), pairs)
    log.info("neighbours: %d queries", table["query_id"].nunique() if len(table) else 0)


def search_stats(*, neighbours, timing, built, vectors, ids, split, masks, settings: dict[str, Any], model: str,
                 search: str, stats) -> None:
    """Cost and accuracy of a search: bytes per vector; index build, index load (summed over
    the search jobs), search time per query (the search calls alone) and the search jobs'
    wall time (start-up and I/O included); agreement with exact search."""
    found = pd.read_parquet(neighbours)
    matrix, all_ids, _, db_rows = _database(vectors, ids, split)
    q_rows = select_rows(all_ids, pd.unique(found["query_id"]))
    metric = settings.get("metric", "ip")
    reference = find_neighbours({"backend": "exact", "metric": metric, "k": 10}, None,
                                np.asarray(matrix[db_rows], dtype=np.float32), all_ids[db_rows],
                                np.asarray(matrix[q_rows], dtype=np.float32), all_ids[q_rows], pd.read_parquet(masks))
    index_record, times = json.loads(Path(built).read_text()), json.loads(Path(timing).read_text())
    row = {"model": model, "search": search, "backend": settings["backend"],
           "bytes_per_vector": index_record["bytes_per_vector"], "build_s": index_record["build_seconds"],
           "load_s": times["load_s"], "query_ms": 1000 * times["search_s"] / max(1, times["n_queries"]),
           "search_jobs_s": times["job_s"], **agreement_with_exact(found, reference),
           "n_database": index_record["n_database"], "n_queries": times["n_queries"]}
    pd.DataFrame([row]).to_csv(stats, sep="\t", index=False, float_format="%.4f")
    log.info("%s/%s: %s", model, search, row)


# --------------------------------------------------------------------------- re-ranking, metrics, poses


def rerank(*, neighbours, manifest, split, masks, vectors, ids, settings: dict[str, Any], root, workers: int,
           reranked, model: str = "", rankings: Paths = (), ranking_models: Sequence[str] = (),
           local_features: Paths = (), threads: int = 1) -> None:
    """Re-rank ``model``'s ranking ``neighbours``; ``rankings`` are other models' rankings of
    the same search (``ranking_models`` names them, in order) for steps that combine them;
    ``local_features`` the shard folders of the local model a ``method: local`` step names."""
    if len(rankings) != len(ranking_models):
        raise InputError(f"rerank: {len(rankings)} ranking file(s) for {len(ranking_models)} model name(s)")
    inputs = Inputs(manifest=pd.read_parquet(manifest), root=root, split=pd.read_parquet(split),
                    masks=pd.read_parquet(masks), vectors_path=vectors, ids_path=ids, workers=workers, model=model,
                    rankings={name: pd.read_parquet(path) for name, path in zip(ranking_models, rankings)},
                    local_features=list(local_features), threads=threads)
    result = rerank_with(pd.read_parquet(neighbours), settings, inputs)
    result.to_parquet(reranked, index=False)
    log.info("re-ranked %d queries with %s", result["query_id"].nunique(), settings["method"])


def evaluate(*, neighbours, truth, split, manifest, settings: dict[str, Any], model: str, ranking: str, recall,
             map, precision, curve, base=None) -> None:
    """All metrics of one ranking: Recall@N, mAP (Revisited E/M/H or plain), P@k and place votes.

    ``base``: for a re-ranked ranking, the ranking it re-ranked; recall then also counts
    the queries whose first correct result the step moved up (``improved``) or down (``worse``).
    """
    from .metrics.precision import precision_at_k

    found = pd.read_parquet(neighbours)
    labels = pd.read_parquet(truth)
    labels = labels[labels["query_id"].isin(set(found["query_id"]))]
    key = {"model": model, "search": ranking}
    ns = settings["recall_at"]
    recall_row = {**key, **recall_at(found, labels, ns)}
    if base:
        recall_row.update(rank_changes(found, pd.read_parquet(base), labels))
        log.info("%s/%s: first correct result moved up for %d queries, down for %d", model, ranking,
                 recall_row["improved"], recall_row["worse"])
    n_database = int(pd.read_parquet(split)["is_database"].sum())
    chance = chance_recall(labels, n_database, ns)
    log.info("%s/%s: %s over %d queries with a positive; chance: %s", model, ranking,
             {k: round(v, 4) for k, v in recall_row.items() if k.startswith("R@")}, recall_row["n_queries"],
             {k: round(v, 4) for k, v in chance.items()})
    pd.DataFrame([recall_row]).to_csv(recall, sep="\t", index=False, float_format="%.4f")

    k_max = int(found.groupby("query_id").size().max()) if len(found) else 0
    ks = [k for k in settings["map_at"] if k <= k_max]
    if labels["label"].isin(["easy", "hard"]).any():
        maps = [{**key, "protocol": name, **m.as_row()} for name, m in revisited_map(found, labels, ks).items()]
    else:
        plain_labels = labels[labels["label"].isin(["positive", "junk"])]
        maps = [{**key, "protocol": "plain", **plain_map(found, plain_labels, ks).as_row()}]
    pd.DataFrame(maps).to_csv(map, sep="\t", index=False, float_format="%.4f")

    images = pd.read_parquet(manifest, columns=["image_id", "place"])
    places = images.set_index("image_id")["place"].dropna()
    positive = pd.MultiIndex.from_frame(found[["query_id", "db_id"]]).isin(
        pd.MultiIndex.from_frame(labels.loc[labels["label"].isin(POSITIVE_LABELS), ["query_id", "db_id"]]))
    precision_row = {**key}
    for k in (k for k in settings["precision_at"] if k <= k_max):
        precision_row[f"P@{k}"] = precision_at_k(found, positive, k)
    voters = found[found["query_id"].isin(places.index) & found["db_id"].isin(places.index)]
    for k in (k for k in settings["precision_at"] if k <= k_max):
        precision_row[f"vote@{k}"] = place_vote_accuracy(voters, places, places, k) if len(voters) else float("nan")
    precision_row["n_queries"] = found["query_id"].nunique()
    pd.DataFrame([precision_row]).to_csv(precision, sep="\t", index=False, float_format="%.4f")

    values = recall_curve(found, labels, k_max, POSITIVE_LABELS) if recall_row["n_queries"] else np.zeros(k_max)
    pd.DataFrame({**key, "N": np.arange(1, k_max + 1), "recall": values}).to_csv(
        curve, sep="\t", index=False, float_format="%.4f")


def pose(*, neighbours, manifest, settings: dict[str, Any], radius_m: float, model: str, ranking: str, poses,
         summary) -> None:
    """Poses by the configured method into ``poses``; errors of top-1 and consensus into ``summary``."""
    table, summaries = assign_poses(pd.read_parquet(neighbours), pd.read_parquet(manifest), settings["method"],
                                    settings["k"], settings["radius_m"] or radius_m)
    table.insert(0, "search", ranking)
    table.insert(0, "model", model)
    table.to_csv(poses, index=False, float_format="%.3f")
    pd.DataFrame([{"model": model, "search": ranking, **s} for s in summaries]).to_csv(
        summary, sep="\t", index=False, float_format="%.4f")
    errors = table["error_m"].dropna()
    if len(errors):
        log.info("%s/%s: median position error %.2f m over %d queries (%s)", model, ranking,
                 float(errors.median()), len(errors), settings["method"])


def pictures(*, neighbours, truth, curve, manifest, settings: dict[str, Any], root, model: str, ranking: str, grid,
             sidecar, curve_png) -> None:
    from . import viz

    found = pd.read_parquet(neighbours)
    labels = pd.read_parquet(truth)
    sample = viz.grid_sample(found, labels, settings["grid_queries"], settings["grid_k"], settings["grid_seed"])
    sample.to_csv(sidecar, sep="\t", index=False)
    images = pd.read_parquet(manifest, columns=["image_id", "path"])
    paths = {i: Path(root) / p for i, p in zip(images["image_id"], images["path"])}
    viz.draw_grid(sample, paths, grid)
    values = pd.read_csv(curve, sep="\t")
    viz.plot_recall_curves({ranking: values["recall"].to_numpy()}, curve_png, f"{model} / {ranking}")


def match_pictures(*, neighbours, truth, manifest, local_features: Paths, settings: dict[str, Any],
                   grid: dict[str, Any], root, model: str, ranking: str, matches) -> None:
    """The matching picture of each grid query (the queries ``pictures`` draws) with its first
    result after a ``method: local`` re-ranking: the pair's RANSAC inliers as lines."""
    from . import viz
    from .images import crop, read_rgb
    from .local.matching import match_pair
    from .local.pictures import MatchPanel, draw_matches
    from .local.store import LocalFeatureStore
    from .local.verification import FeatureCache, is_verified, resolved, verify_shortlists
    from .rerank import settings_of as rerank_settings

    store = LocalFeatureStore(local_features)
    settings = resolved(rerank_settings(ranking.partition("+")[2], settings), store.info.get("verification"))
    found = pd.read_parquet(neighbours)
    sample = viz.grid_sample(found, pd.read_parquet(truth), grid["grid_queries"], 1, grid["grid_seed"])
    # the verdict as the ranking gave it: the sampled queries' top R verified again (re-ranking
    # keeps the same images in the top R), each pair against its query's chance level
    shortlists, inliers, tentative = verify_shortlists(found[found["query_id"].isin(sample["query_id"])],
                                                       FeatureCache(store.get), settings)
    pairs = zip(shortlists.ranked["query_id"], shortlists.ranked["db_id"])
    verdicts = dict(zip(pairs, is_verified(inliers, tentative, settings, shortlists.query_codes)))
    images = pd.read_parquet(manifest)
    paths = {i: Path(root) / p for i, p in zip(images["image_id"], images["path"])}
    boxes = dict(zip(images["image_id"], query_boxes(images) or [None] * len(images)))
    options = {k: settings[k] for k in ("geometry", "matching", "ratio", "ransac_threshold")}
    panels = []
    for query_id, db_id, truth_label in zip(sample["query_id"], sample["db_id"], sample["truth"]):
        query, other = store.get(query_id), store.get(db_id)
        if query is None or other is None:
            log.warning("no local features for %s or %s: not drawn", query_id, db_id)
            continue
        match = match_pair(query, other, **options)
        verified = bool(verdicts[query_id, db_id])  # rank 0 is in the top R
        query_rgb = read_rgb(paths[query_id])
        if boxes[query_id] is not None:
            query_rgb = crop(query_rgb, boxes[query_id])
        panels.append(MatchPanel(query_rgb, read_rgb(paths[db_id]), query.xy[match.query_rows[match.inliers]],
                                 other.xy[match.other_rows[match.inliers]],
                                 f"{query_id}  ->  {db_id}: {match.n_inliers} inliers of {match.n_matches} matches "
                                 f"({'verified' if verified else 'not verified'}; {truth_label})", truth_label))
    draw_matches(panels, matches, f"{model} / {ranking}: first result of each grid query, local features of "
                                  f"{settings['features']}")
    log.info("matching pictures of %d queries: %s", len(panels), matches)


def tables(*, recall_parts: Paths, map_parts: Paths, precision_parts: Paths, head_precision_parts: Paths,
           poses_parts: Paths, pose_summary_parts: Paths, search_parts: Paths, recall, map, precision, poses,
           pose_summary, search) -> None:
    """The per-(model, ranking) tables gathered into one table each; the classification heads'
    precision@5 joins ``precision``."""
    concatenate(recall_parts, recall, sep="\t", counts=RERANK_COUNTS)
    concatenate(map_parts, map, sep="\t")
    concatenate(list(precision_parts) + list(head_precision_parts), precision, sep="\t")
    concatenate(poses_parts, poses, sep=",")
    concatenate(pose_summary_parts, pose_summary, sep="\t")
    concatenate(search_parts, search, sep="\t")


RERANK_COUNTS = ("improved", "worse")
"""recall.tsv's counts of a re-ranking's effect; empty on the rows of plain searches."""


def concatenate(parts: Paths, out, sep: str, counts: Sequence[str] = ()) -> None:
    """The rows of ``parts`` (tables with a header) in one table; tables without rows add no columns.
    ``counts`` are integer columns some parts lack (written as integers, empty where absent)."""
    frames = [pd.read_csv(p, sep=sep) for p in parts if os.path.getsize(p) > 0]
    with_rows = [f for f in frames if len(f)] or frames[:1]
    table = pd.concat(with_rows, ignore_index=True)
    for column in (c for c in counts if c in table):
        table[column] = table[column].astype("Int64")
    table.to_csv(out, sep=sep, index=False, float_format="%.4f")


# --------------------------------------------------------------------------- service


def service_bundle(*, manifest, split, masks, vectors, ids, built, trained, clip_vectors, clip_ids, model: str,
                   search: str, model_settings: dict[str, Any], search_settings: dict[str, Any],
                   service: dict[str, Any], clip_settings: dict[str, Any] | None, pose: dict[str, Any], root,
                   workers: int, bundle, database, thumbnails, text_index) -> None:
    """The service bundle of (``model``, ``search``) in the folder of ``bundle`` (see ``vprflow.serve.bundle``);
    ``clip_vectors``/``clip_ids`` are the CLIP text engine's image embeddings, empty without one."""
    from .serve.bundle import FILES, build_bundle

    out = Path(bundle).parent
    for key, path in {"database": database, "thumbnails": thumbnails, "text_index": text_index}.items():
        if Path(path) != out / FILES[key]:
            raise InputError(f"service_bundle: output {key} must be {out / FILES[key]}, got {path}")
    clip = None
    if clip_vectors:
        clip = {"name": service["clip_model"], "settings": clip_settings, "vectors": clip_vectors, "ids": clip_ids}
    build_bundle(out, model=model, search=search, images=pd.read_parquet(manifest), split=pd.read_parquet(split),
                 masks=pd.read_parquet(masks), vectors=vectors, ids=ids, index_dir=Path(built).parent,
                 model_dir=Path(trained).parent if trained else None, model_settings=model_settings,
                 search_settings=search_settings, service=service, pose=pose, root=root, clip_model=clip,
                 workers=workers)
