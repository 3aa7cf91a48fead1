"""Snakemake adapter: the IHC stain calibration of one sample (ground_truth.calibration config)."""

import pandas as pd

from tumormap.ihc_stain import slide_calibration
from tumormap.io import write_json
from tumormap.logs import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821 - injected by Snakemake
ihc = snakemake.input.ihc  # noqa: F821 - a one-path list from slide_path()
cal = slide_calibration(ihc if isinstance(ihc, str) else ihc[0], pd.read_parquet(snakemake.input.tiles),  # noqa: F821
                        snakemake.wildcards.sample, dict(snakemake.params.cfg))  # noqa: F821
write_json(cal, snakemake.output.calibration)  # noqa: F821
