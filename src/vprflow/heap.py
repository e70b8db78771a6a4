"""The C heap of a process that runs networks on the CPU: freed memory kept for reuse.

glibc's malloc returns every block above its mmap threshold (which grows to at most 32 MiB)
to the kernel when it is freed, and maps fresh pages for the next one, each page faulted in
and zeroed by the kernel. A CNN's activations at batch 32 are such blocks, and a thread's
own arena maps everything above 64 MiB whatever the threshold, so each forward pass faulted
its activations in anew: on this project's 2-core machine a third of a MobileNetV2
extraction's CPU time (fp32) was the kernel's, and the bare forward pass ran twice as fast
without it (``benchmarks/bench_heap.py``). PyTorch's CPU guides meet the same cost by
preloading tcmalloc or jemalloc; glibc's own settings do it in-process.

The settings must come before the process starts threads that allocate: numpy's OpenBLAS
starts its threads when it loads, and a later thread may then be handed such a thread's
arena, which maps its large blocks whatever the settings (measured: a `delf` extraction
kept 1.3 s of kernel time in 4 s when numpy came first). So importing ``vprflow`` takes
them, as it sets ``OPENBLAS_CORETYPE`` (``vprflow.blas``): a job's script imports it first.

The price: the process keeps the memory it freed until it ends, so its resident size stays
near its peak (2% more peak for an extraction, measured). ``VPRFLOW_SYSTEM_HEAP=1`` leaves
the heap as glibc sets it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

from .logs import log

OPT_OUT = "VPRFLOW_SYSTEM_HEAP"
M_TRIM_THRESHOLD = -1  # glibc malloc.h: free memory at the heap's top kept below this many bytes
M_MMAP_MAX = -4  # how many blocks may be mapped on their own; 0: none
M_ARENA_MAX = -8  # how many arenas threads share; 1: every thread allocates from the main heap
KEPT_BYTES = 2**31 - 1  # mallopt takes an int

_outcome: str | None = None
_SAID = {
    "kept": "freed memory kept in the process for reuse (glibc mallopt; %s=1 to leave it)" % OPT_OUT,
    "opted out": "left as glibc sets it (%s is set)" % OPT_OUT,
    "not glibc": "left as it is (not glibc)",
    "refused": "glibc refused a mallopt setting; freed memory goes back to the kernel",
}


def keep_freed_memory() -> bool:
    """Have glibc keep freed memory in the process for the next allocation: no block mapped
    on its own (so none unmapped when freed), no trimming of the heap's top below 2 GiB, and
    one arena, so that threads started later also allocate from the main heap.

    Taken once, on the first call (``import vprflow`` makes it); each call logs the outcome
    (every workflow job's does, through ``stages.rule_arguments``).
    True where the settings hold; False off glibc, with ``VPRFLOW_SYSTEM_HEAP=1``, or when
    glibc refused one.
    """
    global _outcome
    if _outcome is None:
        _outcome = _settings_taken()
    log.info("heap: %s", _SAID[_outcome])
    return _outcome == "kept"


def _settings_taken() -> str:
    if os.environ.get(OPT_OUT, "") not in ("", "0"):
        return "opted out"
    if not _glibc():
        return "not glibc"
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    for option, value in ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, KEPT_BYTES), (M_ARENA_MAX, 1)):
        if libc.mallopt(option, value) != 1:
            return "refused"
    return "kept"


def _glibc() -> bool:
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError):  # a C library without the name (macOS, musl)
        return False
