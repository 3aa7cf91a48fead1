# Per-slide stain calibration of the IHC (hematoxylin and DAB vectors, nuclear hematoxylin
# intensity) from its kept tiles; the ground truth reads each tile through it.


rule ihc_calibration:
    input:
        tiles=rules.ssim.output.table,
        ihc=slide_path("ihc"),
    output:
        calibration="results/ihc_calibration/{sample}.json",
    params:
        cfg=lookup(dpath="ground_truth/calibration", within=config),
    threads: 1
    log:
        "logs/ihc_calibration/{sample}.log",
    benchmark:
        "benchmarks/ihc_calibration/{sample}.tsv"
    message:
        "IHC stain calibration for {wildcards.sample}"
    conda:
        "../envs/histomicstk.yaml"
    script:
        "../workflow_scripts/ihc_calibration.py"
