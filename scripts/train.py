from vprflow.logs import log_to
from vprflow.train.stage import train_model

with log_to(snakemake.log[0]):
    i, p = snakemake.input, snakemake.params
    train_model(i.manifest, i.clean, i.split, p.settings, p.root, p.out_dir, snakemake.threads, p.workers)
