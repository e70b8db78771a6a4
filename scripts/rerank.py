from vprflow import stages
from vprflow.logs import log_to

with log_to(snakemake.log[0]):
    i, p = snakemake.input, snakemake.params
    stages.rerank(i.neighbours, i.manifest, i.split, i.masks, i.vectors, i.ids, p.root, p.settings,
                  snakemake.output[0], p.workers)
