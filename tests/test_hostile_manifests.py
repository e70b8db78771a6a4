"""A user's manifest.csv as it comes: wrong encoding, empty, header only, stray spaces, one role only.

Each problem is an InputError naming the file and, where there is one, the row a spreadsheet
shows (header = row 1), and saying what to do. ``count_rows`` runs before any job (it fixes the
shards), so what it can tell from the bytes alone it tells there.
"""

import numpy as np
import pandas as pd
import pytest

from vprflow.datasets.folder import count_rows, read_folder
from vprflow.errors import InputError


def make_folder(root, text: str | bytes, files=("a.jpg", "b.jpg", "c.jpg")):
    for name in files:
        (root / name).write_bytes(b"x")
    data = text.encode("utf-8") if isinstance(text, str) else text
    (root / "manifest.csv").write_bytes(data)
    return root


def both_refuse(root, pattern):
    """The DAG-time count and the listing refuse the manifest the same way."""
    for check in (count_rows, read_folder):
        with pytest.raises(InputError, match=pattern):
            check(root)


def test_a_byte_that_is_not_utf8_names_its_row(tmp_path):
    # Before: pandas' UnicodeDecodeError traceback. 0xe9 is "é" in Latin-1, invalid alone in UTF-8.
    root = make_folder(tmp_path, b"path,role,place\na.jpg,query,p1\nb.jpg,database,caf\xe9\n")
    both_refuse(root, r"manifest\.csv: row 3 is not UTF-8 \(byte 0xe9\).*save it as UTF-8")


def test_a_utf8_byte_order_mark_is_read_as_utf8(tmp_path):
    root = make_folder(tmp_path, "\ufeffpath,role,place\na.jpg,query,p1\nb.jpg,database,p1\n")
    assert count_rows(root) == 2
    assert list(read_folder(root)["path"]) == ["a.jpg", "b.jpg"]


def test_an_empty_manifest_says_what_it_needs(tmp_path):
    # Before: pandas' EmptyDataError at listing (count_rows said 0 rows and the DAG went on).
    root = make_folder(tmp_path, b"")
    both_refuse(root, r"manifest\.csv is empty: write a header row \(path,role and place or x,y or lat,lon\)")


def test_a_header_without_rows_lists_no_images(tmp_path):
    # Before: the manifest job died with KeyError: "['reason'] not found in axis".
    root = make_folder(tmp_path, "path,role,place\n")
    both_refuse(root, r"manifest\.csv lists no images \(a header, no rows\)")


def test_a_header_without_path_or_role_is_named_before_any_job(tmp_path):
    root = make_folder(tmp_path, "file,kind,place\na.jpg,query,p\n")
    both_refuse(root, r"manifest\.csv: needs columns 'path' and 'role'; found \['file', 'kind', 'place'\]")


def test_a_line_with_too_many_fields_names_its_row(tmp_path):
    root = make_folder(tmp_path, "path,role,place\na.jpg,query,p1\nb.jpg,database,p1,extra\n")
    with pytest.raises(InputError, match=r"manifest\.csv: row 3 has 4 fields, the header 3"):
        read_folder(root)


def test_a_path_with_spaces_around_it_is_named(tmp_path):
    # Before: the stripped path passed the file check, then the manifest job looked for " b.jpg".
    root = make_folder(tmp_path, "path,role,place\na.jpg,query,p1\n b.jpg ,database,p1\n")
    with pytest.raises(InputError) as error:
        read_folder(root)
    assert "row 3: path ' b.jpg ' has spaces around it; the file is 'b.jpg': remove the spaces" in str(error.value)


def test_a_file_name_with_inner_spaces_is_fine(tmp_path):
    root = make_folder(tmp_path, "path,role,place\nmy photo.jpg,query,p1\nb.jpg,database,p1\n",
                       files=("my photo.jpg", "b.jpg"))
    assert list(read_folder(root)["path"]) == ["my photo.jpg", "b.jpg"]


@pytest.mark.parametrize("roles, missing", [(["database", "database"], "query"),
                                            (["query", "query"], "database")])
def test_one_role_only_is_refused_at_listing(tmp_path, roles, missing):
    # Before: database only ran every job to blank recall rows and a failed picture; query only
    # ended in faiss' bare `assert k > 0`.
    rows = "".join(f"{name},{role},p1\n" for name, role in zip(["a.jpg", "b.jpg"], roles))
    root = make_folder(tmp_path, "path,role,place\n" + rows)
    with pytest.raises(InputError, match=rf"manifest\.csv: no row has role {missing} or both"):
        read_folder(root)


def test_count_rows_counts_image_rows(tmp_path):
    root = make_folder(tmp_path, "path,role,place\na.jpg,query,p1\n\nb.jpg,database,p1\n")
    assert count_rows(root) == 2  # blank lines are not rows


def test_a_missing_manifest_names_the_key(tmp_path):
    with pytest.raises(InputError, match=r"dataset\.folder\.manifest: .*nope\.csv not found"):
        count_rows(tmp_path, "nope.csv")


def test_problem_rows_stay_in_spreadsheet_numbering_with_a_bom(tmp_path):
    root = make_folder(tmp_path, "\ufeffpath,role,place\na.jpg,query,p1\ngone.jpg,database,p1\n")
    with pytest.raises(InputError, match=r"row 3: file 'gone\.jpg' not found"):
        read_folder(root)


def test_manifest_shard_of_no_rows_writes_empty_tables(tmp_path):
    """A shard may hold no rows (more shards than images); its tables are empty, not an error."""
    from vprflow.datasets import normalise_listing
    from vprflow.manifest import build_manifest_shard

    listing = normalise_listing(pd.DataFrame({"path": ["a.jpg"], "role": ["query"], "place": ["p"]}))
    manifest, rejects = build_manifest_shard(tmp_path, listing, range(1, 1), workers=0)
    assert len(manifest) == 0 and len(rejects) == 0
    assert {"image_id", "path", "width", "height", "sha256", "role"} <= set(manifest.columns)
    assert list(rejects.columns) == ["image_id", "row", "path", "reason"]
    assert np.issubdtype(manifest["width"].dtype, np.integer)


# --------------------------------------------------------------------------- nothing left to evaluate
# What decoding and cleaning leave is known only after the manifest job: the split job, the first
# that knows the evaluation roles, refuses a run without queries or without a database (before:
# blank recall rows, then `pictures` failed on a log scale, or faiss' bare `assert k > 0`).


def kept(roles, places=None):
    from vprflow.datasets import normalise_listing

    table = normalise_listing(pd.DataFrame({"path": [f"{i}.jpg" for i in range(len(roles))], "role": roles,
                                            "place": places or ["p"] * len(roles)}))
    table.insert(0, "image_id", [f"id{i}" for i in range(len(table))])
    return table


def split_stage(tmp_path, images, fractions):
    from vprflow import stages

    images.assign(shard=0).to_parquet(tmp_path / "manifest.parquet")
    pd.DataFrame({"image_id": images["image_id"], "keep": True}).to_parquet(tmp_path / "clean.parquet")
    settings = {"fractions": fractions, "strategy": "grouped", "seed": 0, "query_splits": ["test"],
                "database_splits": ["test", "index"]}
    stages.split(manifest=tmp_path / "manifest.parquet", clean=tmp_path / "clean.parquet", settings=settings,
                 cell_m=100.0, split_table=tmp_path / "split.parquet")
    return pd.read_parquet(tmp_path / "split.parquet")


def test_no_image_left_is_refused_at_the_split(tmp_path):
    with pytest.raises(InputError, match=r"split: no image is left.*results/rejects\.tsv.*results/clean\.parquet"):
        split_stage(tmp_path, kept([]), {"test": 1.0})
    assert not (tmp_path / "split.parquet").exists()


def test_no_query_left_is_refused_at_the_split(tmp_path):
    # Both queries decoded, but the grouped split sent their place to train: none is evaluated.
    images = kept(["query", "query", "database", "database"], ["a", "a", "b", "b"])
    with pytest.raises(InputError, match=r"split: no query.*2 have role query or both.*train 2.*split\.fractions"):
        split_stage(tmp_path, images, {"train": 0.5, "test": 0.5})


def test_no_database_left_is_refused_at_the_split(tmp_path):
    images = kept(["query", "query"])
    with pytest.raises(InputError, match=r"split: no database image.*0 have role database or both"):
        split_stage(tmp_path, images, {"test": 1.0})


def test_queries_and_database_pass_the_split(tmp_path):
    table = split_stage(tmp_path, kept(["query", "database", "both"]), {"test": 1.0})
    assert table["is_query"].sum() == 2 and table["is_database"].sum() == 2


def test_no_query_with_a_positive_is_refused_at_ground_truth(tmp_path):
    from vprflow import stages

    images = kept(["query", "database"], ["a", "b"])
    images.to_parquet(tmp_path / "manifest.parquet")
    pd.DataFrame({"image_id": images["image_id"], "split": "test", "is_query": [True, False],
                  "is_database": [False, True]}).to_parquet(tmp_path / "split.parquet")
    pd.DataFrame({"query_path": [], "db_path": [], "label": []}, dtype=str).to_parquet(tmp_path / "listed.parquet")
    with pytest.raises(InputError, match=r"ground truth: none of the 1 queries has a positive.*place.*radius_m"):
        stages.ground_truth(manifest=tmp_path / "manifest.parquet", split=tmp_path / "split.parquet",
                            listed=tmp_path / "listed.parquet", method="auto", radius_m=25.0,
                            truth=tmp_path / "truth.parquet")


def test_a_bad_input_ends_the_job_with_its_message_not_a_traceback(tmp_path):
    """What a script sees: the message on the console and in the rule's log, exit code 1."""
    import subprocess
    import sys

    script = ("from vprflow.errors import InputError\nfrom vprflow.logs import log_to\n"
              f"with log_to({str(tmp_path / 'job.log')!r}):\n"
              "    raise InputError('manifest.csv: row 3: unknown role reference')\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip() == "Error: manifest.csv: row 3: unknown role reference"
    log = (tmp_path / "job.log").read_text()
    assert "ERROR" in log and "row 3: unknown role reference" in log and "Traceback" not in log
