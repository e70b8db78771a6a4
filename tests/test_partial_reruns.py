"""Partial reruns: after a full run, a config or data change plans only the jobs it touches.

Two models and two searches on the tiny demo (two shards). Each case changes one thing and
reads the jobs (rule and wildcards) that `snakemake --dry-run` would execute. The expected
set is what `--forcerun` of the first touched jobs plans with the config unchanged: those
jobs and everything downstream of them, nothing else.
"""

from __future__ import annotations

import re
import shutil
from collections import Counter
from dataclasses import dataclass

import pandas as pd
import pytest

from conftest import run_snakemake, write_config

pytestmark = pytest.mark.e2e

MODELS = ("tiny16", "tiny32")
SEARCHES = ("exact", "l2")
TWO_BY_TWO = {
    "dataset": {"name": "demo", "demo": {"size": "tiny", "seed": 0}},
    "shards": {"images_per_shard": 50},
    "models": {"tiny16": {"descriptor": "tiny_image", "width": 16, "height": 12},
               "tiny32": {"descriptor": "tiny_image"}},
    "searches": {"exact": {"backend": "exact", "metric": "ip", "k": 10},
                 "l2": {"backend": "exact", "metric": "l2", "k": 10}},
}
SHARDS = ("0000", "0001")  # 88 listed images at 50 per shard
# Everything before the descriptors: none of it may rerun for a model or search change.
PREPARATION_RULES = {"demo_world", "listing", "manifest_shard", "manifest", "clean", "split", "ground_truth", "masks"}

JOB_HEADER = re.compile(r"^(?:local)?rule (\w+):$")
JOB_WILDCARDS = re.compile(r"^\s+wildcards: (.+)$")
JOB_TOTAL = re.compile(r"^total\s+(\d+)$")


@dataclass(frozen=True)
class Job:
    rule: str
    wildcards: tuple[tuple[str, str], ...] = ()

    def get(self, name: str) -> str | None:
        return dict(self.wildcards).get(name)

    @property
    def search(self) -> str | None:
        """The search a job belongs to: its `search` wildcard, or the first step of its `ranking`."""
        ranking = self.get("search") or self.get("ranking")
        return ranking.split("+")[0] if ranking else None


def dry_run(workdir, config, *args: str) -> Counter[Job]:
    """The jobs `snakemake --dry-run` lists, checked against the total of its "Job stats" table."""
    output = run_snakemake(workdir, config, "--dry-run", *args).stdout
    if "Nothing to be done" in output:
        return Counter()
    jobs: list[Job] = []
    total = None
    for line in output.splitlines():
        if header := JOB_HEADER.match(line):
            jobs.append(Job(header[1]))
        elif jobs and (wildcards := JOB_WILDCARDS.match(line)):
            jobs[-1] = Job(jobs[-1].rule, tuple(tuple(pair.split("=", 1)) for pair in wildcards[1].split(", ")))
        elif count := JOB_TOTAL.match(line.strip()):
            total = int(count[1])
    assert total == len(jobs), f"parsed {len(jobs)} jobs, the dry run counts {total}:\n{output}"
    return Counter(jobs)


def forced(workdir, config, *targets: str) -> Counter[Job]:
    """What rerunning ``targets`` (rules or files) and everything downstream of them plans."""
    return dry_run(workdir, config, "--forcerun", *targets)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("two_by_two")
    config = write_config(workdir, TWO_BY_TWO)
    run_snakemake(workdir, config)
    return workdir, config


def changed_config(tmp_path, section: str, name: str, **settings):
    changed = {**TWO_BY_TWO, section: {**TWO_BY_TWO[section], name: {**TWO_BY_TWO[section][name], **settings}}}
    return write_config(tmp_path, changed)


def test_no_change_plans_nothing(full_run):
    assert dry_run(*full_run) == Counter()


def test_changing_k_reruns_only_that_search(full_run, tmp_path):
    workdir, config = full_run
    jobs = dry_run(workdir, changed_config(tmp_path, "searches", "l2", k=5))
    l2_blocks = [f"results/search/{model}/l2/block_{shard}.parquet" for model in MODELS for shard in SHARDS]
    assert jobs == forced(workdir, config, *l2_blocks)
    rules = {job.rule for job in jobs}
    assert not rules & (PREPARATION_RULES | {"extract", "stack_features", "build_index"})
    assert {job.search for job in jobs if job.search} == {"l2"}
    assert {"search", "neighbours", "evaluate", "pose", "all"} <= rules


def test_changing_a_model_reruns_only_that_model(full_run, tmp_path):
    workdir, config = full_run
    jobs = dry_run(workdir, changed_config(tmp_path, "models", "tiny16", width=20))
    tiny16_shards = [f"results/features/tiny16/shard_{shard}.parquet" for shard in SHARDS]
    assert jobs == forced(workdir, config, *tiny16_shards)
    rules = {job.rule for job in jobs}
    assert not rules & PREPARATION_RULES
    assert {job.get("model") for job in jobs if job.get("model")} == {"tiny16"}
    assert {job.search for job in jobs if job.rule == "build_index"} == set(SEARCHES)
    assert {"extract", "stack_features", "search", "neighbours", "evaluate", "pose", "all"} <= rules


def test_adding_an_image_to_a_folder_dataset_reruns_from_the_listing(tiny_world, tmp_path):
    demo_root, _ = tiny_world
    root = tmp_path / "photos"
    shutil.copytree(demo_root, root)
    workdir = tmp_path / "run"
    workdir.mkdir()
    config = write_config(workdir, {**TWO_BY_TWO, "dataset": {"name": "folder", "folder": {"root": str(root)}}})
    run_snakemake(workdir, config)
    assert dry_run(workdir, config) == Counter()
    from_the_listing = forced(workdir, config, "listing")

    manifest = pd.read_csv(root / "manifest.csv", dtype=str, keep_default_na=False)
    first_database = manifest[manifest["role"] == "database"].iloc[[0]]
    shutil.copyfile(root / first_database["path"].iloc[0], root / "database" / "added.jpg")
    pd.concat([manifest, first_database.assign(path="database/added.jpg")]).to_csv(root / "manifest.csv", index=False)

    jobs = dry_run(workdir, config)
    assert jobs == from_the_listing
    assert {"listing", "manifest_shard", "extract", "search", "all"} <= {job.rule for job in jobs}
