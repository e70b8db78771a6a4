"""The tiny demo through `--profile profiles/slurm` on a real one-node SLURM cluster.

.ci/slurm/setup.sh installs slurm-wlm and munge when missing and starts munged, slurmctld
and slurmd with their state in a temporary folder; .ci/slurm/teardown.sh stops them. Skips
where that cannot happen (not root, no apt, daemons that do not start). Run it alone with
`pytest -m slurm -s` to see the job ids and states. Several minutes: each job waits for the
executor's status polls.
"""

import os
import re
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from conftest import REPO, SNAKEMAKE, write_config

pytestmark = [pytest.mark.slurm, pytest.mark.e2e]

SETUP = REPO / ".ci" / "slurm" / "setup.sh"
TEARDOWN = REPO / ".ci" / "slurm" / "teardown.sh"
# gpu_jobs: extraction asks for a GPU, which the test node has as a bare count (no device).
TINY = {"dataset": {"name": "demo", "demo": {"size": "tiny", "seed": 0}}, "compute": {"gpu_jobs": True}}
SUBMITTED = re.compile(r"^Job \d+ has been submitted with SLURM jobid (\d+) \(log: .*/rule_(\w+?)/", re.MULTILINE)
CLUSTER_JOB = re.compile(r"^rule (\w+):$", re.MULTILINE)
LOCAL_JOB = re.compile(r"^localrule (\w+):$", re.MULTILINE)
PLANNED_TOTAL = re.compile(r"^total\s+(\d+)$", re.MULTILINE)


@pytest.fixture(scope="module")
def slurm_environment(tmp_path_factory):
    """Environment in which sbatch, squeue and srun reach the test cluster."""
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="pip install snakemake-executor-plugin-slurm")
    if os.geteuid() != 0:
        pytest.skip("the one-node SLURM cluster needs root (packages, slurmd)")
    state = tmp_path_factory.mktemp("slurm")
    try:
        setup = subprocess.run([str(SETUP), str(state)], capture_output=True, text=True)
        if setup.returncode == 2:
            pytest.skip(f"SLURM cannot run here: {setup.stderr.strip()}")
        assert setup.returncode == 0, f"{SETUP} failed:\n{setup.stdout}\n{setup.stderr}"
        sourced = subprocess.run(["bash", "-c", f'. "{state}/env.sh" && env -0'],
                                 capture_output=True, text=True, check=True)
        yield dict(line.split("=", 1) for line in sourced.stdout.split("\0") if "=" in line)
    finally:
        subprocess.run([str(TEARDOWN), str(state)], capture_output=True, text=True)


def start_snakemake(workdir, config, *args, env=None) -> tuple[subprocess.Popen, Path]:
    """Snakemake running in the background, its output going to <workdir>.log."""
    log = workdir.with_suffix(".log")
    command = SNAKEMAKE + ["-s", str(REPO / "Snakefile"), "-d", str(workdir), "--configfile", str(config), *args]
    with open(log, "w") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env), log


def finished(run: tuple[subprocess.Popen, Path], timeout: int) -> str:
    process, log = run
    process.wait(timeout=timeout)
    text = log.read_text()
    assert process.returncode == 0, f"{' '.join(process.args)} failed:\n{text[-8000:]}"
    return text


def queue_table(env) -> dict[str, tuple[str, str]]:
    """SLURM job id -> (state, GPUs asked for) of every job the test cluster still remembers."""
    queue = subprocess.run(["squeue", "--states=all", "--noheader", "-O", "JobID:20,State:20,tres-per-job:40"],
                           capture_output=True, text=True, env=env, check=True).stdout
    return {job_id: (state, gpus) for job_id, state, gpus in (line.split() for line in queue.splitlines())}


def test_tiny_demo_on_slurm_matches_a_local_run(slurm_environment, tmp_path, ci_report):
    config = write_config(tmp_path, TINY)
    local, cluster = tmp_path / "local", tmp_path / "slurm"
    # The local run shares the CPUs with the cluster jobs, mostly while the executor waits.
    local_run = start_snakemake(local, config, "--cores", "2")
    env = {**slurm_environment, "VPRFLOW_SLURM_PARTITION": "ci"}
    # The test cluster keeps no accounting database, so job states come from squeue.
    cluster_run = start_snakemake(cluster, config, "--profile", str(REPO / "profiles" / "slurm"),
                                  "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "4",
                                  env=env)
    try:
        finished(local_run, timeout=600)
        log = finished(cluster_run, timeout=1200)
    finally:
        for process, _ in (local_run, cluster_run):
            if process.poll() is None:
                process.terminate()
                process.wait()

    submitted = dict(SUBMITTED.findall(log))
    queue = queue_table(env)
    for job_id, rule in sorted(submitted.items(), key=lambda item: int(item[0])):
        state, gpus = queue.get(job_id, ("?", "?"))
        ci_report(f"SLURM job {job_id:>3}  {state:<10} {gpus:<11} rule {rule}")
    cluster_jobs, local_jobs = Counter(CLUSTER_JOB.findall(log)), Counter(LOCAL_JOB.findall(log))
    assert Counter(submitted.values()) == cluster_jobs  # each cluster job submitted once: no retries
    assert cluster_jobs.total() + local_jobs.total() == int(PLANNED_TOTAL.search(log)[1])
    assert {queue[job_id][0] for job_id in submitted} == {"COMPLETED"}
    assert {rule for job_id, rule in submitted.items() if queue[job_id][1] == "gres:gpu:1"} == {"extract"}

    for table in ("results/recall.tsv", "results/poses.csv"):
        assert (cluster / table).read_text() == (local / table).read_text(), table
