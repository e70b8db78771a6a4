"""vprflow: image retrieval and visual place recognition as one Snakemake DAG.

The package holds everything that can be tested without Snakemake; the workflow's
``scripts/`` only read ``snakemake.input``/``params``/``output`` and call in here.
"""

__version__ = "0.1.0"
