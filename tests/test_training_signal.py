"""What makes training and fitting pay: unsupervised fits on the database (fit_on), learned
whitening, near-duplicate positives, whole-database mining, validation mAP, augmentation."""

import json

import numpy as np
import pandas as pd
import pytest

from vprflow import stages
from vprflow.descriptors.rootsift_vlad import RootSIFTVLAD, load_vocabulary
from vprflow.errors import InputError
from vprflow.networks.network import Whitening
from vprflow.split import evaluation_roles
from vprflow.train.augment import Augmentation, colour_jitter, random_resized_crop
from vprflow.train.pairs import Relations, thumbnail, validation_metrics
from vprflow.train.triplet import mine_tuples
from vprflow.train.trunk import TrunkCache
from vprflow.train.unsupervised import fitting_images

CNN = {"descriptor": "cnn", "backbone": "mobilenet_v3_small", "weights": "none", "width": 64, "height": 48,
       "precision": "fp32"}


def frame(**columns):
    n = len(next(iter(columns.values())))
    base = {"path": [f"{i}.jpg" for i in range(n)], "role": [""] * n, "place": [pd.NA] * n, "x": [np.nan] * n,
            "y": [np.nan] * n, "lat": [np.nan] * n, "lon": [np.nan] * n}
    return pd.DataFrame({**base, **columns}).astype({"place": "string"})


# --------------------------------------------------------------------------- fit_on


def test_fit_on_takes_train_when_it_has_images_else_the_database_never_query_only_images():
    images = pd.DataFrame({"image_id": list("abcde"), "split": ["test"] * 5,
                           "is_query": [True, True, False, False, True],
                           "is_database": [False, False, True, True, True]})  # e: role both
    chosen, where = fitting_images(images, "auto", "the vocabulary")
    assert where == "database" and list(chosen["image_id"]) == ["c", "d", "e"]
    with pytest.raises(InputError, match=r"^fit_on: the train split is empty, but the vocabulary is fitted there"):
        fitting_images(images, "train", "the vocabulary")
    with_train = images.assign(split=["train", "test", "test", "test", "test"])
    assert list(fitting_images(with_train, "auto", "x")[0]["image_id"]) == ["a"]
    assert list(fitting_images(with_train, "database", "x")[0]["image_id"]) == ["c", "d", "e"]


@pytest.fixture(scope="module")
def no_train_split(tiny_world, tmp_path_factory):
    """The tiny demo's tables with every image in the test split (a folder of queries and database only)."""
    root, listing = tiny_world
    good = listing[~listing["truth_corrupt"]].reset_index(drop=True)
    good.insert(0, "image_id", [f"img{i:03d}" for i in range(len(good))])
    folder = tmp_path_factory.mktemp("no_train")
    good.to_parquet(folder / "manifest.parquet", index=False)
    pd.DataFrame({"image_id": good["image_id"], "keep": True, "reason": ""}).to_parquet(folder / "clean.parquet")
    split = pd.Series("test", index=good.index)
    roles = evaluation_roles(good["role"], split, ["test"], ["test", "index"])
    pd.DataFrame({"image_id": good["image_id"], "split": split, **roles}).to_parquet(folder / "split.parquet")
    return root, folder, good


def train_stage(tables, settings, out_dir):
    root, folder, _ = tables
    stages.train(manifest=folder / "manifest.parquet", clean=folder / "clean.parquet",
                 split=folder / "split.parquet", settings=settings, root=root, workers=0, threads=1,
                 **stages.train_outputs(out_dir))
    return json.loads((out_dir / "trained.json").read_text())


def test_rootsift_vocabulary_without_a_train_split_comes_from_the_database(no_train_split, tmp_path):
    settings = {"descriptor": "rootsift_vlad", "vocabulary": 8, "vocabulary_images": 500, "max_keypoints": 100}
    record = train_stage(no_train_split, settings, tmp_path / "vlad")
    _, _, images = no_train_split
    n_database = int((images["role"] == "database").sum())
    assert record["fit_on"] == "database" and record["n_images"] == n_database  # every database image, no query
    assert load_vocabulary(tmp_path / "vlad" / "model.pt").shape == (8, 128)
    with pytest.raises(InputError, match=r"^models\.vlad2\.fit_on: the train split is empty"):
        train_stage(no_train_split, {**settings, "fit_on": "train"}, tmp_path / "vlad2")


def test_netvlad_centroids_and_pca_without_a_train_split_come_from_the_database(no_train_split, tmp_path):
    settings = {**CNN, "pooling": "netvlad", "clusters": 4, "dim": 8, "fit_images": 1000}
    record = train_stage(no_train_split, settings, tmp_path / "netvlad")
    _, _, images = no_train_split
    database = images.loc[images["role"] == "database", "path"]
    assert record["fit_on"] == "database" and record["n_fit_images"] == len(database)
    assert record["whitening"] == {"method": "pca", "n_images": len(database)} and record["out_dim"] == 8
    cached = json.loads((tmp_path / "netvlad" / "work" / "trunk.json").read_text())["paths"]
    assert sorted(p.rsplit("/", 1)[-1] for p in cached) == sorted(p.rsplit("/", 1)[-1] for p in database)
    with pytest.raises(InputError, match=r"^split\.fractions\.train: the train split is empty.*matching pairs"):
        train_stage(no_train_split, {**settings, "whitening": "learned"}, tmp_path / "lw")


# --------------------------------------------------------------------------- learned whitening


def test_learned_whitening_keeps_what_separates_places_where_pca_keeps_the_largest_variance():
    # Places differ along axis 1 (spread 1); views of one place differ along axis 0 (spread 3).
    # PCA's first direction is axis 0 (variance 9 > 1): viewpoint noise. Lw whitens the
    # within-pair scatter (18 along axis 0, ~0 along axis 1) first, so axis 1 dominates.
    rng = np.random.default_rng(0)
    centres = rng.normal(0.0, 1.0, size=40)
    views = np.array([[3.0 * rng.normal(), c + 0.05 * rng.normal()] for c in centres for _ in range(3)])
    pairs = np.array([(3 * p + a, 3 * p + b) for p in range(40) for a, b in ((0, 1), (0, 2), (1, 2))])
    pca, learned = Whitening(2, 1), Whitening(2, 1)
    pca.fit(views)
    learned.fit_learned(views, pairs)
    pca_row, learned_row = pca.projection[0].numpy(), learned.projection[0].numpy()
    assert abs(pca_row[1]) < 0.05 * abs(pca_row[0])
    assert abs(learned_row[0]) < 0.05 * abs(learned_row[1])
    np.testing.assert_allclose(learned.mean.numpy(), views.mean(0), rtol=1e-5)
    # the one kept direction sends views of a place to (nearly) the same value
    projected = (views - views.mean(0)) @ learned_row
    within = np.std(projected.reshape(40, 3), axis=1).mean()
    assert within < 0.1 * projected.std()


def test_learned_whitening_from_the_train_split_s_pairs(tiny_world, tmp_path):
    root, listing = tiny_world
    good = listing[~listing["truth_corrupt"]].reset_index(drop=True)
    good.insert(0, "image_id", [f"img{i:03d}" for i in range(len(good))])
    good.to_parquet(tmp_path / "manifest.parquet", index=False)
    pd.DataFrame({"image_id": good["image_id"], "keep": True, "reason": ""}).to_parquet(tmp_path / "clean.parquet")
    split = pd.Series(np.where(np.arange(len(good)) % 2 == 0, "train", "test"), index=good.index)
    roles = evaluation_roles(good["role"], split, ["test"], ["test", "index"])
    pd.DataFrame({"image_id": good["image_id"], "split": split, **roles}).to_parquet(tmp_path / "split.parquet")
    record = train_stage((root, tmp_path, good), {**CNN, "pooling": "gem", "dim": 8, "whitening": "learned"},
                         tmp_path / "lw")
    assert record["whitening"]["method"] == "learned" and record["whitening"]["n_pairs"] > 0
    assert "fit_on" not in record  # Lw learns from labelled pairs of the train split only


# --------------------------------------------------------------------------- near-duplicates, mining, validation


def unit(*rows):
    x = np.array(rows, np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# Three views of place a (0, 1, 2), one of place b (3). Thumbnails: 1 is a near-duplicate of 0
# (correlation 0.95), 2 is not (0 with 0, 0.31 with 1).
THUMBS = unit([1, 0, 0], [0.95, 0.3122, 0], [0, 1, 0], [0, 0, 1])
DESCRIPTORS = unit([1, 0, 0], [0.9, 0.43589, 0], [0, 0.6, 0.8], [0.6, 0.8, 0])
# anchor 0 ranks 1 (0.9), 3 (0.6), 2 (0);  anchor 1 ranks 0 (0.9), 3 (0.889), 2 (0.26);  anchor 2 ranks 3, 1, 0


def test_near_duplicate_positives_are_not_positives_for_training():
    images = frame(place=["a", "a", "a", "b"])
    relations = Relations(images, 10, 25, THUMBS, near_duplicate_similarity=0.9)
    assert [list(p) for p in relations.near_duplicates] == [[1], [0], [], []]
    assert [list(p) for p in relations.distinct_positives] == [[2], [2], [0, 1], []]
    assert list(relations.anchors()) == [0, 1, 2]
    assert relations.positive_pairs().tolist() == [[0, 2], [1, 2]]
    # mining takes 2 for anchor 0 although the near-duplicate 1 is nearer in descriptor space
    tuples = mine_tuples(DESCRIPTORS, relations, np.random.default_rng(0), negatives=1)
    assert tuples.tolist() == [[0, 2, 3], [1, 2, 3], [2, 1, 3]]


def test_validation_map_leaves_near_duplicates_out_of_the_ranking():
    images = frame(place=["a", "a", "a", "b"])
    # anchor 0: [1, 3, 2] without 1 -> [3, 2]: positive 2 at p = 2 -> AP = (0 + 1/2) / 2 = 1/4
    # anchor 1: [0, 3, 2] without 0 -> [3, 2]: AP = 1/4
    # anchor 2: [3, 1, 0], positives 1, 0 at p = 2, 3 -> ((0 + 1/2)/2 + (1/2 + 2/3)/2) / 2 = 5/12
    result = validation_metrics(DESCRIPTORS, Relations(images, 10, 25, THUMBS, 0.9), ns=(1, 5))
    assert result == pytest.approx({"mAP": (1 / 4 + 1 / 4 + 5 / 12) / 3, "R@1": 0.0, "R@5": 1.0})
    # counting near-duplicates, the same descriptors look far better (saturated R@1):
    # anchor 0: [1, 3, 2], positives at 1, 3 -> (1 + (1/2 + 2/3)/2) / 2 = 19/24; anchor 1 alike; anchor 2 5/12
    naive = validation_metrics(DESCRIPTORS, Relations(images, 10, 25), ns=(1, 5))
    assert naive == pytest.approx({"mAP": (19 / 24 + 19 / 24 + 5 / 12) / 3, "R@1": 2 / 3, "R@5": 1.0})


def test_mining_searches_the_whole_train_database_for_the_hardest_negatives():
    images = frame(place=["a", "a", "b", "c", "d", "e", "f"])
    descriptors = unit([1, 0, 0], [0.5, 0.5, 0.5], [0, 1, 0], [0.1, 0, 1], [0.3, 1, 0], [0.9, 0.3, 0], [0, 0, 1])
    relations = Relations(images, 10, 25)
    # anchor 0: negatives by similarity 5 (0.95), 4 (0.29), 3 (0.10), then 2 and 6 (0)
    tuples = mine_tuples(descriptors, relations, np.random.default_rng(0), negatives=3)
    assert tuples[0].tolist() == [0, 1, 5, 4, 3]
    # a random pool of 2 of the 7 candidates finds the hardest only by luck
    found = []
    for seed in range(20):
        pooled = mine_tuples(descriptors, relations, np.random.default_rng(seed), 1, negative_pool=2)
        found += list(pooled[pooled[:, 0] == 0, 2])
    assert set(found) - {5}


def test_thumbnail_is_the_zero_mean_unit_32x24_image():
    rgb = np.random.default_rng(0).integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    vector = thumbnail(rgb)
    assert vector.shape == (32 * 24 * 3,) and abs(vector.mean()) < 1e-6 and np.linalg.norm(vector) == pytest.approx(1)
    assert thumbnail(np.clip(rgb.astype(int) + 20, 0, 255).astype(np.uint8)) @ vector > 0.95  # brightness: still a match


# --------------------------------------------------------------------------- augmentation and the trunk cache


def test_colour_jitter_scales_a_grey_image_by_the_brightness_factor_only():
    # On a constant grey image contrast (around the mean) and saturation (around the grey) change nothing.
    grey = np.full((6, 8, 3), 100, np.uint8)
    out = colour_jitter(grey, 0.3, np.random.default_rng(5))
    brightness = np.random.default_rng(5).uniform(0.7, 1.3, size=3)[0]
    assert (out == np.rint(100 * brightness)).all()
    assert (colour_jitter(grey + np.arange(8, dtype=np.uint8)[None, :, None], 0.0, np.random.default_rng(1))
            == grey + np.arange(8, dtype=np.uint8)[None, :, None]).all()  # jitter 0: unchanged


def test_random_resized_crop_keeps_the_size_and_a_full_side_at_full_area():
    height, width = 30, 40
    ramps = np.zeros((height, width, 3), np.uint8)
    ramps[..., 0] = np.linspace(0, 255, width)[None, :]
    ramps[..., 1] = np.linspace(0, 255, height)[:, None]
    for seed in range(10):
        out = random_resized_crop(ramps, 1.0, np.random.default_rng(seed))
        assert out.shape == ramps.shape and out.dtype == np.uint8
        full_width = out[..., 0].min() <= 1 and out[..., 0].max() >= 254
        full_height = out[..., 1].min() <= 1 and out[..., 1].max() >= 254
        assert full_width or full_height  # area 1: the crop spans one whole side
    small = random_resized_crop(ramps, 0.3, np.random.default_rng(3))
    assert np.ptp(small[..., 0].astype(int)) < 255 or np.ptp(small[..., 1].astype(int)) < 255


def test_views_are_reproducible_and_differ():
    rgb = np.random.default_rng(0).integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
    augmentation = Augmentation(views=2, min_area=0.6, jitter=0.3, seed=7)
    assert (augmentation.view(rgb, 4, 1) == augmentation.view(rgb, 4, 1)).all()
    assert not (augmentation.view(rgb, 4, 1) == augmentation.view(rgb, 4, 2)).all()


def test_random_views_map_training_images_to_their_augmented_rows():
    cache = TrunkCache(np.zeros((5 + 2 * 3, 1)), n_images=5, n_augmented=3, views=2)
    rng = np.random.default_rng(0)
    drawn = np.stack([cache.random_views(np.array([1, 4]), rng) for _ in range(200)])
    assert set(drawn[:, 0]) == {1, 5 + 0 * 3 + 1, 5 + 1 * 3 + 1}  # plain, view 1, view 2 of image 1
    assert set(drawn[:, 1]) == {4}  # image 4 is not a training image: no views
    assert (TrunkCache(np.zeros((5, 1))).random_views(np.array([1, 4]), rng) == [1, 4]).all()


def test_the_trunk_cache_decodes_between_forward_passes_on_the_cpu(tmp_path, monkeypatch):
    """On the CPU the frozen layers' cache is decoded by this process's threads between forward
    passes, as extraction is (a loader process beside them stalls their OpenMP team), and it
    holds exactly what loader processes gave: the same pixels."""
    import cv2
    import torch

    from vprflow.train import trunk

    rng = np.random.default_rng(2)
    paths = []
    for i in range(5):
        paths.append(tmp_path / f"{i}.png")
        cv2.imwrite(str(paths[-1]), rng.integers(0, 256, size=(30 + i, 40, 3), dtype=np.uint8))
    torch.manual_seed(0)
    frozen = torch.nn.Conv2d(3, 4, 3, stride=4)
    asked, iter_batches = [], trunk.iter_batches

    def spying(*args, **kwargs):
        asked.append(kwargs.get("threads", 0))
        return iter_batches(*args, **kwargs)

    monkeypatch.setattr(trunk, "iter_batches", spying)
    build = lambda folder: trunk.build_trunk_cache(  # noqa: E731
        frozen, paths, (32, 24), folder, {"test": 1}, torch.device("cpu"), False, 2, 1).array
    (tmp_path / "threads").mkdir()
    (tmp_path / "loader").mkdir()
    between_batches = build(tmp_path / "threads")
    assert asked == [torch.get_num_threads()]
    monkeypatch.setattr(trunk, "cpu_decoding_threads", lambda device: 0)  # a loader process, as before
    np.testing.assert_array_equal(build(tmp_path / "loader"), between_batches)
    assert asked[-1] == 0
