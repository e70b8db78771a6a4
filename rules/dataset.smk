# The first stage: generate the demo world or read a user's folder into one listing.


if DATASET.generated:

    rule demo_world:
        output:
            manifest=f"{DATA_ROOT}/manifest.csv",
        params:
            size=config["dataset"]["demo"]["size"],
            seed=config["dataset"]["demo"]["seed"],
        conda:
            ENV_CPU
        log:
            "logs/demo_world.log",
        script:
            "../scripts/demo_world.py"


if DATASET.downloadable:

    rule fetch_dataset:
        output:
            done=f"{DATA_ROOT}/{FETCHED_MARKER}",
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
        source=listing_source,
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
