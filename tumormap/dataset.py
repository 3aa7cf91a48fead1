"""The training table: SSIM-kept tiles with their IHC ground truth and split, across samples."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .logs import get_logger

log = get_logger("dataset")


def build_dataset(tile_tables: list[str], ground_truth_tables: list[str], split_path: str) -> pd.DataFrame:
    """One row per tile with a finite ground-truth ratio: tile columns + ``tumor_ratio`` + ``split``.

    Tiles whose ratio is NaN (no nuclei, blank) are excluded, with their count logged.
    """
    split = pd.read_csv(split_path, sep="\t", dtype={"sample": str})
    parts = []
    for tiles_path, gt_path in zip(tile_tables, ground_truth_tables):
        tiles, gt = pd.read_parquet(tiles_path), pd.read_parquet(gt_path)
        if gt.empty:
            continue
        merged = tiles[tiles["keep"]].merge(gt[["sample", "tile_id", "tumor_ratio", "n_nuclei", "nuclear_area_px", "positive_area_px"]],
                                           on=["sample", "tile_id"], how="inner")
        n_nan = int((~np.isfinite(merged["tumor_ratio"])).sum())
        if n_nan:
            log.info("%s: %d tiles without a ratio excluded (see its ground-truth reasons)",
                     merged["sample"].iloc[0], n_nan)
        parts.append(merged[np.isfinite(merged["tumor_ratio"])])
    table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["sample", "tile_id", "tumor_ratio"])
    table = table.merge(split[["sample", "split"]], on="sample", how="left")
    for name, group in table.groupby("split"):
        log.info("split %s: %d tiles from %d samples, mean ratio %.3f", name, len(group), group["sample"].nunique(),
                 group["tumor_ratio"].mean())
    return table
