"""``descriptor: delf``: DELF local features (``vprflow.networks.delf``), trained by the
pipeline in DELF's two steps (``vprflow.train.delf``) or taken whole from a delf model
another run trained (``checkpoint``).

A local descriptor: its features are stored per shard by the ``extract_local`` rule and
used by ``reranks.<name>.method: local`` (``features: <this model>``); it is not searched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError, SettingError
from ..local.store import LocalFeatures
from ..registry import one_of, positive_number, whole_number
from ..train import MODEL_FILE
from . import Descriptor

SETTINGS_HELP = {
    "backbone": "torchvision model cut at its stride-16 block: resnet18/34/50/101/152 (conv4), mobilenet_v2, vgg16",
    "weights": "imagenet | none | path of a torchvision state dict: the backbone before training",
    "checkpoint": "path of a delf model.pt another run trained: used whole (backbone, attention, whitening), "
                  "no training",
    "max_side": "images are shrunk to at most this many pixels on the long side before the pyramid",
    "scales": "image pyramid: the shrunk image resized by each factor (keypoints compete across all)",
    "max_keypoints": "keypoints per image: the locations with the highest attention over all scales",
    "min_attention": "locations scored below this are never keypoints (0: keep the top max_keypoints)",
    "dim": "descriptor size after PCA-whitening, learned on the train split (null: no whitening)",
    "precision": "auto (bf16 where the hardware has it natively) | fp32 | bf16",
    "label": "the manifest column classified in training (place, name, category)",
    "width": "training input width (training images are resized to width x height)",
    "height": "training input height",
    "finetune_epochs": "step 1: epochs fine-tuning the backbone by classification (0 keeps the weights as they are)",
    "finetune_blocks": "step 1: backbone blocks tuned, counted from the end",
    "attention_epochs": "step 2: epochs training the attention with the backbone frozen",
    "train_batch_size": "images per optimiser step",
    "lr": "step 1 (backbone) Adam learning rate",
    "attention_lr": "step 2 (attention) Adam learning rate",
    "lr_step": "epochs between learning-rate shrinks",
    "lr_gamma": "learning-rate factor at each shrink",
    "patience": "epochs without validation gain before a step stops early",
    "checkpoint_every": "epochs between resumable checkpoints",
    "positive_radius_m": "validation positives: same place or within this distance",
    "negative_radius_m": "validation negatives: another place and beyond this distance",
    "fit_images": "training images whose keypoints fit the PCA-whitening",
    "seed": "seed of initialisation, sampling and training order",
}

DEFAULTS: dict[str, Any] = {
    "backbone": "mobilenet_v2",
    "weights": "imagenet",
    "checkpoint": None,
    "max_side": 512,
    "scales": [0.7071, 1.0, 1.4142],
    "max_keypoints": 1000,
    "min_attention": 0.0,
    "dim": 40,
    "precision": "auto",
    "label": "place",
    "width": 320,
    "height": 240,
    "finetune_epochs": 2,
    "finetune_blocks": 2,
    "attention_epochs": 4,
    "train_batch_size": 16,
    "lr": 1e-4,
    "attention_lr": 1e-3,
    "lr_step": 5,
    "lr_gamma": 0.5,
    "patience": 3,
    "checkpoint_every": 1,
    "positive_radius_m": 10.0,
    "negative_radius_m": 25.0,
    "fit_images": 200,
    "seed": 0,
}

_POSITIVE_INTEGERS = ("max_side", "max_keypoints", "width", "height", "attention_epochs", "train_batch_size", "lr_step",
                      "patience", "checkpoint_every", "fit_images")


class DELFDescriptor(Descriptor):
    name = "delf"
    local = True
    DEFAULTS = DEFAULTS
    VERIFICATION = {"matching": "mutual", "min_inliers": 20}  # measured: benchmarks/sweep_verification.py

    @staticmethod
    def check(settings: dict[str, Any]) -> None:
        from ..networks.names import PRECISIONS, check_local_backbone

        check_local_backbone(settings["backbone"])
        one_of(settings, "precision", PRECISIONS)
        for key in _POSITIVE_INTEGERS:
            whole_number(settings, key)
        for key in ("finetune_epochs", "finetune_blocks"):
            whole_number(settings, key, minimum=0)
        if settings["dim"] is not None:
            whole_number(settings, "dim")
        scales = settings["scales"]
        if not isinstance(scales, list) or not scales or not all(isinstance(s, (int, float)) and s > 0 for s in scales):
            raise SettingError("scales", f"must be a non-empty list of positive numbers, got {scales!r}")
        for key in ("lr", "attention_lr", "lr_gamma", "positive_radius_m", "negative_radius_m"):
            positive_number(settings, key)
        if not isinstance(settings["min_attention"], (int, float)) or settings["min_attention"] < 0:
            raise SettingError("min_attention", f"must be a number >= 0, got {settings['min_attention']!r}")
        if not isinstance(settings["label"], str) or not settings["label"]:
            raise SettingError("label", f"name a manifest column (place, name, category), got {settings['label']!r}")
        if not isinstance(settings["weights"], str) or not settings["weights"]:
            raise SettingError("weights", "use imagenet, none or the path of a torchvision state dict")
        if settings["checkpoint"] is not None and (not isinstance(settings["checkpoint"], str)
                                                   or not settings["checkpoint"]):
            raise SettingError("checkpoint",
                               f"must be the path of a delf model.pt or null, got {settings['checkpoint']!r}")

    @classmethod
    def is_trainable(cls, settings: dict[str, Any]) -> bool:
        return {**cls.DEFAULTS, **settings}["checkpoint"] is None

    def __init__(self, settings: dict[str, Any], model_dir: Path | None = None):
        super().__init__(settings, model_dir)
        self.check(self.settings)
        if self.is_trainable(self.settings):
            self.model_path = Path(model_dir) / MODEL_FILE if model_dir else None
            if not (self.model_path and self.model_path.is_file()):
                raise InputError(f"descriptor delf must be trained first: no {MODEL_FILE} in {model_dir}")
        else:
            self.model_path = Path(self.settings["checkpoint"])
            if not self.model_path.is_file():
                raise InputError(f"checkpoint: {self.model_path} is not a file (a delf model.pt another run trained)")
        self._network = None  # built on first use, so DataLoader workers never carry it

    def network(self):
        if self._network is None:
            import torch

            from ..logs import log
            from ..networks.compute import folded_for_inference, inference_probe, pick_device, use_bf16
            from ..networks.delf import load_delf

            self.device = pick_device()
            self.bf16 = use_bf16(self.settings["precision"], self.device)
            network = load_delf(self.model_path).to(self.device).to(memory_format=torch.channels_last).eval()
            network.backbone = folded_for_inference(network.backbone, inference_probe(1, 96, 128, self.device))
            self._network = network
            log.info("delf %s from %s on %s, %s, %d dims", self.settings["backbone"], self.model_path, self.device,
                     "bfloat16" if self.bf16 else "float32", self._network.out_dim)
        return self._network

    @property
    def dim(self) -> int:
        return self.network().out_dim

    def preprocess(self, rgb: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        from ..networks.delf import shrink

        return shrink(rgb, int(self.settings["max_side"])), (rgb.shape[1], rgb.shape[0])

    def decoding_threads(self) -> int:
        from ..networks.compute import cpu_decoding_threads, pick_device

        return cpu_decoding_threads(pick_device())

    def describe(self, items: list[tuple[np.ndarray, tuple[int, int]]]) -> list[LocalFeatures]:
        import torch

        from ..networks.delf import describe_images

        network = self.network()
        images = [image for image, _ in items]
        found = describe_images(network, images, self.settings["scales"], int(self.settings["max_keypoints"]),
                                float(self.settings["min_attention"]), self.device, self.bf16)
        out = []
        for (image, size), keypoints in zip(items, found):
            with torch.inference_mode():
                descriptors = network.whiten(torch.from_numpy(keypoints.features).to(self.device)).cpu().numpy()
            to_original = np.array([size[0] / image.shape[1], size[1] / image.shape[0]], np.float32)
            xy = (keypoints.xy + 0.5) * to_original - 0.5
            out.append(LocalFeatures(xy.astype(np.float32), keypoints.scale.astype(np.float32),
                                     keypoints.attention.astype(np.float32), descriptors.astype(np.float32), size))
        return out

    @classmethod
    def train(cls, settings: dict[str, Any], images: pd.DataFrame, model_dir: Path,
              workers: int | None = None) -> dict[str, Any]:
        from ..train.delf import train_delf

        settings = {**cls.DEFAULTS, **settings}
        cls.check(settings)
        return train_delf(settings, images, Path(model_dir), workers)
