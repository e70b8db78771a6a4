"""What a job pays before its work: per-rule job wall time on the tiny demo, and the cost
of importing the stages module, which every job's script does first.

1. ``import vprflow.stages`` in a fresh interpreter: wall seconds and peak RSS (``wait4``).
2. The tiny demo world (one tiny-image model, exact and HNSW searches, a label re-ranking)
   run through Snakemake with ``--cores 1``, so jobs do not overlap: each job's wall time,
   from Snakemake's own records (``.snakemake/metadata``: start and end of every job),
   by rule. On the tiny demo almost every job's work takes milliseconds, so its wall time
   is its start-up: the interpreter, Snakemake's script preamble, the imports.

With ``--repos A B`` both are measured for each checkout of the workflow (its Snakefile
and its ``src/``, first on the path), in turns, ``--rounds`` times; minimum and median:

    python benchmarks/bench_startup.py --repos /tmp/before . --rounds 2

Never run by the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIG = {"dataset": {"name": "demo", "demo": {"size": "tiny", "seed": 0}},
          "shards": {"images_per_shard": 50},
          "models": {"tiny": {"descriptor": "tiny_image"}},
          "searches": {"exact": {"backend": "exact", "metric": "ip", "k": 10},
                       "hnsw": {"backend": "faiss", "factory": "HNSW8", "k": 10}},
          "reranks": {"labels": {"method": "label"}}}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repos", nargs="+", default=[str(REPO)], help="workflow checkouts to compare, in turns")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--imports", type=int, default=5, help="timed imports of the stages module per round")
    return parser.parse_args()


def time_process(command: list[str], env: dict[str, str], cwd: Path | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one process."""
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{command} failed:\n{output.decode(errors='replace')[-4000:]}")
    return time.perf_counter() - start, usage.ru_maxrss / 1024


def with_source(repo: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(repo / "src"), os.environ.get("PYTHONPATH")]))}


def job_times(workdir: Path) -> dict[str, list[float]]:
    """Rule -> wall seconds of each of its jobs, from Snakemake's metadata (one record per output)."""
    jobs = {}
    for record in (workdir / ".snakemake" / "metadata").iterdir():
        meta = json.loads(record.read_text())
        jobs[meta["job_hash"], meta["rule"]] = meta["endtime"] - meta["starttime"]
    by_rule = defaultdict(list)
    for (_, rule), seconds in jobs.items():
        by_rule[rule].append(seconds)
    return by_rule


def run_demo(repo: Path, base: Path, label: str) -> dict[str, list[float]]:
    workdir = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=base))
    (workdir / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    time_process([sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), "-d", str(workdir),
                  "--configfile", str(workdir / "config.yaml"), "--cores", "1", "--quiet", "all"], with_source(repo))
    return job_times(workdir)


def summary(values: list[float]) -> str:
    return f"{min(values):6.2f} / {statistics.median(values):<6.2f}"


def main() -> None:
    args = parse_args()
    repos = [Path(r).resolve() for r in args.repos]
    imports = {repo: [] for repo in repos}
    jobs = {repo: defaultdict(list) for repo in repos}
    with tempfile.TemporaryDirectory(prefix="vprflow-startup-") as base:
        for round_ in range(args.rounds):
            for _ in range(args.imports):
                for repo in repos:
                    imports[repo].append(time_process([sys.executable, "-c", "import vprflow.stages"],
                                                      with_source(repo), cwd=Path(base)))
            for index, repo in enumerate(repos):
                for rule, seconds in run_demo(repo, Path(base), f"r{round_}-{index}").items():
                    jobs[repo][rule].extend(seconds)
    print(f"import vprflow.stages in a fresh interpreter, {args.rounds * args.imports} times per checkout, "
          "min / median:")
    for repo in repos:
        seconds, rss = zip(*imports[repo])
        print(f"  {str(repo):<40} {summary(seconds)} s   peak RSS {summary(rss)} MiB")
    print(f"\njob wall time on the tiny demo (--cores 1), seconds, min / median over {args.rounds} run(s):")
    rules = sorted({rule for by_rule in jobs.values() for rule in by_rule} - {"all"})
    print(f"{'rule':<16} {'jobs':>5} " + " ".join(f"{str(repo)[-24:]:>24}" for repo in repos))
    for rule in rules:
        cells = [summary(jobs[repo][rule]) if jobs[repo][rule] else "-" for repo in repos]
        print(f"{rule:<16} {len(jobs[repos[0]][rule]) // args.rounds:>5} " + " ".join(f"{c:>24}" for c in cells))
    totals = [sum(sum(v) for r, v in jobs[repo].items() if r != "all") / args.rounds for repo in repos]
    print(f"{'all jobs, summed':<22} " + " ".join(f"{t:>24.1f}" for t in totals))


if __name__ == "__main__":
    main()
