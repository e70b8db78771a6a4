"""Metric learning for place recognition: triplet margin loss with hard negatives (NetVLAD).

Each epoch starts by describing every training image with the current network (the
descriptor cache); each anchor then takes its nearest positive in descriptor space that
is not a near-duplicate of it (``pairs``), and its hardest ``negatives`` true negatives
among the whole training database (or, with ``negative_pool`` set, among that many drawn
at random). Each image of a tuple is then one of its augmented views, drawn at random
(``augment``). The loss of a tuple is sum_n max(0, margin + |q - p|^2 - |q - n|^2).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..logs import log, progress
from ..networks.compute import autocast
from ..networks.network import RetrievalNet
from .pairs import Relations
from .trunk import TrunkCache, describe

DESCRIBE_BATCH = 32


def mine_tuples(
    descriptors: np.ndarray, relations: Relations, rng: np.random.Generator, negatives: int,
    negative_pool: int | None = None,
) -> np.ndarray:
    """Rows ``(anchor, positive, negative_1 .. negative_N)``; anchors without a true negative
    (in their pool) are left out. Fewer than N negatives are repeated to fill the row.
    ``negative_pool``: None searches every candidate, a number that many drawn at random."""
    candidates = np.flatnonzero(relations.is_candidate)
    tuples = []
    for anchor in relations.anchors():
        positives = relations.distinct_positives[anchor]
        positive = positives[np.argmax(descriptors[positives] @ descriptors[anchor])]
        pool = candidates
        if negative_pool is not None:
            pool = rng.choice(candidates, size=min(negative_pool, len(candidates)), replace=False)
        pool = relations.negatives_among(anchor, pool)
        if not len(pool):
            continue
        similarity = descriptors[pool] @ descriptors[anchor]
        if len(pool) > negatives:
            hardest = np.argpartition(-similarity, negatives - 1)[:negatives]
            pool, similarity = pool[hardest], similarity[hardest]
        hardest = pool[np.lexsort((pool, -similarity))]
        tuples.append([anchor, positive, *np.resize(hardest, negatives)])
    return np.array(tuples, np.int64).reshape(-1, 2 + negatives)


def triplet_loss(query: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean over tuples of the summed hinge over negatives, on squared distances (as NetVLAD)."""
    to_positive = (query - positive).pow(2).sum(-1)
    to_negatives = (query[:, None, :] - negatives).pow(2).sum(-1)
    return F.relu(margin + to_positive[:, None] - to_negatives).sum(1).mean()


class TripletObjective:
    def __init__(
        self,
        network: RetrievalNet,
        tuned: nn.Module,
        trunk: TrunkCache,
        relations: Relations,
        settings: dict[str, Any],
        device: torch.device,
        bf16: bool,
    ):
        self.network, self.tuned, self.trunk, self.relations = network, tuned, trunk, relations
        self.settings, self.device, self.bf16 = settings, device, bf16
        self.heads = nn.ModuleDict()

    def run_epoch(self, epoch: int, rng: np.random.Generator, optimiser: torch.optim.Optimizer) -> float:
        s = self.settings
        cache = describe(
            self.network, self.tuned, self.trunk, np.arange(self.relations.size), self.device, self.bf16, DESCRIBE_BATCH
        )
        pool = None if s["negative_pool"] is None else int(s["negative_pool"])
        tuples = mine_tuples(cache, self.relations, rng, int(s["negatives"]), pool)
        tuples = tuples[rng.permutation(len(tuples))]
        log.info(
            "epoch %d: %d training tuples (anchor, positive, %d hard negatives)", epoch, len(tuples), s["negatives"]
        )
        batch_size, total, seen = int(s["train_batch_size"]), 0.0, 0
        starts = range(0, len(tuples), batch_size)
        for start in progress(starts, desc=f"epoch {epoch}", total=len(starts), unit="batch"):
            batch = tuples[start : start + batch_size]
            rows = self.trunk.random_views(batch.reshape(-1), rng)
            with autocast(self.device, self.bf16):
                features = self.tuned(self.trunk.batch(rows, self.device))
            descriptors = self.network.pool(features).view(len(batch), batch.shape[1], -1)
            loss = triplet_loss(descriptors[:, 0], descriptors[:, 1], descriptors[:, 2:], float(s["margin"]))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += loss.item() * len(batch)
            seen += len(batch)
        return total / max(seen, 1)
