"""DELF: where its keypoints are, what its pyramid keeps, its two-step training (curves,
checkpoints, resume after SIGKILL) and its extraction into a local-feature shard."""

import json
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from conftest import textured_image
from vprflow import stages
from vprflow.descriptors import is_local, is_trainable, load, settings_of
from vprflow.errors import InputError
from vprflow.local.matching import match_pair
from vprflow.local.store import LocalFeatureStore
from vprflow.networks.delf import build_delf, load_delf
from vprflow.networks.network import load_checkpoint

TINY_DELF = {"descriptor": "delf", "backbone": "resnet18", "weights": "none", "width": 64, "height": 48,
             "scales": [1.0, 2.0], "max_keypoints": 60, "dim": 8, "fit_images": 10, "finetune_epochs": 1,
             "attention_epochs": 2, "precision": "fp32", "train_batch_size": 8, "seed": 1}


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v2"])
def test_receptive_field_centres_are_stride_times_the_location(backbone):
    """Independent check by autograd: the input pixels that reach a feature location form its
    receptive field; the box's centre is where DELF says the keypoint is."""
    torch.manual_seed(0)
    network = build_delf({"backbone": backbone, "weights": "none", "dim": None}).eval()
    assert network.stride == 16 and network.channels == {"resnet18": 256, "mobilenet_v2": 96}[backbone]
    image = torch.randn(1, 3, 320, 320, requires_grad=True)
    row, col = 10, 9  # far enough from every border for the whole receptive field to fit
    network.backbone(image)[0, :, row, col].sum().backward()
    ys, xs = np.nonzero(image.grad[0].abs().sum(0).numpy() > 0)
    assert ((ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2) == (16 * row, 16 * col)
    assert ys.min() > 0 and xs.min() > 0 and ys.max() < 319 and xs.max() < 319


def test_pyramid_keeps_the_top_attention_over_scales_and_maps_positions_back():
    torch.manual_seed(0)
    network = build_delf({"backbone": "resnet18", "weights": "none", "dim": None}).eval()

    class ColumnAttention(torch.nn.Module):
        """Attention = the location's column index + the map's width / 100: larger maps
        (finer scales) win ties, so the expected keypoints can be listed by hand."""

        def forward(self, normalised):
            width = normalised.shape[3]
            columns = torch.arange(width, dtype=torch.float32).view(1, 1, 1, -1)
            return (columns + width / 100).expand(normalised.shape[0], 1, normalised.shape[2], width)

    network.attention = ColumnAttention()
    images = torch.randn(1, 3, 64, 96)
    found = network.pyramid(images, [1.0, 2.0], max_keypoints=5)[0]
    # scale 1: 4 x 6 map (columns 0..5, +0.06); scale 2: 8 x 12 map (columns 0..11, +0.12).
    # top 5: the 8 rows of column 11 at scale 2 tie at 11.12: the first 5 rows, in order
    np.testing.assert_allclose(found.attention, [11.12] * 5, rtol=1e-6)
    np.testing.assert_array_equal(found.scale, [2.0] * 5)
    # level pixel (16 * 11, 16 * r) at scale 2 -> input pixel (u + 0.5) / 2 - 0.5
    expected = np.array([[(16 * 11 + 0.5) / 2 - 0.5, (16 * r + 0.5) / 2 - 0.5] for r in range(5)])
    np.testing.assert_allclose(found.xy, expected)
    np.testing.assert_allclose(np.linalg.norm(found.features, axis=1), 1.0, rtol=1e-5)
    above = network.pyramid(images, [1.0, 2.0], max_keypoints=100, min_attention=10.0)[0]
    assert len(above.xy) == 8 + 8  # columns 10 and 11 of scale 2 (10.12, 11.12); scale 1 tops out at 5.06


def test_delf_settings_are_checked_and_a_checkpoint_needs_no_training():
    assert is_local({"descriptor": "delf"}) and is_trainable({"descriptor": "delf"})
    assert not is_trainable({"descriptor": "delf", "checkpoint": "/somewhere/model.pt"})
    with pytest.raises(InputError, match=r"models\.d\.backbone: 'mobilenet_v3_small' has no stride-16 block"):
        settings_of("d", {"descriptor": "delf", "backbone": "mobilenet_v3_small"})
    with pytest.raises(InputError, match=r"models\.d\.scales: must be a non-empty list"):
        settings_of("d", {"descriptor": "delf", "scales": []})
    with pytest.raises(InputError, match="is not a file"):
        load({"descriptor": "delf", "checkpoint": "/nonexistent/model.pt"})


# --------------------------------------------------------------------------- training


def train(tiny_tables, settings, out_dir):
    root, folder, _ = tiny_tables
    stages.train(manifest=folder / "manifest.parquet", clean=folder / "clean.parquet", split=folder / "split.parquet",
                 settings=settings, root=root, workers=0, threads=1, **stages.train_outputs(out_dir))


@pytest.fixture(scope="module")
def trained(tiny_tables, tmp_path_factory):
    out = tmp_path_factory.mktemp("delf_model")
    train(tiny_tables, TINY_DELF, out)
    return out


def test_training_runs_both_steps_and_writes_their_curves(trained):
    record = json.loads((trained / "trained.json").read_text())
    assert record["descriptor"] == "delf" and record["out_dim"] == 8
    assert record["finetune"]["epochs_run"] == 1 and record["attention"]["epochs_run"] == 2
    curves = pd.read_csv(trained / "curves.csv")
    assert list(zip(curves["step"], curves["epoch"])) == [("finetune", 0), ("finetune", 1), ("attention", 0),
                                                          ("attention", 1), ("attention", 2)]
    assert curves.loc[curves["epoch"] > 0, "train_loss"].notna().all()
    assert (trained / "curves.png").stat().st_size > 5000
    for step in ("finetune", "attention"):
        assert (trained / "work" / step / "work" / "last.pt").is_file()
    # the attention step caches unit-length features (float16 whatever the activations' scale)
    cached = np.load(trained / "work" / "attention" / "trunk.npy").astype(np.float32)
    np.testing.assert_allclose(np.linalg.norm(cached, axis=1), 1.0, atol=2e-3)
    # what extraction loads: the attention trained in step 2, the whitening fitted last
    network = load_delf(trained / "model.pt")
    last = load_checkpoint(trained / "work" / "attention" / "work" / "last.pt")["best_network"]
    for key, value in network.attention.state_dict().items():
        torch.testing.assert_close(value, last[f"attention.{key}"])
    assert network.whitening.projection.abs().sum() > 0


def test_the_backbone_is_frozen_while_attention_trains(tiny_tables, tmp_path):
    """Step 2 changes the attention only: with no fine-tuning step, the backbone stays the
    seeded initialisation bit for bit."""
    train(tiny_tables, {**TINY_DELF, "finetune_epochs": 0, "attention_epochs": 1}, tmp_path)
    torch.manual_seed(TINY_DELF["seed"])
    fresh = build_delf({**TINY_DELF, "dim": 8})
    trained_network = load_delf(tmp_path / "model.pt")
    for key, value in fresh.backbone.state_dict().items():
        torch.testing.assert_close(trained_network.backbone.state_dict()[key], value)
    changed = [not torch.equal(trained_network.attention.state_dict()[k], v)
               for k, v in fresh.attention.state_dict().items()]
    assert any(changed)
    assert list(pd.read_csv(tmp_path / "curves.csv")["step"].unique()) == ["attention"]


RESUME_SCRIPT = """
import sys
from vprflow.logs import log_to
from vprflow import stages
folder, root, out = sys.argv[1:4]
with log_to(None):
    stages.train(manifest=f"{folder}/manifest.parquet", clean=f"{folder}/clean.parquet",
                 split=f"{folder}/split.parquet", settings=%r, root=root, workers=0, threads=1,
                 **stages.train_outputs(out))
""" % (TINY_DELF,)


def test_training_killed_in_the_attention_step_resumes_to_the_same_model(tiny_tables, trained, tmp_path):
    """Killed after the attention step's first epoch; the rerun reuses the fine-tuning step and
    both caches, resumes the attention, and ends where the uninterrupted run (``trained``) did."""
    root, folder, _ = tiny_tables
    command = [sys.executable, "-c", RESUME_SCRIPT, str(folder), str(root), str(tmp_path / "killed")]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / "killed" / "work" / "attention" / "work" / "last.pt"
    deadline = time.time() + 300
    while not checkpoint.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert checkpoint.exists(), "the attention step never wrote a checkpoint"
    assert not (tmp_path / "killed" / "trained.json").exists(), "training finished before it could be killed"
    assert load_checkpoint(checkpoint)["progress"]["epoch"] == 1
    rerun = subprocess.run(command, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resumed from" in rerun.stderr and "after epoch 1" in rerun.stderr and "reusing" in rerun.stderr
    a, b = pd.read_csv(trained / "curves.csv"), pd.read_csv(tmp_path / "killed" / "curves.csv")
    assert list(b["step"]) == list(a["step"])
    columns = ["train_loss", "val_R@1", "val_R@5", "val_R@10"]
    np.testing.assert_allclose(b[columns].to_numpy(), a[columns].to_numpy(), rtol=1e-5, atol=1e-6)
    final_a = load_checkpoint(trained / "model.pt")["network"]
    final_b = load_checkpoint(tmp_path / "killed" / "model.pt")["network"]
    for key in final_a:
        torch.testing.assert_close(final_a[key], final_b[key], rtol=1e-5, atol=1e-6)


def test_empty_train_split_and_unknown_label_are_named(tiny_tables, tmp_path):
    root, folder, _ = tiny_tables
    split = pd.read_parquet(folder / "split.parquet").assign(split="test")
    split.to_parquet(tmp_path / "split.parquet")
    with pytest.raises(InputError, match="train split is empty"):
        stages.train(manifest=folder / "manifest.parquet", clean=folder / "clean.parquet",
                     split=tmp_path / "split.parquet", settings=TINY_DELF, root=root, workers=0,
                     **stages.train_outputs(tmp_path / "m"))
    with pytest.raises(InputError, match="label: the manifest has no column 'landmark'"):
        train(tiny_tables, {**TINY_DELF, "label": "landmark"}, tmp_path / "n")


# --------------------------------------------------------------------------- extraction


def test_extraction_maps_keypoints_to_the_photo_and_a_shifted_copy_agrees(trained, tmp_path):
    """Two 448 x 352 crops of a photo, the second shifted by (64, 32) pixels, both shrunk by 2
    to max_side, at scales 1 and 2. Hand-derived keypoint positions in the photo's own pixels: level pixel 16 j ->
    scale 1: (16 j + 0.5) * 2 - 0.5 = 32 j + 0.5; scale 2: ((16 j + 0.5) / 2 - 0.5 + 0.5) * 2
    - 0.5 = 16 j. The shift is a whole number of cells at both levels, so away from the
    borders the crop's features are the photo's, at the shifted positions."""
    photo = textured_image(5, 384, 512)
    cv2.imwrite(str(tmp_path / "photo.png"), photo[:352, :448, ::-1])
    cv2.imwrite(str(tmp_path / "shifted.png"), photo[32:, 64:, ::-1])
    table = pd.DataFrame({"image_id": ["photo", "shifted"], "shard": 0, "path": ["photo.png", "shifted.png"]})
    table.to_parquet(tmp_path / "manifest.parquet")
    pd.DataFrame({"image_id": table["image_id"], "keep": True}).to_parquet(tmp_path / "clean.parquet")
    settings = {**TINY_DELF, "max_side": 224, "max_keypoints": 200}
    stages.extract_local(manifest=tmp_path / "manifest.parquet", clean=tmp_path / "clean.parquet",
                         trained=trained / "trained.json", settings=settings, shard=0, root=tmp_path, batch_size=2,
                         workers=0, features=tmp_path / "shard")
    store = LocalFeatureStore([tmp_path / "shard"])
    photo_features, shifted_features = store.get("photo"), store.get("shifted")
    assert photo_features.size == shifted_features.size == (448, 352)
    assert photo_features.xy[:, 0].max() > 300  # in the photo's pixels, not the 224-pixel network input
    assert store.dim == 8 and len(photo_features) == 200 and set(photo_features.scale) <= {1.0, 2.0}
    np.testing.assert_allclose(np.linalg.norm(photo_features.descriptors, axis=1), 1.0, atol=2e-3)
    for found in (photo_features, shifted_features):
        offset = np.where(found.scale == 1.0, 0.5, 0.0)[:, None]
        cells = (found.xy - offset) / np.where(found.scale == 1.0, 32, 16)[:, None]
        np.testing.assert_allclose(cells, np.round(cells), atol=1e-4)
    at = {(round(float(x), 3), round(float(y), 3), float(s)): k
          for k, ((x, y), s) in enumerate(zip(photo_features.xy, photo_features.scale))}
    pairs = [(k, at[key]) for k, ((x, y), s) in enumerate(zip(shifted_features.xy, shifted_features.scale))
             if (key := (round(float(x) + 64, 3), round(float(y) + 32, 3), float(s))) in at]
    assert len(pairs) >= 40
    distances = np.array([np.linalg.norm(shifted_features.descriptors[k] - photo_features.descriptors[j])
                          for k, j in pairs])
    assert np.mean(distances < 0.02) >= 0.3  # interior cells: the same features (border cells see the padding)
    match = match_pair(shifted_features, photo_features)
    shift = photo_features.xy[match.other_rows[match.inliers]] - shifted_features.xy[match.query_rows[match.inliers]]
    assert match.n_inliers >= 15 and np.mean(np.all(np.abs(shift - [64, 32]) < 1, axis=1)) >= 0.5
