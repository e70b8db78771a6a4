from vprflow import stages
from vprflow.logs import log_to

with log_to(snakemake.log[0]):
    stages.ground_truth(snakemake.input.manifest, snakemake.input.split, snakemake.input.listed,
                        snakemake.output[0], snakemake.params.method, snakemake.params.radius_m)
