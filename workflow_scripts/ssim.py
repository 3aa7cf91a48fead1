"""Rule ssim: structural similarity of each H&E/IHC tile pair."""
import pandas as pd

from tumormap.io import write_parquet
from tumormap.logs import setup_logging
from tumormap.ssim import ssim_table

setup_logging(snakemake.log[0])
cfg = snakemake.params.cfg
table = ssim_table(pd.read_parquet(snakemake.input.tiles), snakemake.input.he[0], snakemake.input.ihc[0],
                   snakemake.wildcards.sample, ssim_min=cfg["ssim_min"], read_px=cfg["read_px"])
write_parquet(table, snakemake.output.table)
