from vprflow import stages
from vprflow.logs import log_to

with log_to(snakemake.log[0]):
    i, p = snakemake.input, snakemake.params
    stages.train(i.manifest, i.clean, i.split, p.settings, p.root, p.out_dir, snakemake.threads, p.workers,
                 snakemake.output.curves)
