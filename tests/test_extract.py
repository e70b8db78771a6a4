import numpy as np
import pyarrow.parquet as pq

from vprflow.descriptors import load
from vprflow.extract import extract_features, stack_features
from vprflow.tables import read_ids


def test_shards_stack_in_id_order(tiny_world, tmp_path):
    root, listing = tiny_world
    good = listing[~listing["truth_corrupt"]].reset_index(drop=True)
    descriptor = load({"descriptor": "tiny_image", "width": 8, "height": 6})
    shards = []
    for i, part in enumerate((good.iloc[:20], good.iloc[20:23], good.iloc[:0])):
        out = tmp_path / f"shard{i}.parquet"
        extract_features(descriptor, [root / p for p in part["path"]], list(part["path"]), out,
                         batch_size=7, workers=0)
        shards.append(out)
    assert pq.read_table(shards[2]).num_rows == 0
    total, dim = stack_features(shards, tmp_path / "v.npy", tmp_path / "ids.txt")
    assert (total, dim) == (23, 8 * 6 * 3)
    vectors, ids = np.load(tmp_path / "v.npy"), read_ids(tmp_path / "ids.txt")
    assert list(ids) == list(good["path"][:23])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    from vprflow.images import read_rgb

    one = descriptor.encode(descriptor.preprocess(read_rgb(root / ids[21]))[None])
    np.testing.assert_allclose(vectors[21], one[0], rtol=1e-5)


def test_extract_skips_undecodable_files(tmp_path, tiny_world):
    root, _ = tiny_world
    (tmp_path / "bad.jpg").write_bytes(b"junk")
    descriptor = load({"descriptor": "tiny_image"})
    extract_features(descriptor, [root / "database/d00000.jpg", tmp_path / "bad.jpg"], ["a", "b"],
                     tmp_path / "f.parquet", workers=0)
    assert pq.read_table(tmp_path / "f.parquet").column("image_id").to_pylist() == ["a"]


def test_crop_clips_boxes_to_the_image():
    from vprflow.images import crop

    image = np.arange(10 * 20 * 3, dtype=np.uint8).reshape(10, 20, 3)
    assert crop(image, (2.4, 1.0, 5.2, 4.0)).shape == (3, 4, 3)
    np.testing.assert_array_equal(crop(image, (2, 1, 6, 4)), image[1:4, 2:6])
    assert crop(image, (-5, -5, 100, 100)).shape == image.shape
    assert crop(image, (19.5, 9.5, 19.5, 9.5)).shape == (1, 1, 3)  # never empty
