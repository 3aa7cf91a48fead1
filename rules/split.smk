rule split:
    output:
        table="results/split.tsv",
    params:
        split=SPLIT,  # computed from the sheet in rules/common.smk (tumormap.split.split_samples)
        patients={s: samples.at[s, "patient"] for s in SAMPLES_SPLIT},
        problem=SPLIT_PROBLEM,  # an empty split: the job fails with this message
    log:
        "logs/split.log",
    benchmark:
        "benchmarks/split.tsv"
    message:
        "Writing the train/val/test split by patient"
    conda:
        "../envs/slides.yaml"
    script:
        "../workflow_scripts/split.py"


rule dataset:
    """The training table of the train/val samples only: a test slide never retrains a model."""
    input:
        tiles=[tile_table(s) for s in TRAIN_VAL],
        ground_truth=expand(rules.ground_truth.output.table, sample=TRAIN_VAL_PAIRED),
        regions=[samples.at[s, "ki67_regions"] for s in TRAIN_VAL if isinstance(samples.at[s, "ki67_regions"], str)],
    output:
        table="results/dataset.parquet",
    params:
        samples=TRAIN_VAL,
        paired=TRAIN_VAL_PAIRED,
        split={s: SPLIT[s] for s in TRAIN_VAL},
        labels={s: samples.at[s, "label"] for s in TRAIN_VAL if isinstance(samples.at[s, "label"], str)},
        purity={s: float(samples.at[s, "purity"]) for s in TRAIN_VAL if pd.notna(samples.at[s, "purity"])},
        intervals={s: samples.at[s, "ki67_interval"] for s in TRAIN_VAL if isinstance(samples.at[s, "ki67_interval"], str)},
        region_samples=[s for s in TRAIN_VAL if isinstance(samples.at[s, "ki67_regions"], str)],
    log:
        "logs/dataset.log",
    benchmark:
        "benchmarks/dataset.tsv"
    message:
        "Joining tiles, ground truth and split of the train/val samples"
    conda:
        "../envs/slides.yaml"
    script:
        "../workflow_scripts/dataset.py"
