from vprflow import stages
from vprflow.logs import log_to

with log_to(snakemake.log[0]):
    rows = snakemake.params.rows
    stages.manifest_shard(snakemake.input[0], snakemake.params.root, rows["start"], rows["stop"],
                          snakemake.output.manifest, snakemake.output.rejects, snakemake.params.workers)
