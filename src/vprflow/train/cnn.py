"""Training of a ``cnn`` descriptor, start to end, into its model folder.

1. the frozen layers' output for the train and val images, once (``work/trunk.npy``);
2. NetVLAD: centroids by k-means (faiss) on local descriptors of training images;
3. fine-tuning (``train``: triplet / place / name_category) with validation, early
   stopping, checkpoints and resume (``loop.fit``);
4. PCA-whitening (``dim``) on descriptors of training images from the best network;
5. ``model.pt``, what extraction loads (with the classification heads, when trained with
   them); the training record is returned.

BatchNorm statistics stay as the backbone brought them (the network is kept in eval
mode): batches of a few tuples are too small to estimate them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..errors import InputError
from ..logs import log
from ..networks.backbones import frozen_depth
from ..networks.compute import pick_device, use_bf16
from ..networks.network import RetrievalNet, build_network, save_checkpoint
from ..vectors import kmeans_centroids
from . import MODEL_FILE, WORK_DIR
from .classify import ClassificationObjective, head_state
from .loop import VALIDATION_METRIC, fit, training_fingerprint
from .pairs import Relations, validation_recall
from .triplet import DESCRIBE_BATCH, TripletObjective
from .trunk import build_trunk_cache, describe, local_descriptors

KMEANS_ITERATIONS = 25
LOCAL_SAMPLES_PER_IMAGE = 32


def train_cnn(settings: dict[str, Any], images: pd.DataFrame, model_dir: Path,
              workers: int | None = None) -> dict[str, Any]:
    """Train into ``model_dir`` (see the module docstring); return the training record."""
    started = time.time()
    work = model_dir / WORK_DIR
    work.mkdir(parents=True, exist_ok=True)
    device = pick_device()
    bf16 = use_bf16(settings["precision"], device)
    mode = settings["train"]
    train_images = images[images["split"] == "train"].reset_index(drop=True)
    val_images = images[images["split"] == "val"].reset_index(drop=True)
    if train_images.empty:
        raise InputError("split.fractions.train: the train split is empty, but this model needs training images")
    log.info(
        "training %s on %s (%s): %d train, %d val images",
        model_dir.name,
        device,
        "bfloat16" if bf16 else "float32",
        len(train_images),
        len(val_images),
    )

    torch.manual_seed(int(settings["seed"]))
    network = build_network(settings).to(device).to(memory_format=torch.channels_last).eval()
    depth = frozen_depth(network.backbone, settings["finetune_blocks"]) if mode != "none" else len(network.backbone)
    frozen, tuned = network.backbone[:depth], network.backbone[depth:]
    frozen.requires_grad_(False)
    paths = list(train_images["abs_path"]) + list(val_images["abs_path"])
    trunk = build_trunk_cache(
        frozen,
        paths,
        (int(settings["width"]), int(settings["height"])),
        work,
        {k: settings[k] for k in ("backbone", "weights", "seed")} | {"depth": depth, "bf16": bf16},
        device,
        bf16,
        DESCRIBE_BATCH,
        workers,
    )
    train_rows = np.arange(len(train_images))
    rng = np.random.default_rng(int(settings["seed"]))
    fit_rows = np.sort(rng.choice(train_rows, size=min(int(settings["fit_images"]), len(train_rows)), replace=False))
    record: dict[str, Any] = {
        "train": mode,
        "device": str(device),
        "bf16": bf16,
        "n_train": len(train_images),
        "n_val": len(val_images),
    }
    if settings["pooling"] == "netvlad":
        record["netvlad_alpha"] = _initialise_netvlad(network, tuned, trunk, fit_rows, settings, rng, device, bf16)
    heads = {}
    if mode != "none":
        tuning, heads = _fine_tune(network, tuned, trunk, train_images, val_images, settings, model_dir, device, bf16)
        record.update(tuning)
    if network.whitening is not None:
        pooled = describe(network, tuned, trunk, fit_rows, device, bf16, DESCRIBE_BATCH)
        limit = min(len(pooled) - 1, network.pooled_dim)
        if network.whitening.projection.shape[0] > limit:
            raise InputError(
                f"dim: {settings['dim']} is more than the {limit} directions PCA can learn from "
                f"{len(pooled)} training images of {network.pooled_dim} dims; lower dim or add images"
            )
        network.whitening.fit(pooled)
    save_checkpoint(model_dir / MODEL_FILE, network, settings, heads=heads)
    record["out_dim"] = network.out_dim
    log.info(
        "trained %s in %.0f s: %s",
        model_dir.name,
        time.time() - started,
        {k: v for k, v in record.items() if k in ("best_epoch", VALIDATION_METRIC, "validation")},
    )
    return record


def _initialise_netvlad(network: RetrievalNet, tuned, trunk, rows, settings, rng, device, bf16) -> float:
    """Centroids by k-means on sampled local descriptors, as the NetVLAD paper does."""
    samples = local_descriptors(tuned, trunk, rows, LOCAL_SAMPLES_PER_IMAGE, rng, device, bf16, DESCRIBE_BATCH)
    clusters = int(settings["clusters"])
    if len(samples) < clusters:
        raise InputError(
            f"clusters: {clusters} NetVLAD clusters need at least as many local descriptors; "
            f"the training images give {len(samples)}"
        )
    centroids = kmeans_centroids(samples, clusters, iterations=KMEANS_ITERATIONS, seed=int(settings["seed"]))
    alpha = network.pooling.initialise(centroids, samples)
    log.info("NetVLAD: %d centroids from k-means of %d local descriptors, alpha %.1f", clusters, len(samples), alpha)
    return alpha


def _fine_tune(
    network: RetrievalNet,
    tuned,
    trunk,
    train_images: pd.DataFrame,
    val_images: pd.DataFrame,
    settings: dict[str, Any],
    model_dir: Path,
    device,
    bf16,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the record of fine-tuning, the best epoch's classification heads as ``head_state``; empty for triplets)."""
    radii = (float(settings["positive_radius_m"]), float(settings["negative_radius_m"]))
    mode = settings["train"]
    train_relations = Relations(train_images, *radii)
    if mode == "triplet":
        if not len(train_relations.anchors()):
            raise InputError(
                "train: triplet training needs training images with positives (same place or within "
                f"positive_radius_m = {radii[0]}); the train split has none"
            )
        objective = TripletObjective(network, tuned, trunk, train_relations, settings, device, bf16)
    else:
        objective = ClassificationObjective(network, tuned, trunk, train_images, mode, settings, device, bf16)
    val_relations, val_rows = Relations(val_images, *radii), len(train_images) + np.arange(len(val_images))
    if not len(val_relations.anchors()):
        log.warning("no validation image has a positive: early stopping watches recall on the train split")
        val_relations, val_rows = train_relations, np.arange(len(train_images))

    def validate() -> dict[str, float]:
        return validation_recall(describe(network, tuned, trunk, val_rows, device, bf16, DESCRIBE_BATCH), val_relations)

    parameters = [p for p in list(tuned.parameters()) + list(network.pooling.parameters()) if p.requires_grad]
    optimiser = torch.optim.Adam(parameters + list(objective.heads.parameters()), lr=float(settings["lr"]))
    fingerprint = training_fingerprint(settings, list(train_images["image_id"]) + list(val_images["image_id"]))
    progress = fit(
        network,
        objective.heads,
        lambda epoch, rng: objective.run_epoch(epoch, rng, optimiser),
        validate,
        optimiser,
        settings,
        model_dir,
        fingerprint,
    )
    best = next(row for row in progress.history if row["epoch"] == progress.best_epoch)
    record = {
        "best_epoch": progress.best_epoch,
        "epochs_run": progress.epoch,
        VALIDATION_METRIC: progress.best_metric,
        "validation": {k[4:]: v for k, v in best.items() if k.startswith("val_R@")},
    }
    classes = getattr(objective, "classes", {})
    return record, head_state(objective.heads, classes) if classes else {}
