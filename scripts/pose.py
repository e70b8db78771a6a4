from vprflow import stages
from vprflow.logs import log_to

with log_to(snakemake.log[0]):
    w = snakemake.wildcards
    stages.pose(snakemake.input.neighbours, snakemake.input.manifest, w.model, w.search, snakemake.output[0])
