from vprflow import stages
from vprflow.logs import log_to

with log_to(snakemake.log[0]):
    i, o = snakemake.input, snakemake.output
    stages.concatenate(i.recall, o.recall, sep="\t")
    stages.concatenate(i.map, o.map, sep="\t")
    stages.concatenate(i.precision + stages.model_precision_tables(i.trained), o.precision, sep="\t")
    stages.concatenate(i.poses, o.poses, sep=",")
    stages.concatenate(i.pose_summary, o.pose_summary, sep="\t")
    stages.concatenate(i.search, o.search, sep="\t")
