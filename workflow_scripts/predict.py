"""Rule predict_tiles: a trained model's tumor ratio for every tissue tile of one slide.

`maps.batch_size` and the model's `workers`/`device` are read from the config at run time:
they do not change the predictions, so changing them reruns nothing."""
import os

import pandas as pd
import torch

from tumormap.io import read_json, write_parquet
from tumormap.logs import setup_logging
from tumormap.predict import load_model, predict_slide
from tumormap.train import pick_device

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
entry = snakemake.config["train"]["models"].get(snakemake.wildcards.model, {})
model, card, kind = load_model(os.path.dirname(snakemake.input.model), pick_device(entry.get("device", "auto")))
table = predict_slide(model, card, kind, pd.read_parquet(snakemake.input.tiles), snakemake.input.he[0],
                      read_json(snakemake.input.stain), sample=snakemake.wildcards.sample,
                      batch_size=int(snakemake.config["maps"]["batch_size"]),
                      workers=int(entry.get("workers", 2)),
                      aux={"he_nuclei": pd.read_parquet(snakemake.input.he_nuclei[0])} if snakemake.input.he_nuclei else None)
write_parquet(table, snakemake.output.table)
