"""Place-label re-ranking: the place most voted in the shortlist first ("method two" of the
landmark retrieval seed)."""

from __future__ import annotations

from typing import Any, Mapping

import pandas as pd

from ..metrics.votes import place_votes
from ..tables import renumbered, sort_neighbours


def label_rerank(neighbours: pd.DataFrame, db_places: Mapping | pd.Series) -> pd.DataFrame:
    """Group each shortlist by place, the most voted place first ("method two").

    Places are ordered by the number of their images in the shortlist, ties by their
    best-ranked image; within a place the original order is kept. The new score is the
    share of the shortlist held by the row's place.
    """
    ranked = sort_neighbours(neighbours)
    votes = place_votes(ranked, db_places)
    places = pd.Series(db_places) if not isinstance(db_places, pd.Series) else db_places
    rows = ranked.assign(
        place=places.reindex(ranked["db_id"].to_numpy()).to_numpy(),
        position=ranked.groupby("query_id", sort=False).cumcount().to_numpy(),
        query_order=pd.factorize(ranked["query_id"])[0],
        shortlist=ranked.groupby("query_id", sort=False)["db_id"].transform("size").to_numpy(),
    ).merge(votes[["query_id", "place", "votes", "place_rank"]], on=["query_id", "place"], how="left")
    rows = rows.sort_values(["query_order", "place_rank", "position"], kind="stable")
    return renumbered(rows, (rows["votes"] / rows["shortlist"]).to_numpy())


class LabelVote:
    """``method: label``: needs the database images' ``place``."""

    DEFAULTS: dict[str, Any] = {}

    @staticmethod
    def apply(neighbours: pd.DataFrame, settings: dict[str, Any], inputs) -> pd.DataFrame:
        return label_rerank(neighbours, inputs.manifest.set_index("image_id")["place"].dropna())
