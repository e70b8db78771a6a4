import numpy as np
import pandas as pd
import pytest

from vprflow.datasets import normalise_listing
from vprflow.errors import InputError
from vprflow.split import assign_splits, evaluation_roles, make_split
from vprflow.tables import positions_m

FRACTIONS = {"train": 0.6, "val": 0.1, "test": 0.2, "index": 0.1}


def images(n_places=50, per_place=6, seed=0):
    rng = np.random.default_rng(seed)
    rows = [{"path": f"{p}/{i}.jpg", "role": rng.choice(["database", "query"]), "place": f"p{p}"}
            for p in range(n_places) for i in range(per_place)]
    table = normalise_listing(pd.DataFrame(rows))
    table.insert(0, "image_id", [f"id{i}" for i in range(len(table))])
    return table


def test_grouped_split_is_disjoint_covering_and_keeps_places_whole():
    table = images()
    split = assign_splits(table, FRACTIONS, "grouped", seed=1)
    assert split.notna().all() and set(split) == set(FRACTIONS)
    assert (table.groupby("place").apply(lambda g: split[g.index].nunique(), include_groups=False) == 1).all()
    shares = split.value_counts(normalize=True)
    for name, fraction in FRACTIONS.items():
        assert abs(shares[name] - fraction) < 0.05


def test_stratified_split_spreads_each_place():
    table = images(n_places=20, per_place=10)
    split = assign_splits(table, FRACTIONS, "stratified", seed=1)
    per_place = pd.crosstab(table["place"], split)
    assert (per_place["train"] == 6).all() and (per_place["test"] == 2).all()
    assert (per_place["val"] == 1).all() and (per_place["index"] == 1).all()


def test_seeded():
    table = images()
    a = assign_splits(table, FRACTIONS, "grouped", seed=3)
    assert a.equals(assign_splits(table, FRACTIONS, "grouped", seed=3))
    assert not a.equals(assign_splits(table, FRACTIONS, "grouped", seed=4))


def test_cells_group_images_without_place():
    table = normalise_listing(pd.DataFrame({"path": [f"{i}.jpg" for i in range(40)], "role": "database",
                                            "x": np.arange(40) * 5.0, "y": 0.0}))
    split = assign_splits(table, FRACTIONS, "grouped", cell_m=20, seed=0)
    cells = (table["x"] // 20).astype(int)
    assert (split.groupby(cells).nunique() == 1).all()


def test_bad_fractions_and_images_without_place():
    table = images(3, 2)
    with pytest.raises(InputError, match="sum to 1"):
        assign_splits(table, {"train": 0.5, "test": 0.2}, "grouped")
    table["place"] = pd.NA  # no place, no position: every image is its own group
    assert assign_splits(table, {"test": 1.0}, "grouped").eq("test").all()


def test_evaluation_roles():
    role = pd.Series(["query", "database", "both", "", "", "query"])
    split = pd.Series(["test", "index", "test", "test", "index", "train"])
    roles = evaluation_roles(role, split, ["test"], ["test", "index"])
    assert list(roles["is_query"]) == [True, False, True, True, False, False]
    assert list(roles["is_database"]) == [False, True, True, False, True, False]


def test_make_split_table():
    table = make_split(images(), FRACTIONS, "grouped", 50.0, 0, ["test"], ["test", "index"])
    assert list(table.columns) == ["image_id", "split", "is_query", "is_database"]
    assert table["image_id"].is_unique


def test_positions_from_lat_lon():
    table = normalise_listing(pd.DataFrame({"path": ["a", "b"], "role": "database",
                                            "lat": [48.0, 48.001], "lon": [2.0, 2.0]}))
    xy = positions_m(table)
    assert abs(np.linalg.norm(xy[1] - xy[0]) - 111.2) < 0.5  # 0.001 degree of latitude
