"""Rule tumor_map: predicted beside IHC-derived tumor-ratio map of one slide."""
import pandas as pd

from tumormap.export import tiles_geojson, write_geojson
from tumormap.logs import setup_logging
from tumormap.maps import slide_maps

setup_logging(snakemake.log[0])
write_geojson(tiles_geojson(pd.read_parquet(snakemake.input.predictions), sample=snakemake.wildcards.sample,
                            model=snakemake.wildcards.model), snakemake.output.geojson)
slide_maps(snakemake.input.predictions, snakemake.input.tiles, snakemake.input.ground_truth or None,
           snakemake.input.he[0], sample=snakemake.wildcards.sample, model=snakemake.wildcards.model,
           png=snakemake.output.png, arrays=snakemake.output.arrays, agreement=snakemake.output.agreement,
           thumbnail_px=snakemake.params.cfg["thumbnail_px"])
