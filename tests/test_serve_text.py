"""The text engines: folding, trigrams, TF-IDF scores worked out by hand, misspellings,
Cyrillic and Latin, and the group answers of both engines."""

import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from vprflow.serve.text import ClipEngine, NgramEngine, NgramIndex, fold, group_texts, transliterate, trigrams

DEMO_STREETS = ["Elm", "Harbour", "Mill", "Castle", "Linden", "Quarry", "Bridge", "Market", "Tower", "Garden"]
DEMO_NAMES = [f"{DEMO_STREETS[place // 8]} Street {place * 2 + 1}" for place in range(80)]  # as the demo names places


def test_folding_and_transliteration():
    assert fold("Café  Élysée-Montmartre!") == "cafe elysee montmartre"
    assert fold("STRASSE Straße") == "strasse strasse"
    assert fold("Королёв, улица Йошкар-Олы") == "королев улица йошкар олы"  # й is a letter, not и + a mark
    assert transliterate(fold("Красная площадь")) == "krasnaya ploshchad"
    assert trigrams("Elm") == Counter({" el": 1, "elm": 1, "lm ": 1})
    assert trigrams("Ёж") == Counter({" еж": 1, "еж ": 1, " ez": 1, "ezh": 1, "zh ": 1})  # both scripts


def test_scores_are_tf_idf_cosines_worked_out_by_hand():
    index = NgramIndex.build(["one", "two"], ["ab", "abc"])
    # "ab": " ab", "ab "; "abc": " ab", "abc", "bc ". Two documents: idf(" ab") = ln(3/3) + 1 = 1,
    # the three others occur once: ln(3/2) + 1. Term frequencies are all 1 (weight 1 + ln 1 = 1).
    rare = math.log(3 / 2) + 1
    norm_ab, norm_abc = math.sqrt(1 + rare**2), math.sqrt(1 + 2 * rare**2)
    np.testing.assert_allclose(index.scores("ab"), [1.0, 1 / (norm_ab * norm_abc)])
    np.testing.assert_allclose(index.scores("zz"), [0.0, 0.0])
    assert index.search("abc", 5) == [(1, pytest.approx(1.0)), (0, pytest.approx(1 / (norm_ab * norm_abc)))]
    assert index.search("zz", 5) == []


def test_names_partial_and_misspelt_queries_find_their_place():
    index = NgramIndex.build(DEMO_NAMES, DEMO_NAMES)
    for query, expected in [("Elm Street 13", "Elm Street 13"), ("elm stret 13", "Elm Street 13"),
                            ("harbor st 21", "Harbour Street 21"), ("Mil Street 41", "Mill Street 41"),
                            ("casle 55", "Castle Street 55"), ("gardn 151", "Garden Street 151"),
                            ("MARKET STREET 115", "Market Street 115")]:
        assert DEMO_NAMES[index.search(query, 5)[0][0]] == expected, query
    # a street alone: its eight numbers before any other street's
    assert {DEMO_NAMES[i].split()[0] for i, _ in index.search("quarry", 5)} == {"Quarry"}


def test_cyrillic_and_latin_find_each_other():
    names = ["Красная площадь", "Red Square", "Москва-река", "Тверская улица"]
    index = NgramIndex.build(names, names)
    for query, expected in [("krasnaya ploshchad", "Красная площадь"), ("Moskva reka", "Москва-река"),
                            ("красная", "Красная площадь"), ("Tverskaya", "Тверская улица"),
                            ("тверска", "Тверская улица"), ("red sqare", "Red Square")]:
        assert names[index.search(query, 1)[0][0]] == expected, query


def test_the_index_survives_saving(tmp_path):
    index = NgramIndex.build(DEMO_NAMES[:20], DEMO_NAMES[:20])
    index.save(tmp_path / "text.npz")
    loaded = NgramIndex.load(tmp_path / "text.npz")
    assert loaded.labels == index.labels
    np.testing.assert_array_equal(loaded.scores("elm 7"), index.scores("elm 7"))


def test_groups_carry_names_categories_and_captions():
    database = pd.DataFrame({"group": ["Elm Street 1", "Elm Street 1", "Mill Street 3"],
                             "category": ["residential", "residential", "industrial"],
                             "caption": ["a red door", None, "a chimney"]})
    labels, texts = group_texts(database, "group", ["name", "category", "caption"])
    assert labels == ["Elm Street 1", "Mill Street 3"]
    assert texts == ["Elm Street 1 residential a red door", "Mill Street 3 industrial a chimney"]
    engine = NgramEngine(NgramIndex.build(labels, texts), database["group"])
    match = engine.search("chimney", 1)[0]
    assert (match.label, match.rows) == ("Mill Street 3", [2])
    assert [m.rows for m in engine.search("residential red door", 2)][0] == [0, 1]


def test_clip_engine_ranks_places_by_their_best_photo():
    vectors = np.array([[1, 0], [0.6, 0.8], [0, 1], [0.8, 0.6]], dtype=np.float32)
    engine = ClipEngine(lambda texts: np.array([[0.0, 1.0]]), vectors, ["a", "b", "b", "a"])
    matches = engine.search("anything", 2)
    # similarity = second coordinate: a -> max(0, 0.6) = 0.6, b -> max(0.8, 1) = 1
    assert [(m.label, m.score) for m in matches] == [("b", pytest.approx(1.0)), ("a", pytest.approx(0.6))]
    assert matches[0].rows == [2, 1] and matches[1].rows == [3, 0]
