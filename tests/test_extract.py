import numpy as np
import pyarrow.parquet as pq
import pytest

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


def test_decoding_threads_give_the_loader_s_batches_and_decode_only_when_asked(tmp_path, tiny_world):
    """Threads decode each batch when it is asked for: the same (indices, images, errors) as
    a loader, an undecodable file still a reason in its slot, and nothing decoded ahead of
    the caller (which would compete with a CPU network for the cores)."""
    from vprflow.images import iter_batches, read_rgb

    root, _ = tiny_world
    (tmp_path / "bad.jpg").write_bytes(b"junk")
    paths = [root / "database/d00000.jpg", tmp_path / "bad.jpg", root / "database/d00001.jpg",
             root / "database/d00002.jpg", root / "database/d00003.jpg"]
    decoded = []

    def recording_reader(path, **kwargs):
        decoded.append(path)
        return read_rgb(path, **kwargs)

    by_loader = list(iter_batches(paths, batch_size=2, workers=0))
    by_threads = iter_batches(paths, batch_size=2, threads=2, reader=recording_reader)
    first = next(by_threads)
    assert len(decoded) == 2  # the second batch is not decoded while the caller works on the first
    batches = [first, *by_threads]
    assert [b[0] for b in batches] == [[0, 1], [2, 3], [4]]
    assert batches[0][1][1] is None and batches[0][2][1] == "not an image (unrecognised format)"
    for (indices, images, errors), (indices_l, images_l, errors_l) in zip(batches, by_loader):
        assert indices == indices_l and errors == errors_l
        for image, image_l in zip(images, images_l):
            assert (image is None) == (image_l is None)
            if image is not None:
                np.testing.assert_array_equal(image, image_l)


def test_a_network_on_the_cpu_decodes_between_its_batches_and_others_use_loader_processes():
    import torch

    from vprflow.networks.compute import cpu_decoding_threads

    assert cpu_decoding_threads(torch.device("cpu")) == torch.get_num_threads()  # the forward pass's threads
    assert cpu_decoding_threads(torch.device("cuda")) == 0  # a GPU computes while loader processes decode
    cnn = load({"descriptor": "cnn", "weights": "none", "width": 64, "height": 48})
    assert cnn.decoding_threads() == cpu_decoding_threads(cnn.device)
    assert load({"descriptor": "tiny_image"}).decoding_threads() == 0


def _stream_paths(tmp_path, root):
    (tmp_path / "bad.jpg").write_bytes(b"junk")
    return [root / "database/d00000.jpg", tmp_path / "bad.jpg", root / "database/d00001.jpg",
            root / "database/d00002.jpg", root / "database/d00003.jpg", root / "database/d00004.jpg",
            root / "database/d00005.jpg"]


def test_streams_yield_the_loader_s_batches_in_order_each_on_one_operator_thread(tmp_path, tiny_world):
    """Two streams: every batch (and the undecodable file's reason) comes back in input order
    with ``step``'s outputs, as the loader's way gives them; the first batch runs in the
    calling thread (so the network is built once), the others in the streams with torch on
    one operator thread each; the caller's thread count is back afterwards. Eight threads
    make four streams of two operator threads (activations' memory grows with streams)."""
    import threading

    import torch

    from vprflow.images import map_batches

    root, _ = tiny_world
    paths = _stream_paths(tmp_path, root)
    seen = []

    def step(images):
        seen.append((threading.current_thread().name.startswith("stream"), torch.get_num_threads()))
        return [float(image.astype(np.float64).sum()) for image in images]

    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        by_loader = list(map_batches(paths, None, step, batch_size=2, workers=0))
        seen.clear()
        by_streams = list(map_batches(paths, None, step, batch_size=2, threads=2))
        assert torch.get_num_threads() == 3
        many = []
        list(map_batches(paths, None, lambda images: many.append(torch.get_num_threads()) or images, batch_size=1,
                         threads=8))
    finally:
        torch.set_num_threads(before)
    assert many[1:] == [2] * 5  # 8 threads: MAX_STREAMS = 4 streams, 2 operator threads each
    assert [b[0] for b in by_streams] == [[0, 1], [2, 3], [4, 5], [6]]
    assert by_streams[0][2][1] == "not an image (unrecognised format)" and by_streams[0][1][1] is None
    assert len(by_streams[0][3]) == 1  # step saw the decoded image only
    for (indices, images, errors, outputs), loader in zip(by_streams, by_loader, strict=True):
        assert indices == loader[0] and errors == loader[2] and outputs == loader[3]
    assert seen[0] == (False, 3) and sorted(seen[1:]) == [(True, 1)] * 3


def test_streams_run_side_by_side_and_a_failure_reaches_the_caller(tmp_path, tiny_world):
    """Batches after the first meet at a two-party barrier, which only two streams running
    at once can pass (one stream, or steps in turn, break it after its timeout). A step that
    raises reaches the caller; the streams stop and torch's thread count is back."""
    import threading

    import torch

    from vprflow.images import map_batches

    root, _ = tiny_world
    paths = _stream_paths(tmp_path, root)[2:]  # five good images, one per batch
    meeting = threading.Barrier(2, timeout=20)

    def meet(images):
        if threading.current_thread().name.startswith("stream"):
            meeting.wait()
        return [0] * len(images)

    before = torch.get_num_threads()
    assert len(list(map_batches(paths, None, meet, batch_size=1, threads=2))) == 5

    def fail_on_the_third(images, calls=[]):
        calls.append(1)
        if len(calls) == 3:
            raise ValueError("step failed")
        return [0] * len(images)

    with pytest.raises(ValueError, match="step failed"):
        list(map_batches(paths, None, fail_on_the_third, batch_size=1, threads=2))
    assert torch.get_num_threads() == before
    assert not [t for t in threading.enumerate() if t.name.startswith("stream")]
    first = map_batches(paths, None, lambda images: [0] * len(images), batch_size=1, threads=2)
    next(first), next(first)
    first.close()  # a caller that stops early: the streams end, the thread count comes back
    assert torch.get_num_threads() == before
    assert not [t for t in threading.enumerate() if t.name.startswith("stream")]
