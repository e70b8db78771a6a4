"""The epoch loop every objective shares: step LR, early stopping on validation,
checkpoints, resume after a kill, curves.

Resuming is exact: each epoch draws its randomness from ``(seed, epoch)`` alone, and the
last checkpoint holds the network, heads, optimiser, scheduler, early-stopping state and
the best weights so far. So a run killed at any point and rerun ends where an
uninterrupted run ends (bit for bit on CPU).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..logs import log
from ..networks.network import load_checkpoint, save_checkpoint
from . import WORK_DIR
from .curves import Curves

VALIDATION_METRIC = "val_mAP"
"""Validation mAP over held-out places, near-duplicates left out (``pairs.validation_metrics``):
it keeps moving where recall of a near neighbour is 1 from the first epoch."""

NOT_IN_FINGERPRINT = ("epochs", "patience", "checkpoint_every", "dim", "scales")
"""Settings a run may change and still resume: they do not alter the epochs already done."""


@dataclass
class Progress:
    epoch: int = 0
    best_metric: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[dict[str, float]] = field(default_factory=list)

    def record(self, epoch: int, loss: float, validation: dict[str, float], lr: float, seconds: float) -> float:
        """Add an epoch's row (``validation``: mAP and recalls); return its validation mAP."""
        self.history.append(
            {
                "epoch": epoch,
                "train_loss": loss,
                **{f"val_{k}": v for k, v in validation.items()},
                "lr": lr,
                "seconds": seconds,
            }
        )
        self.epoch = epoch
        return float(validation["mAP"])


def training_fingerprint(settings: dict[str, Any], image_ids: list[str]) -> dict[str, Any]:
    return {"settings": {k: v for k, v in settings.items() if k not in NOT_IN_FINGERPRINT}, "images": image_ids}


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    torch.manual_seed(seed * 100_003 + epoch)
    return np.random.default_rng([seed, epoch])


def _state_copy(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def fit(
    network: nn.Module,
    heads: nn.Module,
    run_epoch: Callable[[int, np.random.Generator], float],
    validate: Callable[[], dict[str, float]],
    optimiser: torch.optim.Optimizer,
    settings: dict[str, Any],
    model_dir: Path,
    fingerprint: dict[str, Any],
) -> Progress:
    """Train up to ``settings["epochs"]`` epochs; leave the best epoch's weights in ``network``.

    Epoch 0 is the network before training: when every later epoch does worse, it is what
    is kept. Early stopping counts epochs below the best; a saturated validation set (all
    found) keeps training to ``epochs``. Curves go to ``model_dir``, checkpoints
    (``last.pt``, ``best.pt``) to ``model_dir/work``.
    """
    scheduler = torch.optim.lr_scheduler.StepLR(
        optimiser, step_size=int(settings["lr_step"]), gamma=float(settings["lr_gamma"])
    )
    work = model_dir / WORK_DIR
    work.mkdir(parents=True, exist_ok=True)
    last_path = work / "last.pt"
    curves = Curves(model_dir)
    resumed = _resume(last_path, fingerprint, network, heads, optimiser, scheduler)
    if resumed is None:
        progress = Progress()
        started = time.time()
        metric = progress.record(0, float("nan"), validate(), scheduler.get_last_lr()[0], time.time() - started)
        progress.best_metric, best_state = metric, _state_copy(network)
        curves.write(progress.history)
    else:
        progress, best_state = resumed
        log.info(
            "resumed from %s after epoch %d (best so far: epoch %d, %s %.4f)",
            last_path,
            progress.epoch,
            progress.best_epoch,
            VALIDATION_METRIC,
            progress.best_metric,
        )
    epochs, patience, every = int(settings["epochs"]), int(settings["patience"]), int(settings["checkpoint_every"])
    for epoch in range(progress.epoch + 1, epochs + 1):
        if progress.bad_epochs >= patience:
            break
        started = time.time()
        lr = scheduler.get_last_lr()[0]
        loss = run_epoch(epoch, epoch_rng(int(settings["seed"]), epoch))
        scheduler.step()
        validation = validate()
        metric = progress.record(epoch, loss, validation, lr, time.time() - started)
        log.info(
            "epoch %d/%d: loss %.5f, validation %s, lr %.3g, %.1f s",
            epoch,
            epochs,
            loss,
            {k: round(v, 4) for k, v in validation.items()},
            lr,
            time.time() - started,
        )
        if metric >= progress.best_metric:  # a tie goes to the later, longer-trained epoch
            progress.best_metric, progress.best_epoch, progress.bad_epochs = metric, epoch, 0
            best_state = _state_copy(network)
            save_checkpoint(work / "best.pt", network, settings, epoch=epoch, validation=validation)
        else:
            progress.bad_epochs += 1
        if epoch % every == 0 or epoch == epochs or progress.bad_epochs >= patience:
            save_checkpoint(
                last_path,
                network,
                settings,
                heads=heads.state_dict(),
                optimiser=optimiser.state_dict(),
                scheduler=scheduler.state_dict(),
                progress=asdict(progress),
                best_network=best_state,
                fingerprint=fingerprint,
            )
        curves.write(progress.history)
    if progress.bad_epochs >= patience:
        log.info("early stop: no validation gain for %d epochs", patience)
    curves.plot(progress.history)
    network.load_state_dict(best_state)
    return progress


def _resume(
    path: Path,
    fingerprint: dict[str, Any],
    network: nn.Module,
    heads: nn.Module,
    optimiser: torch.optim.Optimizer,
    scheduler,
) -> tuple[Progress, dict] | None:
    if not path.is_file():
        return None
    checkpoint = load_checkpoint(path)
    if checkpoint.get("fingerprint") != fingerprint:
        log.warning("%s was made with other settings or images: training afresh", path)
        return None
    network.load_state_dict(checkpoint["network"])
    heads.load_state_dict(checkpoint["heads"])
    optimiser.load_state_dict(checkpoint["optimiser"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    return Progress(**checkpoint["progress"]), checkpoint["best_network"]
