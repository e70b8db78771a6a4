"""Matching pictures: two photos side by side, their RANSAC inlier correspondences as lines,
the inlier count in the title (as DELF's ``match_images`` draws them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

HEIGHT = 240
TRUTH_COLOURS = {"positive": "#28aa28", "negative": "#d22828", "junk": "#969696"}


@dataclass(frozen=True)
class MatchPanel:
    """One pair to draw: the two images (RGB), the inlier positions in each (pixels of those
    images), and what the title says."""

    query: np.ndarray
    other: np.ndarray
    query_xy: np.ndarray
    other_xy: np.ndarray
    title: str
    truth: str = "negative"


def side_by_side(query: np.ndarray, other: np.ndarray, height: int = HEIGHT) -> tuple[np.ndarray, float, float, int]:
    """Both images at ``height`` pixels, the query on the left: (canvas, query factor, other
    factor, x offset of the other image)."""
    left, query_factor = _at_height(query, height)
    right, other_factor = _at_height(other, height)
    gap = np.full((height, 8, 3), 255, np.uint8)
    return np.hstack([left, gap, right]), query_factor, other_factor, left.shape[1] + gap.shape[1]


def _at_height(image: np.ndarray, height: int) -> tuple[np.ndarray, float]:
    factor = height / image.shape[0]
    size = (max(1, round(image.shape[1] * factor)), height)
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR), factor


def draw_matches(panels: list[MatchPanel], out: str | Path, title: str = "") -> None:
    """One row per pair; an empty list gives a picture that says so."""
    rows = max(1, len(panels))
    figure, axes = plt.subplots(rows, 1, figsize=(9, 2.9 * rows), squeeze=False)
    for axis in axes[:, 0]:
        axis.axis("off")
    if not panels:
        axes[0, 0].text(0.5, 0.5, "no query to draw", ha="center", va="center")
    for axis, panel in zip(axes[:, 0], panels):
        canvas, query_factor, other_factor, offset = side_by_side(panel.query, panel.other)
        axis.imshow(canvas)
        start = (panel.query_xy + 0.5) * query_factor - 0.5
        end = (panel.other_xy + 0.5) * other_factor - 0.5 + np.array([offset, 0])
        for (x0, y0), (x1, y1) in zip(start, end):
            axis.plot([x0, x1], [y0, y1], "-", color="#00e0ff", linewidth=0.7, alpha=0.8)
        axis.plot(start[:, 0], start[:, 1], ".", color="#ffd000", markersize=2)
        axis.plot(end[:, 0], end[:, 1], ".", color="#ffd000", markersize=2)
        axis.set_title(panel.title, fontsize=9, color=TRUTH_COLOURS.get(panel.truth, "black"))
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.35 / figure.get_figheight()) if title else None)
    figure.savefig(out, dpi=100)
    plt.close(figure)
