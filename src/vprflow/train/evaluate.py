"""Descriptors of a few images through the extraction path, and precision@k by label."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import faiss
import numpy as np
import pandas as pd

from ..descriptors import Descriptor
from ..errors import InputError
from ..images import iter_batches
from ..logs import progress


def encode_images(
    descriptor: Descriptor, paths: Sequence[str | Path], batch_size: int = 32, workers: int | None = None
) -> np.ndarray:
    """``descriptor``'s vectors of ``paths`` in memory, in order (for evaluation-sized sets;
    the pipeline streams through ``extract.extract_features``)."""
    parts = []
    batches = iter_batches(paths, descriptor.preprocess, batch_size, workers)
    for indices, images, errors in progress(batches, desc="encode", total=-(-len(paths) // batch_size), unit="batch"):
        for i, image, error in zip(indices, images, errors):
            if image is None:
                raise InputError(f"{paths[i]} cannot be decoded: {error}")
        parts.append(descriptor.encode(np.stack(images)))
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def precision_at_k(descriptors: np.ndarray, labels: pd.Series, k: int = 5) -> tuple[float, int]:
    """Leave-one-out precision@k: for each labelled image, the share of its k nearest other
    labelled images that carry its label. Returns (P@k, number of images averaged)."""
    known = labels.notna().to_numpy()
    vectors = np.ascontiguousarray(descriptors[known], dtype=np.float32)
    values = labels[known].astype(str).to_numpy()
    if len(values) < 2:
        return float("nan"), int(len(values))
    k = min(k, len(values) - 1)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    _, found = index.search(vectors, k + 1)
    hits = []
    for i, rows in enumerate(found):
        others = rows[(rows != i) & (rows >= 0)][:k]
        hits.append(np.mean(values[others] == values[i]))
    return float(np.mean(hits)), int(len(values))
