"""Rule demo_pair: one synthetic H&E/IHC slide pair with its region truth."""
import zlib

from tumormap.demo import make_demo_pair
from tumormap.logs import setup_logging

log = setup_logging(snakemake.log[0])
p = snakemake.params
seed = p.seed * 1000 + zlib.crc32(snakemake.wildcards.pair.encode()) % 1000
summary = make_demo_pair(snakemake.output.he, snakemake.output.ihc, snakemake.output.truth, seed=seed,
                         size_px=p.size_px, mpp=p.mpp, region_px=p.region_px, ihc_warp=p.ihc_warp or None,
                         tumor_free=p.tumor_free)
log.info("demo pair %s: %s", snakemake.wildcards.pair, summary)
