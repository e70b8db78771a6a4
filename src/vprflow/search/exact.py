"""Exact search through faiss flat indexes: inner product (MIPS), cosine, L2 and L1.

Queries go to faiss in large blocks so its BLAS path does the work (on the GPU where faiss
has one, see ``vprflow.faiss_gpu``). Scores are "higher is better": inner product or cosine
as is, distances negated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ..faiss_gpu import to_gpu
from ..registry import one_of

DEFAULTS: dict[str, Any] = {"metric": "ip", "query_batch": 4096}
BUILD_SETTINGS = ()  # the flat index is the database itself, made at search time
METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "cosine": faiss.METRIC_INNER_PRODUCT,
           "l2": faiss.METRIC_L2, "l1": faiss.METRIC_L1}


def check(settings: dict[str, Any]) -> None:
    one_of(settings, "metric", sorted(METRICS))


def _prepared(x: np.ndarray, metric: str) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if metric == "cosine":
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


def build(settings: dict[str, Any], database: np.ndarray, index_dir: Path) -> None:
    """Nothing to train: the flat index is the database matrix itself, loaded at search time."""
    index_dir.mkdir(parents=True, exist_ok=True)


def bytes_per_vector(settings: dict[str, Any], index_dir: Path, database: np.ndarray) -> float:
    return float(database.shape[1] * 4)  # float32 vectors, searched as they are


class FlatSearcher:
    def __init__(self, settings: dict[str, Any], database: np.ndarray):
        self.metric = settings["metric"]
        self.query_batch = int(settings["query_batch"])
        data = _prepared(database, self.metric)
        self.index = to_gpu(faiss.IndexFlat(data.shape[1], METRICS[self.metric]))
        self.index.add(data)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = _prepared(queries, self.metric)
        k = min(k, self.index.ntotal)
        scores = np.empty((len(queries), k), np.float32)
        rows = np.empty((len(queries), k), np.int64)
        for start in range(0, len(queries), self.query_batch):
            block = slice(start, start + self.query_batch)
            scores[block], rows[block] = self.index.search(queries[block], k)
        if self.metric in ("l2", "l1"):
            scores = -scores
        return scores, rows


def load(settings: dict[str, Any], index_dir: Path, database: np.ndarray) -> FlatSearcher:
    return FlatSearcher({**DEFAULTS, **settings}, database)
