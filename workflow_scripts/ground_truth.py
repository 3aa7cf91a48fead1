"""Snakemake adapter: StarDist tumor-ratio ground truth for one sample's kept IHC tiles."""

import pandas as pd

from tumormap.ground_truth import ground_truth_table
from tumormap.io import write_parquet
from tumormap.logs import setup_logging
from tumormap.nuclei import load_nuclei_model

setup_logging(snakemake.log[0])  # noqa: F821 - injected by Snakemake
cfg = dict(snakemake.params.cfg)  # noqa: F821
model_in = snakemake.input.get("model", None)  # noqa: F821
if isinstance(model_in, (list, tuple)) or hasattr(model_in, "__len__") and not isinstance(model_in, str):
    model_in = model_in[0] if len(model_in) else None
ihc = snakemake.input.ihc  # noqa: F821 - a path, or a one-path list from slide_path()
ihc = ihc if isinstance(ihc, str) else ihc[0]
model = load_nuclei_model(model_in or cfg["nuclei_model"]["source"])
table = ground_truth_table(
    pd.read_parquet(snakemake.input.tiles), ihc, model,  # noqa: F821
    sample=snakemake.wildcards.sample,  # noqa: F821
    formula=cfg.get("formula", "dab_over_all"), positivity=cfg.get("positivity", "mean_dab"),
    params=cfg, qc_path=snakemake.output.qc, qc_n=int(cfg.get("qc_tiles", 4)))  # noqa: F821
write_parquet(table, snakemake.output.table)  # noqa: F821
