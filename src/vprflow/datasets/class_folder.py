"""One folder per landmark or class: ``<root>/<class>/**/*.jpg``.

Every image gets ``place`` = ``name`` = its top-level folder and no role; the split stage
decides which images are queries and which the database. Hidden folders and files
(``.git``, ``.ipynb_checkpoints``) are skipped, files that are not images are ignored.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ..errors import InputError
from ..logs import log
from . import Dataset, count_images_under, empty_ground_truth, normalise_listing

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def read_class_folder(root: str | Path) -> pd.DataFrame:
    """Listing of the images in the class folders under ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"dataset.root: folder {root} does not exist (expected one sub-folder per class)")
    loose = sorted(p.name for p in root.iterdir() if p.is_file() and _is_image(p.name))
    if loose:
        raise InputError(
            f"dataset.root: {len(loose)} image(s) directly in {root} (e.g. {loose[0]}); "
            "put every image in the folder of its class"
        )
    rows = []
    for class_folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        paths = _images_under(root, class_folder)
        if not paths:
            log.warning("%s: no images, class skipped", class_folder)
        rows += [{"path": path, "place": class_folder.name, "name": class_folder.name} for path in paths]
    if not rows:
        raise InputError(f"dataset.root: no images in class folders under {root}")
    return normalise_listing(pd.DataFrame(rows))


def _images_under(root: Path, folder: Path) -> list[str]:
    """Sorted POSIX paths, relative to ``root``, of the images under ``folder``, hidden ones left out."""
    found = []
    for directory, subfolders, files in os.walk(folder):
        subfolders[:] = [s for s in subfolders if not s.startswith(".")]
        found += [
            (Path(directory) / f).relative_to(root).as_posix() for f in files if _is_image(f) and not f.startswith(".")
        ]
    return sorted(found)


def _is_image(file_name: str) -> bool:
    return file_name.lower().endswith(IMAGE_SUFFIXES)


class ClassFolderDataset(Dataset):
    """One sub-folder of images per landmark (``dataset.class_folder``: ``root``)."""

    section = "class_folder"

    def estimate_rows(self, settings, root):
        return count_images_under(root)

    def read(self, settings, root):
        return read_class_folder(root), empty_ground_truth()


CLASS_FOLDER = ClassFolderDataset("class_folder")
