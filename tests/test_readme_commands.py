"""The README's commands, run as it writes them, in a copy of the repository whose config.yaml
is the tiny demo (the default demo takes minutes): the first command, then the report."""

import re
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, repository_copy

pytestmark = pytest.mark.e2e

TINY = {"dataset": {"name": "demo", "demo": {"size": "tiny", "seed": 0}}, "shards": {"images_per_shard": 50},
        "models": {"tiny": {"descriptor": "tiny_image"}},
        "searches": {"exact": {"backend": "exact", "metric": "ip", "k": 10}}}


def readme_command(pattern: str) -> str:
    """The README line matching ``pattern``: its last ``&&`` part, without a trailing comment."""
    for line in (REPO / "README.md").read_text().splitlines():
        if re.search(pattern, line):
            return line.split("&&")[-1].split("  #")[0].strip()
    raise AssertionError(f"README has no line matching {pattern!r}")


def test_quick_start_then_report_as_the_readme_writes_them(tmp_path):
    # Before: after `snakemake --cores 2 results/recall.tsv`, `snakemake --report report.html` failed:
    # "File results/pictures/netvlad/exact.grid.png marked for report but does not exist".
    clone = repository_copy(tmp_path)
    (clone / "config.yaml").write_text(yaml.safe_dump(TINY))
    (clone / ".venv").symlink_to(sys.prefix)  # the environment running the tests, as the README's .venv
    first = readme_command(r"python3 -m venv \.venv && \.venv/bin/pip install -e '\.\[cpu\]' && ")
    report = readme_command(r"^\.venv/bin/snakemake --report report\.html")
    for command in (first, report):
        result = subprocess.run(command, shell=True, cwd=clone, capture_output=True, text=True)
        assert result.returncode == 0, f"{command}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert (clone / "results" / "recall.tsv").is_file()
    html = (clone / "report.html").read_text(errors="replace")
    assert "Retrieval grids" in html and "recall.tsv" in html
