"""The workflow passes `snakemake --lint` and `snakefmt --check` (settings from pyproject.toml)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, run_snakemake, write_config

WORKFLOW_FILES = [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]


def test_snakemake_lint_is_clean(tmp_path):
    config = write_config(tmp_path, {"dataset": {"name": "demo", "demo": {"size": "tiny"}}})
    result = run_snakemake(tmp_path, config, "--lint", check=False)
    assert result.returncode == 0, f"snakemake --lint:\n{result.stdout}\n{result.stderr}"


def test_snakefmt_check_is_clean():
    snakefmt = shutil.which("snakefmt", path=str(Path(sys.executable).parent)) or shutil.which("snakefmt")
    if snakefmt is None:
        pytest.skip("snakefmt is not installed (pip install snakefmt)")
    result = subprocess.run([snakefmt, "--check", "--diff", *map(str, WORKFLOW_FILES)],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, f"snakefmt --check --diff:\n{result.stdout}\n{result.stderr}"
