"""The train stage: what the workflow's train rule calls, once per trainable model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from .. import descriptors
from ..errors import InputError
from ..logs import log


def train_model(
    manifest_path,
    clean_path,
    split_path,
    settings: dict[str, Any],
    root,
    out_dir,
    threads: int,
    workers: int | None = None,
) -> None:
    """Train the model ``settings`` (its ``models.<name>`` entry; the name is ``out_dir``'s)
    on the kept images of the train split, validated on val, into ``out_dir``.

    Everything goes into ``out_dir``; ``out_dir/trained.json`` is written last. Rerun
    after a kill, it resumes from the last checkpoint there.
    """
    import faiss
    import torch

    from ..stages import kept_images

    torch.set_num_threads(max(1, threads))
    faiss.omp_set_num_threads(max(1, threads))
    out_dir = Path(out_dir)
    images = kept_images(manifest_path, clean_path)
    images = images.merge(pd.read_parquet(split_path)[["image_id", "split"]], on="image_id")
    images["abs_path"] = [str(Path(root) / p) for p in images["path"]]
    own = {k: v for k, v in settings.items() if k != "descriptor"}
    cls = descriptors.descriptor_class(settings["descriptor"])
    log.info("train %s (%s): %s", out_dir.name, cls.name, own)
    try:
        cls.train(own, images, out_dir, workers=workers)
    except InputError as error:
        if str(error).split(":", 1)[0] in cls.defaults:  # a setting of this model: name its full key
            raise InputError(f"models.{out_dir.name}.{error}") from None
        raise
