# The first stage: generate the demo world or read a user's folder into one listing.


if config["dataset"]["name"] == "demo":

    rule demo_world:
        output:
            f"{DATA_ROOT}/manifest.csv",
        params:
            size=config["dataset"]["demo"]["size"],
            seed=config["dataset"]["demo"]["seed"],
            root=DATA_ROOT,
        conda:
            ENV_CPU
        log:
            "logs/demo_world.log",
        script:
            "../scripts/demo_world.py"


def listing_input(wildcards):
    """The file whose change means the listing must be read again."""
    name = config["dataset"]["name"]
    if name in ("demo", "folder"):
        return str(Path(DATA_ROOT) / config["dataset"].get(name, {}).get("manifest", "manifest.csv"))
    if name in registry.DOWNLOADABLE and registry.settings_of(config["dataset"])["download"]:
        return f"{DATA_ROOT}/.vprflow-fetched"
    return []


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
