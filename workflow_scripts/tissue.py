"""Rule tissue: tissue fraction of every tile; blank tiles are dropped."""
import pandas as pd

from tumormap.io import write_parquet
from tumormap.logs import setup_logging
from tumormap.qc import no_tissue, run_stage
from tumormap.tissue import tissue_table

setup_logging(snakemake.log[0])
cfg, sample = snakemake.params.cfg, snakemake.wildcards.sample
he, ihc = snakemake.input.he[0], snakemake.input.ihc[0] if snakemake.input.ihc else None
tiles = pd.read_parquet(snakemake.input.tiles)
table = run_stage("tissue", sample, snakemake.output.record,
                  lambda: tissue_table(tiles, he, ihc, sample, min_tissue=cfg["min_tissue"], read_px=cfg["read_px"],
                                       white=cfg["white"], min_saturation=cfg["min_saturation"]),
                  on_failure=lambda: no_tissue(tiles), files=(he, ihc),
                  counts=lambda t: {"n_tissue": int(t["tissue_keep"].sum())},
                  skip="no tiles: the tile step failed" if tiles.empty else None)
write_parquet(table, snakemake.output.table)
