from vprflow import stages
from vprflow.logs import log_to

with log_to(snakemake.log[0]):
    p = snakemake.params
    stages.manifest_shard(snakemake.input[0], p.root, p.shard, p.shards, snakemake.output.manifest,
                          snakemake.output.rejects, p.workers)
