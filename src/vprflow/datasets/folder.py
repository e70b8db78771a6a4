"""A user's own images: a folder plus ``manifest.csv`` (see README, "Your own data")."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..errors import InputError
from . import Dataset, empty_ground_truth, normalise_listing

MANIFEST_ROLES = {"database", "query", "both"}


def read_folder(root: str | Path, manifest: str = "manifest.csv") -> pd.DataFrame:
    """Read and validate ``root/manifest``; every problem is reported with its CSV row.

    Row numbers are those a spreadsheet shows: the header is row 1, the first image row 2.
    """
    root = Path(root)
    csv = root / manifest
    if not root.is_dir():
        raise InputError(f"dataset.folder.root: folder {root} does not exist")
    if not csv.is_file():
        raise InputError(f"dataset.folder.manifest: {csv} not found (a CSV with path, role and place or x,y)")
    table = pd.read_csv(csv, dtype={"path": str, "role": str, "place": str, "name": str, "category": str},
                        keep_default_na=True)
    if "path" not in table or "role" not in table:
        raise InputError(f"{csv}: needs columns 'path' and 'role'; found {list(table.columns)}")
    has_place = "place" in table
    has_xy = {"x", "y"} <= set(table.columns)
    has_latlon = {"lat", "lon"} <= set(table.columns)
    if not (has_place or has_xy or has_latlon):
        raise InputError(f"{csv}: needs ground truth: a 'place' column, or 'x','y', or 'lat','lon'")

    problems: list[tuple[int, str]] = []
    line = pd.Series(table.index + 2, index=table.index)  # spreadsheet row numbers
    path = table["path"].fillna("").str.strip()
    for i in line[path == ""]:
        problems.append((i, "empty path"))
    named = path != ""
    outside = named & path.map(lambda p: Path(p).is_absolute() or ".." in Path(p).parts)
    for i, p in zip(line[outside], path[outside]):
        problems.append((i, f"path {p!r} must be relative to {root} and stay inside it"))
    checkable = named & ~outside
    missing = checkable & ~path.map(lambda p: (root / p).is_file())
    for i, p in zip(line[missing], path[missing]):
        problems.append((i, f"file {p!r} not found under {root}"))
    first_row = line.groupby(path).transform("min")
    duplicate = named & path.duplicated()
    for i, p, first in zip(line[duplicate], path[duplicate], first_row[duplicate]):
        problems.append((i, f"duplicate path {p!r} (first on row {first})"))
    bad_role = ~table["role"].isin(MANIFEST_ROLES)
    for i, r in zip(line[bad_role], table["role"][bad_role]):
        problems.append((i, f"unknown role {r!r} (use database, query or both)"))
    truth = pd.Series(False, index=table.index)
    if has_place:
        truth |= table["place"].notna()
    if has_xy:
        truth |= table["x"].notna() & table["y"].notna()
    if has_latlon:
        truth |= table["lat"].notna() & table["lon"].notna()
    for i in line[~truth]:
        problems.append((i, "no ground truth (place, x/y or lat/lon)"))
    problems = [f"row {i}: {text}" for i, text in sorted(problems)]
    if problems:
        shown = "\n  ".join(problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        raise InputError(f"{csv}: {len(problems)} problem(s):\n  {shown}{more}")
    return normalise_listing(table)


def count_rows(root: str | Path, manifest: str = "manifest.csv") -> int:
    """Rows in the manifest without parsing it (fast enough for a million images at DAG build)."""
    with open(Path(root) / manifest, "rb") as handle:
        lines = sum(1 for line in handle if line.strip())
    return max(0, lines - 1)


class FolderDataset(Dataset):
    """A folder of images with ``manifest.csv`` (``dataset.folder``: ``root``, ``manifest``)."""

    section = "folder"

    def estimate_rows(self, settings, root):
        return count_rows(root, settings["manifest"])

    def read(self, settings, root):
        return read_folder(root, settings["manifest"]), empty_ground_truth()

    def listing_source(self, settings, root):
        return str(root / settings["manifest"])


FOLDER = FolderDataset("folder")
