"""Re-ranking at its edges: negative similarities in alpha-QE and DBA, and ties in
spatial verification.

The verification tests hold to the contract that outlives any change of the inlier
logic: among the verified top R, equal verification scores are ordered by the global
score, then by the original rank; rows below R keep their order after them.
"""

import cv2
import numpy as np
import pandas as pd
import pytest

from conftest import neighbours_from, textured_image
from vprflow.rerank.expansion import alpha_query_expansion, database_side_augmentation
from vprflow.rerank.spatial import spatial_verification
from vprflow.vectors import l2_normalise


def normalised(vector) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float64)
    return vector / np.linalg.norm(vector)


# --------------------------------------------------------------------------- alpha-QE and DBA


@pytest.mark.parametrize("alpha", [1.0, 2.0, 3.0])
def test_alpha_qe_gives_neighbours_with_negative_similarity_no_weight(alpha):
    # q = (1, 0); d0 = (0.6, 0.8) with q.d0 = 0.6; d1 = (-0.8, 0.6) with q.d1 = -0.8.
    # Weights max(q.d, 0)^alpha: d0 gets 0.6^alpha, d1 gets 0 whatever alpha (odd alpha would
    # otherwise push q away from d1, even alpha pull it towards d1).
    # q' = normalise((1, 0) + 0.6^alpha (0.6, 0.8)).
    database = np.array([[0.6, 0.8], [-0.8, 0.6]])
    expanded = alpha_query_expansion(np.array([[1.0, 0.0]]), database, n=2, alpha=alpha,
                                     neighbour_index=np.array([[0, 1]]))
    weight = 0.6**alpha
    np.testing.assert_allclose(expanded[0], normalised([1 + weight * 0.6, weight * 0.8]), rtol=1e-6)


def test_alpha_qe_leaves_a_query_whose_neighbours_all_point_away_unchanged():
    # Every neighbour has q.d < 0: no weight at all, q' = q.
    database = np.array([[-1.0, 0.0], [-0.6, -0.8]])
    expanded = alpha_query_expansion(np.array([[0.0, 2.0]]), database, n=2, alpha=3.0,
                                     neighbour_index=np.array([[0, 1]]))
    np.testing.assert_allclose(expanded, [[0.0, 1.0]], atol=1e-7)


def test_dba_gives_nearest_others_with_negative_similarity_no_weight():
    # a = (1, 0), b = (-0.6, 0.8), c = (-0.6, -0.8): a.b = a.c = -0.6, b.c = 0.36 - 0.64 = -0.28.
    # Each vector's nearest other has a negative similarity, so k = 1 adds nothing: the
    # database comes back as it was (normalised).
    database = np.array([[1.0, 0.0], [-0.6, 0.8], [-0.6, -0.8]])
    augmented = database_side_augmentation(database, k=1, alpha=3.0)
    np.testing.assert_allclose(augmented, l2_normalise(database), atol=1e-7)
    # k = 2 with alpha = 1: b takes c (-0.28, weight 0) and a (-0.6, weight 0): still unchanged.
    np.testing.assert_allclose(database_side_augmentation(database, k=2, alpha=1.0), l2_normalise(database),
                               atol=1e-7)


# --------------------------------------------------------------------------- spatial verification ties


@pytest.fixture(scope="module")
def tie_images(tmp_path_factory):
    """A textured query, two byte-identical warped copies of it (same inliers: a tie at a
    high count), and flat grey images (no keypoint, so 0 inliers each: a tie at 0)."""
    folder = tmp_path_factory.mktemp("ties")
    query = textured_image(0)
    homography = np.array([[0.92, 0.08, 12.0], [-0.06, 0.95, 10.0], [8e-5, 4e-5, 1.0]])
    images = {"query": query, "warped_a": cv2.warpPerspective(query, homography, (320, 240),
                                                              borderMode=cv2.BORDER_REFLECT)}
    images["warped_b"] = images["warped_a"]
    for i in range(7):
        images[f"flat{i}"] = np.full((240, 320, 3), 30 * i, np.uint8)
    paths = {}
    for image_id, image in images.items():
        paths[image_id] = str(folder / f"{image_id}.png")
        cv2.imwrite(paths[image_id], image)
    return paths


def ranking_of(neighbours_scores: dict[str, list[tuple[str, float]]]):
    table = neighbours_from({q: [d for d, _ in rows] for q, rows in neighbours_scores.items()})
    table["score"] = np.array([s for rows in neighbours_scores.values() for _, s in rows], np.float32)
    return table


def test_equal_verification_scores_keep_the_global_order_and_rows_below_r_stay_last(tie_images):
    # Top R = 5 are verified; all five are flat (0 inliers: a five-way tie). The tie is broken
    # by the global score, best first, then by the original rank (flat1 and flat2 share 0.8),
    # so the verified rows keep their order; flat6 and flat5 below R keep theirs after them.
    neighbours = ranking_of({"query": [("flat3", 0.9), ("flat1", 0.8), ("flat2", 0.8), ("flat4", 0.7),
                                       ("flat0", 0.6), ("flat6", 0.5), ("flat5", 0.4)]})
    result = spatial_verification(neighbours, tie_images, top_r=5, workers=0)
    assert list(result["db_id"]) == ["flat3", "flat1", "flat2", "flat4", "flat0", "flat6", "flat5"]
    assert list(result["rank"]) == list(range(7))


def test_a_tie_at_a_high_inlier_count_goes_to_the_better_global_score(tie_images):
    # warped_a and warped_b are the same bytes: the same inliers. Whichever order they come
    # in, the one with the better global score goes first; flat images (0 inliers) follow in
    # their own order; the row below R stays last.
    for first, second in (("warped_a", "warped_b"), ("warped_b", "warped_a")):
        neighbours = ranking_of({"query": [("flat1", 0.9), (first, 0.8), ("flat2", 0.7), (second, 0.6),
                                           ("flat3", 0.5)]})
        # inlier_weight 1000: verified pairs first (at weight 1 the tie is decided the same way)
        result = spatial_verification(neighbours, tie_images, top_r=4, workers=0, inlier_weight=1000.0)
        assert list(result["db_id"]) == [first, second, "flat1", "flat2", "flat3"]
        verification = result.set_index("db_id")["score"]
        # The new score is 1 + the global score scaled over the top 4 (flat1 1, first 2/3, flat2
        # 1/3, second 0) + 1000 x capped inliers / 40: the same inlier part (a real tie), so the
        # two differ by the global part alone; flats 1 + global.
        assert verification[first] - verification[second] == pytest.approx(2 / 3, abs=1e-3)
        assert verification[second] > verification["flat1"] == pytest.approx(2.0)


# --------------------------------------------------------------------------- alpha-QE and DBA as re-ranking steps


@pytest.fixture
def expansion_inputs(tmp_path):
    """One query q = (1, 0) and five database vectors; d_copy (a copy of q) is masked.

    Plain ranking of q (inner products): d_copy 1 (masked), d0 0.8, d1 0.6, d2 0.5, d3 -1."""
    from vprflow.rerank import Inputs

    vectors = {"q": (1.0, 0.0), "d0": (0.8, 0.6), "d1": (0.6, -0.8), "d2": (0.5, np.sqrt(0.75)), "d3": (-1.0, 0.0),
               "d_copy": (1.0, 0.0)}
    np.save(tmp_path / "vectors.npy", np.array(list(vectors.values()), np.float32))
    (tmp_path / "ids.txt").write_text("".join(f"{i}\n" for i in vectors))
    split = pd.DataFrame({"image_id": list(vectors), "is_database": [i != "q" for i in vectors]})
    masks = pd.DataFrame({"query_id": ["q"], "db_id": ["d_copy"], "reason": ["duplicate"]})
    inputs = Inputs(manifest=pd.DataFrame(), root=tmp_path, split=split, masks=masks,
                    vectors_path=tmp_path / "vectors.npy", ids_path=tmp_path / "ids.txt")
    neighbours = ranking_of({"q": [("d0", 0.8), ("d1", 0.6), ("d2", 0.5)]})
    return neighbours, inputs


def test_alpha_qe_step_searches_again_with_the_expanded_query_and_the_masks(expansion_inputs):
    from vprflow.rerank import rerank

    neighbours, inputs = expansion_inputs
    # n = 1, alpha = 1: q' = normalise(q + 0.8 d0) = (1.64, 0.48) / sqrt(2.92).
    # q'.d: d0 (1.312 + 0.288) = 1.6, d2 (0.82 + 0.48 sqrt(0.75)) = 1.2357, d1 (0.984 - 0.384) = 0.6,
    # d_copy 1.64 but masked; divided by sqrt(2.92). k stays 3: d2 now ahead of d1.
    result = rerank(neighbours, {"method": "alpha_qe", "n": 1, "alpha": 1.0}, inputs)
    assert list(result["db_id"]) == ["d0", "d2", "d1"] and list(result["rank"]) == [0, 1, 2]
    expected = np.array([1.6, 0.82 + 0.48 * np.sqrt(0.75), 0.6]) / np.sqrt(2.92)
    np.testing.assert_allclose(result["score"], expected, rtol=1e-5)


def test_dba_step_augments_the_database_before_searching_again(expansion_inputs):
    from vprflow.rerank import rerank

    neighbours, inputs = expansion_inputs
    # k = 1, alpha = 1, no QE. Each database vector's nearest other (inner product):
    #   d0 -> d2 (0.4 + 0.6 sqrt(0.75) = 0.9196), d1 -> d_copy (0.6), d2 -> d0 (0.9196),
    #   d3 -> d1 (-0.6, weight 0), d_copy -> d0 (0.8)
    # d' = normalise(d + w d_nearest); q = (1, 0) then scores each by its first coordinate.
    w = 0.4 + 0.6 * np.sqrt(0.75)
    augmented = {"d0": np.array([0.8 + w * 0.5, 0.6 + w * np.sqrt(0.75)]),
                 "d1": np.array([0.6 + 0.6, -0.8]),
                 "d2": np.array([0.5 + w * 0.8, np.sqrt(0.75) + w * 0.6])}
    first_coordinate = {name: vector[0] / np.linalg.norm(vector) for name, vector in augmented.items()}
    # d1: 1.2 / sqrt(2.08) = 0.832, d0: 1.2598 / 1.8303 = 0.688, d2: 1.2357 / 1.8303 = 0.675
    result = rerank(neighbours, {"method": "dba", "k": 1, "alpha": 1.0, "qe_n": 0}, inputs)
    assert list(result["db_id"]) == ["d1", "d0", "d2"]
    np.testing.assert_allclose(result["score"], [first_coordinate[d] for d in ("d1", "d0", "d2")], rtol=1e-5)


# --------------------------------------------------------------------------- settings and the steps' wiring


@pytest.mark.parametrize("settings, message", [
    ({"method": "alpha_qe", "n": 0}, "reranks.step.n: must be an integer >= 1, got 0"),
    ({"method": "alpha_qe", "alpha": 0}, "reranks.step.alpha: must be a positive number, got 0"),
    ({"method": "dba", "k": 0}, "reranks.step.k: must be an integer >= 1, got 0"),
    ({"method": "dba", "qe_n": -1}, "reranks.step.qe_n: must be an integer >= 0, got -1"),
    ({"method": "dba", "alpha": -1.0}, "reranks.step.alpha: must be a positive number, got -1.0"),
    ({"method": "spatial", "top_r": 0}, "reranks.step.top_r: must be an integer >= 1, got 0"),
    ({"method": "spatial", "max_side": 0}, "reranks.step.max_side: must be an integer >= 1, got 0"),
    ({"method": "spatial", "min_side": -1}, "reranks.step.min_side: must be an integer >= 0, got -1"),
    ({"method": "spatial", "max_side": 256}, "reranks.step.min_side: must be at most max_side (256), got 320"),
    ({"method": "spatial", "geometry": "affine"},
     "reranks.step.geometry: unknown 'affine'; use one of homography, fundamental"),
    ({"method": "spatial", "ratio": 1.5}, "reranks.step.ratio: must be at most 1, got 1.5"),
    ({"method": "spatial", "ratio": 0}, "reranks.step.ratio: must be a positive number, got 0"),
    ({"method": "spatial", "min_inlier_ratio": 1.5}, "reranks.step.min_inlier_ratio: must be a number in [0, 1], got 1.5"),
    ({"method": "local", "features": "sift", "min_inliers": 0},
     "reranks.step.min_inliers: must be an integer >= 1, got 0"),
])
def test_bad_settings_are_named(settings, message):
    from vprflow.errors import InputError
    from vprflow.rerank import settings_of

    with pytest.raises(InputError) as error:
        settings_of("step", settings)
    assert str(error.value) == message


def test_boundary_settings_are_accepted():
    from vprflow.rerank import settings_of

    assert settings_of("step", {"method": "dba", "qe_n": 0})["qe_n"] == 0  # 0: no query expansion after DBA
    assert settings_of("step", {"method": "spatial", "ratio": 1})["ratio"] == 1  # Lowe's ratio may be 1


def test_expansion_names_bad_vectors():
    from vprflow.errors import InputError

    database = np.eye(3)
    with pytest.raises(InputError, match=r"^query_vecs must be a non-empty 2-D array"):
        alpha_query_expansion(np.ones(3), database)
    with pytest.raises(InputError, match=r"^db_vecs must be a non-empty 2-D array"):
        alpha_query_expansion(np.ones((1, 3)), np.ones(3))
    with pytest.raises(InputError, match=r"^query_vecs have dimension 2 but db_vecs 3$"):
        alpha_query_expansion(np.ones((1, 2)), database)


def test_label_and_spatial_steps_read_places_and_paths_from_the_manifest(tie_images):
    from pathlib import Path

    from vprflow.rerank import Inputs, rerank

    root = Path(tie_images["query"]).parent
    ids = ["query", "flat1", "warped_a", "flat2"]
    manifest = pd.DataFrame({"image_id": ids, "path": [Path(tie_images[i]).name for i in ids],
                             "place": [None, "A", "B", "B"]})
    inputs = Inputs(manifest=manifest, root=root, split=pd.DataFrame(), masks=pd.DataFrame(), vectors_path="",
                    ids_path="", workers=0)
    neighbours = ranking_of({"query": [("flat1", 0.9), ("warped_a", 0.8), ("flat2", 0.7)]})
    # label: B has two of three (warped_a, flat2), A one.
    assert list(rerank(neighbours, {"method": "label"}, inputs)["db_id"]) == ["warped_a", "flat2", "flat1"]
    # spatial, top 3 verified: the warped copy has inliers, the flat images none.
    result = rerank(neighbours, {"method": "spatial", "top_r": 3, "geometry": "homography", "max_side": 640,
                                 "ratio": 0.8}, inputs)
    assert list(result["db_id"]) == ["warped_a", "flat1", "flat2"]


# --------------------------------------------------------------------------- matching and inlier counting


def test_ratio_test_keeps_a_match_only_when_clearly_nearer_than_the_second():
    from vprflow.local.matching import tentative_matches

    a = np.array([[0.0, 0.0], [5.0, 5.0]], np.float32)
    b = np.array([[0.5, 0.0], [0.0, 0.6], [5.0, 5.1]], np.float32)
    # a0: nearest b0 (d^2 0.25), second b1 (0.36): 0.25 < 0.8^2 * 0.36 = 0.2304? no -> dropped.
    # a1: nearest b2 (0.01), second b1 (25 + 19.36): kept, matched to b2.
    kept, matched = tentative_matches(a, b, "ratio", 0.8)
    assert kept.tolist() == [1] and matched.tolist() == [2]
    # Against b0, b1 only (two candidates suffice), ratio 0.9: a0: 0.25 < 0.81 * 0.36 = 0.2916 -> kept,
    # matched to b0; a1: 44.36 (b1) < 0.81 * 45.25 (b0) = 36.65? no -> dropped.
    kept, matched = tentative_matches(a, b[:2], "ratio", 0.9)
    assert kept.tolist() == [0] and matched.tolist() == [0]


def test_inliers_of_a_homography_need_four_matches_and_a_fundamental_matrix_eight():
    from vprflow.local.matching import ransac_inliers

    def count_inliers(query_xy, other_xy, geometry, threshold):
        return int(ransac_inliers(query_xy, other_xy, geometry, threshold).sum())

    grid = np.array([[x, y] for x in (10.0, 60.0, 110.0) for y in (20.0, 90.0)], np.float32)  # 6 points
    shifted = grid + np.float32([7.0, -3.0])  # a translation: every point fits
    assert count_inliers(grid, shifted, "homography", 5.0) == 6
    assert count_inliers(grid[:3], shifted[:3], "homography", 5.0) == 0  # fewer than 4 matches
    assert count_inliers(grid, shifted, "fundamental", 2.0) == 0  # fewer than 8 matches


def test_every_query_of_a_table_is_verified_against_its_own_image(tie_images):
    # "query" finds its warped copy; flat4 (no keypoints) verifies nothing, so its list keeps
    # its order although the same warped copy is in it.
    neighbours = ranking_of({"query": [("flat1", 0.9), ("warped_a", 0.8)], "flat4": [("flat2", 0.9), ("warped_a", 0.8)]})
    result = spatial_verification(neighbours, tie_images, top_r=2, workers=0, inlier_weight=1000.0)
    assert list(result["db_id"]) == ["warped_a", "flat1", "flat2", "warped_a"]
    assert list(result["query_id"]) == ["query", "query", "flat4", "flat4"]


def test_apply_to_picks_models_and_never_reaches_the_method():
    """A step with ``apply_to`` re-ranks the models it lists and no other; without it (or
    null) every model; the method's settings (and the rule's params) never hold it."""
    from vprflow.rerank import applies_to, method_settings, settings_of

    weak = settings_of("weak", {"method": "local", "features": "sift", "inlier_weight": 3, "apply_to": ["tiny"]})
    assert applies_to(weak, "tiny") and not applies_to(weak, "gem")
    assert applies_to({"method": "label"}, "gem") and applies_to({"method": "label", "apply_to": None}, "gem")
    assert "apply_to" not in method_settings(weak) and method_settings(weak)["inlier_weight"] == 3
