rule predict_tiles:
    input:
        model="results/models/{model}/model.pt",
        card="results/models/{model}/card.json",
        tiles=rules.tissue.output.table,
        stain=rules.stain.output.stain,
        he=slide_path("he"),
    output:
        table="results/predictions/{model}/{sample}.parquet",
    threads: model_threads
    resources:
        gpu=1,
    log:
        "logs/predict_tiles/{model}/{sample}.log",
    benchmark:
        "benchmarks/predict_tiles/{model}/{sample}.tsv"
    message:
        "Predicting tumor ratio with {wildcards.model} on {wildcards.sample}"
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/predict.py"


rule evaluate:
    input:
        usable_split,
        predictions=expand("results/predictions/{{model}}/{sample}.parquet", sample=TEST_PAIRED),
        ground_truth=expand(rules.ground_truth.output.table, sample=TEST_PAIRED),
    output:
        metrics="results/evaluate/{model}/metrics.json",
        plot=report(
            "results/evaluate/{model}/evaluation.png",
            caption="../report/evaluation.rst",
            category="Evaluation",
            subcategory="{model}",
        ),
    params:
        test_samples=TEST_PAIRED,
        tumor_threshold=lookup(dpath="maps/tumor_threshold", within=config),
    log:
        "logs/evaluate/{model}.log",
    benchmark:
        "benchmarks/evaluate/{model}.tsv"
    message:
        "Evaluating {wildcards.model} on the test split"
    conda:
        "../envs/slides.yaml"
    script:
        "../workflow_scripts/evaluate.py"


rule compare_models:
    input:
        metrics=expand(rules.evaluate.output.metrics, model=MODELS),
    output:
        table=report(
            "results/evaluate/comparison.json",
            caption="../report/comparison.rst",
            category="Evaluation",
        ),
    params:
        models=MODELS,
    log:
        "logs/compare_models.log",
    benchmark:
        "benchmarks/compare_models.tsv"
    message:
        "Comparing models on the test split"
    conda:
        "../envs/slides.yaml"
    script:
        "../workflow_scripts/compare_models.py"
