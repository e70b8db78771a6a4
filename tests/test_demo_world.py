import hashlib

import numpy as np

from vprflow.datasets import LISTING_COLUMNS
from vprflow.datasets.demo import count_images, generate
from vprflow.descriptors import load
from vprflow.images import read_rgb


def test_listing_and_files(tiny_world):
    root, listing = tiny_world
    assert list(listing.columns[: len(LISTING_COLUMNS)]) == LISTING_COLUMNS
    assert len(listing) == count_images("tiny")
    assert set(listing["role"]) == {"database", "query"}
    assert listing["truth_bw"].sum() == 3 and listing["truth_collage"].sum() == 3
    assert listing["truth_corrupt"].sum() == 2
    assert (root / "manifest.csv").is_file()
    good = listing[~listing["truth_corrupt"]]
    assert good["place"].notna().all() and good["category"].notna().all() and good["name"].notna().all()
    assert np.isfinite(good[["x", "y", "yaw"]].to_numpy()).all()
    for path in good["path"]:
        assert read_rgb(root / path).shape == (96, 128, 3)


def test_same_seed_same_bytes(tmp_path, tiny_world):
    root, _ = tiny_world
    generate(tmp_path, "tiny", seed=0)
    for name in ("database/d00003.jpg", "query/q00007.jpg", "extra/collage001.jpg"):
        assert hashlib.sha256((tmp_path / name).read_bytes()).digest() == \
            hashlib.sha256((root / name).read_bytes()).digest()


def test_bw_pictures_are_gray_and_views_are_coloured(tiny_world):
    root, listing = tiny_world
    bw = read_rgb(root / listing.loc[listing["truth_bw"], "path"].iloc[0]).astype(int)
    assert np.abs(bw[..., 0] - bw[..., 1]).max() <= 8
    colour = read_rgb(root / "database/d00000.jpg").astype(int)
    assert np.abs(colour[..., 0] - colour[..., 2]).mean() > 10


def test_near_views_look_more_alike_than_far_ones(tiny_world):
    """The most similar database view of a query is usually a near one."""
    root, listing = tiny_world
    descriptor = load({"descriptor": "tiny_image"})
    db = listing[(listing["role"] == "database") & ~listing["path"].str.startswith("extra")]
    q = listing[listing["role"] == "query"]

    def encode(table):
        return descriptor.encode(np.stack([descriptor.preprocess(read_rgb(root / p)) for p in table["path"]]))

    similarity = encode(q) @ encode(db).T
    distance = np.linalg.norm(q[["x", "y"]].to_numpy()[:, None] - db[["x", "y"]].to_numpy()[None], axis=2)
    best = similarity.argmax(axis=1)
    top1_distance = distance[np.arange(len(q)), best]
    assert np.median(top1_distance) < 0.25 * np.median(distance)
    assert similarity[distance < 15].mean() > similarity[distance > 60].mean()
