"""Score fusion: one ranking from several models' rankings of the same queries (a CNN
global descriptor with RootSIFT-VLAD, say), as a re-ranking step.

Which images are fused: with ``top_r`` R (the default, 5), only the first R of the ranking
being re-ranked, reordered among themselves; the rows below keep their order after them,
and no image the ranking does not hold in its top R can enter. With ``top_r: null``, the
union of all the shortlists: more gained where the other model is the better one, and more
lost where it is confidently wrong (corridor, GeM + RootSIFT-VLAD: R@1 0.631 -> 0.784 with
16 of 111 queries worse, against 0.730 with 1 worse within the top 5).

Two ways to combine, each per query over those images:

* ``score_sum``: each ranking's scores min-max normalised to [0, 1] within the query's
  shortlist (its best 1, its last 0; for the ranking being re-ranked, within its top R),
  weighted and summed; an image absent from a shortlist adds 0 for that ranking, as if it
  came last. Search scores of different models live on different scales; the
  normalisation puts them on one.
* ``rrf``: reciprocal-rank fusion (Cormack, Clarke and Buettcher, SIGIR 2009): each ranking
  adds weight / (rrf_k + r) for the image at 1-based position r, nothing where absent.
  Only positions count, so it needs no common score scale.

Ties keep the order of the ranking being re-ranked, then the image id.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..errors import InputError, SettingError
from ..logs import log
from ..registry import one_of, positive_number, whole_number
from ..tables import positions_in_list, renumbered, sort_neighbours, top_reordered

COMBINATIONS = ("score_sum", "rrf")


def _contributions(ranking: pd.DataFrame, weight: float, combine: str, rrf_k: float) -> pd.DataFrame:
    ranked = sort_neighbours(ranking)
    position = positions_in_list(ranked)
    if combine == "rrf":
        value = 1.0 / (rrf_k + position + 1.0)
    else:
        scores = ranked["score"].astype("float64")
        by_query = scores.groupby(ranked["query_id"].to_numpy(), sort=False)
        low, high = by_query.transform("min").to_numpy(), by_query.transform("max").to_numpy()
        spread = high - low
        value = np.where(spread > 0, (scores.to_numpy() - low) / np.where(spread > 0, spread, 1.0), 1.0)
    return pd.DataFrame({"query_id": ranked["query_id"].to_numpy(), "db_id": ranked["db_id"].to_numpy(),
                         "value": weight * value})


def fuse_rankings(rankings: Sequence[pd.DataFrame], weights: Sequence[float], combine: str = "score_sum",
                  rrf_k: float = 60.0, top_r: int | None = None) -> pd.DataFrame:
    """The rankings fused into one (see the module docstring), in the neighbours schema.

    The first ranking is the one being re-ranked: the result has its queries, in its
    order, and as many rows per query as it has; its order breaks ties. Weights are >= 0,
    one per ranking. ``top_r``: fuse only its first R rows (None: the union of the lists).
    """
    if combine not in COMBINATIONS:
        raise InputError(f"fusion: unknown combination {combine!r}; use one of {', '.join(COMBINATIONS)}")
    if len(rankings) != len(weights) or not rankings:
        raise InputError(f"fusion: {len(rankings)} ranking(s) but {len(weights)} weight(s)")
    first = sort_neighbours(rankings[0])
    if first.empty:
        return renumbered(first, np.zeros(0, np.float32))
    queries = pd.unique(first["query_id"])
    position = positions_in_list(first)
    top = None if top_r is None else position < int(top_r)
    own = first if top is None else first[top]  # within a top R, the re-ranked ranking is normalised there
    parts = [_contributions(own, float(weights[0]), combine, rrf_k)]
    parts += [_contributions(r[r["query_id"].isin(queries)], float(w), combine, rrf_k)
              for r, w in zip(rankings[1:], weights[1:])]
    summed = pd.concat(parts, ignore_index=True).groupby(["query_id", "db_id"], sort=False)["value"].sum()
    keys = pd.MultiIndex.from_frame(first[["query_id", "db_id"]])
    if top is not None:
        head = np.where(top, summed.reindex(keys).to_numpy(), 0.0)
        return top_reordered(first, position, pd.factorize(first["query_id"])[0], int(top_r), head)
    fused = summed.reset_index()
    own_position = pd.Series(position, index=keys)
    fused["own_position"] = own_position.reindex(pd.MultiIndex.from_frame(fused[["query_id", "db_id"]])).to_numpy()
    fused["own_position"] = fused["own_position"].fillna(np.inf)
    fused["query_order"] = pd.Index(queries).get_indexer(fused["query_id"])
    fused = fused.sort_values(["query_order", "value", "own_position", "db_id"], ascending=[True, False, True, True],
                              kind="stable")
    shortlist = first.groupby("query_id", sort=False).size()
    fused = fused[fused.groupby("query_id", sort=False).cumcount().to_numpy()
                  < shortlist.reindex(fused["query_id"]).to_numpy()]
    return renumbered(fused, fused["value"].to_numpy(np.float32))


class ScoreFusion:
    """``method: fusion``: the ranking fused with other models' rankings of the same search.

    ``models`` maps model names to weights; the ranking being re-ranked takes its own
    model's weight there, else ``weight``. So ``{gem: 1, rootsift_vlad: 1}`` with ``top_r:
    null`` gives the same fused scores under both models (ties keep each one's own order;
    within a top R each model re-ranks its own R), and under a third model that model's
    ranking joins them with ``weight`` (0 leaves it out).
    """

    DEFAULTS: dict[str, Any] = {"models": {}, "combine": "score_sum", "rrf_k": 60.0, "weight": 1.0, "top_r": 5}

    @staticmethod
    def check(settings: dict[str, Any]) -> None:
        models = settings["models"]
        if not isinstance(models, dict) or not models:
            raise SettingError("models", f"name the models to fuse with their weights, e.g. {{gem: 1.0, "
                                         f"rootsift_vlad: 1.0}}; got {models!r}")
        for name, weight in models.items():
            if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight < 0:
                raise SettingError(f"models.{name}", f"a weight must be a number >= 0, got {weight!r}")
        one_of(settings, "combine", COMBINATIONS)
        positive_number(settings, "rrf_k")
        if settings["top_r"] is not None:
            whole_number(settings, "top_r", minimum=1)
        weight = settings["weight"]
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight < 0:
            raise SettingError("weight", f"must be a number >= 0, got {weight!r}")

    @staticmethod
    def apply(neighbours: pd.DataFrame, settings: dict[str, Any], inputs) -> pd.DataFrame:
        models = settings["models"]
        others = sorted(set(models) - {inputs.model})
        missing = [m for m in others if m not in inputs.rankings]
        if missing:
            raise InputError(f"fusion: no ranking of model(s) {missing} was given for this search")
        own_weight = models.get(inputs.model, settings["weight"])
        weights = [own_weight] + [models[m] for m in others]
        top_r = settings["top_r"]
        log.info("fusion (%s) of %s, %s", settings["combine"],
                 ", ".join(f"{m} x {w}" for m, w in zip([inputs.model, *others], weights)),
                 "over the union of the lists" if top_r is None else f"within the top {top_r}")
        return fuse_rankings([neighbours] + [inputs.rankings[m] for m in others], weights, settings["combine"],
                             float(settings["rrf_k"]), None if top_r is None else int(top_r))
