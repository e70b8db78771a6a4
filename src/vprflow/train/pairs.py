"""Who is a positive, who a negative, of whom: the supervision of place recognition.

Positives of an image: other images of the same place or within ``positive_radius_m``.
Negatives: images of another place and beyond ``negative_radius_m`` -- the gap between
the radii holds images that are neither (NetVLAD: 10 m and 25 m). Two images are only
compared on what both carry (place labels, positions); an image pair with no common
ground truth is neither positive nor negative.

When the images come as a query traverse and a database traverse (roles), anchors are
the queries and their positives and negatives come from the database, as in NetVLAD's
training; otherwise every image is both.
"""

from __future__ import annotations

import faiss
import numpy as np
import pandas as pd

from ..ground_truth import by_place, by_radius
from ..tables import positions_m


class Relations:
    def __init__(self, images: pd.DataFrame, positive_radius_m: float, negative_radius_m: float):
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
        """Rows that can anchor a training tuple or be a validation query: with a positive."""
        return np.array([i for i in range(self.size) if self.is_anchor[i] and len(self.positives[i])], np.int64)

    def negatives_among(self, row: int, candidates: np.ndarray) -> np.ndarray:
        """The members of ``candidates`` that are true negatives of ``row``."""
        comparable = (self.has_place[row] & self.has_place[candidates]) | (
            self.has_position[row] & self.has_position[candidates]
        )
        keep = comparable & self.is_candidate[candidates] & (candidates != row)
        keep &= ~np.isin(candidates, self.not_negatives[row])
        return candidates[keep]


def validation_recall(descriptors: np.ndarray, relations: Relations, ns=(1, 5, 10)) -> dict[str, float]:
    """Recall@N of every anchor against the candidates (itself excluded): the validation metric.

    Unlike ``metrics.recall``, which scores a search's neighbours table against the ground
    truth, this ranks a set of descriptors against each other under the training relations."""
    anchors = relations.anchors()
    if not len(anchors):
        return {f"R@{n}": float("nan") for n in ns}
    candidates = np.flatnonzero(relations.is_candidate)
    index = faiss.IndexFlatIP(descriptors.shape[1])
    index.add(np.ascontiguousarray(descriptors[candidates], dtype=np.float32))
    k = min(max(ns) + 1, len(candidates))
    _, found = index.search(np.ascontiguousarray(descriptors[anchors], dtype=np.float32), k)
    first_hit = np.full(len(anchors), np.inf)
    for i, (anchor, rows) in enumerate(zip(anchors, found)):
        ranked = candidates[rows[rows >= 0]]
        ranked = ranked[ranked != anchor]
        hits = np.flatnonzero(np.isin(ranked, relations.positives[anchor]))
        if len(hits):
            first_hit[i] = hits[0]
    return {f"R@{n}": float(np.mean(first_hit < n)) for n in ns}
