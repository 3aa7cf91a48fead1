# StarDist ground truth on the IHC: nuclei in the hematoxylin and DAB channels, tumor ratio per tile.
# StarDist runs on tensorflow-cpu: no GPU is claimed; `ground_truth.threads` sets TensorFlow's threads.


rule train_nuclei_model:
    input:
        npz=nuclei_training_input,
    output:
        model=directory("results/nuclei_model/model"),
        metrics="results/nuclei_model/metrics.json",
    params:
        cfg=lookup(dpath="ground_truth/nuclei_model", within=config),
    threads: lookup(dpath="ground_truth/threads", within=config)
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
        calibration=rules.ihc_calibration.output.calibration,
    output:
        table="results/ground_truth/{sample}.parquet",
        record="results/qc/ground_truth/{sample}.json",
    params:
        cfg=ground_truth_params,
    threads: lookup(dpath="ground_truth/threads", within=config)
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


rule ground_truth_qc:
    input:
        table=rules.ground_truth.output.table,
        tiles=rules.ssim.output.table,
        calibration=rules.ihc_calibration.output.calibration,
        ihc=slide_path("ihc"),
        model=nuclei_model_input,
    output:
        qc=report(
            "results/ground_truth/{sample}.qc.png",
            caption="../report/ground_truth_qc.rst",
            category="Ground truth",
            subcategory="{sample}",
        ),
    params:
        cfg=ground_truth_params,
        qc_tiles=lookup(dpath="ground_truth/qc_tiles", within=config),
    threads: 1
    log:
        "logs/ground_truth_qc/{sample}.log",
    benchmark:
        "benchmarks/ground_truth_qc/{sample}.tsv"
    message:
        "Ground-truth QC gallery of {wildcards.sample}"
    conda:
        "../envs/stardist.yaml"
    script:
        "../workflow_scripts/ground_truth_qc.py"
