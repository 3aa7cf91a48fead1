"""Snakemake adapter: rule mnist_bags -> tumormap.mnist_bags.run_mnist_bags."""

import torch

from tumormap.logs import setup_logging
from tumormap.mnist_bags import run_mnist_bags

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
run_mnist_bags(snakemake.input.images, snakemake.input.labels, snakemake.output.metrics,
               snakemake.output.loss_curve, snakemake.output.model, snakemake.output.history,
               **dict(snakemake.params.items()))
