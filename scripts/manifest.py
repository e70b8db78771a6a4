from vprflow import stages
from vprflow.logs import log_to

with log_to(snakemake.log[0]):
    stages.merge_manifest(snakemake.input.manifest, snakemake.input.rejects,
                          snakemake.output.manifest, snakemake.output.rejects)
