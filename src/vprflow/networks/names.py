"""What the networks offer, by name, without importing torch: the settings checks (and so the
scheduler, which checks every model's settings before any job runs) read these tables;
``backbones``, ``pooling`` and ``compute`` build on them."""

from __future__ import annotations

from ..errors import SettingError

# backbone -> (how torchvision's model is cut into blocks, channels of its last conv layer)
BACKBONES: dict[str, tuple[str, int]] = {
    "vgg16": ("vgg", 512),
    "resnet18": ("resnet", 512),
    "resnet34": ("resnet", 512),
    "resnet50": ("resnet", 2048),
    "resnet101": ("resnet", 2048),
    "resnet152": ("resnet", 2048),
    "mobilenet_v2": ("features", 1280),
    "mobilenet_v3_small": ("features", 576),
    "mobilenet_v3_large": ("features", 960),
    "efficientnet_b0": ("features", 1280),
}
POOLINGS = ("gem", "mac", "spoc", "netvlad")
PRECISIONS = ("auto", "fp32", "bf16")
WHITENINGS = ("pca", "learned")


def check_backbone_name(name: str) -> None:
    if name not in BACKBONES:
        raise SettingError("backbone", f"unknown {name!r}; known: {', '.join(sorted(BACKBONES))}")


# backbone -> blocks kept for DELF's stride-16 feature map (see networks.delf)
LOCAL_CUTS = {
    "resnet18": 7,  # conv1, bn1, relu, maxpool, layer1, layer2, layer3
    "resnet34": 7,
    "resnet50": 7,
    "resnet101": 7,
    "resnet152": 7,
    "mobilenet_v2": 14,  # features[0..13]
    "vgg16": None,  # the whole of backbones' VGG16 cut (conv5_3): stride 16 already
}


def check_local_backbone(name: str) -> None:
    check_backbone_name(name)
    if name not in LOCAL_CUTS:
        raise SettingError("backbone", f"{name!r} has no stride-16 block known to delf; use one of "
                                       f"{', '.join(sorted(LOCAL_CUTS))}")
