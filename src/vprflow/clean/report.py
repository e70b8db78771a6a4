"""What the cleaning did, for a person to check: a contact sheet and precision/recall."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from ..images import DecodeError, read_rgb

# Planted truth columns (the demo world writes them) and the detector reason they score.
TRUTH_COLUMNS = {"grayscale": "truth_bw", "collage": "truth_collage"}
REPORT_COLUMNS = ["detector", "truth", "precision", "recall", "n_truth", "n_dropped"]

TILE_W, TILE_H, GAP, CAPTION_H, HEADER_H, SHEET_COLUMNS = 128, 96, 4, 14, 30, 8
FONT = cv2.FONT_HERSHEY_SIMPLEX


def _thumbnail(path: Path) -> np.ndarray:
    tile = np.full((TILE_H, TILE_W, 3), 255, np.uint8)
    try:
        rgb = read_rgb(path)
    except DecodeError as error:
        cv2.putText(tile, str(error)[:20], (4, TILE_H // 2), FONT, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
        return tile
    scale = min((TILE_W - GAP) / rgb.shape[1], (TILE_H - GAP) / rgb.shape[0])
    w, h = max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale))
    y, x = (TILE_H - h) // 2, (TILE_W - w) // 2
    tile[y:y + h, x:x + w] = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
    return tile


def _band(text: str, height: int, scale: float) -> np.ndarray:
    band = np.full((height, SHEET_COLUMNS * TILE_W, 3), 255, np.uint8)
    cv2.putText(band, text, (4, height - 6 if height > 20 else height - 3), FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return band


def contact_sheet(dropped: pd.DataFrame, root: str | Path, out: str | Path, per_reason: int) -> None:
    """PNG of dropped images, one block per ``kind`` (most frequent first), ``per_reason`` at most each.

    ``dropped`` has ``path`` (relative to ``root``) and ``kind``; each thumbnail is captioned
    with its file name.
    """
    blocks = []
    for kind, group in sorted(dropped.groupby("kind"), key=lambda item: (-len(item[1]), item[0])):
        shown = group.sort_values("path").head(per_reason)
        more = f", first {len(shown)} shown" if len(group) > len(shown) else ""
        blocks.append(_band(f"{kind}: {len(group)} dropped{more}", HEADER_H, 0.6))
        cells = []
        for path in shown["path"]:
            caption = _band(Path(path).name[:20], CAPTION_H, 0.35)[:, :TILE_W]
            cells.append(np.vstack([_thumbnail(Path(root) / path), caption]))
        cells += [np.full_like(cells[0], 255)] * (-len(cells) % SHEET_COLUMNS)
        for start in range(0, len(cells), SHEET_COLUMNS):
            blocks.append(np.hstack(cells[start:start + SHEET_COLUMNS]))
    if not blocks:
        blocks.append(_band("nothing dropped", HEADER_H, 0.6))
    sheet = np.vstack(blocks)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write the contact sheet {out}")


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else float("nan")


def truth_report(clean: pd.DataFrame, manifest: pd.DataFrame, settings: dict[str, Any], method: str) -> pd.DataFrame:
    """Precision and recall of the drops against each planted truth column the manifest has.

    The fast detectors' ``grayscale``/``collage`` reasons score against ``truth_bw``/
    ``truth_collage``; with CLIP, the drop classes labelled ``grayscale``/``collage``.
    """
    clip = settings["clip"]
    rows = []
    for label, column in TRUTH_COLUMNS.items():
        if column not in manifest:
            continue
        if method == "fast":
            reason = label
        elif method == "clip" and label in clip["drop"]:
            reason = f"clip:{clip['prompts'][label]}"
        else:
            continue
        truth = clean[["image_id", "reason"]].merge(manifest[["image_id", column]], on="image_id")
        planted = truth[column].fillna(False).astype(bool)
        dropped = truth["reason"] == reason
        hits = int((planted & dropped).sum())
        rows.append(dict(detector=reason, truth=column, precision=_ratio(hits, int(dropped.sum())),
                         recall=_ratio(hits, int(planted.sum())), n_truth=int(planted.sum()),
                         n_dropped=int(dropped.sum())))
    return pd.DataFrame(rows, columns=REPORT_COLUMNS)
