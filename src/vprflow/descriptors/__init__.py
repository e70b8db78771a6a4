"""Descriptors found by name: a new method is one module plus one line in ``REGISTRY``.

A descriptor turns decoded RGB images into L2-normalised float32 vectors. Its life in
the pipeline:

1. ``check_settings(name, settings)`` at config validation (unknown keys are errors);
2. ``train(settings, images, out_dir, workers)`` once per model when
   ``is_trainable(settings)`` (the train rule; ``images`` has absolute ``abs_path``,
   ``split``, ``place``, ``x``, ``y`` ...; it writes ``out_dir/trained.json`` last);
3. ``load(name, settings, model_dir)`` in each extraction job, then ``preprocess`` in
   DataLoader workers (must return a fixed-shape array) and ``encode`` on stacked batches.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from ..errors import InputError


class Descriptor:
    name: ClassVar[str]
    trainable: ClassVar[bool] = False
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, settings: dict[str, Any], model_dir: Path | None = None):
        self.settings = {**self.defaults, **settings}
        self.model_dir = model_dir

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def encode(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    @classmethod
    def is_trainable(cls, settings: dict[str, Any]) -> bool:
        """Whether a model with these settings needs the train rule (may depend on them)."""
        return cls.trainable

    @classmethod
    def train(cls, settings: dict[str, Any], images: pd.DataFrame, out_dir: Path, workers: int | None = None) -> None:
        raise NotImplementedError(f"descriptor {cls.name} needs no training")


def l2_normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


# Descriptor name -> (module, class). A module is imported only when its descriptor is
# used, so building the DAG of a run without CNNs does not import torch.
REGISTRY = {
    "tiny_image": ("tiny_image", "TinyImage"),
    "cnn": ("cnn", "CNNDescriptor"),
    "rootsift_vlad": ("rootsift_vlad", "RootSIFTVLAD"),
}


def names() -> list[str]:
    return sorted(REGISTRY)


def descriptor_class(name: str) -> type[Descriptor]:
    if name not in REGISTRY:
        raise InputError(f"unknown descriptor {name!r}; known: {', '.join(names())}")
    module, cls = REGISTRY[name]
    return getattr(importlib.import_module(f"{__package__}.{module}"), cls)


def check_settings(model: str, settings: dict[str, Any]) -> None:
    """Raise InputError naming ``models.<model>.<key>`` for an unknown descriptor or key."""
    try:
        cls = descriptor_class(settings.get("descriptor", ""))
    except InputError as error:
        raise InputError(f"models.{model}.descriptor: {error}") from None
    unknown = set(settings) - {"descriptor"} - set(cls.defaults)
    if unknown:
        raise InputError(f"models.{model}: unknown setting(s) {sorted(unknown)} for descriptor "
                         f"{cls.name}; known: {sorted(cls.defaults)}")
    if hasattr(cls, "check"):  # values too, before any job runs
        try:
            cls.check({**cls.defaults, **{k: v for k, v in settings.items() if k != "descriptor"}})
        except InputError as error:
            raise InputError(f"models.{model}.{error}") from None


def is_trainable(settings: dict[str, Any]) -> bool:
    own = {k: v for k, v in settings.items() if k != "descriptor"}
    return descriptor_class(settings["descriptor"]).is_trainable(own)


def load(settings: dict[str, Any], model_dir: str | Path | None = None) -> Descriptor:
    cls = descriptor_class(settings["descriptor"])
    own = {k: v for k, v in settings.items() if k != "descriptor"}
    return cls(own, Path(model_dir) if model_dir else None)
