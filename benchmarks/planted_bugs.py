"""The bugs of issue 19's audit (and of later changes), planted one at a time: which tests catch each.

Each bug is a one-line change to the library (an off-by-one, a flipped sign, a dropped
label). For each, the script copies ``src/`` and ``tests/`` to a scratch folder, plants
the bug there, runs the tests that guard that code, and lists the tests that failed; the
working tree is never touched. A clean run comes first: every listed test must pass
without a bug, or the table means nothing.

    python benchmarks/planted_bugs.py                 # all bugs, a table at the end
    python benchmarks/planted_bugs.py --only recall   # the bugs whose function matches

Exit status 1 when some bug is caught by no test (or the clean run fails). A bug whose
line no longer exists (the code changed) is reported as such, to be updated here.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

METRIC_TESTS = ["tests/test_metrics_mutations.py", "tests/test_ground_truth_search_metrics.py",
                "tests/test_evaluate_map.py", "tests/test_properties.py"]
TRAIN_TESTS = ["tests/test_metrics_mutations.py", "tests/test_train.py::test_mining_takes_the_nearest_positive_and_the_hardest_negatives"]
TRUTH_TESTS = ["tests/test_truth_masks_mutations.py", "tests/test_ground_truth_search_metrics.py", "tests/test_properties.py"]
RERANK_TESTS = ["tests/test_rerank_mutations.py", "tests/test_rerank.py", "tests/test_properties.py"]
LOPQ_TESTS = ["tests/test_lopq_encoding.py", "tests/test_lopq.py"]
VERIFICATION_TESTS = [*RERANK_TESTS, "tests/test_local_features.py"]
FUSION_TESTS = [f"tests/test_fusion.py::{name}" for name in (  # not the config check: the scratch copy has no schemas/
    "test_within_the_top_r_no_image_enters_from_below_and_the_rest_keeps_its_order",
    "test_the_step_takes_each_model_s_weight_and_the_own_weight_otherwise")]


@dataclass(frozen=True)
class Bug:
    function: str
    description: str
    path: str
    correct: str
    planted: str
    tests: list[str]


BUGS = [
    Bug("metrics.recall.recall_at", "first hit counted at `<= n` (off by one)", "src/vprflow/metrics/recall.py",
        "float(np.mean(first < n))", "float(np.mean(first <= n))", METRIC_TESTS),
    Bug("metrics.recall.recall_at", "rank of the last hit instead of the first", "src/vprflow/metrics/recall.py",
        'hits.groupby("query_id")["rank"].min()', 'hits.groupby("query_id")["rank"].max()', METRIC_TESTS),
    Bug("tables.POSITIVE_LABELS", "`hard` dropped from the positive labels", "src/vprflow/tables.py",
        'POSITIVE_LABELS = ("positive", "easy", "hard")', 'POSITIVE_LABELS = ("positive", "easy")', METRIC_TESTS),
    Bug("train.pairs.validation_metrics", "`<= n`", "src/vprflow/train/pairs.py",
        "float(np.mean(first_hit < n))", "float(np.mean(first_hit <= n))", TRAIN_TESTS),
    Bug("train.pairs.validation_metrics", "anchor not excluded from its own ranking", "src/vprflow/train/pairs.py",
        "& (order != anchor)]", "]", TRAIN_TESTS),
    Bug("masks.build_masks", "minor class `<=` instead of `<`", "src/vprflow/masks.py",
        "sizes[sizes < min_class_size]", "sizes[sizes <= min_class_size]", TRUTH_TESTS),
    Bug("ground_truth.by_radius", "distance `<` instead of `<=`", "src/vprflow/ground_truth.py",
        "axis=1) <= radius_m", "axis=1) < radius_m", TRUTH_TESTS),
    Bug("ground_truth.build_ground_truth", 'computed label overrides the dataset\'s own (`keep="last"`)',
        "src/vprflow/ground_truth.py", 'keep="first")', 'keep="last")', TRUTH_TESTS),
    Bug("rerank.expansion._expand", "negative similarities no longer clamped to 0", "src/vprflow/rerank/expansion.py",
        "np.maximum(similarity, 0.0) ** alpha", "similarity ** alpha", RERANK_TESTS),
    Bug("local.verification.verified_ranking", "inlier bonus not capped at max_inliers",
        "src/vprflow/local/verification.py", "np.minimum(inliers, settings[\"max_inliers\"]) / settings",
        "inliers / settings", VERIFICATION_TESTS),
    Bug("local.verification.is_verified", "chance level must be exceeded (`>`), not reached",
        "src/vprflow/local/verification.py", "above_chance = inliers >= settings",
        "above_chance = inliers > settings", VERIFICATION_TESTS),
    Bug("rerank.fusion.fuse_rankings", "re-ranked ranking normalised over its whole list, not its top R",
        "src/vprflow/rerank/fusion.py", "own = first if top is None else first[top]", "own = first",
        [*FUSION_TESTS, *RERANK_TESTS]),
    Bug("tables.top_reordered", "rows below R may rise into the top R (no offset of 1)", "src/vprflow/tables.py",
        "np.where(top, 1.0 + head_values,", "np.where(top, head_values,", [*FUSION_TESTS, *VERIFICATION_TESTS]),
    Bug("search.lopq.index._local_codes", "`+ local_mean` instead of `-`", "src/vprflow/search/lopq/index.py",
        "x - centroids[assignment] - means[assignment]", "x - centroids[assignment] + means[assignment]", LOPQ_TESTS),
    Bug("networks.pixels._area_normalised", "sums rounded half up, not half to even as OpenCV rounds",
        "src/vprflow/networks/pixels.py", "np.rint(total[e])", "np.floor(total[e] + np.float32(0.5))",
        ["tests/test_pixels.py"]),
    Bug("rerank.applies_to", "a step with apply_to re-ranks the models it does not name",
        "src/vprflow/rerank/__init__.py", "return chosen is None or model in chosen",
        "return chosen is None or model not in chosen", ["tests/test_rerank_mutations.py"]),
    Bug("descriptors.sift.detection_scale", "small images enlarged by a power of two rounded down (192 px stays 1x)",
        "src/vprflow/descriptors/sift.py", "2.0 ** math.ceil(math.log2(", "2.0 ** math.floor(math.log2(",
        ["tests/test_local_features.py"]),
    Bug("images.map_batches", "the streams start one batch late: the second batch is lost",
        "src/vprflow/images.py", "_in_streams(dataset, starts[1:],", "_in_streams(dataset, starts[2:],",
        ["tests/test_extract.py"]),
    Bug("images._in_streams", "every stream runs torch on all the job's threads (oversubscribed cores)",
        "src/vprflow/images.py", "torch.set_num_threads(threads // streams)", "torch.set_num_threads(threads)",
        ["tests/test_extract.py"]),
    Bug("images._in_streams", "torch's thread count not put back after the streams",
        "src/vprflow/images.py", "        torch.set_num_threads(operator_threads)", "        pass",
        ["tests/test_extract.py"]),
    Bug("networks.pixels._area_taps", "a partly covered first source pixel left out", "src/vprflow/networks/pixels.py",
        "if first - start > 1e-3:", "if first - start > 0.5:", ["tests/test_pixels.py"]),
    Bug("heap.keep_freed_memory", "threads keep their own arenas (which map blocks over 64 MiB anyway)",
        "src/vprflow/heap.py", "(M_TRIM_THRESHOLD, KEPT_BYTES), (M_ARENA_MAX, 1)):",
        "(M_TRIM_THRESHOLD, KEPT_BYTES)):", ["tests/test_heap.py"]),
    Bug("heap.keep_freed_memory", "large blocks still mapped on their own", "src/vprflow/heap.py",
        "((M_MMAP_MAX, 0),", "((M_MMAP_MAX, 65536),", ["tests/test_heap.py"]),
    Bug("vprflow (package import)", "freed memory kept only when a stage starts, after numpy's threads",
        "src/vprflow/__init__.py", "choose_openblas_core()\nkeep_freed_memory()", "choose_openblas_core()",
        ["tests/test_heap.py"]),
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="plant only the bugs whose function contains this text")
    parser.add_argument("--tree", type=Path, default=REPO, help="the source tree to copy (default: this one)")
    return parser.parse_args()


def copy_tree(tree: Path, scratch: Path) -> Path:
    target = scratch / "tree"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis")
    for part in ("src", "tests"):
        shutil.copytree(tree / part, target / part, ignore=ignore)
    shutil.copy(tree / "pyproject.toml", target / "pyproject.toml")
    return target


def run_tests(tree: Path, tests: list[str], scratch: Path) -> tuple[list[str], list[str], float]:
    """(failed tests, passed tests, seconds) of ``tests`` run in ``tree`` against its own ``src``."""
    report = scratch / "report.xml"
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "NUMBA_CACHE_DIR": str(scratch / "numba")}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
               f"--basetemp={scratch / 'pytest'}", *tests]
    start = time.perf_counter()
    subprocess.run(command, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    failed, passed = [], []
    for case in ElementTree.parse(report).iter("testcase"):
        name = f"{case.get('classname', '').rpartition('.')[2]}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(name)
        elif case.find("skipped") is None:
            passed.append(name)
    return failed, passed, seconds


def main() -> int:
    args = parse_args()
    bugs = [bug for bug in BUGS if args.only is None or args.only in bug.function]
    with tempfile.TemporaryDirectory(prefix="planted_bugs_") as folder:
        scratch = Path(folder)
        tree = copy_tree(args.tree, scratch)
        tests = sorted({test for bug in bugs for test in bug.tests})
        failed, passed, seconds = run_tests(tree, tests, scratch)
        print(f"clean run: {len(passed)} passed, {len(failed)} failed in {seconds:.0f} s", flush=True)
        if failed or not passed:
            print("the tests must pass without a planted bug first:", *failed, sep="\n  ")
            return 1
        rows, missed = [], 0
        for bug in bugs:
            path = tree / bug.path
            source = path.read_text()
            if source.count(bug.correct) != 1:
                rows.append((bug, f"NOT PLANTED: `{bug.correct}` occurs {source.count(bug.correct)} times"))
                missed += 1
                continue
            path.write_text(source.replace(bug.correct, bug.planted))
            try:
                failed, _, seconds = run_tests(tree, bug.tests, scratch)
            finally:
                path.write_text(source)
            missed += not failed
            rows.append((bug, ("yes: " + ", ".join(failed)) if failed else "NO"))
            print(f"{bug.function}: {bug.description}: {len(failed)} test(s) failed ({seconds:.0f} s)", flush=True)
    print("\n| function | bug put in | caught by |\n| --- | --- | --- |")
    for bug, caught in rows:
        print(f"| `{bug.function}` | {bug.description} | {caught} |")
    print(f"\n{len(rows) - missed} of {len(rows)} bugs caught")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
