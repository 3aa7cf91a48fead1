# tumormap: tumor-ratio maps from H&E whole-slide images, learned from consecutive IHC slides.
# Run: snakemake --profile profiles/local all   (README.md)

import os

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"
configfile: os.path.join(workflow.basedir, "config/mnist_bags.yaml")  # the MNIST-bag check


include: "rules/common.smk"
include: "rules/demo.smk"
include: "rules/download.smk"
include: "rules/registration.smk"
include: "rules/tiling.smk"
include: "rules/tissue.smk"
include: "rules/ssim.smk"
include: "rules/ihc_calibration.smk"
include: "rules/ground_truth.smk"
include: "rules/he_nuclei.smk"
include: "rules/stain.smk"
include: "rules/split.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/maps.smk"
include: "rules/qc.smk"
include: "rules/mnist_bags.smk"


report: "report/workflow.rst"


rule all:
    input:
        maps=expand(
            "results/maps/{model}/{sample}.png", model=MODELS, sample=SAMPLES_ALL
        ),
        metrics=expand("results/evaluate/{model}/metrics.json", model=MODELS),
        comparison="results/evaluate/comparison.json",
        summary=expand("results/maps/{model}/summary.csv", model=MODELS),
        qc=expand("results/ground_truth/{sample}.qc.png", sample=SAMPLES_PAIRED),
        sheet="results/samples_resolved.tsv",
        sample_qc="results/qc/samples.tsv",
        alphabeta=["results/evaluate/alphabeta_grid.csv"] if ALPHABETA_MODELS else [],
        llp=["results/evaluate/llp_ablation.csv"] if LLP_MODELS else [],
        cells=expand("results/maps/{model}/{sample}.cells.png", model=LLP_MODELS, sample=SAMPLES_ALL),
    default_target: True
