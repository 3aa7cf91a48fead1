rule predict_tiles:
    input:
        model="results/models/{model}/model.pt",
        card="results/models/{model}/card.json",
        tiles=rules.tissue.output.table,
        stain=rules.stain.output.stain,
        he=slide_path("he"),
        he_nuclei=he_nuclei_for_prediction,
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
        predictions=expand("results/predictions/{{model}}/{sample}.parquet", sample=TEST_PAIRED),
        ground_truth=expand(rules.ground_truth.output.table, sample=TEST_PAIRED),
        regions=[demo_truth(s) for s in TEST_PAIRED if demo_truth(s)],
        card="results/models/{model}/card.json",
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
        region_samples=[s for s in TEST_PAIRED if demo_truth(s)],
        split_problem=SPLIT_PROBLEM,
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


rule llp_ablation:
    """Okuo et al.'s Table 1 from one run: every llp model (loss × mask) on the test bags."""
    input:
        metrics=expand(rules.evaluate.output.metrics, model=LLP_MODELS),
    output:
        table="results/evaluate/llp_ablation.csv",
        plot=report(
            "results/evaluate/llp_ablation.png",
            caption="../report/llp_ablation.rst",
            category="Evaluation",
        ),
    params:
        options={m: model_options(m) for m in LLP_MODELS},  # learned options only: workers/device rerun nothing
    log:
        "logs/llp_ablation.log",
    benchmark:
        "benchmarks/llp_ablation.tsv"
    message:
        "Tabulating the llp models' interval metrics"
    conda:
        "../envs/slides.yaml"
    script:
        "../workflow_scripts/llp_ablation.py"


rule alphabeta_grid:
    """The paper's Table 1: test tile AUC of every α/β model over (α, β)."""
    input:
        metrics=expand(rules.evaluate.output.metrics, model=ALPHABETA_MODELS),
    output:
        table="results/evaluate/alphabeta_grid.csv",
        plot=report(
            "results/evaluate/alphabeta_grid.png",
            caption="../report/alphabeta_grid.rst",
            category="Evaluation",
        ),
    params:
        grid={m: list(alpha_beta(config["train"]["models"][m])) for m in ALPHABETA_MODELS},
    log:
        "logs/alphabeta_grid.log",
    benchmark:
        "benchmarks/alphabeta_grid.tsv"
    message:
        "Tabulating the α/β models' test AUC over (α, β)"
    conda:
        "../envs/slides.yaml"
    script:
        "../workflow_scripts/alphabeta_grid.py"
