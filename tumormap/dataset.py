"""The training table: tiles of the train/val samples with their IHC ground truth, split and slide labels."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .logs import get_logger
from .proportion import read_interval_regions, region_of_tiles

log = get_logger("dataset")

GT_COLUMNS = ["tumor_ratio", "n_nuclei", "nuclear_area_px", "positive_area_px"]


def build_dataset(tile_tables: dict[str, str], ground_truth_tables: dict[str, str], split: dict[str, str], *,
                  labels: dict[str, str] | None = None, purity: dict[str, float] | None = None,
                  intervals: dict[str, str] | None = None, regions: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per tissue tile of each sample in ``tile_tables`` (sample → SSIM table for a
    pair, tissue table for an H&E alone).

    ``keep`` is the SSIM filter for pairs and the tissue filter for an H&E alone; the
    ground-truth columns are NaN where a tile has no IHC ratio (unpaired, not kept, no
    nuclei). ``label``, ``purity`` and ``ki67_interval`` are the sheet's slide-level values (None/NaN
    if absent). ``regions`` (sample → ``ki67_regions`` GeoJSON): each tile whose centre lies in an
    annotated region gets ``region_id`` ('sample:r<k>') and the region's ``region_interval`` text.
    """
    labels, purity, intervals = labels or {}, purity or {}, intervals or {}
    parts = []
    for sample, tiles_path in tile_tables.items():
        tiles = pd.read_parquet(tiles_path)
        tiles = tiles[tiles["tissue_keep"]].copy() if "tissue_keep" in tiles else tiles.iloc[:0].copy()
        if "keep" not in tiles:
            tiles["keep"] = True
        if sample in ground_truth_tables:
            gt = pd.read_parquet(ground_truth_tables[sample])
            tiles = tiles.merge(gt[["sample", "tile_id", *GT_COLUMNS]], on=["sample", "tile_id"], how="left")
            n_ratio = int(np.isfinite(tiles["tumor_ratio"].astype(float)).sum())
            log.info("%s: %d tissue tiles, %d SSIM-kept, %d with an IHC ratio", sample, len(tiles),
                     int(tiles["keep"].sum()), n_ratio)
        else:
            for col in GT_COLUMNS:
                tiles[col] = np.nan
            log.info("%s: %d tissue tiles (no IHC)", sample, len(tiles))
        tiles["split"] = split[sample]
        tiles["label"] = labels.get(sample)
        tiles["purity"] = purity.get(sample, np.nan)
        tiles["ki67_interval"] = intervals.get(sample)
        tiles["region_id"], tiles["region_interval"] = None, None
        if sample in (regions or {}) and len(tiles):
            annotated = read_interval_regions(regions[sample], None, f"sample {sample}")
            which = region_of_tiles(tiles, annotated)
            tiles["region_id"] = [f"{sample}:r{k}" if k >= 0 else None for k in which]
            tiles["region_interval"] = [annotated[k]["text"] if k >= 0 else None for k in which]
            log.info("%s: %d of %d tissue tiles in %d annotated regions", sample, int((which >= 0).sum()), len(tiles),
                     len(annotated))
        parts.append(tiles)
    columns = ["sample", "tile_id", "keep", *GT_COLUMNS, "split", "label", "purity", "ki67_interval",
               "region_id", "region_interval"]
    table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
    table["label"] = table["label"].astype(object)
    for col in ("ki67_interval", "region_id", "region_interval"):
        table[col] = table[col].astype(object)
    left_out = sorted(s for s in tile_tables if not (table["sample"] == s).any())
    if left_out:
        log.warning("%d samples contribute no tile (see results/qc/samples.tsv): %s", len(left_out),
                    ", ".join(left_out))
    for name, group in table.groupby("split"):
        ratio = group["tumor_ratio"].astype(float)
        log.info("split %s: %d tiles from %d samples, %d with an IHC ratio (mean %.3f)", name, len(group),
                 group["sample"].nunique(), int(np.isfinite(ratio).sum()), np.nanmean(ratio) if np.isfinite(ratio).any()
                 else float("nan"))
    return table
