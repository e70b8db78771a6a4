"""The tiny-image baseline: a small, zero-mean, unit-norm thumbnail.

It needs no weights and no training, and it is what it says: it matches images whose
overall layout of colours is alike (Torralba et al.'s "80 million tiny images").
It is the floor the learned descriptors must beat.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..errors import SettingError
from ..registry import whole_number
from ..vectors import l2_normalise
from . import Descriptor


class TinyImage(Descriptor):
    name = "tiny_image"
    DEFAULTS = {"width": 32, "height": 24, "color": True}

    @staticmethod
    def check(settings):
        whole_number(settings, "width")
        whole_number(settings, "height")
        if not isinstance(settings["color"], bool):
            raise SettingError("color", f"must be true or false, got {settings['color']!r}")

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        size = (int(self.settings["width"]), int(self.settings["height"]))
        small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA).astype(np.float32)
        if not self.settings["color"]:
            small = small.mean(axis=2, keepdims=True)
        return small

    def encode(self, batch: np.ndarray) -> np.ndarray:
        flat = batch.reshape(len(batch), -1)
        flat = flat - flat.mean(axis=1, keepdims=True)  # invariant to overall brightness
        return l2_normalise(flat)
