"""The frozen layers' output for every training image, computed once per training.

Only the last blocks are fine-tuned, so the frozen ones give the same output every epoch:
computing it once (float16, memory-mapped in the model folder) leaves each epoch only the
tuned blocks to run, and every image is decoded once. Augmented views of the training
images (``augment``) are cached beside the plain ones the same way. A rerun after a kill
reuses the file when it was made for the same images and settings.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from ..images import iter_batches
from ..logs import log, progress
from ..networks.compute import autocast, cpu_decoding_threads
from ..networks.network import RetrievalNet, to_input
from ..networks.pixels import resize_to
from ..networks.pooling import NetVLAD
from .augment import Augmentation


class TrunkCache:
    """The frozen layers' output: rows ``0 .. n-1`` are the plain images (in the order given),
    then ``views`` augmented copies of the first ``n_augmented`` (the training images)."""

    def __init__(self, array: np.ndarray, n_images: int | None = None, n_augmented: int = 0, views: int = 0):
        self.array = array
        self.n_images = len(array) if n_images is None else n_images
        self.n_augmented, self.views = n_augmented, views

    def __len__(self) -> int:
        return self.n_images

    def batch(self, rows: np.ndarray, device: torch.device) -> torch.Tensor:
        x = torch.from_numpy(np.asarray(self.array[np.asarray(rows)], dtype=np.float32))
        return x.to(device).contiguous(memory_format=torch.channels_last)

    def random_views(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Cache rows of ``images`` (plain rows), each replaced by one of its views (the plain
        one included) drawn uniformly; images without augmented views keep their plain row."""
        images = np.asarray(images)
        if not self.views:
            return images
        view = rng.integers(0, self.views + 1, size=images.shape)
        augmented = (view > 0) & (images < self.n_augmented)
        return np.where(augmented, self.n_images + (view - 1) * self.n_augmented + images, images)


def build_trunk_cache(
    frozen: nn.Module,
    paths: Sequence[str | Path],
    size: tuple[int, int],
    out_dir: Path,
    fingerprint: dict[str, Any],
    device: torch.device,
    bf16: bool,
    batch_size: int,
    workers: int | None,
    augmentation: Augmentation = Augmentation(),
    n_augmented: int = 0,
) -> TrunkCache:
    """The cache of ``paths`` (see :class:`TrunkCache`); the first ``n_augmented`` also get
    ``augmentation.views`` augmented copies each (``vprflow.train.augment``)."""
    path, record = out_dir / "trunk.npy", out_dir / "trunk.json"
    views = augmentation.views if n_augmented else 0
    layout = {"n_images": len(paths), "n_augmented": n_augmented if views else 0, "views": views}
    fingerprint = {**fingerprint, "paths": [str(p) for p in paths], "size": list(size), **layout,
                   "augmentation": asdict(augmentation) if views else None}
    if path.is_file() and record.is_file() and json.loads(record.read_text()) == fingerprint:
        log.info("frozen layers: reusing %s", path)
        return TrunkCache(np.load(path, mmap_mode="r"), **layout)
    record.unlink(missing_ok=True)
    partial = out_dir / "trunk.partial.npy"
    array = None
    n_rows = len(paths) + views * layout["n_augmented"]
    transform = functools.partial(resize_to, width=size[0], height=size[1])
    # On the CPU, decoded between forward passes by this process's threads, as extraction is
    # (a loader process beside the forward pass stalls its OpenMP team); the same pixels.
    batches = iter_batches(paths, transform, batch_size, workers, threads=cpu_decoding_threads(device))
    frozen.eval()
    for indices, images, errors in progress(
        batches, desc="frozen layers", total=-(-len(paths) // batch_size), unit="batch"
    ):
        for i, image, error in zip(indices, images, errors):
            if image is None:
                raise InputError(f"training image {paths[i]} cannot be decoded: {error}")
        rows, pixels = list(indices), list(images)
        for view in range(1, views + 1):
            for i, image in zip(indices, images):
                if i < n_augmented:
                    rows.append(len(paths) + (view - 1) * n_augmented + i)
                    pixels.append(augmentation.view(image, i, view))
        for start in range(0, len(rows), batch_size):
            with torch.inference_mode(), autocast(device, bf16):
                out = frozen(to_input(np.stack(pixels[start : start + batch_size]), device)).float().cpu().numpy()
            if np.abs(out).max() > np.finfo(np.float16).max:
                raise RuntimeError(
                    f"frozen-layer activations reach {np.abs(out).max():.3g}, beyond float16: "
                    "fine-tune more blocks (finetune_blocks) so the cache holds earlier activations"
                )
            if array is None:
                array = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16, shape=(n_rows, *out.shape[1:]))
            array[rows[start : start + batch_size]] = out
    array.flush()
    del array
    os.replace(partial, path)
    record.write_text(json.dumps(fingerprint))
    return TrunkCache(np.load(path, mmap_mode="r"), **layout)


def _batches(rows: np.ndarray, batch_size: int):
    for start in range(0, len(rows), batch_size):
        yield rows[start : start + batch_size]


def describe(
    network: RetrievalNet,
    tuned: nn.Module,
    trunk: TrunkCache,
    rows: np.ndarray,
    device: torch.device,
    bf16: bool,
    batch_size: int,
) -> np.ndarray:
    """Pooled, L2-normalised descriptors (before whitening) of trunk ``rows``."""
    out = np.zeros((len(rows), network.pooled_dim), np.float32)
    start = 0
    with torch.no_grad():
        for part in progress(
            _batches(rows, batch_size), desc="describe", total=-(-len(rows) // batch_size), unit="batch"
        ):
            with autocast(device, bf16):
                out[start : start + len(part)] = network.pool(tuned(trunk.batch(part, device))).cpu().numpy()
            start += len(part)
    return out


def local_descriptors(
    tuned: nn.Module,
    trunk: TrunkCache,
    rows: np.ndarray,
    per_image: int,
    rng: np.random.Generator,
    device: torch.device,
    bf16: bool,
    batch_size: int,
) -> np.ndarray:
    """Up to ``per_image`` random local descriptors (feature-map positions, L2-normalised as
    NetVLAD sees them) of each of ``rows``: the k-means sample for NetVLAD's centroids."""
    samples = []
    with torch.no_grad():
        for part in _batches(rows, batch_size):
            with autocast(device, bf16):
                maps = NetVLAD.local_descriptors(tuned(trunk.batch(part, device)).float())
            local = maps.flatten(2).transpose(1, 2).cpu().numpy()  # (B, H*W, C)
            for image in local:
                keep = rng.choice(len(image), size=min(per_image, len(image)), replace=False)
                samples.append(image[np.sort(keep)])
    return np.concatenate(samples).astype(np.float32)
