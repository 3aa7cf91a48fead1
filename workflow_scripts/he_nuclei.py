"""Rule he_nuclei: StarDist nuclei of one sample's H&E tissue tiles (centroids and areas).

`ground_truth.batch_size` is read from the config at run time (it does not change the nuclei)."""
import pandas as pd

from tumormap.io import write_parquet
from tumormap.logs import setup_logging
from tumormap.nuclei import he_nuclei_table, load_nuclei_model, set_tensorflow_threads

setup_logging(snakemake.log[0])  # noqa: F821 - injected by Snakemake
set_tensorflow_threads(snakemake.threads)  # noqa: F821
model = load_nuclei_model(snakemake.input.model[0] if snakemake.input.model else snakemake.params.source)  # noqa: F821
table = he_nuclei_table(pd.read_parquet(snakemake.input.tiles), snakemake.input.he[0], model,  # noqa: F821
                        sample=snakemake.wildcards.sample,  # noqa: F821
                        batch_size=int(snakemake.config["ground_truth"]["batch_size"]))  # noqa: F821
write_parquet(table, snakemake.output.table)  # noqa: F821
