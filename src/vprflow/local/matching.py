"""Matching the local features of two images: tentative matches by descriptor, then RANSAC.

Tentative matches come from faiss' exact distances (squared L2 between L2-normalised
descriptors; ``faiss.knn`` for the ratio test, one ``pairwise_distances`` product read
both ways for mutual neighbours):

* ``mutual``: pairs that are each other's nearest neighbour;
* ``ratio``: Lowe's test, the nearest neighbour closer than ``ratio`` times the second.

RANSAC fits a homography (a planar scene or a camera that turns) or a fundamental
matrix (any rigid scene) to the matched positions. Positions are first scaled so each
image's longest side is :data:`FRAME` pixels: a threshold then means the same whatever
the photos' sizes (``ransac_threshold`` is a fraction of the longest side).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import faiss
import numpy as np

from .store import LocalFeatures

GEOMETRIES = ("homography", "fundamental")
MATCHINGS = ("mutual", "ratio")
MIN_MATCHES = {"homography": 4, "fundamental": 8}
FRAME = 1000.0
RANSAC_ITERATIONS = 2000
RANSAC_CONFIDENCE = 0.999
RANSAC_METHODS = {"homography": cv2.USAC_DEFAULT, "fundamental": cv2.FM_RANSAC}
"""Homographies by OpenCV's USAC (LO-RANSAC with early rejection of bad models): on real
pairs about 20 times faster than classic RANSAC for the same inliers, mostly on the unrelated
pairs where classic RANSAC runs all its iterations. Fundamental matrices by classic RANSAC:
USAC's local optimisation fits epipolar lines through chance matches (15 of 27 on unrelated
textures, against 10)."""

MIN_DEPTH = 0.1
"""A homography's projective denominator must stay within [MIN_DEPTH, 1 / MIN_DEPTH] over
the matched region (``plausible``)."""

Geometry = Literal["homography", "fundamental"]


@dataclass(frozen=True)
class PairMatch:
    """Tentative matches of a pair (rows of the query's and the other image's features) and
    which of them RANSAC kept."""

    query_rows: np.ndarray
    other_rows: np.ndarray
    inliers: np.ndarray  # bool, one per tentative match

    @property
    def n_matches(self) -> int:
        return len(self.query_rows)

    @property
    def n_inliers(self) -> int:
        return int(self.inliers.sum())


def tentative_matches(query: np.ndarray, other: np.ndarray, matching: str = "mutual",
                      ratio: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """(rows in ``query``, rows in ``other``) of the tentative matches between two descriptor sets."""
    query = np.ascontiguousarray(query, dtype=np.float32)
    other = np.ascontiguousarray(other, dtype=np.float32)
    none = np.zeros(0, np.int64), np.zeros(0, np.int64)
    if matching == "ratio":
        if len(query) == 0 or len(other) < 2:
            return none
        distances, nearest = faiss.knn(query, other, 2)
        keep = np.flatnonzero(distances[:, 0] < ratio**2 * distances[:, 1])
        return keep, nearest[keep, 0]
    if matching != "mutual":
        raise ValueError(f"matching {matching!r} is not one of {MATCHINGS}")
    if len(query) == 0 or len(other) == 0:
        return none
    distances = faiss.pairwise_distances(query, other)  # one product for both directions
    forward, backward = distances.argmin(1), distances.argmin(0)
    keep = np.flatnonzero(backward[forward] == np.arange(len(query)))
    return keep, forward[keep]


def in_frame(xy: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Positions scaled so the image's longest side is FRAME pixels."""
    return (xy * (FRAME / max(size))).astype(np.float32)


def ransac_inliers(query_xy: np.ndarray, other_xy: np.ndarray, geometry: Geometry, threshold: float) -> np.ndarray:
    """Which matched positions (already in the FRAME scale) fit the model RANSAC finds, as a
    bool mask; all False when there are too few matches for the model, no model fits, or
    the homography found is not a plausible view (``plausible``).

    OpenCV's random generator is seeded per call, so the same pair gives the same inliers on
    any thread.
    """
    inliers = np.zeros(len(query_xy), bool)
    if len(query_xy) < MIN_MATCHES[geometry]:
        return inliers
    cv2.setRNGSeed(0)
    method = RANSAC_METHODS[geometry]
    if geometry == "homography":
        model, mask = cv2.findHomography(query_xy, other_xy, method, threshold, maxIters=RANSAC_ITERATIONS,
                                         confidence=RANSAC_CONFIDENCE)
    else:
        model, mask = cv2.findFundamentalMat(query_xy, other_xy, method, threshold, RANSAC_CONFIDENCE,
                                             RANSAC_ITERATIONS)
    if model is None or mask is None or (geometry == "homography" and not plausible(model, query_xy)):
        return inliers
    return mask.reshape(-1).astype(bool)


def plausible(homography: np.ndarray, query_xy: np.ndarray) -> bool:
    """Whether a homography could be a view of one plane in both photos: it keeps its
    orientation (no mirror) and sends no part of the matched region through or near
    infinity (the projective denominator stays within [MIN_DEPTH, 1 / MIN_DEPTH] at the
    corners of the query points' bounding box). The models RANSAC fits to chance matches
    mostly fail this; views of a real scene pass it."""
    if abs(homography[2, 2]) < 1e-12:
        return False
    h = homography / homography[2, 2]
    (x0, y0), (x1, y1) = query_xy.min(0), query_xy.max(0)
    corners = np.array([[x0, y0, 1], [x1, y0, 1], [x0, y1, 1], [x1, y1, 1]], np.float64)
    depth = corners @ h[2]
    return bool(np.linalg.det(h) > 0 and depth.min() >= MIN_DEPTH and depth.max() <= 1 / MIN_DEPTH)


def match_pair(query: LocalFeatures, other: LocalFeatures, geometry: Geometry = "homography",
               matching: str = "mutual", ratio: float = 0.8, ransac_threshold: float = 0.01) -> PairMatch:
    """Tentative matches of two images and their RANSAC inliers; ``ransac_threshold`` is a
    fraction of the longest image side (0.01 is 6.4 pixels at 640)."""
    query_rows, other_rows = tentative_matches(query.descriptors, other.descriptors, matching, ratio)
    inliers = ransac_inliers(in_frame(query.xy[query_rows], query.size), in_frame(other.xy[other_rows], other.size),
                             geometry, ransac_threshold * FRAME)
    return PairMatch(query_rows, other_rows, inliers)
