# Downloads of remote slides (http(s) URLs and Zenodo files) into
# {resources_dir}/downloads/{sample}/{filename}, verified and resumable.
#
# Expects, from rules/common.smk: `samples`, the sheet returned by
# tumormap.sources.resolve_sheet (indexed by sample, or with a `sample` column), and
# the config keys `resources_dir` (default "resources") and `download` (see
# tumormap.download.DOWNLOAD_DEFAULTS; `job_retries` = Snakemake retries, default 1).
# Local slides are read in place and never pass through this rule.
# Cap parallel downloads with `--resources downloads=N` (each job takes 1).

from tumormap.download import download_settings
from tumormap.sources import download_params, sheet_digest

DOWNLOAD_CFG = config.get("download") or {}
DOWNLOAD_DIR = f"{config.get('resources_dir', 'resources')}/downloads"


rule download_slide:
    output:
        f"{DOWNLOAD_DIR}/{{sample}}/{{filename}}",
    params:
        source=lambda w: download_params(samples, w.sample, w.filename),
        settings=download_settings(DOWNLOAD_CFG),
    log:
        "logs/download/{sample}/{filename}.log",
    wildcard_constraints:
        sample=r"[^/]+",
        filename=r"[^/]+",
    localrule: True
    resources:
        downloads=1,
    retries: int(DOWNLOAD_CFG.get("job_retries", 1))
    conda:
        "../envs/download.yaml"
    script:
        "../workflow_scripts/download_slide.py"


rule samples_resolved:
    """The resolved sample sheet (local path, URL, md5 per slide) for the user to check."""
    output:
        "results/samples_resolved.tsv",
    params:
        digest=sheet_digest(samples),  # reruns when the resolved sheet changes
    log:
        "logs/samples_resolved.log",
    localrule: True
    run:
        from tumormap.sources import write_resolved_sheet

        write_resolved_sheet(samples, output[0])
