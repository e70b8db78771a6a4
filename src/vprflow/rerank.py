"""Re-ranking after search: place-label vote, spatial verification, alpha-QE and DBA.

The table steps take a neighbours table (``query_id``, ``rank``, ``db_id``, ``score``)
and return one in the same schema: rows reordered, ``rank`` renumbered from 0 and
``score`` replaced by the re-ranking score (higher = better, non-increasing with rank).
The vector steps (alpha-QE, DBA) are pure functions on float arrays that return new
L2-normalised float32 vectors in the same row order; the caller searches again.
"""

from __future__ import annotations

import functools
from typing import Literal, Mapping

import cv2
import faiss
import numpy as np
import pandas as pd

from vprflow.errors import InputError
from vprflow.evaluate_map import place_votes, sort_neighbours
from vprflow.images import iter_batches
from vprflow.logs import log, progress

NEIGHBOUR_DTYPES = {"rank": "int64", "score": "float32"}


def _renumbered(rows: pd.DataFrame, scores: np.ndarray) -> pd.DataFrame:
    """``rows`` already in the new order: rank 0.. per query, the new scores, schema dtypes."""
    result = rows.loc[:, ["query_id", "db_id"]].reset_index(drop=True)
    result.insert(1, "rank", result.groupby("query_id", sort=False).cumcount())
    result["score"] = scores
    return result.loc[:, ["query_id", "rank", "db_id", "score"]].astype(NEIGHBOUR_DTYPES)


def label_rerank(neighbours: pd.DataFrame, db_places: Mapping | pd.Series) -> pd.DataFrame:
    """Group each shortlist by place, the most voted place first ("method two").

    Places are ordered by the number of their images in the shortlist, ties by their
    best-ranked image; within a place the original order is kept. The new score is the
    share of the shortlist held by the row's place.
    """
    ranked = sort_neighbours(neighbours)
    votes = place_votes(ranked, db_places)
    places = pd.Series(db_places) if not isinstance(db_places, pd.Series) else db_places
    rows = ranked.assign(
        place=places.reindex(ranked["db_id"].to_numpy()).to_numpy(),
        position=ranked.groupby("query_id", sort=False).cumcount().to_numpy(),
        query_order=pd.factorize(ranked["query_id"])[0],
        shortlist=ranked.groupby("query_id", sort=False)["db_id"].transform("size").to_numpy(),
    ).merge(votes[["query_id", "place", "votes", "place_rank"]], on=["query_id", "place"], how="left")
    rows = rows.sort_values(["query_order", "place_rank", "position"], kind="stable")
    return _renumbered(rows, (rows["votes"] / rows["shortlist"]).to_numpy())


# --------------------------------------------------------------------------- spatial verification

_EMPTY_FEATURES = (np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float32))
_MIN_MATCHES = {"homography": 4, "fundamental": 8}
DEFAULT_RANSAC_THRESHOLD = {"homography": 5.0, "fundamental": 2.0}


def sift_features(rgb: np.ndarray, max_side: int, max_features: int, root_sift: bool) -> tuple[np.ndarray, np.ndarray]:
    """SIFT keypoint positions (N x 2, pixels of the image shrunk to ``max_side``) and descriptors (N x 128).

    RootSIFT (Arandjelovic & Zisserman, 2012): L1-normalise, then square-root, so that
    L2 distance between descriptors becomes the Hellinger distance.
    """
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    scale = max_side / max(gray.shape)
    if scale < 1:
        gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    keypoints, descriptors = cv2.SIFT_create(nfeatures=max_features).detectAndCompute(gray, None)
    if descriptors is None or len(keypoints) == 0:
        return _EMPTY_FEATURES
    descriptors = descriptors.astype(np.float32)
    if root_sift:
        descriptors = np.sqrt(descriptors / (descriptors.sum(axis=1, keepdims=True) + 1e-7))
    return cv2.KeyPoint_convert(keypoints).astype(np.float32), descriptors


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
    root_sift: bool = True,
    batch_size: int = 16,
    workers: int | None = None,
) -> pd.DataFrame:
    """Re-rank each query's top R by RANSAC inliers of SIFT matches with the query.

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
        return _renumbered(ranked, np.zeros(0, np.float32))
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
        transform=functools.partial(sift_features, max_side=max_side, max_features=max_features, root_sift=root_sift),
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
    return _renumbered(ranked.iloc[order], inliers[order].astype(np.float32))


# --------------------------------------------------------------------------- alpha-QE and DBA


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Row-wise L2-normalised float32 copy (zero rows stay zero)."""
    vectors = np.array(vectors, dtype=np.float32, ndmin=2)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, np.finfo(np.float32).tiny)


def _inner_product_search(queries: np.ndarray, database: np.ndarray, k: int) -> np.ndarray:
    """Indices (len(queries) x k) of the k database rows with the largest inner product."""
    index = faiss.IndexFlatIP(database.shape[1])
    index.add(database)
    return index.search(queries, k)[1]


def _expand(anchors: np.ndarray, database: np.ndarray, neighbour_index: np.ndarray, alpha: float) -> np.ndarray:
    """normalise(anchor + sum_j max(anchor . d_j, 0)^alpha d_j) over each row's neighbours d_j.

    The anchor's own weight is 1 (= (anchor . anchor)^alpha for a unit vector). Index -1
    means "no neighbour". Rows are processed in chunks to bound the gathered block.
    """
    expanded = np.empty_like(anchors)
    n_neighbours = max(neighbour_index.shape[1], 1)
    chunk = max(1, 2**24 // (n_neighbours * anchors.shape[1]))
    for start in range(0, len(anchors), chunk):
        stop = start + chunk
        index = neighbour_index[start:stop]
        valid = index >= 0
        gathered = database[np.where(valid, index, 0)]
        similarity = np.einsum("cd,cnd->cn", anchors[start:stop], gathered)
        weights = np.where(valid, np.maximum(similarity, 0.0) ** alpha, 0.0).astype(np.float32)
        expanded[start:stop] = anchors[start:stop] + np.einsum("cn,cnd->cd", weights, gathered)
    return l2_normalise(expanded)


def _check_vectors(vectors: np.ndarray, name: str) -> np.ndarray:
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or len(vectors) == 0:
        raise InputError(f"{name} must be a non-empty 2-D array (rows = images), got shape {vectors.shape}")
    return l2_normalise(vectors)


def neighbours_to_index(neighbours: pd.DataFrame, query_ids, db_ids) -> np.ndarray:
    """Neighbours table as a (len(query_ids) x K) array of row indices into ``db_ids``, in rank
    order; -1 pads queries with fewer than K rows."""
    ranked = sort_neighbours(neighbours)
    db_rows = pd.Index(db_ids).get_indexer(ranked["db_id"])
    if (db_rows < 0).any():
        unknown = sorted(set(ranked["db_id"].to_numpy()[db_rows < 0]))
        raise InputError(f"neighbours has {len(unknown)} db_id(s) not in db_ids, e.g. {unknown[:5]}")
    query_rows = pd.Index(query_ids).get_indexer(ranked["query_id"])
    if (query_rows < 0).any():
        unknown = sorted(set(ranked["query_id"].to_numpy()[query_rows < 0]))
        raise InputError(f"neighbours has {len(unknown)} query_id(s) not in query_ids, e.g. {unknown[:5]}")
    absent = sorted(set(query_ids) - set(ranked["query_id"]))
    if absent:
        raise InputError(f"neighbours has no rows for {len(absent)} query id(s), e.g. {absent[:5]}")
    position = ranked.groupby("query_id", sort=False).cumcount().to_numpy()
    index = np.full((len(query_ids), position.max() + 1), -1, dtype=np.int64)
    index[query_rows, position] = db_rows
    return index


def alpha_query_expansion(
    query_vecs: np.ndarray,
    db_vecs: np.ndarray,
    n: int = 2,
    alpha: float = 3.0,
    neighbour_index: np.ndarray | None = None,
) -> np.ndarray:
    """alpha-QE (Radenovic et al., TPAMI 2019): each query becomes
    normalise(q + sum_{i<=n} max(q . d_i, 0)^alpha d_i) over its top-n database vectors d_i.

    Vectors are L2-normalised first. The top n come from ``neighbour_index`` (rows of
    ``db_vecs`` per query in rank order, e.g. from :func:`neighbours_to_index`; its first n
    columns are used) or, when None, from an exact faiss inner-product search. Returns new
    query vectors (float32, unit norm, same row order).
    """
    queries = _check_vectors(query_vecs, "query_vecs")
    database = _check_vectors(db_vecs, "db_vecs")
    if queries.shape[1] != database.shape[1]:
        raise InputError(f"query_vecs have dimension {queries.shape[1]} but db_vecs {database.shape[1]}")
    if not 1 <= n <= len(database):
        raise InputError(f"alpha-QE n={n} must be between 1 and the number of database vectors ({len(database)})")
    if neighbour_index is None:
        neighbour_index = _inner_product_search(queries, database, n)
    else:
        neighbour_index = np.asarray(neighbour_index)
        if neighbour_index.ndim != 2 or neighbour_index.shape[0] != len(queries) or neighbour_index.shape[1] < n:
            raise InputError(f"neighbour_index has shape {neighbour_index.shape}; expected ({len(queries)}, >= n={n})")
        if neighbour_index.max() >= len(database) or neighbour_index.min() < -1:
            raise InputError(f"neighbour_index holds rows outside db_vecs (0..{len(database) - 1}, or -1 for none)")
    return _expand(queries, database, neighbour_index[:, :n], alpha)


def database_side_augmentation(db_vecs: np.ndarray, k: int, alpha: float = 3.0) -> np.ndarray:
    """DBA: each database vector d becomes normalise(d + sum_{j<=k} max(d . d_j, 0)^alpha d_j)
    over its k nearest *other* database vectors (exact faiss inner-product search on the
    L2-normalised vectors). Returns new database vectors (float32, unit norm, same order).
    """
    database = _check_vectors(db_vecs, "db_vecs")
    if not 1 <= k < len(database):
        raise InputError(f"DBA k={k} must be between 1 and the number of database vectors - 1 ({len(database) - 1})")
    found = _inner_product_search(database, database, k + 1)
    is_other = found != np.arange(len(database))[:, None]
    others_first = np.argsort(~is_other, axis=1, kind="stable")[:, :k]
    return _expand(database, database, np.take_along_axis(found, others_first, axis=1), alpha)
