"""vprflow.blas: faiss's bundled OpenBLAS runs kernels the processor has."""

import ctypes
import os
import platform
from pathlib import Path

import pytest

from vprflow import blas


def test_core_follows_the_processor_flags():
    assert blas.openblas_core({"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl", "avx2", "fma"}) == "SkylakeX"
    assert blas.openblas_core({"avx512f", "avx2", "fma"}) == "Haswell"  # no AVX-512BW: not SkylakeX's kernels
    assert blas.openblas_core({"sse4_2", "avx"}) is None


def test_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\nbugs\t\t: spectre_v1\n")
    assert blas.cpu_flags(str(cpuinfo)) == {"fpu", "sse2", "avx2", "fma"}
    assert blas.cpu_flags(str(tmp_path / "missing")) == set()


def test_a_core_the_user_set_is_kept():
    environ = {"OPENBLAS_CORETYPE": "Zen"}
    assert blas.choose_openblas_core(environ) == "Zen"
    assert environ == {"OPENBLAS_CORETYPE": "Zen"}


def _loaded_openblas_of_faiss() -> Path | None:
    for line in Path("/proc/self/maps").read_text().splitlines():
        path = line.split()[-1]
        if "faiss" in path and "openblas" in Path(path).name:
            return Path(path)
    return None


@pytest.mark.skipif(platform.system() != "Linux", reason="reads /proc/self/maps")
def test_faiss_runs_the_chosen_kernels():
    import faiss  # after vprflow (conftest imports it first)

    faiss.IndexFlatIP(4)  # libfaiss and its BLAS are loaded
    library = _loaded_openblas_of_faiss()
    if library is None:
        pytest.skip("this faiss build loads no OpenBLAS of its own")
    corename = ctypes.CDLL(str(library)).openblas_get_corename
    corename.restype = ctypes.c_char_p
    chosen = os.environ.get("OPENBLAS_CORETYPE")
    if chosen is None:
        pytest.skip("no AVX2 or AVX-512 on this processor: OpenBLAS detects its own kernels")
    assert corename().decode().lower() == chosen.lower()
