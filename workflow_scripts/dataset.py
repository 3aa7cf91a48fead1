"""Rule dataset: tiles of the train/val samples with their ground truth, split and slide labels."""
from tumormap.dataset import build_dataset
from tumormap.io import write_parquet
from tumormap.logs import setup_logging

setup_logging(snakemake.log[0])
p = snakemake.params
write_parquet(build_dataset(dict(zip(p.samples, snakemake.input.tiles)),
                            dict(zip(p.paired, snakemake.input.ground_truth)), dict(p.split),
                            labels=dict(p.labels), purity=dict(p.purity),
                            intervals=dict(p.intervals),
                            regions=dict(zip(p.region_samples, snakemake.input.regions))), snakemake.output.table)
