"""The LOPQ backend: ``backend: lopq`` in a search's settings (the method is in ``index``, over
an inverted multi-index, and ``ivf``, over an inverted file; their compiled inner loops in
``kernels`` and ``simd``).

``coarse`` picks the coarse quantizer: ``multi_index`` (``coarse_k`` centroids per half
of the vector, ``coarse_k**2`` cells) or ``ivf`` (``coarse_k`` cells of whole vectors).
Vectors are searched by inner product on L2-normalised vectors (``metric: ip``) or by L2;
``rerank`` re-scores the best ``rerank`` candidates exactly against the database vectors,
which the search jobs have at hand anyway. ``candidates``, ``rerank`` and ``metric`` are
read at search time; the index is built from the others (``BUILD_SETTINGS``).

The index modules (numba) are imported when an index is built or loaded, not when
settings are checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...errors import SettingError
from ...logs import log
from ...registry import one_of, whole_number

COARSE_QUANTIZERS = ("multi_index", "ivf")
REFINEMENTS = 4  # rounds of rotation / codebook refinement after the PCA frames (index._refine)
DEFAULTS: dict[str, Any] = {"coarse": "multi_index", "metric": "ip", "coarse_k": 64, "m": 16, "subquantizer_k": 256,
                            "candidates": 2000, "rerank": 0, "train_size": 100_000, "seed": 0,
                            "refinements": REFINEMENTS}
BUILD_SETTINGS = ("coarse", "coarse_k", "m", "subquantizer_k", "train_size", "seed", "refinements")
MODEL_FILE = "lopq.npz"


def check(settings: dict[str, Any]) -> None:
    one_of(settings, "coarse", COARSE_QUANTIZERS)
    if settings["metric"] not in ("ip", "l2"):
        raise SettingError("metric", "lopq searches by ip (normalised vectors) or l2")
    for key in ("coarse_k", "m", "subquantizer_k", "candidates", "train_size"):
        whole_number(settings, key)
    if settings["coarse"] == "multi_index" and settings["m"] % 2:
        raise SettingError("m", f"must be even (m/2 subquantizers per half), got {settings['m']}")
    if not isinstance(settings["refinements"], int) or settings["refinements"] < 0:
        raise SettingError("refinements", f"a whole number of rounds >= 0, got {settings['refinements']!r}")
    if 0 < settings["rerank"] < settings.get("k", 40):
        raise SettingError("rerank", f"re-rank at least k={settings.get('k', 40)} candidates, or 0")


def index_class(coarse: str):
    """The index class of a coarse quantizer (``COARSE_QUANTIZERS``)."""
    if coarse == "ivf":
        from .ivf import IVFLOPQIndex

        return IVFLOPQIndex
    from .index import LOPQIndex

    return LOPQIndex


def load_index(path: Path):
    """The index saved at ``path``, of whichever coarse quantizer wrote it."""
    from .index import read_format

    return index_class("ivf" if read_format(path).endswith("-ivf") else "multi_index").load(path)


def build(settings: dict[str, Any], database: np.ndarray, index_dir: Path) -> None:
    settings = {**DEFAULTS, **settings}
    index = index_class(settings["coarse"]).train(
        database, coarse_k=settings["coarse_k"], m=settings["m"], subquantizer_k=settings["subquantizer_k"],
        seed=settings["seed"], train_size=settings["train_size"], refinements=settings["refinements"])
    index.add(database)
    index_dir.mkdir(parents=True, exist_ok=True)
    index.save(index_dir / MODEL_FILE)
    log.info("LOPQ (%s, %d cells): %d vectors, %d bytes per vector", settings["coarse"], index.n_cells, index.ntotal,
             index.bytes_per_vector)


class LOPQSearcher:
    def __init__(self, settings: dict[str, Any], index_dir: Path, database: np.ndarray):
        self.settings = settings
        self.index = load_index(index_dir / MODEL_FILE)
        self.database = database

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        s = self.settings
        scores, rows = self.index.nearest(np.ascontiguousarray(queries, dtype=np.float32), k,
                                         candidates=s["candidates"], rerank=s["rerank"],
                                         vectors=self.database if s["rerank"] else None, metric=s["metric"])
        return (-scores if s["metric"] == "l2" else scores), rows  # higher is better, as for every backend


def load(settings: dict[str, Any], index_dir: Path, database: np.ndarray) -> LOPQSearcher:
    return LOPQSearcher({**DEFAULTS, **settings}, index_dir, database)


def bytes_per_vector(settings: dict[str, Any], index_dir: Path, database: np.ndarray) -> float:
    return float(load_index(index_dir / MODEL_FILE).bytes_per_vector)
