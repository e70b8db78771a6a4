"""k-means through faiss: VLAD vocabularies, NetVLAD centroids and LOPQ codebooks."""

from __future__ import annotations

import faiss
import numpy as np


def kmeans_centroids(
    samples: np.ndarray, k: int, *, iterations: int, seed: int, max_points_per_centroid: int = 256
) -> np.ndarray:
    """``[k, d]`` float32 centroids of ``samples`` (float32 ``[n, d]``), seeded; faiss
    trains on a sample of at most ``max_points_per_centroid * k`` of the rows."""
    kmeans = faiss.Kmeans(
        samples.shape[1],
        k,
        niter=iterations,
        seed=seed,
        max_points_per_centroid=max_points_per_centroid,
        verbose=False,
    )
    kmeans.train(samples)
    return kmeans.centroids
