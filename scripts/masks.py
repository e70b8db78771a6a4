from vprflow import stages
from vprflow.logs import log_to

with log_to(snakemake.log[0]):
    stages.masks(snakemake.input.manifest, snakemake.input.split, snakemake.output[0],
                 snakemake.params.min_class_size)
