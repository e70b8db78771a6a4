from vprflow import stages
from vprflow.logs import log_to

with log_to(snakemake.log[0]):
    i, o, w, p = snakemake.input, snakemake.output, snakemake.wildcards, snakemake.params
    stages.pictures(i.neighbours, i.truth, i.curve, i.manifest, p.root, w.model, w.ranking, p.settings,
                    o.grid, o.sidecar, o.curve)
