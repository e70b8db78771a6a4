"""SIFT keypoints with RootSIFT descriptors: the local features of RootSIFT-VLAD, of
spatial verification, and the ``sift`` local-feature descriptor.

RootSIFT (Arandjelovic and Zisserman, 2012): L1-normalise each SIFT descriptor, then take
the square root, so that comparing RootSIFT by Euclidean distance is comparing SIFT by
the Hellinger kernel.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from ..errors import SettingError
from ..local.store import LocalFeatures
from ..registry import whole_number
from . import Descriptor

SIFT_DIM = 128


def rootsift_features(rgb: np.ndarray, max_side: int, max_keypoints: int) -> tuple[np.ndarray, np.ndarray]:
    """Keypoint positions (n, 2; pixels of the image shrunk to at most ``max_side``) and
    RootSIFT descriptors (n, 128) of an RGB image; (0, 2) and (0, 128) when it has none."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    scale = max_side / max(grey.shape)
    if scale < 1:
        grey = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    keypoints, sift = cv2.SIFT_create(nfeatures=max_keypoints).detectAndCompute(grey, None)
    if sift is None or not len(keypoints):
        return np.zeros((0, 2), np.float32), np.zeros((0, SIFT_DIM), np.float32)
    sift = sift / np.maximum(np.abs(sift).sum(1, keepdims=True), 1e-12)
    return cv2.KeyPoint_convert(keypoints).astype(np.float32), np.sqrt(sift).astype(np.float32)


def detection_scale(width: int, height: int, max_side: int, min_side: int) -> float:
    """The factor an image is resized by before SIFT detection: down to ``max_side`` pixels
    on its long side; or, below ``min_side`` (0: never), up by the smallest power of two that
    reaches it (at most to ``max_side``); else 1. Whole factors keep the pixel grid: on
    corridor's 160 px frames and the demo's 192 px ones, 2x verified better than 1.6x or 2.4x."""
    longest = max(width, height)
    if longest > max_side:
        return max_side / longest
    if longest < min_side:
        return min(2.0 ** math.ceil(math.log2(min_side / longest)), max_side / longest)
    return 1.0


def check_sides(settings: dict[str, Any]) -> None:
    """``max_side`` and ``min_side`` of :func:`detection_scale`, named when wrong."""
    whole_number(settings, "max_side")
    whole_number(settings, "min_side", minimum=0)
    if settings["min_side"] > settings["max_side"]:
        raise SettingError("min_side", f"must be at most max_side ({settings['max_side']}), got {settings['min_side']}")


def sift_local_features(rgb: np.ndarray, max_side: int, max_keypoints: int, root: bool = True,
                        min_side: int = 0) -> LocalFeatures:
    """SIFT keypoints of an RGB image as local features: positions in the image's own pixels
    (found with the long side shrunk to ``max_side`` or enlarged to ``min_side``,
    :func:`detection_scale`), the keypoint size as scale, the detector response as attention,
    and RootSIFT (or L2-normalised SIFT) descriptors."""
    height, width = rgb.shape[:2]
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    factor = detection_scale(width, height, max_side, min_side)
    if factor != 1:
        grey = cv2.resize(grey, (max(1, round(width * factor)), max(1, round(height * factor))),
                          interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC)
    keypoints, sift = cv2.SIFT_create(nfeatures=max_keypoints).detectAndCompute(grey, None)
    if sift is None or not len(keypoints):
        return LocalFeatures.empty(SIFT_DIM, (width, height))
    if root:
        sift = np.sqrt(sift / np.maximum(np.abs(sift).sum(1, keepdims=True), 1e-12))  # unit L2 norm already
    else:
        sift = sift / np.maximum(np.linalg.norm(sift, axis=1, keepdims=True), 1e-12)
    resized = np.array(grey.shape[::-1], np.float32)
    xy = (cv2.KeyPoint_convert(keypoints) + 0.5) * (np.array([width, height], np.float32) / resized) - 0.5
    size = np.array([k.size for k in keypoints], np.float32) / factor
    response = np.array([k.response for k in keypoints], np.float32)
    return LocalFeatures(xy.astype(np.float32), size, response, sift.astype(np.float32), (width, height))


class SIFTFeatures(Descriptor):
    """``descriptor: sift``: SIFT keypoints with RootSIFT descriptors as local features, for
    geometric verification (``reranks.<name>.method: local``); no training, no weights."""

    name = "sift"
    local = True
    DEFAULTS = {"max_side": 640, "min_side": 320, "max_keypoints": 2000, "root": True}
    VERIFICATION = {"matching": "ratio", "min_inliers": 7}  # measured: benchmarks/sweep_verification.py
    dim = SIFT_DIM

    @staticmethod
    def check(settings: dict[str, Any]) -> None:
        check_sides(settings)
        whole_number(settings, "max_keypoints")
        if not isinstance(settings["root"], bool):
            raise SettingError("root", f"must be true (RootSIFT) or false (SIFT), got {settings['root']!r}")

    def preprocess(self, rgb: np.ndarray) -> LocalFeatures:
        """The whole extraction, in the DataLoader workers."""
        return sift_local_features(rgb, int(self.settings["max_side"]), int(self.settings["max_keypoints"]),
                                   self.settings["root"], int(self.settings["min_side"]))

    def describe(self, items: list[LocalFeatures]) -> list[LocalFeatures]:
        return items
