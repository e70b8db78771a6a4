"""CLIP through open_clip: one place for the weight-loading rules that CLIP cleaning, the
``clip`` descriptor and the service's text engine share.

Weights are an open_clip ``pretrained`` tag (downloaded once into the Hugging Face cache)
or a local ``checkpoint`` file (a state dict of the model). An architecture open_clip does
not ship can be registered from its JSON config (``model_config``). Every error names the
config key at fault, given by the caller as ``key`` (``clean.clip``, ``models.clip``).

Nothing here imports open_clip or torch at module import time.
"""

from __future__ import annotations

import difflib
import importlib.util
from pathlib import Path

from ..errors import InputError

OFFLINE_HINT = ("without network access, fetch the weights where there is one (they are cached under "
                "~/.cache/huggingface) or download them and set {key}.checkpoint to the file")


class ClipUnavailable(InputError):
    """The CLIP weights cannot be loaded (no network for a tag, an unusable file)."""


def resolve_device(name: str) -> str:
    """``auto``: the GPU when there is one, else the CPU; chosen when the job runs."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def shipped_models() -> list[str]:
    """The architectures open_clip ships (what ``open_clip.list_models()`` lists before any is
    added), read from its config folder without importing it; empty when it is not installed."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return []
    folder = Path(spec.submodule_search_locations[0]) / "model_configs"
    return sorted(path.stem for path in folder.glob("*.json"))


def unknown_model_message(model: str, known: list[str]) -> str:
    close = difflib.get_close_matches(model, known, n=5)
    hint = f"did you mean {', '.join(close)}?" if close else "open_clip.list_models() lists them"
    return f"unknown open_clip model {model!r}; {hint}"


def register_model_config(path: str | Path | None, key: str) -> None:
    """Make the architecture in the JSON file ``path`` known to open_clip (by the file's stem)."""
    if not path:
        return
    import open_clip

    if not Path(path).is_file():
        raise InputError(f"{key}.model_config: file not found: {path}")
    open_clip.add_model_config(path)


def check_clip_weights(model: str, pretrained: str | None, checkpoint: str | None, key: str) -> None:
    """The model name, and the weights tag or file; imports open_clip, reads no weights."""
    import open_clip

    known = open_clip.list_models()
    if model not in known:
        raise InputError(f"{key}.model: {unknown_model_message(model, known)}")
    if checkpoint:
        if not Path(checkpoint).is_file():
            raise InputError(f"{key}.checkpoint: file not found: {checkpoint}")
    elif pretrained:
        tags = open_clip.list_pretrained_tags_by_model(model)
        if pretrained not in tags:
            raise InputError(f"{key}.pretrained: {pretrained!r} is not a pretrained tag of {model}; "
                             f"known tags: {', '.join(tags) or 'none'} "
                             f"(or set {key}.checkpoint to a weights file)")
    else:
        raise InputError(f"{key}: set {key}.pretrained (a weights tag of the model) "
                         f"or {key}.checkpoint (a local weights file)")


def load_clip(model: str, pretrained: str | None, checkpoint: str | None, device: str, key: str):
    """(model in eval mode, its image preprocessing); ClipUnavailable naming the weights key."""
    import open_clip

    if checkpoint:
        weights_key, weights, hint = f"{key}.checkpoint", checkpoint, "is it a state dict of this model?"
    else:
        weights_key, weights, hint = f"{key}.pretrained", pretrained, OFFLINE_HINT.format(key=key)
    try:
        network, _, preprocess = open_clip.create_model_and_transforms(model, pretrained=weights, device=device)
    except Exception as error:  # open_clip wraps download and load failures in assorted types
        raise ClipUnavailable(f"{weights_key}: cannot load CLIP weights {weights!r} for {model}: "
                              f"{error}; {hint}") from None
    return network.eval(), preprocess


def tokenizer(model: str):
    import open_clip

    return open_clip.get_tokenizer(model)


def eval_transform(model: str, pretrained: str | None):
    """The image preprocessing ``load_clip`` returns for these settings, built as open_clip
    builds it (its defaults, the tag's normalisation, the model's input size) from the
    configs alone, so loader workers can run it before (or without) the weights."""
    from dataclasses import asdict

    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

    config = open_clip.get_model_config(model)
    if config is None:
        raise InputError(f"unknown open_clip model {model!r}")
    settings = asdict(PreprocessCfg())
    if pretrained:
        settings = merge_preprocess_dict(settings, open_clip.get_pretrained_cfg(model, pretrained) or {})
    settings["size"] = config["vision_cfg"]["image_size"]
    return image_transform_v2(PreprocessCfg(**settings), is_train=False)
