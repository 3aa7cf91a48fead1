"""Rule demo_nuclei: synthetic IHC patches with nucleus masks, to train StarDist offline."""
from tumormap.demo import make_nucleus_training_set
from tumormap.logs import setup_logging

setup_logging(snakemake.log[0])
make_nucleus_training_set(snakemake.output.npz, mpp=snakemake.params.mpp, seed=snakemake.params.seed)
