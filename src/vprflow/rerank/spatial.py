"""``method: spatial``: geometric verification with SIFT extracted during re-ranking.

The SIFT flavour of ``method: local`` (``vprflow.local.verification``: same matching,
RANSAC and scoring, so it never reorders a shortlist on a few chance inliers) for runs
that have no ``sift`` model: each image's RootSIFT is computed here, once per job, in
DataLoader workers. With a ``sift`` model and ``method: local`` the extraction stage does
that once for all searches and the re-ranking only reads features back.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal, Mapping

import numpy as np
import pandas as pd

from ..descriptors.sift import SIFT_DIM, SIFTFeatures, check_sides, sift_local_features
from ..errors import InputError
from ..images import iter_batches
from ..local.matching import GEOMETRIES, match_pair
from ..local.store import LocalFeatures
from ..local.verification import VERIFICATION_DEFAULTS, Shortlists, check_verification, resolved, verified_ranking
from ..logs import log, progress
from ..registry import whole_number


def spatial_verification(
    neighbours: pd.DataFrame,
    image_paths: Mapping[str, str],
    top_r: int,
    method: Literal["homography", "fundamental"] = "homography",
    max_side: int = 640,
    min_side: int = SIFTFeatures.DEFAULTS["min_side"],
    ratio: float = 0.8,
    ransac_threshold: float | None = None,
    max_features: int = 2000,
    batch_size: int = 16,
    workers: int | None = None,
    **verification: Any,
) -> pd.DataFrame:
    """Re-rank each query's top R by geometric verification of RootSIFT matches.

    ``image_paths`` maps every query and database id to an absolute path. Features are
    extracted once per image in the DataLoader workers of :func:`iter_batches`, in order
    of first use, and dropped after their last use, so memory holds only the images still
    needed. ``ransac_threshold`` is a fraction of the longest image side; ``verification``
    takes the other settings of ``VERIFICATION_DEFAULTS`` (``matching``, ``min_inliers``, ...);
    nulls become ``sift``'s defaults (``vprflow.local.verification.resolved``).

    New order and score: ``vprflow.local.verification.verified_ranking``. An image that
    fails to decode is logged and its pairs get 0 inliers.
    """
    if method not in GEOMETRIES:
        raise InputError(f"spatial verification method {method!r} is not one of {list(GEOMETRIES)}")
    if top_r < 1:
        raise InputError(f"spatial verification top_r must be >= 1, got {top_r}")
    settings = resolved({**VERIFICATION_DEFAULTS, **verification, "top_r": top_r, "geometry": method, "ratio": ratio,
                         "ransac_threshold": ransac_threshold}, SIFTFeatures.VERIFICATION)
    shortlists = Shortlists.of(neighbours)
    inliers = np.full(len(shortlists.ranked), -1, dtype=np.int64)
    matches = np.full(len(shortlists.ranked), -1, dtype=np.int64)
    shortlist_of = shortlists.verified_rows(top_r)
    if not shortlist_of:
        return verified_ranking(shortlists, inliers, matches, settings)

    db_ids = shortlists.ranked["db_id"].to_numpy()
    images_by_query = [[shortlists.queries[q], *db_ids[rows]] for q, rows in enumerate(shortlist_of)]
    first_use_order = list(dict.fromkeys(image_id for ids in images_by_query for image_id in ids))
    missing = [image_id for image_id in first_use_order if image_id not in image_paths]
    if missing:
        raise InputError(f"image_paths has no path for {len(missing)} image id(s), e.g. {missing[:5]}")
    position_of = {image_id: i for i, image_id in enumerate(first_use_order)}
    last_use = {image_id: q for q, ids in enumerate(images_by_query) for image_id in ids}
    ready_after = [max(position_of[image_id] for image_id in ids) for ids in images_by_query]
    options = {k: settings[k] for k in ("geometry", "matching", "ratio", "ransac_threshold")}

    features: dict[str, LocalFeatures] = {}
    next_query = 0
    batches = iter_batches(
        [image_paths[image_id] for image_id in first_use_order],
        transform=functools.partial(sift_local_features, max_side=max_side, max_keypoints=max_features,
                                    min_side=min_side),
        batch_size=batch_size,
        workers=workers,
    )
    n_batches = -(-len(first_use_order) // batch_size)
    for indices, extracted, errors in progress(batches, "spatial verification", total=n_batches, unit="batch"):
        for index, image_features, error in zip(indices, extracted, errors):
            image_id = first_use_order[index]
            if image_features is None:
                log.warning("spatial verification: %s (%s) gets 0 inliers: %s", image_id, image_paths[image_id], error)
                image_features = LocalFeatures.empty(SIFT_DIM)
            features[image_id] = image_features
        while next_query < len(images_by_query) and ready_after[next_query] <= indices[-1]:
            query_id, *shortlist_ids = images_by_query[next_query]
            for row, db_id in zip(shortlist_of[next_query], shortlist_ids):
                match = match_pair(features[query_id], features[db_id], **options)
                inliers[row], matches[row] = match.n_inliers, match.n_matches
            for image_id in images_by_query[next_query]:
                if last_use[image_id] == next_query:
                    features.pop(image_id, None)
            next_query += 1
    return verified_ranking(shortlists, inliers, matches, settings)


class SpatialVerification:
    """``method: spatial``: SIFT extracted here, then the verification of ``method: local``."""

    DEFAULTS: dict[str, Any] = {**VERIFICATION_DEFAULTS, **{k: SIFTFeatures.DEFAULTS[k] for k in
                                                             ("max_side", "min_side", "max_keypoints")}}

    @staticmethod
    def check(settings: dict[str, Any]) -> None:
        check_verification(settings)
        check_sides(settings)
        whole_number(settings, "max_keypoints")

    @staticmethod
    def apply(neighbours: pd.DataFrame, settings: dict[str, Any], inputs) -> pd.DataFrame:
        manifest = inputs.manifest
        paths = {i: str(Path(inputs.root) / p) for i, p in zip(manifest["image_id"], manifest["path"])}
        verification = {k: settings[k] for k in VERIFICATION_DEFAULTS if k not in ("top_r", "geometry", "ratio")}
        return spatial_verification(neighbours, paths, settings["top_r"], method=settings["geometry"],
                                    max_side=settings["max_side"], min_side=settings["min_side"],
                                    ratio=settings["ratio"], max_features=settings["max_keypoints"],
                                    workers=inputs.workers, **verification)
