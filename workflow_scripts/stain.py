"""Rule stain: the Macenko stain matrix of one H&E slide, from its tissue tiles.

Too little tissue or a degenerate estimate gives the reference stain, flagged with
``fallback``; an unreadable slide under keep-going too (see tumormap.qc)."""
import pandas as pd

from tumormap.io import write_json
from tumormap.logs import setup_logging
from tumormap.qc import run_stage
from tumormap.stain import reference_stain, slide_stain_or_reference

setup_logging(snakemake.log[0])
cfg, sample, he = snakemake.params.cfg, snakemake.wildcards.sample, snakemake.input.he[0]
tiles = pd.read_parquet(snakemake.input.tiles)
tissue = tiles[tiles["tissue_keep"]]
stain = run_stage("stain", sample, snakemake.output.record,
                  lambda: slide_stain_or_reference(he, tissue, sample, n_tiles=cfg["n_tiles"], tile_px=cfg["read_px"],
                                                   min_tissue_tiles=cfg["min_tissue_tiles"],
                                                   min_angle_deg=cfg["min_angle_deg"]),
                  on_failure=lambda: dict(reference_stain(), sample=sample, fallback="slide unreadable"), files=(he,),
                  counts=lambda s: {"fallback": s.get("fallback", "")})
write_json(stain, snakemake.output.stain)
