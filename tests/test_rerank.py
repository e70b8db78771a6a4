import logging

import cv2
import numpy as np
import pytest

from conftest import neighbours_from, textured_image
from vprflow.errors import InputError
from vprflow.rerank import spatial
from vprflow.rerank.expansion import alpha_query_expansion, database_side_augmentation
from vprflow.rerank.label import label_rerank
from vprflow.rerank.spatial import spatial_verification
from vprflow.tables import neighbours_to_index
from vprflow.vectors import l2_normalise


# --------------------------------------------------------------------------- label re-ranking


def test_label_rerank_groups_by_place_votes_and_keeps_order_within_a_place():
    neighbours = neighbours_from({"q1": ["d1", "d2", "d3", "d4", "d5", "d6"], "q2": ["e1", "e2", "e3", "e4"]})
    places = {"d1": "A", "d2": "B", "d3": "C", "d4": "B", "d5": "A", "d6": "B",
              "e1": "X", "e2": "Y", "e3": "Y", "e4": "X"}  # fmt: skip
    result = label_rerank(neighbours, places)
    # q1: B has 3 (d2, d4, d6), A 2 (d1, d5), C 1 (d3); scores are vote shares 3/6, 2/6, 1/6
    q1 = result[result["query_id"] == "q1"]
    assert list(q1["db_id"]) == ["d2", "d4", "d6", "d1", "d5", "d3"]
    np.testing.assert_allclose(q1["score"], [3 / 6] * 3 + [2 / 6] * 2 + [1 / 6], rtol=1e-6)
    # q2: X and Y both have 2; X's best image is at rank 0, Y's at rank 1 -> X first
    assert list(result.loc[result["query_id"] == "q2", "db_id"]) == ["e1", "e4", "e2", "e3"]
    assert list(result["rank"]) == [0, 1, 2, 3, 4, 5, 0, 1, 2, 3]
    assert result["score"].dtype == np.float32 and result["rank"].dtype == np.int64


# --------------------------------------------------------------------------- spatial verification


@pytest.fixture(scope="module")
def verification_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("verification")
    query = textured_image(0)
    homography = np.array([[0.9, 0.1, 10.0], [-0.08, 0.95, 15.0], [1e-4, 5e-5, 1.0]])
    images = {
        "query": query,
        "warped": cv2.warpPerspective(query, homography, (320, 240), borderMode=cv2.BORDER_REFLECT),
        "other1": textured_image(1),
        "other2": textured_image(2),
        "other3": textured_image(3),
    }
    paths = {}
    for image_id, image in images.items():
        paths[image_id] = str(folder / f"{image_id}.jpg")
        cv2.imwrite(paths[image_id], image[:, :, ::-1])
    paths["broken"] = str(folder / "broken.jpg")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    return paths


@pytest.mark.parametrize("method", ["homography", "fundamental"])
def test_spatial_verification_moves_the_warped_copy_to_the_top(verification_images, method, caplog):
    neighbours = neighbours_from({"query": ["other1", "broken", "warped", "other2", "other3"]})
    with caplog.at_level(logging.WARNING, logger="vprflow"):
        result = spatial_verification(neighbours, verification_images, top_r=4, method=method, workers=0)
    assert list(result["rank"]) == [0, 1, 2, 3, 4]
    # the warped copy is verified far above the cap of 40 inliers: 1 + its global score scaled
    # over the top 4 (1.0, 0.9, 0.8, 0.7 -> 1, 2/3, 1/3, 0) + 40/40; the rest are not verified and
    # keep their global order below it: other1, broken (undecodable: 0 inliers, not fatal),
    # other2, each 1 + scaled global score, and other3 below R: 0.999 * (0.6 - 0.6) / 0.4
    assert list(result["db_id"]) == ["warped", "other1", "broken", "other2", "other3"]
    np.testing.assert_allclose(result["score"], [1 + 1 / 3 + 1, 2.0, 1 + 2 / 3, 1.0, 0.0], rtol=1e-5)
    assert "broken" in caplog.text


def test_spatial_verification_extracts_each_image_once(verification_images, monkeypatch):
    calls = []
    real = spatial.sift_local_features

    def counting(rgb, **options):
        calls.append(rgb.shape)
        return real(rgb, **options)

    monkeypatch.setattr(spatial, "sift_local_features", counting)
    neighbours = neighbours_from({"query": ["other1", "warped", "other2"], "other1": ["other2", "query", "warped"]})
    result = spatial_verification(neighbours, verification_images, top_r=3, batch_size=1, workers=0)
    assert len(calls) == 4  # query, other1, warped, other2: each once although used by both queries
    assert result.loc[result["query_id"] == "query", "db_id"].iloc[0] == "warped"
    assert sorted(result.loc[result["query_id"] == "other1", "db_id"]) == ["other2", "query", "warped"]


def test_spatial_verification_names_images_without_a_path(verification_images):
    neighbours = neighbours_from({"query": ["warped", "nowhere"]})
    with pytest.raises(InputError, match="nowhere"):
        spatial_verification(neighbours, verification_images, top_r=2, workers=0)


# --------------------------------------------------------------------------- alpha-QE and DBA


@pytest.mark.parametrize(
    "alpha, unnormalised",
    [
        # q = (1, 0); top-1 d = (0.6, 0.8), q.d = 0.6; q' = normalise(q + 0.6^alpha * d)
        (1.0, [1 + 0.6 * 0.6, 0.6 * 0.8]),  # (1.36, 0.48)
        (3.0, [1 + 0.216 * 0.6, 0.216 * 0.8]),  # 0.6^3 = 0.216 -> (1.1296, 0.1728)
    ],
)
def test_alpha_qe_matches_the_formula_on_a_hand_case(alpha, unnormalised):
    query = np.array([[2.0, 0.0]])  # not unit: normalised first
    database = np.array([[0.6, 0.8], [0.0, -1.0]])
    expanded = alpha_query_expansion(query, database, n=1, alpha=alpha)
    np.testing.assert_allclose(expanded, [np.array(unnormalised) / np.linalg.norm(unnormalised)], rtol=1e-6)
    assert expanded.dtype == np.float32


def test_alpha_qe_recovers_a_positive_missed_by_the_plain_query():
    query = np.array([[1.0, 0.0, 0.0]])
    database = l2_normalise(
        np.array(
            [
                [1.0, 0.6, 0.0],  # same place, very close: top-1
                [0.6, 0.8, 0.0],  # same place, seen from further (q . d = 0.6)
                [0.75, 0.0, 0.66],  # distractor (q . d = 0.75): beats the positive before QE
            ]
        )
    )
    before = database @ l2_normalise(query)[0]
    assert before[2] > before[1]
    expanded = alpha_query_expansion(query, database, n=1, alpha=3.0)
    # q' = normalise(q + 0.857^3 * d0) = (0.978, 0.206, 0): q'.positive = 0.752 > q'.distractor = 0.734
    after = database @ expanded[0]
    assert after[1] > after[2]
    np.testing.assert_allclose(np.linalg.norm(expanded, axis=1), 1.0, rtol=1e-6)


def test_alpha_qe_uses_given_neighbours_in_place_of_search():
    query = np.array([[1.0, 0.0]])
    database = np.array([[0.6, 0.8], [1.0, 0.0]])
    # the faiss top-1 would be row 1 (identical to q); the given shortlist says row 0
    given = alpha_query_expansion(query, database, n=1, alpha=1.0, neighbour_index=np.array([[0, 1]]))
    np.testing.assert_allclose(given, [[1.36 / np.sqrt(2.08), 0.48 / np.sqrt(2.08)]], rtol=1e-6)
    with pytest.raises(InputError, match="neighbour_index"):
        alpha_query_expansion(query, database, n=1, neighbour_index=np.array([[5]]))


def test_dba_adds_each_vector_its_nearest_other_vectors():
    # a = (1, 0), b = (0.8, 0.6), c = (0, 1); k = 1, alpha = 1:
    #   a: nearest other b (0.8) -> a + 0.8 b = (1.64, 0.48)
    #   b: a (0.8) beats c (0.6)  -> b + 0.8 a = (1.60, 0.60)
    #   c: nearest other b (0.6) -> c + 0.6 b = (0.48, 1.36)
    database = np.array([[2.0, 0.0], [0.8, 0.6], [0.0, 3.0]])
    augmented = database_side_augmentation(database, k=1, alpha=1.0)
    expected = l2_normalise(np.array([[1.64, 0.48], [1.60, 0.60], [0.48, 1.36]]))
    np.testing.assert_allclose(augmented, expected, rtol=1e-6)
    assert augmented.shape == database.shape and augmented.dtype == np.float32
    np.testing.assert_array_equal(database, [[2.0, 0.0], [0.8, 0.6], [0.0, 3.0]])  # input untouched
    with pytest.raises(InputError, match="k=3"):
        database_side_augmentation(database, k=3)


def test_dba_shapes_and_norms_on_random_vectors():
    vectors = np.random.default_rng(0).normal(size=(50, 16))
    augmented = database_side_augmentation(vectors, k=5)
    assert augmented.shape == (50, 16)
    np.testing.assert_allclose(np.linalg.norm(augmented, axis=1), 1.0, rtol=1e-5)


def test_neighbours_to_index_orders_rows_by_rank_and_pads():
    neighbours = neighbours_from({"q1": ["b", "a"], "q2": ["c"]}).sample(frac=1.0, random_state=1)
    index = neighbours_to_index(neighbours, ["q2", "q1"], ["a", "b", "c"])
    np.testing.assert_array_equal(index, [[2, -1], [1, 0]])
    with pytest.raises(InputError, match="'c'"):
        neighbours_to_index(neighbours, ["q2", "q1"], ["a", "b"])
