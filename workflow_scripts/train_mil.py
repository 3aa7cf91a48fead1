"""Rule train_mil: MIL with distribution pooling on neighbourhood bags of tiles (GPU when the job has one)."""
import os

import pandas as pd

from tumormap.io import read_json
from tumormap.logs import setup_logging
from tumormap.mil_slides import train_mil
from tumormap.stain import load_target

setup_logging(snakemake.log[0])
p = snakemake.params
train_mil(pd.read_parquet(snakemake.input.dataset), dict(zip(p.samples, snakemake.input.slides)),
          {s: read_json(path) for s, path in zip(p.samples, snakemake.input.stains)}, load_target(p.stain_target),
          os.path.dirname(snakemake.output.model), p.checkpoint_dir, dict(p.cfg), tile_mpp=p.tile["mpp"],
          tile_px=p.tile["tile_px"], purity=dict(p.purity))
