"""Cleaning: drop black-and-white pictures, collages and near-duplicates before splitting.

``settings`` (``check_clean_settings``), ``detectors`` (weight-free scores), ``clip``
(zero-shot CLIP), ``stage`` (the workflow steps) and ``report`` (contact sheet,
precision/recall).
"""

from .settings import check_clean_settings

__all__ = ["check_clean_settings"]
