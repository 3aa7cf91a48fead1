"""Rule tumor_map: predicted beside IHC-derived tumor-ratio map of one slide.

With -k, a slide whose H&E cannot be read (its sample is in results/qc/samples.tsv) gets a
placeholder figure saying so, empty arrays and agreement, so the report still builds."""
import numpy as np
import pandas as pd

from tumormap.export import tiles_geojson, write_geojson
from tumormap.io import atomic_path, write_json
from tumormap.logs import setup_logging
from tumormap.maps import slide_maps
from tumormap.qc import data_errors, keep_going, placeholder_figure

log = setup_logging(snakemake.log[0])
sample, model = snakemake.wildcards.sample, snakemake.wildcards.model
write_geojson(tiles_geojson(pd.read_parquet(snakemake.input.predictions), sample=sample, model=model,
                            tumor_threshold=snakemake.params.tumor_threshold), snakemake.output.geojson)
try:
    slide_maps(snakemake.input.predictions, snakemake.input.tiles, snakemake.input.ground_truth or None,
               snakemake.input.he[0], sample=sample, model=model, png=snakemake.output.png,
               arrays=snakemake.output.arrays, agreement=snakemake.output.agreement,
               thumbnail_px=snakemake.params.thumbnail_px)
except data_errors() as exc:
    if not keep_going():
        raise
    log.warning("sample %s: not mapped (%s)", sample, exc)
    placeholder_figure(snakemake.output.png, f"{model}: {sample}", f"not mapped: {exc}")
    with atomic_path(snakemake.output.arrays) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, predicted=np.zeros((0, 0), np.float32), ihc=np.zeros((0, 0), np.float32))
    write_json({"sample": sample, "model": model, "n_tiles": 0, "mapped": False, "reason": str(exc)},
               snakemake.output.agreement)
