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
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from vprflow.datasets.folder import read_folder
from vprflow.descriptors import load
from vprflow.extract import extract_features
from vprflow.models.compute import autocast, native_bf16
from vprflow.train.evaluate import encode_images

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
    parser.add_argument("--repeat", type=int, default=4, help="timed (pipeline, bare forward) pairs")
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


def pipeline_rate(descriptor, paths, args, out: Path) -> float:
    started = time.perf_counter()
    extract_features(descriptor, paths, [str(i) for i in range(len(paths))], out, args.batch_size, args.workers)
    return len(paths) / (time.perf_counter() - started)


def bare_rate(descriptor, args, n_images: int) -> float:
    network = descriptor.network()
    x = torch.randn(args.batch_size, 3, args.height, args.width).contiguous(memory_format=torch.channels_last)
    batches = max(2, n_images // args.batch_size)
    with torch.inference_mode(), autocast(descriptor.device, descriptor.bf16):
        started = time.perf_counter()
        for _ in range(batches):
            network(x)
        return batches * args.batch_size / (time.perf_counter() - started)


def paired_rates(descriptor, paths, args, out: Path) -> tuple[float, float, float]:
    """Best pipeline and bare rates of ``repeat`` back-to-back pairs, and the median of the
    pairs' ratios: on a machine shared with other work, a pair sees about the same load."""
    descriptor.encode(np.zeros((2, args.height, args.width, 3), np.uint8))  # build the network, warm up
    pairs = [
        (pipeline_rate(descriptor, paths, args, out), bare_rate(descriptor, args, len(paths)))
        for _ in range(args.repeat)
    ]
    pipeline, bare = np.array(pairs).T
    return float(pipeline.max()), float(bare.max()), float(np.median(pipeline / bare))


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
    corridor = read_folder(args.corridor)
    corridor_paths = [str(Path(args.corridor) / p) for p in corridor["path"]]
    rows, recalls = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", "bf16"):
            descriptor = load(model_settings(args, precision))
            pipeline, bare, ratio = paired_rates(descriptor, paths, args, Path(tmp) / "features.parquet")
            rows.append(
                {
                    "precision": precision,
                    "bf16 used": descriptor.bf16,
                    "pipeline img/s (best)": pipeline,
                    "bare forward img/s (best)": bare,
                    "pipeline / bare (median of pairs)": ratio,
                }
            )
            vectors = encode_images(descriptor, corridor_paths, args.batch_size, args.workers)
            recalls[precision] = corridor_recall(vectors, corridor)
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    table = pd.DataFrame(recalls).T
    table.loc["bf16 - fp32 (points)"] = (table.loc["bf16"] - table.loc["fp32"]) * 100
    print(f"\ncorridor ({(corridor['role'] == 'query').sum()} queries, positives within 2 frames):")
    print(table.to_string(float_format=lambda v: f"{v:.4f}"))
    drop = -table.loc["bf16 - fp32 (points)", "R@1"]
    print(f"\nbf16 R@1 is {drop:+.2f} points below fp32: bf16 {'may' if drop <= 0.5 else 'may NOT'} be the default")


if __name__ == "__main__":
    main()
