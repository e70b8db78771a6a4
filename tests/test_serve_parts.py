"""The service's parts without a server: bounded uploads, in-memory multipart, decoding
limits, the micro-batcher, and the bundle's database table."""

import asyncio
import io
import struct
import zlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vprflow.images import read_rgb
from vprflow.serve.batching import MicroBatcher
from vprflow.serve.bundle import database_table
from vprflow.serve.upload import UploadRejected, decode_upload, image_bytes, multipart_field, read_body
from vprflow.tables import select_rows


def rejected(call, *args):
    with pytest.raises(UploadRejected) as caught:
        call(*args)
    return caught.value.status, caught.value.message


async def chunks_of(data, size=1000):
    for start in range(0, len(data), size):
        yield data[start:start + size]


def test_bodies_are_read_up_to_the_limit():
    data = bytes(range(256)) * 20  # 5120 bytes
    assert asyncio.run(read_body(chunks_of(data), str(len(data)), 5120)) == data
    status, message = rejected(lambda: asyncio.run(read_body(chunks_of(data), None, 5000)))
    assert status == 413 and "over 5000 bytes" in message

    async def never():  # a declared length over the limit is refused before reading a byte
        raise AssertionError("read")
        yield b""

    status, message = rejected(lambda: asyncio.run(read_body(never(), "999999", 5000)))
    assert status == 413 and "999999 bytes" in message


def multipart(fields):
    """A multipart/form-data body as a client writes it (httpx's encoder, independent of ours)."""
    httpx = pytest.importorskip("httpx")
    request = httpx.Request("POST", "http://localhost/", files=fields)
    return request.read(), request.headers["content-type"]


def test_multipart_fields_are_parsed_in_memory():
    photo = bytes(np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8))
    body, content_type = multipart({"note": ("a.txt", b"hello"), "file": ("photo.jpg", photo, "image/jpeg")})
    assert multipart_field(body, content_type) == photo
    assert image_bytes(body, content_type) == photo
    assert image_bytes(photo, "image/jpeg") == photo  # the raw body is the photo
    status, message = rejected(multipart_field, body, content_type, "image")
    assert status == 400 and "no field 'image'" in message and "'note', 'file'" in message
    status, message = rejected(image_bytes, b"", "application/octet-stream")
    assert status == 400 and "empty body" in message
    status, _ = rejected(multipart_field, body, "multipart/form-data")
    assert status == 400


def encoded(rgb, format="JPEG"):
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format=format)
    return buffer.getvalue()


def test_decoding_matches_the_pipeline_and_refuses_bombs(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    data = encoded(rgb)
    (tmp_path / "a.jpg").write_bytes(data)
    size, decoded = decode_upload(data, 10_000)
    assert size == (80, 60)
    np.testing.assert_array_equal(decoded, read_rgb(tmp_path / "a.jpg"))
    assert rejected(decode_upload, data, 80 * 60 - 1)[0] == 413  # one pixel over
    assert rejected(decode_upload, b"GIF89a, or not", 10_000)[0] == 415
    status, message = rejected(decode_upload, data[: len(data) // 2], 10_000)
    assert status == 400 and "truncated" in message

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)  # 10^10 pixels declared, none sent
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")
    status, message = rejected(decode_upload, bomb, 40_000_000)
    assert status == 413 and "10000000000 pixels" in message  # Pillow refuses it before our limit


def test_a_large_upload_decodes_as_the_extraction_does(tmp_path):
    """A 640x480 JPEG for a 160x120 input decodes at 1/4 scale (160x120, the largest DCT
    reduction that still covers the input) in the service as in the extraction's reader, and
    the answer still reports the photo's full size. Before: the service decoded it whole, so
    its query descriptor was not the pipeline's for the same photo."""
    rgb = np.random.default_rng(2).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    data = encoded(rgb)
    (tmp_path / "big.jpg").write_bytes(data)
    size, decoded = decode_upload(data, 10**7, at_least=(160, 120))
    assert size == (640, 480)
    assert decoded.shape == (120, 160, 3)
    np.testing.assert_array_equal(decoded, read_rgb(tmp_path / "big.jpg", at_least=(160, 120)))


def test_queries_within_the_window_share_one_run():
    runs = []

    def run(items, k):
        runs.append((list(items), k))
        return [item * 10 for item in items]

    async def scenario():
        batcher = MicroBatcher(run, window_s=0.2, max_batch=3)
        batcher.start()
        results = await asyncio.gather(*[batcher.submit(i, k) for i, k in zip(range(7), [1, 5, 2, 2, 2, 2, 9])])
        await batcher.stop()
        return results, batcher.stats

    results, stats = asyncio.run(scenario())
    assert results == [0, 10, 20, 30, 40, 50, 60]  # each caller gets its own item's result
    assert [(items, k) for items, k in runs] == [([0, 1, 2], 5), ([3, 4, 5], 2), ([6], 9)]  # max_batch, largest k
    assert (stats.batches, stats.images, stats.largest) == (3, 7, 3)


def test_a_failing_batch_fails_its_queries_and_the_batcher_goes_on():
    calls = []

    def run(items, k):
        calls.append(list(items))
        if "bad" in items:
            raise ValueError("broken batch")
        return list(items)

    async def scenario():
        batcher = MicroBatcher(run, window_s=0.05)
        batcher.start()
        first = await asyncio.gather(batcher.submit("bad", 1), batcher.submit("x", 1), return_exceptions=True)
        second = await batcher.submit("y", 1)
        await batcher.stop()
        return first, second

    first, second = asyncio.run(scenario())
    assert all(isinstance(e, ValueError) for e in first) and second == "y"
    assert calls == [["bad", "x"], ["y"]]


def test_the_database_table_is_in_index_order_with_masks_and_groups():
    images = pd.DataFrame({"image_id": list("abcde"), "path": [f"{i}.jpg" for i in "abcde"],
                           "place": ["p1", "p1", "p2", None, "p3"], "name": ["One", "One", None, None, "Three"],
                           "category": None, "x": [0.0, 1, 2, 3, 4], "y": 0.0})
    split = pd.DataFrame({"image_id": list("edcba"), "is_database": [True, False, True, True, True],
                          "is_query": [False, True, False, False, False]})
    all_ids = np.array(list("abcde"), dtype=object)  # the stacked vectors' row order
    masks = pd.DataFrame({"query_id": ["*"], "db_id": ["e"], "reason": ["minor_class"]})
    table = database_table(images, split, masks, all_ids)
    # build_index stacks the database rows in split order: e, c, b, a
    assert list(table["vector_row"]) == list(select_rows(all_ids, pd.Series(list("ecba"))))
    assert list(table["image_id"]) == list("ecba")
    assert list(table["excluded"]) == [True, False, False, False]
    assert list(table["group"]) == ["Three", "p2", "One", "One"]  # the name, else the place
    images.loc[2, "place"] = None
    assert database_table(images, split, masks, all_ids)["group"].tolist()[1] == "c"  # else the id


def test_a_batch_waits_for_announced_queries_only():
    runs = []

    def run(items, k):
        runs.append(list(items))
        return list(items)

    async def late(batcher, item, announced):
        if announced:
            with batcher.arriving():  # reading and decoding its upload, as the app does
                await asyncio.sleep(0.05)
                future = batcher.enqueue(item, 1)
            return await future
        await asyncio.sleep(0.05)
        return await batcher.submit(item, 1)

    async def scenario(announced):
        batcher = MicroBatcher(run, window_s=0.5)
        batcher.start()
        results = await asyncio.gather(batcher.submit("first", 1), late(batcher, "late", announced))
        await batcher.stop()
        return results

    assert asyncio.run(scenario(announced=True)) == ["first", "late"]
    assert runs == [["first", "late"]]  # one batch: the first waited for the announced one
    runs.clear()
    assert asyncio.run(scenario(announced=False)) == ["first", "late"]
    assert runs == [["first"], ["late"]]  # nobody announced: the first ran at once


def test_memory_is_released_once_per_idle_spell_never_between_close_batches():
    """``on_idle`` (the service's malloc_trim) runs in the batch thread once no query came for
    ``idle_s`` after a batch: not after each batch (it cost a single query ~10 ms), not again
    while still idle, and again after the next batch's idle spell."""
    events = []

    def run(items, k):
        events.append(("run", list(items)))
        return list(items)

    async def scenario():
        batcher = MicroBatcher(run, window_s=0.0, on_idle=lambda: events.append(("idle",)), idle_s=0.15)
        batcher.start()
        await batcher.submit("a", 1)
        await asyncio.sleep(0.02)  # shorter than idle_s: no release between a and b
        await batcher.submit("b", 1)
        await asyncio.sleep(0.6)  # one idle spell, however long: one release
        await batcher.submit("c", 1)
        await asyncio.sleep(0.3)
        await batcher.stop()
        return batcher.idle_calls

    assert asyncio.run(scenario()) == 2
    assert events == [("run", ["a"]), ("run", ["b"]), ("idle",), ("run", ["c"]), ("idle",)]


def test_the_service_pose_core_equals_the_pose_stage_table_rule():
    """The service calls ``consensus_of`` on arrays; the pose stage ``consensus_pose`` on tables.
    Query Q: A and B agree within 5 m (weights 0.9 + 0.5 > C's 1.0 alone), so the estimate is
    their weighted mean x = (0*0.9 + 4*0.5) / 1.4; R's only neighbour has no position."""
    from vprflow.pose import consensus_of, consensus_pose

    xy = pd.DataFrame({"x": [0.0, 4.0, 50.0, np.nan], "y": 0.0}, index=["A", "B", "C", "D"])
    neighbours = pd.DataFrame({"query_id": ["Q", "Q", "Q", "R"], "rank": [0, 1, 2, 0],
                               "db_id": ["C", "A", "B", "D"], "score": [1.0, 0.9, 0.5, 0.7]})
    table = consensus_pose(neighbours, xy, k=3, radius_m=5.0).set_index("query_id")
    arrays = np.full((2, 3, 2), np.nan)
    arrays[0] = xy.loc[["C", "A", "B"]].to_numpy()
    arrays[1, 0] = xy.loc["D"].to_numpy()
    estimate, n_agreeing = consensus_of(arrays, np.array([[1.0, 0.9, 0.5], [0.7, 0, 0]]), 5.0)
    assert estimate[0] == pytest.approx([4 * 0.5 / 1.4, 0.0]) and n_agreeing[0] == 2
    assert np.isnan(estimate[1]).all() and n_agreeing[1] == 0
    assert table.loc["Q", "x"] == pytest.approx(estimate[0, 0]) and table.loc["Q", "n_agreeing"] == 2


def test_memory_is_given_back_after_a_batch_only_above_the_idle_level_plus_slack(monkeypatch):
    """Releasing (malloc_trim) after every batch slowed single queries by ~10 ms, so after a
    batch it happens only when resident memory is over the idle level by more than the slack
    (25% here, exact in floating point): 1000 MB idle, 1250 is within it, 1251 is not."""
    from vprflow.serve import engine

    resident = [1000.0]
    released = []
    monkeypatch.setattr(engine, "resident_mb", lambda: resident[0])
    monkeypatch.setattr(engine, "release_free_memory", lambda: released.append(resident[0]))
    keeper = engine.MemoryKeeper(slack=0.25)
    keeper.when_idle()
    assert keeper.idle_level == 1000.0 and released == [1000.0]
    resident[0] = 1250.0
    keeper.after_batch()
    assert keeper.releases == {"idle": 1, "after_batch": 0}
    resident[0] = 1251.0
    keeper.after_batch()
    assert keeper.releases == {"idle": 1, "after_batch": 1} and released == [1000.0, 1251.0]
