from vprflow import stages
from vprflow.logs import log_to

with log_to(snakemake.log[0]):
    w = snakemake.wildcards
    stages.evaluate(snakemake.input.neighbours, snakemake.input.truth, snakemake.input.split,
                    w.model, w.search, snakemake.params.recall_at, snakemake.output[0])
