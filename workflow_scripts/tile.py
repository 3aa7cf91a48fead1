"""Rule tile: the tile grid of one sample's H&E and IHC slides (IHC through its registration, if any)."""
from tumormap.io import write_parquet
from tumormap.logs import setup_logging
from tumormap.qc import empty_tiles, run_stage
from tumormap.registration import load_transform
from tumormap.tiling import apply_registration, tile_grid

setup_logging(snakemake.log[0])
p, sample = snakemake.params, snakemake.wildcards.sample
he, ihc = snakemake.input.he[0], snakemake.input.ihc[0] if snakemake.input.ihc else None


def tiles():
    table = tile_grid(he, ihc, sample, target_mpp=p.mpp, tile_px=p.tile_px, he_mpp=p.fallback_mpp,
                      ihc_mpp=p.fallback_mpp, offset=tuple(p.offset))
    if snakemake.input.transform:
        transform, registration = load_transform(snakemake.input.transform[0])
        table = apply_registration(table, registration, transform)
    return table


table = run_stage("tile", sample, snakemake.output.record, tiles,
                  on_failure=lambda: empty_tiles(sample, paired=ihc is not None), files=(he, ihc),
                  counts=lambda t: {"n_tiles": len(t)})
write_parquet(table, snakemake.output.table)
