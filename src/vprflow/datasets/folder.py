"""A user's own images: a folder plus ``manifest.csv`` (see README, "Your own data")."""

from __future__ import annotations

import csv as _csv
import io
import re
from pathlib import Path

import pandas as pd

from ..errors import InputError
from . import Dataset, empty_ground_truth, normalise_listing

MANIFEST_ROLES = {"database", "query", "both"}


GROUND_TRUTH_HINT = "path,role and place or x,y or lat,lon"


def _manifest_text(csv: Path) -> str:
    """The manifest's text; InputError naming the file when it is missing, empty or not UTF-8."""
    if not csv.is_file():
        raise InputError(f"dataset.folder.manifest: {csv} not found (a CSV with {GROUND_TRUTH_HINT})")
    data = csv.read_bytes()
    try:
        text = data.decode("utf-8-sig")  # a spreadsheet's byte-order mark is not part of the header
    except UnicodeDecodeError as error:
        row = data.count(b"\n", 0, error.start) + 1
        raise InputError(f"{csv}: row {row} is not UTF-8 (byte 0x{data[error.start]:02x}); save it as UTF-8 "
                         f"(a spreadsheet's 'CSV UTF-8')") from None
    if not text.strip():
        raise InputError(f"{csv} is empty: write a header row ({GROUND_TRUTH_HINT}) and one row per image")
    return text


def _check_header(csv: Path, columns: list[str]) -> None:
    if "path" not in columns or "role" not in columns:
        raise InputError(f"{csv}: needs columns 'path' and 'role'; found {columns}")
    if not ("place" in columns or {"x", "y"} <= set(columns) or {"lat", "lon"} <= set(columns)):
        raise InputError(f"{csv}: needs ground truth: a 'place' column, or 'x','y', or 'lat','lon'")


def _image_rows(csv: Path, text: str) -> int:
    """Rows below the header line that are not empty; InputError when there are none."""
    lines = text.splitlines()
    header = next(line for line in lines if line.strip())
    _check_header(csv, [name.strip() for name in next(_csv.reader([header]))])
    rows = len(lines) - lines.count("") - 1
    if rows < 1:
        raise InputError(f"{csv} lists no images (a header, no rows): add one row per image")
    return rows


def _parse(csv: Path, text: str) -> pd.DataFrame:
    """The rows, indexed by their spreadsheet row number (header = 1; blank lines keep their numbers)."""
    try:
        table = pd.read_csv(io.StringIO(text), dtype={"path": str, "role": str, "place": str, "name": str,
                                                      "category": str}, keep_default_na=True, skip_blank_lines=False)
    except pd.errors.ParserError as error:
        fields = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(error))
        if fields:
            expected, line, saw = fields.groups()
            raise InputError(f"{csv}: row {line} has {saw} fields, the header {expected}; "
                             f"put values holding commas in double quotes") from None
        raise InputError(f"{csv}: not a readable CSV file ({error})") from None
    table.index = table.index + 2
    return table[table.notna().any(axis=1)]


def read_folder(root: str | Path, manifest: str = "manifest.csv") -> pd.DataFrame:
    """Read and validate ``root/manifest``; every problem is reported with its CSV row.

    Row numbers are those a spreadsheet shows: the header is row 1, the first image row 2.
    Paths are taken as written; one with spaces around it is refused unless a file has that name.
    """
    root = Path(root)
    csv = root / manifest
    if not root.is_dir():
        raise InputError(f"dataset.folder.root: folder {root} does not exist")
    text = _manifest_text(csv)
    _image_rows(csv, text)
    table = _parse(csv, text)
    has_place = "place" in table
    has_xy = {"x", "y"} <= set(table.columns)
    has_latlon = {"lat", "lon"} <= set(table.columns)

    problems: list[tuple[int, str]] = []
    line = pd.Series(table.index, index=table.index)  # spreadsheet row numbers
    path = table["path"].fillna("")
    stripped = path.str.strip()
    for i in line[stripped == ""]:
        problems.append((i, "empty path"))
    named = stripped != ""
    outside = named & path.map(lambda p: Path(p).is_absolute() or ".." in Path(p).parts)
    for i, p in zip(line[outside], path[outside]):
        problems.append((i, f"path {p!r} must be relative to {root} and stay inside it"))
    checkable = named & ~outside
    missing = checkable & ~path.map(lambda p: (root / p).is_file())
    for i, p, bare in zip(line[missing], path[missing], stripped[missing]):
        if p != bare and (root / bare).is_file():
            problems.append((i, f"path {p!r} has spaces around it; the file is {bare!r}: remove the spaces"))
        else:
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
    for side, roles in (("query", ("query", "both")), ("database", ("database", "both"))):
        if not table["role"].isin(roles).any():
            raise InputError(f"{csv}: no row has role {side} or both, so there is nothing to "
                             f"{'search with' if side == 'query' else 'search in'}; give some rows that role")
    return normalise_listing(table)


def count_rows(root: str | Path, manifest: str = "manifest.csv") -> int:
    """Image rows in the manifest, before any job runs (it fixes the shards): what the bytes and the
    header tell (missing, empty, not UTF-8, columns, no rows) is refused here, naming the file;
    the rows themselves are checked by :func:`read_folder` in the listing job."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"dataset.folder.root: folder {root} does not exist")
    csv = root / manifest
    return _image_rows(csv, _manifest_text(csv))


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
