"""Rule map_summary: one row per slide (mean, tissue-weighted ratio, tumor area) in one CSV."""
import pandas as pd

from tumormap.export import slide_summary, write_summary_csv
from tumormap.logs import setup_logging

setup_logging(snakemake.log[0])
rows = [slide_summary(pd.read_parquet(pred), pd.read_parquet(tissue), sample=sample, model=snakemake.wildcards.model,
                      tumor_threshold=snakemake.params.tumor_threshold)
        for sample, pred, tissue in zip(snakemake.params.samples, snakemake.input.predictions, snakemake.input.tissue)]
write_summary_csv(rows, snakemake.output.csv)
