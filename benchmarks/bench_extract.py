"""Extraction speed of the pipeline against the bare network, and what bfloat16 and reduced
JPEG decoding cost in recall.

1. Throughput (images/s) of ``extract_features`` on real JPEG files -- decoding and
   resizing, batching, inference, Parquet writing -- against the bare network forward on
   random tensors of the same batch size, threads and input size, in float32 and in
   bfloat16 autocast, both channels-last; each pipeline run is paired with bare runs right
   after it. Photos are first upscaled ``--upscale`` times (paris5's 512-px and ukbench's
   640-px photos become 2048 and 2560 px: most cameras' photos are far larger than the
   network input; ``--upscale 1`` keeps them as they are), and the pipeline runs three ways
   in turns: decoding every JPEG whole in a loader process (as before reduced decoding), at
   the reduction the descriptor allows (``Descriptor.decode_size``, ``images.read_rgb``) in
   a loader process (as at stop 23), and reduced in the job's own threads
   (``Descriptor.decoding_threads``; for a network on the CPU these are, since stop 26,
   streams that each decode a batch and run the network on it with one operator thread,
   ``images.map_batches``). The process keeps freed memory, as a job does (``vprflow.heap``;
   ``VPRFLOW_SYSTEM_HEAP=1``: glibc's own heap, as before). Goal: pipeline >= 0.9 of bare
   forward in wall and CPU time.
   The bare forward also runs in as many one-thread streams side by side (the pipeline's
   arrangement without the decoding), which shows the pipeline's own overhead apart from
   what streams gain over one many-thread pass. Then, per photo on one thread, the network
   input in two steps (area resize to uint8, then ``to_input``) against one pass
   (``networks.pixels``), and whether they agree bit for bit. Last, the ceiling decoding
   alone puts on pipeline / bare in CPU time (``decoding_ceiling``), also with the least any
   decoder here does (1/8 scale).
2. Recall@N on corridor (queries against the database traverse, positives within 2
   frames) and paris5 (same landmark, the query itself left out), both upscaled alike,
   for float32 and bfloat16 and both decodings, and how close the descriptors of the two
   decodings are (cosine). bf16 may be the default only where R@1 stays within 0.5
   points of float32.

    python benchmarks/bench_extract.py                          # shared data and weights
    python benchmarks/bench_extract.py --images DIR --weights none --upscale 1

With an older checkout's library first on the path (``PYTHONPATH=old/src``), both
decodings are whole: its descriptors have no ``decode_size`` (nor ``decoding_threads``: every
way decodes in a loader process). Never run by the tests.
"""

from __future__ import annotations

import vprflow  # noqa: F401  first, as in a job: it keeps freed memory before numpy starts threads (vprflow.heap)
import argparse
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from clock import Clock
from vprflow.datasets.folder import read_folder
from vprflow.descriptors import descriptor_class, load
from vprflow.extract import encode_images, extract_features
from vprflow.images import read_rgb
from vprflow.networks.compute import autocast, native_bf16

SHARED = Path(__file__).resolve().parents[2] / "shared"
DECODINGS = ("whole", "reduced")
WAYS = ("whole, loader process", "reduced, loader process", "reduced, between batches")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--images",
        nargs="+",
        default=[str(SHARED / "data" / "paris5"), str(SHARED / "data" / "ukbench56")],
        help="folder datasets (manifest.csv) whose JPEGs are extracted",
    )
    parser.add_argument("--corridor", default=str(SHARED / "data" / "corridor"), help="set for the recall check")
    parser.add_argument("--paris", default=str(SHARED / "data" / "paris5"), help="set for the recall check")
    parser.add_argument("--upscale", type=float, default=4.0,
                        help="photos are first enlarged this many times (JPEG quality 92) into a temporary folder")
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
    parser.add_argument("--no-recall", action="store_true", help="throughput only (no recall table)")
    parser.add_argument("--ways", nargs="+", choices=WAYS, default=list(WAYS), help="ways of decoding timed")
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


def pipeline_rate(descriptor, paths, args, out: Path) -> tuple[float, float]:
    """Images per wall second and per CPU second through ``extract_features``."""
    with Clock() as clock:
        extract_features(descriptor, paths, [str(i) for i in range(len(paths))], out, args.batch_size, args.workers)
    return len(paths) / clock.wall, len(paths) / clock.cpu


def random_batch(args) -> torch.Tensor:
    return torch.randn(args.batch_size, 3, args.height, args.width).contiguous(memory_format=torch.channels_last)


def bare_rate(descriptor, args, n_images: int) -> tuple[float, float]:
    """Images per wall second and per CPU second of the network alone on random input."""
    network, x = descriptor.network(), random_batch(args)
    batches = max(2, n_images // args.batch_size)
    with torch.inference_mode(), autocast(descriptor.device, descriptor.bf16), Clock() as clock:
        for _ in range(batches):
            network(x)
    return batches * args.batch_size / clock.wall, batches * args.batch_size / clock.cpu


def bare_streams_rate(descriptor, args, n_images: int) -> tuple[float, float]:
    """:func:`bare_rate` in ``threads`` streams of one operator thread each, side by side: the
    arrangement the pipeline's CPU streams use (``images.map_batches``), without decoding."""
    network, x = descriptor.network(), random_batch(args)
    per_stream = max(1, n_images // args.batch_size // args.threads)

    def stream():
        with torch.inference_mode(), autocast(descriptor.device, descriptor.bf16):
            for _ in range(per_stream):
                network(x)

    torch.set_num_threads(1)
    streams = [threading.Thread(target=stream) for _ in range(args.threads)]
    with Clock() as clock:
        for thread in streams:
            thread.start()
        for thread in streams:
            thread.join()
    torch.set_num_threads(args.threads)
    images = per_stream * args.threads * args.batch_size
    return images / clock.wall, images / clock.cpu


def input_costs(files: list[str], args) -> None:
    """Per photo and on one thread: the network input in two steps (OpenCV's area resize to
    uint8, then ``to_input``'s normalisation) against one pass (``pixels.network_input``),
    best of 5 rounds in turns; and for how many photos the two agree bit for bit."""
    try:
        from vprflow.networks.pixels import network_input, resize_to
    except ImportError:
        print("network input in one pass: not in this checkout")
        return
    from vprflow.networks.network import to_input

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    photos = [read_rgb(f, at_least=(args.width, args.height)) for f in files[:: max(1, len(files) // 64)]]
    cpu = torch.device("cpu")

    def two_steps(rgb):
        return to_input(resize_to(rgb, args.width, args.height)[None], cpu)[0].permute(1, 2, 0).numpy()

    def one_pass(rgb):
        return network_input(rgb, args.width, args.height)

    best = {two_steps: np.inf, one_pass: np.inf}
    for _ in range(5):
        for way in best:
            with Clock() as clock:
                for rgb in photos:
                    way(rgb)
            best[way] = min(best[way], clock.cpu / len(photos) * 1e3)
    same = sum(np.array_equal(one_pass(rgb), two_steps(rgb)) for rgb in photos)
    torch.set_num_threads(threads)
    print(f"network input per photo (one thread, CPU ms, best of 5): two steps {best[two_steps]:.2f}, one pass "
          f"{best[one_pass]:.2f} ({best[two_steps] / best[one_pass]:.1f}x); bit-identical for {same} of {len(photos)} photos")


def cpu_ms_per_photo(way, items) -> float:
    """CPU milliseconds per item of ``way``, best of 3 rounds."""
    best = np.inf
    for _ in range(3):
        with Clock() as clock:
            for item in items:
                way(item)
        best = min(best, clock.cpu / len(items) * 1e3)
    return best


def decoding_ceiling(files: list[str], rows: list[dict], args) -> None:
    """What decoding alone leaves of the bare forward, in CPU time, whatever the arrangement.

    Per photo on one thread: decoding as the pipeline does (``read_rgb`` at the input's
    reduction) and the network input; and OpenCV's decoding at 1/8 from bytes already in
    memory, the least any decoder here does (libjpeg still entropy-decodes every block at any
    scale). The pipeline's CPU time per image is at least the streams' forward plus these, so
    pipeline / bare in CPU time cannot pass bare / (streams + decoding + input)."""
    from vprflow.networks.pixels import network_input

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    sample = files[:: max(1, len(files) // 128)]
    size = (args.width, args.height)
    decoded = [read_rgb(f, at_least=size) for f in sample]
    blobs = [np.fromfile(f, np.uint8) for f in sample]
    decoding_ms = cpu_ms_per_photo(lambda f: read_rgb(f, at_least=size), sample)
    eighth_ms = cpu_ms_per_photo(lambda blob: cv2.imdecode(blob, cv2.IMREAD_REDUCED_COLOR_8), blobs)
    input_ms = cpu_ms_per_photo(lambda rgb: network_input(rgb, *size), decoded)
    torch.set_num_threads(threads)
    cv2.setNumThreads(-1)
    print(f"per photo on one thread (CPU ms, best of 3, {len(sample)} photos, {np.mean([b.size for b in blobs]) / 1e3:.0f} "
          f"KB on average): decoding as the pipeline does {decoding_ms:.2f}, network input {input_ms:.2f}; OpenCV at "
          f"1/8 from memory, the least a decoder here does, {eighth_ms:.2f}")
    for row in rows:
        bare, streams = row["bare forward, CPU ms per image (median)"], row["bare in streams, CPU ms per image (median)"]
        print(f"{row['precision']}: bare forward {bare:.2f} CPU ms per image, in streams {streams:.2f}; ceiling of "
              f"pipeline / bare in CPU time: {bare / (streams + decoding_ms + input_ms):.2f} as decoded now, "
              f"{bare / (streams + eighth_ms):.2f} with nothing but the 1/8 decoding")


@contextmanager
def decoding(descriptor, how: str, between_batches: bool = True):
    """``whole``: every JPEG decoded at full size, as before reduced decoding; ``reduced``: as
    the descriptor asks. ``between_batches`` False: in a loader process even where the
    descriptor would decode in its own threads."""
    if how == "whole":
        descriptor.decode_size = lambda: None  # the instance's answer hides the class's
    if not between_batches:
        descriptor.decoding_threads = lambda: 0
    try:
        yield
    finally:
        vars(descriptor).pop("decode_size", None)
        vars(descriptor).pop("decoding_threads", None)


def paired_rates(descriptor, paths, args, out: Path) -> list[dict]:
    """``repeat`` rounds of (pipeline, bare) pairs for each way of decoding, in turns: best wall
    rates, the median of the pairs' wall ratios (a pair sees about the same load from other
    work) and of their CPU ratios."""
    descriptor.encode(np.zeros((2, args.height, args.width, 3), np.uint8))  # build the network, warm up
    pairs = {way: [] for way in args.ways}
    for _ in range(args.repeat):
        for way in args.ways:
            with decoding(descriptor, way.split(",")[0], between_batches=way.endswith("between batches")):
                pairs[way].append((*pipeline_rate(descriptor, paths, args, out),
                                   *bare_rate(descriptor, args, len(paths)),
                                   *bare_streams_rate(descriptor, args, len(paths))))
    rows = []
    for way, values in pairs.items():
        pipeline_wall, pipeline_cpu, bare_wall, bare_cpu, streams_wall, streams_cpu = np.array(values).T
        rows.append({
            "decoding": way,
            "pipeline img/s (best)": float(pipeline_wall.max()),
            "bare forward img/s (best)": float(bare_wall.max()),
            "pipeline / bare, wall (median of pairs)": float(np.median(pipeline_wall / bare_wall)),
            "pipeline / bare, wall (min of pairs)": float(np.min(pipeline_wall / bare_wall)),
            "pipeline / bare, CPU time (median)": float(np.median(pipeline_cpu / bare_cpu)),
            "pipeline / bare, CPU time (min)": float(np.min(pipeline_cpu / bare_cpu)),
            "bare forward, CPU ms per image (median)": float(np.median(1e3 / bare_cpu)),
            f"bare forward in {args.threads} streams img/s (best)": float(streams_wall.max()),
            "bare in streams, CPU ms per image (median)": float(np.median(1e3 / streams_cpu)),
            "pipeline / bare in streams, wall (median)": float(np.median(pipeline_wall / streams_wall)),
            "pipeline / bare in streams, CPU time (median)": float(np.median(pipeline_cpu / streams_cpu)),
        })
    return rows


def upscaled_copy(root: Path, factor: float, out: Path) -> Path:
    """A copy of the folder dataset at ``root`` with every photo enlarged ``factor`` times."""
    listing = read_folder(root)
    for path in listing["path"]:
        image = cv2.imread(str(root / path))
        target = out / path
        target.parent.mkdir(parents=True, exist_ok=True)
        size = (round(image.shape[1] * factor), round(image.shape[0] * factor))
        cv2.imwrite(str(target), cv2.resize(image, size, interpolation=cv2.INTER_CUBIC), [cv2.IMWRITE_JPEG_QUALITY, 92])
    (out / "manifest.csv").write_text((root / "manifest.csv").read_text())
    return out


def corridor_recall(vectors: np.ndarray, listing: pd.DataFrame, radius: float = 2.0, ns=(1, 5, 10)) -> dict:
    query = listing["role"].eq("query").to_numpy()
    database = listing["role"].eq("database").to_numpy()
    x = listing["x"].to_numpy()
    scores = vectors[query] @ vectors[database].T
    order = np.argsort(-scores, axis=1)
    positive = np.abs(x[query][:, None] - x[database][None, :]) <= radius
    ranked_positive = np.take_along_axis(positive, order, axis=1)
    return {f"R@{n}": float(ranked_positive[:, :n].any(1).mean()) for n in ns}


def place_recall(vectors: np.ndarray, listing: pd.DataFrame, ns=(1, 5, 10)) -> dict:
    """Every image a query against all the others; positives: the same place."""
    scores = vectors @ vectors.T
    np.fill_diagonal(scores, -np.inf)
    order = np.argsort(-scores, axis=1)[:, :-1]
    place = listing["place"].to_numpy()
    ranked_positive = place[order] == place[:, None]
    return {f"R@{n}": float(ranked_positive[:, :n].any(1).mean()) for n in ns}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        roots = [Path(root) for root in args.images]
        if args.upscale != 1:
            roots = [upscaled_copy(root, args.upscale, Path(tmp) / "large" / root.name) for root in roots]
        files = [str(root / p) for root in roots for p in read_folder(root)["path"]]
        paths = [files[i % len(files)] for i in range(max(args.min_images, len(files)))]
        sizes = [cv2.imread(f, cv2.IMREAD_REDUCED_GRAYSCALE_8).shape for f in files[:: max(1, len(files) // 20)]]
        print(
            f"{len(paths)} reads of {len(files)} JPEGs from {', '.join(args.images)} enlarged {args.upscale}x "
            f"(about {8 * int(np.median([s[1] for s in sizes]))} px wide); {args.backbone}/{args.pooling} at "
            f"{args.width}x{args.height}, batch {args.batch_size}, {args.threads} threads, {args.workers} loader "
            f"worker(s), {device}, native bf16: {native_bf16(device)}"
        )
        rows = []
        for precision in ("fp32", "bf16"):
            descriptor = load(model_settings(args, precision))
            for row in paired_rates(descriptor, paths, args, Path(tmp) / "features.parquet"):
                rows.append({"precision": precision, "bf16 used": descriptor.bf16, **row})
        print(pd.DataFrame(rows).T.to_string(header=False, float_format=lambda v: f"{v:.2f}"))
        input_costs(files, args)
        decoding_ceiling(files, [row for row in rows if row["decoding"] == WAYS[-1]], args)
        if not args.no_recall:
            recall_table(args, Path(tmp))


def netvlad_for(corridor: pd.DataFrame, paths: list[str], args, out_dir: Path):
    """NetVLAD with k-means centroids from the corridor's database traverse (no fine-tuning:
    what is compared here is one network's arithmetic in two precisions and two decodings)."""
    settings = {**model_settings(args, "fp32"), "pooling": "netvlad", "clusters": 16}
    images = corridor.assign(
        image_id=corridor["path"],
        split=np.where(corridor["role"] == "database", "train", "test"),
        abs_path=paths,
    )
    descriptor_class("cnn").train({k: v for k, v in settings.items() if k != "descriptor"}, images, out_dir)
    return load(settings, out_dir)


def recall_table(args, tmp: Path) -> None:
    """Recall of each model, precision and decoding on corridor and paris5, both enlarged as the
    throughput photos; and the cosine between the two decodings' descriptors of each image."""
    sets = {}
    for name, root, recall in (("corridor", Path(args.corridor), corridor_recall),
                               ("paris5", Path(args.paris), place_recall)):
        if args.upscale != 1:
            root = upscaled_copy(root, args.upscale, tmp / "recall" / name)
        listing = read_folder(root)
        sets[name] = (listing, [str(root / p) for p in listing["path"]], recall)
    corridor, corridor_paths, _ = sets["corridor"]
    models = {"gem": load(model_settings(args, "fp32")),
              "netvlad16": netvlad_for(corridor, corridor_paths, args, tmp / "netvlad")}
    rows, agreement = [], []
    for name, descriptor in models.items():
        for precision in ("fp32", "bf16"):
            descriptor.bf16 = precision == "bf16"
            for set_name, (listing, paths, recall) in sets.items():
                vectors = {}
                for how in DECODINGS:
                    with decoding(descriptor, how):
                        vectors[how] = encode_images(descriptor, paths, args.batch_size, args.workers)
                    rows.append({"model": name, "precision": precision, "set": set_name, "decoding": how,
                                 **recall(vectors[how], listing)})
                cosine = np.einsum("nd,nd->n", vectors["whole"], vectors["reduced"])
                agreement.append({"model": name, "precision": precision, "set": set_name,
                                  "cosine min": cosine.min(), "cosine median": float(np.median(cosine))})
    table = pd.DataFrame(rows)
    print(f"\nrecall (corridor: {(corridor['role'] == 'query').sum()} queries against the database traverse, "
          f"positives within 2 frames; paris5: every photo against the others, same landmark), photos enlarged "
          f"{args.upscale}x:")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    keys = ["model", "set", "decoding"]
    by_precision = table.set_index(keys + ["precision"])["R@1"].unstack("precision")
    for (name, set_name, how), change in (100 * (by_precision["bf16"] - by_precision["fp32"])).items():
        verdict = "may" if change >= -0.5 else "may NOT"
        print(f"{name} {set_name} ({how} decoding): bf16 R@1 - fp32 R@1 = {change:+.2f} points: "
              f"bf16 {verdict} be its default")
    by_decoding = table.set_index(["model", "precision", "set", "decoding"])[["R@1", "R@5", "R@10"]]
    change = 100 * (by_decoding.xs("reduced", level="decoding") - by_decoding.xs("whole", level="decoding"))
    print("\nreduced - whole decoding (points):")
    print(change.to_string(float_format=lambda v: f"{v:+.2f}"))
    print("\ncosine between the descriptors of the two decodings, per image:")
    print(pd.DataFrame(agreement).to_string(index=False, float_format=lambda v: f"{v:.4f}"))


if __name__ == "__main__":
    main()
