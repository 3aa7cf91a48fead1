"""Rule ground_truth_qc: the StarDist QC gallery of one sample (outlines + ratio histogram)."""

import pandas as pd

from tumormap.ground_truth import ground_truth_qc
from tumormap.io import read_json
from tumormap.logs import setup_logging
from tumormap.nuclei import load_nuclei_model, set_tensorflow_threads

setup_logging(snakemake.log[0])  # noqa: F821 - injected by Snakemake
set_tensorflow_threads(snakemake.threads)  # noqa: F821
cfg = dict(snakemake.params.cfg)  # noqa: F821
model = load_nuclei_model(snakemake.input.model[0] if snakemake.input.model else cfg["nuclei_model"]["source"])  # noqa: F821
ground_truth_qc(pd.read_parquet(snakemake.input.table), pd.read_parquet(snakemake.input.tiles),  # noqa: F821
                snakemake.input.ihc[0], model, sample=snakemake.wildcards.sample,  # noqa: F821
                formula=cfg.get("formula", "dab_over_all"), positivity=cfg.get("positivity", "mean_dab"), params=cfg,
                qc_path=snakemake.output.qc, qc_n=int(snakemake.params.qc_tiles),  # noqa: F821
                calibration=read_json(snakemake.input.calibration))  # noqa: F821
