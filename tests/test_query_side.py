"""Query-side multi-scale and flip averaging of `cnn` descriptors (the extract stage's roles)."""

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import torchvision

from vprflow import stages
from vprflow.descriptors import describes_queries_apart, load, settings_of
from vprflow.errors import InputError
from vprflow.images import read_rgb

GEM = {"descriptor": "cnn", "backbone": "resnet18", "weights": "none", "pooling": "gem", "width": 64,
       "height": 48, "precision": "fp32"}


def test_only_query_side_settings_make_extraction_read_the_roles():
    assert not describes_queries_apart(GEM)
    assert not describes_queries_apart({**GEM, "scales": [1, 0.5], "query_scales": [1, 0.5]})
    assert describes_queries_apart({**GEM, "query_flip": True})
    assert describes_queries_apart({**GEM, "query_scales": [1, 0.707]})
    assert not describes_queries_apart({"descriptor": "tiny_image"})
    with pytest.raises(InputError, match=r"^models\.m\.query_scales: must be a non-empty list"):
        settings_of("m", {**GEM, "query_scales": []})


def test_queries_average_their_mirror_image_and_database_images_do_not(tiny_world, tmp_path):
    root, listing = tiny_world
    images = listing[~listing["truth_corrupt"] & ~listing["path"].str.startswith("extra")].head(6).reset_index(drop=True)
    images.insert(0, "image_id", [f"img{i}" for i in range(len(images))])
    images.insert(1, "shard", 0)
    images.to_parquet(tmp_path / "manifest.parquet", index=False)
    pd.DataFrame({"image_id": images["image_id"], "keep": True, "reason": ""}).to_parquet(tmp_path / "clean.parquet")
    is_query = np.arange(len(images)) < 2
    pd.DataFrame({"image_id": images["image_id"], "split": "test", "is_query": is_query,
                  "is_database": ~is_query}).to_parquet(tmp_path / "split.parquet")
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet18.pth")  # one network for both sides
    settings = {**GEM, "weights": str(tmp_path / "resnet18.pth"), "query_flip": True}
    stages.extract(manifest=tmp_path / "manifest.parquet", clean=tmp_path / "clean.parquet", trained=[],
                   settings=settings, shard=0, root=root, batch_size=4, workers=0, features=tmp_path / "f.parquet",
                   split=tmp_path / "split.parquet")
    table = pq.read_table(tmp_path / "f.parquet").to_pandas().set_index("image_id")
    extracted = np.stack(table.loc[images["image_id"], "vector"].to_numpy())
    assert not list(tmp_path.glob("f.parquet.part*"))  # the parts are merged into the shard file

    # Independently: the plain descriptor of each image and of its mirror image.
    # A query is normalise(plain + mirrored), a database image plain.
    plain = load({**settings, "query_flip": False})
    pixels = np.stack([plain.preprocess(read_rgb(root / p, at_least=plain.decode_size())) for p in images["path"]])
    direct = plain.encode(pixels)
    mirrored = plain.encode(np.ascontiguousarray(pixels[:, :, ::-1]))
    averaged = direct + mirrored
    averaged /= np.linalg.norm(averaged, axis=1, keepdims=True)
    np.testing.assert_allclose(extracted[:2], averaged[:2], atol=1e-5)
    np.testing.assert_allclose(extracted[2:], direct[2:], atol=1e-5)
    assert not np.allclose(extracted[:2], direct[:2], atol=1e-3)  # the flip did change the queries


def test_an_empty_shard_still_gets_a_valid_empty_file(tmp_path):
    from vprflow.extract import extract_groups

    tiny = load({"descriptor": "tiny_image"})
    assert extract_groups([(tiny, []), (tiny.for_queries(), [])], [], [], tmp_path / "empty.parquet") == 0
    assert pq.read_table(tmp_path / "empty.parquet").num_rows == 0
