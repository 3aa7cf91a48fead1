rule tissue:
    input:
        tiles=rules.tile.output.table,
        he=slide_path("he"),
        ihc=slide_path("ihc"),
    output:
        table="results/tissue/{sample}.parquet",
        record="results/qc/tissue/{sample}.json",
    params:
        cfg=lookup(dpath="tissue", within=config),
    log:
        "logs/tissue/{sample}.log",
    benchmark:
        "benchmarks/tissue/{sample}.tsv"
    group:
        "per_sample"
    message:
        "White-patch removal for {wildcards.sample}"
    conda:
        "../envs/slides.yaml"
    script:
        "../workflow_scripts/tissue.py"
