"""Search backends found by name (``searches.<name>.backend`` in the config).

A backend builds an index over the database vectors once per (model, search) and then
answers query blocks: ``load(settings, index_dir, database) -> searcher`` with
``searcher.search(queries, k) -> (scores, rows)``; higher score = more similar, rows
index the database matrix, -1 where fewer than k results exist.
"""

from __future__ import annotations

from typing import Any

from ..errors import InputError

COMMON_SETTINGS = {"backend", "k"}


def _registry() -> dict[str, Any]:
    from . import exact, faiss_index, lopq_backend

    return {"exact": exact, "faiss": faiss_index, "lopq": lopq_backend}


def backend(name: str):
    registry = _registry()
    if name not in registry:
        raise InputError(f"unknown search backend {name!r}; known: {', '.join(sorted(registry))}")
    return registry[name]


def names() -> list[str]:
    return sorted(_registry())


def check_settings(search: str, settings: dict[str, Any]) -> None:
    """Raise InputError naming ``searches.<search>.<key>`` for an unknown backend or key."""
    try:
        module = backend(settings.get("backend", ""))
    except InputError as error:
        raise InputError(f"searches.{search}.backend: {error}") from None
    unknown = set(settings) - COMMON_SETTINGS - set(module.DEFAULTS)
    if unknown:
        raise InputError(f"searches.{search}: unknown setting(s) {sorted(unknown)} for backend "
                         f"{settings['backend']}; known: {sorted(COMMON_SETTINGS | set(module.DEFAULTS))}")
    module.check(search, {**module.DEFAULTS, **settings})
