"""Geometric verification of a search's shortlists, and the ranking it gives.

The rule that makes it safe (it never turns a good global ranking into a worse one
just because a wrong image drew a few chance inliers):

* a pair is *verified* only when RANSAC keeps at least ``min_inliers`` matches, at least
  ``min_inlier_ratio`` of the tentative ones (``matching`` and ``min_inliers`` default to
  what the local descriptor declares it works best with, ``resolved``), and at least
  ``chance_factor`` times the median inlier count of its query's top R: what pairs of that
  query reach by chance. Look-alike photos (repeated façades, one corridor) give every pair
  of a shortlist tens of inliers; a fixed count cannot tell them from a match, the query's
  own median can;
* within the top R, the new order is by a fused score: the global similarity scaled into
  [0, 1] over the query's top R, plus ``inlier_weight`` x min(inliers, ``max_inliers``) /
  ``max_inliers`` for a verified pair. A pair with ``max_inliers`` inliers or more climbs
  ``inlier_weight`` times the whole global range of the top R; one just verified climbs
  only past images that were nearly as similar. Unverified pairs keep their global order
  among themselves, a shortlist with no verified pair keeps its order entirely, and the
  rows below R keep theirs after the top R. With a very large ``inlier_weight`` verified
  pairs simply go first, by capped inlier count: more gained on weak global rankings, and
  more lost on strong ones, where one look-alike with a dozen inliers then overtakes the
  single right image (benchmarks/one_positive_sets.py).

The new score says the same in one number: 1 + the fused score for the top R (so >= 1),
and the global score scaled into [0, 0.999] within the query's list below R; it is
non-increasing with the new rank.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd

from ..errors import SettingError
from ..logs import log, progress
from ..registry import one_of, positive_number, whole_number
from ..tables import renumbered, scaled_per_query, sort_neighbours, top_reordered
from .matching import GEOMETRIES, MATCHINGS, match_pair
from .store import LocalFeatures

VERIFICATION_DEFAULTS: dict[str, Any] = {
    "top_r": 20,
    "geometry": "homography",
    "matching": None,
    "ratio": 0.8,
    "ransac_threshold": None,
    "min_inliers": None,
    "min_inlier_ratio": 0.1,
    "chance_factor": 3.0,
    "max_inliers": 40,
    "inlier_weight": 1.0,
}

VERIFICATION_HELP = {
    "top_r": "rows of each shortlist verified (the rest keep their global order below)",
    "geometry": "homography | fundamental: the model RANSAC fits",
    "matching": "mutual (nearest neighbours of each other) | ratio (Lowe's test); null: what the features' "
                "descriptor matches best with (its VERIFICATION: sift ratio, delf mutual)",
    "ratio": "Lowe's ratio (matching: ratio)",
    "ransac_threshold": "RANSAC reprojection (homography) or epipolar (fundamental) error, fraction of the longest "
                        "side; null: 0.01 for a homography, 0.004 for a fundamental matrix",
    "min_inliers": "a pair is verified from this many inliers on; null: the features' descriptor's (twice that for "
                   "a fundamental matrix)",
    "min_inlier_ratio": "... and when at least this share of its tentative matches are inliers",
    "chance_factor": "... and at least this many times the median inliers of the query's top R (the chance level "
                     "of that query's pairs); 0: no such test",
    "max_inliers": "inlier counts above this all count alike (the global score orders them)",
    "inlier_weight": "how far verification moves a pair: one with max_inliers inliers climbs this many times the "
                     "global score's range over the top R (large: verified pairs first)",
}

FEATURE_DEFAULTS = {"matching": "mutual", "min_inliers": 12}
"""``matching`` and ``min_inliers`` for features whose descriptor declares no ``VERIFICATION``."""

RANSAC_THRESHOLDS = {"homography": 0.01, "fundamental": 0.004}

FUNDAMENTAL_INLIER_FACTOR = 2
"""A fundamental matrix only constrains each match to a line: unrelated photos keep about
twice the chance inliers they keep under a homography (10 against 5 in the tests' textures)."""


def resolved(settings: dict[str, Any], features: dict[str, Any] | None = None) -> dict[str, Any]:
    """The settings with their nulls filled: ``matching`` and ``min_inliers`` from the
    features' descriptor (``features``: its ``VERIFICATION``, recorded in each shard),
    ``ransac_threshold`` from the geometry."""
    preferred = {**FEATURE_DEFAULTS, **(features or {})}
    fundamental = settings["geometry"] == "fundamental"
    filled = {"matching": preferred["matching"],
              "min_inliers": preferred["min_inliers"] * (FUNDAMENTAL_INLIER_FACTOR if fundamental else 1),
              "ransac_threshold": RANSAC_THRESHOLDS[settings["geometry"]]}
    return {**settings, **{k: v for k, v in filled.items() if settings.get(k) is None}}


def check_verification(settings: dict[str, Any]) -> None:
    """Raise SettingError naming the verification setting whose value is wrong."""
    whole_number(settings, "top_r")
    one_of(settings, "geometry", GEOMETRIES)
    if settings["matching"] is not None:
        one_of(settings, "matching", MATCHINGS)
    positive_number(settings, "ratio", maximum=1)
    if settings["ransac_threshold"] is not None:
        positive_number(settings, "ransac_threshold", maximum=1)
    if settings["min_inliers"] is not None:
        whole_number(settings, "min_inliers")
    value = settings["min_inlier_ratio"]
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
        raise SettingError("min_inlier_ratio", f"must be a number in [0, 1], got {value!r}")
    value = settings["chance_factor"]
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
        raise SettingError("chance_factor", f"must be a number >= 0 (0: no chance test), got {value!r}")
    whole_number(settings, "max_inliers", minimum=settings["min_inliers"] or 1)
    positive_number(settings, "inlier_weight")


@dataclass(frozen=True)
class Shortlists:
    """A neighbours table in rank order with, per row, its position in its query's list."""

    ranked: pd.DataFrame
    position: np.ndarray
    query_codes: np.ndarray
    queries: pd.Index

    @classmethod
    def of(cls, neighbours: pd.DataFrame) -> "Shortlists":
        ranked = sort_neighbours(neighbours)
        codes, queries = pd.factorize(ranked["query_id"])
        return cls(ranked, ranked.groupby("query_id", sort=False).cumcount().to_numpy(), codes, queries)

    def verified_rows(self, top_r: int) -> list[np.ndarray]:
        """Per query (in order), the row numbers of its top R."""
        rows = np.flatnonzero(self.position < top_r)
        return np.split(rows, np.flatnonzero(np.diff(self.query_codes[rows])) + 1) if len(rows) else []


def chance_inliers(inliers: np.ndarray, query_codes: np.ndarray) -> np.ndarray:
    """Per row, the median inlier count of the *other* verified rows of its query (those with
    ``inliers`` >= 0; rows below R carry -1): the level that pairs of this query reach by
    chance, as most of a shortlist does not show the query's place. Leaving the row itself
    out keeps a short list's one real match from raising its own bar. 0 when there is no
    other verified row."""
    level = np.zeros(len(inliers), np.float64)
    rows = np.flatnonzero(inliers >= 0)
    if not len(rows):
        return level
    order = rows[np.lexsort((inliers[rows], query_codes[rows]))]  # by query, then by count
    bounds = np.flatnonzero(np.diff(query_codes[order])) + 1
    for group in np.split(order, bounds):
        values = inliers[group].astype(np.float64)
        n = len(values)
        if n < 2:
            continue
        rest = np.array([np.delete(values, k) for k in range(n)])  # n x (n - 1), each row sorted
        level[group] = np.median(rest, axis=1)
    return level


def is_verified(inliers: np.ndarray, matches: np.ndarray, settings: dict[str, Any],
                query_codes: np.ndarray) -> np.ndarray:
    """The pairs that clear the inlier count, the inlier share and ``chance_factor`` times their
    query's chance level (``settings`` resolved; ``query_codes``: each row's query)."""
    share = inliers / np.maximum(matches, 1)
    above_chance = inliers >= settings["chance_factor"] * chance_inliers(inliers, query_codes)
    return (inliers >= settings["min_inliers"]) & (share >= settings["min_inlier_ratio"]) & above_chance


def verified_ranking(shortlists: Shortlists, inliers: np.ndarray, matches: np.ndarray,
                     settings: dict[str, Any]) -> pd.DataFrame:
    """The re-ranked neighbours table (see the module docstring); ``inliers`` and ``matches``
    per row of ``shortlists.ranked``, -1 for rows that were not verified (below R)."""
    ranked = shortlists.ranked
    if ranked.empty:
        return renumbered(ranked, np.zeros(0, np.float32))
    settings = resolved(settings)
    verified = is_verified(inliers, matches, settings, shortlists.query_codes)
    codes, position = shortlists.query_codes, shortlists.position
    top = position < int(settings["top_r"])
    score = ranked["score"].to_numpy(np.float64)
    fused = scaled_per_query(np.where(top, score, np.nan), codes) + settings["inlier_weight"] * np.where(
        verified & top, np.minimum(inliers, settings["max_inliers"]) / settings["max_inliers"], 0.0)
    return top_reordered(ranked, position, codes, int(settings["top_r"]), fused)


class FeatureCache:
    """Local features by image id, each read from its source once per run.

    ``read`` is the source (a store's ``get``, or extraction); features are kept while
    the cache holds fewer than ``max_bytes`` of descriptors, then the oldest go first.
    """

    def __init__(self, read: Callable[[str], LocalFeatures | None], max_bytes: int = 4 << 30):
        self.read, self.max_bytes = read, max_bytes
        self.kept: dict[str, LocalFeatures | None] = {}
        self.bytes = 0
        self.reads = 0

    def get(self, image_id: str) -> LocalFeatures | None:
        if image_id in self.kept:
            return self.kept[image_id]
        features = self.read(image_id)
        self.reads += 1
        self.kept[image_id] = features
        self.bytes += features.descriptors.nbytes if features is not None else 0
        while self.bytes > self.max_bytes and len(self.kept) > 1:
            oldest = next(iter(self.kept))
            dropped = self.kept.pop(oldest)
            self.bytes -= dropped.descriptors.nbytes if dropped is not None else 0
        return features


def _blocks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def verify_shortlists(neighbours: pd.DataFrame, features: FeatureCache, settings: dict[str, Any],
                      threads: int = 1, queries_per_block: int = 32) -> tuple[Shortlists, np.ndarray, np.ndarray]:
    """RANSAC inliers and tentative matches of every (query, database image) pair in the top
    R of each query; -1 for the rows below R.

    Queries go in blocks: the block's features are read (each image once per run, see
    :class:`FeatureCache`), then all its pairs are matched and verified on ``threads``
    threads (faiss and OpenCV release the interpreter while they work). An image without
    features (it failed to decode) verifies with 0 inliers, logged once.
    """
    settings = resolved(settings)
    shortlists = Shortlists.of(neighbours)
    inliers = np.full(len(shortlists.ranked), -1, np.int64)
    matches = np.full(len(shortlists.ranked), -1, np.int64)
    db_ids = shortlists.ranked["db_id"].to_numpy()
    per_query = list(zip(shortlists.queries, shortlists.verified_rows(int(settings["top_r"]))))
    options = {k: settings[k] for k in ("geometry", "matching", "ratio", "ransac_threshold")}
    missing: set[str] = set()

    def features_of(image_id: str) -> LocalFeatures | None:
        found = features.get(image_id)
        if found is None and image_id not in missing:
            missing.add(image_id)
            log.warning("local verification: no local features for %s (not extracted): 0 inliers", image_id)
        return found

    def verify(pair: tuple[int, LocalFeatures | None, LocalFeatures | None]) -> tuple[int, int, int]:
        row, query, other = pair
        if query is None or other is None:
            return row, 0, 0
        match = match_pair(query, other, **options)
        return row, match.n_inliers, match.n_matches

    started, n_pairs = time.perf_counter(), 0
    with ThreadPoolExecutor(max(1, threads)) as pool:
        blocks = list(_blocks(per_query, queries_per_block))
        for block in progress(blocks, desc="verification", total=len(blocks), unit="block"):
            pairs = [(row, features_of(query_id), features_of(db_ids[row])) for query_id, rows in block for row in rows]
            for row, n_inliers, n_matches in pool.map(verify, pairs):
                inliers[row], matches[row] = n_inliers, n_matches
            n_pairs += len(pairs)
    seconds = time.perf_counter() - started
    log.info("local verification: %d pairs of %d queries in %.1f s (%.0f pairs/s, %.1f ms per query); "
             "%d images read once each", n_pairs, len(per_query), seconds, n_pairs / max(seconds, 1e-9),
             1000 * seconds / max(len(per_query), 1), features.reads)
    return shortlists, inliers, matches
