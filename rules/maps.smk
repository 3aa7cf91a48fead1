rule tumor_map:
    input:
        predictions="results/predictions/{model}/{sample}.parquet",
        tiles=rules.tissue.output.table,
        ground_truth=ground_truth_if_paired,
        he=slide_path("he"),
    output:
        png=report(
            "results/maps/{model}/{sample}.png",
            caption="../report/tumor_map.rst",
            category="Tumor maps",
            subcategory="{model}",
            labels={"model": "{model}", "sample": "{sample}"},
        ),
        arrays="results/maps/{model}/{sample}.npz",
        agreement="results/maps/{model}/{sample}.json",
        geojson="results/maps/{model}/{sample}.geojson",
    params:
        thumbnail_px=lookup(dpath="maps/thumbnail_px", within=config),
        tumor_threshold=lookup(dpath="maps/tumor_threshold", within=config),
    log:
        "logs/tumor_map/{model}/{sample}.log",
    benchmark:
        "benchmarks/tumor_map/{model}/{sample}.tsv"
    message:
        "Rendering the {wildcards.model} tumor map of {wildcards.sample}"
    conda:
        "../envs/slides.yaml"
    script:
        "../workflow_scripts/tumor_map.py"


rule map_summary:
    input:
        predictions=expand("results/predictions/{{model}}/{sample}.parquet", sample=SAMPLES_ALL),
        tissue=expand(rules.tissue.output.table, sample=SAMPLES_ALL),
        card="results/models/{model}/card.json",
    output:
        csv=report(
            "results/maps/{model}/summary.csv",
            caption="../report/summary.rst",
            category="Tumor maps",
            subcategory="{model}",
        ),
    params:
        samples=SAMPLES_ALL,
        tumor_threshold=lookup(dpath="maps/tumor_threshold", within=config),
    log:
        "logs/map_summary/{model}.log",
    benchmark:
        "benchmarks/map_summary/{model}.tsv"
    message:
        "Per-slide tumor-ratio summary of {wildcards.model}"
    conda:
        "../envs/slides.yaml"
    script:
        "../workflow_scripts/map_summary.py"


rule predict:
    """Target: map only the H&E-only samples (no IHC) with every trained model."""
    input:
        maps=expand("results/maps/{model}/{sample}.{ext}", model=MODELS, sample=SAMPLES_HE_ONLY,
                    ext=["png", "geojson"]),
        summary=expand(rules.map_summary.output.csv, model=MODELS),


rule cell_maps:
    """llp models: the positive/negative maps over the nuclei for a few tiles (Okuo et al. Fig. 5)."""
    input:
        model="results/models/{model}/model.pt",
        card="results/models/{model}/card.json",
        predictions="results/predictions/{model}/{sample}.parquet",
        tiles=rules.tissue.output.table,
        stain=rules.stain.output.stain,
        he=slide_path("he"),
        he_nuclei=he_nuclei_for_prediction,
    output:
        png=report(
            "results/maps/{model}/{sample}.cells.png",
            caption="../report/cell_maps.rst",
            category="Tumor maps",
            subcategory="{model}",
            labels={"model": "{model}", "sample": "{sample}", "figure": "cells"},
        ),
    params:
        n_tiles=4,
    threads: 1
    log:
        "logs/cell_maps/{model}/{sample}.log",
    benchmark:
        "benchmarks/cell_maps/{model}/{sample}.tsv"
    message:
        "Cell-level positive/negative maps of {wildcards.model} on {wildcards.sample}"
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/cell_maps.py"
