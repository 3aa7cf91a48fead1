rule ssim:
    input:
        tiles=rules.tissue.output.table,
        he=slide_path("he"),
        ihc=slide_path("ihc"),
    output:
        table="results/ssim/{sample}.parquet",
        record="results/qc/ssim/{sample}.json",
    params:
        cfg=lookup(dpath="ssim", within=config),
    log:
        "logs/ssim/{sample}.log",
    benchmark:
        "benchmarks/ssim/{sample}.tsv"
    group:
        "per_sample"
    message:
        "SSIM pair filtering for {wildcards.sample}"
    conda:
        "../envs/slides.yaml"
    script:
        "../workflow_scripts/ssim.py"
