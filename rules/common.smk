# Reads and checks the config and the sample sheet before any rule exists; every
# other rule file trusts SAMPLES, config and the helpers below.

import os
import re

import pandas as pd
from snakemake.utils import validate

from tumormap.models import known_kinds, learned_options
from tumormap.proportion import check_options as check_llp_options, check_sheet_intervals, uses_nuclei
from tumormap.proportion import PAPER_EDGES
from tumormap.qc import KEEP_GOING_ENV
from tumormap.samples import he_only_samples, optional_float, paired_samples, read_sample_sheet
from tumormap.sources import resolve_sheet
from tumormap.split import SplitError, check_split, split_samples
from tumormap.weak_labels import alpha_beta, check_alpha_beta, expand_grids


validate(config, "../schemas/config.schema.yaml", set_default=True)

# The sheet as written, then each slide resolved to the local path the rules read:
# local files in place, URLs and zenodo: references under {resources_dir}/downloads/.
_sheet = read_sample_sheet(config["samples"])
validate(_sheet.astype(object).where(_sheet.notna(), None), "../schemas/samples.schema.yaml")
samples = resolve_sheet(_sheet, config["download"], config["resources_dir"], config["exclude"]).set_index(
    "sample", drop=False)

# With --keep-going, a per-sample stage that meets bad data writes empty, flagged outputs instead of
# failing, so the cohort goes on (tumormap.qc). Passed as an environment variable, not a param: toggling
# -k must not make every job stale. Set when the main process starts executing (the settings are not
# known while parsing); jobs inherit it: local jobs as subprocesses, SLURM jobs through sbatch's
# --export=ALL (remote jobs run with --no-hooks, so they never reset it).
onstart:
    os.environ[KEEP_GOING_ENV] = "1" if workflow.execution_settings.keep_going else "0"


SAMPLES_ALL = list(samples.index)
SAMPLES_PAIRED = paired_samples(samples)
SAMPLES_HE_ONLY = he_only_samples(samples)
config["train"]["models"] = expand_grids(config["train"]["models"])  # alphabeta_grid: paper → 15 entries
MODELS = list(config["train"]["models"])
ALPHABETA_MODELS = [m for m, e in config["train"]["models"].items() if e.get("kind") == "alphabeta"]
for _name, _entry in config["train"]["models"].items():
    if _entry.get("kind") not in known_kinds():
        raise ValueError(f"config train.models.{_name}: unknown kind {_entry.get('kind')!r}; "
                         f"known kinds: {', '.join(known_kinds())}")
    if _entry["kind"] == "alphabeta":
        check_alpha_beta(*alpha_beta(_entry), f"config train.models.{_name}")
    if _entry["kind"] == "llp":
        check_llp_options(_entry, f"config train.models.{_name}")
        check_sheet_intervals(_sheet, _entry.get("edges", PAPER_EDGES), config["samples"])
LLP_MODELS = [m for m, e in config["train"]["models"].items() if e.get("kind") == "llp"]

# The split is a pure function of the sheet (patients) and split.seed, known before any job:
# so the dataset and the trainers depend on train/val samples only, and evaluation on test.
SAMPLES_LABELLED = [s for s in SAMPLES_HE_ONLY if any(isinstance(samples.at[s, c], str)
                                                      for c in ("label", "ki67_interval", "ki67_regions"))]
SAMPLES_SPLIT = SAMPLES_PAIRED + SAMPLES_LABELLED
_split_table = pd.DataFrame({"sample": SAMPLES_SPLIT,
                             "patient": [samples.at[s, "patient"] for s in SAMPLES_SPLIT],
                             "split": [samples.at[s, "split"] if "split" in samples else None for s in SAMPLES_SPLIT]})
_split = split_samples(_split_table, config["split"]["fractions"], config["split"]["seed"], require=())
SPLIT = _split.set_index("sample")["split"].to_dict()
# An empty train/val/test split fails only the jobs that need the split (split, and so training;
# evaluate), not the parse: tiling, tissue, SSIM and ground truth of a small cohort still run.
try:
    check_split(_split, config["split"]["fractions"], config["split"]["seed"])
    SPLIT_PROBLEM = None
except SplitError as _exc:
    SPLIT_PROBLEM = str(_exc)
TRAIN_VAL = [s for s in SAMPLES_SPLIT if SPLIT[s] in ("train", "val")]
TRAIN_VAL_PAIRED = [s for s in TRAIN_VAL if s in SAMPLES_PAIRED]
TEST_PAIRED = [s for s in SAMPLES_PAIRED if SPLIT[s] == "test"]


wildcard_constraints:
    sample="|".join(map(re.escape, SAMPLES_ALL)) or "NO_SAMPLES",
    model="|".join(map(re.escape, MODELS)),


def demo_tumor_free(wildcards):
    """A demo slide is drawn without tumor when the sheet labels its sample normal."""
    he = f"{config['resources_dir']}/demo/{wildcards.pair}_he.tiff"
    return bool(((samples["he"] == he) & (samples["label"] == "normal")).any())


def demo_truth(sample):
    """The drawn-region truth of a demo slide (None for any other slide)."""
    match = re.fullmatch(re.escape(f"{config['resources_dir']}/demo/") + r"(.+)_he\.tiff", str(samples.at[sample, "he"]))
    return f"{config['resources_dir']}/demo/{match.group(1)}_truth.parquet" if match else None


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
        return ["results/nuclei_model/model"]
    return [source] if os.path.exists(source) else []


def nuclei_training_input(wildcards):
    if config["ground_truth"]["nuclei_model"].get("train_data", "synthetic") == "synthetic":
        return [f"{config['resources_dir']}/demo/nuclei_training.npz"]
    return []


def tile_table(sample):
    """The last per-sample tile table: SSIM-filtered for pairs, tissue-filtered for an H&E alone."""
    return f"results/{'ssim' if sample in SAMPLES_PAIRED else 'tissue'}/{sample}.parquet"


def model_options(name):
    """A model entry's learned options (params: changing them retrains)."""
    return learned_options(config["train"]["models"][name])


def he_nuclei_for_training(wildcards):
    """The H&E nuclei of the train/val samples, for a model with the nucleus mask (llp)."""
    if uses_nuclei(config["train"]["models"][wildcards.model]):
        return expand("results/he_nuclei/{sample}.parquet", sample=TRAIN_VAL)
    return []


def he_nuclei_for_prediction(wildcards):
    if uses_nuclei(config["train"]["models"][wildcards.model]):
        return [f"results/he_nuclei/{wildcards.sample}.parquet"]
    return []


def model_threads(wildcards):
    """DataLoader workers + 1 for the main process."""
    return int(config["train"]["models"][wildcards.model].get("workers", 2)) + 1


def stain_target_input(wildcards):
    target = config["stain"]["target"]
    return [] if target == "reference" else [target]


def ground_truth_params(wildcards):
    """What decides the ratios (params: changing it reruns StarDist); batch_size, threads and
    qc_tiles do not, and the nuclei model is an input unless it is a pretrained name."""
    cfg = {k: v for k, v in config["ground_truth"].items() if k not in ("batch_size", "qc_tiles", "threads")}
    cfg["nuclei_model"] = {"source": config["ground_truth"]["nuclei_model"]["source"]}
    return cfg


def ground_truth_if_paired(wildcards):
    if wildcards.sample in SAMPLES_PAIRED:
        return f"results/ground_truth/{wildcards.sample}.parquet"
    return []


def _mnist_bags(key):
    """Params function of the mnist_bags rule: one key of config['mnist_bags']."""
    return lookup(dpath=f"mnist_bags/{key}", within=config)


def registration_input(wildcards):
    """The tile rule's transform: the register rule's JSON, unless registration.method is none."""
    if config["registration"]["method"] != "none" and wildcards.sample in SAMPLES_PAIRED:
        return [f"results/registration/{wildcards.sample}.json"]
    return []


def sheet_offset(wildcards):
    """The sheet's offset_x/offset_y (IHC level-0 px) as [x, y], or None where neither is given."""
    x, y = (optional_float(samples.at[wildcards.sample, k]) for k in ("offset_x", "offset_y"))
    return None if x is None and y is None else [x or 0.0, y or 0.0]
