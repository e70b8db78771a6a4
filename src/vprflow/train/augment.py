"""Training augmentation: random resized crops and colour jitter of network-sized images.

Views are drawn once, when the frozen layers' cache is built (``trunk``): every training
image gets ``views`` augmented copies beside its plain one, and each epoch's tuples pick
one of them per image at random. The frozen layers thus run once per view, not once per
epoch, and every view is reproducible from (seed, view, image) alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

ASPECT_RANGE = (3 / 4, 4 / 3)
"""Aspect ratios of a crop relative to the image's own (torchvision's RandomResizedCrop range)."""


@dataclass(frozen=True)
class Augmentation:
    """``views`` augmented copies per training image; a crop keeps at least ``min_area`` of
    the image; brightness, contrast and saturation each vary by a factor in 1 +- ``jitter``."""

    views: int = 0
    min_area: float = 0.6
    jitter: float = 0.3
    seed: int = 0

    def view(self, rgb: np.ndarray, image: int, view: int) -> np.ndarray:
        """Augmented copy number ``view`` (1-based) of image number ``image``, same size and dtype."""
        rng = np.random.default_rng([self.seed, view, image])
        return colour_jitter(random_resized_crop(rgb, self.min_area, rng), self.jitter, rng)


def random_resized_crop(rgb: np.ndarray, min_area: float, rng: np.random.Generator) -> np.ndarray:
    """A crop covering a random share in [min_area, 1] of the image, of an aspect ratio within
    ``ASPECT_RANGE`` of the image's, at a random place, resized back to the image's size."""
    height, width = rgb.shape[:2]
    area = rng.uniform(min_area, 1.0)
    aspect = np.exp(rng.uniform(*np.log(ASPECT_RANGE)))
    crop_w = int(round(min(width, width * np.sqrt(area * aspect))))
    crop_h = int(round(min(height, height * np.sqrt(area / aspect))))
    crop_w, crop_h = max(crop_w, 1), max(crop_h, 1)
    x0 = int(rng.integers(0, width - crop_w + 1))
    y0 = int(rng.integers(0, height - crop_h + 1))
    return cv2.resize(rgb[y0 : y0 + crop_h, x0 : x0 + crop_w], (width, height), interpolation=cv2.INTER_LINEAR)


def colour_jitter(rgb: np.ndarray, jitter: float, rng: np.random.Generator) -> np.ndarray:
    """Brightness (scale), contrast (around the mean grey) and saturation (around each
    pixel's grey) each by a random factor in [1 - jitter, 1 + jitter], in that order."""
    brightness, contrast, saturation = rng.uniform(1 - jitter, 1 + jitter, size=3)
    x = rgb.astype(np.float32) * brightness
    grey = x @ np.array([0.299, 0.587, 0.114], np.float32)
    x = (x - grey.mean()) * contrast + grey.mean()
    grey = (x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    x = (x - grey) * saturation + grey
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)
