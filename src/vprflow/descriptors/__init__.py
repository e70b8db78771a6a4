"""Descriptors found by name (``models.<name>.descriptor``): one module plus one line in
``DESCRIPTORS``.

A descriptor turns decoded RGB images into L2-normalised float32 vectors. Its life in
the pipeline:

1. ``settings_of(model, settings)`` at config validation: the class's ``DEFAULTS`` and
   ``check`` (see ``vprflow.registry``);
2. ``train(settings, images, model_dir, workers)`` once per model when
   ``is_trainable(settings)`` (the train rule; ``images`` has absolute ``abs_path``,
   ``split``, ``place``, ``x``, ``y`` ...): it writes ``model_dir/model.pt`` (resumable
   state under ``model_dir/work``, see ``vprflow.train``) and returns the training
   record, which ``vprflow.stages.train`` writes with the tables it names;
3. ``load(settings, model_dir)`` in each extraction job, then ``preprocess`` in
   DataLoader workers (must return a fixed-shape array) and ``encode`` on stacked batches;
   query images through ``for_queries()`` when ``describes_queries_apart(settings)``.

A *local* descriptor (``local = True``: ``sift``, ``delf``) gives each image keypoints with
descriptors instead of one vector: ``preprocess`` may return anything, ``describe`` turns a
batch of those into one ``vprflow.local.store.LocalFeatures`` per image, and ``dim`` is the
descriptor size; ``VERIFICATION`` says which ``matching`` and ``min_inliers`` its features
verify best with (the defaults of ``method: local``). Local models are not searched: the
``extract_local`` rule stores their features per shard and ``reranks.<name>.method: local``
verifies shortlists with them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from ..registry import Registry, own_settings


class Descriptor:
    name: ClassVar[str]
    trainable: ClassVar[bool] = False
    local: ClassVar[bool] = False
    DEFAULTS: ClassVar[dict[str, Any]] = {}

    def __init__(self, settings: dict[str, Any], model_dir: Path | None = None):
        self.settings = {**self.DEFAULTS, **settings}
        self.model_dir = model_dir

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def encode(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def encode_with_heads(self, batch: np.ndarray, top: int = 5) -> tuple[np.ndarray, dict[str, list]]:
        """``encode(batch)`` and, for a model trained with classification heads, per head
        (``name``, ``category``, ``place``) and image the ``top`` classes with their
        probabilities; ``{}`` for models without heads."""
        return self.encode(batch), {}

    def decode_size(self) -> tuple[int, int] | None:
        """The (width, height) ``preprocess`` shrinks every image to, if it does: JPEGs larger
        than that are then decoded at reduced scale (``images.read_rgb``). None: decode whole."""
        return None

    def decoding_threads(self) -> int:
        """Streams of this process that each decode a batch and ``encode`` it, with torch's
        operators on one thread each, instead of loader processes decoding ahead
        (``images.map_batches``); 0: loader processes. A network running on the CPU keeps
        every core busy, and a decoder process beside it stalls its OpenMP team; one stream
        per core fills the core a forward pass leaves while another stream decodes. On 2
        cores, bf16 MobileNetV2 extraction went from 0.71 (loader process) to 0.81 of the bare
        forward pass (decoding between batches) to 0.96-0.99 (two streams) on 512-640 px photos
        (``benchmarks/bench_extract.py``)."""
        return 0

    @classmethod
    def is_trainable(cls, settings: dict[str, Any]) -> bool:
        """Whether a model with these settings needs the train rule (may depend on them)."""
        return cls.trainable

    @classmethod
    def train(cls, settings: dict[str, Any], images: pd.DataFrame, model_dir: Path,
              workers: int | None = None) -> dict[str, Any]:
        raise NotImplementedError(f"descriptor {cls.name} needs no training")

    @classmethod
    def describes_queries_apart(cls, settings: dict[str, Any]) -> bool:
        """Whether query images are encoded otherwise than database images (test-time
        augmentation of the queries): extraction then needs the split's roles."""
        return False

    def for_queries(self) -> "Descriptor":
        """The descriptor that encodes query images (this one, unless ``describes_queries_apart``)."""
        return self


# Modules are imported only when their descriptor is used, so building the DAG of a run
# without CNNs does not import torch.
DESCRIPTORS = Registry(
    "descriptor",
    __name__,
    {"tiny_image": "tiny_image:TinyImage", "cnn": "cnn:CNNDescriptor", "rootsift_vlad": "rootsift_vlad:RootSIFTVLAD",
     "clip": "clip:ClipDescriptor", "sift": "sift:SIFTFeatures", "delf": "delf:DELFDescriptor"},
    selector="descriptor",
)


def descriptor_class(name: str) -> type[Descriptor]:
    return DESCRIPTORS.get(name)


def settings_of(model: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The complete settings of ``models.<model>``; InputError naming the key at fault."""
    return DESCRIPTORS.settings(f"models.{model}", settings)


def is_trainable(settings: dict[str, Any]) -> bool:
    return descriptor_class(settings["descriptor"]).is_trainable(own_settings(settings, "descriptor"))


def describes_queries_apart(settings: dict[str, Any]) -> bool:
    return descriptor_class(settings["descriptor"]).describes_queries_apart(own_settings(settings, "descriptor"))


def is_local(settings: dict[str, Any]) -> bool:
    """Whether the model gives local features (verified by re-ranking, not searched)."""
    return descriptor_class(settings["descriptor"]).local


def load(settings: dict[str, Any], model_dir: str | Path | None = None) -> Descriptor:
    cls = descriptor_class(settings["descriptor"])
    return cls(own_settings(settings, "descriptor"), Path(model_dir) if model_dir else None)
