# StarDist ground truth on the IHC: nuclei in the hematoxylin and DAB channels, tumor ratio per tile.


rule train_nuclei_model:
    input:
        npz=nuclei_training_input,
    output:
        model=directory("results/nuclei_model/model"),
        metrics="results/nuclei_model/metrics.json",
    params:
        cfg=lookup(dpath="ground_truth/nuclei_model", within=config),
    resources:
        gpu=1,
    log:
        "logs/train_nuclei_model.log",
    benchmark:
        "benchmarks/train_nuclei_model.tsv"
    message:
        "Training the StarDist nuclei model"
    conda:
        "../envs/stardist.yaml"
    script:
        "../workflow_scripts/train_nuclei_model.py"


rule ground_truth:
    input:
        tiles=rules.ssim.output.table,
        ihc=slide_path("ihc"),
        model=nuclei_model_input,
    output:
        table="results/ground_truth/{sample}.parquet",
        qc=report(
            "results/ground_truth/{sample}.qc.png",
            caption="../report/ground_truth_qc.rst",
            category="Ground truth",
            subcategory="{sample}",
        ),
    params:
        cfg=lookup(dpath="ground_truth", within=config),
    resources:
        gpu=1,
    log:
        "logs/ground_truth/{sample}.log",
    benchmark:
        "benchmarks/ground_truth/{sample}.tsv"
    message:
        "StarDist ground truth for {wildcards.sample}"
    conda:
        "../envs/stardist.yaml"
    script:
        "../workflow_scripts/ground_truth.py"
