"""Place votes over a shortlist: which place the top k retrieved images agree on."""

from __future__ import annotations

from typing import Mapping

import pandas as pd

from ..errors import InputError
from ..tables import check_ks, positions_in_list, sort_neighbours


def _as_series(mapping: Mapping | pd.Series, name: str) -> pd.Series:
    return mapping if isinstance(mapping, pd.Series) else pd.Series(dict(mapping), name=name, dtype=object)


def place_votes(neighbours: pd.DataFrame, db_places: Mapping | pd.Series, k: int | None = None) -> pd.DataFrame:
    """Place vote over each query's top k (all rows when k is None; a shorter list votes with what it has).

    Returns one row per (query_id, place) with ``votes`` (images of that place),
    ``best_position`` (0-based position of its best-ranked image) and ``place_rank``
    (0 = winner): most votes first, ties broken by the better best position.
    """
    ranked = sort_neighbours(neighbours)
    positions = positions_in_list(ranked)
    if k is not None:
        (k,) = check_ks((k,), ranked, "k")
        ranked, positions = ranked.loc[positions < k], positions[positions < k]
    places = _as_series(db_places, "place").reindex(ranked["db_id"].to_numpy())
    if places.isna().any():
        missing = sorted(set(ranked["db_id"].to_numpy()[places.isna().to_numpy()]))
        raise InputError(f"db_places has no place for {len(missing)} db_id(s), e.g. {missing[:5]}")
    votes = (
        pd.DataFrame({"query_id": ranked["query_id"].to_numpy(), "place": places.to_numpy(), "position": positions})
        .groupby(["query_id", "place"], sort=False)
        .agg(votes=("position", "size"), best_position=("position", "min"))
        .reset_index()
    )
    votes = votes.sort_values(["query_id", "votes", "best_position"], ascending=[True, False, True], kind="stable")
    votes["place_rank"] = votes.groupby("query_id", sort=False).cumcount()
    return votes.reset_index(drop=True)


def place_vote_accuracy(
    neighbours: pd.DataFrame, query_places: Mapping | pd.Series, db_places: Mapping | pd.Series, k: int
) -> float:
    """Share of queries whose top-k place vote (see :func:`place_votes`) is their own place.

    With k = 1 this is plain top-1 place accuracy.
    """
    winners = place_votes(neighbours, db_places, k).query("place_rank == 0").set_index("query_id")["place"]
    truth = _as_series(query_places, "place").reindex(winners.index)
    if truth.isna().any():
        missing = list(winners.index[truth.isna().to_numpy()])
        raise InputError(f"query_places has no place for {len(missing)} query id(s), e.g. {missing[:5]}")
    return float((winners.to_numpy() == truth.to_numpy()).mean())
