"""Torchvision backbones by name, cut at their last convolutional layer.

A backbone comes back as one flat ``nn.Sequential`` of blocks, so training can freeze all
but the last few blocks by slicing it (``backbone[:k]`` frozen, ``backbone[k:]`` tuned)
while the state-dict keys stay the same whatever is frozen.

Weights (the ``weights`` setting):

* ``imagenet``: torchvision's weights API (downloaded once into ``$TORCH_HOME``);
* a file: a torchvision state dict of the whole classifier (``torch.save(model.state_dict())``)
  or a checkpoint this pipeline wrote (its ``backbone.*`` entries are used);
* ``none``: random initialisation (seed it first).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torchvision import models as tv

from ..errors import SettingError
from . import names

PIPELINE_CHECKPOINT_KEY = "vprflow_checkpoint"


def _vgg_blocks(model: nn.Module) -> list[nn.Module]:
    return list(model.features.children())[:-1]  # up to conv5_3 + ReLU, without the last max-pool


def _resnet_blocks(model: nn.Module) -> list[nn.Module]:
    return [model.conv1, model.bn1, model.relu, model.maxpool, model.layer1, model.layer2, model.layer3, model.layer4]


def _features_blocks(model: nn.Module) -> list[nn.Module]:
    return list(model.features.children())  # MobileNet/EfficientNet: features end with the last conv


@dataclass(frozen=True)
class BackboneSpec:
    blocks: Callable[[nn.Module], list[nn.Module]]
    channels: int


_CUTS = {"vgg": _vgg_blocks, "resnet": _resnet_blocks, "features": _features_blocks}
BACKBONES = {name: BackboneSpec(_CUTS[cut], channels) for name, (cut, channels) in names.BACKBONES.items()}


def check_backbone(name: str) -> BackboneSpec:
    names.check_backbone_name(name)
    return BACKBONES[name]


def build_backbone(name: str, weights: str) -> nn.Sequential:
    """The backbone ``name`` with ``weights`` (see the module docstring), cut at its last conv."""
    spec = check_backbone(name)
    model = tv.get_model(name, weights=None)
    backbone_state = None
    if weights == "imagenet":
        _load(model, imagenet_state(name), f"torchvision's ImageNet weights for {name}")
    elif weights != "none":
        state = read_checkpoint(weights)
        if PIPELINE_CHECKPOINT_KEY in state:
            prefix = "backbone."
            backbone_state = {k[len(prefix) :]: v for k, v in state["network"].items() if k.startswith(prefix)}
        else:
            _load(model, state, weights)
    backbone = nn.Sequential(*spec.blocks(model))
    if backbone_state is not None:
        _load(backbone, backbone_state, weights)
    return backbone


def imagenet_state(name: str) -> dict[str, torch.Tensor]:
    """ImageNet weights through torchvision's weights API; offline, a message saying what to do."""
    weights = tv.get_model_weights(name).DEFAULT
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except OSError as error:  # URLError, timeouts, refused connections are all OSErrors
        file_name = weights.url.rsplit("/", 1)[-1]
        cache = Path(torch.hub.get_dir()) / "checkpoints" / file_name
        raise SettingError(
            "weights",
            f"imagenet: could not download {weights} for {name} from {weights.url} ({error}). "
            f"Without network access, fetch that file elsewhere, then either set weights: /path/to/{file_name} "
            f"(a local checkpoint) or copy it to {cache} (torchvision's cache; set TORCH_HOME to move it)."
        ) from None


def read_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise SettingError("weights", f"{path} is not a file (use imagenet, none, or the path of a checkpoint)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a bad file; all mean "not a checkpoint"
        raise SettingError("weights", f"{path} is not a readable torch checkpoint ({error})") from None
    if not isinstance(state, dict):
        raise SettingError("weights", f"{path} holds a {type(state).__name__}, not a state dict")
    return state


def _load(module: nn.Module, state: dict, source: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first_lines = "; ".join(str(error).splitlines()[:3])
        raise SettingError("weights", f"{source} does not fit this backbone: {first_lines}") from None


def frozen_depth(backbone: nn.Sequential, finetune_blocks: int | str) -> int:
    """Index of the first fine-tuned block: the last ``finetune_blocks`` blocks holding
    parameters are tuned (with whatever parameter-free blocks follow them); ``all`` tunes all."""
    if finetune_blocks == "all":
        return 0
    with_parameters = [i for i, block in enumerate(backbone) if any(True for _ in block.parameters())]
    if finetune_blocks == 0:
        return len(backbone)
    return with_parameters[-min(int(finetune_blocks), len(with_parameters))]
