"""White-patch removal: the tissue fraction of each H&E and IHC tile."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .logs import get_logger
from .slides import TileReader, reduced_reads

log = get_logger("tissue")


def tissue_mask(rgb: np.ndarray, *, white: int = 220, min_saturation: float = 0.07) -> np.ndarray:
    """Boolean mask of tissue pixels.

    Background is glass: near-white (mean of R, G, B ≥ ``white``, 0–255) and nearly
    grey (HSV saturation < ``min_saturation``, 0–1). Pale but coloured eosin is tissue, and
    so is the barely saturated, darker stroma of an IHC counterstain.
    """
    rgb = np.asarray(rgb, dtype=np.float32)
    hi, lo = rgb.max(axis=-1), rgb.min(axis=-1)
    saturation = np.where(hi > 0, (hi - lo) / np.maximum(hi, 1e-6), 0.0)
    return (rgb.mean(axis=-1) < white) | (saturation >= min_saturation)


def tissue_fraction(rgb: np.ndarray, **kwargs) -> float:
    """Fraction (0–1) of a tile's pixels that are tissue (see ``tissue_mask``)."""
    return float(tissue_mask(rgb, **kwargs).mean())


def tissue_table(tiles: pd.DataFrame, he_path: str, ihc_path: str | None, sample: str, *, min_tissue: float,
                 read_px: int = 64, white: int = 220, min_saturation: float = 0.07) -> pd.DataFrame:
    """Add ``he_tissue``, ``ihc_tissue`` (fractions) and ``tissue_keep`` to a tile table.

    A tile is kept when the H&E tile (and, for a pair, the IHC tile) has at least
    ``min_tissue`` tissue. Tiles are read at ``read_px`` px, from a coarse pyramid level.
    """
    if not 0.0 <= min_tissue <= 1.0:
        raise ValueError(f"sample {sample}: tissue.min_tissue must be in [0, 1], got {min_tissue}")
    out = tiles.copy()
    keep = np.ones(len(out), dtype=bool)
    stains = [("he", he_path)] + ([("ihc", ihc_path)] if ihc_path else [])
    for stain, path in stains:
        reader = TileReader(path, stain, sample)
        low = reduced_reads(tiles, stain, read_px, reader.slide)
        fractions = np.array([tissue_fraction(reader.read(row, read_px), white=white, min_saturation=min_saturation)
                              for row in low.to_dict("records")], dtype=np.float32)
        reader.close()
        out[f"{stain}_tissue"] = fractions
        enough = fractions >= min_tissue
        log.info("sample %s: %d of %d %s tiles have tissue >= %.2f (%s)", sample, int(enough.sum()), len(out),
                 stain.upper(), min_tissue, path)
        keep &= enough
    if not ihc_path:
        out["ihc_tissue"] = np.nan
    out["tissue_keep"] = keep
    n = int(keep.sum())
    if n == 0:
        log.warning("sample %s: no tile has tissue fraction >= %.2f on %s: nothing to analyse in %s", sample,
                    min_tissue, "both slides" if ihc_path else "the H&E", he_path)
    log.info("sample %s: %d of %d tiles kept", sample, n, len(out))
    return out
