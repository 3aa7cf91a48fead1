"""Rule compare_models: one table of every model's test metrics."""
from tumormap.io import read_json, write_json
from tumormap.logs import setup_logging

setup_logging(snakemake.log[0])
write_json({m: read_json(p) for m, p in zip(snakemake.params.models, snakemake.input.metrics)},
           snakemake.output.table)
