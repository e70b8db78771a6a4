"""Local features on disk: one folder per shard, written as extraction goes, read back
memory-mapped.

A shard folder holds

* ``images.parquet``: one row per extracted image: ``image_id``, ``width``, ``height``
  (the frame the keypoints live in: the image as read, or its query box), ``start`` and
  ``count`` (its rows in the two arrays below);
* ``keypoints.npy``: float32 ``(n, 4)``: ``x``, ``y`` (pixels of that frame, pixel centres
  at integers), ``scale`` (the pyramid scale a DELF feature was found at, or the SIFT
  keypoint size), ``attention`` (DELF's attention score, or SIFT's detector response);
* ``descriptors.npy``: float16 ``(n, dim)``, L2-normalised;
* ``features.json``: which descriptor wrote them, and the verification settings it
  matches best with (``matching``, ``min_inliers``), the defaults of ``method: local``
  (shards written before it existed read as ``{}``: generic defaults).

Both arrays are appended batch by batch (the header is rewritten in place at the end),
so extracting a shard holds one batch in memory whatever the shard's size, and reading
one image's features touches only its rows.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from ..errors import InputError

IMAGES_FILE = "images.parquet"
KEYPOINTS_FILE = "keypoints.npy"
DESCRIPTORS_FILE = "descriptors.npy"
INFO_FILE = "features.json"
KEYPOINT_COLUMNS = ("x", "y", "scale", "attention")
DESCRIPTOR_DTYPE = np.float16


@dataclass(frozen=True)
class LocalFeatures:
    """The local features of one image."""

    xy: np.ndarray  # (n, 2) float32, pixels of the image frame
    scale: np.ndarray  # (n,) float32
    attention: np.ndarray  # (n,) float32
    descriptors: np.ndarray  # (n, dim), L2-normalised
    size: tuple[int, int]  # (width, height) of the frame xy lives in

    def __len__(self) -> int:
        return len(self.xy)

    @classmethod
    def empty(cls, dim: int, size: tuple[int, int] = (1, 1)) -> "LocalFeatures":
        return cls(np.zeros((0, 2), np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32),
                   np.zeros((0, dim), np.float32), size)


class _NpyAppender:
    """An ``.npy`` file of rows of ``row_shape``, appended to and closed with the final row count.

    numpy pads version-1 headers so the length of axis 0 can grow in place: the header
    written for 0 rows has the size of the header for any count.
    """

    def __init__(self, path: Path, row_shape: tuple[int, ...], dtype):
        self.path, self.row_shape, self.dtype = path, tuple(row_shape), np.dtype(dtype)
        self.rows = 0
        self.handle = open(path, "wb")
        self.header_size = len(self._header(0))
        self.handle.write(self._header(0))

    def _header(self, rows: int) -> bytes:
        buffer = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            buffer, {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                     "shape": (rows, *self.row_shape)})
        return buffer.getvalue()

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f"{self.path}: rows of shape {rows.shape[1:]}, expected {self.row_shape}")
        self.handle.write(rows.tobytes())
        self.rows += len(rows)

    def close(self) -> None:
        header = self._header(self.rows)
        if len(header) != self.header_size:  # numpy keeps room for 21 digits; never seen otherwise
            raise RuntimeError(f"{self.path}: the .npy header changed size")
        self.handle.seek(0)
        self.handle.write(header)
        self.handle.close()


class LocalFeatureWriter:
    """Writes a shard folder (see the module docstring), one image at a time."""

    def __init__(self, folder: str | Path, dim: int, info: dict | None = None):
        """``info``: what ``features.json`` records (descriptor name, verification defaults)."""
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.dim = dim
        (self.folder / INFO_FILE).write_text(json.dumps({"dim": dim, **(info or {})}, indent=1) + "\n")
        self.keypoints = _NpyAppender(self.folder / KEYPOINTS_FILE, (len(KEYPOINT_COLUMNS),), np.float32)
        self.descriptors = _NpyAppender(self.folder / DESCRIPTORS_FILE, (dim,), DESCRIPTOR_DTYPE)
        self.rows: list[tuple[str, int, int, int, int]] = []

    def add(self, image_id: str, features: LocalFeatures) -> None:
        if features.descriptors.shape[1:] != (self.dim,):
            raise ValueError(f"{image_id}: descriptors of size {features.descriptors.shape[1:]}, expected {self.dim}")
        self.rows.append((image_id, int(features.size[0]), int(features.size[1]), self.keypoints.rows, len(features)))
        self.keypoints.append(np.column_stack([features.xy, features.scale, features.attention]))
        self.descriptors.append(features.descriptors)

    def close(self) -> None:
        self.keypoints.close()
        self.descriptors.close()
        table = pd.DataFrame(self.rows, columns=["image_id", "width", "height", "start", "count"])
        table.astype({"image_id": str, "width": "int32", "height": "int32", "start": "int64", "count": "int32"}
                     ).to_parquet(self.folder / IMAGES_FILE, index=False)

    def __enter__(self) -> "LocalFeatureWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LocalFeatureStore:
    """The local features of every image in some shard folders, by image id.

    The arrays stay memory-mapped: an image's features are read from disk when asked for,
    and the operating system's page cache keeps what is read often.
    """

    def __init__(self, folders: Iterable[str | Path]):
        self.folders = [Path(f) for f in folders]
        self._where: dict[str, tuple[int, int, int, int, int]] = {}
        self._arrays: list[tuple[np.ndarray, np.ndarray]] = []
        self.dim = 0
        self.info: dict = {}
        for number, folder in enumerate(self.folders):
            missing = [name for name in (IMAGES_FILE, KEYPOINTS_FILE, DESCRIPTORS_FILE) if not (folder / name).is_file()]
            if missing:
                raise InputError(f"{folder} is not a local-feature shard: it lacks {missing}; rerun its extraction")
            keypoints = np.load(folder / KEYPOINTS_FILE, mmap_mode="r")
            descriptors = np.load(folder / DESCRIPTORS_FILE, mmap_mode="r")
            if self.dim and descriptors.shape[1] != self.dim:
                raise InputError(f"{folder}: descriptors of size {descriptors.shape[1]}, other shards have {self.dim}")
            self.dim = int(descriptors.shape[1])
            if not self.info and (folder / INFO_FILE).is_file():
                self.info = json.loads((folder / INFO_FILE).read_text())
            self._arrays.append((keypoints, descriptors))
            images = pd.read_parquet(folder / IMAGES_FILE)
            for row in images.itertuples(index=False):
                self._where[row.image_id] = (number, int(row.start), int(row.count), int(row.width), int(row.height))

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._where

    def __len__(self) -> int:
        return len(self._where)

    def get(self, image_id: str) -> LocalFeatures | None:
        """The features of ``image_id`` (descriptors as float32), None when it was not extracted."""
        where = self._where.get(image_id)
        if where is None:
            return None
        number, start, count, width, height = where
        keypoints, descriptors = self._arrays[number]
        rows = np.asarray(keypoints[start : start + count], dtype=np.float32)
        return LocalFeatures(rows[:, :2].copy(), rows[:, 2].copy(), rows[:, 3].copy(),
                             np.asarray(descriptors[start : start + count], dtype=np.float32), (width, height))

