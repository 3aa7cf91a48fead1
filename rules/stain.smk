rule stain:
    input:
        tiles=rules.tissue.output.table,
        he=slide_path("he"),
    output:
        stain="results/stain/{sample}.json",
        record="results/qc/stain/{sample}.json",
    params:
        cfg=lookup(dpath="stain", within=config),
    log:
        "logs/stain/{sample}.log",
    benchmark:
        "benchmarks/stain/{sample}.tsv"
    group:
        "per_sample"
    message:
        "Macenko stain estimate for {wildcards.sample}"
    conda:
        "../envs/histomicstk.yaml"
    script:
        "../workflow_scripts/stain.py"
