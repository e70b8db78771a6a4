"""The epoch loop every objective shares: step LR, early stopping on validation,
checkpoints, resume after a kill, curves.

Resuming is exact: each epoch draws its randomness from ``(seed, epoch)`` alone, and the
last checkpoint holds the network, heads, optimiser, scheduler, early-stopping state and
the best weights so far. So a run killed at any point and rerun ends where an
uninterrupted run ends (bit for bit on CPU).
"""

from __future__ import annotations

import copy
import math
import os
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

NOT_IN_FINGERPRINT = ("epochs", "patience", "checkpoint_every", "dim", "whitening", "scales", "query_scales",
                      "query_flip")
"""Settings a run may change and still resume: they do not alter the epochs already done
(``dim`` and ``whitening`` shape the whitening fitted after training; the scales and flips only
extraction)."""

UNTRAINED_ENTRIES = ("whitening.",)
"""Network entries the epochs never touch (whitening is fitted after them): a checkpoint's are
not loaded, so a new ``dim`` resumes the same training."""

SET_ASIDE = "last.set-aside.pt"
"""Where a checkpoint that cannot be resumed goes, so training starts afresh without losing it."""


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


def _load_trained(network: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load ``state`` but its untrained entries; RuntimeError naming the entries that do not fit."""
    trained = {k: v for k, v in state.items() if not k.startswith(UNTRAINED_ENTRIES)}
    missing, unexpected = network.load_state_dict(trained, strict=False)
    missing = [k for k in missing if not k.startswith(UNTRAINED_ENTRIES)]
    if missing or unexpected:
        raise RuntimeError(f"network entries missing {missing}, unexpected {unexpected}")


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
    """Train up to ``settings["epochs"]`` epochs; leave the best epoch's weights in ``network``
    and ``heads``.

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
        progress.best_metric, best_state, best_heads = metric, _state_copy(network), _state_copy(heads)
        curves.write(progress.history)
    else:
        progress, best_state, best_heads = resumed
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
            best_state, best_heads = _state_copy(network), _state_copy(heads)
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
                best_heads=best_heads,
                fingerprint=fingerprint,
            )
        curves.write(progress.history)
    if progress.bad_epochs >= patience:
        log.info("early stop: no validation gain for %d epochs", patience)
    curves.plot(progress.history)
    _load_trained(network, best_state)
    heads.load_state_dict(best_heads)
    return progress


def _resume(
    path: Path,
    fingerprint: dict[str, Any],
    network: nn.Module,
    heads: nn.Module,
    optimiser: torch.optim.Optimizer,
    scheduler,
) -> tuple[Progress, dict, dict] | None:
    """The progress, best weights and best heads of the checkpoint at ``path``, loaded into the
    training objects; None (training afresh) when there is none. A checkpoint made with other
    settings or images, or one that does not load, is set aside (``SET_ASIDE``), never resumed."""
    if not path.is_file():
        return None
    try:
        checkpoint = load_checkpoint(path)
    except Exception as error:  # torch raises many types for a cut or foreign file; all mean unreadable
        return _set_aside(path, f"cannot be resumed ({type(error).__name__}: {str(error).splitlines()[0][:200]})")
    if checkpoint.get("fingerprint") != fingerprint:
        return _set_aside(path, f"was made with other {_differences(checkpoint.get('fingerprint'), fingerprint)}")
    before = [copy.deepcopy(m.state_dict()) for m in (network, heads, optimiser, scheduler)]
    try:
        _load_trained(network, checkpoint["network"])
        heads.load_state_dict(checkpoint["heads"])
        optimiser.load_state_dict(checkpoint["optimiser"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        progress = Progress(**checkpoint["progress"])
        best = checkpoint["best_network"]
        # a checkpoint written before the best heads were kept resumes with its last heads
        best_heads = checkpoint.get("best_heads", checkpoint["heads"])
    except (RuntimeError, KeyError, TypeError, ValueError) as error:
        for module, state in zip((network, heads, optimiser, scheduler), before):
            module.load_state_dict(state)  # a half-loaded checkpoint must not seed the fresh start
        return _set_aside(path, f"cannot be resumed ({'; '.join(str(error).splitlines())[:300]})")
    return progress, best, best_heads


def _differences(old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    """What changed between two fingerprints, for the log: ``settings (margin: 0.1 -> 0.2)``."""
    if not isinstance(old, dict):
        return "settings or images (it has no fingerprint)"
    old_settings, new_settings = old.get("settings", {}), new["settings"]
    keys = sorted(set(old_settings) | set(new_settings))
    changed = [f"{k}: {old_settings.get(k)} -> {new_settings.get(k)}" for k in keys
               if old_settings.get(k) != new_settings.get(k)]
    parts = [f"settings ({', '.join(changed)})"] if changed else []
    if old.get("images") != new["images"]:
        parts.append("training images")
    return " and ".join(parts) or "settings or images"


def _set_aside(path: Path, why: str) -> None:
    aside = path.with_name(SET_ASIDE)
    os.replace(path, aside)
    log.warning("%s %s: set aside as %s; training afresh", path, why, aside.name)
    return None
