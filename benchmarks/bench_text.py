"""The weight-free text engine on a bundle: P@5 against the place each query names.

Queries are made from the bundle's own database (the demo world names every place,
"Harbour Street 21", and its district, "commercial"):

* each name as written, and each name misspelt (one letter of its first word dropped,
  seeded) and cut short (the first word's first four letters and the number);
* each category.

P@5 is the share of the first five photos answered whose place is the named place (for
a category: whose category is the one asked); top-1 is the share of queries whose best
place is the named one. Then the ``--query`` texts (default: ten hand-written misspelt or
partial queries for the demo world) with the places they return.

    python benchmarks/bench_text.py /tmp/run/results/service/netvlad/exact
"""

from __future__ import annotations

import argparse

import numpy as np

# Places of the default demo's database (seed 0), misspelt or cut short as a person might type them.
HAND_WRITTEN = ["elm stret 13", "Mil Street 43", "casle st 59", "lindn street 65", "qary 93", "brige 99",
                "markt streat 127", "towr 141", "gardn 147", "historc"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle")
    parser.add_argument("--query", action="append", help="a text query to show (repeatable)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def misspelt(name: str, rng: np.random.Generator) -> str:
    first, rest = name.split(" ", 1)
    i = int(rng.integers(1, len(first)))  # keep the first letter
    return first[:i] + first[i + 1:] + " " + rest


def partial(name: str) -> str:
    words = name.split()
    return f"{words[0][:4]} {words[-1]}"


def main() -> None:
    args = parse_args()
    from vprflow.serve.bundle import Bundle
    from vprflow.serve.engine import TextSearch

    bundle = Bundle.load(args.bundle)
    text = TextSearch(bundle, "ngram")
    database = bundle.database
    rng = np.random.default_rng(args.seed)

    def score(query: str, column: str, wanted: str, by: str) -> tuple[float, bool]:
        matches = text.search(query, 5)
        rows = [r for m in matches for r in m.rows][:5]
        hits = [database[column].iloc[r] == wanted for r in rows]
        return float(np.mean(hits)) if hits else 0.0, bool(matches) and matches[0].label == by

    names = database.dropna(subset=["name"]).groupby("name")["place"].first()
    print(f"{args.bundle}: {len(database)} database photos, {len(names)} named places, engine {text.name}")
    for kind, make in (("name as written", lambda n: n), ("name misspelt", lambda n: misspelt(n, rng)),
                       ("name cut short", partial)):
        results = [score(make(name), "place", place, name) for name, place in names.items()]
        p5, top1 = np.mean([r[0] for r in results]), np.mean([r[1] for r in results])
        print(f"  {kind:16s} P@5 {p5:.3f}  top-1 place {top1:.3f}  ({len(results)} queries, e.g. "
              f"{make(names.index[len(names) // 2])!r})")
    categories = database["category"].dropna().unique()
    results = [score(c, "category", c, "") for c in categories]
    print(f"  {'category':16s} P@5 {np.mean([r[0] for r in results]):.3f}  ({len(results)} queries)")
    for query in args.query or HAND_WRITTEN:
        found = text.search(query, 5)
        print(f"  {query!r:20s} -> " + ", ".join(f"{m.label} ({m.score:.2f}, {len(m.rows)} photos)"
                                               for m in found[:3]))


if __name__ == "__main__":
    main()
