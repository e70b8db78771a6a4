"""The service bundle: what serving one (model, search) needs, built from the pipeline's outputs.

A bundle folder holds ``bundle.json`` (settings, and paths relative to the folder), the
database table in index order (``database.parquet``: ids, paths, places, poses, names,
categories, the row of each vector, thumbnail offsets), the thumbnails packed in one
file (``thumbnails.bin``) and the weight-free text index (``text.npz``). It points at,
and never copies, the pipeline's vectors, index and trained model, so serving uses
exactly what the pipeline evaluated.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .. import __version__
from ..errors import InputError
from ..images import iter_batches
from ..logs import log, progress
from ..masks import split_masks
from ..tables import read_ids, select_rows
from .text import NgramIndex, group_texts

BUNDLE_FILE = "bundle.json"
FORMAT = 1
FILES = {"database": "database.parquet", "thumbnails": "thumbnails.bin", "text_index": "text.npz"}
LABEL_COLUMNS = ["place", "name", "category", "x", "y", "lat", "lon", "yaw"]
GROUP = "group"
"""The database table's column of text groups: the name, else the place, else the image id."""


class Thumbnail:
    """Runs in the loader workers: an RGB image as JPEG bytes, longest side at most ``side``."""

    def __init__(self, side: int, quality: int = 85):
        self.side, self.quality = side, quality

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        from PIL import Image

        image = Image.fromarray(rgb)
        image.thumbnail((self.side, self.side), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=self.quality)
        return np.frombuffer(buffer.getvalue(), dtype=np.uint8)


def pack_thumbnails(paths: Sequence[Path], out: Path, side: int, workers: int) -> tuple[np.ndarray, np.ndarray]:
    """Write the thumbnails of ``paths`` one after another into ``out``; (offsets, lengths),
    length 0 for an image that no longer decodes (logged)."""
    offsets = np.zeros(len(paths), dtype=np.int64)
    lengths = np.zeros(len(paths), dtype=np.int64)
    position = 0
    with open(out, "wb") as handle:
        batches = iter_batches(list(paths), Thumbnail(side), batch_size=64, workers=workers)
        for indices, jpegs, errors in progress(batches, desc="thumbnails", total=-(-len(paths) // 64), unit="batch"):
            for i, jpeg, error in zip(indices, jpegs, errors):
                if jpeg is None:
                    log.warning("no thumbnail for %s: %s", paths[i], error)
                    continue
                handle.write(jpeg.tobytes())
                offsets[i], lengths[i] = position, len(jpeg)
                position += len(jpeg)
    return offsets, lengths


def database_table(images: pd.DataFrame, split: pd.DataFrame, masks: pd.DataFrame, all_ids: np.ndarray) -> pd.DataFrame:
    """The database in index order (the order ``build_index`` used): id, path, labels, the
    row of its vector, its text group, and whether the masks exclude it from every answer."""
    database_ids = split.loc[split["is_database"], "image_id"]
    rows = select_rows(all_ids, database_ids)
    table = pd.DataFrame({"image_id": all_ids[rows], "vector_row": rows})
    columns = ["image_id", "path"] + [c for c in LABEL_COLUMNS if c in images.columns]
    table = table.merge(images[columns], on="image_id", how="left", validate="one_to_one")
    for column in LABEL_COLUMNS:
        if column not in table:
            table[column] = np.nan if column in ("x", "y", "lat", "lon", "yaw") else pd.NA
    _, dropped_database, _ = split_masks(masks)
    table["excluded"] = table["image_id"].isin(dropped_database)
    group = table["name"].astype("string")
    group = group.where(group.notna() & (group != ""), table["place"].astype("string"))
    table[GROUP] = group.where(group.notna() & (group != ""), table["image_id"]).astype(str)
    return table


def build_bundle(out_dir: str | Path, *, model: str, search: str, images: pd.DataFrame, split: pd.DataFrame,
                 masks: pd.DataFrame, vectors: str | Path, ids: str | Path, index_dir: str | Path,
                 model_dir: str | Path | None, model_settings: dict[str, Any], search_settings: dict[str, Any],
                 service: dict[str, Any], pose: dict[str, Any], root: str | Path,
                 clip_model: dict[str, Any] | None = None, workers: int = 0) -> dict[str, Any]:
    """Write the bundle of (``model``, ``search``) into ``out_dir``; return its record.

    ``clip_model``: for the CLIP text engine, ``{"name", "settings", "vectors", "ids"}`` of
    the ``clip`` model whose image embeddings the text tower is scored against.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    all_ids = read_ids(ids)
    table = database_table(images, split, masks, all_ids)
    if table.empty:
        raise InputError(f"service bundle {model}/{search}: the database is empty (split.database_splits)")
    offsets, lengths = pack_thumbnails([Path(root) / p for p in table["path"]], out / FILES["thumbnails"],
                                       int(service["thumbnail_side"]), workers)
    table["thumb_offset"], table["thumb_length"] = offsets, lengths
    table.to_parquet(out / FILES["database"], index=False)
    labels, texts = group_texts(table[~table["excluded"]], GROUP, service["text_columns"])
    NgramIndex.build(labels, texts).save(out / FILES["text_index"])

    def relative(path):
        return os.path.relpath(Path(path).resolve(), out.resolve()) if path else None

    files = {**FILES, "vectors": relative(vectors), "ids": relative(ids), "index_dir": relative(index_dir),
             "model_dir": relative(model_dir)}
    text = {"engine": service["text_engine"], "columns": list(service["text_columns"]), "clip_model": None}
    if clip_model is not None:
        text.update(clip_model=clip_model["name"], clip_settings=clip_model["settings"])
        files.update(clip_vectors=relative(clip_model["vectors"]), clip_ids=relative(clip_model["ids"]))
    record = {"format": FORMAT, "vprflow": __version__, "model": model, "search": search,
              "model_settings": model_settings, "search_settings": search_settings, "pose": pose, "text": text,
              "n_database": len(table), "n_excluded": int(table["excluded"].sum()), "n_groups": len(labels),
              "files": files}
    (out / BUNDLE_FILE).write_text(json.dumps(record, indent=1, default=str) + "\n")
    log.info("bundle %s/%s: %d database images (%d excluded by the masks), %d text groups, thumbnails %.1f MB",
             model, search, len(table), record["n_excluded"], len(labels), lengths.sum() / 1e6)
    return record


@dataclass
class Bundle:
    """A bundle read back: its record, its folder, the database table; paths resolved."""

    folder: Path
    record: dict[str, Any]
    database: pd.DataFrame

    @classmethod
    def load(cls, path: str | Path) -> "Bundle":
        """Read the bundle in folder ``path`` (or its ``bundle.json``); InputError when it is
        missing or no longer matches the vectors it points at (rebuild it)."""
        path = Path(path)
        folder = path.parent if path.name == BUNDLE_FILE else path
        if not (folder / BUNDLE_FILE).is_file():
            raise InputError(f"{folder}: no {BUNDLE_FILE}; build it with "
                             f"snakemake --cores 2 results/service/<model>/<search>/{BUNDLE_FILE}")
        record = json.loads((folder / BUNDLE_FILE).read_text())
        if record.get("format") != FORMAT:
            raise InputError(f"{folder / BUNDLE_FILE}: bundle format {record.get('format')!r}, this vprflow "
                             f"reads {FORMAT}; rebuild the bundle")
        bundle = cls(folder, record, pd.read_parquet(folder / record["files"]["database"]))
        for key in ("vectors", "ids", "index_dir"):
            if not bundle.file(key).exists():
                raise InputError(f"{folder / BUNDLE_FILE}: {key} {bundle.file(key)} is missing; rebuild the bundle")
        ids = read_ids(bundle.file("ids"))
        rows = bundle.database["vector_row"].to_numpy()
        if rows.max() >= len(ids) or not (ids[rows] == bundle.database["image_id"].to_numpy()).all():
            raise InputError(f"{folder}: the bundle is stale (its database ids no longer match "
                             f"{bundle.file('ids')}); rebuild it with snakemake")
        return bundle

    def file(self, key: str) -> Path | None:
        """The resolved path of ``files[key]``, None when the bundle has none."""
        name = self.record["files"].get(key)
        return (self.folder / name).resolve() if name else None
