"""RootSIFT + VLAD: the local descriptors, the aggregation, the vocabulary training."""

import numpy as np
import pandas as pd
import pytest

from vprflow.descriptors import load
from vprflow.descriptors.rootsift_vlad import RootSIFTVLAD, load_vocabulary, rootsift, vlad
from vprflow.errors import InputError
from vprflow.images import read_rgb
from vprflow.extract import encode_images


def test_rootsift_rows_are_unit_norm_and_non_negative(tiny_world):
    root, _ = tiny_world
    local = rootsift(read_rgb(root / "database/d00003.jpg"), max_side=640, max_keypoints=300)
    assert local.shape[1] == 128 and 10 < len(local) <= 300
    assert (local >= 0).all()
    np.testing.assert_allclose(np.linalg.norm(local, axis=1), 1.0, rtol=1e-5)  # sqrt of an L1-unit vector


def test_vlad_power_and_intra_normalisation():
    vocabulary = np.zeros((2, 128), np.float32)
    vocabulary[1, 0] = 1.0
    descriptors = np.zeros((3, 128), np.float32)
    descriptors[0, 1] = 0.1  # word 0, residual (0, 0.1, ...)
    descriptors[1, 1] = 0.3  # word 0, residual (0, 0.3, ...) -> sum 0.4
    descriptors[2, :2] = [0.9, 0.04]  # word 1, residual (-0.1, 0.04, ...)
    out = vlad(descriptors, vocabulary, power=0.5).reshape(2, 128)
    expected_word1 = np.array([-np.sqrt(0.1), np.sqrt(0.04)]) / np.hypot(np.sqrt(0.1), np.sqrt(0.04))
    np.testing.assert_allclose(out[0, :2] * np.sqrt(2), [0.0, 1.0], atol=1e-6)  # each word unit, then / sqrt(2)
    np.testing.assert_allclose(out[1, :2] * np.sqrt(2), expected_word1, atol=1e-6)
    assert np.linalg.norm(out) == pytest.approx(1.0)
    assert not vlad(np.zeros((0, 128), np.float32), vocabulary, 0.5).any()


def test_vocabulary_from_the_train_split_then_extraction(tiny_world, tmp_path):
    root, listing = tiny_world
    images = listing[~listing["truth_corrupt"]].reset_index(drop=True)
    images["image_id"] = images["path"]
    images["split"] = np.where(np.arange(len(images)) % 3 == 0, "test", "train")
    images["abs_path"] = [str(root / p) for p in images["path"]]
    settings = {"vocabulary": 16, "vocabulary_images": 20, "max_keypoints": 200}
    (tmp_path / "model").mkdir()
    record = RootSIFTVLAD.train(settings, images, tmp_path / "model", workers=0)
    vocabulary = load_vocabulary(tmp_path / "model" / "model.pt")
    assert vocabulary.shape == (16, 128)
    assert record["n_images"] == 20 and record["out_dim"] == 16 * 128
    descriptor = load({"descriptor": "rootsift_vlad", **settings}, tmp_path / "model")
    test = images[images["split"] == "test"]
    vectors = encode_images(descriptor, list(test["abs_path"]), batch_size=8, workers=0)
    assert vectors.shape == (len(test), 16 * 128)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    # the same view of a place, described twice, is its own nearest neighbour
    again = encode_images(descriptor, list(test["abs_path"][:3]), batch_size=8, workers=0)
    assert list((again @ vectors.T).argmax(1)) == [0, 1, 2]


def test_extraction_without_a_vocabulary_says_what_is_missing(tmp_path):
    with pytest.raises(InputError, match="needs its vocabulary: no model.pt"):
        load({"descriptor": "rootsift_vlad"}, tmp_path)
    with pytest.raises(InputError, match="^vocabulary: must be an integer"):
        RootSIFTVLAD.train({"vocabulary": 0}, pd.DataFrame({"split": []}), tmp_path)
