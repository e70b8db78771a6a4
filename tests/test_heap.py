"""``heap.keep_freed_memory``: a freed large block is reused, not faulted in again.

Each case runs in a fresh interpreter (the setting is the process's, and must come before
its threads) that imports the stages module as a job does (``vprflow`` first, then numpy,
whose OpenBLAS starts its threads on load), allocates an 80 MiB block through the C heap
four times, writing every page and freeing it, in the main thread and then in two threads
at once, and counts the page faults of each round. 80 MiB is above glibc's largest mmap
threshold (32 MiB) and above what a thread's own arena holds (64 MiB), so glibc alone maps
and unmaps it each time.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the heap settings are glibc's")

PAGES = 80 * 2**20 // os.sysconf("SC_PAGE_SIZE")

CHILD = """
import ctypes, json, resource, threading
from vprflow import stages  # as a job's script starts: vprflow, then numpy and pandas
from vprflow.heap import keep_freed_memory

kept = keep_freed_memory()  # as the network stages call it: taken already when vprflow was imported
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

def faults_per_round(rounds=4, size=80 * 2**20, start=None):
    if start is not None:
        start.wait()  # the threads allocate at the same time, each from the arena it was given
    counts = []
    for _ in range(rounds):
        before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        block = libc.malloc(size)
        ctypes.memset(block, 1, size)
        libc.free(block)
        counts.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
    return counts

main = faults_per_round()
start, in_threads = threading.Barrier(2), {}
threads = [threading.Thread(target=lambda k=k: in_threads.update({k: faults_per_round(start=start)}))
           for k in range(2)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print("RESULT=" + json.dumps({"kept": kept, "main": main, "threads": list(in_threads.values())}))
"""


def run_child(**environment: str) -> dict:
    env = {**os.environ, **environment}
    result = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, cwd=REPO, env=env)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT=")]
    assert lines, f"no result ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return json.loads(lines[-1].removeprefix("RESULT="))


def test_kept_memory_is_reused_in_the_main_thread_and_in_threads_started_later():
    result = run_child(VPRFLOW_SYSTEM_HEAP="")
    assert result["kept"]
    # The first round faults the block in once; after that the freed block is reused: fewer
    # than 1% of its pages fault again. Two threads allocating at once each take a block of
    # their own from the main heap (one arena), so each faults at most its first round.
    assert result["main"][0] >= 0.9 * PAGES
    assert max(result["main"][1:]) < 0.01 * PAGES, result
    for counts in result["threads"]:
        assert max(counts[1:]) < 0.01 * PAGES, result


def test_without_it_every_round_faults_the_whole_block_in_again():
    """The cost the setting removes, and the opt-out that leaves it: glibc maps the block anew
    each round, so each round faults (nearly) every page."""
    result = run_child(VPRFLOW_SYSTEM_HEAP="1")
    assert not result["kept"]
    assert min(result["main"] + [n for counts in result["threads"] for n in counts]) >= 0.9 * PAGES, result
