from vprflow import stages
from vprflow.logs import log_to

with log_to(snakemake.log[0]):
    out = snakemake.output[0]
    stages.concatenate(snakemake.input, out, sep="\t" if out.endswith(".tsv") else ",")
