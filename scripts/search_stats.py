from vprflow import stages
from vprflow.logs import log_to

with log_to(snakemake.log[0]):
    i, w = snakemake.input, snakemake.wildcards
    stages.search_stats(i.neighbours, i.vectors, i.ids, i.split, i.masks, i.built, i.timing, w.model, w.search,
                        snakemake.params.settings, snakemake.output[0])
