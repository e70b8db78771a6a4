"""The search stage times the index load and the search calls apart from everything around them."""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pandas as pd

from vprflow.search import run
from vprflow.tables import NEIGHBOUR_COLUMNS

LOAD_S, CALL_S = 0.5, 0.05


class SlowSearcher:
    """Exact inner-product search that takes CALL_S per call."""

    def __init__(self, database):
        self.database = database

    def search(self, queries, k):
        time.sleep(CALL_S)
        scores = queries @ self.database.T
        rows = np.argsort(-scores, axis=1)[:, :k]
        return np.take_along_axis(scores, rows, 1), rows


def slow_backend(settings, index_dir, database):
    time.sleep(LOAD_S)
    return SlowSearcher(database)


def test_load_and_search_calls_are_timed_apart(monkeypatch):
    monkeypatch.setattr(run.BACKENDS, "get", lambda name: SimpleNamespace(load=slow_backend))
    rng = np.random.default_rng(0)
    database, queries = rng.random((20, 4), dtype=np.float32), rng.random((5, 4), dtype=np.float32)
    clock = {}
    found = run.find_neighbours({"backend": "slow", "k": 3}, None, database, np.array([f"d{i}" for i in range(20)]),
                                queries, np.array([f"q{i}" for i in range(5)]),
                                pd.DataFrame(columns=["query_id", "db_id", "reason"]), chunk=2, timings=clock)
    assert list(found.columns) == list(NEIGHBOUR_COLUMNS) and len(found) == 15
    assert clock["load_s"] >= LOAD_S
    assert 3 * CALL_S <= clock["search_s"] < LOAD_S  # three calls of two queries, the load not among them
