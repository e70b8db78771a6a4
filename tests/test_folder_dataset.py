import pandas as pd
import pytest

from vprflow.datasets.folder import count_rows, read_folder
from vprflow.errors import InputError


def make_folder(tmp_path, rows, files=("a.jpg", "b.jpg", "c.jpg")):
    for name in files:
        (tmp_path / name).write_bytes(b"x")
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    return tmp_path


def test_valid_folder(tmp_path):
    root = make_folder(tmp_path, [
        {"path": "a.jpg", "role": "database", "place": "p1"},
        {"path": "b.jpg", "role": "query", "place": "p1"},
        {"path": "c.jpg", "role": "both", "place": "p2"},
    ])
    listing = read_folder(root)
    assert list(listing["role"]) == ["database", "query", "both"]
    assert count_rows(root) == 3


def test_problems_are_reported_by_row(tmp_path):
    root = make_folder(tmp_path, [
        {"path": "a.jpg", "role": "database", "x": 1.0, "y": 2.0},
        {"path": "missing.jpg", "role": "query", "x": 1.0, "y": 2.0},
        {"path": "a.jpg", "role": "query", "x": 1.0, "y": 2.0},
        {"path": "b.jpg", "role": "reference", "x": 1.0, "y": 2.0},
        {"path": "c.jpg", "role": "query", "x": None, "y": None},
    ])
    with pytest.raises(InputError) as error:
        read_folder(root)
    text = str(error.value)
    assert "row 3: file 'missing.jpg' not found" in text
    assert "row 4: duplicate path 'a.jpg' (first on row 2)" in text
    assert "row 5: unknown role 'reference'" in text
    assert "row 6: no ground truth" in text
    assert "row 2:" not in text


def test_missing_ground_truth_columns(tmp_path):
    root = make_folder(tmp_path, [{"path": "a.jpg", "role": "database"}])
    with pytest.raises(InputError, match="needs ground truth"):
        read_folder(root)


def test_path_escaping_the_root_is_refused(tmp_path):
    root = make_folder(tmp_path, [{"path": "../a.jpg", "role": "database", "place": "p"}])
    with pytest.raises(InputError, match="row 2: path '../a.jpg' must be relative"):
        read_folder(root)
