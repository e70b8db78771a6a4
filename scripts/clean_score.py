from vprflow.clean.stage import score_shard
from vprflow.logs import log_to

with log_to(snakemake.log[0]):
    p = snakemake.params
    score_shard(snakemake.input.manifest, p.root, p.shard, p.settings, snakemake.output[0], p.batch_size, p.workers,
                snakemake.threads, method_record=snakemake.input.method)
