"""Config values a schema cannot judge alone, refused at validation (before any job) by their key."""

from pathlib import Path

import pytest

from vprflow.config import validate_config
from vprflow.errors import InputError

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "schemas" / "config.schema.yaml"


@pytest.mark.parametrize("width", ["32", -3, 0, 2.5, True])
def test_tiny_image_size_is_a_positive_integer(width):
    # Before the registry checks: a string or a negative passed validation, then cv2.error in extract.
    with pytest.raises(InputError, match=rf"models\.t\.width: must be an integer >= 1, got {width!r}"):
        validate_config({"models": {"t": {"descriptor": "tiny_image", "width": width}}}, SCHEMA)


def test_a_checkpoint_path_that_does_not_exist_is_named(tmp_path):
    # Before: found in the train job, after six jobs had run.
    missing = tmp_path / "nope.pt"
    with pytest.raises(InputError, match=rf"models\.m\.weights: {missing} is not a file"):
        validate_config({"models": {"m": {"descriptor": "cnn", "weights": str(missing)}}}, SCHEMA)


def test_an_existing_checkpoint_path_passes(tmp_path):
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"checked when loaded")
    config = validate_config({"models": {"m": {"descriptor": "cnn", "weights": str(weights)}}}, SCHEMA)
    assert config["models"]["m"]["weights"] == str(weights)


@pytest.mark.parametrize("fractions, total", [({"train": 0.5, "val": 0.1, "test": 0.2, "index": 0.1}, 0.9),
                                              ({"train": 0.6, "val": 0.2, "test": 0.3, "index": 0.1}, 1.2),
                                              ({"test": 0.5}, 0.5)])
def test_split_fractions_must_sum_to_one(fractions, total):
    # Before: found in the split job. The schema fills nothing inside a given fractions object,
    # so {"test": 0.5} sums to 0.5.
    with pytest.raises(InputError, match=rf"split\.fractions: .*sum to {total:g}.* must sum to 1"):
        validate_config({"split": {"fractions": fractions}}, SCHEMA)


def test_split_fractions_that_sum_to_one_pass():
    config = validate_config({"split": {"fractions": {"test": 0.7, "index": 0.3}}}, SCHEMA)
    assert config["split"]["fractions"] == {"test": 0.7, "index": 0.3}


@pytest.mark.parametrize("name", ["folder", "utm_folder", "class_folder"])
def test_a_dataset_root_that_does_not_exist_names_the_key(tmp_path, name):
    # Before: a bare "[Errno 2] No such file or directory" naming no key.
    missing = tmp_path / "photos"
    with pytest.raises(InputError, match=rf"dataset\.{name}\.root: folder {missing} does not exist"):
        validate_config({"dataset": {"name": name, name: {"root": str(missing)}}}, SCHEMA)


def test_a_downloadable_dataset_root_may_not_exist_yet(tmp_path):
    root = tmp_path / "later"
    config = validate_config({"dataset": {"name": "roxford5k", "revisited": {"root": str(root)}}}, SCHEMA)
    assert config["dataset"]["revisited"]["root"] == str(root)
