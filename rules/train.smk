# One GPU job per model kind; each writes a self-describing model folder
# results/models/<kind>/{model.pt, card.json}.


rule train_regressor:
    input:
        dataset=rules.dataset.output.table,
        stains=expand(rules.stain.output.stain, sample=SAMPLES_PAIRED),
        slides=[samples.at[s, "he"] for s in SAMPLES_PAIRED],
    output:
        model="results/models/regressor/model.pt",
        card="results/models/regressor/card.json",
        history="results/models/regressor/history.csv",
        curve=report(
            "results/models/regressor/loss_curve.png",
            caption="../report/loss_curve.rst",
            category="Training",
            subcategory="regressor",
        ),
    params:
        cfg=lookup(dpath="train/regressor", within=config),
        stain_target=lookup(dpath="stain/target", within=config),
        tile=lookup(dpath="tile", within=config),
        samples=SAMPLES_PAIRED,
        checkpoint_dir="results/checkpoints/regressor",
    resources:
        gpu=1,
    log:
        "logs/train_regressor.log",
    benchmark:
        "benchmarks/train_regressor.tsv"
    message:
        "Training the ResNet18 tile regressor"
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/train_regressor.py"


rule train_mil:
    input:
        dataset=rules.dataset.output.table,
        stains=expand(rules.stain.output.stain, sample=SAMPLES_PAIRED),
        slides=[samples.at[s, "he"] for s in SAMPLES_PAIRED],
    output:
        model="results/models/mil/model.pt",
        card="results/models/mil/card.json",
        history="results/models/mil/history.csv",
        curve=report(
            "results/models/mil/loss_curve.png",
            caption="../report/loss_curve.rst",
            category="Training",
            subcategory="mil",
        ),
    params:
        cfg=lookup(dpath="train/mil", within=config),
        stain_target=lookup(dpath="stain/target", within=config),
        tile=lookup(dpath="tile", within=config),
        samples=SAMPLES_PAIRED,
        purity={s: float(samples.at[s, "purity"]) for s in SAMPLES_PAIRED if pd.notna(samples.at[s, "purity"])},
        checkpoint_dir="results/checkpoints/mil",
    resources:
        gpu=1,
    log:
        "logs/train_mil.log",
    benchmark:
        "benchmarks/train_mil.tsv"
    message:
        "Training the MIL model with distribution pooling"
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/train_mil.py"
