"""Revisited Oxford 5k and Paris 6k (``roxford5k``, ``rparis6k``; Radenovic et al., CVPR 2018).

Layout under the dataset root (what :func:`fetch_revisited` makes, and what the official
``revisitop`` scripts make too)::

    gnd_roxford5k.pkl          ground truth: imlist, qimlist, gnd
    jpg/**/<image name>.jpg    images, flat or in sub-folders (found by file name)

Representation:

* The database is ``imlist``: rows with role ``database``.
* The 70 queries (``qimlist``) are rows with role ``query`` and their box
  ``bbox_x1, bbox_y1, bbox_x2, bbox_y2`` (pixels of the full image): the query is the
  box's crop. In the Revisited protocol the query images are *not* part of the
  database, so every path occurs once; a ground-truth file whose queries are also
  database images is refused, because one row cannot be both a cropped query and a
  full database image.
* ``place`` stays NA: the landmark in a file name (``all_souls_000013``) is the Flickr
  search that found the image, not what it shows, and place-based ground truth would
  count every same-named image as a positive. The easy/hard/junk lists of the ground-truth
  table are the only truth. That file-name landmark goes to ``name`` (``all_souls``).
"""

from __future__ import annotations

import codecs
import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError
from ..logs import log
from . import GROUND_TRUTH_LABELS, Dataset, normalise_listing
from .archive import safe_extract
from .download import download_known

ARCHIVES = {
    "roxford5k": ("roxford5k/oxbuild_images-v1.tgz",),
    "rparis6k": ("rparis6k/paris_1-v1.tgz", "rparis6k/paris_2-v1.tgz"),
}
BBOX_COLUMNS = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"]
IMAGE_FOLDER = "jpg"
IMAGE_SUFFIX = ".jpg"
NUMBERED_NAME = re.compile(r"_\d+$")


def gnd_file(root: str | Path, name: str) -> Path:
    return Path(root) / f"gnd_{name}.pkl"


def fetch_revisited(name: str, dest_root: str | Path, mirror: str | None = None) -> Path:
    """Download and extract ``name`` into the dataset root ``dest_root``; return it.

    Each image archive goes to ``jpg/<archive name>/`` and is deleted once extracted; an
    archive whose folder exists is skipped, so an interrupted fetch can simply be rerun.
    """
    _check_name(name)
    root = Path(dest_root)
    for known in ARCHIVES[name]:
        file_name = known.rsplit("/", 1)[1]
        extracted = root / IMAGE_FOLDER / file_name.removesuffix(".tgz")
        if extracted.is_dir():
            log.info("%s already extracted", extracted)
            continue
        archive = download_known(known, root / file_name, mirror)
        safe_extract(archive, extracted)
        archive.unlink()
    download_known(f"{name}/{gnd_file(root, name).name}", gnd_file(root, name), mirror)
    return root


def read_revisited(root: str | Path, name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Listing (database and query rows) and ground truth (easy/hard/junk) of ``name``."""
    _check_name(name)
    root = Path(root)
    gnd_path = gnd_file(root, name)
    if not gnd_path.is_file():
        raise InputError(
            f"dataset.revisited.root: {gnd_path} not found; fetch {name} or put its ground-truth file "
            f"(and the images under {root / IMAGE_FOLDER}) there by hand"
        )
    database, queries, per_query = _validated_gnd(gnd_path, load_ground_truth_pickle(gnd_path))
    both = sorted(set(database) & set(queries))
    if both:
        raise InputError(
            f"{gnd_path}: {len(both)} query image(s) are also database images (e.g. {both[0]}); "
            "the Revisited protocol keeps queries out of the database"
        )
    paths = _image_paths(root, database + queries)

    def rows(image_names: list[str], role: str) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "path": [paths[n] for n in image_names],
                "role": role,
                "name": [NUMBERED_NAME.sub("", n) for n in image_names],
            }
        )

    query_rows = rows(queries, "query")
    query_rows[BBOX_COLUMNS] = np.array([q["bbx"] for q in per_query], dtype="float64").reshape(-1, 4)
    listing = normalise_listing(pd.concat([rows(database, "database"), query_rows], ignore_index=True))

    truth = [
        (paths[query], paths[database[index]], label)
        for query, lists in zip(queries, per_query)
        for label in GROUND_TRUTH_LABELS
        for index in lists[label]
    ]
    ground_truth = pd.DataFrame(truth, columns=["query_path", "db_path", "label"], dtype=str)
    log.info(
        "%s: %d database images, %d queries, %d labelled pairs", name, len(database), len(queries), len(ground_truth)
    )
    return listing, ground_truth


class _GroundTruthUnpickler(pickle.Unpickler):
    """Unpickler that builds only containers, numbers, strings and numpy arrays.

    A pickle can run any importable callable while loading, so even the official ground
    truth, fetched over plain HTTP, is loaded with the globals it needs and nothing else.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[module, name]
        except KeyError:
            raise pickle.UnpicklingError(f"refused to load {module}.{name} (not a plain data type)") from None


def _numpy_globals() -> dict[tuple[str, str], Any]:
    # Found through the objects themselves: numpy 1 pickles name numpy.core, numpy 2 numpy._core.
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]
    from_buffer = np.zeros(1).__reduce_ex__(5)[0]
    scalar = np.float64(0).__reduce__()[0]
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for package in ("numpy.core", "numpy._core"):
        allowed[f"{package}.multiarray", "_reconstruct"] = reconstruct
        allowed[f"{package}.multiarray", "scalar"] = scalar
        allowed[f"{package}.numeric", "_frombuffer"] = from_buffer
    return allowed


# _codecs.encode: how protocol-2 pickles spell bytes (the raw data of numpy arrays).
_ALLOWED_GLOBALS = {**_numpy_globals(), ("_codecs", "encode"): codecs.encode}


def load_ground_truth_pickle(path: str | Path) -> Any:
    """Load a ground-truth pickle with :class:`_GroundTruthUnpickler`."""
    try:
        with open(path, "rb") as handle:
            # latin1: lets numpy arrays pickled by Python 2 load; no effect on Python 3 pickles
            return _GroundTruthUnpickler(handle, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError) as error:
        raise InputError(f"{path}: not a readable ground-truth pickle ({error})") from None


def _validated_gnd(path: Path, gnd: Any) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    """Image names, query names and per-query ``{bbx, easy, hard, junk}`` checked for sense."""
    if not isinstance(gnd, dict) or not {"imlist", "qimlist", "gnd"} <= set(gnd):
        raise InputError(f"{path}: expected a dict with keys imlist, qimlist, gnd")
    database = [str(n) for n in gnd["imlist"]]
    queries = [str(n) for n in gnd["qimlist"]]
    for key, names in (("imlist", database), ("qimlist", queries)):
        repeated = pd.Series(names)[pd.Series(names).duplicated()]
        if len(repeated):
            raise InputError(f"{path}: {key} names {repeated.iloc[0]} more than once")
    if len(gnd["gnd"]) != len(queries):
        raise InputError(f"{path}: gnd has {len(gnd['gnd'])} entries for {len(queries)} queries (qimlist)")
    per_query = []
    for number, (query, entry) in enumerate(zip(queries, gnd["gnd"])):
        where = f"{path}: gnd[{number}] (query {query})"
        if not isinstance(entry, dict):
            raise InputError(f"{where}: expected a dict")
        missing = [key for key in ("bbx", *GROUND_TRUTH_LABELS) if key not in entry]
        if missing:
            raise InputError(f"{where}: missing key(s) {', '.join(missing)}")
        try:
            box = np.asarray(entry["bbx"], dtype="float64").ravel()
            lists = {label: np.asarray(entry[label], dtype="int64").ravel().tolist() for label in GROUND_TRUTH_LABELS}
        except (TypeError, ValueError):
            raise InputError(f"{where}: bbx must hold numbers, easy/hard/junk integer indices") from None
        if box.shape != (4,) or not np.isfinite(box).all():
            raise InputError(f"{where}: bbx must be 4 numbers [x1, y1, x2, y2], got {box.tolist()}")
        checked: dict[str, Any] = {"bbx": box}
        labelled: set[int] = set()
        for label, indices in lists.items():
            bad = [i for i in indices if not 0 <= i < len(database)]
            if bad:
                raise InputError(f"{where}: {label} index {bad[0]} outside imlist (0..{len(database) - 1})")
            twice = labelled.intersection(indices)
            if twice:
                raise InputError(f"{where}: image {database[min(twice)]} has more than one label")
            labelled.update(indices)
            checked[label] = indices
        per_query.append(checked)
    return database, queries, per_query


def _image_paths(root: Path, names: list[str]) -> dict[str, str]:
    """POSIX path (relative to ``root``) of each ``<name>.jpg`` found anywhere under ``root/jpg``."""
    found: dict[str, list[str]] = {}
    folder = root / IMAGE_FOLDER
    for directory, _, files in os.walk(folder):
        for file_name in files:
            if file_name.endswith(IMAGE_SUFFIX):
                relative = (Path(directory) / file_name).relative_to(root).as_posix()
                found.setdefault(file_name.removesuffix(IMAGE_SUFFIX), []).append(relative)
    missing = [n for n in names if n not in found]
    if missing:
        raise InputError(
            f"dataset.root: {len(missing)} of {len(names)} images named in the ground truth are "
            f"not under {folder} (e.g. {missing[0]}{IMAGE_SUFFIX}); fetch the dataset again "
            "or extract its image archives there"
        )
    duplicated = [n for n in names if len(found[n]) > 1]
    if duplicated:
        raise InputError(
            f"dataset.root: {duplicated[0]}{IMAGE_SUFFIX} is found more than once: "
            f"{', '.join(found[duplicated[0]])}; keep one copy"
        )
    return {n: found[n][0] for n in names}


def _check_name(name: str) -> None:
    if name not in ARCHIVES:
        raise InputError(f"dataset.name: {name!r} is not a Revisited dataset (use {' or '.join(ARCHIVES)})")


# Database images plus the 70 queries of the ground truth.
ESTIMATED_ROWS = {"roxford5k": 4993 + 70, "rparis6k": 6322 + 70}


class RevisitedDataset(Dataset):
    """Revisited Oxford 5k / Paris 6k (``dataset.revisited``: ``root``, ``download``, ``mirror``)."""

    section = "revisited"
    downloadable = True

    def estimate_rows(self, settings, root):
        return ESTIMATED_ROWS[self.name]

    def read(self, settings, root):
        return read_revisited(root, self.name)

    def fetch(self, settings, root):
        fetch_revisited(self.name, root, settings.get("mirror"))


OXFORD = RevisitedDataset("roxford5k")
PARIS = RevisitedDataset("rparis6k")
