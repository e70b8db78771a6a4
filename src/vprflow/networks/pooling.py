"""Global poolings of a feature map (B, C, H, W) into one vector per image.

* ``netvlad`` (Arandjelovic et al., 2016): soft-assignment to K learned centroids, sum of
  residuals per centroid, intra- and L2-normalisation; output K x C.
* ``gem`` (Radenovic et al., 2018): generalised mean with a learnable exponent p
  (p = 1 is average pooling, p -> infinity max pooling).
* ``mac``: maximum activation of each channel (Tolias et al., 2016).
* ``spoc``: sum (here: mean; the scale goes with the L2-normalisation) of each channel
  (Babenko and Lempitsky, 2015).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SettingError
from .names import POOLINGS


class GeM(nn.Module):
    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(-2, -1)).pow(1.0 / self.p)


class MAC(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=(-2, -1))


class SPoC(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(-2, -1))


class NetVLAD(nn.Module):
    """Soft-assignment VLAD. The assignment is a 1x1 convolution with weights 2*alpha*c_k
    and biases -alpha*|c_k|^2, i.e. softmax_k(-alpha |x - c_k|^2) for L2-normalised x,
    decoupled from the centroids once training starts (as in the paper)."""

    def __init__(self, channels: int, clusters: int):
        super().__init__()
        self.clusters = clusters
        self.centroids = nn.Parameter(torch.zeros(clusters, channels))
        self.assignment = nn.Conv2d(channels, clusters, kernel_size=1, bias=True)

    @staticmethod
    def local_descriptors(x: torch.Tensor) -> torch.Tensor:
        """The map's local descriptors as NetVLAD sees them: L2-normalised along channels."""
        return F.normalize(x, dim=1)

    def initialise(self, centroids: np.ndarray, samples: np.ndarray) -> float:
        """Set centroids (from k-means of ``samples``, local descriptors of training images)
        and pick alpha so the nearest centroid of a typical sample weighs 100 times the
        second nearest. Returns alpha."""
        squared = (samples**2).sum(1, keepdims=True) - 2 * samples @ centroids.T + (centroids**2).sum(1)
        two_nearest = np.sort(squared, axis=1)[:, :2]
        gap = float(np.median(two_nearest[:, 1] - two_nearest[:, 0]))
        alpha = math.log(100.0) / max(gap, 1e-6)
        c = torch.from_numpy(np.ascontiguousarray(centroids, dtype=np.float32))
        with torch.no_grad():
            self.centroids.copy_(c)
            self.assignment.weight.copy_((2.0 * alpha * c)[:, :, None, None])
            self.assignment.bias.copy_(-alpha * (c * c).sum(1))
        return alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.local_descriptors(x)
        soft = F.softmax(self.assignment(x), dim=1).flatten(2)  # (B, K, N)
        x = x.flatten(2)  # (B, C, N)
        residual_sums = soft @ x.transpose(1, 2) - soft.sum(-1, keepdim=True) * self.centroids  # (B, K, C)
        vlad = F.normalize(residual_sums, dim=2)  # intra-normalisation
        return F.normalize(vlad.flatten(1), dim=1)




def build_pooling(name: str, channels: int, gem_p: float = 3.0, clusters: int = 64) -> tuple[nn.Module, int]:
    """The pooling module and its output size."""
    if name == "gem":
        return GeM(gem_p), channels
    if name == "mac":
        return MAC(), channels
    if name == "spoc":
        return SPoC(), channels
    if name == "netvlad":
        return NetVLAD(channels, clusters), channels * clusters
    raise SettingError("pooling", f"unknown {name!r}; known: {', '.join(POOLINGS)}")
