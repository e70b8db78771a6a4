"""Photos a user's folder holds that the decoder must take by name: too large, 16-bit, rotated by EXIF."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vprflow.datasets import normalise_listing
from vprflow.images import DecodeError, read_rgb
from vprflow.manifest import build_manifest_shard


def listing_of(paths):
    return normalise_listing(pd.DataFrame({"path": paths, "role": "database", "place": "p"}))


def gradient(width, height):
    """An RGB ramp whose every pixel is distinct enough to tell orientations apart."""
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    return np.dstack([x, y, 255 - x]).astype(np.uint8)


def test_a_photo_past_the_decompression_bomb_limit_is_rejected_by_name(tmp_path, monkeypatch):
    # Pillow refuses images above 2 x MAX_IMAGE_PIXELS at open(); lowering the limit makes a small
    # file stand in for a 180 MP photo. Before: DecompressionBombError escaped and stopped the job.
    Image.fromarray(gradient(60, 40)).save(tmp_path / "huge.jpg")
    Image.fromarray(gradient(20, 10)).save(tmp_path / "small.jpg")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # refused above 2000 pixels: 60 x 40 = 2400
    with pytest.raises(DecodeError, match=r"too large.*2400 pixels.*shrink") as error:
        read_rgb(tmp_path / "huge.jpg")
    assert "2000" in str(error.value)  # the limit it is above
    manifest, rejects = build_manifest_shard(tmp_path, listing_of(["huge.jpg", "small.jpg"]), range(0, 2), workers=0)
    assert list(manifest["path"]) == ["small.jpg"]
    assert list(rejects["path"]) == ["huge.jpg"] and "too large" in rejects.loc[0, "reason"]


def test_manifest_checks_a_large_jpeg_at_reduced_scale(tmp_path, monkeypatch):
    """The manifest needs the size and a full pass over the data, not the pixels: a JPEG is
    decoded at 1/8 scale (64 times fewer pixels in memory), and a cut one is still caught."""
    Image.fromarray(gradient(800, 600)).save(tmp_path / "big.jpg", quality=95)
    data = (tmp_path / "big.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) * 2 // 3])
    decoded_sizes = []
    original_load = Image.Image.load

    def load(image):
        result = original_load(image)
        decoded_sizes.append(image.size)
        return result

    monkeypatch.setattr(Image.Image, "load", load)
    manifest, rejects = build_manifest_shard(tmp_path, listing_of(["big.jpg", "cut.jpg"]), range(0, 2), workers=0)
    assert (manifest.loc[0, "width"], manifest.loc[0, "height"]) == (800, 600)  # the file's own size
    assert (100, 75) in decoded_sizes and (800, 600) not in decoded_sizes
    assert list(rejects["path"]) == ["cut.jpg"] and "truncated" in rejects.loc[0, "reason"]


def test_sixteen_bit_grayscale_png_keeps_its_tones(tmp_path):
    # 16-bit values v map to round(v / 257) in 8 bits (65535 -> 255). Before: Pillow's "I;16" mode
    # converted to RGB by clipping at 255, so everything above 255 of 65535 turned white.
    import cv2

    values = np.array([[0, 257, 32896], [51400, 65535, 1000]], dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "g16.png"), values)
    rgb = read_rgb(tmp_path / "g16.png")
    expected = np.array([[0, 1, 128], [200, 255, 4]], dtype=np.uint8)  # 1000 / 257 = 3.89 -> 4
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], expected)


def test_sixteen_bit_colour_png_keeps_its_colours(tmp_path):
    import cv2

    red = np.full((4, 5), 51400, np.uint16)  # 200 in 8 bits
    green = np.full((4, 5), 25700, np.uint16)  # 100
    blue = np.full((4, 5), 2570, np.uint16)  # 10
    cv2.imwrite(str(tmp_path / "c16.png"), np.dstack([blue, green, red]))  # OpenCV writes BGR
    rgb = read_rgb(tmp_path / "c16.png")
    assert rgb[0, 0].tolist() == [200, 100, 10]


@pytest.mark.parametrize("orientation, turn", [(3, 2), (6, -1), (8, 1)])
def test_exif_orientation_is_applied(tmp_path, orientation, turn):
    """EXIF orientation 3 is a half turn, 6 a quarter turn clockwise, 8 counter-clockwise
    (as a phone stores a portrait photo); np.rot90(k) turns counter-clockwise k times."""
    pixels = gradient(40, 30)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(tmp_path / "phone.png", exif=exif)  # lossless, so pixels compare exactly
    rgb = read_rgb(tmp_path / "phone.png")
    np.testing.assert_array_equal(rgb, np.rot90(pixels, turn))
    manifest, _ = build_manifest_shard(tmp_path, listing_of(["phone.png"]), range(0, 1), workers=0)
    assert (manifest.loc[0, "width"], manifest.loc[0, "height"]) == (rgb.shape[1], rgb.shape[0])


def test_exif_orientation_of_a_jpeg_swaps_the_manifest_size(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(gradient(80, 40)).save(tmp_path / "portrait.jpg", exif=exif)
    manifest, _ = build_manifest_shard(tmp_path, listing_of(["portrait.jpg"]), range(0, 1), workers=0)
    assert (manifest.loc[0, "width"], manifest.loc[0, "height"]) == (40, 80)
    assert read_rgb(tmp_path / "portrait.jpg").shape == (80, 40, 3)


def test_rejected_images_are_shown_on_the_console_too(tmp_path, capfd):
    """The manifest job's log goes to a file; the rejects are also said where the user looks."""
    from vprflow import stages
    from vprflow.logs import log_to

    shard = pd.DataFrame({"image_id": ["a"], "row": [0], "path": ["huge.jpg"], "reason": ["too large to decode"]})
    shard.to_parquet(tmp_path / "rejects_0.parquet")
    listing_of(["ok.jpg"]).assign(image_id="b").to_parquet(tmp_path / "shard_0.parquet")
    with log_to(tmp_path / "manifest.log"):
        stages.manifest(manifest_shards=[tmp_path / "shard_0.parquet"], reject_shards=[tmp_path / "rejects_0.parquet"],
                        manifest=tmp_path / "manifest.parquet", rejects=tmp_path / "rejects.tsv")
    console = capfd.readouterr().err
    assert "1 image(s) rejected" in console and "huge.jpg: too large to decode" in console
    assert "huge.jpg: too large to decode" in (tmp_path / "manifest.log").read_text()
