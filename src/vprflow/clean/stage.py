"""The cleaning stage, between manifest and splits, in three steps a workflow can spread out.

1. ``resolve_method`` once: for ``clip``/``auto`` it loads the CLIP weights (fetching a
   tag into the cache) and records which method the shards will run, so ``auto`` falls
   back to the fast detectors once and for all shards alike.
2. ``score_shard`` per manifest shard: one pass over the pixels through the shared
   loader, writing the weight-free scores, the perceptual hash and the CLIP class
   probabilities of every image. No thresholds are applied here.
3. ``decide`` once: thresholds and duplicate grouping over all shards together, then
   the ``clean`` table, a contact sheet of what was dropped, and precision/recall
   against planted truth columns when the dataset has them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from ..images import iter_batches
from ..logs import log, progress
from ..manifest import merge_tables
from .clip import ClipClassifier, ClipUnavailable, resolve_device
from .detectors import chroma_spread, duplicate_groups, perceptual_hash, seam_strength, shrink
from .report import contact_sheet, truth_report
from .settings import check_clean_settings, complete_settings

FAST_COLUMNS = ["chroma", "seam"]


def clip_column(label: str) -> str:
    return f"clip_{label}"


def load_classifier(settings: dict[str, Any], device: str) -> ClipClassifier | None:
    """The CLIP classifier the method asks for; None for ``fast``/``none``, or for ``auto``
    when the weights cannot be loaded (logged). ``clip`` without weights raises."""
    if settings["method"] not in ("clip", "auto"):
        return None
    try:
        return ClipClassifier(settings["clip"], device)
    except ClipUnavailable as error:
        if settings["method"] == "clip":
            raise
        log.warning("clean.method is auto and CLIP is unavailable, falling back to the fast detectors: %s", error)
        return None


def resolve_method(settings: dict[str, Any], record_out: str | Path) -> str:
    """Decide once which detectors the shards run (``none``, ``fast`` or ``clip``); write it as JSON."""
    settings = check_clean_settings(settings)
    method = settings["method"]
    if method in ("clip", "auto"):
        method = "clip" if load_classifier(settings, "cpu") is not None else "fast"
    Path(record_out).write_text(json.dumps({"configured": settings["method"], "method": method}))
    log.info("clean: method %s (configured %s)", method, settings["method"])
    return method


@dataclass(frozen=True)
class _ImageScores:
    """Runs in the loader workers: the weight-free scores and the CLIP input of one image."""

    clip_preprocess: Callable | None

    def __call__(self, rgb: np.ndarray):
        small = shrink(rgb)  # one resize shared by the three detectors
        scores = (chroma_spread(small), seam_strength(small), perceptual_hash(small))
        if self.clip_preprocess is None:
            return scores, None
        return scores, self.clip_preprocess(Image.fromarray(rgb))


def score_images(paths: Sequence[str | Path], image_ids: Sequence[str], classifier: ClipClassifier | None = None,
                 batch_size: int = 32, workers: int | None = None) -> pd.DataFrame:
    """Scores of every image: ``image_id, error, chroma, seam, phash`` (+ ``clip_<label>``).

    An image that fails to decode keeps its row with the reason in ``error``.
    """
    n = len(paths)
    chroma, seam = np.full(n, np.nan), np.full(n, np.nan)
    phash, errors = [""] * n, [""] * n
    labels = classifier.labels if classifier else []
    probabilities = np.full((n, len(labels)), np.nan, dtype=np.float32)
    transform = _ImageScores(classifier.preprocess if classifier else None)
    batches = iter_batches(paths, transform, batch_size, workers)
    for indices, results, batch_errors in progress(batches, desc="clean scores", total=-(-n // batch_size),
                                                   unit="batch"):
        decoded = []
        for i, result, error in zip(indices, results, batch_errors):
            if result is None:
                errors[i] = error
                log.warning("clean: cannot read %s: %s", paths[i], error)
                continue
            (chroma[i], seam[i], phash[i]), clip_input = result
            decoded.append((i, clip_input))
        if classifier and decoded:
            rows, inputs = zip(*decoded)
            probabilities[list(rows)] = classifier.probabilities(inputs)
    table = pd.DataFrame({"image_id": list(image_ids), "error": errors, "chroma": chroma, "seam": seam,
                          "phash": phash})
    for k, label in enumerate(labels):
        table[clip_column(label)] = probabilities[:, k]
    return table


def score_shard(manifest_path, root, shard: int, settings: dict[str, Any], scores_out, batch_size: int = 32,
                workers: int | None = None, threads: int = 1, method_record=None) -> None:
    """Score the manifest's images of ``shard``; ``method_record`` is ``resolve_method``'s output
    (without it the method is resolved here)."""
    import torch

    settings = check_clean_settings(settings)  # before any image is read
    torch.set_num_threads(max(1, threads))
    if method_record is not None:
        settings = {**settings, "method": json.loads(Path(method_record).read_text())["method"]}
    manifest = pd.read_parquet(manifest_path, columns=["image_id", "shard", "path"])
    rows = manifest[manifest["shard"] == shard]
    if settings["method"] == "none":
        table = pd.DataFrame({"image_id": rows["image_id"]})
    else:
        classifier = load_classifier(settings, resolve_device(settings["clip"]["device"]))
        paths = [Path(root) / p for p in rows["path"]]
        table = score_images(paths, rows["image_id"].tolist(), classifier, batch_size, workers)
        log.info("clean scores of shard %d: %d images, CLIP %s", shard, len(table),
                 "on " + classifier.device if classifier else "not used")
    table.to_parquet(scores_out, index=False)


def _effective_method(configured: str, scores: pd.DataFrame, clip: dict[str, Any]) -> str:
    """``auto`` uses CLIP only when every shard has its probabilities."""
    if configured in ("none", "fast"):
        return configured
    columns = [clip_column(label) for label in clip["prompts"]]
    readable = scores[scores["error"] == ""]
    if all(c in scores for c in columns) and readable[columns].notna().all().all():
        return "clip"
    if configured == "clip":
        raise ClipUnavailable("clean.method is clip but the scores lack CLIP probabilities "
                              f"(for {', '.join(columns)}); rerun the clean scoring jobs")
    log.warning("clean.method is auto and CLIP probabilities are missing from the scores (CLIP was unavailable "
                "when they were computed): using the fast detectors")
    return "fast"


def _pixel_count(images: pd.DataFrame) -> pd.Series:
    return images["width"].astype("int64") * images["height"].astype("int64")


def drop_decisions(images: pd.DataFrame, settings: dict[str, Any], method: str) -> pd.DataFrame:
    """The clean table from scores joined with the manifest (``path``, ``width``, ``height``).

    Content reasons come first (an unreadable image, then grayscale before collage, or
    the most likely CLIP drop class); duplicates are grouped among the images still
    kept, so the one kept per group is never an image dropped for its content, and only
    among images of the same role, so a query is never dropped for resembling the database.
    """
    images = images.reset_index(drop=True)
    reason = pd.Series("", index=images.index, dtype=object)
    columns = ["image_id"]
    if method != "none":
        unreadable = images["error"] != ""
        reason[unreadable] = "unreadable: " + images.loc[unreadable, "error"]
    if method == "fast":
        columns += FAST_COLUMNS
        max_chroma, min_seam = settings["grayscale"]["max_chroma"], settings["collage"]["min_seam"]
        grayscale = (reason == "") & (images["chroma"] <= max_chroma if max_chroma is not None else False)
        collage = (reason == "") & ~grayscale & (images["seam"] >= min_seam if min_seam is not None else False)
        reason[grayscale] = "grayscale"
        reason[collage] = "collage"
    elif method == "clip":
        clip = settings["clip"]
        columns += FAST_COLUMNS + [clip_column(label) for label in clip["prompts"]]
        drop = np.nan_to_num(images[[clip_column(label) for label in clip["drop"]]].to_numpy(), nan=0.0)
        best = drop.argmax(axis=1)
        passed = (reason == "") & (drop[np.arange(len(images)), best] >= clip["threshold"])
        prompts = np.array([f"clip:{clip['prompts'][label]}" for label in clip["drop"]], dtype=object)
        reason[passed] = prompts[best[passed]]

    table = images[columns].copy()
    max_distance = settings["duplicates"]["max_distance"]
    if method != "none" and max_distance is not None:
        candidates = images[reason == ""]
        # Within one role only: a query that looks like a database image is what retrieval is for.
        roles = candidates["role"] if "role" in candidates else pd.Series("", index=candidates.index)
        group = pd.Series(0, index=candidates.index, dtype="int64")
        distance = pd.Series(-1, index=candidates.index, dtype="Int64")
        offset = 0
        for _, members in candidates.groupby(roles, sort=True):
            local, nearest = duplicate_groups(members["phash"].tolist(), max_distance)
            group[members.index] = np.asarray(local) + offset
            distance[members.index] = nearest
            offset += int(np.max(local)) + 1 if len(members) else 0
        table["duplicate_distance"] = distance.where(distance >= 0).reindex(table.index)
        ranked = candidates.assign(group=group, pixels=_pixel_count(candidates)).sort_values(
            ["group", "pixels", "path"], ascending=[True, False, True])
        keeper = ranked.groupby("group")["image_id"].transform("first")
        copies = ranked[ranked["image_id"] != keeper]
        reason[copies.index] = "duplicate of " + keeper[copies.index]
    table["keep"] = reason == ""
    table["reason"] = reason
    return table


def _reason_kind(reason: str) -> str:
    return reason.split(":")[0] if reason.startswith("unreadable") else reason.split(" of ")[0]


def decide(manifest_path, score_paths: Sequence[str | Path], root, settings: dict[str, Any], clean_out,
           sheet_png, report_tsv) -> pd.DataFrame:
    """Apply thresholds and group duplicates over all shards; write the clean table, the
    contact sheet of dropped images and the precision/recall of the planted truth."""
    settings = complete_settings(settings)  # the model is not needed here, only the labels
    manifest = pd.read_parquet(manifest_path)
    scores = merge_tables(list(score_paths))
    method = _effective_method(settings["method"], scores, settings["clip"])
    images = manifest.merge(scores, on="image_id", how="left", validate="one_to_one")
    if "error" in images:
        images["error"] = images["error"].fillna("not scored")
    table = drop_decisions(images, settings, method)
    table.to_parquet(clean_out, index=False)

    counts = table.loc[~table["keep"], "reason"].map(_reason_kind).value_counts()
    log.info("clean (method %s): kept %d of %d; dropped %s", method, int(table["keep"].sum()), len(table),
             ", ".join(f"{kind} {n}" for kind, n in counts.items()) or "none")
    dropped = table[~table["keep"]].merge(manifest[["image_id", "path"]], on="image_id")
    contact_sheet(dropped.assign(kind=dropped["reason"].map(_reason_kind)), root, sheet_png,
                  settings["sheet"]["per_reason"])
    report = truth_report(table, manifest, settings, method)
    report.to_csv(report_tsv, sep="\t", index=False, float_format="%.4f")
    for row in report.itertuples():
        log.info("clean %s vs %s: precision %.3f recall %.3f (%d planted, %d dropped)", row.detector, row.truth,
                 row.precision, row.recall, row.n_truth, row.n_dropped)
    return table
