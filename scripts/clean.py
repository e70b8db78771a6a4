from vprflow import stages
from vprflow.logs import log_to

with log_to(snakemake.log[0]):
    stages.clean(snakemake.input[0], snakemake.output[0], snakemake.params.settings)
