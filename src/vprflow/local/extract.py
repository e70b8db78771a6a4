"""Extraction of local features for a shard: decoding (and whatever the descriptor does per
image) in DataLoader workers, with the descriptor's batch step in this process, or in
streams that each decode a batch and describe it (``Descriptor.decoding_threads``,
``images.map_batches``); each image's features appended to the shard folder as they come
(memory: a few batches)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from ..images import map_batches
from ..logs import log, progress
from .store import LocalFeatures, LocalFeatureWriter


class LocalDescriptor(Protocol):
    """What local extraction needs of a descriptor (``sift`` and ``delf`` have it)."""

    name: str
    dim: int
    VERIFICATION: dict

    def preprocess(self, rgb: np.ndarray) -> Any: ...

    def describe(self, items: list[Any]) -> list[LocalFeatures]: ...

    def decoding_threads(self) -> int: ...


def extract_local_features(descriptor: LocalDescriptor, paths: Sequence[str | Path], ids: Sequence[str],
                           out: str | Path, batch_size: int = 32, workers: int | None = None,
                           boxes=None) -> tuple[int, int]:
    """Write the local features of ``paths`` (by ``ids``) into the shard folder ``out``.

    An undecodable image is logged and left out (its pairs verify with 0 inliers).
    ``boxes``: optional crop per image (Revisited queries are their box). Returns
    (images written, keypoints written).
    """
    n_batches = -(-len(paths) // batch_size)
    info = {"descriptor": descriptor.name, "verification": descriptor.VERIFICATION}
    with LocalFeatureWriter(out, descriptor.dim, info) as writer:
        batches = map_batches(paths, descriptor.preprocess, descriptor.describe, batch_size, workers, boxes,
                              threads=descriptor.decoding_threads())
        for indices, items, errors, described in progress(batches, desc="extract local", total=n_batches,
                                                          unit="batch"):
            good = [k for k, item in enumerate(items) if item is not None]
            for k in sorted(set(range(len(items))) - set(good)):
                log.warning("skipped %s: %s", paths[indices[k]], errors[k])
            if not good:
                continue
            for k, features in zip(good, described):
                writer.add(ids[indices[k]], features)
        return len(writer.rows), writer.keypoints.rows
