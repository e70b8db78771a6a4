"""Cost of planning: wall time and peak memory of `snakemake -n`, on the demo and on a
folder dataset of a million images.

Writes a folder dataset whose manifest.csv lists N images (default 1,000,000), hard
links to a few copies of one small JPEG, then times dry runs of the whole workflow
(default config.yaml, and the same with the dataset swapped in, for each shard size).
Before any job runs, Snakemake only counts the manifest's lines (to fix the shards);
the listing rule reads and checks every row when it runs, not at dry run. Goals: under
30 s at a million images, with the number of jobs growing with the number of shards,
not with the number of images; a scheduler that does not import torch to check settings.

Peak RSS is the dry run process's own (``wait4``), in MiB. With ``--repos A B`` the same
dry runs are made for each checkout of the workflow, in turns, ``--rounds`` times, and
the minimum and median of each are printed side by side (each checkout's Snakefile puts
its own ``src/`` first on the path, so one virtual environment serves both):

    python benchmarks/bench_dryrun.py                        # 1M images, shards of 5000 and 50000
    python benchmarks/bench_dryrun.py --images 100000 --shard-sizes 1000 10000
    python benchmarks/bench_dryrun.py --repos /tmp/before . --rounds 3
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
import statistics
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
    parser.add_argument("--repos", nargs="+", default=[str(REPO)],
                        help="workflow checkouts to compare (their Snakefile and src/), timed in turns")
    parser.add_argument("--rounds", type=int, default=1, help="dry runs per checkout and workload")
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


def write_config(path: Path, dataset_root: Path | None, images_per_shard: int | None) -> None:
    """The repository's config.yaml, with the folder dataset and shard size swapped in when given."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    if dataset_root is not None:
        config["dataset"] = {"name": "folder", "folder": {"root": str(dataset_root)}}
    if images_per_shard is not None:
        config["shards"] = {"images_per_shard": images_per_shard}
    path.write_text(yaml.safe_dump(config))


def dry_run_command(repo: Path, config: Path, workdir: Path) -> list[str]:
    return ["-s", str(Path(repo) / "Snakefile"), "--configfile", str(config), "-d", str(workdir),
            "--dry-run", "--quiet", "rules"]


def total_jobs(dry_run_output: str) -> int:
    """The `total` row of the dry run's "Job stats" table."""
    match = re.search(r"^total\s+(\d+)\s*$", dry_run_output, re.MULTILINE)
    if not match:
        raise RuntimeError(f"no job count in the dry run output:\n{dry_run_output}")
    return int(match.group(1))


def time_dry_run(repo: Path, config: Path, workdir: Path) -> tuple[float, float, int]:
    """(wall seconds, peak RSS in MiB, planned jobs) of one dry run in a fresh process."""
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "snakemake", *dry_run_command(repo, config, workdir)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"dry run of {repo} failed:\n{output}")
    return seconds, usage.ru_maxrss / 1024, total_jobs(output)


def profile_dry_run(repo: Path, config: Path, workdir: Path) -> None:
    from snakemake.cli import main

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        main(dry_run_command(repo, config, workdir))
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

    workloads = [("demo (config.yaml)", base / "config-demo.yaml", None, None)]
    write_config(workloads[0][1], None, None)
    for images_per_shard in args.shard_sizes:
        config = base / f"config-{images_per_shard}.yaml"
        write_config(config, dataset_root, images_per_shard)
        workloads.append((f"{args.images:,} images / {images_per_shard:,} per shard", config, images_per_shard,
                          -(-args.images // images_per_shard)))
    repos = [Path(r).resolve() for r in args.repos]
    if args.profile:
        profile_dry_run(repos[-1], workloads[1][1], base / "work-profile")

    results: dict[tuple[int, int], list[tuple[float, float, int]]] = {}
    for _ in range(args.rounds):
        for w, (_, config, _, _) in enumerate(workloads):
            for r, repo in enumerate(repos):  # in turns: every checkout sees the same machine load
                workdir = base / f"work-{w}-{r}"
                workdir.mkdir(exist_ok=True)
                results.setdefault((w, r), []).append(time_dry_run(repo, config, workdir))

    print(f"dry runs, {args.rounds} per cell, in turns; seconds and peak RSS (MiB) as min / median")
    print(f"{'workload':<36} {'shards':>7} {'checkout':<28} {'jobs':>7} {'dry run (s)':>14} {'peak RSS (MiB)':>16}")
    for w, (name, _, _, shards) in enumerate(workloads):
        for r, repo in enumerate(repos):
            seconds, rss, jobs = zip(*results[(w, r)])
            print(f"{name:<36} {shards if shards else '':>7} {str(repo)[-28:]:<28} {jobs[0]:>7,} "
                  f"{min(seconds):>6.1f} / {statistics.median(seconds):<5.1f} "
                  f"{min(rss):>7.0f} / {statistics.median(rss):<6.0f}")


def main() -> None:
    args = parse_args()
    if args.dir:
        run(args, Path(args.dir))
    else:
        with tempfile.TemporaryDirectory(prefix="vprflow-dryrun-") as base:
            run(args, Path(base))


if __name__ == "__main__":
    main()
