"""Text to photos, two engines with one answer: the top-k places (groups of database photos
sharing a name) for a description, each with its photos.

* ``ngram``, weight-free: every group is a document of its name, category and captions;
  documents and queries are bags of character trigrams of their words (accents folded,
  case folded, Cyrillic also transliterated to Latin), weighted by TF-IDF and compared by
  cosine. Trigrams work for any script, and a misspelt or partial word still shares most
  of its trigrams with the right one.
* ``clip``: CLIP's text tower against the CLIP image embeddings of the database (a
  ``clip`` model's extraction); a group scores as its best photo.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from ..errors import InputError

GRAM = 3

# Russian, Ukrainian and Belarusian letters in a common Latin romanisation (BGN/PCGN-like),
# so "Moskva" finds "Москва" and the other way round.
CYRILLIC_TO_LATIN = {
    "а": "a", "б": "b", "в": "v", "г": "g", "д": "d", "е": "e", "ё": "e", "ж": "zh", "з": "z", "и": "i",
    "й": "y", "к": "k", "л": "l", "м": "m", "н": "n", "о": "o", "п": "p", "р": "r", "с": "s", "т": "t",
    "у": "u", "ф": "f", "х": "kh", "ц": "ts", "ч": "ch", "ш": "sh", "щ": "shch", "ъ": "", "ы": "y", "ь": "",
    "э": "e", "ю": "yu", "я": "ya", "і": "i", "ї": "yi", "є": "ye", "ґ": "g", "ў": "u",
}
_NOT_WORD = re.compile(r"[\W_]+")


def fold(text: str) -> str:
    """Lower case, accents removed (é -> e; Cyrillic letters kept whole, ё read as е),
    punctuation to spaces, single spaces."""
    letters = []
    for c in unicodedata.normalize("NFC", text.casefold()):
        if c in CYRILLIC_TO_LATIN:
            letters.append("е" if c == "ё" else c)
        else:
            letters.extend(d for d in unicodedata.normalize("NFD", c) if not unicodedata.combining(d))
    return _NOT_WORD.sub(" ", "".join(letters)).strip()


def transliterate(folded: str) -> str:
    return "".join(CYRILLIC_TO_LATIN.get(c, c) for c in folded)


def trigrams(text: str) -> Counter:
    """Character trigrams of each word padded with spaces (" elm ", so word starts and ends
    count), of the folded text and, when it has Cyrillic, of its transliteration too."""
    folded = fold(text)
    forms = {folded, transliterate(folded)}
    grams: Counter = Counter()
    for form in forms:
        for word in form.split():
            padded = f" {word} "
            grams.update(padded[i:i + GRAM] for i in range(len(padded) - GRAM + 1))
    return grams


def _weights(counts: Counter) -> dict[str, float]:
    return {gram: 1.0 + math.log(n) for gram, n in counts.items()}  # sublinear term frequency


@dataclass
class Match:
    """One place found for a query: its label, score, and its photos (database rows) best first."""

    label: str
    score: float
    rows: list[int]
    row_scores: list[float]


def group_rows(groups: Sequence[str]) -> tuple[list[str], list[np.ndarray]]:
    """(labels in first-seen order, database rows of each)."""
    codes, labels = pd.factorize(pd.Series(list(groups), dtype=object), sort=False)
    members = [np.flatnonzero(codes == i) for i in range(len(labels))]
    return [str(label) for label in labels], members


class NgramIndex:
    """TF-IDF over character trigrams, stored as postings (per trigram: documents, weights)."""

    def __init__(self, labels: list[str], vocabulary: list[str], idf: np.ndarray, starts: np.ndarray,
                 documents: np.ndarray, weights: np.ndarray):
        self.labels = labels
        self.column = {gram: i for i, gram in enumerate(vocabulary)}
        self.vocabulary, self.idf, self.starts, self.documents, self.weights = vocabulary, idf, starts, documents, weights

    @classmethod
    def build(cls, labels: Sequence[str], texts: Sequence[str]) -> "NgramIndex":
        """One document per label; ``texts[i]`` is everything said about ``labels[i]``."""
        if len(labels) != len(texts):
            raise InputError(f"text index: {len(labels)} labels but {len(texts)} texts")
        bags = [_weights(trigrams(text)) for text in texts]
        frequency = Counter(gram for bag in bags for gram in bag)
        vocabulary = sorted(frequency)
        column = {gram: i for i, gram in enumerate(vocabulary)}
        n = len(bags)
        idf = np.array([math.log((1 + n) / (1 + frequency[g])) + 1.0 for g in vocabulary])
        entries: list[tuple[int, int, float]] = []
        for doc, bag in enumerate(bags):
            values = {column[g]: w * idf[column[g]] for g, w in bag.items()}
            norm = math.sqrt(sum(v * v for v in values.values())) or 1.0
            entries.extend((c, doc, v / norm) for c, v in values.items())
        entries.sort()
        grams = np.array([e[0] for e in entries], dtype=np.int64)
        starts = np.searchsorted(grams, np.arange(len(vocabulary) + 1))
        return cls(list(labels), vocabulary, idf, starts, np.array([e[1] for e in entries], dtype=np.int64),
                   np.array([e[2] for e in entries], dtype=np.float64))

    def scores(self, query: str) -> np.ndarray:
        """Cosine similarity of the query with every document (0 where no trigram is shared)."""
        bag = {g: w * self.idf[self.column[g]] for g, w in _weights(trigrams(query)).items() if g in self.column}
        norm = math.sqrt(sum(v * v for v in bag.values())) or 1.0
        total = np.zeros(len(self.labels))
        for gram, weight in bag.items():
            c = self.column[gram]
            span = slice(self.starts[c], self.starts[c + 1])
            np.add.at(total, self.documents[span], self.weights[span] * (weight / norm))
        return total

    def search(self, query: str, k: int) -> list[tuple[int, float]]:
        """The ``k`` best documents with a score above 0, best first (ties: first listed)."""
        total = self.scores(query)
        order = np.argsort(-total, kind="stable")[:k]
        return [(int(i), float(total[i])) for i in order if total[i] > 0]

    def save(self, path: str | Path) -> None:
        np.savez(path, labels=np.array(self.labels, dtype=str), vocabulary=np.array(self.vocabulary, dtype=str),
                 idf=self.idf, starts=self.starts, documents=self.documents, weights=self.weights)

    @classmethod
    def load(cls, path: str | Path) -> "NgramIndex":
        with np.load(path, allow_pickle=False) as data:
            return cls([str(x) for x in data["labels"]], [str(x) for x in data["vocabulary"]], data["idf"],
                       data["starts"], data["documents"], data["weights"])


def group_texts(database: pd.DataFrame, group_column: str, text_columns: Sequence[str]) -> tuple[list[str], list[str]]:
    """(group labels, each group's text: its label and the distinct values of ``text_columns``)."""
    labels, texts = [], []
    for label, rows in database.groupby(group_column, sort=False):
        parts = [str(label)]
        for column in text_columns:
            if column in rows and column != group_column:
                parts.extend(str(v) for v in pd.unique(rows[column].dropna()) if str(v))
        labels.append(str(label))
        texts.append(" ".join(parts))
    return labels, texts


class NgramEngine:
    name = "ngram"

    def __init__(self, index: NgramIndex, groups: Sequence[str]):
        self.index = index
        labels, members = group_rows(groups)
        self.rows = dict(zip(labels, members))

    def search(self, query: str, k: int) -> list[Match]:
        return [Match(self.index.labels[i], score, [int(r) for r in self.rows[self.index.labels[i]]],
                      [score] * len(self.rows[self.index.labels[i]]))
                for i, score in self.index.search(query, k)]


class ClipEngine:
    name = "clip"

    def __init__(self, encode_text: Callable[[Sequence[str]], np.ndarray], image_vectors: np.ndarray,
                 groups: Sequence[str]):
        self.encode_text, self.image_vectors = encode_text, np.asarray(image_vectors, dtype=np.float32)
        self.labels, self.members = group_rows(groups)

    def search(self, query: str, k: int) -> list[Match]:
        similarity = self.image_vectors @ self.encode_text([query])[0]
        best = np.array([similarity[rows].max() for rows in self.members])
        matches = []
        for g in np.argsort(-best, kind="stable")[:k]:
            rows = self.members[g][np.argsort(-similarity[self.members[g]], kind="stable")]
            matches.append(Match(self.labels[g], float(best[g]), [int(r) for r in rows],
                                 [float(similarity[r]) for r in rows]))
        return matches
