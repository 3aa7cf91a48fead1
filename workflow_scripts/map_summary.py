"""Rule map_summary: one row per slide (mean, tissue-weighted ratio, tumor area) in one CSV."""
import pandas as pd

from tumormap.export import slide_summary, write_summary_csv
from tumormap.io import read_json
from tumormap.logs import setup_logging
from tumormap.proportion import slide_proportion

setup_logging(snakemake.log[0])
card = read_json(snakemake.input.card)
rows = []
for sample, pred, tissue in zip(snakemake.params.samples, snakemake.input.predictions, snakemake.input.tissue):
    predictions = pd.read_parquet(pred)
    row = slide_summary(predictions, pd.read_parquet(tissue), sample=sample, model=snakemake.wildcards.model,
                        tumor_threshold=snakemake.params.tumor_threshold)
    if card["kind"] == "llp":  # the slide as one bag: pooled proportion and its interval
        row.update(slide_proportion(predictions, card["options"]["edges"]))
    rows.append(row)
write_summary_csv(rows, snakemake.output.csv)
