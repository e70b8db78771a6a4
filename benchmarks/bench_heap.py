"""What keeping freed memory in the process (``vprflow.heap.keep_freed_memory``) does to the
network stages on the CPU, against glibc's own heap, side by side in one run.

Each measurement runs in a fresh child process, the two heaps in turns (``--rounds`` times
each), since the setting is the process's and must come before its threads:

- extraction: ``extract_features`` over the photos (decoding, network, Parquet), in fp32 and
  bf16, as the ``extract`` stage runs it (streams on the CPU);
- the bare forward pass on a random batch (two-thread, as ``bench_extract.py``'s reference);
- a training step: forward, backward and an SGD step of the same backbone with a linear head,
  batch ``--train-batch``.

It prints images per second (median over rounds) under each heap, the ratio kept / glibc,
the share of CPU time spent in the kernel, and the children's peak resident memory.

    python benchmarks/bench_heap.py                    # shared photos and weights
    python benchmarks/bench_heap.py --upscale 4        # photos enlarged 4x first

Never run by the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"
HEAPS = ("glibc", "kept")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", nargs="+",
                        default=[str(SHARED / "data" / "paris5"), str(SHARED / "data" / "ukbench56")])
    parser.add_argument("--weights", default=str(SHARED / "weights" / "mobilenet_v2_imagenet.pth"))
    parser.add_argument("--upscale", type=float, default=1.0, help="photos enlarged this many times first")
    parser.add_argument("--min-images", type=int, default=512, help="reads per extraction (cycling the photos)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--train-batch", type=int, default=16)
    parser.add_argument("--train-steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", choices=HEAPS, help=argparse.SUPPRESS)
    parser.add_argument("--files", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def timed(work, count: int) -> dict:
    """Items per wall second, and the kernel's share of the CPU time, of ``work()``."""
    start_wall, start = time.perf_counter(), os.times()
    work()
    wall, end = time.perf_counter() - start_wall, os.times()
    user, system = end.user - start.user, end.system - start.system
    return {"rate": count / wall, "kernel share": system / max(user + system, 1e-9)}


def child(args) -> None:
    """One heap's measurements, printed as JSON on the last line."""
    from vprflow.heap import keep_freed_memory  # importing vprflow takes it (VPRFLOW_SYSTEM_HEAP=1: not)

    assert keep_freed_memory() == (args.child == "kept"), "the heap is not as this child should have it"
    import numpy as np
    import torch

    from vprflow.descriptors import load
    from vprflow.extract import extract_features
    from vprflow.networks.compute import autocast

    torch.set_num_threads(args.threads)
    files = Path(args.files).read_text().split("\n")
    paths = [files[i % len(files)] for i in range(max(args.min_images, len(files)))]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", "bf16"):
            settings = {"descriptor": "cnn", "backbone": "mobilenet_v2", "weights": args.weights, "pooling": "gem",
                        "width": 320, "height": 240, "precision": precision}
            descriptor = load(settings)
            descriptor.encode(np.zeros((2, 240, 320, 3), np.uint8))  # build and warm up
            ids = [str(i) for i in range(len(paths))]
            results[f"extraction, {precision}"] = timed(
                lambda: extract_features(descriptor, paths, ids, Path(tmp) / "f.parquet", args.batch_size, 1),
                len(paths))
            network = descriptor.network()
            x = torch.randn(args.batch_size, 3, 240, 320).contiguous(memory_format=torch.channels_last)
            batches = max(2, len(paths) // args.batch_size)

            def forward():
                with torch.inference_mode(), autocast(descriptor.device, descriptor.bf16):
                    for _ in range(batches):
                        network(x)

            results[f"bare forward, {precision}"] = timed(forward, batches * args.batch_size)
    import torchvision

    model = torchvision.models.mobilenet_v2(num_classes=64).to(memory_format=torch.channels_last)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(args.train_batch, 3, 240, 320).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 64, (args.train_batch,))

    def step():
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimiser.step()

    step()  # warm up
    results["training step, fp32"] = timed(lambda: [step() for _ in range(args.train_steps)],
                                           args.train_steps * args.train_batch)
    results["peak resident MiB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(results))


def main() -> None:
    args = parse_args()
    if args.child:
        child(args)
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import numpy as np

    from bench_extract import upscaled_copy
    from vprflow.datasets.folder import read_folder

    with tempfile.TemporaryDirectory() as tmp:
        roots = [Path(root) for root in args.images]
        if args.upscale != 1:
            roots = [upscaled_copy(root, args.upscale, Path(tmp) / "large" / root.name) for root in roots]
        files = [str(root / p) for root in roots for p in read_folder(root)["path"]]
        listing = Path(tmp) / "files.txt"
        listing.write_text("\n".join(files))
        print(f"{len(files)} photos from {', '.join(args.images)} enlarged {args.upscale}x, {args.min_images} reads "
              f"per extraction; mobilenet_v2/gem at 320x240, batch {args.batch_size}, {args.threads} threads; "
              f"{args.rounds} rounds, the two heaps in turns, each in a fresh process")
        runs = {heap: [] for heap in HEAPS}
        for _ in range(args.rounds):
            for heap in HEAPS:
                command = [sys.executable, __file__, "--child", heap, "--files", str(listing),
                           *sys.argv[1:]]
                env = {**os.environ, "VPRFLOW_SYSTEM_HEAP": "1" if heap == "glibc" else ""}
                done = subprocess.run(command, capture_output=True, text=True, env=env)
                if done.returncode:
                    sys.exit(f"{heap} child failed:\n{done.stderr[-3000:]}")
                runs[heap].append(json.loads(done.stdout.strip().splitlines()[-1]))
    names = [name for name in runs["kept"][0] if name != "peak resident MiB"]
    print(f"\n{'':28s} {'glibc img/s':>12s} {'kept img/s':>11s} {'kept / glibc':>13s} {'kernel share glibc':>19s} "
          f"{'kept':>6s}")
    for name in names:
        rate = {heap: np.median([run[name]["rate"] for run in runs[heap]]) for heap in HEAPS}
        share = {heap: np.median([run[name]["kernel share"] for run in runs[heap]]) for heap in HEAPS}
        ratios = [k[name]["rate"] / g[name]["rate"] for g, k in zip(runs["glibc"], runs["kept"])]
        print(f"{name:28s} {rate['glibc']:12.1f} {rate['kept']:11.1f} {np.median(ratios):13.2f} "
              f"{share['glibc']:19.2f} {share['kept']:6.2f}")
    peak = {heap: np.median([run["peak resident MiB"] for run in runs[heap]]) for heap in HEAPS}
    print(f"{'peak resident MiB (median)':28s} {peak['glibc']:12.0f} {peak['kept']:11.0f} "
          f"{peak['kept'] / peak['glibc']:13.2f}")


if __name__ == "__main__":
    main()
