"""Spatial verification: SIFT (RootSIFT) matches between a query and each of its top R,
a RANSAC homography or fundamental matrix, and the top R reordered by inliers."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal, Mapping

import cv2
import numpy as np
import pandas as pd

from ..descriptors.sift import SIFT_DIM, rootsift_features
from ..errors import InputError, SettingError
from ..images import iter_batches
from ..logs import log, progress
from ..registry import one_of, whole_number
from ..tables import renumbered, sort_neighbours

_EMPTY_FEATURES = (np.zeros((0, 2), np.float32), np.zeros((0, SIFT_DIM), np.float32))

_MIN_MATCHES = {"homography": 4, "fundamental": 8}
DEFAULT_RANSAC_THRESHOLD = {"homography": 5.0, "fundamental": 2.0}




def ratio_test_matches(
    descriptors_a: np.ndarray, descriptors_b: np.ndarray, ratio: float
) -> tuple[np.ndarray, np.ndarray]:
    """Lowe's ratio test: (indices in a, indices in b) of matches whose nearest neighbour
    in b is closer than ``ratio`` times the second nearest (L2 distance)."""
    if len(descriptors_a) == 0 or len(descriptors_b) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    squared = (
        np.einsum("ij,ij->i", descriptors_a, descriptors_a)[:, None]
        + np.einsum("ij,ij->i", descriptors_b, descriptors_b)[None, :]
        - 2.0 * descriptors_a @ descriptors_b.T
    )
    two_nearest = np.argpartition(squared, 1, axis=1)[:, :2]
    two_distances = np.take_along_axis(squared, two_nearest, axis=1)
    first = two_distances.argmin(axis=1)
    nearest = np.take_along_axis(two_nearest, first[:, None], axis=1)[:, 0]
    nearest_d2 = np.maximum(two_distances.min(axis=1), 0.0)
    second_d2 = np.maximum(two_distances.max(axis=1), 0.0)
    keep = nearest_d2 < ratio**2 * second_d2
    return np.flatnonzero(keep), nearest[keep]


def count_inliers(
    xy_a: np.ndarray, xy_b: np.ndarray, method: Literal["homography", "fundamental"], ransac_threshold: float
) -> int:
    """RANSAC inliers of a homography or fundamental matrix between matched points (0 if too few)."""
    if len(xy_a) < _MIN_MATCHES[method]:
        return 0
    if method == "homography":
        _, mask = cv2.findHomography(xy_a, xy_b, cv2.RANSAC, ransac_threshold)
    else:
        _, mask = cv2.findFundamentalMat(xy_a, xy_b, cv2.FM_RANSAC, ransac_threshold, 0.999)
    return 0 if mask is None else int(mask.sum())


def spatial_verification(
    neighbours: pd.DataFrame,
    image_paths: Mapping[str, str],
    top_r: int,
    method: Literal["homography", "fundamental"] = "homography",
    max_side: int = 640,
    ratio: float = 0.8,
    ransac_threshold: float | None = None,
    max_features: int = 2000,
    batch_size: int = 16,
    workers: int | None = None,
) -> pd.DataFrame:
    """Re-rank each query's top R by RANSAC inliers of RootSIFT matches with the query.

    ``image_paths`` maps every query and database id to an absolute path. Features are
    extracted once per image in the DataLoader workers of :func:`iter_batches`, in order
    of first use, and dropped after their last use, so memory holds only the images still
    needed. ``ransac_threshold`` is in pixels of the images shrunk to ``max_side``
    (default 5 for a homography, 2 for a fundamental matrix).

    New order: the top R by inlier count (ties by original score, then original rank),
    then the remaining rows in their original order. New score: the inlier count for the
    top R, -1 for the rows below R (not verified). An image that fails to decode is
    logged and gets 0 inliers.
    """
    if method not in _MIN_MATCHES:
        raise InputError(f"spatial verification method {method!r} is not one of {sorted(_MIN_MATCHES)}")
    if top_r < 1:
        raise InputError(f"spatial verification top_r must be >= 1, got {top_r}")
    threshold = DEFAULT_RANSAC_THRESHOLD[method] if ransac_threshold is None else ransac_threshold
    ranked = sort_neighbours(neighbours)
    if ranked.empty:
        return renumbered(ranked, np.zeros(0, np.float32))
    position = ranked.groupby("query_id", sort=False).cumcount().to_numpy()
    query_codes, queries = pd.factorize(ranked["query_id"])
    verified_rows = np.flatnonzero(position < top_r)
    shortlist_of = np.split(verified_rows, np.flatnonzero(np.diff(query_codes[verified_rows])) + 1)

    db_ids = ranked["db_id"].to_numpy()
    images_by_query = [[queries[q], *db_ids[rows]] for q, rows in enumerate(shortlist_of)]
    first_use_order = list(dict.fromkeys(image_id for ids in images_by_query for image_id in ids))
    missing = [image_id for image_id in first_use_order if image_id not in image_paths]
    if missing:
        raise InputError(f"image_paths has no path for {len(missing)} image id(s), e.g. {missing[:5]}")
    position_of = {image_id: i for i, image_id in enumerate(first_use_order)}
    last_use = {image_id: q for q, ids in enumerate(images_by_query) for image_id in ids}
    ready_after = [max(position_of[image_id] for image_id in ids) for ids in images_by_query]

    inliers = np.full(len(ranked), -1, dtype=np.int64)
    features: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    next_query = 0
    batches = iter_batches(
        [image_paths[image_id] for image_id in first_use_order],
        transform=functools.partial(rootsift_features, max_side=max_side, max_keypoints=max_features),
        batch_size=batch_size,
        workers=workers,
    )
    n_batches = -(-len(first_use_order) // batch_size)
    for indices, extracted, errors in progress(batches, "spatial verification", total=n_batches, unit="batch"):
        for index, image_features, error in zip(indices, extracted, errors):
            image_id = first_use_order[index]
            if image_features is None:
                log.warning("spatial verification: %s (%s) gets 0 inliers: %s", image_id, image_paths[image_id], error)
                image_features = _EMPTY_FEATURES
            features[image_id] = image_features
        while next_query < len(images_by_query) and ready_after[next_query] <= indices[-1]:
            query_id, *shortlist_ids = images_by_query[next_query]
            query_xy, query_descriptors = features[query_id]
            for row, db_id in zip(shortlist_of[next_query], shortlist_ids):
                db_xy, db_descriptors = features[db_id]
                in_query, in_db = ratio_test_matches(query_descriptors, db_descriptors, ratio)
                inliers[row] = count_inliers(query_xy[in_query], db_xy[in_db], method, threshold)
            for image_id in images_by_query[next_query]:
                if last_use[image_id] == next_query:
                    features.pop(image_id, None)
            next_query += 1

    verified = inliers >= 0
    order = np.lexsort((position, -ranked["score"].to_numpy(), -inliers, ~verified, query_codes))
    return renumbered(ranked.iloc[order], inliers[order].astype(np.float32))


class SpatialVerification:
    """``method: spatial``: the top R of every query reordered by RANSAC inliers."""

    DEFAULTS: dict[str, Any] = {"top_r": 20, "geometry": "homography", "max_side": 640, "ratio": 0.8}

    @staticmethod
    def check(settings: dict[str, Any]) -> None:
        whole_number(settings, "top_r")
        whole_number(settings, "max_side")
        one_of(settings, "geometry", sorted(_MIN_MATCHES))
        if not isinstance(settings["ratio"], (int, float)) or not 0 < settings["ratio"] <= 1:
            raise SettingError("ratio", f"Lowe's ratio must be in (0, 1], got {settings['ratio']!r}")

    @staticmethod
    def apply(neighbours: pd.DataFrame, settings: dict[str, Any], inputs) -> pd.DataFrame:
        manifest = inputs.manifest
        paths = {i: str(Path(inputs.root) / p) for i, p in zip(manifest["image_id"], manifest["path"])}
        return spatial_verification(neighbours, paths, settings["top_r"], method=settings["geometry"],
                                    max_side=settings["max_side"], ratio=settings["ratio"], workers=inputs.workers)
