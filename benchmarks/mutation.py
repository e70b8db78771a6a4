"""Mutation testing (mutmut) of the modules whose numbers users read: killed / total per
module, and every surviving mutant as a diff.

mutmut makes many small changes to the code (a ``<`` for a ``<=``, ``+ 1`` for ``+ 0``,
``min`` for ``max``, a string or a number changed), one at a time, and runs the tests that
cover the changed function; a mutant the tests do not notice "survives". The run happens
in a scratch copy of ``src/`` and ``tests/`` under ``--out`` (the working tree is never
touched), with only the fast unit tests of these modules, so it takes tens of minutes on
two cores rather than hours. Not part of CI.

    python benchmarks/mutation.py                          # every module below
    python benchmarks/mutation.py --only metrics,masks     # modules whose name holds one of these
    python benchmarks/mutation.py --tree /path/to/checkout # another checkout's code and tests
    python benchmarks/mutation.py --sample 05              # a fixed fifth of the mutants (numbers ending 0, 5)

Prints a table per module (killed, timeout, survived, no tests, not checked yet, total,
score) and writes the survivors' diffs to ``OUT/survivors.md``. The score is caught /
checked: timeouts count as caught, mutants in code that no selected test runs ("no
tests") as survivors.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from fnmatch import fnmatch
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Module:
    name: str
    path: str  # relative to the repository root
    functions: str = "*"  # glob over mutmut's names for the functions in scope
    tests: tuple[str, ...] = ()  # test files or node ids (absent files are skipped: older checkouts lack some)


METRIC_TESTS = ("tests/test_metrics_mutations.py", "tests/test_evaluate_map.py",
                "tests/test_ground_truth_search_metrics.py", "tests/test_properties.py")
MODULES = [
    Module("metrics.recall", "src/vprflow/metrics/recall.py", tests=METRIC_TESTS),
    Module("metrics.average_precision", "src/vprflow/metrics/average_precision.py", tests=METRIC_TESTS),
    Module("metrics.precision", "src/vprflow/metrics/precision.py", tests=METRIC_TESTS),
    Module("metrics.votes", "src/vprflow/metrics/votes.py", tests=METRIC_TESTS),
    Module("train.pairs (validation metrics)", "src/vprflow/train/pairs.py", "*validation_metrics*",
           tests=("tests/test_metrics_mutations.py",
                  "tests/test_train.py::test_mining_takes_the_nearest_positive_and_the_hardest_negatives")),
    Module("ground_truth", "src/vprflow/ground_truth.py",
           tests=("tests/test_truth_masks_mutations.py", "tests/test_ground_truth_search_metrics.py")),
    Module("masks", "src/vprflow/masks.py", tests=("tests/test_truth_masks_mutations.py",
                                                   "tests/test_ground_truth_search_metrics.py",
                                                   "tests/test_properties.py")),
    Module("rerank.label", "src/vprflow/rerank/label.py", tests=("tests/test_rerank.py", "tests/test_properties.py")),
    Module("rerank.expansion", "src/vprflow/rerank/expansion.py",
           tests=("tests/test_rerank.py", "tests/test_rerank_mutations.py")),
    Module("rerank.spatial", "src/vprflow/rerank/spatial.py",
           tests=("tests/test_rerank.py", "tests/test_rerank_mutations.py", "tests/test_properties.py")),
    Module("pose", "src/vprflow/pose.py",
           tests=("tests/test_pose_mutations.py", "tests/test_pose_consensus.py",
                  "tests/test_ground_truth_search_metrics.py")),
    Module("search.lopq.index (encoding)", "src/vprflow/search/lopq/index.py", "*LOPQIndex*_encode*",
           tests=("tests/test_lopq_encoding.py", "tests/test_lopq.py")),
    Module("search.lopq.index (local codes)", "src/vprflow/search/lopq/index.py", "x__local_codes*",
           tests=("tests/test_lopq_encoding.py", "tests/test_lopq.py")),
]

STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 36: "timeout", 24: "timeout",
          -24: "timeout", 152: "timeout", 255: "timeout", None: "not checked"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, default=REPO, help="checkout whose src/ and tests/ are mutated and run")
    parser.add_argument("--only", help="comma-separated parts of module names to keep")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "mutation")
    parser.add_argument("--jobs", type=int, default=2, help="mutants tested at once")
    parser.add_argument("--sample", metavar="DIGITS",
                        help="only the mutants whose number ends in one of DIGITS (05: a fixed fifth of them, "
                             "the same in any checkout of the same code)")
    parser.add_argument("--timeout-multiplier", type=float, default=3.0,
                        help="mutmut's: a mutant that loops is stopped after 2 x this x (its tests' CPU seconds + 5)")
    parser.add_argument("--report", action="store_true",
                        help="no run: the table and survivors of the run already in --out (finished or not)")
    parser.add_argument("--examples", type=int, default=25,
                        help="hypothesis examples per property test (HYPOTHESIS_MAX_EXAMPLES) during the run")
    return parser.parse_args()


def scratch_copy(tree: Path, out: Path, modules: list[Module], timeout_multiplier: float) -> list[str]:
    """Copy ``src/`` and ``tests/`` into ``out`` with a pyproject.toml that configures mutmut
    for ``modules``; returns the test files selected."""
    if out.exists():
        shutil.rmtree(out)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis", "mutants")
    for part in ("src", "tests"):
        shutil.copytree(tree / part, out / part, ignore=ignore)
    tests = sorted({t for module in modules for t in module.tests if (tree / t.partition("::")[0]).exists()})
    pyproject = (tree / "pyproject.toml").read_text()
    pyproject = re.sub(r"\n\[tool\.mutmut\][^\[]*", "\n", pyproject)
    pyproject += "\n[tool.mutmut]\n" + "\n".join([
        'source_paths = ["src"]',
        f"only_mutate = {json.dumps([module.path for module in modules])}",
        f"pytest_add_cli_args_test_selection = {json.dumps(tests)}",
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q"]',
        "use_git_change_detection = false",
        f"timeout_multiplier = {timeout_multiplier}",  # a mutant gets 2 x this x (its tests' seconds + 5) of CPU
        "timeout_constant = 5.0",
    ]) + "\n"
    (out / "pyproject.toml").write_text(pyproject)
    return tests


def module_name(module: Module) -> str:
    """mutmut's dotted prefix of the mutants of ``module`` (``vprflow.metrics.recall.``)."""
    return Path(module.path).relative_to("src").with_suffix("").as_posix().replace("/", ".") + "."


def pattern(module: Module, sample: str | None) -> str:
    """mutmut's glob for the mutants of ``module`` in scope (and in the sample)."""
    return module_name(module) + module.functions + (f"__mutmut_*[{sample}]" if sample else "")


def in_scope(module: Module, mutant: str, sample: str | None) -> bool:
    return fnmatch(mutant, pattern(module, sample))


def run_mutmut(args: argparse.Namespace, modules: list[Module], env: dict[str, str]) -> int:
    """A fresh scratch copy of ``--tree`` and ``mutmut run`` in it; mutmut's exit status."""
    tests = scratch_copy(args.tree.resolve(), args.out, modules, args.timeout_multiplier)
    (args.out / "tmp").mkdir()
    patterns = [pattern(m, args.sample) for m in modules]
    print(f"mutating {len(modules)} module(s) of {args.tree.resolve()} with {len(tests)} test file(s):",
          *tests, sep="\n  ", flush=True)
    start = time.perf_counter()
    with open(args.out / "mutmut.log", "w") as log:
        run = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(args.jobs), *patterns],
                             cwd=args.out, env=env, stdout=log, stderr=subprocess.STDOUT)
    print(f"mutmut run: exit {run.returncode} after {time.perf_counter() - start:.0f} s "
          f"(log: {args.out / 'mutmut.log'})")
    return run.returncode


DIFFS = """
import json, sys
from mutmut.mutation.diff_apply import get_diff_for_mutant
for name, path in json.load(sys.stdin):
    print(f"```diff\\n# {name}\\n{get_diff_for_mutant(name, path=path)}\\n```\\n")
"""


def write_diffs(out: Path, mutants: list[tuple[str, str]], env: dict[str, str]) -> None:
    """``out/survivors.md``: the diff of each (mutant name, source path), by mutmut, in one process."""
    with open(out / "survivors.md", "w") as report:
        subprocess.run([sys.executable, "-c", DIFFS], input=json.dumps(mutants), cwd=out, env=env, stdout=report,
                       text=True, check=True)


def main() -> int:
    args = parse_args()
    modules = [m for m in MODULES if args.only is None or any(part in m.name for part in args.only.split(","))]
    env = {**os.environ, "TMPDIR": str(args.out / "tmp"), "NUMBA_CACHE_DIR": str(args.out / "numba"),
           "HYPOTHESIS_MAX_EXAMPLES": str(args.examples)}
    env.pop("PYTHONPATH", None)
    returncode = 0
    if not args.report:
        returncode = run_mutmut(args, modules, env)
    statuses: dict[str, str] = {}
    for meta in (args.out / "mutants").rglob("*.py.meta"):
        statuses.update({name: STATUS.get(code, "suspicious")
                         for name, code in json.loads(meta.read_text())["exit_code_by_key"].items()})
    print(f"\n| module | killed | timeout | survived | no tests | not checked | other | total | score |\n"
          f"|{' --- |' * 9}")
    survivors = []
    for module in modules:
        counts = Counter(status for name, status in statuses.items() if in_scope(module, name, args.sample))
        total = sum(counts.values())
        caught = counts["killed"] + counts["timeout"]
        checked = total - counts["not checked"]
        other = checked - caught - counts["survived"] - counts["no tests"]
        score = f"{caught}/{checked} = {caught / checked:.0%}" if checked else "-"
        print(f"| {module.name} | {counts['killed']} | {counts['timeout']} | {counts['survived']} | "
              f"{counts['no tests']} | {counts['not checked']} | {other} | {total} | {score} |")
        survivors += sorted((module, name) for name, status in statuses.items()
                            if in_scope(module, name, args.sample) and status in ("survived", "no tests"))
    write_diffs(args.out, [(name, module.path) for module, name in survivors], env)
    print(f"\n{len(survivors)} surviving mutant(s), diffs in {args.out / 'survivors.md'}")
    return returncode


if __name__ == "__main__":
    sys.exit(main())
