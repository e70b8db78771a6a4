"""Place-recognition sets whose file names carry UTM positions.

This is the format of the deep-visual-geo-localization benchmark (Pitts30k, Tokyo 24/7,
MSLS, St Lucia, ...)::

    <root>/<database_dir>/@<utm_east>@<utm_north>@<zone number>@<zone letter>@<lat>@<lon>
                          @<pano id>@<tile>@<heading>@<pitch>@<roll>@<height>@<timestamp>@<note>@.jpg
    <root>/<query_dir>/...

Only the UTM coordinates are required; ``heading`` becomes ``yaw`` when it is a number.
The folders may hold sub-folders, and the split folders of the benchmark are reached by
naming them, e.g. ``database_dir="test/database"``. These sets are handed out through
request forms, so vprflow does not download them.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd

from ..errors import InputError
from ..logs import log
from . import Dataset, count_images_under, empty_ground_truth, normalise_listing

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
HEADING_FIELD = 9


def read_utm_folder(root: str | Path, database_dir: str = "database", query_dir: str = "queries") -> pd.DataFrame:
    """Listing with ``x``/``y`` = UTM east/north, ``yaw``, role from the folder, and ``utm_zone``."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(
            f"dataset.root: folder {root} does not exist. This dataset is distributed through a request "
            f"form, so vprflow cannot download it: get it from its authors in the deep-visual-geo-localization "
            f"benchmark format and put the images in {root / database_dir} and {root / query_dir}"
        )
    rows = []
    bad: list[str] = []
    for folder, role in ((database_dir, "database"), (query_dir, "query")):
        paths = _image_files(root, folder)
        if not paths:
            raise InputError(f"dataset.root: no images (.jpg, .jpeg, .png) in {root / folder}")
        for path in paths:
            fields = _position_fields(Path(path).name)
            if fields is None:
                bad.append(path)
            else:
                rows.append({"path": path, "role": role, **fields})
    if bad:
        shown = "\n  ".join(bad[:20])
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise InputError(
            f"{root}: {len(bad)} file name(s) without a UTM position "
            f"(expected @<utm_east>@<utm_north>@...@.jpg):\n  {shown}{more}"
        )
    listing = normalise_listing(pd.DataFrame(rows))
    zones = sorted(z for z in listing["utm_zone"].unique() if z)
    if len(zones) > 1:
        log.warning(
            "%s: images lie in %d UTM zones (%s); x/y distances between zones are meaningless",
            root,
            len(zones),
            ", ".join(zones),
        )
    return listing


def _image_files(root: Path, folder: str) -> list[str]:
    """Sorted POSIX paths, relative to ``root``, of the images anywhere under ``root/folder``."""
    found = []
    for directory, _, files in os.walk(root / folder):
        found += [
            (Path(directory) / f).relative_to(root).as_posix() for f in files if f.lower().endswith(IMAGE_SUFFIXES)
        ]
    return sorted(found)


def _position_fields(file_name: str) -> dict[str, float | str] | None:
    """x, y, yaw and utm_zone from a benchmark file name; ``None`` when east/north are not numbers."""
    fields = file_name.split("@")
    if len(fields) < 4 or fields[0]:
        return None
    try:
        east, north = float(fields[1]), float(fields[2])
    except ValueError:
        return None
    if not (math.isfinite(east) and math.isfinite(north)):
        return None
    zone = "".join(fields[3:5]) if len(fields) > 5 else ""  # the last field is the extension
    heading = fields[HEADING_FIELD] if len(fields) > HEADING_FIELD + 1 else ""
    return {"x": east, "y": north, "yaw": _number_or_nan(heading), "utm_zone": zone}


def _number_or_nan(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


class UTMFolderDataset(Dataset):
    """Database and query folders of UTM-named images (``dataset.utm_folder``)."""

    section = "utm_folder"

    def estimate_rows(self, settings, root):
        return count_images_under(root / settings["database_dir"]) + count_images_under(root / settings["query_dir"])

    def read(self, settings, root):
        return read_utm_folder(root, settings["database_dir"], settings["query_dir"]), empty_ground_truth()


UTM_FOLDER = UTMFolderDataset("utm_folder")
