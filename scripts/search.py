from vprflow import stages
from vprflow.logs import log_to

with log_to(snakemake.log[0]):
    i, o, p = snakemake.input, snakemake.output, snakemake.params
    stages.search(i.vectors, i.ids, i.split, i.manifest, i.masks, p.index_dir, p.shard, p.settings,
                  o.block, o.timing, snakemake.threads)
