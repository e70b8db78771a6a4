"""Dataset readers (Revisited, UTM folders, class folders, GLDv2) on tiny trees made here."""

from __future__ import annotations

import hashlib
import io
import logging
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_download import LoopbackServer
from vprflow.datasets import LISTING_COLUMNS
from vprflow.datasets.class_folder import read_class_folder
from vprflow.datasets.gldv2 import fetch_gldv2, read_gldv2
from vprflow.datasets.revisited import BBOX_COLUMNS, fetch_revisited, read_revisited
from vprflow.datasets.utm_folder import read_utm_folder
from vprflow.errors import InputError

GROUND_TRUTH_COLUMNS = ["query_path", "db_path", "label"]


def tiny_jpeg(path: Path, shade: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 3), (shade, shade, shade)).save(path, "JPEG")
    return path


def tar_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


# --- Revisited Oxford / Paris --------------------------------------------------------------

DATABASE = ["all_souls_000001", "all_souls_000002", "radcliffe_camera_000010", "oxford_000123"]
QUERIES = ["all_souls_000013", "radcliffe_camera_000519"]


def revisited_gnd() -> dict:
    return {
        "imlist": DATABASE,
        "qimlist": QUERIES,
        "gnd": [
            {"bbx": [136.5, 34.1, 648.5, 955.2], "easy": np.array([0]), "hard": np.array([1]), "junk": np.array([3])},
            {"bbx": np.array([10.0, 20.0, 30.0, 40.0]), "easy": [2], "hard": [], "junk": []},
        ],
    }


def make_revisited(root: Path, gnd: dict | None = None) -> Path:
    for name in DATABASE[:2]:
        tiny_jpeg(root / "jpg" / f"{name}.jpg")
    for name in DATABASE[2:] + QUERIES:
        tiny_jpeg(root / "jpg" / "sub" / f"{name}.jpg")  # sub-folders are searched too (Paris archives)
    (root / "gnd_roxford5k.pkl").write_bytes(pickle.dumps(gnd or revisited_gnd()))
    return root


def test_revisited_listing_and_ground_truth(tmp_path):
    listing, truth = read_revisited(make_revisited(tmp_path), "roxford5k")
    assert list(listing.columns) == LISTING_COLUMNS + BBOX_COLUMNS
    database = listing[listing["role"] == "database"]
    queries = listing[listing["role"] == "query"].set_index("path")
    assert list(database["path"]) == [
        "jpg/all_souls_000001.jpg",
        "jpg/all_souls_000002.jpg",
        "jpg/sub/radcliffe_camera_000010.jpg",
        "jpg/sub/oxford_000123.jpg",
    ]
    assert list(queries.index) == ["jpg/sub/all_souls_000013.jpg", "jpg/sub/radcliffe_camera_000519.jpg"]
    assert listing["path"].is_unique
    assert queries.loc["jpg/sub/all_souls_000013.jpg", BBOX_COLUMNS].tolist() == [136.5, 34.1, 648.5, 955.2]
    assert database[BBOX_COLUMNS].isna().all().all()
    assert listing["place"].isna().all()  # the file-name landmark is no ground truth ...
    assert list(queries["name"]) == ["all_souls", "radcliffe_camera"]  # ... only a name
    assert list(truth.columns) == GROUND_TRUTH_COLUMNS
    assert sorted(map(tuple, truth.to_numpy())) == [
        ("jpg/sub/all_souls_000013.jpg", "jpg/all_souls_000001.jpg", "easy"),
        ("jpg/sub/all_souls_000013.jpg", "jpg/all_souls_000002.jpg", "hard"),
        ("jpg/sub/all_souls_000013.jpg", "jpg/sub/oxford_000123.jpg", "junk"),
        ("jpg/sub/radcliffe_camera_000519.jpg", "jpg/sub/radcliffe_camera_000010.jpg", "easy"),
    ]


class Explodes:
    """A pickle payload that would run a shell command when loaded by plain pickle."""

    def __reduce__(self):
        import os

        return os.system, ("touch pwned",)


def test_revisited_pickle_with_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    gnd = revisited_gnd()
    gnd["gnd"][0]["bbx"] = Explodes()
    make_revisited(tmp_path, gnd)
    with pytest.raises(InputError, match=r"gnd_roxford5k\.pkl.*refused to load posix\.system"):
        read_revisited(tmp_path, "roxford5k")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda gnd: gnd["gnd"][1].update(easy=[7]), r"gnd\[1\] \(query radcliffe_camera_000519\): easy index 7"),
        (lambda gnd: gnd["gnd"][0].pop("junk"), r"gnd\[0\].*missing key\(s\) junk"),
        (lambda gnd: gnd["gnd"][0].update(bbx=[1, 2, 3]), r"gnd\[0\].*bbx must be 4 numbers"),
        (lambda gnd: gnd["gnd"][1].update(hard=[2]), r"radcliffe_camera_000010 has more than one label"),
        (lambda gnd: gnd["imlist"].append("all_souls_000013"), "also database images"),
        (lambda gnd: gnd["gnd"].pop(), "gnd has 1 entries for 2 queries"),
        (lambda gnd: gnd["imlist"].append("oxford_000123"), "imlist names oxford_000123 more than once"),
    ],
)
def test_revisited_bad_ground_truth_is_reported(tmp_path, change, message):
    gnd = revisited_gnd()
    gnd["imlist"] = list(DATABASE)
    change(gnd)
    make_revisited(tmp_path, gnd)
    with pytest.raises(InputError, match=message):
        read_revisited(tmp_path, "roxford5k")


def test_revisited_missing_images_are_reported(tmp_path):
    make_revisited(tmp_path)
    (tmp_path / "jpg" / "all_souls_000002.jpg").unlink()
    with pytest.raises(InputError, match=r"1 of 6 images .* all_souls_000002\.jpg"):
        read_revisited(tmp_path, "roxford5k")


def test_revisited_missing_ground_truth_names_the_file(tmp_path):
    with pytest.raises(InputError, match=r"gnd_rparis6k\.pkl not found"):
        read_revisited(tmp_path, "rparis6k")
    with pytest.raises(InputError, match="not a Revisited dataset"):
        read_revisited(tmp_path, "oxford105k")


def test_fetch_revisited_from_a_mirror(tmp_path):
    jpeg = tiny_jpeg(tmp_path / "one.jpg").read_bytes()
    archive = tar_bytes({f"{name}.jpg": jpeg for name in DATABASE + QUERIES})
    files = {"/roxford5k/oxbuild_images-v1.tgz": archive, "/roxford5k/gnd_roxford5k.pkl": pickle.dumps(revisited_gnd())}
    root = tmp_path / "roxford5k"
    with LoopbackServer(files) as server:
        fetch_revisited("roxford5k", root, mirror=server.url)
        fetch_revisited("roxford5k", root, mirror=server.url)  # a rerun downloads nothing
        assert len(server.requests) == 2
    assert sorted(p.name for p in root.iterdir()) == ["gnd_roxford5k.pkl", "jpg"]  # archive deleted
    listing, truth = read_revisited(root, "roxford5k")
    assert (listing["path"].str.startswith("jpg/oxbuild_images-v1/")).all()
    assert len(listing) == 6 and len(truth) == 4


# --- UTM folders ---------------------------------------------------------------------------

UTM_DATABASE = [
    "@0585032.17@4477060.97@17@T@040.44001@-079.99001@pano1@00@@@@@@pitch1_yaw1@.jpg",
    "@0585040.00@4477070.50@17@T@040.44011@-079.99011@pano2@01@90.5@@@@@@.jpg",
]
UTM_QUERY = "@0585035.00@4477065.00@17@T@@@@@@@@@@@.jpg"


def make_utm_folder(root: Path) -> Path:
    for name in UTM_DATABASE:
        tiny_jpeg(root / "database" / name)
    tiny_jpeg(root / "queries" / UTM_QUERY)
    return root


def test_utm_folder_listing(tmp_path):
    listing = read_utm_folder(make_utm_folder(tmp_path))
    assert list(listing.columns) == LISTING_COLUMNS + ["utm_zone"]
    assert list(listing["role"]) == ["database", "database", "query"]
    assert list(listing["path"]) == [f"database/{n}" for n in UTM_DATABASE] + [f"queries/{UTM_QUERY}"]
    assert listing["x"].tolist() == [585032.17, 585040.0, 585035.0]
    assert listing["y"].tolist() == [4477060.97, 4477070.5, 4477065.0]
    assert np.isnan(listing["yaw"][0]) and listing["yaw"][1] == 90.5
    assert set(listing["utm_zone"]) == {"17T"}
    assert listing["place"].isna().all()


def test_utm_folder_in_split_subfolders(tmp_path):
    make_utm_folder(tmp_path / "test")
    listing = read_utm_folder(tmp_path, "test/database", "test/queries")
    assert listing["path"].str.startswith(("test/database/", "test/queries/")).all()


def test_utm_folder_bad_file_names_are_listed(tmp_path):
    make_utm_folder(tmp_path)
    tiny_jpeg(tmp_path / "queries" / "IMG_0001.jpg")
    tiny_jpeg(tmp_path / "database" / "@east@4477060.97@17@T@.jpg")
    with pytest.raises(InputError, match=r"2 file name\(s\).*\n.*@east@4477060\.97@17@T@\.jpg\n.*IMG_0001\.jpg"):
        read_utm_folder(tmp_path)


def test_utm_folder_missing_root_says_where_to_put_it(tmp_path):
    with pytest.raises(InputError, match=r"request form.*pitts30k/database"):
        read_utm_folder(tmp_path / "pitts30k")


# --- class folders -------------------------------------------------------------------------


def test_class_folder_listing(tmp_path):
    tiny_jpeg(tmp_path / "eiffel" / "1.jpg")
    tiny_jpeg(tmp_path / "eiffel" / "night" / "2.JPG")
    tiny_jpeg(tmp_path / "louvre" / "a.png")
    (tmp_path / "louvre" / "notes.txt").write_text("not an image")
    tiny_jpeg(tmp_path / ".ipynb_checkpoints" / "x.jpg")
    tiny_jpeg(tmp_path / "louvre" / ".hidden" / "y.jpg")
    listing = read_class_folder(tmp_path)
    assert list(listing.columns) == LISTING_COLUMNS
    assert list(listing["path"]) == ["eiffel/1.jpg", "eiffel/night/2.JPG", "louvre/a.png"]
    assert list(listing["place"]) == ["eiffel", "eiffel", "louvre"]
    assert (listing["name"] == listing["place"]).all()
    assert (listing["role"] == "").all()


def test_class_folder_refuses_loose_images(tmp_path):
    tiny_jpeg(tmp_path / "eiffel" / "1.jpg")
    tiny_jpeg(tmp_path / "stray.jpg")
    with pytest.raises(InputError, match="stray.jpg"):
        read_class_folder(tmp_path)


# --- Google Landmarks v2 -------------------------------------------------------------------

TRAIN_IDS = ["0123456789abcdef", "00aa000000000001", "fedcba9876543210"]
INDEX_IDS = {0: ["1000000000000000", "1100000000000000"], 1: ["1200000000000000"]}
TEST_IDS = ["2000000000000000", "2100000000000000", "2200000000000000"]


def gldv2_path(split: str, shard: int, image_id: str) -> str:
    return f"{split}/images_{shard:03d}/{image_id[0]}/{image_id[1]}/{image_id[2]}/{image_id}.jpg"


def make_gldv2(root: Path) -> Path:
    for image_id in TRAIN_IDS:
        tiny_jpeg(root / gldv2_path("train", 0, image_id))
    for shard, ids in INDEX_IDS.items():
        for image_id in ids:
            tiny_jpeg(root / gldv2_path("index", shard, image_id))
    for image_id in TEST_IDS:
        tiny_jpeg(root / gldv2_path("test", 0, image_id))
    (root / "metadata").mkdir()
    (root / "metadata" / "train.csv").write_text(
        "id,url,landmark_id\n0123456789abcdef,http://x/1,7\n00aa000000000001,http://x/2,7\n"
        "fedcba9876543210,http://x/3,9\n"
    )
    (root / "metadata" / "train_clean.csv").write_text("landmark_id,images\n7,0123456789abcdef 00aa000000000001\n")
    (root / "ground_truth").mkdir()
    (root / "ground_truth" / "retrieval_solution_v2.1.csv").write_text(
        "id,images,Usage\n"
        "2000000000000000,1000000000000000 1200000000000000,Public\n"
        "2100000000000000,1100000000000000,Private\n"
        "2200000000000000,None,Ignored\n"
    )
    return root


def test_gldv2_train_shards(tmp_path):
    listing, truth = read_gldv2(make_gldv2(tmp_path), {"train": [0, 0]})
    assert list(listing.columns) == LISTING_COLUMNS
    assert list(listing["path"]) == sorted(gldv2_path("train", 0, i) for i in TRAIN_IDS)
    assert dict(zip(listing["path"].str[-20:-4], listing["place"])) == dict(zip(TRAIN_IDS, ["7", "7", "9"]))
    assert (listing["role"] == "").all() and truth.empty
    clean, _ = read_gldv2(tmp_path, {"train": [0, 0]}, clean=True)
    assert len(clean) == 2


def test_gldv2_retrieval_ground_truth_over_the_listed_shards(tmp_path, caplog):
    make_gldv2(tmp_path)
    with caplog.at_level(logging.INFO, logger="vprflow"):
        listing, truth = read_gldv2(tmp_path, {"index": [0, 0], "test": [0, 0]})
    assert list(listing.columns) == LISTING_COLUMNS + ["usage"]
    by_role = listing.groupby("role")["path"].apply(sorted).to_dict()
    assert by_role == {
        "database": [gldv2_path("index", 0, i) for i in INDEX_IDS[0]],
        "query": [gldv2_path("test", 0, i) for i in TEST_IDS[:2]],
    }  # the ignored one is left out
    assert listing.set_index("path").loc[gldv2_path("test", 0, TEST_IDS[1]), "usage"] == "Private"
    assert list(truth.columns) == GROUND_TRUTH_COLUMNS
    assert sorted(map(tuple, truth.to_numpy())) == [
        (gldv2_path("test", 0, TEST_IDS[0]), gldv2_path("index", 0, INDEX_IDS[0][0]), "easy"),
        (gldv2_path("test", 0, TEST_IDS[1]), gldv2_path("index", 0, INDEX_IDS[0][1]), "easy"),
    ]
    assert "1 of 3 relevant index images skipped" in caplog.text  # 1200... lies in index shard 1
    assert "1 of 3 images skipped: ignored" in caplog.text


def test_gldv2_missing_shard_and_bad_ranges_are_reported(tmp_path):
    make_gldv2(tmp_path)
    with pytest.raises(InputError, match=r"dataset\.shards\.index: 1 shard folder\(s\) missing.*images_002"):
        read_gldv2(tmp_path, {"index": [0, 2]})
    with pytest.raises(InputError, match=r"dataset\.shards\.test: expected \[first, last\].*19"):
        read_gldv2(tmp_path, {"test": [0, 20]})
    with pytest.raises(InputError, match="unknown GLDv2 split 'val'"):
        read_gldv2(tmp_path, {"val": [0, 0]})


def test_fetch_gldv2_checks_md5_and_extracts_each_shard(tmp_path):
    jpeg = tiny_jpeg(tmp_path / "one.jpg").read_bytes()
    shard = tar_bytes({f"{i[0]}/{i[1]}/{i[2]}/{i}.jpg": jpeg for i in INDEX_IDS[0]})
    files = {
        "/gldv2/ground_truth/retrieval_solution_v2.1.csv": b"id,images,Usage\n",
        "/gldv2/index/images_000.tar": shard,
        "/gldv2/md5sum/index/md5.images_000.txt": f"{hashlib.md5(shard).hexdigest()}  images_000.tar\n".encode(),
        "/gldv2/index/images_001.tar": shard,
        "/gldv2/md5sum/index/md5.images_001.txt": f"{hashlib.md5(b'other').hexdigest()}  images_001.tar\n".encode(),
    }
    root = tmp_path / "gldv2"
    with LoopbackServer(files) as server:
        fetch_gldv2("index", [0, 0], root, mirror=server.url)
        with pytest.raises(InputError, match="md5"):
            fetch_gldv2("index", [0, 1], root, mirror=server.url)
    assert sorted(p.name for p in (root / "index").iterdir()) == [
        "images_000",
        "md5.images_000.txt",
        "md5.images_001.txt",
    ]
    assert all((root / gldv2_path("index", 0, i)).is_file() for i in INDEX_IDS[0])
