from vprflow import stages
from vprflow.logs import log_to

with log_to(snakemake.log[0]):
    i, o, w = snakemake.input, snakemake.output, snakemake.wildcards
    stages.evaluate(i.neighbours, i.truth, i.split, i.manifest, w.model, w.ranking, snakemake.params.settings,
                    o.recall, o.map, o.precision, o.curve)
