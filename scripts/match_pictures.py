from vprflow import stages
from vprflow.logs import log_to

with log_to(snakemake.log[0]):
    stages.match_pictures(**stages.rule_arguments(snakemake))
