rule split:
    output:
        table="results/split.tsv",
    params:
        samples=SAMPLES_PAIRED,
        patients=[samples.at[s, "patient"] for s in SAMPLES_PAIRED],
        cfg=lookup(dpath="split", within=config),
    log:
        "logs/split.log",
    benchmark:
        "benchmarks/split.tsv"
    message:
        "Splitting samples into train/val/test by patient"
    conda:
        "../envs/slides.yaml"
    script:
        "../workflow_scripts/split.py"


rule dataset:
    input:
        ground_truth=expand(rules.ground_truth.output.table, sample=SAMPLES_PAIRED),
        tiles=expand(rules.ssim.output.table, sample=SAMPLES_PAIRED),
        split=rules.split.output.table,
    output:
        table="results/dataset.parquet",
    log:
        "logs/dataset.log",
    benchmark:
        "benchmarks/dataset.tsv"
    message:
        "Joining ground truth and split into the training table"
    conda:
        "../envs/slides.yaml"
    script:
        "../workflow_scripts/dataset.py"
