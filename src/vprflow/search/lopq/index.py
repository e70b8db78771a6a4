"""Locally optimized product quantization (LOPQ) over an inverted multi-index.

Kalantidis & Avrithis, "Locally Optimized Product Quantization for Approximate
Nearest Neighbor Search", CVPR 2014, in its product version (multi-index):

* Coarse quantizer: an inverted multi-index. A vector is split into two halves,
  each half has a k-means codebook of ``coarse_k`` centroids and a vector's cell
  is the pair ``(i, j)`` of its nearest centroids, so there are ``coarse_k**2``
  cells.
* Local optimisation: each centroid of each half owns a mean and a rotation of
  the residuals assigned to it. The rotation is the PCA basis of those residuals
  with eigenvalue allocation (eigen-directions dealt greedily to the half's
  ``m/2`` subspaces so that the eigenvalue products are balanced), as in the
  paper; ``refinements`` rounds then fit each rotation and the codebooks to each
  other (OPQ's non-parametric step per centroid, :func:`_refine`). A centroid
  with fewer than ``min_local_points`` training residuals uses its half's global
  mean and rotation.
* Fine quantizer: each half's rotated residual is product-quantized with ``m/2``
  subquantizers of ``subquantizer_k`` centroids (uint8 codes). The subquantizers
  are shared by all centroids of a half, not learnt per centroid as in the
  paper's full LOPQ: after the local rotation every centroid's residuals have
  the same shape in each subspace (decreasing, balanced variances), so one
  codebook fits them, trains on all points instead of a few hundred per
  centroid, and keeps the model small.
* Search: the cells are taken in multi-sequence order (non-decreasing sum of
  the distances to the two halves' centroids) until ``candidates`` vectors are
  collected; candidates are ranked by asymmetric distance (exact query residual
  in the centroid's local frame against the residual decoded from the codes) and
  a shortlist can be re-ranked exactly. The per-query loops are compiled
  (``kernels``, numba); the rotations into local frames are matrix
  products, one per centroid for all the queries of a batch that need it.

Distances are squared L2. For the ``"ip"`` metric on L2-normalised vectors the
ranking is the same and the score is ``1 - d2 / 2`` (the inner product when both
vectors have unit norm); exact re-ranking returns exact inner products.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np

from ...errors import InputError
from ...vectors import kmeans_centroids
from . import REFINEMENTS, kernels

FORMAT_TAG = "vprflow-lopq"
FORMAT_VERSION = 1
METRICS = ("l2", "ip")
_DATABASE_ARRAYS = ("codes", "ids", "cell_sizes")

_ENCODE_BATCH = 65536  # vectors encoded at once: bounds the temporaries to tens of MB
# Queries are searched in batches: the more queries a batch holds, the more of
# them share each centroid's rotation, read once per batch; the fewer, the more of
# a batch's local frames and traversal state stay in cache (a query's frames take
# up to 4 * d bytes per candidate, a quarter of d in practice). Batches are sized
# so that 2 * d bytes per candidate come to _BATCH_BYTES: timed against batches of
# 32 to 1024 queries on 100k x 128 vectors, that size was the fastest or within 5%
# of it at budgets of 100 to 4000.
_BATCH_BYTES = 2**25
_MIN_BATCH, _MAX_BATCH = 64, 4096  # queries per batch, whatever the budget
_FRAMES_AT_ONCE = 256  # centroids whose covariances are decomposed together (bounds float64 temporaries)
_EIGENVALUE_FLOOR = 1e-9  # relative to the largest eigenvalue; keeps logs finite
_REFINE_KMEANS_ITERATIONS = 4  # k-means steps per round, from the codewords so far


def allocate_eigenvalues(eigenvalues: Sequence[float], n_subspaces: int) -> np.ndarray:
    """Permutation of eigen-directions whose consecutive blocks form balanced subspaces.

    Greedy eigenvalue allocation (Ge et al., OPQ): eigenvalues are taken from the
    largest down, each to the subspace that is not full yet and has the smallest
    product of eigenvalues so far. Block ``s`` of the returned permutation holds
    the directions of subspace ``s``, largest variance first. Eigenvalues are
    measured relative to the smallest one so every log is non-negative and an
    empty subspace always counts as the smallest product.
    """
    values = np.maximum(np.asarray(eigenvalues, dtype=np.float64), 0.0)
    dim = len(values)
    per_subspace = dim // n_subspaces
    floor = max(values.max(initial=0.0) * _EIGENVALUE_FLOOR, np.finfo(np.float64).tiny)
    logs = np.log(np.maximum(values, floor))
    logs = (logs - logs.min()).tolist()
    log_products = [0.0] * n_subspaces
    members: list[list[int]] = [[] for _ in range(n_subspaces)]
    for direction in np.argsort(-values, kind="stable").tolist():
        target = min(
            (s for s in range(n_subspaces) if len(members[s]) < per_subspace),
            key=log_products.__getitem__,
        )
        members[target].append(direction)
        log_products[target] += logs[direction]
    return np.array([d for subspace in members for d in subspace], dtype=np.int64)


class InvertedCodes:
    """What both coarse quantizers share: the database as inverted lists (codes and
    ids sorted by cell), adding vectors, query checks and batching, exact
    re-ranking, and persistence as plain arrays.

    A subclass sets ``FORMAT_TAG`` and ``MODEL_ARRAYS`` (the arrays its constructor
    takes, by name), ``dim``, ``m`` and ``n_cells``, and provides ``_encode`` (cells
    and codes of vectors) and ``_shortlist`` (the best candidates of a batch of
    queries by asymmetric distance).
    """

    FORMAT_TAG: ClassVar[str]
    MODEL_ARRAYS: ClassVar[tuple[str, ...]]
    dim: int
    m: int
    n_cells: int

    # ------------------------------------------------------------------ database

    @property
    def ntotal(self) -> int:
        return len(self._ids)

    @property
    def bytes_per_vector(self) -> int:
        """Code bytes plus the cell id (``ceil(log2 cells)`` bits, rounded up to bytes).

        The cell is implicit in the inverted lists, as the list number is in an
        IVF index; it is counted as if stored, so indexes with more cells pay for
        them. The 8-byte vector ids are not counted.
        """
        cell_bits = math.ceil(math.log2(self.n_cells)) if self.n_cells > 1 else 0
        return self.m + (cell_bits + 7) // 8

    def add(self, x: np.ndarray, ids: np.ndarray | None = None) -> None:
        """Encode ``x`` and append it; ``ids`` default to consecutive numbers after the last."""
        x = _as_matrix(x, "vectors to add", self.dim)
        if ids is None:
            ids = np.arange(self.ntotal, self.ntotal + len(x), dtype=np.int64)
        ids = np.asarray(ids, dtype=np.int64)
        if ids.shape != (len(x),):
            raise InputError(f"LOPQ add: {len(ids)} ids for {len(x)} vectors")
        cells = np.empty(len(x), np.int64)
        codes = np.empty((len(x), self.m), np.uint8)
        for start in range(0, len(x), _ENCODE_BATCH):
            stop = min(start + _ENCODE_BATCH, len(x))
            cells[start:stop], codes[start:stop] = self._encode(x[start:stop])
        old_cells = np.repeat(np.arange(self.n_cells, dtype=np.int64), self._cell_sizes)
        self._set_database(
            np.concatenate([self._codes, codes]),
            np.concatenate([self._ids, ids]),
            np.concatenate([old_cells, cells]),
        )

    def _set_database(self, codes: np.ndarray, ids: np.ndarray, cells: np.ndarray) -> None:
        """Store codes and ids sorted by cell (the inverted lists) with their offsets."""
        order = np.argsort(cells, kind="stable")
        self._codes = np.ascontiguousarray(codes[order])
        self._ids = ids[order]
        self._cell_sizes = np.bincount(cells, minlength=self.n_cells).astype(np.int64)
        self._cell_bounds = np.concatenate([[0], np.cumsum(self._cell_sizes)]).astype(np.int64)
        self._largest_cell = int(self._cell_sizes.max(initial=0))

    def _empty_database(self) -> None:
        self._set_database(np.empty((0, self.m), np.uint8), np.empty(0, np.int64), np.empty(0, np.int64))

    # ------------------------------------------------------------------ queries

    def nearest(
        self,
        queries: np.ndarray,
        k: int,
        candidates: int = 2000,
        rerank: int = 0,
        vectors: np.ndarray | None = None,
        metric: str = "l2",
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest stored vectors of each query.

        ``candidates`` is the number of database vectors (whole cells, so a few
        more) collected from the cells nearest to the query and ranked by
        asymmetric distance. With ``rerank > 0`` the best ``rerank`` of them are
        re-ranked exactly against ``vectors``, where ``vectors[i]`` is the vector
        added with id ``i``.

        Returns ``(scores, ids)``, both ``[nq, k]``, best first, padded with id
        ``-1`` (score ``inf`` for "l2", ``-inf`` for "ip"). Scores are squared L2
        distances for ``metric="l2"`` and, for ``"ip"`` (L2-normalised vectors),
        ``1 - d2 / 2`` or the exact inner product after re-ranking.
        """
        queries = _as_matrix(queries, "queries", self.dim)
        if metric not in METRICS:
            raise InputError(f"LOPQ metric {metric!r}: expected one of {METRICS}")
        if k < 1 or candidates < 1:
            raise InputError(f"LOPQ k={k}, candidates={candidates}: both must be >= 1")
        if rerank:
            if vectors is None:
                raise InputError("LOPQ rerank needs the original vectors (vectors=...)")
            if rerank < k:
                raise InputError(f"LOPQ rerank={rerank}: the shortlist must hold at least k={k}")
            if np.ndim(vectors) != 2 or np.shape(vectors)[1] != self.dim:
                raise InputError(f"LOPQ re-ranking vectors: shape {np.shape(vectors)}, expected [n, {self.dim}]")
        scores = np.full((len(queries), k), np.inf if metric == "l2" else -np.inf, np.float32)
        ids = np.full((len(queries), k), -1, np.int64)
        if not self.ntotal:
            return scores, ids
        batch_size = self.batch_size(candidates)
        for start in range(0, len(queries), batch_size):
            batch = queries[start : start + batch_size]
            d2, positions = self._shortlist(batch, candidates, rerank if rerank else k)
            best_ids = np.where(positions >= 0, self._ids[np.maximum(positions, 0)], -1)
            if rerank:
                d2 = _exact_distances(batch, vectors, best_ids, metric)
                d2, order = _smallest(d2, k)
                best_ids = np.take_along_axis(best_ids, order, 1)
            d2, ids[start : start + len(batch)] = d2[:, :k], best_ids[:, :k]
            scores[start : start + len(batch)] = d2 if metric == "l2" else 1.0 - d2 / 2.0
        return scores, ids

    def batch_size(self, candidates: int) -> int:
        """Queries searched together at a budget of ``candidates`` (see ``_BATCH_BYTES``)."""
        return min(max(_MIN_BATCH, _BATCH_BYTES // (2 * self.dim * candidates)), _MAX_BATCH)

    def _encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _shortlist(self, queries: np.ndarray, candidates: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``length`` best candidates of each query by asymmetric distance:
        ``(squared distances, database positions)``, sorted, ``inf``/-1 padded."""
        raise NotImplementedError

    # ------------------------------------------------------------------ persistence

    def model_arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in self.MODEL_ARRAYS}

    def save(self, path: str | Path) -> None:
        """Write model and database as plain arrays in an ``.npz`` file at ``path``."""
        with open(path, "wb") as stream:
            np.savez(stream, format=np.array(self.FORMAT_TAG), version=np.array(FORMAT_VERSION),
                     **self.model_arrays(), codes=self._codes, ids=self._ids, cell_sizes=self._cell_sizes)

    @classmethod
    def load(cls, path: str | Path) -> "InvertedCodes":
        """Read an index written by :meth:`save`; InputError naming ``path`` otherwise."""
        arrays = read_arrays(path)
        if str(arrays.get("format", "")) != cls.FORMAT_TAG:
            raise InputError(f"{path}: not an LOPQ index of this kind (no '{cls.FORMAT_TAG}' format tag)")
        missing = sorted(set(cls.MODEL_ARRAYS + _DATABASE_ARRAYS) - set(arrays))
        if missing:
            raise InputError(f"{path}: LOPQ index lacks arrays {missing}")
        try:
            index = cls(*(arrays[name] for name in cls.MODEL_ARRAYS))
        except InputError as error:
            raise InputError(f"{path}: {error}") from None
        sizes = arrays["cell_sizes"]
        if sizes.shape != (index.n_cells,) or sizes.sum() != len(arrays["ids"]):
            raise InputError(f"{path}: LOPQ index is inconsistent (cell sizes do not match the ids)")
        cells = np.repeat(np.arange(index.n_cells, dtype=np.int64), sizes)
        index._set_database(arrays["codes"], arrays["ids"], cells)
        return index


def read_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of an LOPQ index file, its format tag and version checked; InputError naming ``path``."""
    with _open_index(path) as archive:
        try:
            arrays = {name: archive[name] for name in archive.files}
        except _UNREADABLE as error:
            raise InputError(f"{path}: not a readable LOPQ index ({error})") from None
    _check_format(path, arrays)
    return arrays


def read_format(path: str | Path) -> str:
    """The format tag of an LOPQ index file (which coarse quantizer wrote it), checked as by :func:`read_arrays`."""
    with _open_index(path) as archive:
        try:
            header = {name: archive[name] for name in ("format", "version") if name in archive.files}
        except _UNREADABLE as error:
            raise InputError(f"{path}: not a readable LOPQ index ({error})") from None
    _check_format(path, header)
    return str(header["format"])


_UNREADABLE = (OSError, ValueError, EOFError, zipfile.BadZipFile)


def _open_index(path: str | Path) -> np.lib.npyio.NpzFile:
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{path}: LOPQ index file not found") from None
    except _UNREADABLE as error:
        raise InputError(f"{path}: not an LOPQ index ({error})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise InputError(f"{path}: not an LOPQ index (a single .npy array, not an .npz archive)")
    return archive


def _check_format(path, arrays: dict[str, np.ndarray]) -> None:
    if "format" not in arrays or not str(arrays["format"]).startswith(FORMAT_TAG):
        raise InputError(f"{path}: not an LOPQ index (no '{FORMAT_TAG}' format tag)")
    if int(arrays.get("version", -1)) != FORMAT_VERSION:
        raise InputError(
            f"{path}: LOPQ index format version {arrays.get('version')}, this code reads version {FORMAT_VERSION}"
        )


class LOPQIndex(InvertedCodes):
    """LOPQ over an inverted multi-index, plus the encoded database; see the module docstring.

    Build with :meth:`train` then :meth:`add`; query with :meth:`nearest`;
    persist with :meth:`save` / :meth:`load` (plain ``.npz`` arrays, no pickle).
    """

    FORMAT_TAG = FORMAT_TAG
    MODEL_ARRAYS = ("coarse_centroids", "local_means", "rotations", "codebooks")

    def __init__(
        self,
        coarse_centroids: np.ndarray,
        local_means: np.ndarray,
        rotations: np.ndarray,
        codebooks: np.ndarray,
    ):
        """Wrap trained arrays; shapes are ``[2, K, d/2]``, ``[2, K, d/2]``,
        ``[2, K, d/2, d/2]`` and ``[2, m/2, subquantizer_k, d/m]``."""
        self.coarse_centroids = np.ascontiguousarray(coarse_centroids, dtype=np.float32)
        self.local_means = np.ascontiguousarray(local_means, dtype=np.float32)
        self.rotations = np.ascontiguousarray(rotations, dtype=np.float32)
        self.codebooks = np.ascontiguousarray(codebooks, dtype=np.float32)
        _, self.coarse_k, self.half_dim = self.coarse_centroids.shape
        _, self.half_m, self.subquantizer_k, self.sub_dim = self.codebooks.shape
        expected = {
            "coarse_centroids": (2, self.coarse_k, self.half_dim),
            "local_means": (2, self.coarse_k, self.half_dim),
            "rotations": (2, self.coarse_k, self.half_dim, self.half_dim),
            "codebooks": (2, self.half_m, self.subquantizer_k, self.half_dim // self.half_m),
        }
        _check_shapes(self, expected)
        self.dim = 2 * self.half_dim
        self.m = 2 * self.half_m
        self.n_cells = self.coarse_k**2
        self._centroid_norms = np.einsum("hkd,hkd->hk", self.coarse_centroids, self.coarse_centroids)
        self._codeword_norms = np.einsum("hskd,hskd->hsk", self.codebooks, self.codebooks)
        self._codewords = self.codebooks.reshape(2, self.half_m * self.subquantizer_k, self.sub_dim)
        # A query half q lands in centroid i's rotated frame as q @ R_i - shift_i.
        self._shifts = np.ascontiguousarray(
            np.einsum("hkd,hkde->hke", self.coarse_centroids + self.local_means, self.rotations), dtype=np.float32
        )
        self._empty_database()

    @classmethod
    def train(
        cls,
        x: np.ndarray,
        coarse_k: int,
        m: int,
        subquantizer_k: int = 256,
        seed: int = 0,
        train_size: int | None = None,
        min_local_points: int | None = None,
        kmeans_iterations: int = 20,
        refinements: int = REFINEMENTS,
    ) -> "LOPQIndex":
        """Learn an empty index from ``x`` (float32 ``[n, d]``).

        ``d`` must be divisible by ``m`` and ``m`` even (``m/2`` subquantizers per
        half). ``train_size`` subsamples ``x`` (seeded). ``min_local_points``
        (default ``d/2``, enough for a full-rank covariance) is the number of
        residuals a centroid needs for its own mean and rotation. ``refinements``
        rounds of :func:`_refine` then fit each local rotation and the codebooks to
        each other.
        """
        x = _training_sample(x, train_size, seed)
        n, d = x.shape
        if m < 2 or m % 2:
            raise InputError(f"LOPQ m={m}: must be even (m/2 subquantizers per half) and >= 2")
        _check_training(n, d, m, coarse_k, subquantizer_k, refinements)
        half_dim, half_m = d // 2, m // 2
        parts = [
            fit_local_quantizer(
                np.ascontiguousarray(x[:, h * half_dim : (h + 1) * half_dim]), coarse_k, half_m, subquantizer_k,
                seeds=(seed + h, seed + 2 + h * half_m, seed + 2 + h, m),
                min_local_points=half_dim if min_local_points is None else min_local_points,
                kmeans_iterations=kmeans_iterations, refinements=refinements,
            )
            for h in range(2)
        ]
        return cls(*(np.stack(arrays) for arrays in zip(*parts)))

    def _encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cells and uint8 codes of a batch of vectors."""
        codes = np.empty((len(x), self.m), np.uint8)
        assignments = []
        for h in range(2):
            part = x[:, h * self.half_dim : (h + 1) * self.half_dim]
            assignment = _nearest(part, self.coarse_centroids[h], self._centroid_norms[h])
            codes[:, h * self.half_m : (h + 1) * self.half_m] = _local_codes(
                part, assignment, self.coarse_centroids[h], self.local_means[h], self.rotations[h],
                self.codebooks[h], self._codeword_norms[h])
            assignments.append(assignment)
        return assignments[0] * self.coarse_k + assignments[1], codes

    def _shortlist(self, queries, candidates, length):
        """The multi-sequence traversal's cells, the query halves in their centroids' frames, and the scan."""
        halves = [np.ascontiguousarray(queries[:, h * self.half_dim : (h + 1) * self.half_dim]) for h in range(2)]
        scratch = kernels.SCRATCH
        keys = [
            kernels.sorted_centroids(
                self._coarse_distances(halves[h], h, scratch.array("dists", (len(queries), self.coarse_k), np.float32)),
                scratch.array(f"keys{h}", (len(queries), self.coarse_k), np.uint64),
            )
            for h in range(2)
        ]
        ranks1, ranks2, cells, taken = kernels.select_cells(*keys, self._cell_sizes, candidates)
        sized = kernels.sized_kernels(self.half_m, self.sub_dim, self.half_dim)
        (frames1, cell_rows1), (frames2, cell_rows2) = (
            self._local_frames_of(halves[h], keys[h], ranks, taken, h, sized.rotate)
            for h, ranks in enumerate((ranks1, ranks2))
        )
        most = candidates + self._largest_cell  # cells are taken while they hold fewer than the budget
        work = [scratch.array("positions_of", (most,), np.int64), scratch.array("distances", (most,), np.float32)]
        return sized.scan(
            cells, taken, frames1, cell_rows1, frames2, cell_rows2, self._cell_bounds, self._codes,
            self._codewords[0], self._codewords[1], length, *work,
        )

    def _coarse_distances(self, half: np.ndarray, h: int, out: np.ndarray | None = None) -> np.ndarray:
        """``[nq, K]`` squared distances of query halves to the centroids of half ``h``."""
        return _squared_distances(half, self.coarse_centroids[h], self._centroid_norms[h], out)

    def _local_frames_of(self, half, keys, ranks, taken, h, rotate):
        """The query halves in the local frames of the centroids of half ``h`` their
        cells need, ``half[q] @ R_c - shift_c``, as ``(frames, cell_rows)`` (see
        :func:`kernels.assign_frames`). The pairs are taken centroid by centroid,
        so each rotation is read once per batch: by the compiled ``rotate`` kernel,
        or by one matrix product per centroid where the halves are too wide for it."""
        cell_rows, bounds, pair_queries, pair_rows = kernels.assign_frames(keys, ranks, taken, self.coarse_k, h)
        frames = kernels.SCRATCH.array(f"frames{h}", (len(pair_rows), self.half_dim), np.float32)
        rotate_pairs(half, self.rotations[h], self._shifts[h], bounds, pair_queries, pair_rows, frames, rotate)
        return frames, cell_rows


# ---------------------------------------------------------------------- helpers


def fit_local_quantizer(
    x: np.ndarray,
    coarse_k: int,
    n_subspaces: int,
    subquantizer_k: int,
    *,
    seeds: tuple[int, int, int, int],
    min_local_points: int,
    kmeans_iterations: int,
    refinements: int,
    coarse_points_per_centroid: int = 256,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(centroids, local_means, rotations, codebooks)`` of one coarse quantizer over
    ``x`` with a local frame per centroid and ``n_subspaces`` shared subquantizers:
    k-means centroids, each centroid's residual mean and PCA rotation with eigenvalue
    allocation (:func:`_local_frames`), codebooks by k-means on the rotated residuals,
    then ``refinements`` rounds of :func:`_refine`.

    ``seeds`` are those of the coarse k-means, of the first codebook (the others
    follow), and of the refinement rounds (round ``r`` uses ``seeds[2] + (r + 1) *
    seeds[3]``). The coarse k-means trains on at most ``coarse_points_per_centroid``
    points per centroid.
    """
    coarse_seed, codebook_seed, refine_seed, refine_step = seeds
    dim = x.shape[1]
    sub_dim = dim // n_subspaces
    centroids = kmeans_centroids(x, coarse_k, iterations=kmeans_iterations, seed=coarse_seed,
                                 max_points_per_centroid=coarse_points_per_centroid)
    assignment = _nearest(x, centroids)
    residuals = x - centroids[assignment]
    groups = _groups(assignment, coarse_k)
    means, rotations, local = _local_frames(residuals, groups, n_subspaces, min_local_points)
    centred = residuals - means[assignment]
    del residuals
    rotated = _rotate_grouped(centred, assignment, rotations)
    codebooks = np.empty((n_subspaces, subquantizer_k, sub_dim), np.float32)
    for s in range(n_subspaces):
        block = np.ascontiguousarray(rotated[:, s * sub_dim : (s + 1) * sub_dim])
        codebooks[s] = kmeans_centroids(block, subquantizer_k, iterations=kmeans_iterations, seed=codebook_seed + s)
    del rotated
    for round_ in range(refinements):
        _refine(centred, assignment, groups, local, rotations, codebooks, refine_seed + (round_ + 1) * refine_step)
    return centroids, means, rotations, codebooks


def _training_sample(x, train_size: int | None, seed: int) -> np.ndarray:
    """``train_size`` rows of ``x`` (seeded, in their order), or all of them, as a checked float32 matrix."""
    if train_size is not None and np.ndim(x) == 2 and train_size < len(x):
        rng = np.random.default_rng(seed)
        x = np.asarray(x)[np.sort(rng.choice(len(x), size=train_size, replace=False))]
    return _as_matrix(x, "training vectors")


def _check_training(n: int, d: int, m: int, coarse_k: int, subquantizer_k: int, refinements: int) -> None:
    if d % m:
        raise InputError(f"LOPQ: dimension {d} is not divisible by m={m}")
    if not 1 <= subquantizer_k <= 256:
        raise InputError(f"LOPQ subquantizer_k={subquantizer_k}: must be in 1..256 (uint8 codes)")
    if coarse_k < 1:
        raise InputError(f"LOPQ coarse_k={coarse_k}: must be >= 1")
    if refinements < 0:
        raise InputError(f"LOPQ refinements={refinements}: must be >= 0")
    if n < max(coarse_k, subquantizer_k):
        raise InputError(
            f"LOPQ: {n} training vectors for coarse_k={coarse_k} and "
            f"subquantizer_k={subquantizer_k}; need at least {max(coarse_k, subquantizer_k)}"
        )


def _check_shapes(index, expected: dict[str, tuple[int, ...]]) -> None:
    for name, shape in expected.items():
        if getattr(index, name).shape != shape:
            raise InputError(f"LOPQ {name} has shape {getattr(index, name).shape}, expected {shape}")


def _local_codes(x, assignment, centroids, means, rotations, codebooks, codeword_norms) -> np.ndarray:
    """uint8 codes of ``x`` (rows assigned to ``centroids``): each residual in its centroid's local frame,
    subspace by subspace to the nearest codeword."""
    n_subspaces, _, sub_dim = codebooks.shape
    rotated = _rotate_grouped(x - centroids[assignment] - means[assignment], assignment, rotations)
    codes = np.empty((len(x), n_subspaces), np.uint8)
    for s in range(n_subspaces):
        codes[:, s] = _nearest(rotated[:, s * sub_dim : (s + 1) * sub_dim], codebooks[s], codeword_norms[s])
    return codes


def rotate_pairs(x, rotations, shifts, bounds, pair_queries, pair_rows, frames, rotate) -> None:
    """``frames[pair_rows[i]] = x[pair_queries[i]] @ rotations[c] - shifts[c]`` for the pairs ``i`` of
    each centroid ``c`` (``bounds[c]:bounds[c+1]``): by the compiled ``rotate`` kernel, or by one matrix
    product per centroid where ``rotate`` is None (vectors too wide for it). ``rotations`` are float32
    or float16 (the kernel reads their bits)."""
    if rotate is not None:
        rotate(x, rotations.view(np.uint16) if rotations.dtype == np.float16 else rotations, shifts, bounds,
               pair_queries, pair_rows, frames)
        return
    for centroid in np.flatnonzero(np.diff(bounds)).tolist():
        group = slice(bounds[centroid], bounds[centroid + 1])
        rotation = np.asarray(rotations[centroid], np.float32)
        frames[pair_rows[group]] = x[pair_queries[group]] @ rotation - shifts[centroid]


def _as_matrix(x, what: str, dim: int | None = None) -> np.ndarray:
    """``x`` as a C-contiguous float32 matrix with ``dim`` columns and finite values."""
    x = np.asarray(x)
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
        expected = f"[n, {dim}]" if dim is not None else "[n, d]"
        raise InputError(f"LOPQ {what}: shape {x.shape}, expected {expected}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise InputError(f"LOPQ {what}: contains NaN or infinite values")
    return x



def _squared_distances(
    x: np.ndarray, centroids: np.ndarray, centroid_norms: np.ndarray, out: np.ndarray | None = None
) -> np.ndarray:
    """``[n, k]`` squared L2 distances, by matrix product (into ``out`` when given)."""
    dists = np.matmul(x, centroids.T, out=out)
    dists *= -2.0
    dists += centroid_norms
    dists += np.einsum("nd,nd->n", x, x)[:, None]
    return dists


def _nearest(x: np.ndarray, centroids: np.ndarray, centroid_norms: np.ndarray | None = None) -> np.ndarray:
    """Index of the nearest centroid of each row, in row blocks to bound memory."""
    if centroid_norms is None:
        centroid_norms = np.einsum("kd,kd->k", centroids, centroids)
    block = max(1, 2**24 // len(centroids))
    nearest = np.empty(len(x), np.int64)
    for start in range(0, len(x), block):
        # ||x||^2 does not change the argmin
        scores = centroid_norms - 2.0 * (x[start : start + block] @ centroids.T)
        nearest[start : start + block] = scores.argmin(axis=1)
    return nearest


def _rotate_grouped(rows: np.ndarray, groups: np.ndarray, rotations: np.ndarray) -> np.ndarray:
    """``rows[p] @ rotations[groups[p]]`` for every row: one matrix product per group."""
    if not len(rows):
        return np.empty(rows.shape, np.float32)
    order = np.argsort(groups, kind="stable")
    sorted_groups = groups[order]
    sorted_rows = rows[order]
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(sorted_groups)) + 1, [len(rows)]])
    rotated = np.empty(rows.shape, np.float32)
    for start, stop in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        rotation = np.asarray(rotations[sorted_groups[start]], np.float32)  # half precision ones widened
        np.matmul(sorted_rows[start:stop], rotation, out=rotated[start:stop])
    out = np.empty_like(rotated)
    out[order] = rotated
    return out


def _pca_rotation(covariances: np.ndarray, n_subspaces: int) -> np.ndarray:
    """Rotations (stacked like ``covariances``) whose columns are the eigenvectors
    in eigenvalue-allocation order, so ``residual @ R`` puts subspace ``s`` in
    columns ``s * d/n_subspaces ...``."""
    eigenvalues, eigenvectors = np.linalg.eigh(covariances)
    rotations = np.empty(covariances.shape, np.float32)
    for index in np.ndindex(covariances.shape[:-2]):
        permutation = allocate_eigenvalues(eigenvalues[index], n_subspaces)
        rotations[index] = eigenvectors[index][:, permutation]
    return rotations


def _groups(assignment: np.ndarray, n_centroids: int) -> tuple[np.ndarray, np.ndarray]:
    """``(order, bounds)``: the rows of centroid ``c`` are ``order[bounds[c]:bounds[c+1]]``."""
    counts = np.bincount(assignment, minlength=n_centroids)
    return np.argsort(assignment, kind="stable"), np.concatenate([[0], np.cumsum(counts)])


def _refine(centred, assignment, groups, local, rotations, codebooks, seed):
    """One round fitting local rotations and codebooks to each other, in place.

    The non-parametric OPQ step of Ge et al. (CVPR 2013), per centroid: with the
    codes fixed, the rotation that brings a centroid's centred residuals ``Z``
    closest to their decoded values ``Y`` is ``U V^T`` for the SVD ``Z^T Y = U S V^T``
    (orthogonal Procrustes); with the rotations fixed, a few k-means steps from the
    current codewords. The PCA frames with eigenvalue allocation start it; only
    the ``local`` centroids (those with frames of their own) are rotated anew;
    ``groups`` are the rows of each centroid (:func:`_groups`).
    """
    half_m, _, sub_dim = codebooks.shape
    rotated = _rotate_grouped(centred, assignment, rotations)
    decoded = np.empty_like(rotated)
    for s in range(half_m):
        block = np.ascontiguousarray(rotated[:, s * sub_dim : (s + 1) * sub_dim])
        decoded[:, s * sub_dim : (s + 1) * sub_dim] = codebooks[s][_nearest(block, codebooks[s])]
    order, bounds = groups
    for centroid in local.tolist():
        members = order[bounds[centroid] : bounds[centroid + 1]]
        correlation = centred[members].astype(np.float64).T @ decoded[members].astype(np.float64)
        left, _, right = np.linalg.svd(correlation)
        rotations[centroid] = (left @ right).astype(np.float32)
    rotated = _rotate_grouped(centred, assignment, rotations)
    for s in range(half_m):
        block = np.ascontiguousarray(rotated[:, s * sub_dim : (s + 1) * sub_dim])
        codebooks[s] = kmeans_centroids(block, codebooks.shape[1], iterations=_REFINE_KMEANS_ITERATIONS,
                                        seed=seed + s, start=codebooks[s])


def _local_frames(
    residuals: np.ndarray, groups: tuple[np.ndarray, np.ndarray], n_subspaces: int, min_points: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-centroid mean and rotation of the residuals of each centroid (``groups``,
    see :func:`_groups`), the global ones for centroids with fewer than
    ``min_points`` residuals, and the centroids that have frames of their own."""
    dim = residuals.shape[1]
    global_mean = residuals.mean(axis=0, dtype=np.float64)
    centred = residuals - global_mean.astype(np.float32)
    global_covariance = (centred.T @ centred).astype(np.float64) / len(residuals)
    del centred
    order, bounds = groups
    n_centroids = len(bounds) - 1
    means = np.tile(global_mean.astype(np.float32), (n_centroids, 1))
    rotations = np.tile(_pca_rotation(global_covariance, n_subspaces), (n_centroids, 1, 1))

    local = np.flatnonzero(np.diff(bounds) >= max(min_points, 1))
    for chunk in range(0, len(local), _FRAMES_AT_ONCE):
        centroids = local[chunk : chunk + _FRAMES_AT_ONCE]
        covariances = np.empty((len(centroids), dim, dim), np.float64)
        for slot, centroid in enumerate(centroids):
            members = residuals[order[bounds[centroid] : bounds[centroid + 1]]].astype(np.float64)
            mean = members.mean(axis=0)
            members -= mean
            covariances[slot] = members.T @ members / len(members)
            means[centroid] = mean
        rotations[centroids] = _pca_rotation(covariances, n_subspaces)
    return means, rotations, local


def _smallest(values: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``count`` smallest values of each row, sorted, and their column indices."""
    count = min(count, values.shape[1])
    if count < values.shape[1]:
        columns = np.argpartition(values, count - 1, axis=1)[:, :count]
    else:
        columns = np.broadcast_to(np.arange(values.shape[1]), values.shape)
    picked = np.take_along_axis(values, columns, 1)
    order = np.argsort(picked, axis=1, kind="stable")
    return np.take_along_axis(picked, order, 1), np.take_along_axis(columns, order, 1)


def _exact_distances(queries: np.ndarray, vectors: np.ndarray, ids: np.ndarray, metric: str) -> np.ndarray:
    """Exact squared L2 distances (``2 - 2 ip`` for "ip") of each query to its
    shortlist ``ids`` (``inf`` where the id is -1)."""
    if ids.size and ids.max() >= len(vectors):
        raise InputError(f"LOPQ rerank: id {ids.max()} but only {len(vectors)} vectors were given")
    shortlist = np.asarray(vectors[np.maximum(ids, 0)], dtype=np.float32)  # [nq, r, d]
    products = np.einsum("qrd,qd->qr", shortlist, queries)
    if metric == "ip":
        d2 = 2.0 - 2.0 * products
    else:
        d2 = np.einsum("qrd,qrd->qr", shortlist, shortlist) - 2.0 * products
        d2 += np.einsum("qd,qd->q", queries, queries)[:, None]
    return np.where(ids >= 0, d2, np.inf).astype(np.float32)
