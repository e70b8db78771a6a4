from pathlib import Path

import pytest
import yaml

from vprflow.config import load_config, validate_config
from vprflow.errors import InputError

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "schemas" / "config.schema.yaml"


def test_defaults_fill_an_empty_config():
    config = validate_config({}, SCHEMA)
    assert config["dataset"]["name"] == "demo"
    assert config["split"]["fractions"] == {"train": 0.6, "val": 0.1, "test": 0.2, "index": 0.1}
    assert config["searches"]["exact"]["k"] == 40
    assert config["evaluate"]["recall_at"] == [1, 5, 10, 20]
    assert config["ground_truth"]["radius_m"] == 25


def test_repository_config_is_valid():
    config = load_config(REPO / "config.yaml", SCHEMA)
    assert config["models"] and config["searches"]


@pytest.mark.parametrize("config, key", [
    ({"dataset": {"nmae": "demo"}}, "dataset"),
    ({"split": {"strategy": "random"}}, "split.strategy"),
    ({"searches": {"exact": {"backend": "exact", "k": 0}}}, "searches.exact.k"),
    ({"evaluate": {"recall_at": [0]}}, "evaluate.recall_at.0"),
    ({"models": {"bad/name": {"descriptor": "tiny_image"}}}, "models"),
])
def test_schema_errors_name_the_key(config, key):
    with pytest.raises(InputError) as error:
        validate_config(config, SCHEMA)
    assert f"{key}:" in str(error.value)


def test_unknown_descriptor_and_setting_are_named():
    with pytest.raises(InputError, match=r"models\.m\.descriptor: unknown descriptor 'nope'"):
        validate_config({"models": {"m": {"descriptor": "nope"}}}, SCHEMA)
    with pytest.raises(InputError, match=r"models\.m: unknown setting\(s\) \['widht'\]"):
        validate_config({"models": {"m": {"descriptor": "tiny_image", "widht": 3}}}, SCHEMA)
    with pytest.raises(InputError, match=r"searches\.s\.metric"):
        validate_config({"searches": {"s": {"backend": "exact", "metric": "hamming"}}}, SCHEMA)


def test_folder_dataset_needs_a_root():
    with pytest.raises(InputError, match="dataset.folder.root"):
        validate_config({"dataset": {"name": "folder"}}, SCHEMA)


def test_config_file_round_trip(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"searches": {"fast": {"backend": "exact", "metric": "l2", "k": 5}}}))
    config = load_config(path, SCHEMA)
    assert config["searches"]["fast"] == {"backend": "exact", "metric": "l2", "k": 5}


def test_descriptor_values_are_checked_at_validation():
    with pytest.raises(InputError, match=r"models\.m\.pooling: unknown 'maxx'"):
        validate_config({"models": {"m": {"descriptor": "cnn", "pooling": "maxx"}}}, SCHEMA)


def test_apply_to_names_searched_models():
    """``apply_to`` picks the rankings a step re-ranks; it must name searched models (not the
    local ones a verification reads)."""
    from vprflow.rerank import applies_to

    models = {"tiny": {"descriptor": "tiny_image"}, "rv": {"descriptor": "rootsift_vlad"}, "sift": {"descriptor": "sift"}}
    weak = {"method": "local", "features": "sift", "inlier_weight": 3, "apply_to": ["tiny"]}
    config = validate_config({"models": models, "reranks": {"weak": weak, "all": {"method": "label"}}}, SCHEMA)
    assert applies_to(config["reranks"]["weak"], "tiny") and not applies_to(config["reranks"]["weak"], "rv")
    assert applies_to(config["reranks"]["all"], "rv")  # no apply_to: every model
    for chosen, message in [
        (["sift"], r"reranks\.weak\.apply_to: \['sift'\] not among the searched models \['rv', 'tiny'\]"),
        (["nope", "tiny"], r"reranks\.weak\.apply_to: \['nope'\] not among the searched models"),
        ([], r"reranks\.weak\.apply_to: must be a list of model names \(null: every model\), got \[\]"),
    ]:
        with pytest.raises(InputError, match=message):
            validate_config({"models": models, "reranks": {"weak": {**weak, "apply_to": chosen}}}, SCHEMA)
