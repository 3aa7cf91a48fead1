"""Rule alphabeta_grid: the test AUC of every α/β model over (α, β), as a table and a heatmap."""
from tumormap.evaluate import alphabeta_grid_table, plot_alphabeta_grid
from tumormap.io import atomic_path, read_json
from tumormap.logs import setup_logging

log = setup_logging(snakemake.log[0])
grid = {name: tuple(ab) for name, ab in snakemake.params.grid.items()}
table = alphabeta_grid_table({m: read_json(p) for m, p in zip(grid, snakemake.input.metrics)}, grid)
log.info("α/β models on the test split:\n%s", table.to_string(index=False))
with atomic_path(snakemake.output.table) as tmp:
    table.to_csv(tmp, index=False)
plot_alphabeta_grid(table, snakemake.output.plot)
