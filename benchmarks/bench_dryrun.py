"""Wall time of `snakemake -n` on a folder dataset of a million images.

Writes a folder dataset whose manifest.csv lists N images (default 1,000,000), hard
links to a few copies of one small JPEG, then times a dry run of the whole workflow
(default config.yaml with the dataset swapped in) for two shard sizes. Before any job runs, Snakemake only
counts the manifest's lines (to fix the shards); the listing rule reads and checks every
row when it runs, not at dry run. Goal: under 30 s, with the number of jobs growing with
the number of shards, not with the number of images.

    python benchmarks/bench_dryrun.py                        # 1M images, shards of 5000 and 50000
    python benchmarks/bench_dryrun.py --images 100000 --shard-sizes 1000 10000
    python benchmarks/bench_dryrun.py --profile              # cProfile of the first dry run, top 25

The dataset goes to a temporary folder (--dir to choose; it needs N directory entries,
no image data). Never run by the tests.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
IMAGES_PER_FOLDER = 1000
IMAGES_PER_PLACE = 5
LINKS_PER_COPY = 50_000  # ext4 allows 65,000 hard links to one file


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1_000_000, help="rows of the generated manifest")
    parser.add_argument("--shard-sizes", type=int, nargs="+", default=[5000, 50000],
                        help="shards.images_per_shard values to time")
    parser.add_argument("--dir", help="where to write the dataset (default: a temporary folder, removed after)")
    parser.add_argument("--profile", action="store_true", help="profile the first dry run in this process")
    return parser.parse_args()


def write_folder_dataset(root: Path, n_images: int) -> None:
    """root/manifest.csv listing n_images hard links to copies of one JPEG, one place per 5 images."""
    original = root / "original.jpg"
    Image.new("RGB", (32, 24), (90, 120, 150)).save(original)
    copies = root / "copies"
    copies.mkdir()
    with open(root / "manifest.csv", "w") as manifest:
        manifest.write("path,role,place\n")
        for i in range(n_images):
            if i % LINKS_PER_COPY == 0:
                copy = copies / f"{i // LINKS_PER_COPY:04d}.jpg"
                shutil.copyfile(original, copy)
            folder = root / "images" / f"{i // IMAGES_PER_FOLDER:04d}"
            if i % IMAGES_PER_FOLDER == 0:
                folder.mkdir(parents=True)
            name = f"{i:07d}.jpg"
            os.link(copy, folder / name)
            role = "query" if i % 10 == 0 else "database"
            manifest.write(f"images/{folder.name}/{name},{role},p{i // IMAGES_PER_PLACE}\n")


def write_config(path: Path, dataset_root: Path, images_per_shard: int) -> None:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["dataset"] = {"name": "folder", "folder": {"root": str(dataset_root)}}
    config["shards"] = {"images_per_shard": images_per_shard}
    path.write_text(yaml.safe_dump(config))


def dry_run_command(config: Path, workdir: Path) -> list[str]:
    return ["-s", str(REPO / "Snakefile"), "--configfile", str(config), "-d", str(workdir),
            "--dry-run", "--quiet", "rules"]


def total_jobs(dry_run_output: str) -> int:
    """The `total` row of the dry run's "Job stats" table."""
    match = re.search(r"^total\s+(\d+)\s*$", dry_run_output, re.MULTILINE)
    if not match:
        raise RuntimeError(f"no job count in the dry run output:\n{dry_run_output}")
    return int(match.group(1))


def time_dry_run(config: Path, workdir: Path) -> tuple[float, int]:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "snakemake", *dry_run_command(config, workdir)],
                            capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"dry run failed:\n{result.stdout}\n{result.stderr}")
    return seconds, total_jobs(result.stdout + result.stderr)


def profile_dry_run(config: Path, workdir: Path) -> None:
    from snakemake.cli import main

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        main(dry_run_command(config, workdir))
    except SystemExit:
        pass
    profiler.disable()
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)


def run(args: argparse.Namespace, base: Path) -> None:
    dataset_root = base / "dataset"
    dataset_root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    write_folder_dataset(dataset_root, args.images)
    print(f"wrote {args.images:,} manifest rows and hard links in {time.perf_counter() - start:.1f} s "
          f"under {dataset_root}")

    runs = []
    for images_per_shard in args.shard_sizes:
        config = base / f"config-{images_per_shard}.yaml"
        workdir = base / f"work-{images_per_shard}"
        workdir.mkdir(exist_ok=True)
        write_config(config, dataset_root, images_per_shard)
        runs.append((images_per_shard, config, workdir))
    if args.profile:
        _, config, workdir = runs[0]
        profile_dry_run(config, workdir)

    print(f"{'images':>10} {'per shard':>10} {'shards':>7} {'jobs':>7} {'dry run (s)':>12}")
    for images_per_shard, config, workdir in runs:
        seconds, jobs = time_dry_run(config, workdir)
        shards = -(-args.images // images_per_shard)
        print(f"{args.images:>10,} {images_per_shard:>10,} {shards:>7,} {jobs:>7,} {seconds:>12.1f}")


def main() -> None:
    args = parse_args()
    if args.dir:
        run(args, Path(args.dir))
    else:
        with tempfile.TemporaryDirectory(prefix="vprflow-dryrun-") as base:
            run(args, Path(base))


if __name__ == "__main__":
    main()
