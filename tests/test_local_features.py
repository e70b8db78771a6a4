"""Local features: the shard store, SIFT as a local descriptor, matching, RANSAC, and the
verification scoring that must never let chance inliers spoil a good ranking."""

import cv2
import numpy as np
import pandas as pd
import pytest

from conftest import neighbours_from, textured_image
from vprflow.descriptors import is_local, load
from vprflow.errors import InputError
from vprflow.local.extract import extract_local_features
from vprflow.local.matching import FRAME, match_pair, plausible, ransac_inliers, tentative_matches
from vprflow.local.store import LocalFeatures, LocalFeatureStore, LocalFeatureWriter
from vprflow.local.verification import (VERIFICATION_DEFAULTS, FeatureCache, Shortlists, chance_inliers,
                                        verified_ranking, verify_shortlists)
from vprflow.rerank import Inputs, rerank

# --------------------------------------------------------------------------- store


def features(n: int, dim: int, seed: int, size=(640, 480)) -> LocalFeatures:
    rng = np.random.default_rng(seed)
    descriptors = rng.normal(size=(n, dim)).astype(np.float32)
    descriptors /= np.linalg.norm(descriptors, axis=1, keepdims=True)
    return LocalFeatures((rng.random((n, 2)) * size).astype(np.float32), rng.random(n).astype(np.float32) + 0.5,
                         rng.random(n).astype(np.float32), descriptors, size)


def test_store_round_trip_and_one_image_at_a_time(tmp_path):
    images = {"a": features(7, 5, 0), "empty": LocalFeatures.empty(5, (10, 20)), "b": features(3, 5, 1, (33, 44))}
    sizes = []
    with LocalFeatureWriter(tmp_path / "shard", 5) as writer:
        for image_id, found in images.items():
            writer.add(image_id, found)
            sizes.append(writer.keypoints.handle.tell())
    # each image goes to the file when added (nothing piles up in memory): 4 float32 per
    # keypoint after the 128-byte header
    assert [s - 128 for s in sizes] == [7 * 16, 7 * 16, 10 * 16]
    assert np.load(tmp_path / "shard" / "descriptors.npy").shape == (10, 5)
    store = LocalFeatureStore([tmp_path / "shard"])
    assert len(store) == 3 and store.dim == 5 and "b" in store and store.get("c") is None
    for image_id, expected in images.items():
        found = store.get(image_id)
        assert found.size == expected.size and len(found) == len(expected)
        np.testing.assert_array_equal(found.xy, expected.xy)
        np.testing.assert_array_equal(found.scale, expected.scale)
        np.testing.assert_array_equal(found.attention, expected.attention)
        np.testing.assert_allclose(found.descriptors, expected.descriptors, atol=1e-3)  # stored as float16


def test_store_names_a_folder_that_is_not_a_shard(tmp_path):
    (tmp_path / "shard").mkdir()
    with pytest.raises(InputError, match="lacks .*images.parquet"):
        LocalFeatureStore([tmp_path / "shard"])


# --------------------------------------------------------------------------- SIFT as local features


def test_sift_positions_are_in_the_pixels_of_the_image_as_read():
    image = textured_image(0, 480, 640)
    sift = load({"descriptor": "sift", "max_side": 320})
    full, half = sift.preprocess(image), load({"descriptor": "sift", "max_side": 640}).preprocess(image)
    assert is_local({"descriptor": "sift"}) and not is_local({"descriptor": "tiny_image"})
    assert full.size == (640, 480) and len(full) > 50
    np.testing.assert_allclose(np.linalg.norm(full.descriptors, axis=1), 1.0, rtol=1e-4)  # RootSIFT is unit-norm
    # found at half resolution, positions still land on the full image: most keypoints have a
    # full-resolution keypoint within 2 pixels
    nearest = np.linalg.norm(full.xy[:, None] - half.xy[None], axis=2).min(1)
    assert np.median(nearest) < 2.0
    assert full.xy[:, 0].max() > 400  # beyond the 320-pixel frame it was found in


def test_small_images_are_enlarged_for_detection_and_positions_stay_in_their_pixels():
    """A 160x120 frame is detected at 2x (``min_side`` 320; whole powers of two): more keypoints than at its own
    size, every position inside its own 160x120 pixels, and the keypoints found at its own
    size mostly have one found at 2x within a pixel (positions map back to the same place)."""
    from vprflow.descriptors import DESCRIPTORS
    from vprflow.descriptors.sift import detection_scale

    assert detection_scale(160, 120, 640, 320) == 2.0  # long side 160 -> 320
    assert detection_scale(192, 144, 640, 320) == 2.0  # 192 -> 384: a whole factor, not 320 / 192
    assert detection_scale(100, 80, 640, 320) == 4.0  # 2x is not enough
    assert detection_scale(300, 200, 500, 320) == 500 / 300  # 2x would pass max_side
    assert detection_scale(1280, 960, 640, 320) == 0.5  # long side 1280 -> 640
    assert detection_scale(400, 300, 640, 320) == 1.0  # between the two: as it is
    assert detection_scale(160, 120, 640, 0) == 1.0  # min_side 0: never enlarged
    image = textured_image(3, 120, 160)
    enlarged = load({"descriptor": "sift"}).preprocess(image)
    own = load({"descriptor": "sift", "min_side": 0}).preprocess(image)
    assert enlarged.size == own.size == (160, 120)
    assert len(enlarged) > 1.5 * len(own) > 0
    assert enlarged.xy.min() >= -0.5 and enlarged.xy[:, 0].max() < 160 and enlarged.xy[:, 1].max() < 120
    nearest = np.linalg.norm(own.xy[:, None] - enlarged.xy[None], axis=2).min(1)
    assert np.median(nearest) < 1.0
    with pytest.raises(InputError, match=r"^models.sift.min_side: must be at most max_side \(640\), got 800$"):
        DESCRIPTORS.settings("models.sift", {"descriptor": "sift", "min_side": 800})


# --------------------------------------------------------------------------- matching


def brute_force_matches(q, d, matching, ratio=0.8):
    """Independent reference: full distance matrix with numpy."""
    distances = ((q[:, None, :] - d[None, :, :]) ** 2).sum(-1)
    if matching == "ratio":
        order = np.argsort(distances, axis=1)
        first = distances[np.arange(len(q)), order[:, 0]]
        second = distances[np.arange(len(q)), order[:, 1]]
        keep = np.flatnonzero(first < ratio**2 * second)
        return keep, order[keep, 0]
    forward, backward = distances.argmin(1), distances.argmin(0)
    keep = np.flatnonzero(backward[forward] == np.arange(len(q)))
    return keep, forward[keep]


@pytest.mark.parametrize("matching", ["mutual", "ratio"])
def test_tentative_matches_equal_a_brute_force_reference(matching):
    q, d = features(60, 8, 1).descriptors, features(45, 8, 2).descriptors
    d[:20] = q[10:30] + 0.05 * np.random.default_rng(3).normal(size=(20, 8))  # 20 true matches among noise
    found = tentative_matches(q, d, matching)
    expected = brute_force_matches(q, d, matching)
    np.testing.assert_array_equal(found[0], expected[0])
    np.testing.assert_array_equal(found[1], expected[1])
    assert {(i, j) for i, j in zip(*found)} >= {(10 + k, k) for k in range(20)}


def test_mutual_and_ratio_on_a_hand_case():
    # q0 = e1, q1 = e2, q2 = (e1 + 0.1 e2)/|.|; d0 = e1, d1 = e3
    q = np.array([[1, 0, 0], [0, 1, 0], [1, 0.1, 0]], np.float32)
    q[2] /= np.linalg.norm(q[2])
    d = np.array([[1, 0, 0], [0, 0, 1]], np.float32)
    # q0 <-> d0 mutual; q2's nearest is d0 but d0's is q0; q1 is equally far (sqrt 2) from both -> first
    assert [list(a) for a in tentative_matches(q, d, "mutual")] == [[0], [0]]
    # ratio: q0 0 vs 2 -> kept; q1 2 vs 2 -> dropped; q2 0.0099 vs 2 -> kept (both to d0)
    assert [list(a) for a in tentative_matches(q, d, "ratio", 0.8)] == [[0, 2], [0, 0]]


def homography_points(n_inliers, n_outliers, seed):
    rng = np.random.default_rng(seed)
    homography = np.array([[0.8, 0.15, 40.0], [-0.1, 0.9, 25.0], [2e-4, 1e-4, 1.0]])
    source = rng.random((n_inliers + n_outliers, 2)) * 600
    target = cv2.perspectiveTransform(source[None].astype(np.float64), homography)[0]
    target[n_inliers:] = rng.random((n_outliers, 2)) * 600  # outliers: anywhere
    return source.astype(np.float32), target.astype(np.float32)


def test_ransac_homography_keeps_exactly_the_points_that_fit():
    source, target = homography_points(30, 40, 0)
    inliers = ransac_inliers(source, target, "homography", 3.0)
    assert inliers[:30].all()
    # an outlier lands within 3 px of where the homography sends its source by chance only
    projected = cv2.perspectiveTransform(source[None].astype(np.float64), cv2.findHomography(
        source[:30], target[:30])[0])[0]
    near = np.linalg.norm(projected - target, axis=1) < 3.0
    np.testing.assert_array_equal(inliers, near)
    assert not ransac_inliers(source[:3], target[:3], "homography", 3.0).any()  # fewer than 4 matches


def test_ransac_fundamental_on_a_moving_camera():
    rng = np.random.default_rng(1)
    points = np.column_stack([rng.uniform(-2, 2, 60), rng.uniform(-1.5, 1.5, 60), rng.uniform(4, 9, 60)])
    camera = np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]])

    def project(rotation_y, shift):
        angle = np.radians(rotation_y)
        rotation = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
        seen = (points @ rotation.T + shift) @ camera.T
        return (seen[:, :2] / seen[:, 2:]).astype(np.float32)

    first, second = project(0, np.zeros(3)), project(12, np.array([-0.8, 0.1, 0.3]))
    second[40:] = rng.random((20, 2)).astype(np.float32) * 600  # 20 outliers
    inliers = ransac_inliers(first, second, "fundamental", 1.0)
    assert inliers[:40].all() and inliers[40:].sum() <= 3


def test_match_pair_threshold_is_a_share_of_the_image_size():
    """The same scene at twice the resolution gives the same inliers: positions are scaled
    to FRAME pixels on the longest side before RANSAC."""
    source, target = homography_points(25, 30, 2)
    rng = np.random.default_rng(4)
    descriptors = rng.normal(size=(55, 16)).astype(np.float32)
    descriptors /= np.linalg.norm(descriptors, axis=1, keepdims=True)
    small = (LocalFeatures(source, np.ones(55, np.float32), np.ones(55, np.float32), descriptors, (640, 640)),
             LocalFeatures(target, np.ones(55, np.float32), np.ones(55, np.float32), descriptors, (640, 640)))
    large = tuple(LocalFeatures(f.xy * 2, f.scale, f.attention, f.descriptors, (1280, 1280)) for f in small)
    a, b = match_pair(*small, ransac_threshold=0.005), match_pair(*large, ransac_threshold=0.005)
    assert a.n_matches == b.n_matches == 55
    np.testing.assert_array_equal(a.inliers, b.inliers)
    assert a.n_inliers >= 25
    assert FRAME == 1000.0


# --------------------------------------------------------------------------- scoring

SETTINGS = {**VERIFICATION_DEFAULTS, "top_r": 4, "min_inliers": 12, "min_inlier_ratio": 0.1, "max_inliers": 40,
            "chance_factor": 0, "inlier_weight": 1.0}  # the count rules alone; the chance test has tests below


def scored(lists, inliers, matches, settings=SETTINGS):
    neighbours = neighbours_from(lists)
    return verified_ranking(Shortlists.of(neighbours), np.array(inliers), np.array(matches), settings)


def test_verification_adds_to_the_global_score_within_the_top_r():
    # global scores 1.0, 0.9, ... 0.5 (neighbours_from); top R = 4 (1.0 .. 0.7), scaled into
    # [0, 1] there: d0 1, d1 2/3, d2 1/3, d3 0
    #   d0:   5 inliers of  50 -> too few            d1: 30 of  60 -> verified: + 30/40
    #   d2:  13 inliers of 200 -> share 0.065 < 0.1  d3: 100 of 150 -> verified, capped: + 40/40
    #   d4, d5: below R: after the top R, in global order
    # fused: d0 1, d1 2/3 + 0.75 = 1.417, d2 1/3, d3 0 + 1 = 1
    result = scored({"q": ["d0", "d1", "d2", "d3", "d4", "d5"]}, [5, 30, 13, 100, -1, -1], [50, 60, 200, 150, -1, -1])
    assert list(result["db_id"]) == ["d1", "d0", "d3", "d2", "d4", "d5"]  # d3 ties d0 at 1: rank decides
    # score: 1 + fused in the top R; below R 0.999 * the global score scaled over the whole list (0.5 .. 1.0)
    expected = [1 + 2 / 3 + 0.75, 2.0, 2.0, 1 + 1 / 3, 0.999 * 0.2, 0.0]
    np.testing.assert_allclose(result["score"], expected, rtol=1e-6)
    assert list(result["rank"]) == list(range(6))


def test_a_large_inlier_weight_puts_verified_pairs_first_by_capped_count():
    # the same lists: d3 (capped 40) before d1 (30), then the unverified d0, d2 in global order
    result = scored({"q": ["d0", "d1", "d2", "d3", "d4", "d5"]}, [5, 30, 13, 100, -1, -1], [50, 60, 200, 150, -1, -1],
                    {**SETTINGS, "inlier_weight": 1000.0})
    assert list(result["db_id"]) == ["d3", "d1", "d0", "d2", "d4", "d5"]


def test_a_just_verified_look_alike_does_not_overtake_a_much_more_similar_image():
    # one true image at global rank 0 with 0 inliers (strong viewpoint change); a look-alike at
    # rank 3 of the top 4 (scaled global score 0) with 13 inliers (verified): fused 13/40 =
    # 0.325, under b's 1/3, so the order stays; even at 40 inliers it would only tie "true" (1)
    lists = {"q": ["true", "a", "b", "lookalike", "c"]}
    assert list(scored(lists, [0, 0, 0, 13, -1], [20, 20, 20, 30, -1])["db_id"]) == ["true", "a", "b", "lookalike",
                                                                                      "c"]
    assert list(scored(lists, [0, 0, 0, 13, -1], [20, 20, 20, 30, -1], {**SETTINGS, "inlier_weight": 1000.0})[
        "db_id"]) == ["lookalike", "true", "a", "b", "c"]  # verified first: the single right image drops


def test_ties_go_to_the_original_rank():
    lists = {"q": ["a", "b", "c", "d"]}
    neighbours = neighbours_from(lists)
    neighbours["score"] = np.float32([0.9, 0.9, 0.95, 0.5])  # b ties a on the global score
    neighbours["rank"] = [0, 1, 2, 3]
    # a, b, c all verified above the cap of 40: + 1 each; c leads on the global score, a and b tie: rank
    result = verified_ranking(Shortlists.of(neighbours), np.array([50, 41, 45, 3]), np.array([60, 60, 60, 60]),
                              SETTINGS)
    assert list(result["db_id"]) == ["c", "a", "b", "d"]


def test_a_shortlist_without_verified_pairs_keeps_its_order():
    result = scored({"q": ["a", "b", "c", "d", "e"], "r": ["x", "y"]}, [11, 3, 0, 9, -1, 12, 40],
                    [20, 9, 0, 40, -1, 30, 400])
    assert list(result.loc[result["query_id"] == "q", "db_id"]) == ["a", "b", "c", "d", "e"]
    # r, both exactly at a limit: x 12 inliers (the minimum) of 30, y 40 of 400 (share 0.1, the
    # minimum): both verified; x: 1 + 1 + 12/40 = 2.3, y: 1 + 0 + 40/40 = 2.0: x stays first
    assert list(result.loc[result["query_id"] == "r", "db_id"]) == ["x", "y"]
    np.testing.assert_allclose(result.loc[result["query_id"] == "r", "score"], [2.3, 2.0], rtol=1e-6)
    q = result[result["query_id"] == "q"]
    assert (np.diff(q["score"].to_numpy()) <= 0).all()
    np.testing.assert_allclose(q["score"], [2.0, 1 + 2 / 3, 1 + 1 / 3, 1.0, 0.0], rtol=1e-6)


def test_the_chance_level_is_the_median_of_the_query_s_other_verified_rows():
    # q: 10, 40, 20, 30 verified, one row below R (-1): each row's level is the median of the
    # other three (10: 30, 40: 20, 20: 30, 30: 20); the row below R takes no part and gets 0;
    # r: one verified row, no other: 0; s: nothing verified: 0
    inliers = np.array([10, 40, 20, 30, -1, 50, -1, -1])
    codes = np.array([0, 0, 0, 0, 0, 1, 2, 2])
    np.testing.assert_array_equal(chance_inliers(inliers, codes), [30, 20, 30, 20, 0, 0, 0, 0])


def test_pairs_of_look_alikes_all_far_above_the_count_stay_unverified():
    # every pair clears 12 inliers and the share: look-alike facades, each 30-45 inliers, the
    # true match (global rank 0, seen from far) 25. By counts a look-alike would go first; the
    # query's chance level is the median 35, so only 70 or more verifies: nothing moves.
    lists = {"q": ["true", "a", "b", "c", "d"]}
    inliers, matches = [25, 45, 30, 35, 40], [100] * 5
    settings = {**SETTINGS, "top_r": 5, "chance_factor": 2.0}
    assert scored(lists, inliers, matches, {**SETTINGS, "top_r": 5})["db_id"].iloc[0] == "a"  # counts alone
    assert list(scored(lists, inliers, matches, settings)["db_id"]) == ["true", "a", "b", "c", "d"]
    # a true match far above its shortlist's level still moves up: median 15, 80 >= 2 x 15
    lists = {"q": ["a", "b", "true", "c", "d"]}
    result = scored(lists, [15, 14, 80, 16, 15], [100] * 5, settings)
    assert list(result["db_id"]) == ["true", "a", "b", "c", "d"]
    # ... and at the limit: 30 = 2 x 15 verifies, 29 does not
    assert scored(lists, [15, 14, 30, 16, 15], [100] * 5, settings)["db_id"].iloc[0] == "true"
    assert scored(lists, [15, 14, 29, 16, 15], [100] * 5, settings)["db_id"].iloc[0] == "a"


# --------------------------------------------------------------------------- the failure mode of raw inlier counts


def look_alike_case(seed=0):
    """One query, its true match at global rank 0 seen from far off (10 true correspondences
    under a strong homography), and nine look-alike distractors: facades whose repeated
    windows match 30 of the query's descriptors at unrelated places, a few of which line up
    by chance. Returns the features by id and the global shortlist."""
    rng = np.random.default_rng(seed)
    query = features(100, 40, seed)
    by_id = {"query": query}
    homography = np.array([[0.55, 0.35, 120.0], [-0.25, 0.7, 60.0], [6e-4, 3e-4, 1.0]])  # strong viewpoint change
    true_rows = rng.choice(100, 10, replace=False)
    seen = cv2.perspectiveTransform(query.xy[true_rows][None].astype(np.float64), homography)[0].astype(np.float32)
    other = features(30, 40, seed + 100)
    other.descriptors[:10] = query.descriptors[true_rows]
    other.xy[:10] = seen
    by_id["true"] = other
    for k in range(9):
        distractor = features(60, 40, seed + 200 + k)
        rows = rng.choice(100, 30, replace=False)
        distractor.descriptors[:30] = query.descriptors[rows]  # the same windows, elsewhere
        # aliasing: a run of windows one facade-bay apart lines up under a shift
        aligned = 3 + k  # 3 .. 11 chance inliers: more than the true match's 10, fewer than min_inliers
        distractor.xy[:aligned] = query.xy[rows[:aligned]] + np.float32([37.0, 0.0])
        by_id[f"lookalike{k}"] = distractor
    ranked = ["true"] + [f"lookalike{k}" for k in range(9)]
    return by_id, neighbours_from({"query": ranked})


def raw_inlier_order(neighbours, inliers):
    """Today's rule, for reference: the top R by raw inlier count, ties by rank."""
    return [d for _, d in sorted(zip(-inliers, neighbours.sort_values("rank")["db_id"]), key=lambda t: t[0])]


@pytest.mark.parametrize("matching", ["mutual", "ratio"])
def test_chance_inliers_of_look_alikes_do_not_overtake_the_true_match(matching):
    by_id, neighbours = look_alike_case()
    settings = {**VERIFICATION_DEFAULTS, "top_r": 10, "min_inliers": 12, "min_inlier_ratio": 0.1,
                "matching": matching}
    shortlists, inliers, matches = verify_shortlists(neighbours, FeatureCache(by_id.get), settings)
    by_db = dict(zip(shortlists.ranked["db_id"], inliers))
    assert by_db["true"] == 10  # every true correspondence found, and no more
    # the failure mode: several look-alikes draw more (chance) inliers than the true match ...
    assert sum(by_db[f"lookalike{k}"] > 10 for k in range(9)) >= 1
    assert raw_inlier_order(neighbours, inliers)[0] != "true"  # ... so raw counts put a wrong image first
    # ... but none clears the minimum, so the global order, true match first, stays as it was
    result = verified_ranking(shortlists, inliers, matches, settings)
    assert list(result["db_id"]) == list(neighbours["db_id"])


def test_a_clearly_verified_true_match_moves_up_past_look_alikes():
    by_id, neighbours = look_alike_case(seed=1)
    more = features(60, 40, 7)  # the true match seen from close by: 40 correspondences
    homography = np.array([[0.9, 0.05, 20.0], [-0.05, 0.95, 10.0], [1e-4, 0.0, 1.0]])
    rows = np.arange(40)
    more.descriptors[:40] = by_id["query"].descriptors[rows]
    more.xy[:40] = cv2.perspectiveTransform(by_id["query"].xy[rows][None].astype(np.float64), homography)[0]
    by_id["true"] = more
    order = ["lookalike0", "lookalike1", "true", "lookalike2", "lookalike3"]
    neighbours = neighbours_from({"query": order})
    settings = {**VERIFICATION_DEFAULTS, "top_r": 5}
    shortlists, inliers, matches = verify_shortlists(neighbours, FeatureCache(by_id.get), settings)
    result = verified_ranking(shortlists, inliers, matches, settings)
    assert list(result["db_id"]) == ["true", "lookalike0", "lookalike1", "lookalike2", "lookalike3"]


# --------------------------------------------------------------------------- reading features once


def test_each_image_is_read_once_and_threads_change_nothing():
    by_id = {f"i{k}": features(80, 16, k) for k in range(6)}
    by_id["i5"].descriptors[:30] = by_id["i0"].descriptors[:30]
    by_id["i5"].xy[:30] = by_id["i0"].xy[:30] * 0.9 + 12
    reads = []

    def read(image_id):
        reads.append(image_id)
        return by_id.get(image_id)

    neighbours = neighbours_from({"i0": ["i1", "i2", "i5", "missing"], "i3": ["i5", "i1", "i4"], "i4": ["i2", "i5"]})
    settings = {**VERIFICATION_DEFAULTS, "top_r": 3}
    one = verify_shortlists(neighbours, FeatureCache(read), settings, threads=1, queries_per_block=1)
    assert sorted(reads) == sorted(set(reads)) == ["i0", "i1", "i2", "i3", "i4", "i5"]  # 'missing' is below R
    two = verify_shortlists(neighbours, FeatureCache(by_id.get), settings, threads=2)
    np.testing.assert_array_equal(one[1], two[1])
    np.testing.assert_array_equal(one[2], two[2])
    inliers = dict(zip(zip(one[0].ranked["query_id"], one[0].ranked["db_id"]), one[1]))
    assert inliers[("i0", "i5")] == 30 and inliers[("i0", "missing")] == -1


def test_feature_cache_drops_the_oldest_beyond_its_budget():
    by_id = {k: features(10, 4, i) for i, k in enumerate("abc")}
    cache = FeatureCache(by_id.get, max_bytes=2 * 10 * 4 * 4)  # two images' descriptors
    for image_id in "abca":
        cache.get(image_id)
    assert cache.reads == 4 and list(cache.kept) == ["c", "a"]


# --------------------------------------------------------------------------- method: local


def test_local_method_reads_a_sift_model_and_moves_the_warped_copy_up(tmp_path):
    query = textured_image(10)
    homography = np.array([[0.9, 0.1, 10.0], [-0.08, 0.95, 15.0], [1e-4, 5e-5, 1.0]])
    images = {"query": query, "warped": cv2.warpPerspective(query, homography, (320, 240),
                                                            borderMode=cv2.BORDER_REFLECT),
              "other1": textured_image(11), "other2": textured_image(12)}
    paths = []
    for image_id, image in images.items():
        paths.append(tmp_path / f"{image_id}.png")
        cv2.imwrite(str(paths[-1]), image[:, :, ::-1])
    (tmp_path / "broken.png").write_bytes(b"not a png")
    sift = load({"descriptor": "sift"})
    written = extract_local_features(sift, paths + [tmp_path / "broken.png"], [*images, "broken"],
                                     tmp_path / "shard", batch_size=2, workers=0)
    assert written[0] == 4  # the broken file is left out, not fatal
    neighbours = neighbours_from({"query": ["other1", "broken", "warped", "other2"]})
    inputs = Inputs(manifest=pd.DataFrame(), root=tmp_path, split=pd.DataFrame(), masks=pd.DataFrame(),
                    vectors_path="", ids_path="", local_features=[tmp_path / "shard"])
    result = rerank(neighbours, {"method": "local", "features": "sift", "top_r": 4}, inputs)
    assert list(result["db_id"]) == ["warped", "other1", "broken", "other2"]
    # 1 + global scaled over the top 4 (1, 2/3, 1/3, 0 in the original order) + 40/40 for the
    # warped copy, verified far above the cap
    np.testing.assert_allclose(result["score"], [1 + 1 / 3 + 1, 2.0, 1 + 2 / 3, 1.0], rtol=1e-6)
    with pytest.raises(InputError, match="no feature shards"):
        rerank(neighbours, {"method": "local", "features": "sift"}, Inputs(
            manifest=pd.DataFrame(), root=tmp_path, split=pd.DataFrame(), masks=pd.DataFrame(), vectors_path="",
            ids_path=""))


def test_implausible_homographies_count_as_no_model():
    """What RANSAC fits to chance matches: a mirror, or a plane seen edge-on within the
    photos (the projective denominator crosses zero). A real viewpoint change passes."""
    points = np.array([[0, 0], [1000, 0], [0, 750], [1000, 750]], np.float64)
    real = np.array([[0.9, 0.1, 10.0], [-0.08, 0.95, 15.0], [1e-4, 5e-5, 1.0]])  # denominators 1 .. 1.14
    mirror = np.diag([-1.0, 1.0, 1.0])
    edge_on = np.array([[1.0, 0, 0], [0, 1.0, 0], [-0.0018, -0.0035, 1.0]])  # 1 - 1.8 - 2.6 < 0 at (1000, 750)
    assert plausible(real, points) and plausible(3 * real, points) and plausible(-real, points)
    assert not plausible(mirror, points) and not plausible(edge_on, points)
    # through RANSAC: a mirrored copy of matched points has a perfect model, but no plausible one
    source, _ = homography_points(30, 0, 5)
    assert not ransac_inliers(source, source * np.float32([-1, 1]) + 600, "homography", 3.0).any()
    assert ransac_inliers(source, source * 0.8 + 50, "homography", 3.0).all()
