"""Pictures for people: recall curves and retrieval grids (with a sidecar of what was drawn)."""

from __future__ import annotations

from pathlib import Path

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .images import DecodeError, read_rgb  # noqa: E402
from .tables import POSITIVE_LABELS  # noqa: E402

FRAME_COLOURS = {"positive": (40, 170, 40), "negative": (210, 40, 40), "junk": (150, 150, 150),
                 "query": (40, 90, 220)}


def plot_recall_curves(curves: dict[str, np.ndarray], out: str | Path, title: str) -> None:
    """One line per ranking: R@N for N = 1..K (a ranking without evaluated queries says so)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, curve in curves.items():
        ax.plot(np.arange(1, len(curve) + 1), curve, label=label)
    ax.set(xlabel="N", ylabel="Recall@N", title=title, ylim=(0, 1.01))
    if any(len(curve) for curve in curves.values()):
        ax.set_xscale("log")
    else:
        ax.text(0.5, 0.5, "no query evaluated", ha="center", va="center", transform=ax.transAxes)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def grid_sample(neighbours: pd.DataFrame, ground_truth: pd.DataFrame, n_queries: int, k: int,
                seed: int) -> pd.DataFrame:
    """The rows a retrieval grid draws: a seeded sample of queries and their top k, with truth.

    Columns ``query_id``, ``rank``, ``db_id``, ``truth`` (positive | junk | negative).
    """
    queries = pd.unique(neighbours["query_id"])
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(queries, size=min(n_queries, len(queries)), replace=False)) if len(queries) else []
    rows = neighbours[neighbours["query_id"].isin(chosen) & (neighbours["rank"] < k)]
    rows = rows.sort_values(["query_id", "rank"])[["query_id", "rank", "db_id"]]
    labels = ground_truth.set_index(["query_id", "db_id"])["label"]
    found = labels.reindex(pd.MultiIndex.from_frame(rows[["query_id", "db_id"]])).to_numpy()
    rows["truth"] = np.where(pd.Series(found).isin(POSITIVE_LABELS), "positive",
                             np.where(pd.Series(found) == "junk", "junk", "negative"))
    return rows.reset_index(drop=True)


def _tile(path: Path, size: tuple[int, int], colour: tuple[int, int, int]) -> np.ndarray:
    width, height = size
    try:
        image = cv2.resize(read_rgb(path), (width - 8, height - 8), interpolation=cv2.INTER_AREA)
    except DecodeError:
        image = np.full((height - 8, width - 8, 3), 255, np.uint8)
    return cv2.copyMakeBorder(image, 4, 4, 4, 4, cv2.BORDER_CONSTANT, value=colour)


def draw_grid(sample: pd.DataFrame, paths: dict[str, Path], out: str | Path, tile=(160, 120)) -> None:
    """Each row: the query (blue frame), then its results framed green (positive), red or grey (junk)."""
    rows = []
    k = int(sample["rank"].max()) + 1 if len(sample) else 1
    for query_id, group in sample.groupby("query_id", sort=True):
        tiles = [_tile(paths[query_id], tile, FRAME_COLOURS["query"])]
        tiles += [_tile(paths[d], tile, FRAME_COLOURS[t]) for d, t in zip(group["db_id"], group["truth"])]
        tiles += [np.full((tile[1], tile[0], 3), 255, np.uint8)] * (k + 1 - len(tiles))
        rows.append(np.hstack(tiles))
    canvas = np.vstack(rows) if rows else np.full((tile[1], tile[0], 3), 255, np.uint8)
    cv2.imwrite(str(out), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))


def note_figure(text: str, out: str | Path) -> None:
    """A figure that says why there is no curve (a model fitted without training epochs)."""
    fig, ax = plt.subplots(figsize=(6, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
