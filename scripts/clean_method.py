from vprflow.clean.stage import resolve_method
from vprflow.logs import log_to

with log_to(snakemake.log[0]):
    resolve_method(snakemake.params.settings, snakemake.output[0])
