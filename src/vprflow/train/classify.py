"""Classification fine-tuning: cross-entropy on ``place``, or two heads on landmark
``name`` and ``category`` sharing one descriptor.

Heads are cosine classifiers (logits = s * cos(descriptor, class weight), NormFace) on
the pooled descriptor, so what training shapes is the very vector retrieval uses.
Retrieval does not need them; ``model.pt`` keeps them (``head_state``) with their class
names, so a service can name a photo's landmark and category.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..logs import progress
from ..networks.compute import autocast
from ..networks.network import RetrievalNet
from .trunk import TrunkCache

HEADS = {"place": ("place",), "name_category": ("name", "category")}
COSINE_SCALE = 16.0


class CosineClassifier(nn.Module):
    def __init__(self, dim: int, classes: int, scale: float = COSINE_SCALE):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * dim**-0.5)
        self.scale = scale

    def forward(self, descriptors: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(descriptors, dim=1) @ F.normalize(self.weight, dim=1).T


def class_codes(values: pd.Series, column: str) -> tuple[np.ndarray, list[str]]:
    """(class index per image, -1 where the label is missing; the sorted class names);
    needs two classes at least."""
    codes, classes = pd.factorize(values.astype("string"), sort=True)
    if len(classes) < 2:
        raise InputError(
            f"train: classification on {column!r} needs at least 2 distinct {column} values in "
            f"the train split; found {len(classes)}"
        )
    return codes.astype(np.int64), [str(c) for c in classes]


class ClassificationObjective:
    def __init__(
        self,
        network: RetrievalNet,
        tuned: nn.Module,
        trunk: TrunkCache,
        images: pd.DataFrame,
        mode: str,
        settings: dict[str, Any],
        device: torch.device,
        bf16: bool,
    ):
        self.network, self.tuned, self.trunk = network, tuned, trunk
        self.settings, self.device, self.bf16 = settings, device, bf16
        coded = {column: class_codes(images[column], column) for column in HEADS[mode]}
        self.labels = {column: codes for column, (codes, _) in coded.items()}
        self.classes = {column: classes for column, (_, classes) in coded.items()}
        self.heads = nn.ModuleDict(
            {column: CosineClassifier(network.pooled_dim, len(classes)) for column, classes in self.classes.items()}
        ).to(device)
        self.rows = np.flatnonzero(np.any([codes >= 0 for codes in self.labels.values()], axis=0))

    def run_epoch(self, epoch: int, rng: np.random.Generator, optimiser: torch.optim.Optimizer) -> float:
        order = self.rows[rng.permutation(len(self.rows))]
        batch_size, total = int(self.settings["train_batch_size"]), 0.0
        starts = range(0, len(order), batch_size)
        for start in progress(starts, desc=f"epoch {epoch}", total=len(starts), unit="batch"):
            rows = order[start : start + batch_size]
            with autocast(self.device, self.bf16):
                features = self.tuned(self.trunk.batch(self.trunk.random_views(rows, rng), self.device))
            descriptors = self.network.pool(features)
            loss = descriptors.new_zeros(())
            for column, head in self.heads.items():
                target = torch.from_numpy(self.labels[column][rows]).to(self.device)
                if (target >= 0).any():
                    loss = loss + F.cross_entropy(head(descriptors), target, ignore_index=-1)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += loss.item() * len(rows)
        return total / max(len(order), 1)


def head_state(heads: nn.ModuleDict, classes: dict[str, list[str]]) -> dict[str, Any]:
    """What ``model.pt`` keeps of trained heads: per column its class names and weights."""
    return {column: {"classes": list(classes[column]), "weight": head.weight.detach().float().cpu().clone(),
                     "scale": float(head.scale)} for column, head in heads.items()}


def head_probabilities(state: dict[str, Any], pooled: torch.Tensor, top: int) -> dict[str, list[tuple[str, float]]]:
    """Per head and image, the ``top`` classes with their softmax probabilities, best first.

    ``pooled``: the L2-normalised pooled descriptors (before whitening), as the heads were trained on.
    """
    result: dict[str, list] = {}
    for column, head in state.items():
        logits = head["scale"] * F.normalize(pooled.float(), dim=1) @ F.normalize(head["weight"], dim=1).T
        probabilities = logits.softmax(dim=1)
        values, indices = probabilities.topk(min(top, probabilities.shape[1]), dim=1)
        result[column] = [[(head["classes"][i], float(v)) for v, i in zip(row_v.tolist(), row_i.tolist())]
                          for row_v, row_i in zip(values, indices)]
    return result
