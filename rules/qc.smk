# The cohort's QC table: per sample, the first stage that failed or yielded nothing
# usable, and why (tumormap.qc). Failed samples are left out of the dataset; with -k
# the other samples train, evaluate and map.


rule qc_samples:
    input:
        records=[
            f"results/qc/{stage}/{s}.json"
            for s in SAMPLES_ALL
            for stage in ["tile", "tissue", "stain"] + (["ssim", "ground_truth"] if s in SAMPLES_PAIRED else [])
        ],
        registration=[
            f"results/registration/{s}.json" for s in SAMPLES_PAIRED if config["registration"]["method"] != "none"
        ],
    output:
        table=report(
            "results/qc/samples.tsv",
            caption="../report/qc_samples.rst",
            category="Quality control",
        ),
    params:
        samples=SAMPLES_ALL,
        paired=SAMPLES_PAIRED,
    log:
        "logs/qc_samples.log",
    benchmark:
        "benchmarks/qc_samples.tsv"
    message:
        "Per-sample QC table"
    conda:
        "../envs/slides.yaml"
    script:
        "../workflow_scripts/qc_samples.py"
