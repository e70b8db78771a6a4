# The first stage: generate the demo world or read a user's folder into one listing.


if config["dataset"]["name"] == "demo":

    rule demo_world:
        output:
            f"{DATA_ROOT}/manifest.csv",
        params:
            size=config["dataset"]["demo"]["size"],
            seed=config["dataset"]["demo"]["seed"],
            root=lambda wildcards, output: str(Path(output[0]).parent),
        conda:
            ENV_CPU
        log:
            "logs/demo_world.log",
        script:
            "../scripts/demo_world.py"


if config["dataset"]["name"] in registry.DOWNLOADABLE:

    rule fetch_dataset:
        output:
            f"{DATA_ROOT}/.vprflow-fetched",
        params:
            dataset=config["dataset"],
        resources:
            runtime=24 * 60,
        conda:
            ENV_CPU
        log:
            "logs/fetch_dataset.log",
        script:
            "../scripts/fetch_dataset.py"


rule listing:
    input:
        listing_input,
    output:
        listing="results/listing.parquet",
        truth="results/listed_truth.parquet",
    params:
        dataset=config["dataset"],
    conda:
        ENV_CPU
    log:
        "logs/listing.log",
    script:
        "../scripts/listing.py"
