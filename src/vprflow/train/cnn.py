"""Training of a ``cnn`` descriptor, start to end, into its model folder.

1. the frozen layers' output for the train and val images, once (``trunk.npy``);
2. NetVLAD: centroids by k-means (faiss) on local descriptors of training images;
3. fine-tuning (``train``: triplet / place / name_category) with validation, early
   stopping, checkpoints and resume (``loop.fit``);
4. PCA-whitening (``dim``) on descriptors of training images from the best network;
5. ``model.pt`` (what extraction loads), ``precision.tsv`` for classification models,
   and last ``trained.json``, the rule's output.

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

from ..clustering import kmeans_centroids
from ..errors import InputError
from ..logs import log
from ..models.backbones import frozen_depth
from ..models.compute import pick_device, use_bf16
from ..models.network import RetrievalNet, build_network, save_checkpoint
from . import write_record
from .classify import HEADS, ClassificationObjective
from .evaluate import encode_images, precision_at_k
from .loop import VALIDATION_METRIC, fit, training_fingerprint
from .pairs import Relations, recall_at
from .triplet import DESCRIBE_BATCH, TripletObjective
from .trunk import build_trunk_cache, describe, local_descriptors

KMEANS_ITERATIONS = 25
LOCAL_SAMPLES_PER_IMAGE = 32


def train_cnn(settings: dict[str, Any], images: pd.DataFrame, out_dir: Path, workers: int | None = None) -> None:
    started = time.time()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "trained.json").unlink(missing_ok=True)
    device = pick_device()
    bf16 = use_bf16(settings["precision"], device)
    mode = settings["train"]
    train_images = images[images["split"] == "train"].reset_index(drop=True)
    val_images = images[images["split"] == "val"].reset_index(drop=True)
    if train_images.empty:
        raise InputError("split.fractions.train: the train split is empty, but this model needs training images")
    log.info(
        "training %s on %s (%s): %d train, %d val images",
        out_dir.name,
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
        out_dir,
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
        "model": out_dir.name,
        "descriptor": "cnn",
        "train": mode,
        "device": str(device),
        "bf16": bf16,
        "n_train": len(train_images),
        "n_val": len(val_images),
    }
    if settings["pooling"] == "netvlad":
        record["netvlad_alpha"] = _initialise_netvlad(network, tuned, trunk, fit_rows, settings, rng, device, bf16)
    if mode != "none":
        record.update(_fine_tune(network, tuned, trunk, train_images, val_images, settings, out_dir, device, bf16))
    if network.whitening is not None:
        pooled = describe(network, tuned, trunk, fit_rows, device, bf16, DESCRIBE_BATCH)
        limit = min(len(pooled) - 1, network.pooled_dim)
        if network.whitening.projection.shape[0] > limit:
            raise InputError(
                f"dim: {settings['dim']} is more than the {limit} directions PCA can learn from "
                f"{len(pooled)} training images of {network.pooled_dim} dims; lower dim or add images"
            )
        network.whitening.fit(pooled)
    save_checkpoint(out_dir / "model.pt", network, settings)
    if mode in HEADS:
        _write_precision(settings, images, out_dir, mode, workers)
    record.update({"out_dim": network.out_dim, "seconds": round(time.time() - started, 1), "settings": settings})
    write_record(out_dir, record)
    log.info(
        "trained %s in %.0f s: %s",
        out_dir.name,
        time.time() - started,
        {k: v for k, v in record.items() if k in ("best_epoch", VALIDATION_METRIC, "validation")},
    )


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
    out_dir: Path,
    device,
    bf16,
) -> dict[str, Any]:
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
        return recall_at(describe(network, tuned, trunk, val_rows, device, bf16, DESCRIBE_BATCH), val_relations)

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
        out_dir,
        fingerprint,
    )
    best = next(row for row in progress.history if row["epoch"] == progress.best_epoch)
    return {
        "best_epoch": progress.best_epoch,
        "epochs_run": progress.epoch,
        VALIDATION_METRIC: progress.best_metric,
        "validation": {k[4:]: v for k, v in best.items() if k.startswith("val_R@")},
    }


def _write_precision(settings, images: pd.DataFrame, out_dir: Path, mode: str, workers) -> None:
    """Precision@5 per head on the test split: leave-one-out neighbours by the final descriptor."""
    from ..descriptors.cnn import CNNDescriptor

    test = images[images["split"] == "test"].reset_index(drop=True)
    own = {k: v for k, v in settings.items() if k != "descriptor"}
    vectors = encode_images(CNNDescriptor(own, out_dir), list(test["abs_path"]), DESCRIBE_BATCH, workers)
    rows = []
    for head in HEADS[mode]:
        p5, n = precision_at_k(vectors, test[head], 5) if len(test) else (float("nan"), 0)
        rows.append({"model": out_dir.name, "head": head, "P@5": p5, "n": n})
        log.info("%s: test precision@5 of head %s: %.4f over %d images", out_dir.name, head, p5, n)
    pd.DataFrame(rows).to_csv(out_dir / "precision.tsv", sep="\t", index=False, float_format="%.4f")
