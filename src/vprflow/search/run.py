"""Running a search: the database side once per index, queries block by block, masks applied."""

from __future__ import annotations

import os
import re
import shlex
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..logs import log, progress
from ..masks import split_masks
from ..tables import NEIGHBOUR_COLUMNS, empty_neighbours
from . import BACKENDS

_NEEDS_QUOTES = re.compile(r"[\s'\"\\]")


def build_index(settings: dict[str, Any], database: np.ndarray, index_dir: Path) -> dict[str, float]:
    """Build the backend's index; return its build time and size per database vector."""
    module = BACKENDS.get(settings["backend"])
    start = time.perf_counter()
    module.build(settings, database, index_dir)
    seconds = time.perf_counter() - start
    return {"build_seconds": seconds, "bytes_per_vector": module.bytes_per_vector(settings, index_dir, database)}


def agreement_with_exact(neighbours: pd.DataFrame, exact: pd.DataFrame) -> dict[str, float]:
    """recall@1 (same top-1) and recall@10 (share of the exact top-10 found in the top-10) against exact search."""
    top = {q: list(g["db_id"]) for q, g in neighbours.sort_values(["query_id", "rank"]).groupby("query_id")}
    reference = {q: list(g["db_id"]) for q, g in exact.sort_values(["query_id", "rank"]).groupby("query_id")}
    at1 = [bool(top.get(q)) and top[q][0] == ref[0] for q, ref in reference.items()]
    at10 = [len(set(top.get(q, [])[:10]) & set(ref[:10])) / len(ref[:10]) for q, ref in reference.items()]
    return {"recall@1_vs_exact": float(np.mean(at1)) if at1 else float("nan"),
            "recall@10_vs_exact": float(np.mean(at10)) if at10 else float("nan")}


def find_neighbours(settings: dict[str, Any], index_dir: Path, database: np.ndarray, database_ids: np.ndarray,
                 queries: np.ndarray, query_ids: np.ndarray, masks: pd.DataFrame,
                 chunk: int = 2048, timings: dict[str, float] | None = None) -> pd.DataFrame:
    """Top-``k`` database ids per query with masked pairs removed.

    Each query asks the backend for ``k`` plus the largest number of masked pairs any
    query of the block has, so removing them never leaves a list short. ``timings``,
    when given, gets ``load_s`` (the backend loading its index) and ``search_s`` (its
    search calls alone, without the masks and tables around them).
    """
    k = int(settings["k"])
    dropped_queries, dropped_database, masks = split_masks(masks)
    keep = ~pd.Series(query_ids).isin(dropped_queries).to_numpy()
    queries, query_ids = queries[keep], query_ids[keep]
    module = BACKENDS.get(settings["backend"])
    started = time.perf_counter()
    searcher = module.load(settings, index_dir, database)
    load_seconds, search_seconds = time.perf_counter() - started, 0.0
    if dropped_database:  # excluded database images never come back, whatever the index holds
        masks = pd.concat([masks, pd.DataFrame([(q, d, "minor_class") for q in query_ids for d in dropped_database],
                                               columns=masks.columns)])
    masked = masks[masks["query_id"].isin(set(query_ids))]
    masked_pairs = set(zip(masked["query_id"], masked["db_id"]))
    extra = int(masked.groupby("query_id").size().max()) if len(masked) else 0
    frames = []
    for start in progress(range(0, len(queries), chunk), desc="search", unit="block"):
        started = time.perf_counter()
        scores, rows = searcher.search(queries[start:start + chunk], k + extra)
        search_seconds += time.perf_counter() - started
        ids = query_ids[start:start + chunk]
        q = np.repeat(ids, rows.shape[1])
        d = np.where(rows.reshape(-1) >= 0, database_ids[np.maximum(rows.reshape(-1), 0)], None)
        frame = pd.DataFrame({"query_id": q, "db_id": d, "score": scores.reshape(-1)})
        frame = frame[frame["db_id"].notna()]
        if masked_pairs:
            keep = [(a, b) not in masked_pairs for a, b in zip(frame["query_id"], frame["db_id"])]
            frame = frame[keep]
        frame["rank"] = frame.groupby("query_id").cumcount()
        frames.append(frame[frame["rank"] < k])
    if timings is not None:
        timings.update(load_s=load_seconds, search_s=search_seconds)
    if not frames:
        return empty_neighbours()
    result = pd.concat(frames, ignore_index=True)[list(NEIGHBOUR_COLUMNS)]
    result["score"] = result["score"].astype(np.float32)
    log.info("searched %d queries, k=%d (%d masked pairs)", len(query_ids), k, len(masked_pairs))
    return result


def process_seconds(fallback_start: float) -> float:
    """Wall seconds since this process started (Linux: from ``/proc``, so interpreter start-up
    and imports count), else since ``fallback_start`` (a ``time.perf_counter()`` reading)."""
    try:
        started_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        return time.clock_gettime(time.CLOCK_BOOTTIME) - started_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return time.perf_counter() - fallback_start


def write_pairs(neighbours: pd.DataFrame, paths: dict[str, str], out: str | Path) -> None:
    """The plain text list ``query_path database_path`` per line, in rank order.

    A path holding white space, quotes or backslashes is quoted as a POSIX shell would
    (``shlex.split`` reads the line back); every other path is written as it is, so tools
    that split lines on white space keep reading plain names."""
    with open(out, "w", encoding="utf-8") as handle:
        for q, d in zip(neighbours["query_id"], neighbours["db_id"]):
            handle.write(f"{_pair_field(paths[q])} {_pair_field(paths[d])}\n")


def _pair_field(path: str) -> str:
    return shlex.quote(path) if _NEEDS_QUOTES.search(path) else path
