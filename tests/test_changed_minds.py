"""Reruns after a change of mind: random weights that stay the same, checkpoints from other
settings, a user's config file that replaces the demo's methods."""

import numpy as np
import pytest
import torch

UNTRAINED = {"backbone": "resnet18", "weights": "none", "pooling": "gem", "width": 64, "height": 48,
             "precision": "fp32"}


def encode(settings, images):
    from vprflow.descriptors.cnn import CNNDescriptor

    descriptor = CNNDescriptor(settings)
    return descriptor.encode(np.stack([descriptor.preprocess(image) for image in images]))


def test_random_weights_follow_the_seed():
    # Before: every extraction job drew fresh random weights, so shards (and runs) were encoded by
    # different networks: vectors differed by up to 0.16.
    images = np.random.default_rng(0).integers(0, 255, (3, 48, 64, 3), dtype=np.uint8)
    torch.manual_seed(123)  # whatever the caller's random state, the model's seed decides
    first = encode(UNTRAINED, images)
    torch.manual_seed(456)
    second = encode(UNTRAINED, images)
    np.testing.assert_array_equal(first, second)
    other_seed = encode({**UNTRAINED, "seed": 1}, images)
    assert np.abs(first - other_seed).max() > 1e-3


def test_building_a_seeded_network_leaves_the_callers_random_state_alone():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    encode(UNTRAINED, np.zeros((1, 48, 64, 3), np.uint8))
    np.testing.assert_array_equal(torch.rand(3), expected)
