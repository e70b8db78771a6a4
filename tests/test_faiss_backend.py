import numpy as np
import pandas as pd
import pytest

from vprflow.errors import InputError
from vprflow.search import faiss_index, lopq
from vprflow.search import settings_of as check_settings
from vprflow.search.run import agreement_with_exact, build_index


def clustered(n, d=32, centres=20, seed=0):
    rng = np.random.default_rng(seed)
    middle = rng.normal(size=(centres, d))
    x = middle[rng.integers(0, centres, n)] + 0.3 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("factory, extra", [("IVF16,Flat", {"nprobe": 16}), ("HNSW16", {"ef_search": 256}),
                                            ("IVF16,PQ8", {"nprobe": 4})])
def test_factory_indexes_agree_with_exact(tmp_path, factory, extra):
    database, queries = clustered(3000), clustered(50, seed=1)
    settings = {"backend": "faiss", "factory": factory, "metric": "ip", "k": 10, **extra}
    stats = build_index(settings, database, tmp_path)
    scores, rows = faiss_index.load(settings, tmp_path, database).search(queries, 10)
    exact = np.argsort(-(queries @ database.T), axis=1)[:, :10]
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, exact)])
    assert overlap > (0.5 if "PQ" in factory else 0.85 if "HNSW" in factory else 0.95)
    assert stats["build_seconds"] >= 0
    if "PQ8" in factory:
        assert stats["bytes_per_vector"] < 32 * 4 / 4  # far below float32 storage


def test_bad_factory_and_too_few_training_points(tmp_path):
    with pytest.raises(InputError, match=r"searches\.s\.factory"):
        check_settings("s", {"backend": "faiss", "factory": "IVFxyz,Flat"})
    with pytest.raises(InputError, match="needs at least 1024 database vectors"):
        build_index({"backend": "faiss", "factory": "IVF1024,Flat"}, clustered(100), tmp_path)


def test_agreement_with_exact():
    exact = pd.DataFrame({"query_id": ["a"] * 10 + ["b"] * 10, "rank": list(range(10)) * 2,
                          "db_id": [f"d{i}" for i in range(10)] * 2})
    approx = exact.copy()
    approx.loc[approx["query_id"] == "b", "db_id"] = ["x"] + [f"d{i}" for i in range(1, 10)]
    result = agreement_with_exact(approx, exact)
    assert result == {"recall@1_vs_exact": 0.5, "recall@10_vs_exact": pytest.approx(0.95)}


def test_lopq_backend_through_the_search_interface(tmp_path):

    database, queries = clustered(3000), clustered(40, seed=1)
    settings = {"backend": "lopq", "coarse_k": 8, "m": 8, "subquantizer_k": 64, "rerank": 50, "k": 10}
    check_settings("l", settings)
    stats = build_index(settings, database, tmp_path)
    scores, rows = lopq.load(settings, tmp_path, database).search(queries, 10)
    exact = np.argsort(-(queries @ database.T), axis=1)[:, :10]
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, exact)]) > 0.8
    assert stats["bytes_per_vector"] < 32 * 4
    with pytest.raises(InputError, match=r"searches\.l\.m: must be even"):
        check_settings("l", {**settings, "m": 7})
    with pytest.raises(InputError, match=r"searches\.l\.rerank"):
        check_settings("l", {**settings, "rerank": 5})
    with pytest.raises(InputError, match=r"searches\.l\.refinements"):
        check_settings("l", {**settings, "refinements": -1})
    l2 = {**settings, "metric": "l2"}
    scores, _ = lopq.load(l2, tmp_path, database).search(queries, 10)
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first, higher is better
