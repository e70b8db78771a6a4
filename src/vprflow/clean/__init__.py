"""Cleaning: drop black-and-white pictures, collages and near-duplicates before splitting.

``methods`` (the methods by name, ``CLEAN_METHODS``), ``settings`` (the section's
defaults and checks), ``detectors`` (weight-free scores), ``clip`` (zero-shot CLIP),
``scoring`` (the per-image scores and the drop decisions) and ``report`` (contact sheet,
precision/recall). The three clean rules run ``vprflow.stages.clean_method``,
``clean_score`` and ``clean``.
"""

from ..registry import Registry

CLEAN_METHODS = Registry(
    "cleaning method",
    __name__,
    {"none": "methods:NONE", "fast": "methods:FAST", "clip": "methods:CLIP", "auto": "methods:AUTO"},
    selector="method",
)
