"""``heap.keep_freed_memory``: a freed large block is reused, not faulted in again.

Each case runs in a fresh interpreter (the setting is the process's, and must come before
its threads), allocates an 80 MiB block through the C heap four times, writing every page
and freeing it, in the main thread and then in a new thread, and counts the page faults of
each round. 80 MiB is above glibc's largest mmap threshold (32 MiB) and above what a thread's
own arena holds (64 MiB), so glibc alone maps and unmaps it each time.
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
from vprflow.heap import keep_freed_memory

applied = keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

def faults_per_round(rounds=4, size=80 * 2**20):
    counts = []
    for _ in range(rounds):
        start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = libc.malloc(size)
        ctypes.memset(block, 1, size)
        libc.free(block)
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
    return counts

main = faults_per_round()
in_thread = {}
thread = threading.Thread(target=lambda: in_thread.update(counts=faults_per_round()))
thread.start()
thread.join()
print("RESULT=" + json.dumps({"applied": applied, "again": keep_freed_memory(), "main": main,
                              "thread": in_thread["counts"]}))
"""


def run_child(**environment: str) -> dict:
    env = {**os.environ, **environment}
    result = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, cwd=REPO, env=env)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT=")]
    assert lines, f"no result ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return json.loads(lines[-1].removeprefix("RESULT="))


def test_kept_memory_is_reused_in_the_main_thread_and_in_threads_started_later():
    result = run_child(VPRFLOW_SYSTEM_HEAP="")
    assert result["applied"] and result["again"]
    # The first round faults the block in once; after that the freed block is reused: fewer
    # than 1% of its pages fault again, in the main thread and in the later thread alike
    # (one arena: the thread allocates from the main heap, where the block already is).
    assert result["main"][0] >= 0.9 * PAGES
    assert max(result["main"][1:]) < 0.01 * PAGES, result
    assert max(result["thread"]) < 0.01 * PAGES, result


def test_without_it_every_round_faults_the_whole_block_in_again():
    """The cost the setting removes, and the opt-out that leaves it: glibc maps the block anew
    each round, so each round faults (nearly) every page."""
    result = run_child(VPRFLOW_SYSTEM_HEAP="1")
    assert not result["applied"] and not result["again"]
    assert min(result["main"] + result["thread"]) >= 0.9 * PAGES, result
