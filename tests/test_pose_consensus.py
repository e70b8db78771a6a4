import numpy as np
import pandas as pd
import pytest

from vprflow.errors import InputError
from vprflow.pose import consensus_pose, pose_error_summary


def neighbours_from(lists: dict[str, list[tuple[str, float]]]) -> pd.DataFrame:
    rows = [
        (query, rank, db_id, np.float32(score))
        for query, ranked in lists.items()
        for rank, (db_id, score) in enumerate(ranked)
    ]
    return pd.DataFrame(rows, columns=["query_id", "rank", "db_id", "score"])


DB_XY = pd.DataFrame(
    {
        "image_id": ["o", "a", "b", "c", "n", "p", "f", "z"],
        "x": [0.0, 100.0, 102.0, 101.0, np.nan, 3.0, 50.0, 500.0],
        "y": [0.0, 100.0, 100.0, 103.0, np.nan, 4.0, 0.0, 500.0],
    }
)


def test_agreeing_neighbours_outvote_an_aliased_top1():
    neighbours = neighbours_from({"q1": [("o", 0.9), ("a", 0.8), ("b", 0.7), ("c", 0.6), ("z", 0.5)]})
    result = consensus_pose(neighbours, DB_XY, k=4, radius_m=10.0).set_index("query_id")
    # centre o: support 0.9 alone; centre a: a, b (2 m), c (3.2 m) -> 0.8 + 0.7 + 0.6 = 2.1 wins
    # x = (0.8*100 + 0.7*102 + 0.6*101) / 2.1 = 212 / 2.1;  y = (0.8*100 + 0.7*100 + 0.6*103) / 2.1 = 211.8 / 2.1
    # z (rank 4) is beyond k = 4 and ignored
    assert result.loc["q1", "x"] == pytest.approx(212 / 2.1)
    assert result.loc["q1", "y"] == pytest.approx(211.8 / 2.1)
    assert result.loc["q1", "n_agreeing"] == 3


def test_ties_go_to_the_better_ranked_centre_and_unknown_positions_are_skipped():
    neighbours = neighbours_from({"q2": [("o", 0.9), ("n", 0.8), ("p", 0.5), ("f", 0.4)]})
    result = consensus_pose(neighbours, DB_XY, k=4, radius_m=6.0).set_index("query_id")
    # n has no position. o and p are 5 m apart: both centres have support 0.9 + 0.5 = 1.4 -> o (rank 0)
    # x = (0.9*0 + 0.5*3) / 1.4 = 1.5 / 1.4;  y = (0.9*0 + 0.5*4) / 1.4 = 2 / 1.4
    assert result.loc["q2", "x"] == pytest.approx(1.5 / 1.4)
    assert result.loc["q2", "y"] == pytest.approx(2 / 1.4)
    assert result.loc["q2", "n_agreeing"] == 2


def test_zero_scores_fall_back_to_equal_weights_and_no_position_gives_nan():
    neighbours = neighbours_from({"q3": [("o", 0.0), ("p", -0.2)], "q4": [("n", 0.9)]})
    result = consensus_pose(neighbours, DB_XY.set_index("image_id"), k=2, radius_m=6.0).set_index("query_id")
    # q3: weights (0, 0) -> equal: mean of (0, 0) and (3, 4) = (1.5, 2)
    assert result.loc["q3", ["x", "y"]].tolist() == pytest.approx([1.5, 2.0])
    assert np.isnan(result.loc["q4", "x"]) and result.loc["q4", "n_agreeing"] == 0
    assert list(result.index) == ["q3", "q4"]


def test_consensus_names_database_images_without_a_position_row():
    neighbours = neighbours_from({"q1": [("ghost", 0.9)]})
    with pytest.raises(InputError, match="ghost"):
        consensus_pose(neighbours, DB_XY, k=1, radius_m=5.0)


def test_pose_error_summary_hand_values():
    # sorted [1, 2, 3, 4, 20]: median 3; p90 at h = 4 * 0.9 = 3.6 -> 4 + 0.6 * (20 - 4) = 13.6
    summary = pose_error_summary([20.0, 1.0, 3.0, 2.0, 4.0])
    assert summary["median_m"] == pytest.approx(3.0)
    assert summary["p90_m"] == pytest.approx(13.6)
    assert summary["within_5m"] == pytest.approx(4 / 5)
    assert summary["within_10m"] == pytest.approx(4 / 5)
    assert summary["within_25m"] == pytest.approx(1.0)
    assert summary["n"] == 5 and summary["n_missing"] == 0


def test_pose_error_summary_counts_missing_estimates_as_failures():
    # sorted [1, 2, 3, 4, 20, inf]: median at h = 2.5 -> 3.5; p90 at h = 4.5 lies between 20 and inf -> inf
    summary = pose_error_summary([1.0, 2.0, 3.0, 4.0, 20.0, np.nan])
    assert summary["median_m"] == pytest.approx(3.5)
    assert summary["p90_m"] == np.inf
    assert summary["within_5m"] == pytest.approx(4 / 6)
    assert summary["within_25m"] == pytest.approx(5 / 6)
    assert summary["n_missing"] == 1
    with pytest.raises(InputError):
        pose_error_summary([-1.0])
