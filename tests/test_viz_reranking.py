import pandas as pd
import pytest

from vprflow.errors import InputError
from vprflow.rerank import settings_of as check_settings
from vprflow.viz import draw_grid, grid_sample


def test_grid_sample_marks_truth_and_is_seeded():
    neighbours = pd.DataFrame({"query_id": ["a"] * 3 + ["b"] * 3, "rank": [0, 1, 2] * 2,
                               "db_id": ["x", "y", "z", "y", "z", "x"], "score": 1.0})
    truth = pd.DataFrame({"query_id": ["a", "a", "b"], "db_id": ["y", "z", "x"],
                          "label": ["positive", "junk", "positive"]})
    sample = grid_sample(neighbours, truth, n_queries=5, k=2, seed=0)
    assert list(zip(sample["query_id"], sample["db_id"], sample["truth"])) == [
        ("a", "x", "negative"), ("a", "y", "positive"), ("b", "y", "negative"), ("b", "z", "negative")]
    one = grid_sample(neighbours, truth, n_queries=1, k=3, seed=4)
    assert one.equals(grid_sample(neighbours, truth, n_queries=1, k=3, seed=4)) and one["query_id"].nunique() == 1


def test_draw_grid_tiles(tmp_path, tiny_world):
    import cv2

    root, listing = tiny_world
    paths = {p: root / p for p in listing["path"]}
    sample = pd.DataFrame({"query_id": ["query/q00000.jpg"] * 2, "rank": [0, 1],
                           "db_id": ["database/d00000.jpg", "extra/corrupt001.jpg"], "truth": ["positive", "negative"]})
    draw_grid(sample, paths, tmp_path / "g.png", tile=(40, 30))
    grid = cv2.imread(str(tmp_path / "g.png"))[..., ::-1]
    assert grid.shape == (30, 120, 3)
    assert tuple(grid[1, 41]) == pytest.approx((40, 170, 40), abs=3)  # green frame of a positive
    assert tuple(grid[1, 81]) == pytest.approx((210, 40, 40), abs=3)  # red frame, even for an unreadable file


def test_rerank_settings_are_checked():
    check_settings("sv", {"method": "spatial", "top_r": 5})
    with pytest.raises(InputError, match=r"reranks\.x\.method"):
        check_settings("x", {"method": "magic"})
    with pytest.raises(InputError, match=r"reranks\.x: unknown setting\(s\) \['topr'\]"):
        check_settings("x", {"method": "spatial", "topr": 5})
