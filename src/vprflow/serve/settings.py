"""The ``service:`` settings' checks that the schema cannot make (run at config validation)."""

from __future__ import annotations

from typing import Any

from ..errors import InputError


def check_service_settings(service: dict[str, Any], models: dict[str, Any]) -> None:
    """``clip_model`` names a ``clip`` model of ``models:``; ``text_engine: clip`` needs one."""
    name = service["clip_model"]
    if name is None:
        if service["text_engine"] == "clip":
            raise InputError("service.clip_model: text_engine clip needs a models entry with descriptor clip "
                             "whose image embeddings the text tower scores; name it here")
        return
    if name not in models:
        raise InputError(f"service.clip_model: {name!r} is not in models: ({', '.join(sorted(models))})")
    if models[name]["descriptor"] != "clip":
        raise InputError(f"service.clip_model: models.{name} has descriptor {models[name]['descriptor']!r}; "
                         "the text engine needs a descriptor: clip model")
