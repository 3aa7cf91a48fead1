"""Rule stain: the Macenko stain matrix of one H&E slide, from its tissue tiles."""
import pandas as pd

from tumormap.io import write_json
from tumormap.logs import setup_logging
from tumormap.stain import estimate_slide_stain, reference_stain

log = setup_logging(snakemake.log[0])
cfg = snakemake.params.cfg
tiles = pd.read_parquet(snakemake.input.tiles)
tissue = tiles[tiles["tissue_keep"]]
if tissue.empty:  # no tissue: nothing will be predicted; keep the DAG going with the reference stain
    log.warning("sample %s: no tissue tiles in %s; writing the reference stain", snakemake.wildcards.sample,
                snakemake.input.he[0])
    stain = dict(reference_stain(), sample=snakemake.wildcards.sample, fallback="no tissue")
else:
    stain = estimate_slide_stain(snakemake.input.he[0], tissue, snakemake.wildcards.sample, n_tiles=cfg["n_tiles"],
                                 tile_px=cfg["read_px"])
write_json(stain, snakemake.output.stain)
