"""Rule train_regressor: the ResNet18 tile regressor (GPU when the job has one)."""
import os

import pandas as pd

from tumormap.io import read_json
from tumormap.logs import setup_logging
from tumormap.stain import load_target
from tumormap.train import train_regressor

setup_logging(snakemake.log[0])
p = snakemake.params
slides = dict(zip(p.samples, snakemake.input.slides))
stains = {s: read_json(path) for s, path in zip(p.samples, snakemake.input.stains)}
train_regressor(pd.read_parquet(snakemake.input.dataset), slides, stains, load_target(p.stain_target),
                os.path.dirname(snakemake.output.model), p.checkpoint_dir, dict(p.cfg), tile_mpp=p.tile["mpp"],
                tile_px=p.tile["tile_px"])
