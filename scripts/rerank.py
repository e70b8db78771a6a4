from vprflow import stages
from vprflow.logs import log_to

with log_to(snakemake.log[0]):
    stages.rerank(**stages.rule_arguments(snakemake), threads=snakemake.threads)
