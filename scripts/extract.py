from vprflow import stages
from vprflow.logs import log_to

with log_to(snakemake.log[0]):
    p = snakemake.params
    stages.extract_shard(snakemake.input.manifest, snakemake.input.clean, p.root, p.shard, p.settings,
                         p.model_dir or None, snakemake.output[0], p.batch_size, p.workers, snakemake.threads)
