"""Training: supervision, mining, the epoch loop, the train stage, and resume after SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from vprflow.descriptors import load
from vprflow.errors import InputError
from vprflow.extract import extract_features
from vprflow.networks.network import load_checkpoint
from vprflow.train.loop import fit
from vprflow.train.pairs import Relations, validation_metrics
from vprflow import stages
from vprflow.train.triplet import mine_tuples, triplet_loss

TINY = {
    "descriptor": "cnn",
    "backbone": "mobilenet_v3_small",
    "weights": "none",
    "width": 64,
    "height": 48,
    "precision": "fp32",
    "negatives": 3,
    "lr": 1e-4,
}


def _train(tiny_tables, settings, out_dir):
    root, folder, _ = tiny_tables
    stages.train(
        manifest=folder / "manifest.parquet",
        clean=folder / "clean.parquet",
        split=folder / "split.parquet",
        settings=settings,
        root=root,
        workers=0,
        threads=1,
        **stages.train_outputs(out_dir),
    )


def _frame(**columns):
    n = len(next(iter(columns.values())))
    base = {
        "path": [f"{i}.jpg" for i in range(n)],
        "role": [""] * n,
        "place": [pd.NA] * n,
        "x": [np.nan] * n,
        "y": [np.nan] * n,
        "lat": [np.nan] * n,
        "lon": [np.nan] * n,
    }
    return pd.DataFrame({**base, **columns}).astype({"place": "string"})


def test_relations_use_radii_places_and_roles():
    images = _frame(
        x=[0.0, 5.0, 15.0, 40.0, 2.0], y=[0.0] * 5, role=["query", "database", "database", "database", "query"]
    )
    relations = Relations(images, positive_radius_m=10, negative_radius_m=25)
    assert list(relations.anchors()) == [0, 4]  # queries with a database image within 10 m
    assert list(relations.positives[0]) == [1]  # query 4 at 2 m is not a candidate: another query
    assert list(relations.negatives_among(0, np.arange(5))) == [3]  # 15 m is in the gap, 40 m is a negative
    places = _frame(place=["a", "a", "b", pd.NA])
    relations = Relations(places, 10, 25)
    assert list(relations.positives[0]) == [1]
    assert list(relations.negatives_among(0, np.arange(4))) == [2]  # no place, no position: not comparable


def test_mining_takes_the_nearest_positive_and_the_hardest_negatives():
    images = _frame(x=[0.0, 3.0, 6.0, 100.0, 200.0, 300.0], y=[0.0] * 6)
    relations = Relations(images, 10, 25)
    descriptors = np.eye(6, dtype=np.float32)
    descriptors[0] = [0, 0, 0.6, 0, 0.8, 0]  # closest positive: 2; hardest negative: 4
    descriptors[1] = [0, 1, 0, 0, 0, 0]
    tuples = mine_tuples(descriptors, relations, np.random.default_rng(0), negatives=2, negative_pool=10)
    first = tuples[tuples[:, 0] == 0][0]
    assert first[1] == 2 and first[2] == 4 and set(first[2:]) <= {3, 4, 5}
    assert validation_metrics(descriptors, relations, ns=(1, 5, 10))["R@1"] < 1.0  # 0's top hit (4) is a negative


def test_triplet_loss_is_the_summed_hinge_on_squared_distances():
    query = torch.tensor([[1.0, 0.0]])
    positive = torch.tensor([[0.0, 1.0]])  # squared distance 2
    negatives = torch.tensor([[[-1.0, 0.0], [1.0, 0.0]]])  # 4 (no loss) and 0 (loss 0.1 + 2)
    assert float(triplet_loss(query, positive, negatives, margin=0.1)) == pytest.approx(2.1)


def test_fit_steps_the_lr_stops_early_and_keeps_the_best_epoch(tmp_path):
    network = torch.nn.Linear(2, 2)
    optimiser = torch.optim.SGD(network.parameters(), lr=1.0)
    scores = iter([0.2, 0.4, 0.5, 0.5, 0.4, 0.3, 0.0])  # best after epochs 2 and 3 (tie), worse afterwards

    def run_epoch(epoch, rng):
        with torch.no_grad():
            network.weight.add_(1.0)
        optimiser.step()  # no gradients: changes nothing, keeps the scheduler's order check quiet
        return float(epoch)

    def validate():
        value = next(scores)
        return {"mAP": value, "R@1": 1.0}  # recall saturated: mAP decides

    settings = {"epochs": 6, "patience": 2, "checkpoint_every": 4, "lr_step": 1, "lr_gamma": 0.5, "seed": 0}
    start = network.weight.detach().clone()
    heads = torch.nn.ModuleDict({"name": torch.nn.Linear(2, 3)})
    with torch.no_grad():
        heads["name"].weight.zero_()

    def run_epoch_and_heads(epoch, rng):
        with torch.no_grad():
            heads["name"].weight.add_(1.0)
        return run_epoch(epoch, rng)

    progress = fit(network, heads, run_epoch_and_heads, validate, optimiser, settings, tmp_path, {"x": 1})
    assert (progress.best_epoch, progress.epoch) == (3, 5)  # stopped after 2 epochs without gain
    torch.testing.assert_close(network.weight, start + 3.0)  # the best epoch's weights
    torch.testing.assert_close(heads["name"].weight, torch.full((3, 2), 3.0))  # and heads
    curves = pd.read_csv(tmp_path / "curves.csv")
    assert list(curves["epoch"]) == [0, 1, 2, 3, 4, 5]
    assert list(curves["lr"][1:]) == [1.0, 0.5, 0.25, 0.125, 0.0625]
    assert load_checkpoint(tmp_path / "work" / "last.pt")["progress"]["epoch"] == 5  # written at the early stop
    assert load_checkpoint(tmp_path / "work" / "best.pt")["epoch"] == 3
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_triplet_netvlad_training_writes_a_model_that_extracts(tiny_tables, tmp_path):
    settings = {**TINY, "pooling": "netvlad", "clusters": 8, "dim": 16, "train": "triplet", "epochs": 2}
    out = tmp_path / "netvlad"
    _train(tiny_tables, settings, out)
    record = json.loads((out / "trained.json").read_text())
    assert record["train"] == "triplet" and record["epochs_run"] == 2 and record["out_dim"] == 16
    assert 0 <= record["best_epoch"] <= 2 and 0 <= record["val_mAP"] <= 1 and record["netvlad_alpha"] > 0
    assert {"model.pt", "curves.csv", "curves.png", "precision.tsv"} <= {p.name for p in out.iterdir()}
    assert {"last.pt", "trunk.npy"} <= {p.name for p in (out / "work").iterdir()}
    assert list(pd.read_csv(out / "curves.csv")["epoch"]) == [0, 1, 2]
    root, _, images = tiny_tables
    descriptor = load(settings, out)
    paths = [root / p for p in images["path"][:9]]
    assert (
        extract_features(
            descriptor, paths, list(images["image_id"][:9]), tmp_path / "f.parquet", batch_size=4, workers=0
        )
        == 16
    )
    vectors = np.stack(pq.read_table(tmp_path / "f.parquet").column("vector").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


def test_netvlad_without_fine_tuning_is_initialised_by_kmeans(tiny_tables, tmp_path):
    _train(tiny_tables, {**TINY, "pooling": "netvlad", "clusters": 4}, tmp_path / "init")
    state = load_checkpoint(tmp_path / "init" / "model.pt")["network"]
    centroids, weight = state["pooling.centroids"], state["pooling.assignment.weight"][:, :, 0, 0]
    assert centroids.abs().sum() > 0
    alpha = json.loads((tmp_path / "init" / "trained.json").read_text())["netvlad_alpha"]
    torch.testing.assert_close(weight, 2 * alpha * centroids)


def test_two_head_classification_writes_precision_at_5(tiny_tables, tmp_path):
    out = tmp_path / "landmarks"
    _train(tiny_tables, {**TINY, "pooling": "gem", "train": "name_category", "epochs": 1, "lr": 1e-3}, out)
    table = pd.read_csv(out / "precision.tsv", sep="\t")
    assert list(table.columns) == ["model", "head", "P@5", "n"]
    assert list(table["head"]) == ["name", "category"] and set(table["model"]) == {"landmarks"}
    n_test = (pd.read_parquet(tiny_tables[1] / "split.parquet")["split"] == "test").sum()
    assert (table["n"] == n_test).all() and table["P@5"].between(0, 1).all()


def test_model_pt_keeps_the_heads_and_they_name_photos(tiny_tables, tmp_path):
    from vprflow.images import read_rgb
    from vprflow.networks.network import to_input

    root, folder, images = tiny_tables
    settings = {**TINY, "pooling": "gem", "train": "name_category", "epochs": 1, "lr": 1e-3}
    _train(tiny_tables, settings, tmp_path / "heads")
    heads = load_checkpoint(tmp_path / "heads" / "model.pt")["heads"]
    split = pd.read_parquet(folder / "split.parquet")
    train = images[images["image_id"].isin(split.loc[split["split"] == "train", "image_id"])]
    assert heads["name"]["classes"] == sorted(train["name"].unique())  # the classes the codes index
    assert heads["category"]["classes"] == sorted(train["category"].unique())

    descriptor = load(settings, tmp_path / "heads")
    batch = np.stack([descriptor.preprocess(read_rgb(root / p)) for p in images["path"][:3]])
    vectors, labels = descriptor.encode_with_heads(batch, top=5)
    np.testing.assert_allclose(vectors, descriptor.encode(batch), atol=1e-6)  # the descriptor is unchanged
    network = descriptor.network()
    with torch.no_grad():
        pooled = network.pool(network.backbone(to_input(batch, torch.device("cpu")))).numpy().astype(np.float64)
    for head in ("name", "category"):  # softmax(scale * cosine) recomputed in numpy from the saved weights
        weight = heads[head]["weight"].numpy().astype(np.float64)
        cosine = (pooled / np.linalg.norm(pooled, axis=1, keepdims=True)) @ (
            weight / np.linalg.norm(weight, axis=1, keepdims=True)).T
        logits = heads[head]["scale"] * cosine
        probabilities = np.exp(logits - logits.max(1, keepdims=True))
        probabilities /= probabilities.sum(1, keepdims=True)
        for row, found in zip(probabilities, labels[head]):
            best = np.argsort(-row, kind="stable")[:5]
            assert [name for name, _ in found] == [heads[head]["classes"][i] for i in best]
            np.testing.assert_allclose([p for _, p in found], row[best], rtol=1e-4)


def test_bad_training_settings_name_the_model_key(tiny_tables, tmp_path):
    with pytest.raises(InputError, match=r"^models\.whitened\.dim: 4096 is more than"):
        _train(tiny_tables, {**TINY, "pooling": "gem", "dim": 4096}, tmp_path / "whitened")


RESUME_SETTINGS = {**TINY, "pooling": "netvlad", "clusters": 4, "train": "triplet", "epochs": 2, "seed": 3}

RESUME_SCRIPT = """
import sys
from vprflow.logs import log_to
from vprflow import stages
folder, root, out = sys.argv[1:4]
with log_to(None):
    stages.train(manifest=f"{folder}/manifest.parquet", clean=f"{folder}/clean.parquet",
                 split=f"{folder}/split.parquet", settings=%r, root=root, workers=0, threads=1,
                 **stages.train_outputs(out))
""" % (RESUME_SETTINGS,)


def test_training_killed_mid_epoch_resumes_to_the_same_result(tiny_tables, tmp_path):
    root, folder, _ = tiny_tables
    _train(tiny_tables, RESUME_SETTINGS, tmp_path / "straight")
    command = [sys.executable, "-c", RESUME_SCRIPT, str(folder), str(root), str(tmp_path / "killed")]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / "killed" / "work" / "last.pt"
    deadline = time.time() + 300
    while not checkpoint.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert checkpoint.exists(), "the first checkpoint never appeared"
    assert not (tmp_path / "killed" / "trained.json").exists(), "training finished before it could be killed"
    assert load_checkpoint(checkpoint)["progress"]["epoch"] == 1
    rerun = subprocess.run(command, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resumed from" in rerun.stderr and "after epoch 1" in rerun.stderr
    straight = pd.read_csv(tmp_path / "straight" / "curves.csv")
    resumed = pd.read_csv(tmp_path / "killed" / "curves.csv")
    assert list(resumed["epoch"]) == [0, 1, 2]
    columns = ["train_loss", "val_mAP", "val_R@1", "val_R@5", "val_R@10"]
    np.testing.assert_allclose(resumed[columns].to_numpy(), straight[columns].to_numpy(), rtol=1e-5, atol=1e-6)
    a = json.loads((tmp_path / "straight" / "trained.json").read_text())
    b = json.loads((tmp_path / "killed" / "trained.json").read_text())
    assert (a["best_epoch"], a["validation"]) == (b["best_epoch"], b["validation"])
    final_a = load_checkpoint(tmp_path / "straight" / "model.pt")["network"]
    final_b = load_checkpoint(tmp_path / "killed" / "model.pt")["network"]
    for key in final_a:
        torch.testing.assert_close(final_a[key], final_b[key], rtol=1e-5, atol=1e-6)


def test_pca_whitening_on_too_few_images_is_warned_about():
    from vprflow.train.cnn import few_images_for_pca

    # 250 images for 48 dims: about 5 per dimension, under 10 -> a warning that names both and a
    # dim that would fit (250 // 10 = 25); 480 images: exactly 10 per dimension -> none
    message = few_images_for_pca(250, 48)
    assert "48 dims" in message and "250 images" in message and "e.g. 25" in message
    assert few_images_for_pca(480, 48) is None
    assert few_images_for_pca(479, 48) is not None
