"""Rule tissue: tissue fraction of every tile; blank tiles are dropped."""
import pandas as pd

from tumormap.io import write_parquet
from tumormap.logs import setup_logging
from tumormap.tissue import tissue_table

setup_logging(snakemake.log[0])
cfg = snakemake.params.cfg
table = tissue_table(pd.read_parquet(snakemake.input.tiles), snakemake.input.he[0],
                     snakemake.input.ihc[0] if snakemake.input.ihc else None, snakemake.wildcards.sample,
                     min_tissue=cfg["min_tissue"], read_px=cfg["read_px"], white=cfg["white"],
                     min_saturation=cfg["min_saturation"])
write_parquet(table, snakemake.output.table)
