from vprflow import stages
from vprflow.logs import log_to

with log_to(snakemake.log[0]):
    stages.merge_neighbours(snakemake.input.blocks, snakemake.input.manifest,
                            snakemake.output.neighbours, snakemake.output.pairs)
