"""Per-image cleaning scores and the drop decisions made from them.

Scoring is one pass over the pixels through the shared loader: the weight-free scores,
the perceptual hash and the CLIP class probabilities of every image; no thresholds are
applied there. The decision applies thresholds and groups duplicates over all images
together. ``vprflow.stages`` spreads the two over the clean rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from ..images import iter_batches
from ..logs import log, progress
from . import CLEAN_METHODS
from .clip import ClipClassifier, ClipUnavailable
from .detectors import chroma_spread, duplicate_groups, perceptual_hash, seam_strength, shrink

FAST_COLUMNS = ["chroma", "seam"]


def clip_column(label: str) -> str:
    return f"clip_{label}"


def load_classifier(settings: dict[str, Any], device: str) -> ClipClassifier | None:
    """The CLIP classifier the method asks for; None for ``fast``/``none``, or for ``auto``
    when the weights cannot be loaded (logged). ``clip`` without weights raises."""
    method = CLEAN_METHODS.get(settings["method"])
    if not method.uses_clip:
        return None
    try:
        return ClipClassifier(settings["clip"], device)
    except ClipUnavailable as error:
        if not method.falls_back:
            raise
        log.warning("clean.method is auto and CLIP is unavailable, falling back to the fast detectors: %s", error)
        return None


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


def effective_method(configured: str, scores: pd.DataFrame, clip: dict[str, Any]) -> str:
    """The detectors the decision applies: ``auto`` uses CLIP only when every shard has its probabilities."""
    method = CLEAN_METHODS.get(configured)
    if not method.uses_clip:
        return configured
    columns = [clip_column(label) for label in clip["prompts"]]
    readable = scores[scores["error"] == ""]
    if all(c in scores for c in columns) and readable[columns].notna().all().all():
        return "clip"
    if not method.falls_back:
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


def reason_kind(reason: str) -> str:
    """The kind of a drop reason: ``grayscale``, ``collage``, ``duplicate``, ``unreadable``, ``clip:...``."""
    return reason.split(":")[0] if reason.startswith("unreadable") else reason.split(" of ")[0]
