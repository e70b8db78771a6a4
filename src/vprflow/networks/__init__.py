"""Networks for learned descriptors: torchvision backbones cut at their last convolution,
global poolings (NetVLAD, GeM, MAC, SPoC), PCA-whitening, and the device/precision choice.

Backbones and poolings are found by name (``backbones.BACKBONES``, ``pooling.POOLINGS``),
so a new one is one function plus one registry line.
"""
