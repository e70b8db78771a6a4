from vprflow import stages
from vprflow.logs import log_to

with log_to(snakemake.log[0]):
    w, p = snakemake.wildcards, snakemake.params
    stages.pose(snakemake.input.neighbours, snakemake.input.manifest, w.model, w.ranking, p.settings, p.radius_m,
                snakemake.output.poses, snakemake.output.summary)
