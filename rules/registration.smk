# Registration of each pair's IHC onto its H&E (README "Registration"): only when
# registration.method is not none; tiling then reads every IHC tile through the transform.


rule register:
    input:
        he=slide_path("he"),
        ihc=slide_path("ihc"),
    output:
        transform="results/registration/{sample}.json",
        qc="results/registration/{sample}.png",
        field="results/registration/{sample}.field.npz",
    params:
        cfg=lookup(dpath="registration", within=config),
        fallback_mpp=lambda wc: optional_float(samples.at[wc.sample, "mpp"]) or config["tile"]["fallback_mpp"],
        offset=sheet_offset,
    log:
        "logs/register/{sample}.log",
    benchmark:
        "benchmarks/register/{sample}.tsv"
    group:
        "per_sample"
    threads: 1
    message:
        "Registering the IHC of {wildcards.sample} to its H&E ({params.cfg[method]})"
    conda:
        "../envs/slides.yaml"
    script:
        "../workflow_scripts/register.py"
