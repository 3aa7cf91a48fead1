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


REGISTRATION_COLUMNS = ("ihc_origin_x", "ihc_origin_y", "ihc_j00", "ihc_j01", "ihc_j10", "ihc_j11")


def apply_registration(tiles: pd.DataFrame, registration: dict, transform=None) -> pd.DataFrame:
    """Place each IHC tile through a registration (the dict the register rule writes, and its
    :class:`tumormap.registration.Transform`, by default built from the dict).

    Adds, per tile, the local affine of the transform over the H&E tile: ``ihc_origin_x/y``
    (IHC level-0 position of the H&E tile's top-left corner, float) and ``ihc_j00 … ihc_j11``
    (IHC level-0 px per H&E level-0 px; the H&E point ``he_x + u`` lies at ``origin + J·u``);
    ``ihc_x/y`` become the rounded origin. The reader (:class:`tumormap.slides.TileReader`)
    warps IHC tiles with these columns. ``registration_ok`` and ``registration_score`` carry
    the pair's verdict: a pair that is not ok keeps no tile in the SSIM stage.
    """
    from .registration import Transform

    transform = Transform.from_dict(registration) if transform is None else transform
    out = tiles.copy()
    he_x, he_y = out["he_x"].to_numpy(np.float64), out["he_y"].to_numpy(np.float64)
    extent = out["he_extent"].to_numpy(np.float64)
    # 3×3 sample points per tile, fitted by least squares (exact for an affine transform)
    t = np.array([0.0, 0.5, 1.0])
    uu, vv = (a.ravel() for a in np.meshgrid(t, t))
    design = np.column_stack([uu, vv, np.ones_like(uu)])  # in tile extents
    pinv = np.linalg.pinv(design)  # (3, 9)
    pts = np.stack([he_x[:, None] + uu * extent[:, None], he_y[:, None] + vv * extent[:, None]], axis=-1)
    mapped = transform.apply(pts.reshape(-1, 2)).reshape(len(out), len(uu), 2)
    coef = np.einsum("kp,npd->nkd", pinv, mapped)  # (n, 3, 2): d/du, d/dv (per extent), origin
    out["ihc_origin_x"], out["ihc_origin_y"] = coef[:, 2, 0], coef[:, 2, 1]
    out["ihc_j00"], out["ihc_j01"] = coef[:, 0, 0] / extent, coef[:, 1, 0] / extent
    out["ihc_j10"], out["ihc_j11"] = coef[:, 0, 1] / extent, coef[:, 1, 1] / extent
    out["ihc_x"] = np.round(coef[:, 2, 0]).astype(np.int64)
    out["ihc_y"] = np.round(coef[:, 2, 1]).astype(np.int64)
    out["registration_ok"] = bool(registration["ok"])
    out["registration_score"] = float(registration["score"])
    sample = out["sample"].iloc[0] if len(out) else "?"
    if registration["ok"]:
        log.info("sample %s: IHC tiles placed through the %s registration (score %.3f)", sample,
                 registration["method"], registration["score"])
    else:
        log.warning("sample %s: IHC not registered (%s): no tile pair of this sample will be kept", sample,
                    registration["reason"])
    return out
