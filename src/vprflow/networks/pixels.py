"""Network input from decoded pixels: resized to the input size and ImageNet-normalised.

``network_input`` gives, bit for bit, what ``to_input`` makes of ``resize_to``'s image
(OpenCV's area filter rounded to uint8, then ``(x - mean) / std`` in float32), as a
float32 HxWx3 array. Where OpenCV takes its general area path (a shrink that is not a
whole factor on both axes, as a JPEG decoded at reduced scale usually leaves), one
compiled pass does the resize, the rounding and the normalisation, without the uint8
image between them: about half the CPU time of the two steps (0.73-0.87 against 1.38-1.94
ms per paris5/ukbench56 photo into 320x240, ``benchmarks/bench_extract.py``), time the
decoding threads spend between forward passes.
Other shapes (enlarging, whole factors) go through OpenCV and a lookup table.

This module imports neither torch nor the network code: it runs in decoding threads and
loader processes.
"""

from __future__ import annotations

import math
from functools import lru_cache

import cv2
import numba
import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Every normalised value, by uint8 value and channel, computed as to_input computes it:
# (float32(v) - mean * 255) / (std * 255), each step in float32. A lookup is exact and
# spares a division per element.
_NORMALISED = (
    (np.arange(256, dtype=np.float32)[:, None] - np.array(IMAGENET_MEAN, np.float32) * np.float32(255.0))
    / (np.array(IMAGENET_STD, np.float32) * np.float32(255.0))
).reshape(-1)

# No fastmath: the sums must keep OpenCV's order and rounding (no reassociation, no fused
# multiply-add), or a rounding to uint8 lands on the other side now and then.
_JIT = {"nogil": True, "cache": True, "boundscheck": False}


def resize_to(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """The fixed network input size (area filter when shrinking, bilinear when enlarging)."""
    shrinking = rgb.shape[1] > width or rgb.shape[0] > height
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def normalised(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 RGB -> ImageNet-normalised float32, the same bits as ``to_input``."""
    out = np.empty(rgb.shape, np.float32)
    _look_up(np.ascontiguousarray(rgb).reshape(-1), _NORMALISED, out.reshape(-1))
    return out


def network_input(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """HxWx3 uint8 RGB -> ``height`` x ``width`` x 3 normalised float32 (see the module doc)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got {rgb.dtype} of shape {rgb.shape}")
    if not _general_area_path(rgb.shape[1], rgb.shape[0], width, height):
        return normalised(resize_to(rgb, width, height))
    columns, column_weights = _area_taps(rgb.shape[1], width, 3)
    rows, row_weights = _area_taps(rgb.shape[0], height, 1)
    out = np.empty((height, width, 3), np.float32)
    _area_normalised(
        np.ascontiguousarray(rgb), columns, column_weights, rows, row_weights, _NORMALISED, out
    )
    return out


def _general_area_path(source_width: int, source_height: int, width: int, height: int) -> bool:
    """Whether ``cv2.resize(..., INTER_AREA)`` takes its general path: no axis enlarged, and
    not a whole factor on both axes (that is its integer-averaging path)."""
    scale_x, scale_y = 1.0 / (width / source_width), 1.0 / (height / source_height)
    if scale_x < 1.0 or scale_y < 1.0:
        return False
    whole = abs(scale_x - round(scale_x)) < np.finfo(float).eps and abs(scale_y - round(scale_y)) < np.finfo(float).eps
    return not whole


@numba.njit(**_JIT)
def _look_up(flat, table, out):
    for pixel in range(flat.shape[0] // 3):
        for channel in range(3):
            out[pixel * 3 + channel] = table[flat[pixel * 3 + channel] * 3 + channel]


@lru_cache(maxsize=256)
def _area_taps(source_size: int, size: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's area weights along one axis: each output pixel averages the source pixels its
    cell covers, the partly covered ones at the share covered (weights in float32, as
    OpenCV stores them). As (taps x outputs*channels) flat element indices and weights,
    padded with weight 0 to the widest cell (adding +0.0 changes no sum)."""
    scale = 1.0 / (size / source_size)
    cells = []
    for out in range(size):
        start, end = out * scale, out * scale + scale
        width = min(scale, source_size - start)
        first, last = math.ceil(start), min(math.floor(end), source_size - 1)
        first = min(first, last)
        taps = []
        if first - start > 1e-3:
            taps.append((first - 1, (first - start) / width))
        taps += [(source, 1.0 / width) for source in range(first, last)]
        if end - last > 1e-3:
            taps.append((last, min(end - last, 1.0, width) / width))
        cells.append(taps)
    widest = max(map(len, cells))
    indices = np.zeros((widest, size * channels), np.int64)
    weights = np.zeros((widest, size * channels), np.float32)
    for out, taps in enumerate(cells):
        taps = taps + [(taps[-1][0], 0.0)] * (widest - len(taps))
        for k, (source, weight) in enumerate(taps):
            for channel in range(channels):
                indices[k, out * channels + channel] = source * channels + channel
                weights[k, out * channels + channel] = weight
    return indices, weights


@numba.njit(**_JIT)
def _horizontal(row, indices, weights, out):
    for e in range(out.shape[0]):
        out[e] = np.float32(row[indices[0, e]]) * weights[0, e]
    for k in range(1, indices.shape[0]):
        for e in range(out.shape[0]):
            out[e] = out[e] + np.float32(row[indices[k, e]]) * weights[k, e]


@numba.njit(**_JIT)
def _area_normalised(src, columns, column_weights, rows, row_weights, table, out):
    """OpenCV's order: each source row filtered along x, then the rows summed with their
    weights, rounded half to even and clipped to [0, 255]; then the normalised value from
    ``table`` (``_NORMALISED``)."""
    height, elements = out.shape[0], columns.shape[1]
    flat_src = src.reshape(src.shape[0], src.shape[1] * src.shape[2])
    flat_out = out.reshape(height, elements)
    filtered = np.empty((2, elements), np.float32)  # a source row shared by two output rows is filtered once
    held = np.array([-1, -1])
    total = np.empty(elements, np.float32)
    channel = np.empty(elements, np.int64)
    for e in range(elements):
        channel[e] = e % 3
    for y in range(height):
        for k in range(rows.shape[0]):
            weight = row_weights[k, y]
            if k > 0 and weight == 0.0:
                break
            source = rows[k, y]
            slot = source & 1
            if held[slot] != source:
                _horizontal(flat_src[source], columns, column_weights, filtered[slot])
                held[slot] = source
            if k == 0:
                for e in range(elements):
                    total[e] = weight * filtered[slot, e]
            else:
                for e in range(elements):
                    total[e] = total[e] + weight * filtered[slot, e]
        line = flat_out[y]
        for e in range(elements):
            value = int(min(max(np.rint(total[e]), np.float32(0.0)), np.float32(255.0)))
            line[e] = table[value * 3 + channel[e]]
