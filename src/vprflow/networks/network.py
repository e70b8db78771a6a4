"""The retrieval network: backbone -> pooling -> L2 -> optional PCA-whitening -> L2.

Pooling and whitening always run in float32 (autocast off): a descriptor normalised in
bfloat16 is only unit-norm to about 1e-2, which shows in the search scores.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .backbones import PIPELINE_CHECKPOINT_KEY, build_backbone, check_backbone
from .pixels import IMAGENET_MEAN, IMAGENET_STD
from .pooling import build_pooling

ARCHITECTURE_KEYS = ("backbone", "pooling", "gem_p", "clusters", "dim")


LEARNED_WHITENING_SHRINKAGE = 0.1
"""Lw's intra-pair covariance is shrunk towards its mean eigenvalue by this share: with
fewer pairs than dimensions it is singular, and its smallest directions (no variation
among the pairs seen) would otherwise be blown up."""


def principal_directions(centred: np.ndarray, count: int, eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """The top ``count`` principal directions (unit columns, dims x count) of centred rows and
    their eigenvalues (sums of squares along them), largest first. From the Gram matrix when
    there are fewer rows than dimensions (NetVLAD: thousands of dims), else the scatter."""
    if len(centred) <= centred.shape[1]:
        values, vectors = np.linalg.eigh(centred @ centred.T)
        order = np.argsort(values)[::-1][:count]
        values = values[order]
        return (centred.T @ vectors[:, order]) / np.sqrt(np.maximum(values, eps)), values
    values, vectors = np.linalg.eigh(centred.T @ centred)
    order = np.argsort(values)[::-1][:count]
    return vectors[:, order], values[order]


class Whitening(nn.Module):
    """Whitening: centre, project on ``out_dim`` directions, L2-normalise. Fitted as
    PCA-whitening on descriptors (:meth:`fit`) or learned from matching pairs (:meth:`fit_learned`)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("projection", torch.zeros(out_dim, in_dim))

    def fit(self, descriptors: np.ndarray, eps: float = 1e-6) -> None:
        """PCA-whitening: the top principal directions, each divided by its standard deviation."""
        x = descriptors.astype(np.float64)
        mean = x.mean(0)
        directions, values = principal_directions(x - mean, self.projection.shape[0], eps)
        variances = values / max(len(x) - 1, 1)
        self._set(mean, directions.T / np.sqrt(variances + eps)[:, None])

    def fit_learned(self, descriptors: np.ndarray, pairs: np.ndarray,
                    shrinkage: float = LEARNED_WHITENING_SHRINKAGE) -> None:
        """Learned whitening Lw (Radenovic, Tolias and Chum, TPAMI 2018) from matching pairs.

        With the descriptors centred on their mean, C_S the covariance of the differences
        x_i - x_j over the ``pairs`` (rows of indices into ``descriptors``), the projection
        whitens C_S (x -> L^-1 x, C_S = L L^T: what varies between views of one place is
        shrunk) and then rotates onto the principal directions of all whitened descriptors
        (what varies between places), keeping the top ``out_dim``. Everything happens in
        the span of the descriptors (at most n - 1 directions), so C_S stays small.
        """
        x = descriptors.astype(np.float64)
        mean = x.mean(0)
        centred = x - mean
        span = min(x.shape[1], len(x) - 1)
        out_dim = self.projection.shape[0]
        if out_dim > span:
            raise ValueError(f"learned whitening to {out_dim} dims needs more than {span + 1} descriptors")
        basis, _ = principal_directions(centred, span)
        inside = centred @ basis
        differences = inside[pairs[:, 0]] - inside[pairs[:, 1]]
        scatter = differences.T @ differences / max(len(pairs), 1)
        scatter += shrinkage * np.trace(scatter) / span * np.eye(span) + 1e-12 * np.eye(span)
        whiten = np.linalg.inv(np.linalg.cholesky(scatter))
        whitened = inside @ whiten.T
        values, vectors = np.linalg.eigh(whitened.T @ whitened)
        rotation = vectors[:, np.argsort(values)[::-1][:out_dim]]
        self._set(mean, rotation.T @ whiten @ basis.T)

    def _set(self, mean: np.ndarray, projection: np.ndarray) -> None:
        self.mean.copy_(torch.from_numpy(mean.astype(np.float32)))
        self.projection.copy_(torch.from_numpy(projection.astype(np.float32)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize((x - self.mean) @ self.projection.T, dim=1)


class RetrievalNet(nn.Module):
    def __init__(self, backbone: nn.Sequential, pooling: nn.Module, pooled_dim: int, whitening: Whitening | None):
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self.pooled_dim = pooled_dim
        self.whitening = whitening

    @property
    def out_dim(self) -> int:
        return self.whitening.projection.shape[0] if self.whitening is not None else self.pooled_dim

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """L2-normalised pooled descriptor of backbone feature maps (before whitening)."""
        with torch.autocast(features.device.type, enabled=False):
            return F.normalize(self.pooling(features.float()), dim=1)

    def whiten(self, pooled: torch.Tensor) -> torch.Tensor:
        if self.whitening is None:
            return pooled
        with torch.autocast(pooled.device.type, enabled=False):
            return self.whitening(pooled.float())

    def embed(self, images: torch.Tensor, scales: Sequence[float] = (1.0,), flip: bool = False) -> torch.Tensor:
        """Final descriptors; several scales (and, with ``flip``, each scale's mirror image)
        are averaged before whitening (Radenovic et al.)."""
        total = None
        for scale in scales:
            x = images
            if scale != 1.0:
                x = F.interpolate(
                    images, scale_factor=scale, mode="bilinear", align_corners=False, antialias=scale < 1.0
                )
            for view in (x, x.flip(-1)) if flip else (x,):
                pooled = self.pool(self.backbone(view))
                total = pooled if total is None else total + pooled
        return self.whiten(F.normalize(total, dim=1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed(images)


def build_network(settings: dict[str, Any], weights: str | None = None) -> RetrievalNet:
    """Network from the architecture settings; ``weights`` overrides ``settings["weights"]``
    (``none`` when a trained state is about to be loaded anyway)."""
    backbone = build_backbone(settings["backbone"], settings["weights"] if weights is None else weights)
    channels = check_backbone(settings["backbone"]).channels
    pooling, pooled_dim = build_pooling(settings["pooling"], channels, settings["gem_p"], settings["clusters"])
    whitening = Whitening(pooled_dim, int(settings["dim"])) if settings["dim"] else None
    return RetrievalNet(backbone, pooling, pooled_dim, whitening)


def to_input(batch: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """Stacked HxWx3 images -> ImageNet-normalised float, channels-last (NHWC memory is what
    the batch already is, so this costs no copy beyond the float conversion). uint8 pixels
    are normalised here, in place in the float copy (1.4x faster than allocating for each
    step); float32 images are taken as already normalised (``pixels.network_input``)."""
    x = torch.as_tensor(batch).to(device, non_blocking=True).permute(0, 3, 1, 2)
    if x.dtype == torch.float32:
        return x.contiguous(memory_format=torch.channels_last)
    if x.dtype != torch.uint8:
        raise ValueError(f"network input must be uint8 pixels or normalised float32, got {x.dtype}")
    x = x.to(torch.float32, copy=True)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255.0
    return x.sub_(mean).div_(std).contiguous(memory_format=torch.channels_last)


def save_checkpoint(path: str | Path, network: nn.Module, settings: dict[str, Any], **extra: Any) -> None:
    """Write atomically (temp file + rename), so a kill mid-write never leaves a broken file."""
    path = Path(path)
    temporary = path.with_name(path.name + ".partial")
    torch.save(
        {PIPELINE_CHECKPOINT_KEY: 1, "settings": dict(settings), "network": network.state_dict(), **extra}, temporary
    )
    os.replace(temporary, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def load_network(path: str | Path) -> RetrievalNet:
    """The network a checkpoint was trained as (no download: its own weights replace all)."""
    checkpoint = load_checkpoint(path)
    network = build_network({**checkpoint["settings"]}, weights="none")
    network.load_state_dict(checkpoint["network"])
    return network
