"""Backbones, weights, poolings and whitening of the learned descriptors."""

import urllib.error

import faiss
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from vprflow.descriptors import is_trainable, load
from vprflow.errors import InputError
from vprflow.networks.backbones import BACKBONES, build_backbone, frozen_depth
from vprflow.networks.network import Whitening, build_network, save_checkpoint
from vprflow.networks.pooling import MAC, GeM, NetVLAD, SPoC


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_backbones_end_at_their_last_conv(name):
    torch.manual_seed(0)
    backbone = build_backbone(name, "none").eval()
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 64, 64))
    assert out.shape[:2] == (1, BACKBONES[name].channels)
    stride = 16 if name == "vgg16" else 32  # VGG ends at conv5_3, before its last max-pool
    assert out.shape[2:] == (64 // stride, 64 // stride)  # cut before global pooling and classifier
    last_with_weights = [m for m in backbone.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))][-1]
    assert isinstance(last_with_weights, torch.nn.Conv2d)


def test_frozen_depth_counts_blocks_with_parameters_from_the_end():
    backbone = build_backbone("resnet18", "none")  # conv1 bn1 relu maxpool layer1..layer4
    assert frozen_depth(backbone, 1) == 7
    assert frozen_depth(backbone, 2) == 6
    assert frozen_depth(backbone, 0) == len(backbone)
    assert frozen_depth(backbone, "all") == 0
    assert frozen_depth(backbone, 99) == 0


def test_weights_from_a_local_torchvision_state_dict(tmp_path):
    torch.manual_seed(1)
    classifier = torchvision.models.mobilenet_v3_small()
    torch.save(classifier.state_dict(), tmp_path / "mnv3.pth")
    backbone = build_backbone("mobilenet_v3_small", str(tmp_path / "mnv3.pth"))
    for ours, theirs in zip(backbone.state_dict().values(), classifier.features.state_dict().values()):
        assert torch.equal(ours, theirs)


def test_weights_from_a_pipeline_checkpoint(tmp_path):
    settings = {"backbone": "resnet18", "weights": "none", "pooling": "gem", "gem_p": 3.0, "clusters": 4, "dim": None}
    torch.manual_seed(2)
    network = build_network(settings)
    save_checkpoint(tmp_path / "model.pt", network, settings)
    torch.manual_seed(3)
    reloaded = build_backbone("resnet18", str(tmp_path / "model.pt"))
    assert torch.equal(reloaded[0].weight, network.backbone[0].weight)


def test_weights_that_do_not_fit_name_the_setting(tmp_path):
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), tmp_path / "other.pth")
    with pytest.raises(InputError, match=r"^weights: .*other\.pth does not fit"):
        build_backbone("resnet18", str(tmp_path / "other.pth"))
    with pytest.raises(InputError, match=r"^weights: .*missing\.pth is not a file"):
        build_backbone("resnet18", str(tmp_path / "missing.pth"))


def test_imagenet_offline_says_how_to_use_a_local_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(InputError) as error:
        build_backbone("resnet18", "imagenet")
    message = str(error.value)
    assert message.startswith("weights: imagenet: could not download")
    assert "resnet18-" in message and "network is unreachable" in message
    assert "weights: /path/to/resnet18-" in message  # how to point at a local file
    assert str(tmp_path / "empty_torch_home" / "hub" / "checkpoints") in message  # or where the cache is


def test_netvlad_shapes_and_normalisation():
    torch.manual_seed(0)
    layer = NetVLAD(channels=16, clusters=4)
    layer.initialise(
        np.random.default_rng(0).normal(size=(4, 16)).astype(np.float32),
        np.random.default_rng(1).normal(size=(50, 16)).astype(np.float32),
    )
    out = layer(torch.rand(3, 16, 5, 6))
    assert out.shape == (3, 64)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))
    per_cluster = out.view(3, 4, 16).norm(dim=2)  # intra-normalised, then L2 over K blocks
    torch.testing.assert_close(per_cluster, torch.full((3, 4), 0.5))


def test_netvlad_kmeans_init_finds_the_clusters_and_assigns_sharply():
    rng = np.random.default_rng(0)
    centres = F.normalize(torch.from_numpy(rng.normal(size=(3, 8)).astype(np.float32)), dim=1).numpy()
    samples = np.repeat(centres, 200, axis=0) + rng.normal(scale=0.05, size=(600, 8)).astype(np.float32)
    samples = (samples / np.linalg.norm(samples, axis=1, keepdims=True)).astype(np.float32)
    kmeans = faiss.Kmeans(8, 3, niter=25, nredo=5, seed=0)
    kmeans.train(samples)
    layer = NetVLAD(channels=8, clusters=3)
    alpha = layer.initialise(kmeans.centroids, samples)
    assert alpha > 0
    found = layer.centroids.detach().numpy()
    distance = np.linalg.norm(found[:, None] - centres[None], axis=2)
    assert distance.min(axis=1).max() < 0.05  # every centroid sits on one true centre
    assert sorted(distance.argmin(axis=1)) == [0, 1, 2]
    maps = torch.from_numpy(samples).T.reshape(1, 8, 600, 1)
    soft = F.softmax(layer.assignment(NetVLAD.local_descriptors(maps)), dim=1)[0, :, :, 0]  # (K, N)
    assert soft.max(dim=0).values.median() > 0.9  # the nearest centroid takes most of the weight


def test_gem_p_is_learnable_and_p1_is_average_pooling():
    x = torch.rand(2, 5, 4, 3) + 0.1
    gem = GeM(p=1.0)
    torch.testing.assert_close(gem(x), F.adaptive_avg_pool2d(x, 1).flatten(1))
    torch.testing.assert_close(gem(x), SPoC()(x))
    gem3 = GeM(p=3.0)
    assert gem3.p.requires_grad
    gem3(x).sum().backward()
    assert gem3.p.grad is not None and gem3.p.grad.abs() > 0
    assert (gem3(x) <= MAC()(x) + 1e-6).all() and (gem3(x) >= SPoC()(x) - 1e-6).all()


@pytest.mark.parametrize("n", [30, 400])  # fewer samples than dimensions (Gram path), and more
def test_whitening_decorrelates_its_training_data(n):
    rng = np.random.default_rng(0)
    data = (rng.normal(size=(n, 64)) @ rng.normal(size=(64, 64))).astype(np.float32)
    whitening = Whitening(64, 16)
    whitening.fit(data)
    projected = (torch.from_numpy(data) - whitening.mean) @ whitening.projection.T
    covariance = np.cov(projected.numpy().T)
    np.testing.assert_allclose(covariance, np.eye(16), atol=1e-3)
    assert torch.allclose(whitening(torch.from_numpy(data)).norm(dim=1), torch.ones(n))


def test_trainable_rule():
    assert not is_trainable({"descriptor": "cnn", "pooling": "gem", "train": "none"})
    assert is_trainable({"descriptor": "cnn", "pooling": "gem", "dim": 64})
    assert is_trainable({"descriptor": "cnn", "pooling": "netvlad"})
    assert is_trainable({"descriptor": "cnn", "train": "triplet"})
    assert is_trainable({"descriptor": "rootsift_vlad"})
    assert not is_trainable({"descriptor": "tiny_image"})


def test_bad_settings_name_their_key(tmp_path):
    with pytest.raises(InputError, match="^backbone: unknown 'resnet7'"):
        load({"descriptor": "cnn", "backbone": "resnet7"})
    with pytest.raises(InputError, match="^pooling: unknown"):
        load({"descriptor": "cnn", "pooling": "avg"})
    with pytest.raises(InputError, match="^scales: "):
        load({"descriptor": "cnn", "scales": 1.0})
    with pytest.raises(InputError, match="must be trained first"):
        load({"descriptor": "cnn", "pooling": "netvlad"}, tmp_path)


def test_untrained_gem_encodes_unit_vectors_in_fp32_and_bf16():
    descriptor = load(
        {
            "descriptor": "cnn",
            "backbone": "resnet18",
            "weights": "none",
            "width": 64,
            "height": 48,
            "precision": "fp32",
            "scales": [1.0, 0.75],
        }
    )
    images = np.random.default_rng(0).integers(0, 255, size=(3, 48, 64, 3), dtype=np.uint8)
    torch.manual_seed(0)
    vectors = descriptor.encode(images)
    assert vectors.shape == (3, 512) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    if descriptor.bf16 is False and load({"descriptor": "cnn", "precision": "bf16", "weights": "none"}).bf16:
        descriptor.bf16 = True  # same network, bf16 autocast: still unit norm (pooling runs in fp32)
        low = descriptor.encode(images)
        np.testing.assert_allclose(np.linalg.norm(low, axis=1), 1.0, rtol=1e-5)
        assert (low * vectors).sum(1).min() > 0.98


@pytest.mark.shared_data
def test_imagenet_mobilenet_v2_from_a_local_file_retrieves_real_photos():
    from conftest import SHARED_DATA, needs_shared

    from vprflow.datasets.folder import read_folder
    from vprflow.extract import encode_images

    corridor = needs_shared("corridor")
    weights = SHARED_DATA.parent / "weights" / "mobilenet_v2_imagenet.pth"
    if not weights.is_file():
        pytest.skip(f"{weights} is absent (development weights, not part of a clone)")
    listing = read_folder(corridor)
    descriptor = load({"descriptor": "cnn", "backbone": "mobilenet_v2", "weights": str(weights), "pooling": "gem"})
    vectors = encode_images(descriptor, [corridor / p for p in listing["path"]], batch_size=32, workers=0)
    query, database = (listing["role"] == "query").to_numpy(), (listing["role"] == "database").to_numpy()
    top1 = (vectors[query] @ vectors[database].T).argmax(1)
    x_query, x_database = listing["x"].to_numpy()[query], listing["x"].to_numpy()[database]
    recall_at_1 = np.mean(np.abs(x_database[top1] - x_query) <= 2)
    assert recall_at_1 > 0.5  # about 0.62; random weights give about 0.03
