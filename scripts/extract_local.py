from vprflow import stages
from vprflow.logs import log_to

with log_to(snakemake.log[0]):
    stages.extract_local(**stages.rule_arguments(snakemake), threads=snakemake.threads)
