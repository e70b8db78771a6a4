from vprflow import stages
from vprflow.logs import log_to

with log_to(snakemake.log[0]):
    stages.write_listing(snakemake.params.dataset, snakemake.output.listing, snakemake.output.truth)
