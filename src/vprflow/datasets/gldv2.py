"""Google Landmarks Dataset v2 (GLDv2), a range of its tar shards at a time.

GLDv2 ships each split as numbered tar shards of ~1 GB (train: 500, index: 100, test: 20),
each with an md5 list, on its official host. Layout under the dataset root::

    metadata/train.csv, metadata/train_clean.csv    train labels
    ground_truth/retrieval_solution_v2.1.csv        index images relevant to each test image
    <split>/images_<NNN>/<a>/<b>/<c>/<id>.jpg       one folder per shard, as its tar lays it out

Unlike the official script, which extracts every shard of a split into one folder, each
shard gets its own folder: a shard folder that exists is complete, and the listing holds
exactly the shards the configuration names. To use shards fetched by hand, extract each
``images_NNN.tar`` into ``<split>/images_NNN/``.

Roles: ``train`` images have none (the split stage assigns them) and ``place`` =
``landmark_id``; ``index`` images are the database and ``test`` images the queries, with
the retrieval solution as ground truth (label ``easy``: GLDv2 has a single level of
relevance). ``place`` stays NA for index and test so that only the solution counts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from ..errors import InputError
from ..logs import log
from . import Dataset, empty_ground_truth, normalise_listing
from .archive import safe_extract
from .download import download, download_known

OFFICIAL_URL = "https://s3.amazonaws.com/google-landmark"
SHARD_COUNTS = {"train": 500, "index": 100, "test": 20}
ROLES = {"train": "", "index": "database", "test": "query"}
TRAIN_LABELS = "gldv2/metadata/train.csv"
TRAIN_CLEAN = "gldv2/metadata/train_clean.csv"
RETRIEVAL_SOLUTION = "gldv2/ground_truth/retrieval_solution_v2.1.csv"
METADATA = {"train": (TRAIN_LABELS, TRAIN_CLEAN), "index": (RETRIEVAL_SOLUTION,), "test": (RETRIEVAL_SOLUTION,)}
IGNORED_QUERY = "None"  # the solution's ``images`` value for test images left out of scoring


def shard_folder(root: str | Path, split: str, shard: int) -> Path:
    return Path(root) / split / f"images_{shard:03d}"


def metadata_file(root: str | Path, known_name: str) -> Path:
    """Local path of a metadata file: its path on the host, under ``root``."""
    return Path(root) / known_name.removeprefix("gldv2/")


def fetch_gldv2(split: str, shard_range: Sequence[int], dest_root: str | Path, mirror: str | None = None) -> Path:
    """Download the metadata of ``split`` and its shards ``first..last`` (inclusive) into ``dest_root``.

    Each tar is checked against the md5 the host lists for it, extracted to its shard
    folder and deleted. Shards whose folder exists are skipped, so a fetch can be rerun.
    ``mirror``: a base URL laid out like the official host, under ``<mirror>/gldv2/``.
    """
    first, last = _checked_range(split, shard_range)
    root = Path(dest_root)
    for known in METADATA[split]:
        download_known(known, metadata_file(root, known), mirror)
    base = OFFICIAL_URL if mirror is None else f"{mirror.rstrip('/')}/gldv2"
    for shard in range(first, last + 1):
        folder = shard_folder(root, split, shard)
        if folder.is_dir():
            log.info("%s already extracted", folder)
            continue
        stem = folder.name
        md5_list = download(f"{base}/md5sum/{split}/md5.{stem}.txt", root / split / f"md5.{stem}.txt")
        archive = download(f"{base}/{split}/{stem}.tar", root / split / f"{stem}.tar", md5=_listed_md5(md5_list))
        safe_extract(archive, folder)
        archive.unlink()
    return root


def read_gldv2(
    root: str | Path, shards: Mapping[str, Sequence[int]], clean: bool = False
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Listing of the images in ``shards`` (split -> [first, last]) and the retrieval ground truth.

    ``clean``: keep only the train images of ``train_clean.csv``. Ground truth pairs need
    both the test image and the index image among the listed shards; the others are
    skipped and counted in the log, as are test images that the solution ignores.
    The listing has an extra ``usage`` column (``Public``/``Private``) for test images.
    """
    root = Path(root)
    if not shards:
        raise InputError("dataset.shards: name at least one split (train, index, test) and its shard range")
    parts = []
    for split, shard_range in shards.items():
        images = _shard_images(root, split, *_checked_range(split, shard_range))
        if split == "train":
            images = _with_landmarks(root, images, clean)
        parts.append(images)
    images = pd.concat(parts, ignore_index=True)
    ground_truth = empty_ground_truth()
    if "test" in shards:
        images, ground_truth = _with_retrieval_solution(root, images)
    return normalise_listing(images.drop(columns="id")), ground_truth


def _shard_images(root: Path, split: str, first: int, last: int) -> pd.DataFrame:
    folders = [shard_folder(root, split, shard) for shard in range(first, last + 1)]
    missing = [folder for folder in folders if not folder.is_dir()]
    if missing:
        raise InputError(
            f"dataset.shards.{split}: {len(missing)} shard folder(s) missing (e.g. {missing[0]}); "
            f"fetch them, or extract each images_NNN.tar into {root / split}/images_NNN/"
        )
    paths = []
    for folder in folders:
        for directory, _, files in os.walk(folder):
            paths += [(Path(directory) / f).relative_to(root).as_posix() for f in files if f.endswith(".jpg")]
    paths.sort()
    log.info("%s: %d images in shards %d..%d", split, len(paths), first, last)
    return pd.DataFrame({"path": paths, "role": ROLES[split], "id": [Path(p).stem for p in paths]})


def _with_landmarks(root: Path, images: pd.DataFrame, clean: bool) -> pd.DataFrame:
    """Train images with ``place`` = landmark id; images without a label are dropped and counted."""
    labels = _read_csv(root, TRAIN_LABELS, ["id", "landmark_id"])
    if clean:
        clean_labels = _read_csv(root, TRAIN_CLEAN, ["landmark_id", "images"])
        kept_ids = set(clean_labels["images"].str.split().explode())
        labels = labels[labels["id"].isin(kept_ids)]
    labelled = images.merge(labels.rename(columns={"landmark_id": "place"}), on="id", how="inner")
    dropped = len(images) - len(labelled)
    if dropped:
        log.info(
            "train: %d of %d images skipped: not in %s", dropped, len(images), TRAIN_CLEAN if clean else TRAIN_LABELS
        )
    return labelled


def _with_retrieval_solution(root: Path, images: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Drop the test images the solution ignores; pair the others with their relevant index images."""
    solution = _read_csv(root, RETRIEVAL_SOLUTION, ["id", "images", "Usage"]).set_index("id")
    is_test = images["role"] == ROLES["test"]
    relevant = images["id"].map(solution["images"]).fillna("").astype(str)
    ignored = is_test & relevant.isin(["", IGNORED_QUERY])
    if ignored.any():
        log.info(
            "test: %d of %d images skipped: ignored by the retrieval solution (no landmark)",
            int(ignored.sum()),
            int(is_test.sum()),
        )
    images = images[~ignored].copy()
    images["usage"] = images["id"].map(solution["Usage"]).where(images["role"] == ROLES["test"])

    index_images = images[images["role"] == ROLES["index"]]
    index_paths = dict(zip(index_images["id"], index_images["path"]))
    queries = images[images["role"] == ROLES["test"]]
    pairs = pd.DataFrame({"query_path": queries["path"], "db_id": relevant[queries.index].str.split()})
    pairs = pairs.explode("db_id").dropna(subset="db_id")
    pairs["db_path"] = pairs["db_id"].map(index_paths)
    absent = int(pairs["db_path"].isna().sum())
    if absent:
        log.info(
            "ground truth: %d of %d relevant index images skipped: not in the listed index shards", absent, len(pairs)
        )
    pairs = pairs.dropna(subset="db_path")
    ground_truth = pd.DataFrame(
        {"query_path": pairs["query_path"].astype(str), "db_path": pairs["db_path"].astype(str), "label": "easy"}
    )
    return images, ground_truth.reset_index(drop=True)


def _read_csv(root: Path, known_name: str, columns: list[str]) -> pd.DataFrame:
    path = metadata_file(root, known_name)
    if not path.is_file():
        raise InputError(f"dataset.root: {path} not found; fetch GLDv2 or download it from {OFFICIAL_URL}")
    try:
        return pd.read_csv(path, usecols=columns, dtype=str, keep_default_na=False)
    except ValueError as error:
        raise InputError(f"{path}: expected columns {', '.join(columns)} ({error})") from None


def _listed_md5(md5_list: Path) -> str:
    """The md5 in a ``md5.images_NNN.txt`` file (``<md5>  images_NNN.tar``)."""
    words = md5_list.read_text().split()
    if not words or len(words[0]) != 32 or any(c not in "0123456789abcdef" for c in words[0].lower()):
        md5_list.unlink()
        raise InputError(f"{md5_list}: not an md5 list (deleted; run again to download it afresh)")
    return words[0]


def _checked_range(split: str, shard_range: Sequence[int]) -> tuple[int, int]:
    if split not in SHARD_COUNTS:
        raise InputError(f"dataset.shards: unknown GLDv2 split {split!r} (use {', '.join(SHARD_COUNTS)})")
    count = SHARD_COUNTS[split]
    if (
        len(shard_range) != 2
        or not all(isinstance(i, int) for i in shard_range)
        or not 0 <= shard_range[0] <= shard_range[1] < count
    ):
        raise InputError(
            f"dataset.shards.{split}: expected [first, last] with 0 <= first <= last <= {count - 1}, "
            f"got {list(shard_range)}"
        )
    return shard_range[0], shard_range[1]


# Images per tar shard, on average (4.1M train, 762k index, 118k test).
IMAGES_PER_SHARD = {"train": 8200, "index": 7700, "test": 5900}


class GLDv2Dataset(Dataset):
    """Google Landmarks v2 by ranges of its tar shards (``dataset.gldv2``)."""

    section = "gldv2"
    downloadable = True

    def estimate_rows(self, settings, root):
        return sum((last - first + 1) * IMAGES_PER_SHARD[split] for split, (first, last) in settings["shards"].items())

    def read(self, settings, root):
        return read_gldv2(root, settings["shards"], settings["clean"])

    def fetch(self, settings, root):
        for split, shard_range in settings["shards"].items():
            fetch_gldv2(split, shard_range, root, settings.get("mirror"))


GLDV2 = GLDv2Dataset("gldv2")
