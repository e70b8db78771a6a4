from vprflow import stages
from vprflow.logs import log_to

with log_to(snakemake.log[0]):
    stages.service_bundle(**stages.rule_arguments(snakemake))
