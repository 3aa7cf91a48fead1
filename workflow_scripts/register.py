"""Rule register: the transform of one pair's IHC onto its H&E, with a QC image and a score."""
from tumormap.logs import setup_logging
from tumormap.registration import register_slides, save_registration

setup_logging(snakemake.log[0])
cfg = snakemake.params.cfg
result, qc = register_slides(
    snakemake.input.he[0], snakemake.input.ihc[0], snakemake.wildcards.sample, method=cfg["method"], mpp=cfg["mpp"],
    nonrigid_mpp=cfg["nonrigid_mpp"], angle_step=cfg["angle_step"], flips=cfg["flips"], offset=snakemake.params.offset,
    offset_mode=cfg["sheet_offset"], min_score=cfg["min_score"], max_stretch=cfg["max_stretch"],
    normalise_um=cfg["normalise_um"], smooth_um=cfg["smooth_um"], score_um=cfg["score_um"],
    he_mpp=snakemake.params.fallback_mpp, ihc_mpp=snakemake.params.fallback_mpp)
save_registration(result, qc, snakemake.output.transform, snakemake.output.qc, snakemake.output.field)
