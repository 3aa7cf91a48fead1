"""Rule ssim: structural similarity of each H&E/IHC tile pair."""
import pandas as pd

from tumormap.io import write_parquet
from tumormap.logs import setup_logging
from tumormap.qc import no_pairs, run_stage
from tumormap.ssim import ssim_table

setup_logging(snakemake.log[0])
cfg, sample = snakemake.params.cfg, snakemake.wildcards.sample
he, ihc = snakemake.input.he[0], snakemake.input.ihc[0]
tissue = pd.read_parquet(snakemake.input.tiles)
table = run_stage("ssim", sample, snakemake.output.record,
                  lambda: ssim_table(tissue, he, ihc, sample, ssim_min=cfg["ssim_min"], read_px=cfg["read_px"]),
                  on_failure=lambda: no_pairs(tissue), files=(he, ihc),
                  counts=lambda t: {"n_kept": int(t["keep"].sum())})
write_parquet(table, snakemake.output.table)
