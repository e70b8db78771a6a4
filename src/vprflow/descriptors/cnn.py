"""Learned global descriptors: a torchvision backbone cut at its last conv + a pooling
(NetVLAD, GeM, MAC, SPoC) + optional PCA-whitening, trained or used off the shelf.

Settings (``models.<name>.*``) and their defaults are ``CNNDescriptor.DEFAULTS``; what each
means is in ``SETTINGS_HELP``. A model needs the train rule (``is_trainable``) when it is
fine-tuned (``train`` other than ``none``), uses NetVLAD (its centroids come from k-means
on training or database images, ``fit_on``) or whitening (``dim``: PCA on those images, or
learned from matching pairs of the train split).

torch and the networks are imported when a model is built, not when its settings are
checked: the scheduler checks every model's settings before any job runs.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..errors import InputError, SettingError
from ..logs import log
from ..networks.names import POOLINGS, PRECISIONS, WHITENINGS, check_backbone_name
from ..registry import one_of, positive_number, whole_number
from ..train import MODEL_FILE
from ..train.unsupervised import FIT_ON
from . import Descriptor

if TYPE_CHECKING:
    import torch

TRAIN_MODES = ("none", "triplet", "place", "name_category")

SETTINGS_HELP = {
    "backbone": "torchvision model name, cut at its last conv layer",
    "weights": "imagenet | none | path of a torchvision state dict or of a checkpoint this pipeline wrote",
    "pooling": "gem | mac | spoc | netvlad",
    "gem_p": "initial GeM exponent (learned when training)",
    "clusters": "NetVLAD clusters K (descriptor size K x channels)",
    "dim": "whitening output size (null: no whitening)",
    "whitening": "pca (on the fit_on images) | learned (Lw: from matching pairs of the train split)",
    "fit_on": "auto | train | database: images of NetVLAD's k-means and of PCA-whitening (auto: train if any)",
    "width": "network input width (images are resized to width x height)",
    "height": "network input height",
    "scales": "input scales whose descriptors are averaged, e.g. [1, 0.707, 0.5]",
    "query_scales": "scales of the query images (null: scales); database images keep scales",
    "query_flip": "also average each query scale's mirror image (flip averaging, queries only)",
    "precision": "auto (bf16 where the hardware has it natively) | fp32 | bf16",
    "train": "none | triplet (place recognition) | place (cross-entropy) | name_category (two heads)",
    "epochs": "maximum training epochs",
    "train_batch_size": "tuples (triplet) or images (classification) per optimiser step",
    "lr": "Adam learning rate",
    "lr_step": "epochs between learning-rate shrinks",
    "lr_gamma": "learning-rate factor at each shrink",
    "patience": "epochs without validation gain before stopping early",
    "checkpoint_every": "epochs between resumable checkpoints (also written at the best and last epoch)",
    "finetune_blocks": "backbone blocks with parameters trained, counted from the end; all for every block",
    "margin": "triplet margin (squared distances of L2-normalised descriptors)",
    "positive_radius_m": "positives: same place or within this distance",
    "negative_radius_m": "negatives: another place and beyond this distance",
    "negatives": "hard negatives per training tuple",
    "negative_pool": "null: the hardest negatives of the whole train split; a number: among that many random ones",
    "near_duplicate_similarity": "a positive whose 32x24 thumbnail correlates this much with the anchor's is a "
    "near-duplicate: never a training positive, left out of validation",
    "augment_views": "augmented copies (random resized crop, colour jitter) of each training image; 0: none",
    "augment_crop": "least share of the image area a random crop keeps",
    "augment_jitter": "brightness, contrast and saturation vary by a factor in 1 +- this",
    "fit_images": "fit_on images sampled for NetVLAD's k-means and for PCA-whitening",
    "seed": "seed of initialisation, sampling and training order",
}

DEFAULTS: dict[str, Any] = {
    "backbone": "mobilenet_v2",
    "weights": "imagenet",
    "pooling": "gem",
    "gem_p": 3.0,
    "clusters": 64,
    "dim": None,
    "whitening": "pca",
    "fit_on": "auto",
    "width": 320,
    "height": 240,
    "scales": [1.0],
    "query_scales": None,
    "query_flip": False,
    "precision": "auto",
    "train": "none",
    "epochs": 10,
    "train_batch_size": 4,
    "lr": 1e-4,
    "lr_step": 5,
    "lr_gamma": 0.5,
    "patience": 3,
    "checkpoint_every": 1,
    "finetune_blocks": 2,
    "margin": 0.1,
    "positive_radius_m": 10.0,
    "negative_radius_m": 25.0,
    "negatives": 10,
    "negative_pool": None,
    "near_duplicate_similarity": 0.9,
    "augment_views": 2,
    "augment_crop": 0.6,
    "augment_jitter": 0.3,
    "fit_images": 1000,
    "seed": 0,
}

_POSITIVE_INTEGERS = (
    "clusters",
    "width",
    "height",
    "epochs",
    "train_batch_size",
    "lr_step",
    "patience",
    "checkpoint_every",
    "negatives",
    "fit_images",
)


class CNNDescriptor(Descriptor):
    name = "cnn"
    DEFAULTS = DEFAULTS

    @staticmethod
    def check(settings: dict[str, Any]) -> None:
        """Raise SettingError naming the setting whose value is wrong."""
        check_backbone_name(settings["backbone"])
        one_of(settings, "pooling", POOLINGS)
        one_of(settings, "precision", PRECISIONS)
        one_of(settings, "train", TRAIN_MODES)
        one_of(settings, "whitening", WHITENINGS)
        one_of(settings, "fit_on", FIT_ON)
        for key in _POSITIVE_INTEGERS:
            whole_number(settings, key)
        for key in ("dim", "negative_pool"):
            if settings[key] is not None:
                whole_number(settings, key)
        whole_number(settings, "augment_views", minimum=0)
        positive_number(settings, "near_duplicate_similarity", maximum=1.0)
        positive_number(settings, "augment_crop", maximum=1.0)
        if not isinstance(settings["augment_jitter"], (int, float)) or not 0 <= settings["augment_jitter"] < 1:
            raise SettingError("augment_jitter", f"must be in [0, 1), got {settings['augment_jitter']!r}")
        if settings["finetune_blocks"] != "all":
            try:
                whole_number(settings, "finetune_blocks", minimum=0)
            except SettingError:
                raise SettingError("finetune_blocks", f"must be an integer >= 0 or 'all', got {settings['finetune_blocks']!r}") from None
        for key in ("scales", "query_scales"):
            scales = settings[key]
            if key == "query_scales" and scales is None:
                continue
            if not isinstance(scales, list) or not scales or not all(
                isinstance(s, (int, float)) and not isinstance(s, bool) and s > 0 for s in scales
            ):
                raise SettingError(key, f"must be a non-empty list of positive numbers, got {scales!r}")
        if not isinstance(settings["query_flip"], bool):
            raise SettingError("query_flip", f"must be true or false, got {settings['query_flip']!r}")
        for key in ("gem_p", "lr", "lr_gamma", "margin", "positive_radius_m", "negative_radius_m"):
            positive_number(settings, key)
        if settings["negative_radius_m"] < settings["positive_radius_m"]:
            raise SettingError(
                "negative_radius_m",
                f"{settings['negative_radius_m']} is below positive_radius_m {settings['positive_radius_m']}",
            )
        weights = settings["weights"]
        if not isinstance(weights, str) or not weights:
            raise SettingError("weights", "use imagenet, none or the path of a checkpoint file")
        if weights not in ("imagenet", "none") and not Path(weights).is_file():
            raise SettingError("weights", f"{weights} is not a file (use imagenet, none, or the path of a checkpoint)")

    @classmethod
    def is_trainable(cls, settings: dict[str, Any]) -> bool:
        s = {**cls.DEFAULTS, **settings}
        return s["train"] != "none" or s["pooling"] == "netvlad" or bool(s["dim"])

    def __init__(self, settings: dict[str, Any], model_dir: Path | None = None):
        super().__init__(settings, model_dir)
        self.check(self.settings)
        self.trained_path = Path(model_dir) / MODEL_FILE if model_dir else None
        if self.is_trainable(self.settings) and not (self.trained_path and self.trained_path.is_file()):
            raise InputError(
                f"descriptor cnn with train={self.settings['train']}, pooling={self.settings['pooling']}"
                f", dim={self.settings['dim']} must be trained first: no model.pt in {model_dir}"
            )
        from ..networks.compute import pick_device, use_bf16

        self.device = pick_device()
        self.bf16 = use_bf16(self.settings["precision"], self.device)
        self._network = None  # built on first encode, so DataLoader workers never carry it
        self._heads = None
        self.queries = False  # see for_queries

    def network(self) -> torch.nn.Module:
        if self._network is None:
            import torch

            from ..networks.compute import folded_for_inference, inference_probe
            from ..networks.network import build_network, load_network

            if self.is_trainable(self.settings):
                network = load_network(self.trained_path)
            else:  # untrained random weights (weights: none) are the seed's, the same in every job
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(int(self.settings["seed"]))
                    network = build_network(self.settings)
            network = network.to(self.device).to(memory_format=torch.channels_last).eval()
            probe = inference_probe(2, int(self.settings["height"]), int(self.settings["width"]), self.device)
            self._network = folded_for_inference(network, probe)
            log.info(
                "cnn %s/%s on %s, %s, %d dims",
                self.settings["backbone"],
                self.settings["pooling"],
                self.device,
                "bfloat16" if self.bf16 else "float32",
                self._network.out_dim,
            )
        return self._network

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        """The normalised float32 network input (resized and normalised in one pass, in the
        decoding threads: ``networks.pixels``)."""
        from ..networks.pixels import network_input

        return network_input(rgb, int(self.settings["width"]), int(self.settings["height"]))

    def decode_size(self) -> tuple[int, int]:
        return int(self.settings["width"]), int(self.settings["height"])

    def decoding_threads(self) -> int:
        from ..networks.compute import cpu_decoding_threads

        return cpu_decoding_threads(self.device)

    def encode(self, batch: np.ndarray) -> np.ndarray:
        import torch

        from ..networks.compute import autocast
        from ..networks.network import to_input

        network = self.network()
        scales, flip = self.settings["scales"], False
        if self.queries:
            scales, flip = self.settings["query_scales"] or scales, self.settings["query_flip"]
        with torch.inference_mode(), autocast(self.device, self.bf16):
            vectors = network.embed(to_input(batch, self.device), scales, flip)
        return vectors.float().cpu().numpy()

    def heads(self) -> dict[str, Any]:
        """The classification heads ``model.pt`` keeps (``train.classify.head_state``); {} when none."""
        if self._heads is None:
            from ..networks.network import load_checkpoint

            trained = self.is_trainable(self.settings) and self.trained_path is not None
            self._heads = load_checkpoint(self.trained_path).get("heads", {}) if trained else {}
        return self._heads

    def encode_with_heads(self, batch: np.ndarray, top: int = 5) -> tuple[np.ndarray, dict[str, list]]:
        heads = self.heads()
        if not heads:
            return self.encode(batch), {}
        import torch

        from ..networks.compute import autocast
        from ..networks.network import to_input
        from ..train.classify import head_probabilities

        network = self.network()
        with torch.inference_mode(), autocast(self.device, self.bf16):
            images = to_input(batch, self.device)
            pooled = network.pool(network.backbone(images))  # scale 1, what the heads were trained on
            if list(self.settings["scales"]) == [1.0]:  # embed's own steps at one scale, pooling shared
                vectors = network.whiten(torch.nn.functional.normalize(pooled, dim=1))
            else:
                vectors = network.embed(images, self.settings["scales"])
            labels = head_probabilities(heads, pooled, top)
        return vectors.float().cpu().numpy(), labels

    @classmethod
    def describes_queries_apart(cls, settings: dict[str, Any]) -> bool:
        s = {**cls.DEFAULTS, **settings}
        return s["query_flip"] or (s["query_scales"] is not None and s["query_scales"] != s["scales"])

    def for_queries(self) -> "CNNDescriptor":
        """This descriptor with the query-side scales and flip averaging (sharing the network)."""
        variant = copy.copy(self)
        variant.queries = True
        return variant

    @classmethod
    def train(cls, settings: dict[str, Any], images: pd.DataFrame, model_dir: Path,
              workers: int | None = None) -> dict[str, Any]:
        """Fit and fine-tune (``train.cnn``); classification models also get the precision@5
        of each head on the test split, by leave-one-out neighbours of the final descriptor."""
        from ..extract import encode_images
        from ..metrics.precision import leave_one_out_precision
        from ..train.classify import HEADS
        from ..train.cnn import train_cnn

        settings = {**cls.DEFAULTS, **settings}
        cls.check(settings)
        record = train_cnn(settings, images, Path(model_dir), workers)
        if settings["train"] in HEADS:
            test = images[images["split"] == "test"].reset_index(drop=True)
            vectors = encode_images(cls(settings, Path(model_dir)), list(test["abs_path"]), 32, workers)
            record["head_precision"] = []
            for head in HEADS[settings["train"]]:
                p5, n = leave_one_out_precision(vectors, test[head], 5) if len(test) else (float("nan"), 0)
                record["head_precision"].append({"head": head, "P@5": p5, "n": n})
                log.info("test precision@5 of head %s: %.4f over %d images", head, p5, n)
        return record
