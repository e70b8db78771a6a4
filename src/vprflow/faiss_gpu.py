"""Where faiss computes: on the GPU when this faiss build has GPU support (the ``faiss-gpu``
wheel that ``pip install -e '.[gpu]'`` brings) and sees one, else on the CPU. Decided at
run time, once per process, and logged; search indexes and k-means ask here.
"""

from __future__ import annotations

import functools

import faiss

from .logs import log


@functools.lru_cache(maxsize=None)
def faiss_gpus() -> int:
    """The GPUs faiss can use here: 0 without GPU support in this faiss build or without a visible GPU."""
    if not hasattr(faiss, "StandardGpuResources"):
        log.info("faiss %s computes on the CPU: this build has no GPU support (pip install -e '.[gpu]' on a "
                 "CUDA machine brings one)", faiss.__version__)
        return 0
    count = faiss.get_num_gpus()
    if count:
        log.info("faiss %s computes on the GPU: %d visible", faiss.__version__, count)
    else:
        log.info("faiss %s computes on the CPU: built with GPU support, but no GPU is visible", faiss.__version__)
    return count


@functools.lru_cache(maxsize=None)
def _resources():
    return faiss.StandardGpuResources()


def to_gpu(index):
    """``index`` copied to the first GPU where faiss has one, else ``index`` itself; an index type
    without a GPU version (HNSW, for one) stays on the CPU, and the log says so."""
    if not faiss_gpus():
        return index
    try:
        return faiss.index_cpu_to_gpu(_resources(), 0, index)
    except RuntimeError as error:
        log.info("faiss: %s has no GPU version (%s); it searches on the CPU", type(index).__name__,
                 str(error).strip().splitlines()[-1])
        return index
