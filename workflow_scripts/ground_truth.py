"""Snakemake adapter: StarDist tumor-ratio ground truth for one sample's kept IHC tiles.

`ground_truth.batch_size` is read from the config at run time (it does not change the ratios)."""

import numpy as np
import pandas as pd

from tumormap.ground_truth import ground_truth_table
from tumormap.io import read_json, write_parquet
from tumormap.logs import setup_logging
from tumormap.nuclei import load_nuclei_model, set_tensorflow_threads
from tumormap.qc import run_stage

setup_logging(snakemake.log[0])  # noqa: F821 - injected by Snakemake
set_tensorflow_threads(snakemake.threads)  # noqa: F821
cfg = dict(snakemake.params.cfg, batch_size=snakemake.config["ground_truth"]["batch_size"])  # noqa: F821
model = load_nuclei_model(snakemake.input.model[0] if snakemake.input.model else cfg["nuclei_model"]["source"])  # noqa: F821
ihc = snakemake.input.ihc[0]  # noqa: F821
sample = snakemake.wildcards.sample  # noqa: F821
tiles = pd.read_parquet(snakemake.input.tiles)  # noqa: F821


def gt(kept):
    return ground_truth_table(kept, ihc, model, sample=sample, formula=cfg.get("formula", "dab_over_all"),
                              positivity=cfg.get("positivity", "mean_dab"), params=cfg,
                              calibration=read_json(snakemake.input.calibration))  # noqa: F821


# keep-going after a data error: the same (typed, empty) table with no tile kept (nothing is read)
table = run_stage("ground_truth", sample, snakemake.output.record, lambda: gt(tiles),  # noqa: F821
                  on_failure=lambda: gt(tiles.assign(keep=False)), files=(ihc,),
                  counts=lambda t: {"n_ratio": int(np.isfinite(t["tumor_ratio"]).sum())})
write_parquet(table, snakemake.output.table)  # noqa: F821
