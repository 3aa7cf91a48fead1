"""Tile grids: one grid on the H&E slide at the target resolution, the same grid on the IHC."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .logs import get_logger
from .slides import SlideError, open_slide, plan_read, slide_mpp

log = get_logger("tiling")


def _plan_columns(prefix: str, plan, xs, ys) -> dict:
    return {
        f"{prefix}_x": xs, f"{prefix}_y": ys, f"{prefix}_level": plan.level,
        f"{prefix}_downsample": plan.level_downsample, f"{prefix}_read_px": plan.read_px,
        f"{prefix}_extent": plan.extent0, f"{prefix}_mpp": plan.mpp0,
    }


def tile_grid(he_path: str, ihc_path: str | None, sample: str, *, target_mpp: float, tile_px: int,
              he_mpp: float | None = None, ihc_mpp: float | None = None,
              offset: tuple[float, float] = (0.0, 0.0)) -> pd.DataFrame:
    """Tile table for one sample (columns documented in README, 'Tables').

    The grid covers the H&E slide in whole tiles of ``tile_px`` at ``target_mpp``.
    IHC coordinates are the same physical positions (scaled by the ratio of µm/px)
    plus ``offset`` (IHC level-0 pixels); ``he_mpp``/``ihc_mpp`` are fallbacks used only
    where a slide has no ``openslide.mpp-x``.
    """
    if tile_px < 16:
        raise ValueError(f"sample {sample}: tile_px must be >= 16, got {tile_px}")
    he = open_slide(he_path, sample)
    mpp_he = slide_mpp(he, he_mpp, sample, he_path)
    he_plan = plan_read(he.level_downsamples, mpp_he, target_mpp, tile_px)
    width, height = he.dimensions
    n_cols, n_rows = width // he_plan.extent0, height // he_plan.extent0
    if n_cols == 0 or n_rows == 0:
        raise SlideError(f"sample {sample}: {he_path} ({width}×{height} px) is smaller than one tile "
                         f"({he_plan.extent0} px at level 0)")
    rows, cols = np.divmod(np.arange(n_rows * n_cols), n_cols)
    he_x, he_y = cols * he_plan.extent0, rows * he_plan.extent0
    table = {"sample": sample, "tile_id": np.arange(n_rows * n_cols), "row": rows, "col": cols,
             "tile_px": tile_px, "mpp": target_mpp}
    table.update(_plan_columns("he", he_plan, he_x, he_y))
    log.info("sample %s: H&E %s %d×%d px at %.3f µm/px; level %d (downsample %.2f), %d×%d tiles of %d px",
             sample, he_path, width, height, mpp_he, he_plan.level, he_plan.level_downsample, n_cols, n_rows,
             tile_px)
    he.close()
    if ihc_path:
        ihc = open_slide(ihc_path, sample)
        mpp_ihc = slide_mpp(ihc, ihc_mpp, sample, ihc_path)
        ihc_plan = plan_read(ihc.level_downsamples, mpp_ihc, target_mpp, tile_px)
        scale = mpp_he / mpp_ihc
        table.update(_plan_columns("ihc", ihc_plan, np.round(he_x * scale + offset[0]).astype(np.int64),
                                   np.round(he_y * scale + offset[1]).astype(np.int64)))
        log.info("sample %s: IHC %s at %.3f µm/px; level %d, offset (%g, %g) px", sample, ihc_path, mpp_ihc,
                 ihc_plan.level, *offset)
        ihc.close()
    df = pd.DataFrame(table)
    df["sample"] = df["sample"].astype(str)
    return df


def grid_shape(tiles: pd.DataFrame) -> tuple[int, int]:
    """(rows, cols) of a sample's grid; stage tables keep every tile, with boolean columns."""
    return int(tiles["row"].max()) + 1, int(tiles["col"].max()) + 1
