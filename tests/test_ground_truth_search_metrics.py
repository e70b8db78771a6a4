import numpy as np
import pandas as pd
import pytest

from vprflow.datasets import normalise_listing
from vprflow.ground_truth import build_ground_truth, by_radius
from vprflow.masks import build_masks
from vprflow.metrics.recall import chance_recall, recall_at
from vprflow.pose import assign_top1
from vprflow.search import exact
from vprflow.search.run import find_neighbours


def located(n, seed):
    rng = np.random.default_rng(seed)
    table = normalise_listing(pd.DataFrame({"path": [f"{seed}_{i}.jpg" for i in range(n)], "role": "database",
                                            "x": rng.uniform(0, 300, n), "y": rng.uniform(0, 300, n)}))
    table.insert(0, "image_id", [f"s{seed}_{i}" for i in range(n)])
    return table


def test_radius_pairs_match_brute_force():
    q, d = located(200, 1), located(500, 2)
    found = by_radius(q, d, 25.0)
    dist = np.linalg.norm(q[["x", "y"]].to_numpy()[:, None] - d[["x", "y"]].to_numpy()[None], axis=2)
    qi, di = np.nonzero(dist <= 25.0)
    expected = set(zip(q["image_id"].to_numpy()[qi], d["image_id"].to_numpy()[di]))
    assert set(zip(found["query_id"], found["db_id"])) == expected
    assert len(found) == len(expected)


def test_ground_truth_by_place_excludes_self():
    images = normalise_listing(pd.DataFrame({"path": list("abcd"), "role": "both", "place": ["p", "p", "q", "q"]}))
    images.insert(0, "image_id", list("ABCD"))
    split = pd.DataFrame({"image_id": list("ABCD"), "is_query": True, "is_database": True})
    truth = build_ground_truth(images, split, "auto", 25.0)
    assert set(zip(truth["query_id"], truth["db_id"])) == {("A", "B"), ("B", "A"), ("C", "D"), ("D", "C")}


@pytest.mark.parametrize("metric", ["ip", "l2", "l1", "cosine"])
def test_exact_search_matches_numpy(metric):
    rng = np.random.default_rng(0)
    db, q = rng.normal(size=(300, 16)).astype(np.float32), rng.normal(size=(20, 16)).astype(np.float32)
    searcher = exact.load({"metric": metric, "query_batch": 7}, None, db)
    scores, rows = searcher.search(q, 5)
    if metric == "ip":
        reference = q @ db.T
    elif metric == "cosine":
        reference = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (db / np.linalg.norm(db, axis=1, keepdims=True)).T
    elif metric == "l2":
        reference = -((q[:, None] - db[None]) ** 2).sum(-1)
    else:
        reference = -np.abs(q[:, None] - db[None]).sum(-1)
    expected = np.argsort(-reference, axis=1)[:, :5]
    np.testing.assert_array_equal(rows, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(reference, expected, 1), rtol=1e-4, atol=1e-3)


def test_masks_remove_self_and_duplicates_and_keep_k():
    ids = np.array([f"i{n}" for n in range(6)], dtype=object)
    vectors = np.eye(6, dtype=np.float32) + 0.1
    images = pd.DataFrame({"image_id": ids, "sha256": ["h0", "h1", "h0", "h3", "h4", "h5"], "place": "p"})
    split = pd.DataFrame({"image_id": ids, "is_query": [True, True, False, False, False, False],
                          "is_database": True})
    masks = build_masks(images, split)
    assert set(zip(masks["query_id"], masks["db_id"], masks["reason"])) == {
        ("i0", "i0", "self"), ("i0", "i2", "duplicate"), ("i1", "i1", "self")}
    result = find_neighbours({"backend": "exact", "k": 3}, None, vectors, ids, vectors[:2], ids[:2], masks)
    assert result.groupby("query_id").size().tolist() == [3, 3]
    pairs = set(zip(result["query_id"], result["db_id"]))
    assert not pairs & {("i0", "i0"), ("i0", "i2"), ("i1", "i1")}
    assert list(result["rank"]) == [0, 1, 2, 0, 1, 2]


def test_recall_hand_computed():
    neighbours = pd.DataFrame({"query_id": ["a"] * 3 + ["b"] * 3 + ["c"] * 3, "rank": [0, 1, 2] * 3,
                               "db_id": ["x", "y", "z", "x", "y", "z", "x", "y", "z"], "score": 1.0})
    truth = pd.DataFrame({"query_id": ["a", "b", "c", "d"], "db_id": ["x", "z", "w", "x"],
                          "label": ["positive", "positive", "positive", "junk"]})
    result = recall_at(neighbours, truth, [1, 3])
    # a: hit at rank 0; b: hit at rank 2; c: positive never retrieved; d has only junk: not counted.
    assert result == {"R@1": pytest.approx(1 / 3), "R@3": pytest.approx(2 / 3), "n_queries": 3}


def test_chance_recall():
    truth = pd.DataFrame({"query_id": ["a"], "db_id": ["x"], "label": ["positive"]})
    assert chance_recall(truth, 10, [1, 5])["R@1"] == pytest.approx(0.1)
    assert chance_recall(truth, 10, [1, 5])["R@5"] == pytest.approx(0.5)


def test_pose_takes_top1_and_measures_error():
    images = normalise_listing(pd.DataFrame({"path": ["q", "d1", "d2"], "role": "both",
                                             "x": [0.0, 3.0, 100.0], "y": [0.0, 4.0, 0.0], "yaw": [0, 90, 180]}))
    images.insert(0, "image_id", ["Q", "D1", "D2"])
    neighbours = pd.DataFrame({"query_id": ["Q", "Q"], "rank": [0, 1], "db_id": ["D1", "D2"], "score": [0.9, 0.1]})
    poses = assign_top1(neighbours, images)
    assert poses.loc[0, "db_id"] == "D1" and poses.loc[0, "x"] == 3.0 and poses.loc[0, "yaw"] == 90
    assert poses.loc[0, "error_m"] == pytest.approx(5.0)


def test_minor_classes_leave_both_sides():
    ids = np.array([f"i{n}" for n in range(6)], dtype=object)
    vectors = np.eye(6, dtype=np.float32)
    images = pd.DataFrame({"image_id": ids, "sha256": [f"h{n}" for n in range(6)],
                           "place": ["big", "big", "big", "small", "big", "small"]})
    split = pd.DataFrame({"image_id": ids, "is_query": [True, False, False, True, False, False], "is_database": True})
    masks = build_masks(images, split, min_class_size=3)
    assert set(masks.loc[masks["reason"] == "minor_class", "query_id"]) == {"i3", "*"}
    result = find_neighbours({"backend": "exact", "k": 10}, None, vectors, ids, vectors[[0, 3]], ids[[0, 3]], masks)
    assert set(result["query_id"]) == {"i0"}  # the minor-class query is not searched
    assert set(result["db_id"]) == {"i1", "i2", "i4"}  # nor are minor-class images (or the query) returned
