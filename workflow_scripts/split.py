"""Rule split: the train/val/test split by patient (computed from the sheet when the workflow starts)."""
import pandas as pd

from tumormap.io import atomic_path
from tumormap.logs import setup_logging
from tumormap.split import SplitError

log = setup_logging(snakemake.log[0])
p = snakemake.params
if p.problem:
    raise SplitError(p.problem)
table = pd.DataFrame({"sample": list(p.split), "patient": [p.patients[s] for s in p.split],
                      "split": list(p.split.values())}).sort_values("sample")
log.info("split:\n%s", table.to_string(index=False))
with atomic_path(snakemake.output.table) as tmp:
    table.to_csv(tmp, sep="\t", index=False)
