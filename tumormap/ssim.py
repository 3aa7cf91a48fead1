"""SSIM pair filtering: keep H&E/IHC tile pairs that show the same structure.

SSIM is computed on grayscale tiles at reduced scale. Grayscale because the two
stains colour the same structures differently (eosin vs none, hematoxylin vs DAB)
while nuclei and stroma are dark/light in both; reduced scale because consecutive
sections share tissue architecture, not individual nuclei, and a few µm of residual
misregistration would otherwise dominate the score. The original study thresholded
SSIM at 0.4.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from skimage.color import rgb2gray
from skimage.metrics import structural_similarity

from .logs import get_logger
from .slides import TileReader, reduced_reads

log = get_logger("ssim")


def pair_ssim(he_rgb: np.ndarray, ihc_rgb: np.ndarray) -> float:
    """SSIM (−1…1) of two equally sized RGB tiles, on grayscale in [0, 1]."""
    a, b = rgb2gray(he_rgb), rgb2gray(ihc_rgb)
    if a.shape != b.shape:
        raise ValueError(f"tile shapes differ: {a.shape} vs {b.shape}")
    return float(structural_similarity(a, b, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False))


def ssim_table(tissue: pd.DataFrame, he_path: str, ihc_path: str, sample: str, *, ssim_min: float,
               read_px: int = 256) -> pd.DataFrame:
    """Add ``ssim`` (NaN for tiles without tissue) and ``keep`` (tissue and SSIM ≥ ssim_min)."""
    if not -1.0 <= ssim_min <= 1.0:
        raise ValueError(f"sample {sample}: ssim.ssim_min must be in [-1, 1], got {ssim_min}")
    out = tissue.copy()
    scores = np.full(len(out), np.nan, dtype=np.float32)
    candidates = np.flatnonzero(out["tissue_keep"].to_numpy())
    if len(candidates):
        he, ihc = TileReader(he_path, "he", sample), TileReader(ihc_path, "ihc", sample)
        he_low = reduced_reads(out.iloc[candidates], "he", read_px, he.slide).to_dict("records")
        ihc_low = reduced_reads(out.iloc[candidates], "ihc", read_px, ihc.slide).to_dict("records")
        for k, (i, hr, ir) in enumerate(zip(candidates, he_low, ihc_low)):
            scores[i] = pair_ssim(he.read(hr, read_px), ihc.read(ir, read_px))
            if (k + 1) % 200 == 0:
                log.info("sample %s: SSIM %d/%d tiles", sample, k + 1, len(candidates))
        he.close()
        ihc.close()
    out["ssim"] = scores
    out["keep"] = out["tissue_keep"].to_numpy() & (np.nan_to_num(scores, nan=-2.0) >= ssim_min)
    if "registration_ok" in out and not out["registration_ok"].all():  # tiling.apply_registration
        log.warning("sample %s: the IHC could not be registered to the H&E (score %.3f, see the register log): "
                    "no tile pair is kept", sample, float(out["registration_score"].iloc[0]))
        out["keep"] = False
    n = int(out["keep"].sum())
    if n == 0:
        log.warning("sample %s: no tile pair has SSIM >= %.2f (of %d tissue tiles): no ground truth for it",
                    sample, ssim_min, len(candidates))
    else:
        log.info("sample %s: %d of %d tissue tile pairs have SSIM >= %.2f (median %.3f)", sample, n,
                 len(candidates), ssim_min, float(np.nanmedian(scores)))
    return out
