rule tile:
    input:
        he=slide_path("he"),
        ihc=slide_path("ihc"),
        transform=registration_input,
    output:
        table="results/tiles/{sample}.parquet",
        record="results/qc/tile/{sample}.json",
    params:
        mpp=lookup(dpath="tile/mpp", within=config),
        tile_px=lookup(dpath="tile/tile_px", within=config),
        fallback_mpp=lambda wc: optional_float(samples.at[wc.sample, "mpp"]) or config["tile"]["fallback_mpp"],
        offset=lambda wc: (optional_float(samples.at[wc.sample, "offset_x"]) or 0.0,
                           optional_float(samples.at[wc.sample, "offset_y"]) or 0.0),
    log:
        "logs/tile/{sample}.log",
    benchmark:
        "benchmarks/tile/{sample}.tsv"
    group:
        "per_sample"
    message:
        "Tiling {wildcards.sample} at {params.mpp} µm/px, {params.tile_px} px"
    conda:
        "../envs/slides.yaml"
    script:
        "../workflow_scripts/tile.py"
