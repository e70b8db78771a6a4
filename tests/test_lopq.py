"""LOPQ: recall against brute force, traversal order, eigenvalue allocation, persistence."""

from __future__ import annotations

import math

import faiss
import numpy as np
import pytest

from vprflow.errors import InputError
from vprflow.search.lopq import kernels
from vprflow.search.lopq.index import LOPQIndex, allocate_eigenvalues

DIM = 32
N_DATABASE = 5000
N_QUERIES = 200


def clustered(n: int, dim: int, clusters: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian clusters, each with its own orientation and a decaying spectrum."""
    centers = rng.normal(size=(clusters, dim)) * 2.0
    spectrum = np.arange(1, dim + 1) ** -0.7
    labels = rng.integers(clusters, size=n)
    rotations = np.linalg.qr(rng.normal(size=(clusters, dim, dim)))[0]
    noise = rng.normal(size=(n, dim)) * spectrum
    return (np.einsum("nd,nde->ne", noise, rotations[labels]) + centers[labels]).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    vectors = clustered(N_DATABASE + N_QUERIES, DIM, 20, np.random.default_rng(0))
    return vectors[:N_DATABASE], vectors[N_DATABASE:]


@pytest.fixture(scope="module")
def index(data):
    database, _ = data
    index = LOPQIndex.train(database, coarse_k=16, m=8, seed=0, kmeans_iterations=10)
    index.add(database)
    return index


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return sum(len(set(f) & set(t)) for f, t in zip(found.tolist(), truth.tolist())) / truth.size


def exact_neighbours(queries, database, k=10):
    return faiss.knn(queries, database, k)


def test_recall_against_exact_search(index, data):
    database, queries = data
    _, truth = exact_neighbours(queries, database)
    _, ids = index.nearest(queries, 10, candidates=500)
    assert recall(ids, truth) > 0.7  # 8 bytes per 32-d vector
    _, reranked = index.nearest(queries, 10, candidates=500, rerank=100, vectors=database)
    assert recall(reranked, truth) > 0.97


def test_scores_approximate_exact_distances(index, data):
    database, queries = data
    scores, ids = index.nearest(queries, 10, candidates=500)
    exact = ((queries[:, None, :] - database[ids]) ** 2).sum(-1)
    assert np.all(np.diff(scores, axis=1) >= 0)
    assert np.median(np.abs(scores - exact) / exact) < 0.15
    reranked, ids = index.nearest(queries, 10, candidates=500, rerank=50, vectors=database)
    exact = ((queries[:, None, :] - database[ids]) ** 2).sum(-1)
    np.testing.assert_allclose(reranked, exact, rtol=1e-4, atol=1e-4)


def test_more_candidates_never_lose_recall(index, data):
    database, queries = data
    _, truth = exact_neighbours(queries, database)
    recalls = [recall(index.nearest(queries, 10, candidates=c)[1], truth) for c in (20, 200, N_DATABASE)]
    assert recalls[0] < recalls[1] <= recalls[2] + 1e-9


def test_query_equal_to_a_database_vector_is_found_first(index, data):
    database, _ = data
    picked = np.arange(0, N_DATABASE, 97)
    scores, ids = index.nearest(database[picked], 5, candidates=200, rerank=20, vectors=database)
    np.testing.assert_array_equal(ids[:, 0], picked)
    np.testing.assert_allclose(scores[:, 0], 0.0, atol=1e-4)


def test_inner_product_on_normalised_vectors(data):
    database, queries = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in data)
    index = LOPQIndex.train(database, coarse_k=8, m=8, subquantizer_k=64, kmeans_iterations=10)
    index.add(database)
    l2_scores, l2_ids = index.nearest(queries, 10, candidates=300)
    ip_scores, ip_ids = index.nearest(queries, 10, candidates=300, metric="ip")
    np.testing.assert_array_equal(ip_ids, l2_ids)
    np.testing.assert_allclose(ip_scores, 1.0 - l2_scores / 2.0, rtol=1e-6)
    assert np.all(np.diff(ip_scores, axis=1) <= 0)
    reranked, ids = index.nearest(queries, 10, candidates=300, rerank=100, vectors=database, metric="ip")
    exact = np.einsum("qd,qkd->qk", queries, database[ids])
    np.testing.assert_allclose(reranked, exact, rtol=1e-5, atol=1e-5)
    _, truth = faiss.knn(queries, database, 10, metric=faiss.METRIC_INNER_PRODUCT)
    assert recall(ids, truth) > 0.95


def traversal(dists1, dists2, cell_sizes, budget):
    """The traversal kernel on unsorted distances: per query, the cells it takes
    (checked against the ranks it reports)."""
    keys = [kernels.sorted_centroids(d) for d in (dists1, dists2)]
    ranks1, ranks2, cells, taken = kernels.select_cells(*keys, np.asarray(cell_sizes, np.int64), budget)
    coarse_k = dists1.shape[1]
    orders = [(k & 0xFFFFFFFF).astype(np.int64) for k in keys]
    for q in range(len(dists1)):
        by_ranks = orders[0][q, ranks1[q, : taken[q]]] * coarse_k + orders[1][q, ranks2[q, : taken[q]]]
        np.testing.assert_array_equal(cells[q, : taken[q]], by_ranks)
    return [cells[q, : taken[q]] for q in range(len(dists1))]


def test_centroids_are_sorted_by_distance_with_ties_and_rounding_negatives():
    dists = np.array([[0.5, -1e-7, 2.0, 0.0, 0.5], [3.0, 1.0, 2.0, -0.0, 1e30]], np.float32)
    keys = kernels.sorted_centroids(dists)
    assert (keys & 0xFFFFFFFF).tolist() == [[1, 3, 0, 4, 2], [3, 1, 2, 0, 4]]
    values = (keys >> 32).astype(np.uint32).view(np.float32)
    np.testing.assert_array_equal(values, np.sort(np.maximum(dists, 0), axis=1))


@pytest.mark.parametrize("scale", [1.0, 1e6])  # large scores: rounding decides which cells a threshold holds
def test_traversal_takes_the_lowest_scoring_cells_up_to_the_budget(scale):
    rng = np.random.default_rng(1)
    coarse_k, n_queries = 24, 30
    dists1 = (scale + rng.random((n_queries, coarse_k))).astype(np.float32)
    dists2 = (scale + rng.random((n_queries, coarse_k)) ** 3).astype(np.float32)
    cell_sizes = rng.integers(1, 5, coarse_k**2) * (rng.random(coarse_k**2) < 0.3)
    for budget in (1, 37, 400, 10**9):
        for query, visited in enumerate(traversal(dists1, dists2, cell_sizes, budget)):
            assert len(set(visited.tolist())) == len(visited) and np.all(cell_sizes[visited] > 0)
            every = (dists1[query][:, None] + dists2[query][None, :]).ravel()
            by_score = np.argsort(every, kind="stable")
            by_score = by_score[cell_sizes[by_score] > 0]
            held = np.cumsum(cell_sizes[by_score])
            needed = min(np.searchsorted(held, budget) + 1, len(by_score))  # whole cells up to the budget
            if scale == 1.0:
                assert set(visited.tolist()) == set(by_score[:needed].tolist())
            else:  # rounding makes ties, broken either way: every cell below the highest
                # score taken is taken, and the budget needs the cells at that score
                highest = every[visited].max()
                below = every[by_score] < highest
                assert set(by_score[below].tolist()) <= set(visited.tolist())
                held = cell_sizes[visited].sum()
                assert held >= min(budget, cell_sizes.sum())
                assert held - cell_sizes[visited[every[visited] == highest]].max() < budget


def test_traversal_of_a_flat_distance_grid_takes_every_cell():
    dists = np.zeros((2, 8), np.float32)
    taken = traversal(dists, dists, np.ones(64, np.int64), 10**6)
    assert [sorted(cells.tolist()) for cells in taken] == [list(range(64))] * 2
    assert [len(cells) for cells in traversal(dists, dists, np.ones(64, np.int64), 5)] == [5, 5]


def test_traversal_with_one_centroid_and_empty_cells():
    one = np.zeros((3, 1), np.float32)
    assert [c.tolist() for c in traversal(one, one, np.array([4]), 2)] == [[0]] * 3
    assert [c.tolist() for c in traversal(one, one, np.array([0]), 2)] == [[]] * 3


def asymmetric_distances(index: LOPQIndex, queries: np.ndarray) -> np.ndarray:
    """Reference ADC in plain numpy: ``[nq, ntotal]`` squared distances between each
    query, in the local frames of each stored vector's cell, and the vector's decoded
    residual; columns in id order."""
    cells = np.repeat(np.arange(index.coarse_k**2), index._cell_sizes)
    centroids = np.divmod(cells, index.coarse_k)
    dists = np.zeros((len(queries), index.ntotal))
    for h in range(2):
        half = queries[:, h * index.half_dim : (h + 1) * index.half_dim].astype(np.float64)
        local = np.einsum("qd,nde->qne", half, index.rotations[h, centroids[h]]) - index._shifts[h, centroids[h]]
        codes = index._codes[:, h * index.half_m : (h + 1) * index.half_m]
        decoded = index.codebooks[h, np.arange(index.half_m), codes].reshape(index.ntotal, -1)
        dists += ((local - decoded) ** 2).sum(-1)
    by_id = np.empty_like(dists)
    by_id[:, index._ids] = dists
    return by_id


def test_scan_ranks_by_the_asymmetric_distance(index, data):
    database, queries = data
    reference = asymmetric_distances(index, queries[:40])
    for candidates in (index.ntotal, 300):
        scores, ids = index.nearest(queries[:40], 10, candidates=candidates)
        np.testing.assert_allclose(scores, np.take_along_axis(reference, ids, 1), rtol=1e-4)
        if candidates == index.ntotal:  # every vector scanned: the ten smallest of all
            np.testing.assert_allclose(scores, np.sort(reference, axis=1)[:, :10], rtol=1e-4)


# (12, 4): 3-d subspaces, scalar pieces; (40, 8): 4 + 1 lanes; (88, 4): 16 + 4 + 1 + 1 lanes and
# a 44-d rotation of 16 + 16 + 8 + 4; (200, 20): a 100-d rotation over two output tiles;
# (272, 16): 136-d halves, three tiles, 17-d subspaces
@pytest.mark.parametrize(("dim", "m"), [(12, 4), (40, 8), (88, 4), (200, 20), (272, 16)])
def test_every_vector_size_scores_by_the_asymmetric_distance(dim, m):
    vectors = clustered(900, dim, 6, np.random.default_rng(dim))
    index = LOPQIndex.train(vectors[:800], coarse_k=4, m=m, subquantizer_k=16, kmeans_iterations=5)
    index.add(vectors[:800])
    reference = asymmetric_distances(index, vectors[800:])
    scores, ids = index.nearest(vectors[800:], 10, candidates=index.ntotal)
    np.testing.assert_allclose(scores, np.sort(reference, axis=1)[:, :10], rtol=1e-4)
    np.testing.assert_allclose(scores, np.take_along_axis(reference, ids, 1), rtol=1e-4)


def test_matrix_products_give_the_frames_of_the_compiled_rotation(index, data):
    """Halves wider than simd.MAX_ROTATED_DIM are rotated by BLAS instead."""
    _, queries = data
    half = np.ascontiguousarray(queries[:50, : index.half_dim])
    keys = kernels.sorted_centroids(index._coarse_distances(half, 0))
    *ranks, _, taken = (x.copy() for x in kernels.select_cells(keys, keys, index._cell_sizes, 300))
    sized = kernels.sized_kernels(index.half_m, index.sub_dim, index.half_dim)
    compiled, rows = (x.copy() for x in index._local_frames_of(half, keys, ranks[0], taken, 0, sized.rotate))
    blas, blas_rows = index._local_frames_of(half, keys, ranks[0], taken, 0, None)
    np.testing.assert_array_equal(blas_rows, rows)
    np.testing.assert_allclose(blas, compiled, rtol=1e-5, atol=1e-5)
    assert len(compiled) > index.coarse_k  # several queries per centroid: blocks and their remainders


def test_eigenvalue_allocation_balances_products():
    permutation = allocate_eigenvalues([8.0, 4.0, 2.0, 1.0], 2)
    assert permutation.tolist() == [0, 3, 1, 2]  # {8, 1} and {4, 2}: both products 8

    rng = np.random.default_rng(2)
    eigenvalues = np.sort(rng.gamma(0.5, size=32))[::-1] + 1e-3
    permutation = allocate_eigenvalues(eigenvalues, 4)
    assert sorted(permutation.tolist()) == list(range(32))
    blocks = np.log(eigenvalues[permutation]).reshape(4, 8)
    assert np.all(np.diff(eigenvalues[permutation].reshape(4, 8), axis=1) <= 0)  # largest first
    balanced = blocks.sum(axis=1)
    contiguous = np.log(eigenvalues).reshape(4, 8).sum(axis=1)
    assert np.ptp(balanced) < 0.25 * np.ptp(contiguous)
    assert np.ptp(balanced) <= np.log(eigenvalues.max() / eigenvalues.min())


def test_local_frames_are_rotations_and_sparse_centroids_use_the_global_one(index, data):
    database, _ = data
    identity = np.eye(DIM // 2)
    np.testing.assert_allclose(np.einsum("hkij,hkil->hkjl", index.rotations, index.rotations),
                               np.broadcast_to(identity, index.rotations.shape), atol=1e-4)
    assert not np.allclose(index.rotations[0, 0], index.rotations[0, 1])  # local frames differ
    everywhere_global = LOPQIndex.train(database[:2000], coarse_k=16, m=8, subquantizer_k=16, kmeans_iterations=5,
                                        min_local_points=10**9)
    for half in range(2):
        np.testing.assert_array_equal(everywhere_global.rotations[half],
                                      np.broadcast_to(everywhere_global.rotations[half, 0], (16, 16, 16)))
        np.testing.assert_array_equal(everywhere_global.local_means[half],
                                      np.broadcast_to(everywhere_global.local_means[half, 0], (16, 16)))


def test_save_and_load_give_identical_results(index, data, tmp_path):
    database, queries = data
    path = tmp_path / "model.lopq"
    index.save(path)
    assert path.exists()  # no suffix added
    loaded = LOPQIndex.load(path)
    assert loaded.ntotal == index.ntotal
    for expected, got in zip(index.nearest(queries, 10, candidates=300), loaded.nearest(queries, 10, candidates=300)):
        np.testing.assert_array_equal(expected, got)


def test_loading_something_else_names_the_file(tmp_path):
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(InputError, match="garbage.bin"):
        LOPQIndex.load(garbage)
    other = tmp_path / "other.npz"
    np.savez(other, weights=np.zeros(3))
    with pytest.raises(InputError, match="other.npz.*not an LOPQ index"):
        LOPQIndex.load(other)
    with pytest.raises(InputError, match="missing.npz"):
        LOPQIndex.load(tmp_path / "missing.npz")
    single = tmp_path / "single.npy"
    np.save(single, np.zeros(3))
    with pytest.raises(InputError, match="single.npy"):
        LOPQIndex.load(single)
    truncated = tmp_path / "truncated.npz"
    np.savez(truncated, format=np.array("vprflow-lopq"), version=np.array(1), codes=np.zeros((2, 8), np.uint8))
    with pytest.raises(InputError, match="truncated.npz.*lacks"):
        LOPQIndex.load(truncated)


def test_adding_in_batches_with_ids_matches_one_add(index, data):
    database, queries = data
    split = LOPQIndex(index.coarse_centroids, index.local_means, index.rotations, index.codebooks)
    split.add(database[:1234], ids=np.arange(1234) + 10)
    split.add(database[1234:], ids=np.arange(1234, N_DATABASE) + 10)
    expected_scores, expected_ids = index.nearest(queries, 10, candidates=300)
    scores, ids = split.nearest(queries, 10, candidates=300)
    np.testing.assert_array_equal(ids, expected_ids + 10)
    np.testing.assert_array_equal(scores, expected_scores)


def test_results_are_padded_when_fewer_than_k_exist(index, data):
    database, queries = data
    small = LOPQIndex(index.coarse_centroids, index.local_means, index.rotations, index.codebooks)
    scores, ids = small.nearest(queries[:3], 4)
    assert (ids == -1).all() and np.isinf(scores).all()
    small.add(database[:3])
    scores, ids = small.nearest(queries[:3], 5, candidates=10**6)
    assert (np.sort(ids[:, :3], axis=1) == [0, 1, 2]).all()
    assert (ids[:, 3:] == -1).all() and np.isposinf(scores[:, 3:]).all()
    assert np.isneginf(small.nearest(queries[:3], 5, metric="ip")[0][:, 3:]).all()


def test_bytes_per_vector_counts_codes_and_cell(index):
    assert index.bytes_per_vector == 8 + math.ceil(2 * math.log2(16) / 8)


@pytest.mark.parametrize(
    ("dim", "m", "n", "message"),
    [(32, 7, 500, "even"), (30, 4, 500, "not divisible"), (32, 8, 100, "training vectors")],
)
def test_training_rejects_bad_shapes(dim, m, n, message):
    with pytest.raises(InputError, match=message):
        LOPQIndex.train(np.zeros((n, dim), np.float32), coarse_k=16, m=m)


def test_bad_search_arguments_are_named(index, data):
    database, queries = data
    with pytest.raises(InputError, match="shape"):
        index.nearest(queries[:, :16], 10)
    with pytest.raises(InputError, match="metric"):
        index.nearest(queries, 10, metric="cosine")
    with pytest.raises(InputError, match="vectors"):
        index.nearest(queries, 10, rerank=20)
    with pytest.raises(InputError, match="NaN"):
        index.add(np.full((2, DIM), np.nan, np.float32))


def test_refinement_brings_the_codes_closer_and_keeps_rotations_orthogonal(data):
    database, _ = data
    errors = {}
    for rounds in (0, 3):
        index = LOPQIndex.train(database, coarse_k=16, m=8, seed=0, kmeans_iterations=10, refinements=rounds)
        index.add(database)
        # a database vector's asymmetric distance to itself is its squared quantization error
        errors[rounds] = np.diag(asymmetric_distances(index, database[:500])[:, :500]).mean()
        identity = np.broadcast_to(np.eye(DIM // 2), index.rotations.shape)
        np.testing.assert_allclose(np.einsum("hkij,hkil->hkjl", index.rotations, index.rotations), identity, atol=1e-4)
    assert errors[3] < 0.97 * errors[0], errors  # 6% lower on this data
    with pytest.raises(InputError, match="refinements"):
        LOPQIndex.train(database, coarse_k=16, m=8, refinements=-1)
