"""Rule train_model: one model of train.models, of any kind (GPU when the job has one).

`workers` and `device` are read from the config at run time: they say how to run, not what
is learned, so changing them retrains nothing."""
import os

import pandas as pd
import torch

from tumormap.io import file_digest, read_json
from tumormap.logs import setup_logging
from tumormap.models import RUNTIME_OPTIONS
from tumormap.stain import load_target, reference_stain
from tumormap.train import train_model

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
p = snakemake.params
name = snakemake.wildcards.model
entry = snakemake.config["train"]["models"][name]
options = {**p.options, **{k: entry[k] for k in RUNTIME_OPTIONS if k in entry}}
split = pd.read_csv(snakemake.input.split, sep="\t", dtype={"sample": str})
# the H&E nuclei of an llp model's mask: the tables for the kind, their digests for the content key
nuclei = dict(zip(p.samples, snakemake.input.he_nuclei))
extra = {"he_nuclei": {s: file_digest(path) for s, path in nuclei.items()}} if nuclei else {}
train_model(name, options, pd.read_parquet(snakemake.input.dataset), dict(zip(p.samples, snakemake.input.slides)),
            {s: read_json(path) for s, path in zip(p.samples, snakemake.input.stains)},
            load_target(snakemake.input.target[0]) if snakemake.input.target else reference_stain(),
            os.path.dirname(snakemake.output.model), p.checkpoint_dir, tile_mpp=p.tile_mpp, tile_px=p.tile_px,
            test_samples=split.loc[split["split"] == "test", "sample"].tolist(), extra=extra,
            tables={"he_nuclei_tables": {s: pd.read_parquet(path) for s, path in nuclei.items()}} if nuclei else None)
