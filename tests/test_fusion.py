"""Score fusion of several models' rankings (rerank.fusion) and its config checks."""

from pathlib import Path

import pandas as pd
import pytest

from vprflow.config import validate_config
from vprflow.errors import InputError
from vprflow.rerank import RERANKS, Inputs, rerank, settings_of
from vprflow.rerank.fusion import fuse_rankings

SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"


def ranking(lists: dict[str, list[tuple[str, float]]]) -> pd.DataFrame:
    rows = [(q, rank, db, score) for q, items in lists.items() for rank, (db, score) in enumerate(items)]
    return pd.DataFrame(rows, columns=["query_id", "rank", "db_id", "score"]).astype({"score": "float32"})


def as_lists(table: pd.DataFrame) -> dict[str, list[str]]:
    return {q: list(group.sort_values("rank")["db_id"]) for q, group in table.groupby("query_id", sort=False)}


# Own ranking: a and b nearly tied, c far behind. The other model: c and b nearly tied, a far behind.
OWN = ranking({"q1": [("a", 0.9), ("b", 0.89), ("c", 0.1)]})
OTHER = ranking({"q1": [("c", 10.0), ("b", 9.9), ("a", 0.0)]})


def test_score_sum_normalises_each_ranking_to_its_own_range():
    # min-max per ranking: own a 1, b 0.79/0.8 = 0.9875, c 0; other c 1, b 9.9/10 = 0.99, a 0
    # sum: a 1, b 1.9775, c 1 -> b first; a and c tie and keep the own ranking's order
    fused = fuse_rankings([OWN, OTHER], [1.0, 1.0], "score_sum")
    assert as_lists(fused) == {"q1": ["b", "a", "c"]}
    assert list(fused["score"]) == pytest.approx([0.9875 + 0.99, 1.0, 1.0], abs=1e-5)
    assert list(fused["rank"]) == [0, 1, 2]
    # weights: the other ranking twice as strong -> c 2, b 0.9875 + 1.98, a 1
    assert as_lists(fuse_rankings([OWN, OTHER], [1.0, 2.0], "score_sum")) == {"q1": ["b", "c", "a"]}


def test_reciprocal_rank_fusion_uses_positions_only():
    # rrf_k = 60: a 1/61 + 1/63 = 124/3843 = 0.032267, c the same, b 2/62 = 0.032258 -> a, c, b
    fused = fuse_rankings([OWN, OTHER], [1.0, 1.0], "rrf", rrf_k=60)
    assert as_lists(fused) == {"q1": ["a", "c", "b"]}
    assert list(fused["score"]) == pytest.approx([1 / 61 + 1 / 63, 1 / 61 + 1 / 63, 2 / 62], rel=1e-6)
    # rrf_k = 1: a 1/2 + 1/4 = 0.75, b 1/3 + 1/3 = 0.667 -> a, c, b again; weight 3 on own: a 1.75, b 1.33, c 1
    assert as_lists(fuse_rankings([OWN, OTHER], [3.0, 1.0], "rrf", rrf_k=1)) == {"q1": ["a", "b", "c"]}


def test_fusion_keeps_the_queries_and_list_lengths_of_the_ranking_it_re_ranks():
    own = ranking({"q2": [("x", 0.5), ("y", 0.4)], "q1": [("a", 0.9), ("b", 0.8)]})
    other = ranking({"q1": [("n", 3.0), ("a", 2.0), ("b", 1.0)], "q9": [("z", 1.0)]})
    fused = fuse_rankings([own, other], [1.0, 1.0], "score_sum")
    # q1: a 1 + 0.5, n 1, b 0 + 0 -> the new image n enters, b leaves (2 rows kept); q2: its own order; q9 ignored
    assert as_lists(fused) == {"q2": ["x", "y"], "q1": ["a", "n"]}
    # weight 0 on the ranking being re-ranked: the other model's order (within the same list length)
    assert as_lists(fuse_rankings([own, other], [0.0, 1.0], "score_sum"))["q1"] == ["n", "a"]


def test_within_the_top_r_no_image_enters_from_below_and_the_rest_keeps_its_order():
    own = ranking({"q1": [("a", 0.9), ("b", 0.895), ("c", 0.5), ("d", 0.1)]})
    other = ranking({"q1": [("b", 1.0), ("d", 0.99), ("a", 0.0)]})
    # top 3: own scaled within a, b, c: a 1, b 0.9875, c 0; other: b 1, a 0, c absent 0
    # -> b 1.9875, a 1, c 0 (new scores 1 + those); d stays below, scored 0.999 x its own score
    # scaled over the whole list (0)
    fused = fuse_rankings([own, other], [1.0, 1.0], "score_sum", top_r=3)
    assert as_lists(fused) == {"q1": ["b", "a", "c", "d"]}
    assert list(fused["score"]) == pytest.approx([2.9875, 2.0, 1.0, 0.0], abs=1e-5)
    # over the union, d (other 0.99 + own 0) overtakes c (own 0.5 + 0): what top_r rules out
    assert as_lists(fuse_rankings([own, other], [1.0, 1.0], "score_sum")) == {"q1": ["b", "a", "d", "c"]}
    # rrf within the top 3: b 1/62 + 1/61 over a 1/61 + 1/63 over c 1/63; d below
    assert as_lists(fuse_rankings([own, other], [1.0, 1.0], "rrf", top_r=3))["q1"] == ["b", "a", "c", "d"]


def test_equal_scores_count_as_the_best_of_their_list():
    own = ranking({"q1": [("a", 0.5), ("b", 0.5)]})
    other = ranking({"q1": [("b", 2.0), ("a", 1.0)]})
    fused = fuse_rankings([own, other], [1.0, 1.0], "score_sum")
    assert as_lists(fused) == {"q1": ["b", "a"]} and list(fused["score"]) == pytest.approx([2.0, 1.0])


def inputs(model, rankings):
    empty = pd.DataFrame()
    return Inputs(manifest=empty, root=".", split=empty, masks=empty, vectors_path="", ids_path="", model=model,
                  rankings=rankings)


def test_the_step_takes_each_model_s_weight_and_the_own_weight_otherwise():
    settings = settings_of("fuse", {"method": "fusion", "models": {"gem": 1.0, "vlad": 2.0}})
    assert settings == {"method": "fusion", "models": {"gem": 1.0, "vlad": 2.0}, "combine": "score_sum",
                        "rrf_k": 60.0, "weight": 1.0, "top_r": 5}
    # under gem: gem x 1 + vlad x 2 (= the second case of the score-sum test)
    assert as_lists(rerank(OWN, settings, inputs("gem", {"vlad": OTHER}))) == {"q1": ["b", "c", "a"]}
    # under a third model with weight 0: only gem and vlad count
    third = ranking({"q1": [("a", 1.0), ("c", 0.5), ("b", 0.0)]})
    zero = {**settings, "weight": 0.0}
    assert as_lists(rerank(third, zero, inputs("tiny", {"gem": OWN, "vlad": OTHER}))) == {"q1": ["b", "c", "a"]}
    with pytest.raises(InputError, match=r"no ranking of model\(s\) \['vlad'\]"):
        rerank(OWN, settings, inputs("gem", {}))


@pytest.mark.parametrize("settings, message", [
    ({"method": "fusion"}, r"^reranks\.f\.models: name the models to fuse"),
    ({"method": "fusion", "models": {"a": -1}}, r"^reranks\.f\.models\.a: a weight must be a number >= 0"),
    ({"method": "fusion", "models": {"a": 1}, "combine": "max"}, r"^reranks\.f\.combine: unknown 'max'"),
    ({"method": "fusion", "models": {"a": 1}, "top_r": 0}, r"^reranks\.f\.top_r: must be an integer >= 1"),
])
def test_bad_fusion_settings_name_the_key(settings, message):
    with pytest.raises(InputError, match=message):
        RERANKS.settings("reranks.f", settings)


def test_config_refuses_a_fusion_of_unknown_models():
    config = {"models": {"tiny": {"descriptor": "tiny_image"}},
              "reranks": {"fuse": {"method": "fusion", "models": {"tiny": 1, "gem": 1}}}}
    with pytest.raises(InputError, match=r"^reranks\.fuse\.models: \['gem'\] not among the models \['tiny'\]"):
        validate_config(config, SCHEMA)
