"""Re-ranking steps by name (``reranks.<name>.method`` in the config).

Each step reads a (model, search) ranking and writes a new one in the same neighbours
schema (``vprflow.tables``: rows reordered, ``rank`` renumbered from 0, ``score`` the
step's own, higher = better), evaluated as its own row ``<search>+<name>``.

A method is a class with ``DEFAULTS``, optionally ``check(settings)`` (see
``vprflow.registry``), and ``apply(neighbours, settings, inputs)`` where ``inputs`` are
the run's tables and files (:class:`Inputs`). Every step also takes ``apply_to``: the models
whose rankings it re-ranks (null: all), so one verification setting can serve weak global
descriptors and another strong ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from ..registry import Registry

RERANKS = Registry(
    "re-ranking method",
    __name__,
    {
        "label": "label:LabelVote",
        "spatial": "spatial:SpatialVerification",
        "local": "local:LocalVerification",
        "alpha_qe": "expansion:AlphaQueryExpansion",
        "dba": "expansion:DatabaseAugmentation",
        "fusion": "fusion:ScoreFusion",
    },
    selector="method",
)


@dataclass(frozen=True)
class Inputs:
    """What a re-ranking step may read besides the ranking itself: ``model`` is the model
    whose ranking it re-ranks, ``rankings`` other models' rankings of the same search (by
    model name; those a step's ``models`` setting names)."""

    manifest: pd.DataFrame
    root: str | Path
    split: pd.DataFrame
    masks: pd.DataFrame
    vectors_path: str | Path
    ids_path: str | Path
    workers: int | None = None
    model: str = ""
    rankings: Mapping[str, pd.DataFrame] = field(default_factory=dict)
    local_features: Sequence[str | Path] = ()  # shard folders of the local model a step names (``features``)
    threads: int = 1


STEP_SETTINGS = ("apply_to",)
"""Settings every step takes besides its method's: which rankings it applies to."""


def settings_of(name: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The complete settings of ``reranks.<name>``; InputError naming the key at fault."""
    return RERANKS.settings(f"reranks.{name}", settings, common=STEP_SETTINGS)


def applies_to(settings: dict[str, Any], model: str) -> bool:
    """Whether the step ``settings`` re-ranks ``model``'s rankings (``apply_to``; absent or null: every model)."""
    chosen = settings.get("apply_to")
    return chosen is None or model in chosen


def method_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """A step's settings without ``apply_to``, which picks rankings and changes none."""
    return {k: v for k, v in settings.items() if k not in STEP_SETTINGS}


def rerank(neighbours: pd.DataFrame, settings: dict[str, Any], inputs: Inputs) -> pd.DataFrame:
    """``neighbours`` re-ranked by the step ``settings`` (a ``reranks.<name>`` entry)."""
    method = RERANKS.get(settings["method"])
    return method.apply(neighbours, {**method.DEFAULTS, **method_settings(settings)}, inputs)
