from vprflow import stages
from vprflow.logs import log_to

with log_to(snakemake.log[0]):
    i, o = snakemake.input, snakemake.output
    stages.merge_neighbours(i.blocks, i.timings, i.manifest, o.neighbours, o.pairs, o.timing)
