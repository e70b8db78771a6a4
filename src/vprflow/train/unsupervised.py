"""Which images an unsupervised fit learns from: RootSIFT-VLAD's vocabulary, NetVLAD's
centroids, PCA-whitening (the ``fit_on`` setting).

* ``train``: the train split, as fine-tuning does;
* ``database``: the evaluation database (images with ``is_database``), for datasets that
  have no train split (a folder of query and database images only). They need no labels,
  and the database is what a search indexes anyway. Images that are only queries are
  never used; with role ``both`` every database image is also a query, as in the
  Oxford/Paris protocol where vocabularies are learned on the database;
* ``auto`` (default): ``train`` when the train split has images, else ``database``.
"""

from __future__ import annotations

import pandas as pd

from ..errors import InputError
from ..logs import log
from ..tables import require_columns

FIT_ON = ("auto", "train", "database")


def fitting_images(images: pd.DataFrame, fit_on: str, what: str) -> tuple[pd.DataFrame, str]:
    """The rows of ``images`` (with ``split`` and, for the database, ``is_database`` and
    ``is_query``) that ``what`` is fitted on, and the resolved choice (``train`` or
    ``database``); the choice is logged. InputError when they are none."""
    if fit_on not in FIT_ON:
        raise InputError(f"fit_on: unknown {fit_on!r}; use one of {', '.join(FIT_ON)}")
    require_columns(images, ["split"], "the training images")
    train = images[images["split"] == "train"]
    chosen = fit_on if fit_on != "auto" else ("train" if len(train) else "database")
    if chosen == "train":
        if train.empty:
            raise InputError(f"fit_on: the train split is empty, but {what} is fitted there; "
                             f"set fit_on: database (or auto), or give split.fractions.train a share")
        log.info("%s: fitted on the train split (%d images; fit_on %s)", what, len(train), fit_on)
        return train, chosen
    require_columns(images, ["is_database", "is_query"], "the training images")
    database = images[images["is_database"].astype(bool)]
    if database.empty:
        raise InputError(f"fit_on: {what} is fitted on the database images, but the split has none "
                         f"(split.database_splits)")
    also_queries = int(database["is_query"].astype(bool).sum())
    log.info("%s: fitted on the database images (%d, of which %d are also queries by role 'both'; "
             "images that are only queries are never used; fit_on %s)", what, len(database), also_queries, fit_on)
    return database, chosen
