"""Rule qc_samples: one row per sample, usable or the stage and reason it was left out."""
from tumormap.io import atomic_path
from tumormap.logs import setup_logging
from tumormap.qc import qc_table, read_records

log = setup_logging(snakemake.log[0])
records = read_records(snakemake.input.records) + read_records(snakemake.input.registration, stage="register")
table = qc_table(records, snakemake.params.samples, snakemake.params.paired)
bad = table[~table["usable"]]
for row in bad.itertuples():
    log.warning("sample %s left out at %s: %s %s", row.sample, row.stage, row.reason, row.file)
log.info("%d of %d samples usable", len(table) - len(bad), len(table))
with atomic_path(snakemake.output.table) as tmp:
    table.to_csv(tmp, sep="\t", index=False)
