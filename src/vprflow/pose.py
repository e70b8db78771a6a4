"""Pose assignment: each query takes a position from its retrieved database images.

Two methods (``pose.method``):

* ``top1``: the pose of the best match (the seed's rule: x/y or lat/lon, and yaw).
* ``consensus`` (densest weighted cluster): each of a query's top k database images with
  a known position proposes its position as a centre; a centre's support is the summed
  weight of the top-k positions within ``radius_m`` of it; the centre with the greatest
  support wins (ties: the better-ranked centre). The estimate is the weighted mean of the
  positions supporting the winner. Weights are the similarity scores clipped at 0 (a query
  whose weights are all 0 uses equal weights). This lets agreeing neighbours outvote an
  aliased top-1; when the top-1's cluster wins, the estimate refines the top-1 position.

Both are always computed, so the summary compares them whichever one is assigned.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

from .errors import InputError
from .tables import positions_m, require_columns, sort_neighbours

METHODS = ("top1", "consensus")


def assign_top1(neighbours: pd.DataFrame, images: pd.DataFrame) -> pd.DataFrame:
    """Per query: the assigned x/y (lat/lon, yaw when known), its source image, and the error in metres."""
    top = neighbours[neighbours["rank"] == 0][["query_id", "db_id", "score"]]
    pose_columns = ["x", "y", "lat", "lon", "yaw"]
    table = images.set_index("image_id")
    xy = pd.DataFrame(positions_m(images), index=images["image_id"], columns=["mx", "my"])
    db = table.loc[top["db_id"], ["path"] + pose_columns].reset_index(drop=True)
    out = pd.DataFrame({"query_id": top["query_id"].to_numpy(),
                        "query_path": table.loc[top["query_id"], "path"].to_numpy(),
                        "db_id": top["db_id"].to_numpy(), "db_path": db["path"], "score": top["score"].to_numpy()})
    for column in pose_columns:
        out[column] = db[column].to_numpy()
    delta = xy.loc[top["query_id"]].to_numpy() - xy.loc[top["db_id"]].to_numpy()
    out["error_m"] = np.linalg.norm(delta, axis=1)
    return out


def _positions_table(db_xy: pd.DataFrame) -> pd.DataFrame:
    if "image_id" in db_xy.columns:
        db_xy = db_xy.set_index("image_id")
    require_columns(db_xy, ("x", "y"), "db_xy")
    return db_xy.loc[:, ["x", "y"]].astype(float)


def consensus_pose(neighbours: pd.DataFrame, db_xy: pd.DataFrame, k: int, radius_m: float) -> pd.DataFrame:
    """Consensus position of each query from its top k (rule in the module docstring).

    ``db_xy`` holds ``x``, ``y`` in metres, indexed by database image id (or with an
    ``image_id`` column); NaN positions neither vote nor count as centres.
    Returns columns ``query_id``, ``x``, ``y``, ``n_agreeing`` (images in the winning
    cluster), one row per query in neighbours order; x, y are NaN and n_agreeing 0 when
    none of the top k has a position.
    """
    if k < 1 or not radius_m >= 0:
        raise InputError(f"consensus_pose needs k >= 1 and radius_m >= 0, got k={k}, radius_m={radius_m}")
    ranked = sort_neighbours(neighbours)
    positions = _positions_table(db_xy)
    unknown = sorted(set(ranked["db_id"]) - set(positions.index))
    if unknown:
        raise InputError(f"db_xy has no row for {len(unknown)} db_id(s) in neighbours, e.g. {unknown[:5]}")

    rank_position = ranked.groupby("query_id", sort=False).cumcount().to_numpy()
    top = ranked.loc[rank_position < k]
    query_codes, queries = pd.factorize(top["query_id"])
    slot = rank_position[rank_position < k]
    shape = (len(queries), k)
    xy = np.full(shape + (2,), np.nan)
    xy[query_codes, slot] = positions.loc[top["db_id"]].to_numpy()
    weights = np.zeros(shape)
    weights[query_codes, slot] = np.maximum(top["score"].to_numpy(dtype=float), 0.0)

    estimate, n_agreeing = consensus_of(xy, weights, radius_m)
    return pd.DataFrame({"query_id": queries, "x": estimate[:, 0], "y": estimate[:, 1], "n_agreeing": n_agreeing})


def consensus_of(xy: np.ndarray, weights: np.ndarray, radius_m: float) -> tuple[np.ndarray, np.ndarray]:
    """``consensus_pose`` on arrays, for callers that hold them already (the service):
    ``xy`` [queries, k, 2] metres of each query's top k in rank order (NaN: unknown or no
    neighbour), ``weights`` [queries, k] their scores clipped at 0. Returns the estimates
    [queries, 2] (NaN where no neighbour has a position) and the winning clusters' sizes."""
    known = ~np.isnan(xy).any(axis=2)
    weights = np.where(known, weights, 0.0)
    all_zero = weights.sum(axis=1, keepdims=True) == 0
    weights = np.where(all_zero & known, 1.0, weights)

    distance = np.linalg.norm(xy[:, :, None, :] - xy[:, None, :, :], axis=3)  # NaN where unknown
    agrees = (distance <= radius_m) & known[:, :, None] & known[:, None, :]  # [query, centre, member]
    support = np.where(known, (agrees * weights[:, None, :]).sum(axis=2), -np.inf)
    winner = support.argmax(axis=1)  # first maximum = best-ranked centre
    members = agrees[np.arange(len(xy)), winner]
    member_weights = members * weights
    total = member_weights.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        estimate = np.einsum("qm,qmc->qc", member_weights, np.nan_to_num(xy)) / total[:, None]
    estimate[~known.any(axis=1)] = np.nan
    return estimate, members.sum(axis=1)


def _percentile_missing_as_infinite(sorted_errors: np.ndarray, q: float) -> float:
    """Linear-interpolation percentile of sorted errors that may end in +inf (no NaN from inf - inf)."""
    h = (len(sorted_errors) - 1) * q / 100.0
    low, high = int(np.floor(h)), int(np.ceil(h))
    if high == low:
        return float(sorted_errors[low])
    if np.isinf(sorted_errors[high]):
        return float("inf")
    return float(sorted_errors[low] + (sorted_errors[high] - sorted_errors[low]) * (h - low))


def pose_error_summary(errors_m: Iterable[float], thresholds_m: Iterable[float] = (5, 10, 25)) -> dict[str, float]:
    """Median and 90th percentile error (m) and the share of queries within each threshold.

    A NaN error (no estimate) counts as infinitely wrong: it is never within a threshold
    and pushes percentiles up (to inf if it reaches them). Keys: ``n``, ``n_missing``,
    ``median_m``, ``p90_m``, ``within_{t}m`` per threshold t.
    """
    errors = np.asarray(list(errors_m), dtype=float)
    if (errors < 0).any():
        raise InputError(f"pose errors must be distances >= 0; got {errors[errors < 0][:5]}")
    thresholds = tuple(thresholds_m)
    summary: dict[str, float] = {"n": len(errors), "n_missing": int(np.isnan(errors).sum())}
    if len(errors) == 0:
        summary.update({"median_m": float("nan"), "p90_m": float("nan")})
        summary.update({f"within_{t:g}m": float("nan") for t in thresholds})
        return summary
    sorted_errors = np.sort(np.where(np.isnan(errors), np.inf, errors))
    summary["median_m"] = _percentile_missing_as_infinite(sorted_errors, 50)
    summary["p90_m"] = _percentile_missing_as_infinite(sorted_errors, 90)
    summary.update({f"within_{t:g}m": float((sorted_errors <= t).mean()) for t in thresholds})
    return summary


def assign_poses(neighbours: pd.DataFrame, images: pd.DataFrame, method: str, k: int,
                 radius_m: float) -> tuple[pd.DataFrame, list[dict]]:
    """(poses by ``method``, error summaries of both methods).

    The poses table has a row per query: ``method``, the top-1's ``query_id``, paths,
    ``db_id``, ``score``, pose columns, ``error_m``, and for consensus ``n_agreeing``.
    """
    if method not in METHODS:
        raise InputError(f"pose.method: unknown {method!r}; use one of {', '.join(METHODS)}")
    table = assign_top1(neighbours, images)
    xy = pd.DataFrame(positions_m(images), columns=["x", "y"], index=images["image_id"])
    consensus = consensus_pose(neighbours, xy, k, radius_m).set_index("query_id")
    truth = xy.loc[table["query_id"]].to_numpy()
    guessed = consensus.loc[table["query_id"], ["x", "y"]].to_numpy()
    consensus_error = np.linalg.norm(guessed - truth, axis=1)
    summaries = []
    for name, errors in (("top1", table["error_m"].to_numpy()), ("consensus", consensus_error)):
        known = errors[np.isfinite(truth).all(axis=1)]
        summaries.append({"method": name, **(pose_error_summary(known) if len(known) else {"n": 0})})
    if method == "consensus":
        table[["x", "y"]] = guessed
        table["error_m"] = consensus_error
        table["n_agreeing"] = consensus.loc[table["query_id"], "n_agreeing"].to_numpy()
    table.insert(0, "method", method)
    return table, summaries
