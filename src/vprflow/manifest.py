"""Manifest stage: one row per decodable image, with size and checksum; rejects beside it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from .images import decoded_size, iter_batches
from .logs import log, progress

MANIFEST_FRONT = ["image_id", "row", "path", "width", "height", "sha256"]


def image_id(path: str) -> str:
    """Stable id of an image: a hash of its path relative to the dataset root."""
    return hashlib.blake2b(path.encode("utf-8"), digest_size=8).hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_manifest_shard(root: str | Path, listing: pd.DataFrame, rows: range,
                         workers: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Decode every image of ``listing.iloc[rows]`` once; return (manifest, rejects).

    An image that does not decode is not fatal: it goes to the rejects table with the
    reason (empty file, truncated, not an image) and the others go on.
    """
    root = Path(root)
    part = listing.iloc[rows.start:rows.stop].copy()
    part.insert(0, "row", range(rows.start, rows.stop))
    part.insert(0, "image_id", [image_id(p) for p in part["path"]])
    paths = [root / p for p in part["path"]]
    shapes: list[tuple[int, int] | None] = [None] * len(part)
    reasons = [""] * len(part)
    batches = iter_batches(paths, batch_size=64, workers=workers, reader=decoded_size)
    for indices, sizes, errors in progress(batches, desc="decode", total=-(-len(paths) // 64), unit="batch"):
        for i, size, error in zip(indices, sizes, errors):
            shapes[i], reasons[i] = size, error
    ok = np.array([s is not None for s in shapes], dtype=bool)  # a mask even when the shard has no rows
    part["height"] = np.array([s[0] if s else 0 for s in shapes], dtype=np.int64)
    part["width"] = np.array([s[1] if s else 0 for s in shapes], dtype=np.int64)
    part["sha256"] = [_file_sha256(p) if good else "" for p, good in zip(paths, ok)]
    part["reason"] = reasons
    manifest = part[ok].drop(columns="reason")
    manifest = manifest[MANIFEST_FRONT + [c for c in manifest.columns if c not in MANIFEST_FRONT]]
    rejects = part[~ok][["image_id", "row", "path", "reason"]]
    for path, reason in zip(rejects["path"], rejects["reason"]):
        log.warning("rejected %s: %s", path, reason)
    log.info("shard rows %d-%d: %d images kept, %d rejected", rows.start, rows.stop - 1,
             len(manifest), len(rejects))
    return manifest.reset_index(drop=True), rejects.reset_index(drop=True)
