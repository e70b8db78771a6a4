from vprflow import stages
from vprflow.logs import log_to

with log_to(snakemake.log[0]):
    i, p = snakemake.input, snakemake.params
    stages.search(i.vectors, i.ids, i.split, i.manifest, i.masks, p.index_dir, p.shard, p.settings,
                  snakemake.output[0], snakemake.threads)
