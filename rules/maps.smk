def ground_truth_if_paired(wildcards):
    if wildcards.sample in SAMPLES_PAIRED:
        return rules.ground_truth.output.table.format(sample=wildcards.sample)
    return []


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
    params:
        cfg=lookup(dpath="maps", within=config),
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
