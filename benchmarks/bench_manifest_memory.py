"""Peak memory of the manifest job on very large photos, against the memory the rule declares.

Writes a folder dataset into a temporary folder: one large photo (default 108 megapixels,
12000 x 9000, photo-like content, JPEG) beside a few small ones, then runs the workflow up to
``results/manifest.parquet`` with Snakemake and samples, every 20 ms, the resident memory of
the ``manifest_shard`` job's processes (the script and its DataLoader workers): the sum of
their RSS (what Snakemake's benchmark files report) and of their PSS (shared pages counted
once, closer to what a cgroup on a cluster charges). The declared ``mem_mb`` is read from the
dry run. ``--megapixels 200`` shows a photo past Pillow's decompression-bomb limit going to
``results/rejects.tsv`` with its reason instead of stopping the run.

    python benchmarks/bench_manifest_memory.py                      # 108 MP JPEG
    python benchmarks/bench_manifest_memory.py --format png         # the same as PNG (no reduced decode)
    python benchmarks/bench_manifest_memory.py --megapixels 200     # past the limit: rejected, named

The photos are written under a temporary folder (removed after unless --keep) and never
belong in the repository. Never run by the tests.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
ASPECT = 4 / 3


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megapixels", type=float, default=108.0, help="size of the large photo")
    parser.add_argument("--format", choices=["jpeg", "png"], default="jpeg")
    parser.add_argument("--workers", type=int, default=1, help="compute.loader_workers (the default is 1)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder and print its path")
    return parser.parse_args()


def photo_like(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Smooth random colour fields with fine noise: compresses like a photograph, not like noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (max(2, height // 400), max(2, width // 400), 3), dtype=np.uint8)
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    noise = rng.integers(-6, 7, (height, 1, 3), dtype=np.int16) + rng.integers(-6, 7, (1, width, 3), dtype=np.int16)
    return np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def write_dataset(root: Path, megapixels: float, fmt: str) -> Path:
    height = round((megapixels * 1e6 / ASPECT) ** 0.5)
    width = round(height * ASPECT)
    suffix = "jpg" if fmt == "jpeg" else "png"
    large = root / f"large.{suffix}"
    params = [cv2.IMWRITE_JPEG_QUALITY, 90] if fmt == "jpeg" else [cv2.IMWRITE_PNG_COMPRESSION, 1]
    cv2.imwrite(str(large), photo_like(width, height), params)
    rows = [{"path": large.name, "role": "database", "place": "big"}]
    for i in range(4):
        name = f"small{i}.jpg"
        cv2.imwrite(str(root / name), photo_like(320, 240, seed=i + 1))
        rows.append({"path": name, "role": "query" if i == 0 else "database", "place": "big" if i < 2 else "other"})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    print(f"large photo: {width} x {height} = {width * height / 1e6:.1f} MP, {large.stat().st_size / 1e6:.1f} MB "
          f"{fmt.upper()}")
    return large


class TreeSampler(threading.Thread):
    """Peak summed RSS and PSS of the processes whose command line names ``marker``."""

    def __init__(self, root_pid: int, marker: str, interval: float = 0.02):
        super().__init__(daemon=True)
        self.root, self.marker, self.interval = psutil.Process(root_pid), marker, interval
        self.peak_rss = self.peak_pss = 0
        self.peak_processes = 0
        self.stopped = threading.Event()

    def job_processes(self) -> list[psutil.Process]:
        found = []
        for process in self.root.children(recursive=True):
            try:
                if any(self.marker in part for part in process.cmdline()):
                    found.append(process)
            except psutil.Error:
                pass
        return found

    def run(self) -> None:
        while not self.stopped.is_set():
            rss = pss = 0
            processes = self.job_processes()
            for process in processes:
                try:
                    info = process.memory_full_info()
                    rss, pss = rss + info.rss, pss + info.pss
                except psutil.Error:
                    pass
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self.peak_processes = max(self.peak_processes, len(processes))
            time.sleep(self.interval)


def declared_mem_mb(command: list[str]) -> int:
    dry = subprocess.run(command + ["--dry-run"], capture_output=True, text=True)
    text = dry.stdout + dry.stderr
    block = text[text.index("rule manifest_shard:"):]
    return int(re.search(r"mem_mb=(\d+)", block).group(1))


def main() -> None:
    args = parse_args()
    base = Path(tempfile.mkdtemp(prefix="vprflow-bigphoto-"))
    try:
        data = base / "data"
        data.mkdir()
        write_dataset(data, args.megapixels, args.format)
        config = base / "config.yaml"
        config.write_text(yaml.safe_dump({
            "dataset": {"name": "folder", "folder": {"root": str(data)}},
            "compute": {"loader_workers": args.workers},
            "models": {"tiny": {"descriptor": "tiny_image"}}}))
        work = base / "work"
        work.mkdir()
        command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(work),
                   "--configfile", str(config), "--cores", "2", "results/manifest.parquet"]
        declared = declared_mem_mb(command)
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        sampler = TreeSampler(process.pid, "manifest_shard")
        sampler.start()
        output, _ = process.communicate()
        sampler.stopped.set()
        sampler.join()
        seconds = time.perf_counter() - started
        print(f"snakemake exit code {process.returncode} after {seconds:.1f} s")
        if process.returncode != 0:
            print(output[-3000:])
        rejects = work / "results" / "rejects.tsv"
        if rejects.is_file():
            table = pd.read_csv(rejects, sep="\t")
            print(f"rejects.tsv: {len(table)} row(s)" + "".join(f"\n  {p}: {r}" for p, r in zip(table["path"],
                                                                                              table["reason"])))
        log = work / "logs" / "manifest" / "shard_0000.log"
        if log.is_file():
            named = [line for line in log.read_text().splitlines() if "large." in line]
            print("log lines naming the photo:" + "".join(f"\n  {line}" for line in named[:5]) if named
                  else "the job's log does not name the photo")
        mb = 1024 * 1024
        print(f"manifest_shard job ({sampler.peak_processes} processes): peak RSS {sampler.peak_rss / mb:.0f} MB, "
              f"peak PSS {sampler.peak_pss / mb:.0f} MB; declared mem_mb {declared}; "
              f"RSS/declared {sampler.peak_rss / mb / declared:.2f}, PSS/declared {sampler.peak_pss / mb / declared:.2f}")
    finally:
        if args.keep:
            print(f"kept {base}")
        else:
            import shutil

            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
