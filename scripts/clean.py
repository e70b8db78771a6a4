from vprflow.clean.stage import decide
from vprflow.logs import log_to

with log_to(snakemake.log[0]):
    decide(snakemake.input.manifest, snakemake.input.scores, snakemake.params.root, snakemake.params.settings,
           snakemake.output.clean, snakemake.output.sheet, snakemake.output.report)
