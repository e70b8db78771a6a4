"""Invariants over generated cases (hypothesis): the metrics equal their plain-loop
definitions (reference_metrics) and recall grows with N; a perfect ranking has AP 1;
searches never return a query itself or a byte-identical copy; re-ranking permutes each
shortlist without losing or adding an id.

Examples are derandomised, so every run (and CI) checks the same cases.
"""

import os

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import reference_metrics as reference
from conftest import neighbours_from
from vprflow.masks import build_masks
from vprflow.metrics.average_precision import average_precision, plain_map
from vprflow.metrics.precision import precision_at_k
from vprflow.metrics.recall import recall_at, recall_curve
from vprflow.rerank.label import label_rerank
from vprflow.rerank.spatial import spatial_verification
from vprflow.search.run import find_neighbours
from vprflow.tables import POSITIVE_LABELS

EXAMPLES = int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", 100))  # benchmarks/mutation.py asks for fewer
CASES = settings(max_examples=EXAMPLES, deadline=None, derandomize=True)
DATABASE = [f"d{i}" for i in range(10)]
LABELS = ("positive", "easy", "hard", "junk")


@st.composite
def rankings_and_labels(draw, labels=LABELS):
    """1-5 queries, each ranking K (1-8, the same for all) of 10 database ids, and labels on
    a random subset of the database (retrieved or not) for some of the queries."""
    k = draw(st.integers(1, 8))
    n_queries = draw(st.integers(1, 5))
    ranked, truth = {}, {}
    for q in range(n_queries):
        query = f"q{q}"
        ranked[query] = draw(st.permutations(DATABASE))[:k]
        labelled = draw(st.dictionaries(st.sampled_from(DATABASE), st.sampled_from(labels), max_size=6))
        if labelled:
            truth[query] = labelled
    rows = [(q, d, label) for q, by_db in truth.items() for d, label in by_db.items()]
    return ranked, truth, pd.DataFrame(rows, columns=["query_id", "db_id", "label"]), k


@CASES
@given(rankings_and_labels())
def test_recall_equals_its_definition_and_grows_with_n(case):
    ranked, truth, ground_truth, k = case
    neighbours = neighbours_from(ranked)
    ns = list(range(1, k + 3))  # also past the shortlist: nothing more is found there
    result = recall_at(neighbours, ground_truth, ns)
    values = [result[f"R@{n}"] for n in ns]
    expected = [reference.recall_at(ranked, truth, n) for n in ns]
    np.testing.assert_allclose(values, expected, rtol=0, atol=1e-12)
    if not np.isnan(values).any():
        assert all(a <= b for a, b in zip(values, values[1:]))
        assert result["n_queries"] == sum(any(v in POSITIVE_LABELS for v in d.values()) for d in truth.values())
        curve = recall_curve(neighbours, ground_truth, k, POSITIVE_LABELS)
        np.testing.assert_allclose(curve, expected[:k], rtol=0, atol=1e-12)


@CASES
@given(rankings_and_labels(labels=("positive", "junk")))
def test_map_precision_and_recall_equal_their_definitions(case):
    ranked, truth, ground_truth, k = case
    neighbours = neighbours_from(ranked)
    ks = tuple(range(1, k + 1))
    expected = reference.plain_metrics(ranked, truth, ks)
    row = plain_map(neighbours, ground_truth, ks).as_row()
    assert expected.keys() <= row.keys()  # other columns may join the row
    np.testing.assert_allclose([row[c] for c in expected], list(expected.values()), rtol=0, atol=1e-12)
    flags = [truth.get(q, {}).get(d) == "positive" for q, ids in ranked.items() for d in ids]
    for kk in ks:
        assert precision_at_k(neighbours, flags, kk) == pytest.approx(reference.precision_at(ranked, truth, kk),
                                                                       abs=1e-12)


@CASES
@given(st.data())
def test_a_perfect_ranking_has_ap_one(data):
    """Every positive ahead of every negative, junk anywhere: AP = 1 (each positive sits at
    a position where all before it are positives)."""
    positives = data.draw(st.lists(st.sampled_from(DATABASE), min_size=1, max_size=5, unique=True))
    rest = [d for d in DATABASE if d not in positives]
    junk = data.draw(st.lists(st.sampled_from(rest), max_size=3, unique=True))
    negatives = [d for d in rest if d not in junk]
    ranking = data.draw(st.permutations(positives)) + data.draw(st.permutations(negatives))
    for j in junk:
        ranking.insert(data.draw(st.integers(0, len(ranking))), j)
    assert average_precision(ranking, set(positives), set(junk)) == pytest.approx(1.0, abs=1e-12)
    neighbours = neighbours_from({"q": ranking})
    ground_truth = pd.DataFrame([("q", d, "positive") for d in positives] + [("q", d, "junk") for d in junk],
                                columns=["query_id", "db_id", "label"])
    assert plain_map(neighbours, ground_truth, (1,)).mean_ap == pytest.approx(1.0, abs=1e-12)


@settings(max_examples=min(EXAMPLES, 40), deadline=None, derandomize=True)
@given(st.data())
def test_searches_never_return_the_query_itself_or_a_byte_identical_copy(data):
    """Images with colliding hashes are given the same vector (a copy looks exactly like its
    source), so unmasked they would be each other's best match."""
    n = data.draw(st.integers(2, 12))
    hashes = data.draw(st.lists(st.sampled_from("abcde"), min_size=n, max_size=n))
    is_query = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    is_database = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    is_database[data.draw(st.integers(0, n - 1))] = True  # a search needs a database
    places = data.draw(st.lists(st.sampled_from("PQR"), min_size=n, max_size=n))
    min_class_size = data.draw(st.integers(0, 4))
    k = data.draw(st.integers(1, 6))
    ids = np.array([f"i{i}" for i in range(n)], dtype=object)
    images = pd.DataFrame({"image_id": ids, "sha256": hashes, "place": places})
    split = pd.DataFrame({"image_id": ids, "is_query": is_query, "is_database": is_database})
    vectors = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)[["abcde".index(h) for h in hashes]]
    masks = build_masks(images, split, min_class_size)
    query_rows, db_rows = np.flatnonzero(is_query), np.flatnonzero(is_database)
    result = find_neighbours({"backend": "exact", "metric": "ip", "k": k}, None, vectors[db_rows], ids[db_rows],
                             vectors[query_rows], ids[query_rows], masks)
    hash_of, place_of = dict(zip(ids, hashes)), dict(zip(ids, places))
    assert all(q != d and hash_of[q] != hash_of[d] for q, d in zip(result["query_id"], result["db_id"]))
    # Nothing else is lost: each query gets min(k, its allowed database images) results, and
    # places below min_class_size images (counted over the split) leave both sides.
    sizes = pd.Series(places).value_counts()
    minor = {p for p, size in sizes.items() if size < min_class_size} if min_class_size > 1 else set()
    for q in ids[query_rows]:
        allowed = [d for d in ids[db_rows] if d != q and hash_of[d] != hash_of[q] and place_of[d] not in minor]
        expected = 0 if place_of[q] in minor else min(k, len(allowed))
        assert (result["query_id"] == q).sum() == expected


def assert_each_shortlist_permuted(before: pd.DataFrame, after: pd.DataFrame) -> None:
    for query, rows in before.groupby("query_id"):
        reordered = after[after["query_id"] == query]
        assert sorted(reordered["db_id"]) == sorted(rows["db_id"])
        assert list(reordered["rank"]) == list(range(len(rows)))
    assert set(after["query_id"]) == set(before["query_id"]) and len(after) == len(before)


@CASES
@given(st.data())
def test_label_rerank_permutes_each_shortlist(data):
    ranked = {f"q{q}": data.draw(st.permutations(DATABASE))[: data.draw(st.integers(1, 10))]
              for q in range(data.draw(st.integers(1, 4)))}
    places = dict(zip(DATABASE, data.draw(st.lists(st.sampled_from("ABC"), min_size=10, max_size=10))))
    neighbours = neighbours_from(ranked)
    assert_each_shortlist_permuted(neighbours, label_rerank(neighbours, places))


@pytest.fixture(scope="module")
def image_paths(tmp_path_factory):
    """Flat grey images (no keypoints) and one textured image with a byte-identical copy."""
    import cv2

    folder = tmp_path_factory.mktemp("permuted")
    rng = np.random.default_rng(0)
    textured = cv2.GaussianBlur(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8), (0, 0), 2.0)
    images = {f"f{i}": np.full((120, 160, 3), 25 * i, np.uint8) for i in range(8)}
    images.update({"t": textured, "t_copy": textured})
    paths = {}
    for image_id, image in images.items():
        paths[image_id] = str(folder / f"{image_id}.png")
        cv2.imwrite(paths[image_id], image)
    return paths


@settings(max_examples=min(EXAMPLES, 15), deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_spatial_verification_permutes_each_shortlist(image_paths, data):
    ids = sorted(image_paths)
    ranked = {query: [d for d in data.draw(st.permutations(ids)) if d != query][: data.draw(st.integers(1, 9))]
              for query in data.draw(st.lists(st.sampled_from(ids), min_size=1, max_size=3, unique=True))}
    neighbours = neighbours_from(ranked)
    result = spatial_verification(neighbours, image_paths, top_r=data.draw(st.integers(1, 10)), workers=0)
    assert_each_shortlist_permuted(neighbours, result)
