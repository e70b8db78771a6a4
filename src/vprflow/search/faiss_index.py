"""Approximate search through faiss index-factory strings (``IVF1024,PQ16``, ``OPQ16,IVF1024,PQ16``, ``HNSW32``).

The index is trained on a seeded sample of the database (``train_size``), filled with
the whole database, and written to the index folder; search jobs read it back and set
``nprobe`` (IVF) or ``efSearch`` (HNSW) at query time, so changing those reruns only the
searches, not the build.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ..errors import InputError, SettingError
from ..logs import log
from ..faiss_gpu import to_gpu
from .exact import METRICS, _prepared

DEFAULTS: dict[str, Any] = {"factory": "IVF256,PQ16", "metric": "ip", "nprobe": 16, "ef_search": 64,
                            "train_size": 100_000, "seed": 0, "query_batch": 4096}
BUILD_SETTINGS = ("factory", "metric", "train_size", "seed")  # nprobe, ef_search, query_batch: at search time
INDEX_FILE = "index.faiss"


def check(settings: dict[str, Any]) -> None:
    if settings["metric"] not in ("ip", "cosine", "l2"):
        raise SettingError("metric", "faiss factory indexes take ip, cosine or l2")
    try:
        faiss.index_factory(64, settings["factory"].replace("{d}", "64"), METRICS[settings["metric"]])
    except RuntimeError as error:
        first = str(error).strip().splitlines()[-1]
        raise SettingError("factory", f"faiss cannot build {settings['factory']!r} ({first})") from None


def _needed_training_points(factory: str) -> int:
    """faiss wants at least as many training vectors as IVF cells (and 256 for 8-bit PQ)."""
    cells = re.search(r"IVF(\d+)", factory)
    need = int(cells.group(1)) if cells else 1
    if re.search(r"PQ\d+", factory):
        need = max(need, 256)
    return need


def build(settings: dict[str, Any], database: np.ndarray, index_dir: Path) -> None:
    settings = {**DEFAULTS, **settings}
    data = _prepared(database, settings["metric"])
    index = faiss.index_factory(data.shape[1], settings["factory"], METRICS[settings["metric"]])
    _skip_polysemous_training(index)
    if not index.is_trained:
        need = _needed_training_points(settings["factory"])
        if len(data) < need:
            raise InputError(f"search factory {settings['factory']!r} needs at least {need} database vectors to "
                             f"train; the database has {len(data)}: use fewer IVF cells or exact search")
        rng = np.random.default_rng(settings["seed"])
        sample = data[np.sort(rng.choice(len(data), min(len(data), settings["train_size"]), replace=False))]
        index.train(sample)
    index.add(data)
    index_dir.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(index_dir / INDEX_FILE))
    log.info("faiss %s over %d vectors", settings["factory"], index.ntotal)


def _skip_polysemous_training(index) -> None:
    """faiss trains IVF-PQ codes for polysemous (Hamming) filtering by default, which we never
    use and which costs minutes by simulated annealing; switch it off."""
    try:
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    except RuntimeError:  # not an IVF index
        return
    if hasattr(ivf, "do_polysemous_training"):
        ivf.do_polysemous_training = False


class FactorySearcher:
    def __init__(self, settings: dict[str, Any], index_dir: Path):
        self.settings = settings
        index = faiss.read_index(str(index_dir / INDEX_FILE))
        parameters = faiss.ParameterSpace()
        if "IVF" in settings["factory"]:
            parameters.set_index_parameter(index, "nprobe", int(settings["nprobe"]))
        if "HNSW" in settings["factory"]:
            parameters.set_index_parameter(index, "efSearch", int(settings["ef_search"]))
        self.index = to_gpu(index)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = _prepared(queries, self.settings["metric"])
        k = min(k, self.index.ntotal)
        batch = int(self.settings["query_batch"])
        parts = [self.index.search(queries[s:s + batch], k) for s in range(0, len(queries), batch)]
        scores = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, k), np.float32)
        rows = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, k), np.int64)
        if self.settings["metric"] == "l2":
            scores = -scores
        return scores, rows


def load(settings: dict[str, Any], index_dir: Path, database: np.ndarray) -> FactorySearcher:
    return FactorySearcher({**DEFAULTS, **settings}, index_dir)


def bytes_per_vector(settings: dict[str, Any], index_dir: Path, database: np.ndarray) -> float:
    """Serialized index size over vectors: codes plus every overhead (ids, centroids, graph)."""
    return (index_dir / INDEX_FILE).stat().st_size / max(1, len(database))
