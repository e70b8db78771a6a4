"""LOPQ over an IVF coarse quantizer: cell selection, scan, recall, persistence, the backend setting."""

from __future__ import annotations

import math

import faiss
import numpy as np
import pytest

from test_lopq import clustered, recall
from vprflow.errors import InputError
from vprflow.search import lopq
from vprflow.search.lopq import kernels
from vprflow.search.lopq.index import LOPQIndex, rotate_pairs
from vprflow.search.lopq.ivf import IVFLOPQIndex
from vprflow.search.run import build_index

DIM, N_DATABASE, N_QUERIES = 32, 5000, 200


@pytest.fixture(scope="module")
def data():
    vectors = clustered(N_DATABASE + N_QUERIES, DIM, 20, np.random.default_rng(0))
    return vectors[:N_DATABASE], vectors[N_DATABASE:]


@pytest.fixture(scope="module")
def index(data):
    database, _ = data
    index = IVFLOPQIndex.train(database, coarse_k=32, m=8, seed=0, kmeans_iterations=10)
    index.add(database)
    return index


def asymmetric_distances(index: IVFLOPQIndex, queries: np.ndarray) -> np.ndarray:
    """Reference ADC in plain numpy: ``[nq, ntotal]`` squared distances between each query in
    the local frame of each stored vector's cell and the vector's decoded residual; columns in id order."""
    cells = np.repeat(np.arange(index.n_cells), index._cell_sizes)
    local = np.einsum("qd,nde->qne", queries.astype(np.float64), index.rotations[cells]) - index._shifts[cells]
    decoded = index.codebooks[np.arange(index.m), index._codes].reshape(index.ntotal, -1)
    dists = ((local - decoded) ** 2).sum(-1)
    by_id = np.empty_like(dists)
    by_id[:, index._ids] = dists
    return by_id


def test_recall_against_exact_search(index, data):
    database, queries = data
    _, truth = faiss.knn(queries, database, 10)
    _, ids = index.nearest(queries, 10, candidates=500)
    assert recall(ids, truth) > 0.8  # 8 bytes per 32-d vector; the multi-index reaches 0.7 here
    _, reranked = index.nearest(queries, 10, candidates=500, rerank=100, vectors=database)
    assert recall(reranked, truth) > 0.97


def test_local_frames_bring_the_codes_closer_than_one_global_frame(data):
    """Each cell's own rotation fits its residuals better than the global one shared by all."""
    database, _ = data
    errors = {}
    for name, min_points in (("local", None), ("global", 10**9)):
        index = IVFLOPQIndex.train(database, coarse_k=32, m=8, seed=0, kmeans_iterations=10, refinements=0,
                                   min_local_points=min_points)
        index.add(database)
        errors[name] = np.diag(asymmetric_distances(index, database[:300])[:, :300]).mean()
    assert errors["local"] < 0.8 * errors["global"], errors
    identity = np.broadcast_to(np.eye(DIM), index.rotations.shape)
    rotations = index.rotations.astype(np.float64)  # stored in half precision: entries within 2**-11
    np.testing.assert_allclose(np.einsum("kij,kil->kjl", rotations, rotations), identity, atol=2e-3)


def test_scan_ranks_by_the_asymmetric_distance(index, data):
    _, queries = data
    reference = asymmetric_distances(index, queries[:40])
    for candidates in (index.ntotal, 300):
        scores, ids = index.nearest(queries[:40], 10, candidates=candidates)
        np.testing.assert_allclose(scores, np.take_along_axis(reference, ids, 1), rtol=1e-4)
        if candidates == index.ntotal:  # every vector scanned: the ten smallest of all
            np.testing.assert_allclose(scores, np.sort(reference, axis=1)[:, :10], rtol=1e-4)


def on_a_line(positions) -> np.ndarray:
    """Points at these positions on the first axis of a 4-d space (exact in float32)."""
    points = np.zeros((len(positions), 4), np.float32)
    points[:, 0] = positions
    return points


def nearest_cells_reference(queries, centroids, cell_sizes, budget):
    """Per query: the non-empty cells by distance, taken until they hold the budget."""
    taken = []
    for query in queries.astype(np.float64):
        dists = ((centroids - query) ** 2).sum(1)
        order = [c for c in np.argsort(dists, kind="stable") if cell_sizes[c] > 0]
        held = np.cumsum(cell_sizes[order])
        taken.append(order[: min(int(np.searchsorted(held, budget)) + 1, len(order))])
    return taken


@pytest.mark.parametrize("budget", [1, 7, 60, 10**6])
def test_cells_are_taken_nearest_first_up_to_the_budget(budget):
    rng = np.random.default_rng(3)
    n_cells = 40
    cell_sizes = rng.integers(1, 6, n_cells) * (rng.random(n_cells) < 0.7)
    centroids = on_a_line(rng.permutation(n_cells))  # at whole positions, queries at quarters: no ties
    queries = on_a_line(rng.integers(-3, n_cells + 3, 25) + 0.25)
    cells, taken = kernels.select_lists(queries, centroids, (centroids**2).sum(1), cell_sizes, budget)
    for q, expected in enumerate(nearest_cells_reference(queries, centroids, cell_sizes, budget)):
        assert cells[q, : taken[q]].tolist() == list(expected)


def test_queries_among_sparse_cells_are_searched_again_with_room_for_every_cell():
    """The heap has room for twice the cells the budget needs at the average density; where
    the nearest cells are sparse it runs out, and those queries are taken again."""
    cell_sizes = np.array([1] * 30 + [100], np.int64)
    centroids = on_a_line(np.arange(31))
    queries = on_a_line([-0.25, 30.25, 10.25])  # the big cell is the farthest, the nearest, in between
    cells, taken = kernels.select_lists(queries, centroids, (centroids**2).sum(1), cell_sizes, 40)
    assert cells[0, : taken[0]].tolist() == list(range(31))
    assert cells[1, : taken[1]].tolist() == [30]
    assert [len(c) for c in nearest_cells_reference(queries, centroids, cell_sizes, 40)] == taken.tolist()


def test_pairs_are_grouped_by_cell_and_rows_numbered_query_by_query():
    cells = np.array([[2, 0, 5], [0, 3, 9], [5, 9, 9]], np.int64)
    taken = np.array([3, 2, 1], np.int64)
    first_rows, bounds, pair_queries, pair_rows = (x.copy() for x in kernels.group_pairs(cells, taken, 6))
    assert first_rows.tolist() == [0, 3, 5]
    assert bounds.tolist() == [0, 2, 2, 3, 4, 4, 6]
    by_cell = [sorted(zip(pair_queries[a:b].tolist(), pair_rows[a:b].tolist())) for a, b in zip(bounds, bounds[1:])]
    assert by_cell == [[(0, 1), (1, 3)], [], [(0, 0)], [(1, 4)], [], [(0, 2), (2, 5)]]


def test_compiled_rotation_agrees_with_matrix_products(index, data):
    _, queries = data
    cells, taken = (x.copy() for x in kernels.select_lists(queries, index.centroids, index._centroid_norms,
                                                           index._cell_sizes, 300))
    first_rows, bounds, pair_queries, pair_rows = (x.copy() for x in kernels.group_pairs(cells, taken, index.n_cells))
    frames = {}
    for name, rotate in (("compiled", kernels.ivf_kernels(index.m, index.sub_dim, index.dim).rotate), ("blas", None)):
        frames[name] = np.zeros((len(pair_rows), index.dim), np.float32)
        rotate_pairs(queries, index.rotations, index._shifts, bounds, pair_queries, pair_rows, frames[name], rotate)
    np.testing.assert_allclose(frames["compiled"], frames["blas"], rtol=1e-5, atol=1e-5)
    q, t = 7, 1
    row = first_rows[q] + t
    np.testing.assert_allclose(frames["blas"][row], queries[q] @ index.rotations[cells[q, t]]
                               - index._shifts[cells[q, t]], rtol=1e-5, atol=1e-5)


def test_bytes_per_vector_counts_codes_and_cell(index):
    assert index.bytes_per_vector == 8 + math.ceil(math.log2(32) / 8)


def test_save_load_and_the_backend_pick_the_right_coarse_quantizer(index, data, tmp_path):
    database, queries = data
    index.save(tmp_path / "ivf.npz")
    loaded = lopq.load_index(tmp_path / "ivf.npz")
    assert isinstance(loaded, IVFLOPQIndex)
    for expected, got in zip(index.nearest(queries, 10, candidates=300), loaded.nearest(queries, 10, candidates=300)):
        np.testing.assert_array_equal(expected, got)
    with pytest.raises(InputError, match="ivf.npz: not an LOPQ index of this kind"):
        LOPQIndex.load(tmp_path / "ivf.npz")

    settings = {"backend": "lopq", "coarse": "ivf", "coarse_k": 16, "m": 8, "subquantizer_k": 64, "k": 10,
                "candidates": 400, "metric": "l2"}
    stats = build_index(settings, database, tmp_path / "built")
    assert stats["bytes_per_vector"] == 8 + 1
    scores, rows = lopq.load(settings, tmp_path / "built", database).search(queries, 10)
    assert isinstance(lopq.load_index(tmp_path / "built" / lopq.MODEL_FILE), IVFLOPQIndex)
    _, truth = faiss.knn(queries, database, 10)
    assert recall(rows, truth) > 0.7 and np.all(np.diff(scores, axis=1) <= 0)  # higher is better


def test_odd_m_is_allowed_over_an_inverted_file(data):
    database, queries = data
    index = IVFLOPQIndex.train(database[:2000], coarse_k=8, m=4, subquantizer_k=16, kmeans_iterations=5)
    index.add(database[:2000])
    assert index.nearest(queries[:5], 3)[1].shape == (5, 3)
    assert lopq.check({**lopq.DEFAULTS, "coarse": "ivf", "m": 7}) is None
    with pytest.raises(InputError, match="not divisible"):
        IVFLOPQIndex.train(database, coarse_k=8, m=7)
