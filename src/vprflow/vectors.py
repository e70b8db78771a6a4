"""Vector maths shared by descriptors, search and re-ranking: L2-normalisation, and k-means
through faiss (VLAD vocabularies, NetVLAD centroids, LOPQ codebooks), on the GPU where faiss
has one (``vprflow.faiss_gpu``)."""

from __future__ import annotations

import faiss
import numpy as np

from .faiss_gpu import faiss_gpus


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Row-wise L2-normalised float32 copy; a zero row stays zero."""
    vectors = np.array(vectors, dtype=np.float32, ndmin=2)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def kmeans_centroids(
    samples: np.ndarray,
    k: int,
    *,
    iterations: int,
    seed: int,
    max_points_per_centroid: int = 256,
    start: np.ndarray | None = None,
) -> np.ndarray:
    """``[k, d]`` float32 centroids of ``samples`` (float32 ``[n, d]``), seeded; faiss
    trains on a sample of at most ``max_points_per_centroid * k`` of the rows,
    from the centroids ``start`` when given (else from ``k`` random samples)."""
    kmeans = faiss.Kmeans(
        samples.shape[1],
        k,
        niter=iterations,
        seed=seed,
        max_points_per_centroid=max_points_per_centroid,
        verbose=False,
        gpu=faiss_gpus(),  # 0: on the CPU
    )
    kmeans.train(samples, init_centroids=None if start is None else np.ascontiguousarray(start, np.float32))
    return kmeans.centroids
