"""Every "method by name" family follows one pattern (vprflow.registry): names resolve, the
config schema's enums list exactly the registered names, and unknown keys and bad values
are refused with the same kind of message, naming the whole config key."""

import pytest
import yaml

from conftest import REPO
from vprflow import pose
from vprflow.clean import CLEAN_METHODS
from vprflow.datasets.registry import DATASETS
from vprflow.descriptors import DESCRIPTORS
from vprflow.descriptors import settings_of as model_settings
from vprflow.errors import InputError
from vprflow.rerank import RERANKS
from vprflow.rerank import settings_of as rerank_settings
from vprflow.search import BACKENDS
from vprflow.search import settings_of as search_settings

SCHEMA = yaml.safe_load((REPO / "schemas" / "config.schema.yaml").read_text())["properties"]
FAMILIES = [DATASETS, CLEAN_METHODS, DESCRIPTORS, BACKENDS, RERANKS]


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.family)
def test_every_registered_name_resolves(family):
    for name in family.names():
        assert family.get(name) is not None
    with pytest.raises(InputError, match=rf"unknown {family.family} 'nonsense'; known: "):
        family.get("nonsense")


@pytest.mark.parametrize("family", [DESCRIPTORS, BACKENDS, RERANKS], ids=lambda f: f.family)
def test_named_entries_declare_their_defaults(family):
    for name in family.names():
        assert isinstance(family.get(name).DEFAULTS, dict)


def test_schema_enums_are_the_registries():
    assert SCHEMA["dataset"]["properties"]["name"]["enum"] == sorted(DATASETS.names(), key=list(DATASETS.entries).index)
    assert sorted(SCHEMA["clean"]["properties"]["method"]["enum"]) == CLEAN_METHODS.names()
    assert sorted(SCHEMA["reranks"]["additionalProperties"]["properties"]["method"]["enum"]) == RERANKS.names()
    assert SCHEMA["pose"]["properties"]["method"]["enum"] == list(pose.METHODS)


def test_every_dataset_has_its_settings_section():
    sections = SCHEMA["dataset"]["properties"]
    for name in DATASETS.names():
        assert DATASETS.get(name).section in sections, name


@pytest.mark.parametrize(
    "check, where, settings, message",
    [
        (model_settings, "m", {"descriptor": "tiny_image", "widht": 3},
         r"^models\.m: unknown setting\(s\) \['widht'\] for descriptor tiny_image; known: "),
        (search_settings, "s", {"backend": "exact", "nprobe": 3},
         r"^searches\.s: unknown setting\(s\) \['nprobe'\] for search backend exact; known: "),
        (rerank_settings, "r", {"method": "label", "top_r": 3},
         r"^reranks\.r: unknown setting\(s\) \['top_r'\] for re-ranking method label; known: "),
    ],
)
def test_unknown_keys_are_refused_alike(check, where, settings, message):
    with pytest.raises(InputError, match=message):
        check(where, settings)


@pytest.mark.parametrize(
    "check, where, settings, message",
    [
        (model_settings, "m", {"descriptor": "tiny_image", "width": -3}, r"^models\.m\.width: must be an integer >= 1, got -3$"),
        (model_settings, "m", {"descriptor": "tiny_image", "height": "24"}, r"^models\.m\.height: must be an integer >= 1, got '24'$"),
        (model_settings, "m", {"descriptor": "cnn", "clusters": 0}, r"^models\.m\.clusters: must be an integer >= 1, got 0$"),
        (model_settings, "m", {"descriptor": "cnn", "backbone": "resnet7"}, r"^models\.m\.backbone: unknown 'resnet7'"),
        (search_settings, "s", {"backend": "exact", "metric": "hamming"}, r"^searches\.s\.metric: unknown 'hamming'"),
        (search_settings, "s", {"backend": "lopq", "m": 7}, r"^searches\.s\.m: must be even"),
        (rerank_settings, "r", {"method": "spatial", "geometry": "affine"}, r"^reranks\.r\.geometry: unknown 'affine'"),
        (rerank_settings, "r", {"method": "alpha_qe", "n": 0}, r"^reranks\.r\.n: must be an integer >= 1, got 0$"),
    ],
)
def test_bad_values_name_the_whole_key(check, where, settings, message):
    with pytest.raises(InputError, match=message):
        check(where, settings)


def test_settings_come_back_complete():
    assert model_settings("m", {"descriptor": "tiny_image"}) == {"descriptor": "tiny_image", "width": 32,
                                                                 "height": 24, "color": True}
    assert search_settings("s", {"backend": "exact", "k": 5})["metric"] == "ip"
