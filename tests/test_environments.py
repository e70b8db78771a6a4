"""The conda environments in envs/ cannot drift from pyproject.toml: same packages, same
versions; and where conda can reach its channels, Snakemake really creates them."""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from conftest import REPO, run_snakemake, write_config

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
# Jobs import Snakemake's script support from the scheduler's own installation: the
# environments of the jobs need no Snakemake of their own.
SCHEDULER_ONLY = {"snakemake"}
ENVIRONMENTS = {"cpu.yaml": "cpu", "gpu.yaml": "gpu"}  # file -> the pyproject extra it stands for


def requirements(specs) -> dict[str, SpecifierSet]:
    parsed = [Requirement(spec) for spec in specs]
    return {canonicalize_name(r.name): r.specifier for r in parsed}


def environment_packages(path) -> tuple[dict[str, SpecifierSet], str]:
    """(package -> versions, python version) of a conda environment file, its conda and pip parts together."""
    dependencies = yaml.safe_load(path.read_text())["dependencies"]
    conda = [d for d in dependencies if isinstance(d, str)]
    pip = [spec for d in dependencies if isinstance(d, dict) for spec in d.get("pip", [])]
    python = next(d.split("=", 1)[1] for d in conda if d.startswith("python="))
    return requirements([d for d in conda if d != "pip" and not d.startswith("python=")] + pip), python


@pytest.mark.parametrize("file, extra", ENVIRONMENTS.items())
def test_environments_name_the_packages_and_versions_of_pyproject(file, extra):
    expected = requirements(PYPROJECT["dependencies"] + PYPROJECT["optional-dependencies"][extra])
    expected = {name: versions for name, versions in expected.items() if name not in SCHEDULER_ONLY}
    packages, python = environment_packages(REPO / "envs" / file)
    assert set(packages) == set(expected), f"envs/{file} lacks {sorted(set(expected) - set(packages))}, " \
                                           f"has more: {sorted(set(packages) - set(expected))}"
    differing = {name: (str(packages[name]), str(versions)) for name, versions in expected.items()
                 if packages[name] != versions}
    assert not differing, f"envs/{file} versions differ from pyproject.toml: {differing}"
    assert Version(python) in SpecifierSet(PYPROJECT["requires-python"])


def test_the_two_faiss_extras_exclude_each_other():
    """Both wheels install the same `faiss` package: one environment has exactly one of them."""
    extras = PYPROJECT["optional-dependencies"]
    faiss = {extra: {name for name in requirements(extras[extra]) if name.startswith("faiss")} for extra in extras}
    assert faiss["cpu"] == {"faiss-cpu"} and faiss["gpu"] == {"faiss-gpu"}
    assert not {name for name in requirements(PYPROJECT["dependencies"]) if name.startswith("faiss")}
    assert not faiss["test"]


def conda_unavailable(timeout: float = 120) -> str | None:
    """Why the environments cannot be solved here (None: a conda frontend reaches conda-forge)."""
    frontend = shutil.which("mamba") or shutil.which("conda")
    if frontend is None:
        return "no conda or mamba on PATH: `snakemake --sdm conda` needs one (Miniforge brings both)"
    probe = [frontend, "search", "--override-channels", "-c", "conda-forge", "--json", "python=3.11"]
    try:
        result = subprocess.run(probe, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"`{' '.join(probe)}` did not answer within {timeout:.0f} s: conda-forge is unreachable from here"
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines() or [f"exit status {result.returncode}"]
        return f"{os.path.basename(frontend)} cannot reach conda-forge: {lines[-1][:300]}"
    return None


def test_the_skip_reason_names_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert conda_unavailable().startswith("no conda or mamba on PATH")
    fake = tmp_path / "conda"
    fake.write_text("#!/bin/sh\necho 'CondaHTTPError: HTTP 000 CONNECTION FAILED for url <conda-forge>' >&2\nexit 1\n")
    fake.chmod(0o755)
    assert conda_unavailable() == ("conda cannot reach conda-forge: "
                                   "CondaHTTPError: HTTP 000 CONNECTION FAILED for url <conda-forge>")


@pytest.mark.e2e
def test_snakemake_creates_both_environments(tmp_path):
    """A real solve and install of envs/cpu.yaml and envs/gpu.yaml (minutes; needs conda-forge and PyPI)."""
    reason = conda_unavailable()
    if reason:
        pytest.skip(reason)
    config = write_config(tmp_path, {"dataset": {"name": "demo", "demo": {"size": "tiny", "seed": 0}},
                                     "compute": {"gpu_jobs": True},  # extraction in the GPU environment
                                     "models": {"tiny": {"descriptor": "tiny_image"}}})
    frontend = "mamba" if shutil.which("mamba") else "conda"
    run_snakemake(tmp_path, config, "--sdm", "conda", "--conda-create-envs-only", "--conda-frontend", frontend,
                  "--conda-prefix", str(tmp_path / "envs"))
    created = [p for p in (tmp_path / "envs").iterdir() if (p / "conda-meta").is_dir()]
    assert len(created) == 2, created
