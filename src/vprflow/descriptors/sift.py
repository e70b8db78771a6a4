"""SIFT keypoints with RootSIFT descriptors: the local features of RootSIFT-VLAD and of
spatial verification.

RootSIFT (Arandjelovic and Zisserman, 2012): L1-normalise each SIFT descriptor, then take
the square root, so that comparing RootSIFT by Euclidean distance is comparing SIFT by
the Hellinger kernel.
"""

from __future__ import annotations

import cv2
import numpy as np

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
