"""Settings checks and job start-up stay light: the scheduler checks every setting without
importing torch (or numba, or matplotlib), and importing the stages module, which every
job does, imports none of the heavy libraries; each stage imports what it needs itself.
Measured in benchmarks/bench_dryrun.py and benchmarks/bench_startup.py."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml

from conftest import REPO

HEAVY = ("torch", "torchvision", "numba", "matplotlib", "open_clip")


def loaded_after(code: str, watched: tuple[str, ...] = HEAVY) -> set[str]:
    """The ``watched`` modules a fresh interpreter holds after running ``code``, which may exit."""
    script = (
        "import atexit, json, sys\n"
        f"atexit.register(lambda: print('LOADED=' + json.dumps(sorted(m for m in {watched!r} if m in sys.modules))))\n"
        + code
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
    lines = [line for line in result.stdout.splitlines() if line.startswith("LOADED=")]
    assert lines, f"no report ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return set(json.loads(lines[-1].removeprefix("LOADED=")))


def test_the_scheduler_checks_every_setting_without_heavy_imports(tmp_path):
    """A dry run of the demo config (CNN models, RootSIFT-VLAD, faiss) plus both LOPQ variants."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["searches"]["lopq"] = {"backend": "lopq", "coarse_k": 8, "m": 8, "k": 40}
    config["searches"]["lopq_ivf"] = {"backend": "lopq", "coarse": "ivf", "coarse_k": 8, "m": 8, "k": 40}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    arguments = ["-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "--configfile", str(tmp_path / "config.yaml"),
                 "--dry-run", "--quiet", "rules"]
    code = f"from snakemake.cli import main\nmain({arguments!r})\n"
    assert loaded_after(code) == set()
    # the same check sees a heavy import where one happens: a model's settings that need torch to load
    assert "torch" in loaded_after("from vprflow.descriptors import load\nload({'descriptor': 'cnn', 'weights': 'none'})")


def test_importing_the_stages_imports_no_heavy_library():
    watched = HEAVY + ("faiss", "cv2")
    assert loaded_after("import vprflow.stages", watched) == set()
    # what a stage that draws pictures imports when it runs
    assert loaded_after("import vprflow.stages\nfrom vprflow import viz", watched) == {"matplotlib", "cv2"}
