"""Search-time settings never rebuild an index: every backend declares the settings its
index is built from (``BUILD_SETTINGS``); the build rule's params are those alone."""

from __future__ import annotations

import re

import pytest

from conftest import run_snakemake, write_config
from vprflow.search import BACKENDS, COMMON_SETTINGS, build_settings, settings_of

# A changed, valid value for every setting a backend reads at search time. A backend
# setting missing here (and not declared a build setting) fails the first test: a new
# setting must be declared one or the other.
SEARCH_TIME_CHANGES = {
    "exact": {"k": 7, "metric": "l2", "query_batch": 17},
    "faiss": {"k": 7, "nprobe": 3, "ef_search": 24, "query_batch": 17},
    "lopq": {"k": 7, "candidates": 300, "rerank": 20, "metric": "l2"},
}
# A changed value of each build setting: these must rebuild.
BUILD_CHANGES = {
    "exact": {},
    "faiss": {"factory": "IVF2,Flat", "metric": "l2", "train_size": 40, "seed": 1},
    "lopq": {"coarse": "ivf", "coarse_k": 3, "m": 8, "subquantizer_k": 16, "train_size": 40, "seed": 1,
             "refinements": 1},
}


@pytest.mark.parametrize("backend", BACKENDS.names())
def test_every_setting_is_read_either_at_build_or_at_search_time(backend):
    module = BACKENDS.get(backend)
    assert set(module.BUILD_SETTINGS) <= set(module.DEFAULTS)
    search_time = set(module.DEFAULTS) - set(module.BUILD_SETTINGS) | set(COMMON_SETTINGS)
    assert set(SEARCH_TIME_CHANGES[backend]) == search_time
    assert set(BUILD_CHANGES[backend]) == set(module.BUILD_SETTINGS)


@pytest.mark.parametrize("backend", BACKENDS.names())
def test_only_build_settings_change_what_the_index_is_built_from(backend):
    base = settings_of("s", {"backend": backend, "k": 10})
    for key, value in SEARCH_TIME_CHANGES[backend].items():
        changed = settings_of("s", {**base, key: value})
        assert changed[key] != base[key]
        assert build_settings(changed) == build_settings(base), key
    for key, value in BUILD_CHANGES[backend].items():
        changed = {**base, key: value}
        assert build_settings(changed) != build_settings(base), key
    assert build_settings(base)["backend"] == backend


# The tiny demo with one search per backend (and both LOPQ coarse quantizers), sized for
# its 60-odd database vectors of 192 dimensions: every search visits every cell, so each
# query gets its k neighbours (the evaluation wants full lists).
SEARCHES = {
    "exact": {"backend": "exact", "k": 10},
    "ivf": {"backend": "faiss", "factory": "IVF4,Flat", "nprobe": 4, "k": 10},
    "hnsw": {"backend": "faiss", "factory": "HNSW8", "k": 10},
    "lopq": {"backend": "lopq", "coarse_k": 2, "m": 4, "subquantizer_k": 8, "candidates": 500, "k": 10},
    "lopq_ivf": {"backend": "lopq", "coarse": "ivf", "coarse_k": 3, "m": 4, "subquantizer_k": 8, "candidates": 500,
                 "k": 10},
}
CONFIG = {"dataset": {"name": "demo", "demo": {"size": "tiny", "seed": 0}},
          "shards": {"images_per_shard": 50},
          "models": {"tiny": {"descriptor": "tiny_image", "width": 8, "height": 8}},
          "searches": SEARCHES}
JOB_HEADER = re.compile(r"^(?:local)?rule (\w+):$")
JOB_WILDCARDS = re.compile(r"^\s+wildcards: (.+)$")


def planned(workdir, config) -> set[tuple[str, str]]:
    """(rule, search) of every job a dry run plans; the search is "" for jobs without one."""
    jobs: list[tuple[str, str]] = []
    for line in run_snakemake(workdir, config, "--dry-run").stdout.splitlines():
        if header := JOB_HEADER.match(line):
            jobs.append((header[1], ""))
        elif jobs and (wildcards := JOB_WILDCARDS.match(line)):
            found = dict(pair.split("=", 1) for pair in wildcards[1].split(", "))
            jobs[-1] = (jobs[-1][0], (found.get("search") or found.get("ranking", "")).split("+")[0])
    return set(jobs)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("search_settings")
    config = write_config(workdir, CONFIG)
    run_snakemake(workdir, config)
    return workdir


def searches_changed(changes: dict[str, dict]) -> dict:
    return {**CONFIG, "searches": {name: {**settings, **changes.get(name, {})} for name, settings in SEARCHES.items()}}


@pytest.mark.e2e
def test_search_time_settings_plan_searches_but_no_index_build(full_run, tmp_path):
    """Every search-time setting of every search changed at once: each search reruns, no index is rebuilt."""
    changes = {name: dict(SEARCH_TIME_CHANGES[settings["backend"]]) for name, settings in SEARCHES.items()}
    changes["hnsw"].pop("nprobe")  # an IVF setting; HNSW reads ef_search
    changes["ivf"].pop("ef_search")
    jobs = planned(full_run, write_config(tmp_path, searches_changed(changes)))
    assert {search for rule, search in jobs if rule == "search"} == set(SEARCHES)
    assert not {job for job in jobs if job[0] == "build_index"}


@pytest.mark.e2e
def test_a_build_setting_plans_that_index_build(full_run, tmp_path):
    jobs = planned(full_run, write_config(tmp_path, searches_changed({"lopq_ivf": {"refinements": 1},
                                                                      "ivf": {"train_size": 40}})))
    assert {search for rule, search in jobs if rule == "build_index"} == {"lopq_ivf", "ivf"}
