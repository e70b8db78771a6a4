"""The one-pass network input (networks.pixels) against the two steps it replaces.

Every descriptor figure in the README was measured with OpenCV's area resize rounded to
uint8 and then normalised by ``to_input``; the one pass must give the same float32 bits,
or those figures would no longer describe the pipeline."""

import numpy as np
import pytest
import torch

from vprflow.networks.network import to_input
from vprflow.networks.pixels import _general_area_path, network_input, resize_to


def two_steps(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    resized = resize_to(rgb, width, height)
    return to_input(resized[None], torch.device("cpu"))[0].permute(1, 2, 0).numpy()


def photo_like(height: int, width: int, seed: int) -> np.ndarray:
    """Smooth gradients plus noise: flat areas make many sums land near .5 (rounding ties),
    noise makes every tap matter."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    smooth = np.stack([x * 255.0 / width, y * 255.0 / height, (x + y) * 127.0 / (width + height)], axis=-1)
    noisy = smooth + rng.normal(0, 20, smooth.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


# (source height, width): JPEGs decoded at reduced scale (1.0-2.0x left), a portrait photo
# into a landscape input, one axis at exactly the input size, a PNG shrunk 3.3x.
GENERAL = [(384, 512), (391, 517), (512, 342), (240, 401), (300, 320), (800, 1056), (241, 321)]
# OpenCV's other paths: whole factors on both axes (integer averaging), enlarging, mixed.
OTHER = [(480, 640), (240, 320), (720, 960), (120, 160), (200, 400), (239, 500)]


@pytest.mark.parametrize("height, width", GENERAL + OTHER)
def test_network_input_has_the_bits_of_area_resize_then_to_input(height, width):
    rgb = photo_like(height, width, seed=height * width)
    mine = network_input(rgb, 320, 240)
    assert mine.dtype == np.float32 and mine.shape == (240, 320, 3)
    np.testing.assert_array_equal(mine, two_steps(rgb, 320, 240))


def test_the_compiled_pass_covers_the_shrinks_a_reduced_jpeg_leaves():
    """The shapes above reach the path they are meant to test (else the equality above would
    only compare OpenCV with itself)."""
    assert all(_general_area_path(w, h, 320, 240) for h, w in GENERAL)
    assert not any(_general_area_path(w, h, 320, 240) for h, w in OTHER)


def test_extreme_values_round_and_clip_like_opencv():
    black, white = np.zeros((391, 517, 3), np.uint8), np.full((391, 517, 3), 255, np.uint8)
    checker = np.zeros((391, 517, 3), np.uint8)
    checker[::2, ::2] = checker[1::2, 1::2] = 255  # every output sum is a fraction of 255
    for rgb in (black, white, checker):
        np.testing.assert_array_equal(network_input(rgb, 320, 240), two_steps(rgb, 320, 240))
    assert float(network_input(white, 320, 240)[0, 0, 0]) == pytest.approx((1 - 0.485) / 0.229, rel=1e-6)


def test_a_cropped_view_is_read_as_its_pixels():
    rgb = photo_like(600, 800, seed=3)
    crop = rgb[50:480, 100:700]  # not contiguous, as a crop box gives
    np.testing.assert_array_equal(network_input(crop, 320, 240), two_steps(np.ascontiguousarray(crop), 320, 240))


def test_anything_but_uint8_rgb_is_refused_with_what_it_was():
    with pytest.raises(ValueError, match=r"float32 of shape \(10, 10, 3\)"):
        network_input(np.zeros((10, 10, 3), np.float32), 4, 4)
    with pytest.raises(ValueError, match=r"shape \(10, 10\)"):
        network_input(np.zeros((10, 10), np.uint8), 4, 4)
