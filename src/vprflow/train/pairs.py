"""Who is a positive, who a negative, of whom: the supervision of place recognition.

Positives of an image: other images of the same place or within ``positive_radius_m``.
Negatives: images of another place and beyond ``negative_radius_m`` -- the gap between
the radii holds images that are neither (NetVLAD: 10 m and 25 m). Two images are only
compared on what both carry (place labels, positions); an image pair with no common
ground truth is neither positive nor negative.

When the images come as a query traverse and a database traverse (roles), anchors are
the queries and their positives and negatives come from the database, as in NetVLAD's
training; otherwise every image is both.

Near-duplicates: a positive whose 32x24 thumbnail already correlates with the anchor's at
``near_duplicate_similarity`` or more (the next frame of a video, the same shot twice)
teaches nothing and makes validation trivial. Such positives are never a training
positive, and validation leaves them out of the ranking (as junk): it asks for the
positives a thumbnail cannot find.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import pandas as pd

from ..ground_truth import by_place, by_radius
from ..images import iter_batches
from ..logs import log, progress
from ..metrics.average_precision import average_precision
from ..tables import positions_m

THUMBNAIL_SIZE = (32, 24)


def thumbnail(rgb: np.ndarray) -> np.ndarray:
    """The zero-mean, unit-norm 32x24 colour thumbnail (the tiny-image floor) as one vector."""
    small = cv2.resize(rgb, THUMBNAIL_SIZE, interpolation=cv2.INTER_AREA).astype(np.float32).reshape(-1)
    small -= small.mean()
    return small / max(float(np.linalg.norm(small)), 1e-12)


def thumbnails(paths: Sequence[str], workers: int | None, batch_size: int = 64) -> np.ndarray:
    """Thumbnails of ``paths``, in order (an image that does not decode gets zeros: it is
    then nobody's near-duplicate)."""
    out = np.zeros((len(paths), THUMBNAIL_SIZE[0] * THUMBNAIL_SIZE[1] * 3), np.float32)
    batches = iter_batches(list(paths), thumbnail, batch_size, workers)
    for indices, images, _ in progress(batches, desc="thumbnails", total=-(-len(paths) // batch_size), unit="batch"):
        for i, vector in zip(indices, images):
            if vector is not None:
                out[i] = vector
    return out


class Relations:
    """Positives, near-duplicates and negatives of a set of images (see the module docstring).

    ``thumbs`` (one :func:`thumbnail` per image) and ``near_duplicate_similarity`` mark the
    near-duplicate positives; without them no positive is one.
    """

    def __init__(self, images: pd.DataFrame, positive_radius_m: float, negative_radius_m: float,
                 thumbs: np.ndarray | None = None, near_duplicate_similarity: float = 1.0):
        images = images.reset_index(drop=True)
        self.size = len(images)
        role = images["role"].fillna("")
        two_traverses = role.eq("query").any() and role.eq("database").any()
        self.is_anchor = (~role.eq("database")).to_numpy() if two_traverses else np.ones(self.size, bool)
        self.is_candidate = (~role.eq("query")).to_numpy() if two_traverses else np.ones(self.size, bool)
        self.has_place = images["place"].notna().to_numpy()
        self.has_position = np.isfinite(positions_m(images)).all(1)
        self.positives = self._related(images, positive_radius_m)
        self.not_negatives = self._related(images, negative_radius_m)
        self.near_duplicates = [np.zeros(0, np.int64)] * self.size
        if thumbs is not None:
            self.near_duplicates = [p[thumbs[p] @ thumbs[i] >= near_duplicate_similarity]
                                    for i, p in enumerate(self.positives)]
        self.distinct_positives = [np.setdiff1d(p, d) for p, d in zip(self.positives, self.near_duplicates)]
        n_near = sum(len(d) for d in self.near_duplicates)
        if n_near:
            log.info("%d of %d positive pairs are near-duplicates (thumbnail correlation >= %.2f): not used",
                     n_near, sum(len(p) for p in self.positives), near_duplicate_similarity)

    def _related(self, images: pd.DataFrame, radius_m: float) -> list[np.ndarray]:
        """Per image: sorted candidate rows of the same place or within ``radius_m``, itself excluded."""
        frame = images.assign(image_id=np.arange(self.size))
        queries, database = frame[self.is_anchor], frame[self.is_candidate]
        pairs = pd.concat([by_place(queries, database), by_radius(queries, database, radius_m)])
        pairs = pairs[pairs["query_id"] != pairs["db_id"]].drop_duplicates(["query_id", "db_id"])
        query, db = pairs["query_id"].to_numpy(np.int64), pairs["db_id"].to_numpy(np.int64)
        order = np.lexsort((db, query))
        query, db = query[order], db[order]
        bounds = np.searchsorted(query, np.arange(self.size + 1))
        return [db[bounds[i] : bounds[i + 1]] for i in range(self.size)]

    def anchors(self) -> np.ndarray:
        """Rows that can anchor a training tuple or be a validation query: with a positive
        that is not a near-duplicate."""
        return np.array([i for i in range(self.size) if self.is_anchor[i] and len(self.distinct_positives[i])],
                        np.int64)

    def positive_pairs(self) -> np.ndarray:
        """Every pair (i, j), i < j, of an anchor and one of its positives that is not a
        near-duplicate: the matching pairs of learned whitening."""
        pairs = [(i, j) for i in range(self.size) for j in self.distinct_positives[i]]
        pairs = np.array(pairs, np.int64).reshape(-1, 2)
        return np.unique(np.sort(pairs, axis=1), axis=0)

    def negatives_among(self, row: int, candidates: np.ndarray) -> np.ndarray:
        """The members of ``candidates`` that are true negatives of ``row``."""
        comparable = (self.has_place[row] & self.has_place[candidates]) | (
            self.has_position[row] & self.has_position[candidates]
        )
        keep = comparable & self.is_candidate[candidates] & (candidates != row)
        keep &= ~np.isin(candidates, self.not_negatives[row])
        return candidates[keep]


def validation_metrics(descriptors: np.ndarray, relations: Relations, ns=(1, 5, 10)) -> dict[str, float]:
    """mAP and Recall@N of every anchor ranking all candidates (itself excluded), its
    near-duplicate positives left out of the ranking: the validation measure.

    Unlike ``metrics``, which score a search's neighbours table against the ground truth,
    this ranks a set of descriptors against each other under the training relations. mAP
    over the whole ranking does not saturate the way recall of a near neighbour does."""
    anchors = relations.anchors()
    if not len(anchors):
        return {"mAP": float("nan"), **{f"R@{n}": float("nan") for n in ns}}
    candidates = np.flatnonzero(relations.is_candidate)
    vectors = np.ascontiguousarray(descriptors, dtype=np.float32)
    precisions, first_hit = [], np.full(len(anchors), np.inf)
    for i, anchor in enumerate(anchors):
        order = candidates[np.argsort(-(vectors[candidates] @ vectors[anchor]), kind="stable")]
        ranked = order[~np.isin(order, relations.near_duplicates[anchor]) & (order != anchor)]
        positives = relations.distinct_positives[anchor]
        precisions.append(average_precision(ranked.tolist(), set(positives.tolist())))
        hits = np.flatnonzero(np.isin(ranked, positives))
        if len(hits):
            first_hit[i] = hits[0]
    return {"mAP": float(np.mean(precisions)), **{f"R@{n}": float(np.mean(first_hit < n)) for n in ns}}
