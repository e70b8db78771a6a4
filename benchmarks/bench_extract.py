"""Extraction speed of the pipeline against the bare network, and what bfloat16 costs in recall.

1. Throughput (images/s) of ``extract_features`` on real JPEG files -- decoding and
   resizing in DataLoader workers, batching, inference, Parquet writing -- against the
   bare network forward on random tensors of the same batch size, threads and input
   size, in float32 and in bfloat16 autocast, both channels-last. Goal: pipeline >= 0.8
   of bare forward.
2. Recall@N of float32 and bfloat16 descriptors on the corridor set (queries against the
   database traverse, positives within 2 frames). bf16 may be the default only where R@1
   stays within 0.5 points of float32.

    python benchmarks/bench_extract.py                          # shared data and weights
    python benchmarks/bench_extract.py --images DIR --weights none

Never run by the tests.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from vprflow.datasets.folder import read_folder
from vprflow.descriptors import descriptor_class, load
from vprflow.extract import extract_features
from vprflow.networks.compute import autocast, native_bf16
from vprflow.extract import encode_images

SHARED = Path(__file__).resolve().parents[2] / "shared"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--images",
        nargs="+",
        default=[str(SHARED / "data" / "ukbench56"), str(SHARED / "data" / "corridor")],
        help="folder datasets (manifest.csv) whose JPEGs are extracted",
    )
    parser.add_argument("--corridor", default=str(SHARED / "data" / "corridor"), help="set for the recall check")
    parser.add_argument("--weights", default=str(SHARED / "weights" / "mobilenet_v2_imagenet.pth"))
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--pooling", default="gem")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1, help="DataLoader decoding processes")
    parser.add_argument(
        "--min-images",
        type=int,
        default=1024,
        help="cycle through the files up to this many reads, so start-up costs weigh as in a shard",
    )
    parser.add_argument("--repeat", type=int, default=3, help="timed (pipeline, bare forward) pairs")
    return parser.parse_args()


def model_settings(args, precision: str) -> dict:
    return {
        "descriptor": "cnn",
        "backbone": args.backbone,
        "weights": args.weights,
        "pooling": args.pooling,
        "width": args.width,
        "height": args.height,
        "precision": precision,
    }


class Clock:
    """Wall seconds, and CPU seconds of this process and its reaped children (the loader
    workers): CPU time barely moves with other users' load, wall time does."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), self._cpu()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, self._cpu() - self.cpu

    @staticmethod
    def _cpu() -> float:
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def pipeline_rate(descriptor, paths, args, out: Path) -> tuple[float, float]:
    """Images per wall second and per CPU second through ``extract_features``."""
    with Clock() as clock:
        extract_features(descriptor, paths, [str(i) for i in range(len(paths))], out, args.batch_size, args.workers)
    return len(paths) / clock.wall, len(paths) / clock.cpu


def bare_rate(descriptor, args, n_images: int) -> tuple[float, float]:
    """Images per wall second and per CPU second of the network alone on random input."""
    network = descriptor.network()
    x = torch.randn(args.batch_size, 3, args.height, args.width).contiguous(memory_format=torch.channels_last)
    batches = max(2, n_images // args.batch_size)
    with torch.inference_mode(), autocast(descriptor.device, descriptor.bf16), Clock() as clock:
        for _ in range(batches):
            network(x)
    return batches * args.batch_size / clock.wall, batches * args.batch_size / clock.cpu


def paired_rates(descriptor, paths, args, out: Path) -> dict[str, float]:
    """``repeat`` back-to-back (pipeline, bare) pairs: best wall rates, the median of the
    pairs' wall ratios (a pair sees about the same load from other work) and the CPU ratio."""
    descriptor.encode(np.zeros((2, args.height, args.width, 3), np.uint8))  # build the network, warm up
    pairs = np.array(
        [
            (*pipeline_rate(descriptor, paths, args, out), *bare_rate(descriptor, args, len(paths)))
            for _ in range(args.repeat)
        ]
    )
    pipeline_wall, pipeline_cpu, bare_wall, bare_cpu = pairs.T
    return {
        "pipeline img/s (best)": float(pipeline_wall.max()),
        "bare forward img/s (best)": float(bare_wall.max()),
        "pipeline / bare, wall (median of pairs)": float(np.median(pipeline_wall / bare_wall)),
        "pipeline / bare, CPU time (median)": float(np.median(pipeline_cpu / bare_cpu)),
        "bare forward img per CPU-second (median)": float(np.median(bare_cpu)),
    }


def corridor_recall(vectors: np.ndarray, listing: pd.DataFrame, radius: float = 2.0, ns=(1, 5, 10)) -> dict:
    query = listing["role"].eq("query").to_numpy()
    database = listing["role"].eq("database").to_numpy()
    x = listing["x"].to_numpy()
    scores = vectors[query] @ vectors[database].T
    order = np.argsort(-scores, axis=1)
    positive = np.abs(x[query][:, None] - x[database][None, :]) <= radius
    ranked_positive = np.take_along_axis(positive, order, axis=1)
    return {f"R@{n}": float(ranked_positive[:, :n].any(1).mean()) for n in ns}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    files = [str(Path(root) / p) for root in args.images for p in read_folder(root)["path"]]
    paths = [files[i % len(files)] for i in range(max(args.min_images, len(files)))]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(
        f"{len(paths)} reads of {len(files)} JPEGs from {', '.join(args.images)}; {args.backbone}/{args.pooling} at "
        f"{args.width}x{args.height}, batch {args.batch_size}, {args.threads} threads, {args.workers} loader "
        f"worker(s), {device}, native bf16: {native_bf16(device)}"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", "bf16"):
            descriptor = load(model_settings(args, precision))
            rates = paired_rates(descriptor, paths, args, Path(tmp) / "features.parquet")
            rows.append({"precision": precision, "bf16 used": descriptor.bf16, **rates})
        print(pd.DataFrame(rows).T.to_string(header=False, float_format=lambda v: f"{v:.2f}"))
        recall_table(args, Path(tmp))


def netvlad_for(corridor: pd.DataFrame, args, out_dir: Path):
    """NetVLAD with k-means centroids from the corridor's database traverse (no fine-tuning:
    what is compared here is one network's arithmetic in two precisions)."""
    settings = {**model_settings(args, "fp32"), "pooling": "netvlad", "clusters": 16}
    images = corridor.assign(
        image_id=corridor["path"],
        split=np.where(corridor["role"] == "database", "train", "test"),
        abs_path=[str(Path(args.corridor) / p) for p in corridor["path"]],
    )
    descriptor_class("cnn").train({k: v for k, v in settings.items() if k != "descriptor"}, images, out_dir)
    return load(settings, out_dir)


def recall_table(args, tmp: Path) -> None:
    corridor = read_folder(args.corridor)
    paths = [str(Path(args.corridor) / p) for p in corridor["path"]]
    models = {"gem": load(model_settings(args, "fp32")), "netvlad16": netvlad_for(corridor, args, tmp / "netvlad")}
    rows = []
    for name, descriptor in models.items():
        recalls = {}
        for precision in ("fp32", "bf16"):
            descriptor.bf16 = precision == "bf16"
            recalls[precision] = corridor_recall(
                encode_images(descriptor, paths, args.batch_size, args.workers), corridor
            )
            rows.append({"model": name, "precision": precision, **recalls[precision]})
        rows.append(
            {
                "model": name,
                "precision": "bf16 - fp32 (points)",
                **{k: 100 * (recalls["bf16"][k] - recalls["fp32"][k]) for k in recalls["fp32"]},
            }
        )
        change = rows[-1]["R@1"]
        verdict = "may" if change >= -0.5 else "may NOT"
        print(f"{name}: bf16 R@1 - fp32 R@1 = {change:+.2f} points: bf16 {verdict} be its default")
    print(
        f"\ncorridor ({(corridor['role'] == 'query').sum()} queries against the database traverse, positives "
        "within 2 frames):"
    )
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4f}"))


if __name__ == "__main__":
    main()
