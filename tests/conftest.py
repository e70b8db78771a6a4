import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import vprflow  # noqa: F401  before any test imports faiss: picks its BLAS kernels (vprflow.blas)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


_REPORT: list[str] = []


@pytest.fixture
def ci_report():
    """Lines a test wants in the run's summary (SLURM job states, figures on real data)."""
    return _REPORT.append


def pytest_terminal_summary(terminalreporter):
    if _REPORT:
        terminalreporter.section("vprflow figures")
        for line in _REPORT:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """The tiny demo world, generated once per test session."""
    from vprflow.datasets.demo import generate

    root = tmp_path_factory.mktemp("tiny_world")
    listing = generate(root, "tiny", seed=0)
    return root, listing


def write_config(workdir: Path, config: dict) -> Path:
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_snakemake(workdir: Path, config_path: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the repository's workflow in ``workdir`` with ``config_path``."""
    command = SNAKEMAKE + ["-s", str(REPO / "Snakefile"), "-d", str(workdir), "--configfile", str(config_path),
                           "--cores", "2", *args]
    result = subprocess.run(command, capture_output=True, text=True, cwd=workdir)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


def planned_jobs(workdir: Path, config_path: Path, *targets: str) -> dict[str, int]:
    """Rule -> number of jobs a dry run (of ``targets``, default all) would execute (empty when nothing is to be done)."""
    result = run_snakemake(workdir, config_path, *targets, "--dry-run", "--quiet", "rules")
    text = result.stdout + result.stderr
    jobs: dict[str, int] = {}
    if "Nothing to be done" in text:
        return jobs
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Job stats"))
    for line in lines[start + 3:]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit() or parts[0] == "total":
            break
        jobs[parts[0]] = int(parts[1])
    return jobs


def needs_shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} is absent (development data, not part of a clone)")
    return path


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def neighbours_from(lists: dict[str, list[str]]) -> pd.DataFrame:
    """A neighbours table from ranked id lists per query (scores fall with rank)."""
    rows = [
        (query, rank, db_id, np.float32(1.0 - rank / 10))
        for query, ranked in lists.items()
        for rank, db_id in enumerate(ranked)
    ]
    return pd.DataFrame(rows, columns=["query_id", "rank", "db_id", "score"])


def clean_score_shard(manifest, root, shard, settings, scores, batch_size=32, workers=0, method_record=None):
    """The clean_score stage, after clean_method when no method record is given (as the workflow runs them)."""
    from vprflow import stages

    if method_record is None:
        method_record = Path(scores).with_name(Path(scores).stem + ".method.json")
        stages.clean_method(settings=settings, method=method_record)
    stages.clean_score(manifest=manifest, method=method_record, settings=settings, shard=shard, root=root,
                       batch_size=batch_size, workers=workers, scores=scores)


def clean_decide(manifest, scores, root, settings, clean_table, sheet, report):
    """The clean stage: thresholds and duplicate groups over all scored shards."""
    from vprflow import stages

    return stages.clean(manifest=manifest, scores=scores, settings=settings, root=root, clean_table=clean_table,
                        sheet=sheet, report=report)


def repository_copy(tmp_path):
    """The tracked files of the repository, as a user's clone has them (config.yaml: the demo)."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True)
    if files.returncode != 0:
        pytest.skip(f"{REPO} is not a git checkout: no list of the files a clone has")
    clone = tmp_path / "clone"
    for name in filter(None, files.stdout.split("\0")):
        if (REPO / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, clone / name)
    return clone


def textured_image(seed: int, height: int = 240, width: int = 320) -> np.ndarray:
    """Blurred noise plus random filled shapes (RGB): plenty of corners and blobs for local features."""
    import cv2

    rng = np.random.default_rng(seed)
    image = cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (0, 0), 2.0)
    for _ in range(40 * height * width // (240 * 320)):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        if rng.random() < 0.5:
            cv2.circle(image, (x, y), int(rng.integers(4, 25)), colour, -1)
        else:
            cv2.rectangle(image, (x, y), (x + int(rng.integers(5, 40)), y + int(rng.integers(5, 40))), colour, -1)
    return image


@pytest.fixture(scope="module")
def tiny_tables(tiny_world, tmp_path_factory):
    """(root, folder, manifest): the manifest, clean and split tables of the tiny demo world in
    ``folder``, as the workflow writes them (every readable image kept; 60/20/20 grouped split)."""
    import pandas as pd

    from vprflow.split import make_split

    root, listing = tiny_world
    good = listing[~listing["truth_corrupt"]].reset_index(drop=True)
    good.insert(0, "image_id", [f"img{i:03d}" for i in range(len(good))])
    good.insert(1, "shard", 0)
    folder = tmp_path_factory.mktemp("tables")
    good.to_parquet(folder / "manifest.parquet", index=False)
    pd.DataFrame({"image_id": good["image_id"], "keep": True, "reason": ""}).to_parquet(folder / "clean.parquet")
    split = make_split(good, {"train": 0.6, "val": 0.2, "test": 0.2, "index": 0.0}, "grouped", 40.0, 0,
                       ["test"], ["test", "index"])
    split.to_parquet(folder / "split.parquet", index=False)
    return root, folder, good
