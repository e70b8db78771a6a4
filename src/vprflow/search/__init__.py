"""Search backends found by name (``searches.<name>.backend`` in the config).

A backend builds an index over the database vectors once per (model, search) and then
answers query blocks. Each backend module declares ``DEFAULTS`` and ``check(settings)``
(see ``vprflow.registry``) and provides ``build(settings, database, index_dir)``,
``bytes_per_vector(settings, index_dir, database)`` and ``load(settings, index_dir,
database) -> searcher`` with ``searcher.search(queries, k) -> (scores, rows)``: higher
score = more similar, rows index the database matrix, -1 where fewer than k exist.
It also declares ``BUILD_SETTINGS``, the settings ``build`` reads: every other setting
(``k``, ``nprobe``, ``candidates`` ...) is read at search time, so changing it reruns the
searches but never the index build (``build_settings``, the build rule's params).
``run`` applies a backend to the pipeline's tables (masks, ids, blocks of queries).
"""

from __future__ import annotations

from typing import Any

from ..registry import Registry

BACKENDS = Registry("search backend", __name__, {"exact": "exact", "faiss": "faiss_index", "lopq": "lopq"},
                    selector="backend")
COMMON_SETTINGS = ("k",)
"""Settings every backend takes besides its own."""


def settings_of(search: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The complete settings of ``searches.<search>``; InputError naming the key at fault."""
    return BACKENDS.settings(f"searches.{search}", settings, COMMON_SETTINGS)


def build_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The part of a search's complete settings that its index depends on: the backend and
    the backend's ``BUILD_SETTINGS``."""
    declared = BACKENDS.get(settings["backend"]).BUILD_SETTINGS
    return {key: value for key, value in settings.items() if key == "backend" or key in declared}
