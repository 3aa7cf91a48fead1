"""Rule predict: a trained model's tumor ratio for every tissue tile of one slide."""
import os

import pandas as pd

from tumormap.io import read_json, write_parquet
from tumormap.logs import setup_logging
from tumormap.predict import load_model, predict_slide

setup_logging(snakemake.log[0])
model, card = load_model(os.path.dirname(snakemake.input.model))
table = predict_slide(model, card, pd.read_parquet(snakemake.input.tiles), snakemake.input.he[0],
                      read_json(snakemake.input.stain), sample=snakemake.wildcards.sample,
                      batch_size=snakemake.params.cfg["batch_size"])
write_parquet(table, snakemake.output.table)
