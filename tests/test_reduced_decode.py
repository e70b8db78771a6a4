"""JPEGs larger than a descriptor's input are decoded at reduced scale (1/2, 1/4, 1/8), never below
the input size; other formats and query boxes are decoded whole."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from vprflow.descriptors import Descriptor, load
from vprflow.extract import encode_images
from vprflow.images import iter_batches, read_rgb


@pytest.fixture(scope="module")
def large_photo(tiny_world, tmp_path_factory):
    """A demo photo enlarged to 1280 x 960 (10x), as JPEG and PNG."""
    root, _ = tiny_world
    enlarged = cv2.resize(cv2.imread(str(root / "database/d00000.jpg")), (1280, 960), interpolation=cv2.INTER_CUBIC)
    folder = tmp_path_factory.mktemp("large")
    cv2.imwrite(str(folder / "photo.jpg"), enlarged, [cv2.IMWRITE_JPEG_QUALITY, 92])
    cv2.imwrite(str(folder / "photo.png"), enlarged)
    return folder / "photo.jpg", folder / "photo.png"


@pytest.mark.parametrize("at_least, expected", [
    ((1280, 960), (960, 1280)),  # no reduction reaches the size: whole
    ((700, 300), (960, 1280)),  # 1/2 would be 640 wide, below 700
    ((640, 480), (480, 640)),  # exactly half
    ((320, 100), (240, 320)),  # 1/4: width decides
    ((100, 200), (240, 320)),  # 1/4: height decides (1/8 would be 120 high)
    ((32, 24), (120, 160)),  # 1/8 is the smallest reduction
])
def test_the_largest_reduction_that_keeps_the_size_asked_for(large_photo, at_least, expected):
    jpeg, png = large_photo
    assert read_rgb(jpeg, at_least=at_least).shape == (*expected, 3)
    assert read_rgb(png, at_least=at_least).shape == (960, 1280, 3)  # not a JPEG: decoded whole
    assert read_rgb(jpeg).shape == (960, 1280, 3)


def test_reduced_decoding_then_shrinking_is_close_to_shrinking_the_whole_image(large_photo):
    jpeg, _ = large_photo
    size = (160, 120)
    whole = cv2.resize(read_rgb(jpeg), size, interpolation=cv2.INTER_AREA).astype(int)
    reduced = cv2.resize(read_rgb(jpeg, at_least=size), size, interpolation=cv2.INTER_AREA).astype(int)
    assert np.abs(whole - reduced).mean() < 2.0  # grey levels out of 255
    assert not np.array_equal(whole, reduced)  # a different decoding all the same


class ShapeRecorder(Descriptor):
    """Records the decoded size ``preprocess`` receives; asks for reduced decoding to 64 x 48."""

    name = "recorder"

    def __init__(self, decode_to):
        super().__init__({})
        self.decode_to, self.seen = decode_to, []

    def decode_size(self):
        return self.decode_to

    def preprocess(self, rgb):
        self.seen.append(rgb.shape[:2])
        return np.zeros(2, np.float32)

    def encode(self, batch):
        return batch


@pytest.mark.parametrize("decode_to, expected", [((64, 48), (120, 160)), (None, (960, 1280))])
def test_extraction_decodes_at_the_size_the_descriptor_asks_for(large_photo, decode_to, expected):
    descriptor = ShapeRecorder(decode_to)
    encode_images(descriptor, [large_photo[0]], workers=0)
    assert descriptor.seen == [expected]


def test_query_boxes_are_cut_from_the_whole_image(large_photo):
    jpeg, _ = large_photo
    batches = iter_batches([jpeg, jpeg], boxes=[(100, 50, 740, 530), None], workers=0, at_least=(64, 48))
    _, images, _ = next(batches)
    assert images[0].shape == (480, 640, 3)  # the box in full-size pixels
    np.testing.assert_array_equal(images[0], read_rgb(jpeg)[50:530, 100:740])
    assert images[1].shape == (120, 160, 3)


def test_a_cnn_asks_for_its_input_size_and_others_for_whole_images():
    assert load({"descriptor": "cnn", "weights": "none", "width": 224, "height": 160}).decode_size() == (224, 160)
    assert load({"descriptor": "tiny_image"}).decode_size() is None


def test_network_input_is_imagenet_normalised_channels_last():
    import torch

    from vprflow.networks.network import to_input
    from vprflow.networks.pixels import IMAGENET_MEAN, IMAGENET_STD

    batch = np.zeros((2, 4, 5, 3), np.uint8)
    batch[1] = 255
    x = to_input(batch, torch.device("cpu"))
    assert x.shape == (2, 3, 4, 5) and x.is_contiguous(memory_format=torch.channels_last)
    for channel, (mean, std) in enumerate(zip(IMAGENET_MEAN, IMAGENET_STD)):
        np.testing.assert_allclose(x[0, channel].numpy(), -mean / std, rtol=1e-6)  # black
        np.testing.assert_allclose(x[1, channel].numpy(), (1 - mean) / std, rtol=1e-6)  # white
    normalised = np.full((1, 2, 2, 3), 0.5, np.float32)  # what networks.pixels.network_input gives
    passed = to_input(normalised, torch.device("cpu"))
    assert passed.shape == (1, 3, 2, 2) and bool((passed == 0.5).all())  # already normalised: kept
    with pytest.raises(ValueError, match="float64"):
        to_input(normalised.astype(np.float64), torch.device("cpu"))
