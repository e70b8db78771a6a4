"""pairs.txt: ``query_path database_path`` per line, readable back whatever the file names hold."""

import shlex

from conftest import neighbours_from
from vprflow.search.run import write_pairs

PATHS = {"q1": "queries/my photo.jpg", "q2": "queries/plain.jpg", "d1": "db/it's here.jpg", "d2": "db/plain.jpg",
         "d3": 'db/tab\tand "quotes".jpg'}


def test_paths_with_spaces_and_quotes_read_back_exactly(tmp_path):
    # Before: "queries/my photo.jpg db/it's here.jpg" -- four words, no way to tell the two paths apart.
    write_pairs(neighbours_from({"q1": ["d1", "d2"], "q2": ["d3"]}), PATHS, tmp_path / "pairs.txt")
    lines = (tmp_path / "pairs.txt").read_text().splitlines()
    assert [shlex.split(line) for line in lines] == [[PATHS["q1"], PATHS["d1"]], [PATHS["q1"], PATHS["d2"]],
                                                      [PATHS["q2"], PATHS["d3"]]]


def test_plain_paths_are_written_as_before(tmp_path):
    """Tools that split lines on whitespace (hloc's pairs files) keep reading plain names."""
    write_pairs(neighbours_from({"q2": ["d2"]}), PATHS, tmp_path / "pairs.txt")
    assert (tmp_path / "pairs.txt").read_text() == "queries/plain.jpg db/plain.jpg\n"


def test_non_ascii_names_stay_unquoted(tmp_path):
    write_pairs(neighbours_from({"q": ["d"]}), {"q": "café/été.jpg", "d": "東京/駅.jpg"}, tmp_path / "pairs.txt")
    assert (tmp_path / "pairs.txt").read_text(encoding="utf-8") == "café/été.jpg 東京/駅.jpg\n"
