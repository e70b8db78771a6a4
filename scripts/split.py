from vprflow import stages
from vprflow.logs import log_to

with log_to(snakemake.log[0]):
    stages.split(snakemake.input.manifest, snakemake.input.clean, snakemake.output[0],
                 snakemake.params.settings, snakemake.params.cell_m)
