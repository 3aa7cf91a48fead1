"""Rule tumor_map: predicted beside IHC-derived tumor-ratio map of one slide."""
from tumormap.logs import setup_logging
from tumormap.maps import slide_maps

setup_logging(snakemake.log[0])
slide_maps(snakemake.input.predictions, snakemake.input.tiles, snakemake.input.ground_truth or None,
           snakemake.input.he[0], sample=snakemake.wildcards.sample, model=snakemake.wildcards.model,
           png=snakemake.output.png, arrays=snakemake.output.arrays, agreement=snakemake.output.agreement,
           thumbnail_px=snakemake.params.cfg["thumbnail_px"])
