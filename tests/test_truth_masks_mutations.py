"""Ground truth and masks at their boundaries: a pair exactly at the radius, a place exactly
at the minimum size, a dataset's own label against a computed one."""

import numpy as np
import pandas as pd

from vprflow.ground_truth import build_ground_truth, by_radius
from vprflow.masks import build_masks, split_masks


def placed(ids, xy) -> pd.DataFrame:
    xy = np.asarray(xy, dtype=np.float64)
    return pd.DataFrame({"image_id": ids, "path": [f"{i}.jpg" for i in ids], "place": pd.NA,
                         "x": xy[:, 0], "y": xy[:, 1], "lat": np.nan, "lon": np.nan})


def pairs(table: pd.DataFrame) -> set:
    return set(zip(table["query_id"], table["db_id"]))


def test_radius_includes_pairs_exactly_at_the_radius():
    # Query at the origin, radius 5 m. (3, 4) and (-5, 0) and (0, 5) are exactly 5 m away
    # (3-4-5 triangle; integers, so no rounding), in the query's cell and in the cells to
    # its left and above; (5, 0.01) is 5.00001 m away, just outside.
    queries = placed(["q"], [(0.0, 0.0)])
    database = placed(["d34", "dleft", "dup", "dout"], [(3.0, 4.0), (-5.0, 0.0), (0.0, 5.0), (5.0, 0.01)])
    assert pairs(by_radius(queries, database, 5.0)) == {("q", "d34"), ("q", "dleft"), ("q", "dup")}


def test_listed_labels_take_precedence_over_computed_ones():
    # d_near is 5 m from q (a computed positive at radius 25) but the dataset lists it as junk;
    # d_far (100 m) is listed as hard; d_plain is only computed. Listed pairs whose query is not
    # an evaluation query (listed from d_near) and a query listed with itself are dropped.
    images = placed(["q", "d_near", "d_far", "d_plain"], [(0, 0), (3, 4), (100, 0), (0, 10)])
    split = pd.DataFrame({"image_id": images["image_id"], "is_query": [True, False, False, False],
                          "is_database": [False, True, True, True]})
    listed = pd.DataFrame({"query_path": ["q.jpg", "q.jpg", "d_near.jpg", "q.jpg"],
                           "db_path": ["d_near.jpg", "d_far.jpg", "d_far.jpg", "q.jpg"],
                           "label": ["junk", "hard", "easy", "easy"]})
    truth = build_ground_truth(images, split, "radius", 25.0, listed)
    assert list(zip(truth["query_id"], truth["db_id"], truth["label"])) == [
        ("q", "d_far", "hard"), ("q", "d_near", "junk"), ("q", "d_plain", "positive")]


def test_a_place_exactly_at_the_minimum_size_stays_and_one_below_leaves():
    # min_class_size 3 counts kept images (those in the split): "edge" has exactly 3 kept (and
    # one more outside the split, which does not count), "thin" 2 kept (+1 outside), "big" 4.
    # Only "thin" is minor: its query leaves the queries, its database image the database.
    places = {"b1": "big", "b2": "big", "b3": "big", "b4": "big", "e1": "edge", "e2": "edge", "e3": "edge",
              "e_out": "edge", "t1": "thin", "t2": "thin", "t_out": "thin"}
    images = pd.DataFrame({"image_id": list(places), "sha256": [f"h_{i}" for i in places],
                           "place": list(places.values())})
    kept = [i for i in places if not i.endswith("_out")]
    split = pd.DataFrame({"image_id": kept, "is_query": [i in ("b1", "e1", "t1") for i in kept],
                          "is_database": [i not in ("b1", "e1", "t1") for i in kept]})
    dropped_queries, dropped_database, pair_masks = split_masks(build_masks(images, split, min_class_size=3))
    assert dropped_queries == {"t1"} and dropped_database == {"t2"} and pair_masks.empty


def test_masks_name_the_query_itself_and_byte_identical_copies_only():
    # q is query and database (role both); c is a byte-identical copy of q; n differs by its hash.
    images = pd.DataFrame({"image_id": ["q", "c", "n"], "sha256": ["h", "h", "other"], "place": "p"})
    split = pd.DataFrame({"image_id": ["q", "c", "n"], "is_query": [True, False, False], "is_database": True})
    masks = build_masks(images, split)
    assert list(zip(masks["query_id"], masks["db_id"], masks["reason"])) == [("q", "c", "duplicate"),
                                                                            ("q", "q", "self")]


def test_auto_uses_the_radius_when_images_have_positions():
    # No place labels; q and d 20 m apart (within 25 m), far 30 m away: "auto" picks the radius.
    images = placed(["q", "d", "far"], [(0, 0), (12, 16), (30, 0)])
    split = pd.DataFrame({"image_id": ["q", "d", "far"], "is_query": [True, False, False], "is_database": True})
    truth = build_ground_truth(images, split, "auto", 25.0)
    assert list(zip(truth["query_id"], truth["db_id"], truth["label"])) == [("q", "d", "positive")]
