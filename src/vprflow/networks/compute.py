"""Where and how a network runs: CUDA when present, else CPU; bfloat16 where it is native."""

from __future__ import annotations

import contextlib
import os

import torch

from ..logs import log



def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def native_bf16(device: torch.device) -> bool:
    """True when bfloat16 runs in hardware: a CUDA GPU that supports it, or a CPU with
    AVX512-BF16 or AMX (elsewhere bf16 is emulated and slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def use_bf16(precision: str, device: torch.device) -> bool:
    """Resolve the ``precision`` setting: ``auto`` is bf16 where native, ``bf16`` falls back
    to float32 (with a warning) where it would be emulated."""
    if precision == "fp32":
        return False
    native = native_bf16(device)
    if precision == "bf16" and not native:
        log.warning("precision: bf16 requested but %s has no native bfloat16; using float32", device)
    return native


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def use_deterministic_algorithms() -> None:
    """Deterministic kernels wherever torch has them, so a rerun on the same machine gives the
    same bits. On CUDA this needs cuBLAS' fixed workspace (set here, before CUDA starts, unless
    set already); kernels that have no deterministic version warn and run as they are (of what
    training uses: cross-entropy, i.e. NLLLoss, of the place and name_category objectives)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
