# StarDist nuclei on the H&E (hematoxylin channel): the cell mask of the llp models (Okuo et al.).
# Runs only for samples an llp model with `mask: nuclei` trains on or maps.


rule he_nuclei:
    input:
        tiles=rules.tissue.output.table,
        he=slide_path("he"),
        model=nuclei_model_input,
    output:
        table="results/he_nuclei/{sample}.parquet",
    params:
        source=lookup(dpath="ground_truth/nuclei_model/source", within=config),
    threads: lookup(dpath="ground_truth/threads", within=config)
    log:
        "logs/he_nuclei/{sample}.log",
    benchmark:
        "benchmarks/he_nuclei/{sample}.tsv"
    message:
        "StarDist nuclei on the H&E of {wildcards.sample}"
    conda:
        "../envs/stardist.yaml"
    script:
        "../workflow_scripts/he_nuclei.py"
