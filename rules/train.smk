# One GPU job per model NAME of train.models; the entry's `kind` picks the module
# (tumormap/models/<kind>.py). Each writes a self-describing model folder
# results/models/<name>/{model.pt, card.json}. Inputs are the train/val samples only.


rule train_model:
    input:
        dataset=rules.dataset.output.table,
        stains=expand(rules.stain.output.stain, sample=TRAIN_VAL),
        slides=[samples.at[s, "he"] for s in TRAIN_VAL],
        target=stain_target_input,
        split=ancient(rules.split.output.table),  # for the card's test list; never a retrain by itself
        he_nuclei=he_nuclei_for_training,  # llp models with the nucleus mask
    output:
        model="results/models/{model}/model.pt",
        card="results/models/{model}/card.json",
        history="results/models/{model}/history.csv",
        curve=report(
            "results/models/{model}/loss_curve.png",
            caption="../report/loss_curve.rst",
            category="Training",
            subcategory="{model}",
        ),
    params:
        options=lambda wc: model_options(wc.model),
        tile_mpp=lookup(dpath="tile/mpp", within=config),
        tile_px=lookup(dpath="tile/tile_px", within=config),
        samples=TRAIN_VAL,
        checkpoint_dir=lambda wc: f"results/checkpoints/{wc.model}",
    threads: model_threads
    resources:
        gpu=1,
    log:
        "logs/train_model/{model}.log",
    benchmark:
        "benchmarks/train_model/{model}.tsv"
    message:
        "Training model {wildcards.model}"
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/train_model.py"
