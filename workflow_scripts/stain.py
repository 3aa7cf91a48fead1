"""Rule stain: the Macenko stain matrix of one H&E slide, from its tissue tiles."""
import pandas as pd

from tumormap.io import write_json
from tumormap.logs import setup_logging
from tumormap.stain import estimate_slide_stain

setup_logging(snakemake.log[0])
cfg = snakemake.params.cfg
stain = estimate_slide_stain(pd.read_parquet(snakemake.input.tiles), snakemake.input.he[0], snakemake.wildcards.sample,
                             n_tiles=cfg["n_tiles"], read_px=cfg["read_px"])
write_json(stain, snakemake.output.stain)
