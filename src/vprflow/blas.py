"""The OpenBLAS kernels faiss computes with, chosen before faiss loads them.

faiss-cpu wheels bundle their own OpenBLAS (1.15.1 ships OpenBLAS 0.3.15), which
does not recognise processors newer than itself, such as Sapphire Rapids, and then
falls back to its generic SSE3 ("Prescott") kernels: exact search ran at 0.2 of
numpy's sgemm on such a machine, and every faiss index paid the same for its
matrix products. OpenBLAS reads ``OPENBLAS_CORETYPE`` once, when it loads; importing
``vprflow`` sets it from the processor's flags, unless it is set already:
``SkylakeX`` where the AVX-512 subsets of those kernels are present, ``Haswell``
where AVX2 and FMA are, nothing otherwise (OpenBLAS then detects as usual).
"""

from __future__ import annotations

import os
import platform

VARIABLE = "OPENBLAS_CORETYPE"
_CORES = (  # first match wins
    ("SkylakeX", frozenset({"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"})),
    ("Haswell", frozenset({"avx2", "fma"})),
)


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    """The instruction-set flags the kernel reports (empty where it cannot be read)."""
    try:
        with open(cpuinfo) as stream:
            for line in stream:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def openblas_core(flags: set[str]) -> str | None:
    """The OpenBLAS core type whose kernels ``flags`` can run, or None."""
    for core, needed in _CORES:
        if needed <= flags:
            return core
    return None


def choose_openblas_core(environ=os.environ) -> str | None:
    """Set ``OPENBLAS_CORETYPE`` on x86-64 Linux unless it is set; the value in effect."""
    if VARIABLE in environ:
        return environ[VARIABLE]
    if platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    core = openblas_core(cpu_flags())
    if core is not None:
        environ[VARIABLE] = core
    return core
