"""LOPQ over an IVF coarse quantizer: the paper's other variant.

Kalantidis & Avrithis (CVPR 2014) pair local optimisation with either coarse
quantizer; here it is the inverted file of IVFADC (Jégou et al.): one k-means
codebook of ``coarse_k`` centroids over whole vectors, one cell per centroid.
Each cell has the mean and rotation of its residuals (PCA with eigenvalue
allocation, refined against the codebooks as in the multi-index, see
``index.fit_local_quantizer``), and the rotated residuals are product-quantized
with ``m`` subquantizers shared by all cells.

Against the multi-index, the coarse quantizer is slower to train and query (a
distance to each of ``coarse_k`` full-dimensional centroids instead of ``2 *
sqrt(cells)`` half-dimensional ones) but leaves less of a vector's energy to the
codes at a million vectors, where two half codebooks of a few hundred centroids
cannot follow the data closely. A query visits its nearest cells until they hold
``candidates`` vectors, is rotated into each cell's frame (one ``d x d`` product
per pair, the pairs of a cell done together so its rotation is read once per
batch) and scored against the decoded residuals.
"""

from __future__ import annotations

import numpy as np

from ...errors import InputError

from . import REFINEMENTS, kernels
from .index import (
    _MAX_BATCH,
    InvertedCodes,
    _check_shapes,
    _check_training,
    _local_codes,
    _nearest,
    _training_sample,
    fit_local_quantizer,
    rotate_pairs,
)

FORMAT_TAG = "vprflow-lopq-ivf"
# k-means points per coarse centroid: the IVF codebook has thousands of centroids of the
# whole dimension, so faiss' default of 256 would make training the slowest part of a build
_COARSE_POINTS_PER_CENTROID = 64


class IVFLOPQIndex(InvertedCodes):
    """LOPQ over an inverted file; the same interface as :class:`index.LOPQIndex`
    (:meth:`train`, :meth:`add`, :meth:`nearest`, :meth:`save`, :meth:`load`)."""

    FORMAT_TAG = FORMAT_TAG
    MODEL_ARRAYS = ("centroids", "local_means", "rotations", "codebooks")

    def __init__(self, centroids: np.ndarray, local_means: np.ndarray, rotations: np.ndarray, codebooks: np.ndarray):
        """Wrap trained arrays; shapes are ``[K, d]``, ``[K, d]``, ``[K, d, d]`` and
        ``[m, subquantizer_k, d/m]``."""
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.local_means = np.ascontiguousarray(local_means, dtype=np.float32)
        # Half precision: a query visits cells whose rotations are rarely in cache, so reading
        # a d x d rotation is what a cell costs beyond its codes; entries within 2**-11 of
        # the trained ones, and the same rounded rotation encodes and searches.
        self.rotations = np.ascontiguousarray(rotations, dtype=np.float16)
        self.codebooks = np.ascontiguousarray(codebooks, dtype=np.float32)
        self.coarse_k, self.dim = self.centroids.shape
        self.m, self.subquantizer_k, self.sub_dim = self.codebooks.shape
        _check_shapes(self, {
            "centroids": (self.coarse_k, self.dim),
            "local_means": (self.coarse_k, self.dim),
            "rotations": (self.coarse_k, self.dim, self.dim),
            "codebooks": (self.m, self.subquantizer_k, self.dim // self.m),
        })
        self.n_cells = self.coarse_k
        self._centroid_norms = np.einsum("kd,kd->k", self.centroids, self.centroids)
        self._codeword_norms = np.einsum("skd,skd->sk", self.codebooks, self.codebooks)
        self._codewords = self.codebooks.reshape(self.m * self.subquantizer_k, self.sub_dim)
        # A query q lands in cell c's rotated frame as q @ R_c - shift_c.
        self._shifts = _rotate_each(self.centroids + self.local_means, self.rotations)
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
    ) -> "IVFLOPQIndex":
        """Learn an empty index from ``x`` (float32 ``[n, d]``), ``d`` divisible by ``m``.

        ``train_size`` subsamples ``x`` (seeded); ``min_local_points`` (default ``d``,
        enough for a full-rank covariance) is the number of training residuals a cell
        needs for its own mean and rotation, the others use the global ones.
        """
        x = _training_sample(x, train_size, seed)
        n, d = x.shape
        if m < 1:
            raise InputError(f"LOPQ m={m}: must be >= 1")
        _check_training(n, d, m, coarse_k, subquantizer_k, refinements)
        arrays = fit_local_quantizer(
            x, coarse_k, m, subquantizer_k, seeds=(seed, seed + 1, seed + 1, m),
            min_local_points=d if min_local_points is None else min_local_points,
            kmeans_iterations=kmeans_iterations, refinements=refinements,
            coarse_points_per_centroid=_COARSE_POINTS_PER_CENTROID,
        )
        return cls(*arrays)

    def batch_size(self, candidates: int) -> int:
        """As many queries as allowed: a cell's ``d x d`` rotation is read once per batch
        for all its queries, and a query's frames take only ``d`` floats per cell."""
        return _MAX_BATCH

    def _encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cells and uint8 codes of a batch of vectors."""
        cells = _nearest(x, self.centroids, self._centroid_norms)
        codes = _local_codes(x, cells, self.centroids, self.local_means, self.rotations, self.codebooks,
                             self._codeword_norms)
        return cells, codes

    def _shortlist(self, queries, candidates, length):
        """The nearest cells, the queries in their frames, and the scan."""
        scratch = kernels.SCRATCH
        cells, taken = kernels.select_lists(queries, self.centroids, self._centroid_norms, self._cell_sizes, candidates)
        first_rows, bounds, pair_queries, pair_rows = kernels.group_pairs(cells, taken, self.coarse_k)
        sized = kernels.ivf_kernels(self.m, self.sub_dim, self.dim)
        frames = scratch.array("frames", (len(pair_rows), self.dim), np.float32)
        rotate_pairs(queries, self.rotations, self._shifts, bounds, pair_queries, pair_rows, frames, sized.rotate)
        most = candidates + self._largest_cell  # cells are taken while they hold fewer than the budget
        work = [scratch.array("positions_of", (most,), np.int64), scratch.array("distances", (most,), np.float32)]
        return sized.scan(cells, taken, first_rows, frames, self._cell_bounds, self._codes, self._codewords,
                          length, *work)


def _rotate_each(rows: np.ndarray, rotations: np.ndarray, at_once: int = 256) -> np.ndarray:
    """``rows[c] @ rotations[c]`` for every c, in float32, ``at_once`` rotations widened at a time."""
    out = np.empty(rows.shape, np.float32)
    for start in range(0, len(rows), at_once):
        part = slice(start, start + at_once)
        out[part] = np.einsum("kd,kde->ke", rows[part], rotations[part].astype(np.float32))
    return out
