# Reads and checks the config and the sample sheet before any rule exists; every
# other rule file trusts SAMPLES, config and the helpers below.

import os
import re

import pandas as pd
from snakemake.utils import validate

from tumormap.samples import he_only_samples, optional_float, paired_samples, read_sample_sheet
from tumormap.sources import resolve_sheet


validate(config, "../schemas/config.schema.yaml", set_default=True)

# The sheet as written, then each slide resolved to the local path the rules read:
# local files in place, URLs and zenodo: references under {resources_dir}/downloads/.
_sheet = read_sample_sheet(config["samples"])
validate(_sheet.astype(object).where(_sheet.notna(), None), "../schemas/samples.schema.yaml")
samples = resolve_sheet(_sheet, config["download"], config["resources_dir"]).set_index("sample", drop=False)

SAMPLES_ALL = list(samples.index)
SAMPLES_PAIRED = paired_samples(samples)
SAMPLES_HE_ONLY = he_only_samples(samples)
MODELS = list(config["train"]["models"])


wildcard_constraints:
    sample="|".join(map(re.escape, SAMPLES_ALL)) or "NO_SAMPLES",
    model="|".join(map(re.escape, MODELS)),


def slide_path(stain):
    """Input function: the local path of a sample's `he` or `ihc` slide."""

    def get(wildcards):
        path = samples.at[wildcards.sample, stain]
        return [path] if isinstance(path, str) and path else []

    return get


def nuclei_model_input(wildcards):
    """The model the ground truth uses: trained here (source: train) or a local folder."""
    source = config["ground_truth"]["nuclei_model"]["source"]
    if source == "train":
        return "results/nuclei_model/model"
    return [source] if os.path.exists(source) else []


def nuclei_training_input(wildcards):
    if config["ground_truth"]["nuclei_model"].get("train_data", "synthetic") == "synthetic":
        return [f"{config['resources_dir']}/demo/nuclei_training.npz"]
    return []


def ground_truth_if_paired(wildcards):
    if wildcards.sample in SAMPLES_PAIRED:
        return f"results/ground_truth/{wildcards.sample}.parquet"
    return []


def _mnist_bags(key):
    """Params function of the mnist_bags rule: one key of config['mnist_bags']."""
    return lookup(dpath=f"mnist_bags/{key}", within=config)
