"""Training of a ``delf`` model in DELF's two steps, then its PCA-whitening.

1. *Fine-tuning*: the last ``finetune_blocks`` blocks of the cut backbone learn to
   classify the training images' ``label`` (place or landmark) from the mean of the
   L2-normalised feature map, through a cosine classifier.
2. *Attention*: the backbone frozen, the attention network learns the same
   classification from the attention-weighted mean of the normalised feature map: the
   locations that tell the classes apart get the high scores.
3. *Whitening*: PCA-whitening to ``dim``, fitted on the keypoints that the trained network
   picks (image pyramid, top ``max_keypoints`` by attention) in ``fit_images`` training images.

Each step runs ``train.loop.fit`` (validation recall of the step's pooled descriptor on
the val split, step learning rate, early stopping, checkpoints, exact resume after a kill)
with its own state under ``work/finetune`` and ``work/attention``; the frozen layers'
output is cached once per step (``train.trunk``). The curves of both steps go to
``curves.csv`` (a ``step`` column) and ``curves.png``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..images import iter_batches
from ..logs import log, progress
from ..networks.backbones import frozen_depth
from ..networks.compute import autocast, pick_device, use_bf16
from ..networks.delf import CHECKPOINT_KIND, DelfNet, L2Normalise, build_delf, describe_images, shrink
from ..networks.network import save_checkpoint
from . import MODEL_FILE, WORK_DIR
from .classify import CosineClassifier, class_codes
from .loop import VALIDATION_METRIC, fit, training_fingerprint
from .pairs import Relations, validation_metrics
from .trunk import TrunkCache, build_trunk_cache

STEPS = ("finetune", "attention")
DESCRIBE_BATCH = 32
PCA_IMAGE_BATCH = 8


class _Step:
    """One training step: what it tunes, how it pools a cached feature batch, its head."""

    def __init__(self, name: str, tuned: nn.Module, pool: Callable[[torch.Tensor], torch.Tensor],
                 parameters: list[nn.Parameter], channels: int, n_classes: int, lr: float, device: torch.device):
        self.name, self.tuned, self.pool = name, tuned, pool
        self.heads = nn.ModuleDict({"label": CosineClassifier(channels, n_classes)}).to(device)
        self.optimiser = torch.optim.Adam(parameters + list(self.heads.parameters()), lr=lr)


def train_delf(settings: dict[str, Any], images: pd.DataFrame, model_dir: Path,
               workers: int | None = None) -> dict[str, Any]:
    """Train into ``model_dir`` (see the module docstring); return the training record."""
    started = time.time()
    work = model_dir / WORK_DIR
    work.mkdir(parents=True, exist_ok=True)
    device = pick_device()
    bf16 = use_bf16(settings["precision"], device)
    train_images = images[images["split"] == "train"].reset_index(drop=True)
    val_images = images[images["split"] == "val"].reset_index(drop=True)
    if train_images.empty:
        raise InputError("split.fractions.train: the train split is empty, but a delf model trains there "
                         "(or give it a trained checkpoint)")
    label = settings["label"]
    if label not in train_images.columns:
        raise InputError(f"label: the manifest has no column {label!r}; use one of place, name, category")
    labels, _ = class_codes(train_images[label], label)
    n_classes = int(labels.max()) + 1
    log.info("training delf %s on %s (%s): %d train images of %d %s classes, %d val images", model_dir.name, device,
             "bfloat16" if bf16 else "float32", len(train_images), n_classes, label, len(val_images))

    torch.manual_seed(int(settings["seed"]))
    network = build_delf(settings).to(device).to(memory_format=torch.channels_last).eval()
    paths = list(train_images["abs_path"]) + list(val_images["abs_path"])
    ids = list(train_images["image_id"]) + list(val_images["image_id"])
    size = (int(settings["width"]), int(settings["height"]))
    radii = (float(settings["positive_radius_m"]), float(settings["negative_radius_m"]))
    val_relations, val_rows = Relations(val_images, *radii), len(train_images) + np.arange(len(val_images))
    if not len(val_relations.anchors()):
        log.warning("no validation image has a positive: early stopping watches the train split")
        val_relations, val_rows = Relations(train_images, *radii), np.arange(len(train_images))
    record: dict[str, Any] = {"device": str(device), "bf16": bf16, "n_train": len(train_images),
                              "n_val": len(val_images), "n_classes": n_classes}
    histories = {}

    def run(step: _Step, trunk: TrunkCache, epochs: int) -> None:
        step_settings = {**settings, "epochs": epochs, "lr": step.optimiser.param_groups[0]["lr"]}
        fingerprint = {"step": step.name, "backbone": _checksum(network.backbone),
                       **training_fingerprint(step_settings, ids)}
        outcome = fit(network, step.heads, lambda epoch, rng: _epoch(step, trunk, labels, epoch, rng, settings,
                                                                        device, bf16),
                        lambda: validation_metrics(_describe(step, trunk, val_rows, device, bf16), val_relations),
                        step.optimiser, step_settings, work / step.name, fingerprint)
        histories[step.name] = outcome.history
        best = next(row for row in outcome.history if row["epoch"] == outcome.best_epoch)
        record[step.name] = {"best_epoch": outcome.best_epoch, "epochs_run": outcome.epoch,
                             VALIDATION_METRIC: outcome.best_metric,
                             "validation": {k[4:]: v for k, v in best.items() if k.startswith("val_")}}

    if int(settings["finetune_epochs"]) > 0:
        depth = frozen_depth(network.backbone, int(settings["finetune_blocks"]))
        frozen, tuned = network.backbone[:depth], network.backbone[depth:]
        frozen.requires_grad_(False)
        trunk = _trunk(frozen, paths, size, work / "finetune", settings, depth, device, bf16, workers)
        step = _Step("finetune", tuned, lambda features: F.normalize(features.float().mean(dim=(2, 3)), dim=1),
                     [p for p in tuned.parameters() if p.requires_grad], network.channels, n_classes,
                     float(settings["lr"]), device)
        run(step, trunk, int(settings["finetune_epochs"]))

    network.backbone.requires_grad_(False)
    # the attention sees unit-length features only: cached so, they also fit float16 whatever
    # scale fine-tuning gave the activations
    trunk = _trunk(nn.Sequential(network.backbone, L2Normalise()), paths, size, work / "attention", settings,
                   len(network.backbone), device, bf16, workers, backbone=_checksum(network.backbone))
    step = _Step("attention", nn.Identity(), network.attention_pool, list(network.attention.parameters()),
                 network.channels, n_classes, float(settings["attention_lr"]), device)
    run(step, trunk, int(settings["attention_epochs"]))

    if network.whitening is not None:
        record["pca_keypoints"] = _fit_whitening(network, train_images, settings, device, bf16, workers)
    save_checkpoint(model_dir / MODEL_FILE, network, settings, kind=CHECKPOINT_KIND)
    write_curves(histories, model_dir)
    record["out_dim"] = network.out_dim
    log.info("trained delf %s in %.0f s: %s", model_dir.name, time.time() - started,
             {s: record[s]["validation"] for s in STEPS if s in record})
    return record


def _checksum(module: nn.Module) -> float:
    """A number that changes when the weights do (tells the attention step's cache which backbone it holds)."""
    with torch.no_grad():
        return round(float(sum(p.double().abs().sum() for p in module.parameters())), 6)


def _trunk(frozen: nn.Module, paths, size, folder: Path, settings, depth: int, device, bf16, workers,
           **identity) -> TrunkCache:
    folder.mkdir(parents=True, exist_ok=True)
    fingerprint = {k: settings[k] for k in ("backbone", "weights", "seed")} | {"depth": depth, "bf16": bf16,
                                                                              **identity}
    return build_trunk_cache(frozen, paths, size, folder, fingerprint, device, bf16, DESCRIBE_BATCH, workers)


def _epoch(step: _Step, trunk: TrunkCache, labels: np.ndarray, epoch: int, rng: np.random.Generator,
           settings: dict[str, Any], device, bf16) -> float:
    """One pass over the labelled training rows (the first rows of the cache), shuffled."""
    rows = np.flatnonzero(labels >= 0)
    order = rows[rng.permutation(len(rows))]
    batch_size, total = int(settings["train_batch_size"]), 0.0
    starts = range(0, len(order), batch_size)
    for start in progress(starts, desc=f"{step.name} epoch {epoch}", total=len(starts), unit="batch"):
        batch = order[start : start + batch_size]
        with autocast(device, bf16):
            features = step.tuned(trunk.batch(batch, device))
        logits = step.heads["label"](step.pool(features))
        loss = F.cross_entropy(logits.float(), torch.from_numpy(labels[batch]).to(device))
        step.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        step.optimiser.step()
        total += loss.item() * len(batch)
    return total / max(len(order), 1)


def _describe(step: _Step, trunk: TrunkCache, rows: np.ndarray, device, bf16) -> np.ndarray:
    """The step's pooled, L2-normalised descriptor of cache ``rows`` (the validation descriptor)."""
    parts = []
    with torch.no_grad():
        for start in range(0, len(rows), DESCRIBE_BATCH):
            with autocast(device, bf16):
                features = step.tuned(trunk.batch(rows[start : start + DESCRIBE_BATCH], device))
            parts.append(F.normalize(step.pool(features).float(), dim=1).cpu().numpy())
    return np.concatenate(parts) if parts else np.zeros((0, 1), np.float32)


def _fit_whitening(network: DelfNet, train_images: pd.DataFrame, settings, device, bf16, workers) -> int:
    """PCA-whitening on the keypoints the trained network picks in a seeded sample of training images."""
    rng = np.random.default_rng(int(settings["seed"]))
    n = min(int(settings["fit_images"]), len(train_images))
    paths = list(train_images["abs_path"].to_numpy()[np.sort(rng.choice(len(train_images), n, replace=False))])
    max_side = int(settings["max_side"])
    samples = []
    batches = iter_batches(paths, lambda rgb: shrink(rgb, max_side), PCA_IMAGE_BATCH, workers)
    for indices, images, errors in progress(batches, desc="whitening keypoints", total=-(-n // PCA_IMAGE_BATCH),
                                            unit="batch"):
        for i, image, error in zip(indices, images, errors):
            if image is None:
                raise InputError(f"training image {paths[i]} cannot be decoded: {error}")
        found = describe_images(network, images, settings["scales"], int(settings["max_keypoints"]),
                                float(settings["min_attention"]), device, bf16)
        samples += [keypoints.features for keypoints in found]
    samples = np.concatenate(samples)
    dim = network.whitening.projection.shape[0]
    if len(samples) <= dim:
        raise InputError(f"dim: {dim} needs more than {dim} keypoints to fit the whitening; {n} training images "
                         f"gave {len(samples)}: lower dim or raise fit_images")
    network.whitening.fit(samples)
    log.info("delf whitening: %d -> %d dims from %d keypoints of %d training images", network.channels, dim,
             len(samples), n)
    return len(samples)


def write_curves(histories: dict[str, list[dict]], model_dir: Path) -> None:
    """``curves.csv`` with a ``step`` column, and ``curves.png``: loss, validation mAP (what early
    stopping watches) and recall of each step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = pd.concat([pd.DataFrame(h).assign(step=name) for name, h in histories.items()], ignore_index=True)
    table.insert(0, "step", table.pop("step"))
    table.to_csv(model_dir / "curves.csv", index=False, float_format="%.6g")
    figure, axes = plt.subplots(1, 2 * len(histories), figsize=(4.5 * 2 * len(histories), 3.5), squeeze=False)
    for k, (name, history) in enumerate(histories.items()):
        part = pd.DataFrame(history)
        loss_axis, val_axis = axes[0, 2 * k], axes[0, 2 * k + 1]
        loss_axis.plot(part["epoch"], part["train_loss"], marker="o")
        loss_axis.set(xlabel="epoch", ylabel="train loss (cross-entropy)", title=f"step {k + 1}: {name}")
        for column in [c for c in part.columns if c.startswith("val_")]:
            val_axis.plot(part["epoch"], part[column], marker="o", label=column[4:])
        val_axis.set(xlabel="epoch", ylabel="validation mAP, recall", title=f"step {k + 1}: {name}, validation",
                     ylim=(0, 1.02))
        val_axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(model_dir / "curves.png", dpi=100)
    plt.close(figure)
