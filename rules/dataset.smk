# The first stage: generate the demo world or read a user's folder into one listing.


if config["dataset"]["name"] == "demo":

    rule demo_world:
        output:
            f"{DATA_ROOT}/manifest.csv",
        params:
            size=config["dataset"]["demo"]["size"],
            seed=config["dataset"]["demo"]["seed"],
            root=DATA_ROOT,
        log:
            "logs/demo_world.log",
        script:
            "../scripts/demo_world.py"


def listing_input(wildcards):
    dataset = config["dataset"]
    if dataset["name"] == "demo":
        return f"{DATA_ROOT}/manifest.csv"
    return str(Path(DATA_ROOT) / dataset["folder"]["manifest"])


rule listing:
    input:
        listing_input,
    output:
        listing="results/listing.parquet",
        truth="results/listed_truth.parquet",
    params:
        dataset={k: v for k, v in config["dataset"].items() if k in ("name", config["dataset"]["name"])},
        root=DATA_ROOT,
    log:
        "logs/listing.log",
    script:
        "../scripts/listing.py"
