"""Rule cell_maps: an llp model's positive/negative maps over the nuclei for a few tiles of a slide."""
import os

import pandas as pd
import torch

from tumormap.io import read_json
from tumormap.logs import setup_logging
from tumormap.models.llp import cell_overlay
from tumormap.predict import load_model

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
model, card, kind = load_model(os.path.dirname(snakemake.input.model), torch.device("cpu"))
tiles = pd.read_parquet(snakemake.input.tiles)
cell_overlay(kind, model, card, tiles[tiles["tissue_keep"]].reset_index(drop=True),
             pd.read_parquet(snakemake.input.predictions), snakemake.input.he[0], read_json(snakemake.input.stain),
             sample=snakemake.wildcards.sample,
             nuclei=pd.read_parquet(snakemake.input.he_nuclei[0]) if snakemake.input.he_nuclei else None,
             path=snakemake.output.png, n_tiles=int(snakemake.params.n_tiles))
