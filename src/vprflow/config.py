"""Config validation: JSON Schema with defaults, then the method registries (``vprflow.registry``).

Every error names the key at fault (``searches.exact.k: -1 is less than the minimum of 1``)
so a wrong setting stops the run before any job starts.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from . import descriptors, rerank, search
from .clean.settings import check_clean_settings
from .datasets import registry
from .errors import InputError
from .serve.settings import check_service_settings
from .split import check_split_settings


def _fill_defaults(schema: dict, instance: Any) -> None:
    """Insert schema defaults into ``instance`` in place, recursing into objects."""
    if not isinstance(instance, dict):
        return
    for key, sub in schema.get("properties", {}).items():
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if key in instance:
            _fill_defaults(sub, instance[key])
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key, value in instance.items():
            if key not in schema.get("properties", {}):
                _fill_defaults(extra, value)


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


USER_NAMED_SECTIONS = ("models", "searches", "reranks")
"""Sections of methods by name: where the user gives one, it is all the methods run."""


def with_user_sections(config: dict, user_config: dict) -> dict:
    """``config`` with the user's own ``models``, ``searches`` and ``reranks`` where they give them.

    Snakemake merges ``--configfile`` files into the workflow's ``config.yaml`` key by key, so a
    user's one model would run beside every demo model; ``user_config`` is what the user's
    files (and ``--config``) hold, merged in their order. Other sections keep Snakemake's merge.
    """
    config = dict(config)
    for section in USER_NAMED_SECTIONS:
        if section in user_config:
            config[section] = copy.deepcopy(user_config[section])
    if "models" in user_config and "reranks" not in user_config:
        # the workflow's steps that name its own models (local features, fused models) go with them
        config["reranks"] = {name: step for name, step in (config.get("reranks") or {}).items()
                             if set(_models_named(step)) <= set(config["models"] or {})}
    return config


def _models_named(step: dict) -> list[str]:
    """The models a re-ranking step's settings name: ``features`` (method local), ``models`` (fusion)."""
    named = [step["features"]] if step.get("features") else []
    return named + list(step.get("models") or ())


def validate_config(config: dict, schema_path: str | Path) -> dict:
    """Return ``config`` with defaults filled in; raise InputError naming the bad key."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    config = copy.deepcopy(config)
    _fill_defaults(schema, config)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"{_key(e.absolute_path)}: {e.message}" for e in errors]
        raise InputError("config is invalid:\n  " + "\n  ".join(lines))
    for name, settings in config["models"].items():
        descriptors.settings_of(name, settings)
    for name, settings in config["searches"].items():
        search.settings_of(name, settings)
    for name, settings in config["reranks"].items():
        complete = rerank.settings_of(name, settings)
        unknown = sorted(set(complete.get("models", ())) - set(config["models"]))
        if unknown:
            raise InputError(f"reranks.{name}.models: {unknown} not among the models {sorted(config['models'])}")
        _check_apply_to(name, complete.get("apply_to"), config["models"])
    _check_local_models(config)
    check_clean_settings(config["clean"])
    check_service_settings(config["service"], config["models"])
    check_split_settings(config["split"])
    registry.root_of(config["dataset"])  # a dataset other than the demo needs its root (an existing one)
    return config


def _check_apply_to(step: str, chosen, models: dict) -> None:
    """``reranks.<step>.apply_to``: null, or a list of searched (global) models."""
    if chosen is None:
        return
    searched = sorted(name for name, settings in models.items() if not descriptors.is_local(settings))
    if not isinstance(chosen, list) or not chosen or not all(isinstance(m, str) for m in chosen):
        raise InputError(f"reranks.{step}.apply_to: must be a list of model names (null: every model), got {chosen!r}")
    unknown = sorted(set(chosen) - set(searched))
    if unknown:
        raise InputError(f"reranks.{step}.apply_to: {unknown} not among the searched models {searched}")


def _check_local_models(config: dict) -> None:
    """Local-feature models are not searched: a run needs a global model, and a ``local``
    re-ranking must name a local model."""
    local = sorted(name for name, settings in config["models"].items() if descriptors.is_local(settings))
    if len(local) == len(config["models"]):
        raise InputError(f"models: {local} give local features only, which are not searched; "
                         "add a global model (tiny_image, cnn, rootsift_vlad) to search and re-rank")
    for name, settings in config["reranks"].items():
        if settings["method"] == "local" and settings["features"] not in local:
            fix = f"name one of {local}" if local else "add one under models, e.g. sift: {descriptor: sift}"
            raise InputError(f"reranks.{name}.features: {settings['features']!r} is not a model with local "
                             f"features; {fix}")
        fused_local = sorted(set(settings.get("models") or ()) & set(local))
        if fused_local:
            raise InputError(f"reranks.{name}.models: {fused_local} give local features, which have no ranking "
                             "to fuse; name global models (a local model re-ranks through method: local)")


def load_config(path: str | Path, schema_path: str | Path) -> dict:
    with open(path) as handle:
        return validate_config(yaml.safe_load(handle) or {}, schema_path)
