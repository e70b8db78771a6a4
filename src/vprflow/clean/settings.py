"""The ``clean:`` settings: defaults and the checks a JSON schema cannot make.

``check_clean_settings`` runs at config validation and again at the start of every
cleaning job, so a wrong model name or a missing checkpoint stops the run before a
single image is read.
"""

from __future__ import annotations

import copy
from typing import Any

from ..errors import InputError
from ..networks.clip import check_clip_weights
from . import CLEAN_METHODS

# The same defaults as the ``clean`` section of schemas/config.schema.yaml, for callers
# that pass a partial dict (tests, notebooks).
DEFAULT_SETTINGS: dict[str, Any] = {
    "method": "fast",
    "grayscale": {"max_chroma": 6.0},
    "collage": {"min_seam": 0.73},
    "duplicates": {"max_distance": 2},
    "clip": {
        "model": "ViT-B-32",
        "pretrained": "openai",
        "checkpoint": None,
        "prompts": {
            "grayscale": "a black and white photo",
            "collage": "a collage of several photos",
            "street": "a photo of a street",
        },
        "drop": ["grayscale", "collage"],
        "threshold": 0.5,
        "device": "auto",
    },
    "sheet": {"per_reason": 24},
}


def _merge(defaults: dict[str, Any], given: dict[str, Any], key: str) -> dict[str, Any]:
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise InputError(f"{key}: unknown setting(s) {unknown}; known: {sorted(defaults)}")
    merged = copy.deepcopy(defaults)
    for name, value in given.items():
        nested = isinstance(defaults[name], dict) and name != "prompts"  # prompts is a free mapping
        merged[name] = _merge(defaults[name], value, f"{key}.{name}") if nested else copy.deepcopy(value)
    return merged


def check_clip_settings(clip: dict[str, Any]) -> None:
    """Model name, weights and prompts of the CLIP detector; imports open_clip."""
    check_clip_weights(clip["model"], clip["pretrained"], clip["checkpoint"], "clean.clip")
    prompts = clip["prompts"]
    if len(prompts) < 2:
        raise InputError("clean.clip.prompts: give at least two classes (one to keep), "
                         "the probabilities are a softmax over them")
    missing = [label for label in clip["drop"] if label not in prompts]
    if missing:
        raise InputError(f"clean.clip.drop: {missing} not among clean.clip.prompts ({sorted(prompts)})")
    if len(clip["drop"]) == len(prompts):
        raise InputError("clean.clip.drop: every class would be dropped; leave at least one to keep")


def scoring_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The part of the settings the per-shard scores depend on.

    Thresholds, duplicate distance and the sheet only change the decision, so a
    workflow that passes just this to its scoring jobs can retune them without
    reading the pixels again.
    """
    settings = complete_settings(settings)
    return CLEAN_METHODS.get(settings["method"]).scoring_settings(settings)


def complete_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings with defaults filled in; unknown keys and methods are errors. No model checks."""
    settings = _merge(DEFAULT_SETTINGS, settings, "clean")
    try:
        CLEAN_METHODS.get(settings["method"])
    except InputError as error:
        raise InputError(f"clean.method: {error}") from None
    return settings


def check_clean_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Return the complete settings; raise InputError naming the key at fault.

    For ``clip``/``auto`` the model name, the weights tag or file and the prompts are
    checked too (this imports open_clip, but reads no weights).
    """
    settings = complete_settings(settings)
    CLEAN_METHODS.get(settings["method"]).check(settings)
    return settings
