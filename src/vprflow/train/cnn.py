"""Training of a ``cnn`` descriptor, start to end, into its model folder.

1. the frozen layers' output for the train and val images (with augmented views of the
   train images) and for the images unsupervised fits use, once (``work/trunk.npy``);
2. NetVLAD: centroids by k-means (faiss) on local descriptors of the ``fit_on`` images
   (``vprflow.train.unsupervised``: the train split, or the database without one);
3. fine-tuning (``train``: triplet / place / name_category) with validation (mAP, near-
   duplicates left out), early stopping, checkpoints and resume (``loop.fit``);
4. whitening (``dim``) from the best network: PCA on descriptors of the ``fit_on``
   images, or learned from matching pairs of the train split (``whitening: learned``);
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
from .augment import Augmentation
from .pairs import Relations, thumbnails, validation_metrics
from .triplet import DESCRIBE_BATCH, TripletObjective
from .trunk import build_trunk_cache, describe, local_descriptors
from .unsupervised import fitting_images

KMEANS_ITERATIONS = 25
LOCAL_SAMPLES_PER_IMAGE = 32


def train_cnn(settings: dict[str, Any], images: pd.DataFrame, model_dir: Path,
              workers: int | None = None) -> dict[str, Any]:
    """Train into ``model_dir`` (see the module docstring); return the training record.

    ``images`` have ``abs_path``, ``split``, ``is_query``, ``is_database`` and the labels."""
    started = time.time()
    work = model_dir / WORK_DIR
    work.mkdir(parents=True, exist_ok=True)
    device = pick_device()
    bf16 = use_bf16(settings["precision"], device)
    mode = settings["train"]
    learned_whitening = bool(settings["dim"]) and settings["whitening"] == "learned"
    train_images = images[images["split"] == "train"].reset_index(drop=True)
    val_images = images[images["split"] == "val"].reset_index(drop=True)
    if train_images.empty and (mode != "none" or learned_whitening):
        raise InputError("split.fractions.train: the train split is empty, but this model needs training images"
                         + (" (fine-tuning)" if mode != "none" else " (whitening: learned needs matching pairs)"))
    cached = pd.concat([train_images, val_images], ignore_index=True)
    fit_rows = np.zeros(0, np.int64)
    fit_on = None
    unsupervised = [what for what, used in (("NetVLAD centroids", settings["pooling"] == "netvlad"),
                                            ("PCA-whitening", settings["dim"] and not learned_whitening)) if used]
    if unsupervised:
        fitting, fit_on = fitting_images(images, settings["fit_on"], " and ".join(unsupervised))
        cached = pd.concat([cached, fitting[~fitting["image_id"].isin(cached["image_id"])]], ignore_index=True)
        fit_rows = np.flatnonzero(cached["image_id"].isin(fitting["image_id"]).to_numpy())
    log.info(
        "training %s on %s (%s): %d train, %d val images; %d images cached",
        model_dir.name,
        device,
        "bfloat16" if bf16 else "float32",
        len(train_images),
        len(val_images),
        len(cached),
    )

    torch.manual_seed(int(settings["seed"]))
    network = build_network(settings).to(device).to(memory_format=torch.channels_last).eval()
    depth = frozen_depth(network.backbone, settings["finetune_blocks"]) if mode != "none" else len(network.backbone)
    frozen, tuned = network.backbone[:depth], network.backbone[depth:]
    frozen.requires_grad_(False)
    augmentation = Augmentation(int(settings["augment_views"]), float(settings["augment_crop"]),
                                float(settings["augment_jitter"]), int(settings["seed"]))
    trunk = build_trunk_cache(
        frozen,
        list(cached["abs_path"]),
        (int(settings["width"]), int(settings["height"])),
        work,
        {k: settings[k] for k in ("backbone", "weights", "seed")} | {"depth": depth, "bf16": bf16},
        device,
        bf16,
        DESCRIBE_BATCH,
        workers,
        augmentation if mode != "none" else Augmentation(),
        len(train_images),
    )
    rng = np.random.default_rng(int(settings["seed"]))
    fit_rows = np.sort(rng.choice(fit_rows, size=min(int(settings["fit_images"]), len(fit_rows)), replace=False))
    record: dict[str, Any] = {
        "train": mode,
        "device": str(device),
        "bf16": bf16,
        "n_train": len(train_images),
        "n_val": len(val_images),
    }
    if fit_on:
        record.update(fit_on=fit_on, n_fit_images=len(fit_rows))
    if settings["pooling"] == "netvlad":
        record["netvlad_alpha"] = _initialise_netvlad(network, tuned, trunk, fit_rows, settings, rng, device, bf16)
    train_relations = None
    heads = {}
    if mode != "none" or learned_whitening:
        train_relations, val_relations = _relations(train_images, val_images, settings, workers)
    if mode != "none":
        tuning, heads = _fine_tune(network, tuned, trunk, train_images, val_images, train_relations, val_relations,
                                   settings, model_dir, device, bf16)
        record.update(tuning)
    if network.whitening is not None:
        record["whitening"] = _fit_whitening(network, tuned, trunk, fit_rows, train_relations, settings, device, bf16)
    save_checkpoint(model_dir / MODEL_FILE, network, settings, heads=heads)
    record["out_dim"] = network.out_dim
    log.info(
        "trained %s in %.0f s: %s",
        model_dir.name,
        time.time() - started,
        {k: v for k, v in record.items() if k in ("best_epoch", VALIDATION_METRIC, "validation")},
    )
    return record


def _relations(train_images: pd.DataFrame, val_images: pd.DataFrame, settings: dict[str, Any],
               workers: int | None) -> tuple[Relations, Relations]:
    """Positives and negatives of the train and val images, near-duplicates marked by thumbnails."""
    radii = (float(settings["positive_radius_m"]), float(settings["negative_radius_m"]))
    thumbs = thumbnails(list(train_images["abs_path"]) + list(val_images["abs_path"]), workers)
    similar = float(settings["near_duplicate_similarity"])
    return (Relations(train_images, *radii, thumbs[: len(train_images)], similar),
            Relations(val_images, *radii, thumbs[len(train_images) :], similar))


def _fit_whitening(network: RetrievalNet, tuned, trunk, fit_rows, train_relations, settings, device, bf16) -> dict:
    """PCA-whitening on the fit images, or Lw on the train split's matching pairs."""
    if settings["whitening"] == "learned":
        pairs = train_relations.positive_pairs()
        if not len(pairs):
            raise InputError("whitening: learned whitening needs matching pairs in the train split (positives that "
                             "are not near-duplicates); it has none: use whitening: pca")
        rows = np.unique(pairs)
        pooled = describe(network, tuned, trunk, rows, device, bf16, DESCRIBE_BATCH)
        _check_whitening_size(settings, network, len(pooled), "learned whitening")
        pairs = np.searchsorted(rows, pairs)  # rows of ``pooled``
        network.whitening.fit_learned(pooled, pairs)
        log.info("learned whitening to %d dims from %d matching pairs of %d images", network.out_dim, len(pairs),
                 len(rows))
        return {"method": "learned", "n_pairs": int(len(pairs)), "n_images": int(len(rows))}
    pooled = describe(network, tuned, trunk, fit_rows, device, bf16, DESCRIBE_BATCH)
    _check_whitening_size(settings, network, len(pooled), "PCA")
    warning = few_images_for_pca(len(pooled), network.out_dim)
    if warning:
        log.warning(warning)
    network.whitening.fit(pooled)
    return {"method": "pca", "n_images": int(len(pooled))}


PCA_IMAGES_PER_DIM = 10
"""Below this many fit images per whitened dimension, PCA-whitening scales up directions that
are mostly noise. Measured: GeM to 48 dims fitted on 250 paris5 photos, mAP 0.782 -> 0.354;
on 56 ukbench photos, R@1 1.000 -> 0.500; the demo's NetVLAD to 256 dims on 480 images,
R@1 0.738 -> 0.663."""


def few_images_for_pca(n_images: int, dim: int) -> str | None:
    """The warning for PCA-whitening to ``dim`` fitted on ``n_images`` images, or None when
    there are enough (``PCA_IMAGES_PER_DIM`` per dimension)."""
    if n_images >= PCA_IMAGES_PER_DIM * dim:
        return None
    return (f"PCA-whitening to {dim} dims fitted on {n_images} images (fewer than {PCA_IMAGES_PER_DIM} per "
            f"dimension): its weakest directions are mostly noise, which whitening scales up and which often "
            f"costs recall; lower dim (e.g. {max(1, n_images // PCA_IMAGES_PER_DIM)}), add fit images, or set "
            f"dim: null")


def _check_whitening_size(settings, network: RetrievalNet, n_images: int, what: str) -> None:
    limit = min(n_images - 1, network.pooled_dim)
    if network.whitening.projection.shape[0] > limit:
        raise InputError(
            f"dim: {settings['dim']} is more than the {limit} directions {what} can learn from "
            f"{n_images} images of {network.pooled_dim} dims; lower dim or add images"
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
    train_relations: Relations,
    val_relations: Relations,
    settings: dict[str, Any],
    model_dir: Path,
    device,
    bf16,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the record of fine-tuning, the best epoch's classification heads as ``head_state``; empty for triplets)."""
    mode = settings["train"]
    if mode == "triplet":
        if not len(train_relations.anchors()):
            raise InputError(
                "train: triplet training needs training images with positives (same place or within "
                f"positive_radius_m = {settings['positive_radius_m']}) that are not near-duplicates "
                f"(near_duplicate_similarity = {settings['near_duplicate_similarity']}); the train split has none"
            )
        objective = TripletObjective(network, tuned, trunk, train_relations, settings, device, bf16)
    else:
        objective = ClassificationObjective(network, tuned, trunk, train_images, mode, settings, device, bf16)
    val_rows = len(train_images) + np.arange(len(val_images))
    if not len(val_relations.anchors()):
        log.warning("no validation image has a positive that is not a near-duplicate: early stopping watches "
                    "the train split")
        val_relations, val_rows = train_relations, np.arange(len(train_images))

    def validate() -> dict[str, float]:
        return validation_metrics(describe(network, tuned, trunk, val_rows, device, bf16, DESCRIBE_BATCH),
                                  val_relations)

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
        "validation": {k[4:]: v for k, v in best.items() if k.startswith("val_")},
    }
    classes = getattr(objective, "classes", {})
    return record, head_state(objective.heads, classes) if classes else {}
