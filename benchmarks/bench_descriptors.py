"""Recall of learned and hand-crafted descriptors on the shared real sets, test split.

For each set (corridor: positives within 2 frames; ukbench56: same object, the query
itself masked), the pipeline's own split (grouped, cells of 4 x radius) and ground
truth; trainable models go through the train stage (``stages.train``) on the
train split, validated on val; every model is then extracted and the test queries are
searched exhaustively against the test + index database (the pipeline's default) and,
harder, against the database images of all splits.

    python benchmarks/bench_descriptors.py                  # both sets, split seed 0
    python benchmarks/bench_descriptors.py --seeds 0 1 2    # mean over three splits

Models: off-the-shelf GeM on ImageNet MobileNetV2 (``--weights``, a local torchvision
state dict), NetVLAD on the same backbone with k-means centroids only, NetVLAD fine-tuned
with the triplet loss, and RootSIFT-VLAD. Never run by the tests.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from vprflow.datasets.folder import read_folder
from vprflow import stages
from vprflow.descriptors import is_trainable, load
from vprflow.ground_truth import build_ground_truth
from vprflow.manifest import image_id
from vprflow.networks.compute import native_bf16
from vprflow.split import make_split
from vprflow.extract import encode_images

SHARED = Path(__file__).resolve().parents[2] / "shared"
FRACTIONS = {"train": 0.6, "val": 0.1, "test": 0.2, "index": 0.1}


def models(weights: str, positive_radius: float, negative_radius: float, epochs: int) -> dict[str, dict]:
    cnn = {"descriptor": "cnn", "backbone": "mobilenet_v2", "weights": weights, "width": 320, "height": 240}
    netvlad = {
        **cnn,
        "pooling": "netvlad",
        "clusters": 16,
        "positive_radius_m": positive_radius,
        "negative_radius_m": negative_radius,
    }
    return {
        "gem_offtheshelf": {**cnn, "pooling": "gem"},
        "netvlad_kmeans_init": netvlad,
        "netvlad_finetuned": {
            **netvlad,
            "train": "triplet",
            "epochs": epochs,
            "patience": epochs,
            "negatives": 5,
            "finetune_blocks": 2,
            "lr": 1e-4,
        },
        "rootsift_vlad": {"descriptor": "rootsift_vlad", "vocabulary": 64},
    }


def recall(vectors: np.ndarray, images: pd.DataFrame, split: pd.DataFrame, truth: pd.DataFrame, ns=(1, 5, 10)):
    """R@N of the test queries against the database, each query's own image masked out."""
    ids = images["image_id"].to_numpy()
    queries = np.flatnonzero(split["is_query"].to_numpy())
    database = np.flatnonzero(split["is_database"].to_numpy())
    positives = truth.groupby("query_id")["db_id"].agg(set)
    scores = vectors[queries] @ vectors[database].T
    scores[ids[queries][:, None] == ids[database][None, :]] = -np.inf
    ranked = ids[database][np.argsort(-scores, axis=1)]
    first = [
        next((r for r, d in enumerate(row) if d in positives[q]), np.inf)
        for q, row in zip(ids[queries], ranked)
        if q in positives.index
    ]
    return {**{f"R@{n}": float(np.mean(np.array(first) < n)) for n in ns}, "n_queries": len(first)}


def evaluate_set(name: str, root: Path, radius: float, seed: int, args, work: Path) -> list[dict]:
    images = read_folder(root)
    images.insert(0, "image_id", [image_id(p) for p in images["path"]])
    split = make_split(images, FRACTIONS, "grouped", 4 * radius, seed, ["test"], ["test", "index"])
    # Same splits, harder search: the test queries against every database image of all splits.
    everything = make_split(images, FRACTIONS, "grouped", 4 * radius, seed, ["test"], list(FRACTIONS))
    protocols = {
        "test+index db": (split, build_ground_truth(images, split, "auto", radius)),
        "all db": (everything, build_ground_truth(images, everything, "auto", radius)),
    }
    folder = work / f"{name}-seed{seed}"
    folder.mkdir(parents=True)
    images.to_parquet(folder / "manifest.parquet", index=False)
    pd.DataFrame({"image_id": images["image_id"], "keep": True}).to_parquet(folder / "clean.parquet", index=False)
    split.to_parquet(folder / "split.parquet", index=False)
    rows = []
    for model, settings in models(args.weights, radius, 5 * radius, args.epochs).items():
        model_dir = folder / model
        if is_trainable(settings):
            stages.train(
                manifest=folder / "manifest.parquet",
                clean=folder / "clean.parquet",
                split=folder / "split.parquet",
                settings=settings,
                root=root,
                workers=args.workers,
                threads=args.threads,
                **stages.train_outputs(model_dir),
            )
        descriptor = load(settings, model_dir if is_trainable(settings) else None)
        precisions = {"-": None}
        if settings["descriptor"] == "cnn":
            precisions = {"fp32": False, "bf16": True} if native_bf16(descriptor.device) else {"fp32": False}
        for precision, bf16 in precisions.items():
            if bf16 is not None:
                descriptor.bf16 = bf16
            vectors = encode_images(descriptor, [str(root / p) for p in images["path"]], 32, args.workers)
            for protocol, (roles, truth) in protocols.items():
                rows.append(
                    {
                        "set": name,
                        "seed": seed,
                        "model": model,
                        "precision": precision,
                        "database": protocol,
                        **recall(vectors, images, roles, truth),
                    }
                )
                print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=str(SHARED / "weights" / "mobilenet_v2_imagenet.pth"))
    parser.add_argument("--sets", nargs="+", default=["corridor", "ukbench56"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    radius = {"corridor": 2.0, "ukbench56": 1.0}  # ukbench has places only: the radius only sizes nothing
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for name in args.sets:
            for seed in args.seeds:
                rows += evaluate_set(name, SHARED / "data" / name, radius[name], seed, args, Path(work))
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if len(args.seeds) > 1:
        means = table.groupby(["set", "database", "model", "precision"])[["R@1", "R@5", "R@10"]].mean()
        print(means.to_string(float_format="{:.3f}".format))


if __name__ == "__main__":
    main()
