"""Rule dataset: kept tiles with their ground truth and split, across samples."""
from tumormap.dataset import build_dataset
from tumormap.io import write_parquet
from tumormap.logs import setup_logging

setup_logging(snakemake.log[0])
write_parquet(build_dataset(snakemake.input.tiles, snakemake.input.ground_truth, snakemake.input.split),
              snakemake.output.table)
