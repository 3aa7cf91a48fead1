# The embedded demo: synthetic slide pairs with a known tumor ratio per region,
# generated only for sample-sheet paths under {resources_dir}/demo/.


rule demo_pair:
    output:
        he=f"{config['resources_dir']}/demo/{{pair}}_he.tiff",
        ihc=f"{config['resources_dir']}/demo/{{pair}}_ihc.tiff",
        truth=f"{config['resources_dir']}/demo/{{pair}}_truth.parquet",
    params:
        size_px=lookup(dpath="demo/size_px", within=config),
        mpp=lookup(dpath="demo/mpp", within=config),
        region_px=lookup(dpath="demo/region_px", within=config),
        seed=lookup(dpath="demo/seed", within=config),
        ihc_warp=lambda wc: config["demo"].get("ihc_warp"),
        tumor_free=demo_tumor_free,
    log:
        "logs/demo_pair/{pair}.log",
    benchmark:
        "benchmarks/demo_pair/{pair}.tsv"
    message:
        "Generating synthetic H&E/IHC slide pair {wildcards.pair}"
    conda:
        "../envs/slides.yaml"
    script:
        "../workflow_scripts/demo_pair.py"


rule demo_nuclei:
    output:
        npz=f"{config['resources_dir']}/demo/nuclei_training.npz",
    params:
        seed=lookup(dpath="demo/seed", within=config),
        mpp=lookup(dpath="tile/mpp", within=config),
    log:
        "logs/demo_nuclei.log",
    benchmark:
        "benchmarks/demo_nuclei.tsv"
    message:
        "Rendering synthetic IHC patches with nucleus masks for StarDist training"
    conda:
        "../envs/slides.yaml"
    script:
        "../workflow_scripts/demo_nuclei.py"
