import numpy as np
import pandas as pd

from vprflow.datasets import normalise_listing
from vprflow.datasets.registry import n_shards, shard_bounds
from vprflow.manifest import build_manifest_shard, image_id


def test_shards_cover_rows_evenly():
    assert n_shards(10, 4) == 3 and n_shards(0, 4) == 1
    assert [list(shard_bounds(10, i, 3)) for i in range(3)] == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
    # More rows than estimated: the same shards still cover every row once.
    covered = [r for i in range(3) for r in shard_bounds(1000, i, 3)]
    assert covered == list(range(1000))


def test_bad_files_are_quarantined_with_reasons(tmp_path):
    import cv2

    good = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "good.jpg"), good)
    data = (tmp_path / "good.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    listing = normalise_listing(pd.DataFrame({"path": ["good.jpg", "cut.jpg", "empty.jpg", "text.jpg", "gone.jpg"],
                                              "role": "database", "place": "p"}))
    manifest, rejects = build_manifest_shard(tmp_path, listing, range(0, 5), workers=0)
    assert list(manifest["path"]) == ["good.jpg"]
    assert manifest.loc[0, "width"] == 40 and manifest.loc[0, "height"] == 30
    assert len(manifest.loc[0, "sha256"]) == 64 and manifest.loc[0, "image_id"] == image_id("good.jpg")
    reasons = dict(zip(rejects["path"], rejects["reason"]))
    assert "truncated" in reasons["cut.jpg"]
    assert reasons["empty.jpg"] == "empty file (0 bytes)"
    assert "not an image" in reasons["text.jpg"]
    assert reasons["gone.jpg"] == "file not found"
    assert list(rejects["row"]) == [1, 2, 3, 4]


def test_image_id_is_stable():
    assert image_id("a/b.jpg") == image_id("a/b.jpg") != image_id("a/c.jpg")
