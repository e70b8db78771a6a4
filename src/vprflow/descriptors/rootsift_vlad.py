"""RootSIFT + VLAD: the classic hand-crafted global descriptor, no pretrained weights.

* RootSIFT of OpenCV SIFT keypoints (``sift``), at most ``max_side`` pixels on the long side;
* a vocabulary of ``vocabulary`` visual words by faiss k-means on RootSIFT of training
  images, or of the database images (``fit_on``, see ``vprflow.train.unsupervised``): this
  descriptor's "training";
* VLAD (Jegou et al., 2010): per word, the sum of residuals of the descriptors assigned to
  it; then power-normalisation (signed x^power), intra-normalisation (L2 per word,
  Arandjelovic and Zisserman, 2013) and a final L2.

The whole chain runs in ``preprocess``, i.e. in the DataLoader workers, in parallel.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError, SettingError
from ..images import iter_batches
from ..logs import log, progress
from ..registry import one_of, whole_number
from ..train import MODEL_FILE
from ..train.unsupervised import FIT_ON, fitting_images
from ..vectors import kmeans_centroids, l2_normalise
from . import Descriptor
from .sift import SIFT_DIM, rootsift_features

KMEANS_ITERATIONS = 25


def rootsift(rgb: np.ndarray, max_side: int, max_keypoints: int) -> np.ndarray:
    """RootSIFT descriptors (n, 128) of an RGB image; (0, 128) when it has no keypoint."""
    return rootsift_features(rgb, max_side, max_keypoints)[1]


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


def save_vocabulary(path: Path, vocabulary: np.ndarray) -> None:
    import torch

    torch.save({"vocabulary": torch.from_numpy(vocabulary)}, path)


def load_vocabulary(path: Path) -> np.ndarray:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)["vocabulary"].numpy()


class RootSIFTVLAD(Descriptor):
    name = "rootsift_vlad"
    trainable = True  # its vocabulary is learned by the train rule
    DEFAULTS = {
        "vocabulary": 64,
        "max_side": 640,
        "max_keypoints": 1000,
        "power": 0.5,
        "vocabulary_images": 500,
        "fit_on": "auto",
        "seed": 0,
    }

    @staticmethod
    def check(settings: dict[str, Any]) -> None:
        for key in ("vocabulary", "max_side", "max_keypoints", "vocabulary_images"):
            whole_number(settings, key)
        whole_number(settings, "seed", minimum=0)
        if not isinstance(settings["power"], (int, float)) or not 0 < settings["power"] <= 1:
            raise SettingError("power", f"must be in (0, 1], got {settings['power']!r}")
        one_of(settings, "fit_on", FIT_ON)

    def __init__(self, settings: dict[str, Any], model_dir: Path | None = None):
        super().__init__(settings, model_dir)
        self.check(self.settings)
        path = Path(model_dir) / MODEL_FILE if model_dir else None
        if path is None or not path.is_file():
            raise InputError(
                f"descriptor rootsift_vlad needs its vocabulary: no {MODEL_FILE} in {model_dir} (the train rule makes it)"
            )
        self.vocabulary = load_vocabulary(path)
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
    def train(cls, settings: dict[str, Any], images: pd.DataFrame, model_dir: Path,
              workers: int | None = None) -> dict[str, Any]:
        settings = {**cls.DEFAULTS, **settings}
        cls.check(settings)
        fitting, fit_on = fitting_images(images, settings["fit_on"], "rootsift_vlad's vocabulary")
        rng = np.random.default_rng(int(settings["seed"]))
        chosen = np.sort(
            rng.choice(len(fitting), size=min(int(settings["vocabulary_images"]), len(fitting)), replace=False)
        )
        paths = list(fitting["abs_path"].iloc[chosen])
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
        save_vocabulary(Path(model_dir) / MODEL_FILE, vocabulary)
        log.info("rootsift_vlad: %d-word vocabulary from %d descriptors of %d images", words, len(samples), len(paths))
        return {"fit_on": fit_on, "n_images": len(paths), "n_descriptors": int(len(samples)), "out_dim": words * SIFT_DIM}
