"""Rule llp_ablation: the llp models' interval metrics on the test bags as one table (loss × mask)."""
from tumormap.io import atomic_path, read_json
from tumormap.logs import setup_logging
from tumormap.proportion import ablation_table, plot_ablation_table

log = setup_logging(snakemake.log[0])
options = dict(snakemake.params.options)
table = ablation_table({m: read_json(p).get("proportion", {}) for m, p in zip(options, snakemake.input.metrics)},
                       options)
log.info("llp models on the test bags:\n%s", table.to_string(index=False))
with atomic_path(snakemake.output.table) as tmp:
    table.to_csv(tmp, index=False)
plot_ablation_table(table, snakemake.output.plot)
