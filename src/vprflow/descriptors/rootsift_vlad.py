"""RootSIFT + VLAD: the classic hand-crafted global descriptor, no pretrained weights.

* SIFT (OpenCV) on the grey image, at most ``max_side`` pixels on its long side;
* RootSIFT (Arandjelovic and Zisserman, 2012): L1-normalise, square root -- comparing
  RootSIFT by Euclidean distance is comparing SIFT by the Hellinger kernel;
* a vocabulary of ``vocabulary`` visual words by faiss k-means on RootSIFT of training
  images (this descriptor's "training");
* VLAD (Jegou et al., 2010): per word, the sum of residuals of the descriptors assigned to
  it; then power-normalisation (signed x^power), intra-normalisation (L2 per word,
  Arandjelovic and Zisserman, 2013) and a final L2.

The whole chain runs in ``preprocess``, i.e. in the DataLoader workers, in parallel.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from ..clustering import kmeans_centroids
from ..errors import InputError
from ..images import iter_batches
from ..logs import log, progress
from . import Descriptor, l2_normalise

SIFT_DIM = 128
KMEANS_ITERATIONS = 25


def rootsift(rgb: np.ndarray, max_side: int, max_keypoints: int) -> np.ndarray:
    """RootSIFT descriptors (n, 128) of an RGB image; (0, 128) when it has no keypoint."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    scale = max_side / max(grey.shape)
    if scale < 1:
        grey = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    _, sift = cv2.SIFT_create(nfeatures=max_keypoints).detectAndCompute(grey, None)
    if sift is None:
        return np.zeros((0, SIFT_DIM), np.float32)
    sift = sift / np.maximum(np.abs(sift).sum(1, keepdims=True), 1e-12)
    return np.sqrt(sift).astype(np.float32)


def vlad(descriptors: np.ndarray, vocabulary: np.ndarray, power: float) -> np.ndarray:
    """Power- and intra-normalised VLAD, flattened (K * 128), L2-normalised (zeros if no descriptor)."""
    words = len(vocabulary)
    if not len(descriptors):
        return np.zeros(words * SIFT_DIM, np.float32)
    squared = (descriptors**2).sum(1, keepdims=True) - 2 * descriptors @ vocabulary.T + (vocabulary**2).sum(1)
    nearest = squared.argmin(1)
    residuals = np.zeros((words, SIFT_DIM), np.float64)
    np.add.at(residuals, nearest, descriptors - vocabulary[nearest])
    residuals = np.sign(residuals) * np.abs(residuals) ** power
    residuals /= np.maximum(np.linalg.norm(residuals, axis=1, keepdims=True), 1e-12)
    flat = residuals.reshape(-1)
    return (flat / max(np.linalg.norm(flat), 1e-12)).astype(np.float32)


class _RootSIFTOf:
    """Picklable transform for the vocabulary's DataLoader workers."""

    def __init__(self, max_side: int, max_keypoints: int):
        self.max_side, self.max_keypoints = max_side, max_keypoints

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        return rootsift(rgb, self.max_side, self.max_keypoints)


class RootSIFTVLAD(Descriptor):
    name = "rootsift_vlad"
    trainable = True  # its vocabulary is learned on the train split
    defaults = {
        "vocabulary": 64,
        "max_side": 640,
        "max_keypoints": 1000,
        "power": 0.5,
        "vocabulary_images": 500,
        "seed": 0,
    }

    @classmethod
    def check(cls, settings: dict[str, Any]) -> None:
        for key in ("vocabulary", "max_side", "max_keypoints", "vocabulary_images"):
            value = settings[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"{key}: must be an integer >= 1, got {value!r}")
        if not isinstance(settings["power"], (int, float)) or not 0 < settings["power"] <= 1:
            raise InputError(f"power: must be in (0, 1], got {settings['power']!r}")

    def __init__(self, settings: dict[str, Any], model_dir: Path | None = None):
        super().__init__(settings, model_dir)
        self.check(self.settings)
        path = Path(model_dir) / "vocabulary.npy" if model_dir else None
        if path is None or not path.is_file():
            raise InputError(
                f"descriptor rootsift_vlad needs its vocabulary: no vocabulary.npy in {model_dir} "
                "(the train rule makes it)"
            )
        self.vocabulary = np.load(path)
        if len(self.vocabulary) != self.settings["vocabulary"]:
            raise InputError(
                f"vocabulary: {self.settings['vocabulary']} words asked, but {path} has "
                f"{len(self.vocabulary)}; retrain"
            )

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        local = rootsift(rgb, int(self.settings["max_side"]), int(self.settings["max_keypoints"]))
        return vlad(local, self.vocabulary, float(self.settings["power"]))

    def encode(self, batch: np.ndarray) -> np.ndarray:
        return l2_normalise(batch)  # an image without keypoints stays a zero vector

    @classmethod
    def train(cls, settings: dict[str, Any], images: pd.DataFrame, out_dir: Path, workers: int | None = None) -> None:
        started = time.time()
        from ..train import write_record

        settings = {**cls.defaults, **settings}
        cls.check(settings)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "trained.json").unlink(missing_ok=True)
        train = images[images["split"] == "train"]
        if train.empty:
            raise InputError(
                "split.fractions.train: the train split is empty, but rootsift_vlad learns its " "vocabulary there"
            )
        rng = np.random.default_rng(int(settings["seed"]))
        chosen = np.sort(
            rng.choice(len(train), size=min(int(settings["vocabulary_images"]), len(train)), replace=False)
        )
        paths = list(train["abs_path"].iloc[chosen])
        transform = _RootSIFTOf(int(settings["max_side"]), int(settings["max_keypoints"]))
        batches = iter_batches(paths, transform, batch_size=16, workers=workers)
        local = [
            d
            for _, part, _ in progress(batches, desc="RootSIFT", total=-(-len(paths) // 16), unit="batch")
            for d in part
            if d is not None
        ]
        samples = np.concatenate(local) if local else np.zeros((0, SIFT_DIM), np.float32)
        words = int(settings["vocabulary"])
        if len(samples) < words:
            raise InputError(
                f"vocabulary: {words} words need at least as many RootSIFT descriptors; "
                f"{len(paths)} training images gave {len(samples)}"
            )
        vocabulary = kmeans_centroids(
            samples, words, iterations=KMEANS_ITERATIONS, seed=int(settings["seed"]), max_points_per_centroid=512
        )
        np.save(out_dir / "vocabulary.npy", vocabulary)
        record = {
            "model": out_dir.name,
            "descriptor": cls.name,
            "n_images": len(paths),
            "n_descriptors": int(len(samples)),
            "out_dim": words * SIFT_DIM,
            "seconds": round(time.time() - started, 1),
            "settings": settings,
        }
        write_record(out_dir, record)
        log.info("rootsift_vlad: %d-word vocabulary from %d descriptors of %d images", words, len(samples), len(paths))
