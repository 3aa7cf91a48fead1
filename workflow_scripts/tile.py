"""Rule tile: the tile grid of one sample's H&E and IHC slides."""
from tumormap.io import write_parquet
from tumormap.logs import setup_logging
from tumormap.tiling import tile_grid

setup_logging(snakemake.log[0])
p = snakemake.params
table = tile_grid(snakemake.input.he[0], snakemake.input.ihc[0] if snakemake.input.ihc else None,
                  snakemake.wildcards.sample, target_mpp=p.mpp, tile_px=p.tile_px, he_mpp=p.fallback_mpp,
                  ihc_mpp=p.fallback_mpp, offset=tuple(p.offset))
write_parquet(table, snakemake.output.table)
