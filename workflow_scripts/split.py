"""Rule split: train/val/test by patient."""
import pandas as pd

from tumormap.io import atomic_path
from tumormap.logs import setup_logging
from tumormap.split import split_samples

log = setup_logging(snakemake.log[0])
p = snakemake.params
table = split_samples(pd.DataFrame({"sample": p.samples, "patient": p.patients}), p.cfg["fractions"], p.cfg["seed"])
log.info("split:\n%s", table.to_string(index=False))
with atomic_path(snakemake.output.table) as tmp:
    table.to_csv(tmp, sep="\t", index=False)
