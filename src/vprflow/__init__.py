"""vprflow: image retrieval and visual place recognition as one Snakemake DAG.

The package holds everything that can be tested without Snakemake; the workflow's
``scripts/`` only read ``snakemake.input``/``params``/``output`` and call in here.
Importing it picks the OpenBLAS kernels faiss will use (see ``vprflow.blas``), so it
must come before ``import faiss``; and it makes glibc keep freed memory for reuse (see
``vprflow.heap``), which must come before numpy starts its threads.
"""

from .blas import choose_openblas_core
from .heap import keep_freed_memory

choose_openblas_core()
keep_freed_memory()

__version__ = "0.1.0"
