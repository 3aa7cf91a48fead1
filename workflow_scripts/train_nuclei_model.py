"""Snakemake adapter: train the StarDist nuclei model (ground_truth.nuclei_model config)."""

from tumormap.io import write_json
from tumormap.logs import setup_logging
from tumormap.nuclei import set_tensorflow_threads, train_from_config

setup_logging(snakemake.log[0])  # noqa: F821 - injected by Snakemake
set_tensorflow_threads(snakemake.threads)  # noqa: F821
metrics = train_from_config(snakemake.output.model, dict(snakemake.params.cfg),  # noqa: F821
                            npz_paths=[str(p) for p in snakemake.input.get("npz", [])])  # noqa: F821
write_json(metrics, snakemake.output.metrics)  # noqa: F821
