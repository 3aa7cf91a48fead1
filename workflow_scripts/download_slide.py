"""Snakemake adapter: download one slide (see tumormap.download.download)."""

from tumormap.download import download
from tumormap.logs import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821 (injected by Snakemake)
source = snakemake.params.source  # noqa: F821
download(source["url"], snakemake.output[0], md5=source["md5"], size=source["size"],  # noqa: F821
         sample=snakemake.wildcards.sample, stain=source["stain"], **snakemake.params.settings)  # noqa: F821
