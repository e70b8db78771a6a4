"""Property test over generated folder datasets: random mixes of valid and broken rows, broken
and unusual image files, roles and ground truth.

For every generated dataset the outcome is decided by an oracle written here from the rules the
README states, independently of the code under test:

* a row problem (missing file, path with spaces around it, path outside the root, duplicate path,
  unknown role, no ground truth) stops the run at the listing, with one error naming every such
  row -- before any job reads an image;
* otherwise no query row or no database row stops it there too;
* otherwise every image is either decoded (and then in the manifest) or in the rejects with a
  reason, nothing else; then no decodable query, no decodable database image or no query with a
  positive stops the run at the split or ground truth, with an error saying so.

Sixty datasets go through the listing, manifest, split and ground-truth functions directly; three
go through Snakemake, where a run must end with results (every listed image evaluated or in
results/rejects.tsv with its reason) or with one clear error before any image job.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import run_snakemake, write_config
from vprflow import stages
from vprflow.datasets.folder import count_rows, read_folder
from vprflow.errors import InputError
from vprflow.manifest import build_manifest_shard

GOOD_FILES = ("jpeg", "png", "png16", "rotated")
BROKEN_FILES = ("truncated", "empty", "text")
ROW_PROBLEMS = ("missing", "spaces", "outside", "duplicate", "bad_role", "no_truth")


def write_file(path, kind, rng):
    pixels = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
    if kind == "jpeg":
        Image.fromarray(pixels).save(path, "JPEG")
    elif kind == "png":
        Image.fromarray(pixels).save(path, "PNG")
    elif kind == "png16":
        Image.fromarray((pixels[..., 0].astype(np.uint16) * 257)).save(path, "PNG")
    elif kind == "rotated":
        exif = Image.Exif()
        exif[0x0112] = 6
        Image.fromarray(pixels).save(path, "JPEG", exif=exif)
    elif kind == "truncated":
        Image.fromarray(pixels).save(path, "JPEG")
        data = path.read_bytes()
        path.write_bytes(data[: len(data) * 4 // 5])  # the header stays: only a full decode finds the cut
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("not a picture")


def generate(root, seed):
    """A folder dataset and what the oracle expects of it: (row problems by spreadsheet row,
    rows by kind of file). Roughly half the datasets have no row problem."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    n = int(rng.integers(4, 12))
    with_problems = rng.random() < 0.5
    rows, problems, files = [], {}, {}
    for i in range(n):
        line = i + 2
        kind = str(rng.choice(GOOD_FILES + BROKEN_FILES, p=[0.2, 0.2, 0.15, 0.15, 0.1, 0.1, 0.1]))
        name = f"img {i:02d}.{'png' if kind.startswith('png') else 'jpg'}" if rng.random() < 0.2 else \
            f"img{i:02d}.{'png' if kind.startswith('png') else 'jpg'}"
        write_file(root / name, kind, rng)
        role = str(rng.choice(["query", "database", "both"], p=[0.35, 0.45, 0.2]))
        row = {"path": name, "role": role, "place": f"p{int(rng.integers(0, 3))}"}
        problem = str(rng.choice(ROW_PROBLEMS)) if with_problems and rng.random() < 0.35 else None
        if problem == "missing":
            (root / name).unlink()
        elif problem == "spaces":
            row["path"] = f" {name}"
        elif problem == "outside":
            row["path"] = f"../{name}"
        elif problem == "duplicate" and rows:
            row["path"] = rows[int(rng.integers(0, len(rows)))]["path"]
        elif problem == "bad_role":
            row["role"] = "qeury"
        elif problem == "no_truth":
            row["place"] = None
        else:
            problem = None
        if problem:
            problems[line] = problem
        files[line] = kind
        rows.append(row)
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return pd.DataFrame(rows, index=range(2, n + 2)), problems, files


def oracle_listing(rows, problems):
    """None when the listing must pass, else the text the error must hold."""
    if problems:
        return problems
    roles = set(rows["role"])
    if not roles & {"query", "both"}:
        return "no row has role query or both"
    if not roles & {"database", "both"}:
        return "no row has role database or both"
    return None


def positives(query, database) -> int:
    """Database images of the query's place other than itself (a ``both`` image never finds itself)."""
    return int(((database["place"] == query.place) & (database["path"] != query.path)).sum())


def check_one(root, seed, tmp_path):
    rows, problems, files = generate(root, seed)
    expected = oracle_listing(rows, problems)
    assert count_rows(root) == len(rows)  # the DAG-time count refuses none of these: they are row problems
    if expected is not None:
        with pytest.raises(InputError) as error:
            read_folder(root)
        text = str(error.value)
        if isinstance(expected, dict):  # every row with a problem named, and no other row
            assert {int(line) for line in re.findall(r"row (\d+):", text)} == set(expected), (seed, text)
        else:
            assert expected in text, (seed, text)
        return "listing"
    listing = read_folder(root)
    manifest, rejects = build_manifest_shard(root, listing, range(len(listing)), workers=0)
    decodable = {rows.loc[line, "path"] for line, kind in files.items() if kind in GOOD_FILES}
    assert set(manifest["path"]) == decodable, seed
    assert set(rejects["path"]) == set(rows["path"]) - decodable, seed
    assert (rejects["reason"].str.len() > 0).all()
    kept = manifest.assign(shard=0)
    kept.to_parquet(tmp_path / "manifest.parquet")
    pd.DataFrame({"image_id": kept["image_id"], "keep": True}).to_parquet(tmp_path / "clean.parquet")
    good = rows[rows["path"].isin(decodable)]
    settings = {"fractions": {"test": 1.0}, "strategy": "grouped", "seed": 0, "query_splits": ["test"],
                "database_splits": ["test"]}
    split = dict(manifest=tmp_path / "manifest.parquet", clean=tmp_path / "clean.parquet", settings=settings,
                 cell_m=100.0, split_table=tmp_path / "split.parquet")
    if not good["role"].isin(["query", "both"]).any() or not good["role"].isin(["database", "both"]).any():
        with pytest.raises(InputError, match=r"^split: no (image|query|database image)"):
            stages.split(**split)
        return "split"
    stages.split(**split)
    pd.DataFrame({"query_path": [], "db_path": [], "label": []}, dtype=str).to_parquet(tmp_path / "listed.parquet")
    queries = good[good["role"].isin(["query", "both"])]
    database = good[good["role"].isin(["database", "both"])]
    has_positive = any(positives(q, database) for q in queries.itertuples())
    truth = dict(manifest=tmp_path / "manifest.parquet", split=tmp_path / "split.parquet",
                 listed=tmp_path / "listed.parquet", method="place", radius_m=25.0, truth=tmp_path / "truth.parquet")
    if not has_positive:
        with pytest.raises(InputError, match="^ground truth: none of the"):
            stages.ground_truth(**truth)
        return "ground_truth"
    stages.ground_truth(**truth)
    return "results"


def test_generated_folders_through_listing_manifest_split_and_ground_truth(tmp_path):
    outcomes = {}
    for seed in range(60):
        case = tmp_path / f"case{seed}"
        case.mkdir()
        outcome = check_one(case / "data", seed, case)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    # The generator reaches every outcome (so the property is tested on each of them).
    assert set(outcomes) == {"listing", "split", "ground_truth", "results"}, outcomes


# --------------------------------------------------------------------------- through Snakemake

RUN = {"clean": {"method": "none"}, "split": {"fractions": {"train": 0, "val": 0, "test": 1, "index": 0}},
       "ground_truth": {"method": "place"}, "models": {"tiny": {"descriptor": "tiny_image"}},
       "searches": {"exact": {"backend": "exact", "k": 20}}}


def snakemake_case(tmp_path, seed):
    root = tmp_path / "data"
    rows, problems, files = generate(root, seed)
    config = write_config(tmp_path, {**RUN, "dataset": {"name": "folder", "folder": {"root": str(root)}}})
    result = run_snakemake(tmp_path, config, check=False)
    return rows, problems, files, result


def first_seed(predicate):
    """The first generated dataset (by seed) whose listing and files satisfy ``predicate``."""
    import tempfile
    from pathlib import Path

    for seed in range(1000):
        with tempfile.TemporaryDirectory() as folder:
            rows, problems, files = generate(Path(folder) / "data", seed)
        if predicate(rows, problems, files):
            return seed
    raise AssertionError("no generated dataset fits")


@pytest.mark.e2e
def test_a_run_with_broken_rows_stops_at_the_listing_naming_them(tmp_path):
    seed = first_seed(lambda rows, problems, files: len(set(problems.values())) >= 2)
    rows, problems, files, result = snakemake_case(tmp_path, seed)
    console = result.stdout + result.stderr
    assert result.returncode != 0
    for line in problems:
        assert f"row {line}:" in console, console[-3000:]
    assert console.count("Error in rule") == 1 and "Error in rule listing" in console
    assert not (tmp_path / "results" / "manifest").exists()  # no job read an image


@pytest.mark.e2e
def test_a_run_with_broken_files_evaluates_every_other_image(tmp_path):
    def fits(rows, problems, files):
        good = rows[[files[line] in GOOD_FILES for line in rows.index]]
        queries, database = good[good["role"] != "database"], good[good["role"] != "query"]
        return (not problems and len(set(files.values()) & set(BROKEN_FILES)) >= 2 and len(queries) >= 2
                and len(database) >= 2 and all(positives(q, database) for q in queries.itertuples()))

    seed = first_seed(fits)
    rows, problems, files, result = snakemake_case(tmp_path, seed)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rejects = pd.read_csv(tmp_path / "results" / "rejects.tsv", sep="\t")
    broken = {rows.loc[line, "path"] for line, kind in files.items() if kind in BROKEN_FILES}
    assert set(rejects["path"]) == broken and rejects["reason"].notna().all()
    manifest = pd.read_parquet(tmp_path / "results" / "manifest.parquet")
    neighbours = pd.read_parquet(tmp_path / "results" / "search" / "tiny" / "exact" / "neighbours.parquet")
    split = pd.read_parquet(tmp_path / "results" / "split.parquet")
    path_of = dict(zip(manifest["image_id"], manifest["path"]))
    searched = {path_of[i] for i in neighbours["query_id"]}
    indexed = {path_of[i] for i in split.loc[split["is_database"], "image_id"]}
    good = rows[~rows["path"].isin(broken)]
    assert searched == set(good.loc[good["role"] != "database", "path"])  # every decodable query searched
    assert indexed == set(good.loc[good["role"] != "query", "path"])  # every decodable database image indexed
    assert set(manifest["path"]) | broken == set(rows["path"]) and not set(manifest["path"]) & broken
    recall = pd.read_csv(tmp_path / "results" / "recall.tsv", sep="\t")
    assert recall.loc[0, "n_queries"] == len(searched)


@pytest.mark.e2e
def test_a_run_whose_queries_all_fail_to_decode_stops_at_the_split(tmp_path):
    def fits(rows, problems, files):
        query_files = [files[line] for line in rows.index if rows.loc[line, "role"] == "query"]
        return (not problems and "both" not in set(rows["role"]) and query_files
                and all(kind in BROKEN_FILES for kind in query_files)
                and any(files[line] in GOOD_FILES for line in rows.index if rows.loc[line, "role"] == "database"))

    seed = first_seed(fits)
    _, _, _, result = snakemake_case(tmp_path, seed)
    console = result.stdout + result.stderr
    assert result.returncode != 0 and "Error in rule split" in console and console.count("Error in rule") == 1
    assert "split: no query" in console and "results/rejects.tsv" in console
    assert (tmp_path / "results" / "rejects.tsv").is_file()  # what the manifest job found is kept
