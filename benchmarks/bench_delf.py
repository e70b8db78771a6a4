"""DELF extraction speed against the bare backbone forward at the same scales, and a picture
of its attention maps.

1. Images per second of ``extract_local_features`` with a ``delf`` model on real JPEGs --
   decoding and shrinking in DataLoader workers, the image pyramid, attention, top-N
   selection, whitening, writing the shard -- against the backbone alone on random tensors
   of the very sizes the pyramid feeds it (same batches, threads, precision). Timed in
   turns, ``--rounds`` times; wall and CPU time.
2. ``--attention PNG``: for a few photos, the photo, its attention at scale 1 and the
   keypoints kept over all scales (circle radius ~ receptive field / scale).

    python benchmarks/bench_delf.py --checkpoint results/models/delf/model.pt
    python benchmarks/bench_delf.py --checkpoint M --images ../shared/data/paris5 --attention /tmp/att.png

Without ``--checkpoint`` it builds an untrained model (ImageNet weights from ``--weights``,
random attention, whitening fitted on the images): speed does not depend on training.
Never run by the tests.
"""

from __future__ import annotations

import vprflow  # noqa: F401  first, as in a job: it keeps freed memory before numpy starts threads (vprflow.heap)
import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from clock import Clock
from vprflow.datasets.folder import read_folder
from vprflow.descriptors import load
from vprflow.images import read_rgb
from vprflow.local.extract import extract_local_features
from vprflow.networks.compute import autocast
from vprflow.networks.delf import CHECKPOINT_KIND, build_delf, describe_images, shrink
from vprflow.networks.network import save_checkpoint, to_input

SHARED = next((p / "shared" for p in Path(__file__).resolve().parents if (p / "shared" / "data").is_dir()),
              Path("../shared"))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default=str(SHARED / "data" / "ukbench56"), help="folder dataset (manifest.csv)")
    parser.add_argument("--checkpoint", help="a delf model.pt; default: an untrained one")
    parser.add_argument("--weights", default=str(SHARED / "weights" / "mobilenet_v2_imagenet.pth"))
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--max-side", type=int, default=512)
    parser.add_argument("--scales", default="0.7071,1.0,1.4142")
    parser.add_argument("--max-keypoints", type=int, default=1000)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--images-per-round", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--attention", help="write the attention picture of --attention-photos photos here")
    parser.add_argument("--attention-photos", type=int, default=6)
    return parser.parse_args()


def untrained_model(args, paths: list[str], out: Path) -> Path:
    settings = {"backbone": args.backbone, "weights": args.weights, "dim": 40, "max_side": args.max_side}
    network = build_delf(settings).eval()
    images = [shrink(read_rgb(p), args.max_side) for p in paths[:8]]
    found = describe_images(network, images, [1.0], args.max_keypoints, 0.0, torch.device("cpu"), False)
    network.whitening.fit(np.concatenate([k.features for k in found]))
    save_checkpoint(out, network, settings, kind=CHECKPOINT_KIND)
    return out


def bare_forward(descriptor, images: list[np.ndarray], scales: list[float], batch_size: int) -> None:
    """The backbone alone on random input of the sizes the pyramid gives these images."""
    network = descriptor.network()
    by_shape: dict[tuple, int] = {}
    for image in images:
        by_shape[image.shape] = by_shape.get(image.shape, 0) + 1
    with torch.inference_mode(), autocast(descriptor.device, descriptor.bf16):
        for (height, width, _), count in by_shape.items():
            for start in range(0, count, batch_size):
                n = min(batch_size, count - start)
                for scale in scales:
                    x = torch.randn(n, 3, max(1, round(height * scale)), max(1, round(width * scale)))
                    network.backbone(x.contiguous(memory_format=torch.channels_last))


def attention_picture(descriptor, paths: list[str], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    network = descriptor.network()
    figure, axes = plt.subplots(len(paths), 3, figsize=(11, 3.2 * len(paths)), squeeze=False)
    for row, path in zip(axes, paths):
        rgb = read_rgb(path)
        small, _ = descriptor.preprocess(rgb)
        with torch.inference_mode(), autocast(descriptor.device, descriptor.bf16):
            features = network.backbone(to_input(small[None], descriptor.device))
            _, attention = network.attend(features)
            attention = F.interpolate(attention, size=small.shape[:2], mode="bilinear", align_corners=False)
        keypoints = descriptor.describe([(small, (rgb.shape[1], rgb.shape[0]))])[0]
        row[0].imshow(rgb)
        row[0].set_title(Path(path).name, fontsize=8)
        row[1].imshow(small)
        shown = row[1].imshow(attention[0, 0].float().cpu().numpy(), cmap="inferno", alpha=0.6)
        figure.colorbar(shown, ax=row[1], fraction=0.046)
        row[1].set_title("attention at scale 1", fontsize=8)
        row[2].imshow(rgb)
        radius = 0.5 * network.stride / keypoints.scale * rgb.shape[1] / small.shape[1]
        row[2].scatter(keypoints.xy[:, 0], keypoints.xy[:, 1], s=radius**2 / 4, facecolors="none",
                       edgecolors=plt.cm.viridis(keypoints.attention / keypoints.attention.max()), linewidths=0.7)
        row[2].set_title(f"{len(keypoints)} keypoints over scales {descriptor.settings['scales']}", fontsize=8)
        for axis in row:
            axis.axis("off")
    figure.tight_layout()
    figure.savefig(out, dpi=90)
    plt.close(figure)
    print(f"attention maps of {len(paths)} photos: {out}")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    scales = [float(s) for s in args.scales.split(",")]
    files = [str(Path(args.images) / p) for p in read_folder(args.images)["path"]]
    paths = [files[i % len(files)] for i in range(args.images_per_round)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkpoint = Path(args.checkpoint) if args.checkpoint else untrained_model(args, files, tmp / "model.pt")
        descriptor = load({"descriptor": "delf", "checkpoint": str(checkpoint), "max_side": args.max_side,
                           "scales": scales, "max_keypoints": args.max_keypoints, "precision": args.precision})
        shrunk = [descriptor.preprocess(read_rgb(p))[0] for p in paths]
        descriptor.describe([(shrunk[0], (1, 1))])  # build and warm up
        print(f"{len(paths)} images of {args.images} per round, shrunk to {args.max_side} px, scales {scales}, "
              f"{descriptor.settings['backbone']} ({checkpoint}), {descriptor.device}, bf16 {descriptor.bf16}, "
              f"batch {args.batch_size}, {args.threads} threads, {args.workers} loader worker(s)")
        rates = {"delf extraction (pipeline)": [], "bare backbone forward, same scales": []}
        for round_ in range(args.rounds):
            with Clock() as clock:
                extract_local_features(descriptor, paths, [str(i) for i in range(len(paths))], tmp / f"s{round_}",
                                       args.batch_size, args.workers)
            rates["delf extraction (pipeline)"].append((len(paths) / clock.wall, len(paths) / clock.cpu))
            with Clock() as clock:
                bare_forward(descriptor, shrunk, scales, args.batch_size)
            rates["bare backbone forward, same scales"].append((len(paths) / clock.wall, len(paths) / clock.cpu))
        rates = {name: np.array(values) for name, values in rates.items()}
        pipeline, bare = rates["delf extraction (pipeline)"], rates["bare backbone forward, same scales"]
        rows = [{"what": name, "images/s (best wall)": v[:, 0].max(), "images/s (median wall)": np.median(v[:, 0]),
                 "images per CPU-second (median)": np.median(v[:, 1])} for name, v in rates.items()]
        print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.2f}"))
        print(f"pipeline / bare: {np.median(pipeline[:, 0] / bare[:, 0]):.2f} (median of the rounds' wall ratios), "
              f"{np.median(pipeline[:, 1] / bare[:, 1]):.2f} (CPU time)")
        if args.attention:
            photos = files[:: max(1, len(files) // args.attention_photos)][: args.attention_photos]
            attention_picture(descriptor, photos, args.attention)


if __name__ == "__main__":
    main()
