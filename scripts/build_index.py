from vprflow import stages
from vprflow.logs import log_to

with log_to(snakemake.log[0]):
    stages.index(snakemake.input.vectors, snakemake.input.ids, snakemake.input.split,
                 snakemake.params.settings, snakemake.params.index_dir, snakemake.output[0])
