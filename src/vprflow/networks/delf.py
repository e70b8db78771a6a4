"""DELF (Noh et al., ICCV 2017): dense features from an intermediate block of a CNN, a
small attention network scoring each location, an image pyramid, and the best-scored
locations as keypoints with PCA-whitened descriptors.

* The backbone stops at the block whose output has stride 16: ResNet's conv4 (``layer3``),
  MobileNetV2's block 13 (96 channels), VGG16's conv5_3.
* Attention: 1x1 conv, ReLU, 1x1 conv to one channel, softplus: a non-negative score per
  location of the L2-normalised feature map.
* A keypoint is a feature-map location; its receptive field is centred on ``stride * (i, j)``
  of the network input (every strided layer of these backbones pads symmetrically), which
  maps back to the image through the pyramid level's resize.
* Descriptors: the feature vector at the keypoint, L2-normalised, PCA-whitened to ``dim``,
  L2-normalised again (``networks.network.Whitening``, fitted on training images).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SettingError
from .backbones import build_backbone
from .compute import autocast
from .names import LOCAL_CUTS, check_local_backbone
from .network import Whitening, load_checkpoint, to_input

ATTENTION_HIDDEN = 512
CHECKPOINT_KIND = "delf"


class L2Normalise(nn.Module):
    """Each location's feature vector to unit length (what attention sees)."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(features.float(), dim=1)


class Attention(nn.Module):
    """Softplus score per location of a (B, C, H, W) map: (B, 1, H, W), non-negative."""

    def __init__(self, channels: int, hidden: int = ATTENTION_HIDDEN):
        super().__init__()
        self.layers = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, 1, 1),
                                    nn.Softplus())

    def forward(self, normalised: torch.Tensor) -> torch.Tensor:
        return self.layers(normalised)


@dataclass
class PyramidKeypoints:
    """Keypoints of one image, before whitening: positions in the network input's pixels
    (the image as preprocessed), pyramid scale, attention, L2-normalised features."""

    xy: np.ndarray
    scale: np.ndarray
    attention: np.ndarray
    features: np.ndarray


class DelfNet(nn.Module):
    def __init__(self, backbone: nn.Sequential, channels: int, stride: int, dim: int | None):
        super().__init__()
        self.backbone = backbone
        self.channels, self.stride = channels, stride
        self.attention = Attention(channels)
        self.whitening = Whitening(channels, dim) if dim else None

    @property
    def out_dim(self) -> int:
        return self.whitening.projection.shape[0] if self.whitening is not None else self.channels

    def attend(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(L2-normalised features, attention), both float32."""
        with torch.autocast(features.device.type, enabled=False):
            normalised = F.normalize(features.float(), dim=1)
            return normalised, self.attention(normalised)

    def attention_pool(self, features: torch.Tensor) -> torch.Tensor:
        """The attention-weighted mean of the normalised features (what attention is trained through)."""
        normalised, attention = self.attend(features)
        return (normalised * attention).mean(dim=(2, 3))

    def whiten(self, features: torch.Tensor) -> torch.Tensor:
        if self.whitening is None:
            return features
        with torch.autocast(features.device.type, enabled=False):
            return self.whitening(features.float())

    @torch.no_grad()
    def pyramid(self, images: torch.Tensor, scales: Sequence[float], max_keypoints: int,
                min_attention: float = 0.0) -> list[PyramidKeypoints]:
        """The top ``max_keypoints`` locations by attention over all ``scales`` of each image
        of the batch (same-size images, ImageNet-normalised), at most ``max_keypoints``."""
        height, width = images.shape[-2:]
        per_scale = []
        for scale in scales:
            x = images
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            if size != (height, width):
                x = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=scale < 1.0)
            normalised, attention = self.attend(self.backbone(x))
            rows, cols = torch.meshgrid(torch.arange(normalised.shape[2]), torch.arange(normalised.shape[3]),
                                        indexing="ij")
            # receptive-field centre in the level's pixels, then in the input image's pixels
            level_xy = torch.stack([cols.flatten(), rows.flatten()], 1).float() * self.stride
            xy = (level_xy + 0.5) * torch.tensor([width / size[1], height / size[0]]) - 0.5
            per_scale.append((xy, normalised.flatten(2).transpose(1, 2).cpu(), attention.flatten(1).cpu(), scale))
        found = []
        for b in range(len(images)):
            attention = torch.cat([a[b] for _, _, a, _ in per_scale])
            features = torch.cat([f[b] for _, f, _, _ in per_scale])
            xy = torch.cat([p for p, _, _, _ in per_scale])
            scale = torch.cat([torch.full((len(p),), s) for p, _, _, s in per_scale])
            keep = torch.argsort(attention, descending=True, stable=True)[:max_keypoints]
            keep = keep[attention[keep] >= min_attention]
            found.append(PyramidKeypoints(xy[keep].numpy(), scale[keep].numpy(), attention[keep].numpy(),
                                          features[keep].numpy()))
        return found


def shrink(rgb: np.ndarray, max_side: int) -> np.ndarray:
    """The image with its longest side at most ``max_side`` (area filter); smaller ones as they are."""
    height, width = rgb.shape[:2]
    factor = max_side / max(height, width)
    if factor >= 1:
        return rgb
    return cv2.resize(rgb, (max(1, round(width * factor)), max(1, round(height * factor))),
                      interpolation=cv2.INTER_AREA)


def describe_images(network: DelfNet, images: Sequence[np.ndarray], scales: Sequence[float], max_keypoints: int,
                    min_attention: float, device: torch.device, bf16: bool) -> list[PyramidKeypoints]:
    """Pyramid keypoints of each image (HxWx3 uint8 RGB, any sizes), in order; images of
    the same size share a forward pass."""
    found: list[PyramidKeypoints | None] = [None] * len(images)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        by_shape.setdefault(image.shape, []).append(i)
    with torch.inference_mode(), autocast(device, bf16):
        for members in by_shape.values():
            batch = to_input(np.stack([images[i] for i in members]), device)
            for i, keypoints in zip(members, network.pyramid(batch, scales, max_keypoints, min_attention)):
                found[i] = keypoints
    return found


def _shape_of(backbone: nn.Sequential) -> tuple[int, int]:
    """(channels, stride) of the backbone's output, from a forward pass of a blank image."""
    side = 64
    with torch.no_grad():
        out = backbone.eval()(torch.zeros(1, 3, side, side))
    return int(out.shape[1]), side // int(out.shape[-1])


def build_delf(settings: dict[str, Any], weights: str | None = None) -> DelfNet:
    """DELF network from its settings; ``weights`` overrides ``settings["weights"]`` (``none``
    when a trained state is about to be loaded)."""
    name = settings["backbone"]
    check_local_backbone(name)
    full = build_backbone(name, settings["weights"] if weights is None else weights)
    cut = LOCAL_CUTS[name]
    backbone = full[:cut] if cut is not None else full
    channels, stride = _shape_of(backbone)
    return DelfNet(backbone, channels, stride, settings["dim"])


def load_delf(path: str | Path) -> DelfNet:
    """The DELF network a pipeline checkpoint holds (a ``delf`` model's ``model.pt``)."""
    checkpoint = load_checkpoint(path)
    if checkpoint.get("kind") != CHECKPOINT_KIND:
        raise SettingError("checkpoint", f"{path} is not a delf model written by this pipeline "
                                         "(results/models/<model>/model.pt of a delf model)")
    network = build_delf(checkpoint["settings"], weights="none")
    network.load_state_dict(checkpoint["network"])
    return network
