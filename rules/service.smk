# The service bundle of one (model, search): what `vprflow serve` loads (on request, not in `all`).
# The CLIP text engine scores the image embeddings of the clip model's extraction (none for ngram).
CLIP_TEXT_MODEL = config["service"]["clip_model"] if config["service"]["text_engine"] != "ngram" else None
CLIP_TEXT_FEATURES = f"results/features/{CLIP_TEXT_MODEL}/" if CLIP_TEXT_MODEL else None


rule service_bundle:
    input:
        manifest="results/manifest.parquet",
        split="results/split.parquet",
        masks="results/masks.parquet",
        vectors="results/features/{model}/vectors.npy",
        ids="results/features/{model}/ids.txt",
        built="results/index/{model}/{search}/built.json",
        trained=trained_model,
        clip_vectors=f"{CLIP_TEXT_FEATURES}vectors.npy" if CLIP_TEXT_FEATURES else [],
        clip_ids=f"{CLIP_TEXT_FEATURES}ids.txt" if CLIP_TEXT_FEATURES else [],
    output:
        bundle="results/service/{model}/{search}/bundle.json",
        database="results/service/{model}/{search}/database.parquet",
        thumbnails="results/service/{model}/{search}/thumbnails.bin",
        text_index="results/service/{model}/{search}/text.npz",
    params:
        model="{model}",
        search="{search}",
        model_settings=model_settings,
        search_settings=search_settings,
        service=config["service"],
        clip_settings=config["models"][CLIP_TEXT_MODEL] if CLIP_TEXT_MODEL else None,
        pose={
            "method": config["pose"]["method"],
            "k": config["pose"]["k"],
            "radius_m": config["pose"]["radius_m"] or config["ground_truth"]["radius_m"],
        },
        root=DATA_ROOT,
        workers=config["compute"]["loader_workers"],
    threads: 2
    resources:
        mem_mb=4000,
    conda:
        ENV_CPU
    log:
        "logs/service_bundle/{model}/{search}.log",
    script:
        "../scripts/service_bundle.py"
