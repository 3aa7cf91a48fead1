"""Opening whole-slide images with OpenSlide, resolution handling and tile reads.

Coordinates are level-0 pixels of the slide they refer to. A tile is read at the level
whose resolution is the finest that is not finer than the target by more than needed,
then resized to the tile size, so a 1024 px tile at 0.5 µm/px reads 1024 px from a 20×
level, or 2048 px from a 40× level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .logs import get_logger

log = get_logger("slides")


class SlideError(RuntimeError):
    """A slide cannot be used; the message names the sample and the file."""


class MissingMppError(SlideError):
    """A slide has no level-0 µm/px and no fallback was given; ``sample`` and ``path`` say which."""

    def __init__(self, message: str, sample: str, path: str | Path):
        super().__init__(message)
        self.sample, self.path = sample, str(path)


def open_slide(path: str | Path, sample: str = "?"):
    """Open ``path`` with OpenSlide, or raise SlideError naming sample and file."""
    import openslide

    path = Path(path)
    if not path.exists():
        raise SlideError(f"sample {sample}: slide file not found: {path}")
    try:
        return openslide.OpenSlide(str(path))
    except (openslide.OpenSlideError, openslide.OpenSlideUnsupportedFormatError, OSError) as exc:
        raise SlideError(f"sample {sample}: cannot open {path} as a slide ({type(exc).__name__}: {exc})") from exc


def slide_mpp(slide, fallback: float | None = None, sample: str = "?", path: str | Path = "?") -> float:
    """Level-0 µm per pixel from ``openslide.mpp-x``; ``fallback`` (logged) where absent."""
    value = slide.properties.get("openslide.mpp-x")
    if value:
        mpp = float(value)
        if mpp > 0:
            return mpp
    if fallback is None or not fallback > 0:
        raise MissingMppError(
            f"sample {sample}: {path} has no openslide.mpp-x; give an `mpp` column in the sample sheet "
            "or `tile.fallback_mpp` in the config (`tumormap predict`: --mpp)", sample, path)
    log.warning("sample %s: %s has no openslide.mpp-x; using %.4g µm/px", sample, path, fallback)
    return float(fallback)


@dataclass(frozen=True)
class ReadPlan:
    """How to read a tile of ``tile_px`` at ``target_mpp`` from one slide."""

    level: int
    level_downsample: float
    read_px: int  # pixels read at ``level``; resized to tile_px
    extent0: int  # tile extent in level-0 pixels
    mpp0: float

    @property
    def scale(self) -> float:
        return self.read_px / self.extent0 * self.level_downsample


def plan_read(level_downsamples, mpp0: float, target_mpp: float, tile_px: int) -> ReadPlan:
    """Pick the level to read a ``tile_px`` tile at ``target_mpp`` from.

    The chosen level is the coarsest whose resolution is at least the target's (small
    tolerance for rounding in scanners' downsample factors); a target finer than level 0
    reads level 0 and upsamples, with a warning.
    """
    if target_mpp <= 0 or mpp0 <= 0:
        raise ValueError(f"resolutions must be positive (target {target_mpp}, slide {mpp0})")
    wanted = target_mpp / mpp0  # level-0 pixels per output pixel
    extent0 = int(round(tile_px * wanted))
    level = 0
    for i, ds in enumerate(level_downsamples):
        if ds <= wanted * 1.01 and ds >= level_downsamples[level]:
            level = i
    if wanted < 0.99:
        log.warning("target %.3g µm/px is finer than the slide's %.3g µm/px: upsampling", target_mpp, mpp0)
    ds = float(level_downsamples[level])
    read_px = max(1, int(round(extent0 / ds)))
    return ReadPlan(level=level, level_downsample=ds, read_px=read_px, extent0=extent0, mpp0=mpp0)


def read_tile(slide, x0: int, y0: int, plan: ReadPlan, out_px: int) -> np.ndarray:
    """Read one tile (level-0 origin ``x0, y0``) as an ``out_px``² uint8 RGB array.

    Transparent or out-of-slide pixels come back white, as glass does.
    """
    from PIL import Image

    region = slide.read_region((int(x0), int(y0)), plan.level, (plan.read_px, plan.read_px))
    rgba = np.asarray(region)
    rgb = rgba[..., :3].copy()
    alpha = rgba[..., 3]
    if alpha.min() < 255:
        rgb[alpha == 0] = 255
    if plan.read_px != out_px:
        rgb = np.array(Image.fromarray(rgb).resize((out_px, out_px), Image.Resampling.BILINEAR
                                                     if plan.read_px < out_px else Image.Resampling.BOX))
    return rgb


def _registered(row, stain: str) -> bool:
    value = row.get(f"{stain}_j00") if hasattr(row, "get") else None
    return value is not None and bool(np.isfinite(value))


def read_tile_mapped(slide, origin, jacobian, he_extent: float, plan: ReadPlan, out_px: int) -> np.ndarray:
    """Read the IHC region an H&E tile maps to through a local affine, warped onto the tile.

    The H&E tile's point ``u`` (level-0 px from its top-left corner, 0 ≤ u < ``he_extent``)
    lies at ``origin + jacobian · u`` in this slide's level-0 px. The bounding box of the mapped
    tile is read at ``plan.level``, box-filtered to about the output scale, then resampled
    (bilinear) onto ``out_px``² pixels; out-of-slide and transparent pixels are white.
    """
    import cv2

    origin = np.asarray(origin, np.float64)
    jac = np.asarray(jacobian, np.float64)
    corners = origin + np.array([[0, 0], [1, 0], [0, 1], [1, 1]], np.float64) * he_extent @ jac.T
    ds = plan.level_downsample
    x0, y0 = np.floor(corners.min(axis=0) - 2 * ds)
    x1, y1 = np.ceil(corners.max(axis=0) + 2 * ds)
    size = (max(1, int(math.ceil((x1 - x0) / ds))), max(1, int(math.ceil((y1 - y0) / ds))))
    rgba = np.asarray(slide.read_region((int(x0), int(y0)), plan.level, size))
    rgb = rgba[..., :3].copy()
    if rgba[..., 3].min() < 255:
        rgb[rgba[..., 3] == 0] = 255
    shrink = plan.read_px / out_px  # level px per output px
    if shrink > 1.5:  # area-average first, as read_tile's box filter does
        small = (max(1, int(round(size[0] / shrink))), max(1, int(round(size[1] / shrink))))
        rgb = cv2.resize(rgb, small, interpolation=cv2.INTER_AREA)
        scale_xy = np.array([small[0] / size[0], small[1] / size[1]]) / ds  # region px per level-0 px
    else:
        scale_xy = np.array([1.0 / ds, 1.0 / ds])
    # output pixel index (a, b) → H&E u = ((a, b) + 0.5) · step → level-0 q → region pixel index
    step = he_extent / out_px
    lin = (jac * step) * scale_xy[:, None]
    offset = (origin + jac @ np.array([0.5 * step, 0.5 * step]) - np.array([x0, y0])) * scale_xy - 0.5
    matrix = np.column_stack([lin, offset])
    return cv2.warpAffine(np.ascontiguousarray(rgb), matrix, (out_px, out_px),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=(255, 255, 255))


def thumbnail(slide, max_px: int = 1024) -> tuple[np.ndarray, float]:
    """RGB thumbnail and its downsample factor relative to level 0."""
    w, h = slide.dimensions
    factor = max(w, h) / max_px
    size = (max(1, int(math.ceil(w / factor))), max(1, int(math.ceil(h / factor))))
    img = slide.get_thumbnail(size).convert("RGB")
    return np.asarray(img), w / img.size[0]


def reduced_reads(tiles, stain: str, read_px: int, slide):
    """The same tiles re-planned to be read at ``read_px`` px from a coarser level (fast)."""
    tile_px = int(tiles["tile_px"].iloc[0])
    mpp = float(tiles["mpp"].iloc[0]) * tile_px / read_px
    plan = plan_read(slide.level_downsamples, float(tiles[f"{stain}_mpp"].iloc[0]), mpp, read_px)
    out = tiles.copy()
    out[f"{stain}_level"], out[f"{stain}_downsample"], out[f"{stain}_read_px"] = (
        plan.level, plan.level_downsample, plan.read_px)
    return out


class TileReader:
    """Reads tiles of one slide listed in a tile table (as written by ``tiling``).

    ``stain`` is ``"he"`` or ``"ihc"``: the table carries both slides' coordinates and
    read plans (columns ``{stain}_x``, ``{stain}_y``, ``{stain}_level``, ``{stain}_read_px``).
    """

    def __init__(self, path: str | Path, stain: str = "he", sample: str = "?"):
        self.path = Path(path)
        self.stain = stain
        self.sample = sample
        self._slide = None

    @property
    def slide(self):
        if self._slide is None:  # opened lazily, once per process (DataLoader workers too)
            self._slide = open_slide(self.path, self.sample)
        return self._slide

    def read(self, row, out_px: int | None = None) -> np.ndarray:
        s = self.stain
        plan = ReadPlan(level=int(row[f"{s}_level"]), level_downsample=float(row[f"{s}_downsample"]),
                        read_px=int(row[f"{s}_read_px"]), extent0=int(row[f"{s}_extent"]),
                        mpp0=float(row[f"{s}_mpp"]))
        import openslide

        try:
            if _registered(row, s):  # the IHC through its registration (tiling.apply_registration)
                jac = np.array([[row[f"{s}_j00"], row[f"{s}_j01"]], [row[f"{s}_j10"], row[f"{s}_j11"]]], np.float64)
                return read_tile_mapped(self.slide, (float(row[f"{s}_origin_x"]), float(row[f"{s}_origin_y"])), jac,
                                        float(row["he_extent"]), plan, int(out_px or row["tile_px"]))
            return read_tile(self.slide, row[f"{s}_x"], row[f"{s}_y"], plan, int(out_px or row["tile_px"]))
        except openslide.OpenSlideError as exc:
            raise SlideError(f"sample {self.sample}: cannot read a tile of {self.path} at ({row[f'{s}_x']}, "
                             f"{row[f'{s}_y']}) ({type(exc).__name__}: {exc})") from exc

    def close(self) -> None:
        if self._slide is not None:
            self._slide.close()
            self._slide = None

    def __getstate__(self):  # picklable for DataLoader workers: reopen there
        state = self.__dict__.copy()
        state["_slide"] = None
        return state


def read_sample_tiles(slide_path: str | Path, tiles, stain: str, sample: str, *, n_tiles: int, seed: int = 0,
                      tile_px: int | None = None, what: str = "read"):
    """Up to ``n_tiles`` random tiles (``seed``) of a tile table's kept rows (all rows without a
    ``keep`` column), read from the slide's ``stain`` side at ``tile_px`` (default the table's).
    Returns (images, picked rows); no rows is an error naming the sample, the slide and ``what``."""
    rows = tiles[tiles["keep"].astype(bool)] if "keep" in tiles.columns else tiles
    if len(rows) == 0:
        raise ValueError(f"sample {sample}: no tiles to {what} {slide_path}")
    pick = np.sort(np.random.default_rng(seed).choice(len(rows), min(n_tiles, len(rows)), replace=False))
    reader = TileReader(slide_path, stain, sample)
    try:
        images = [reader.read(rows.iloc[i], tile_px) for i in pick]
    finally:
        reader.close()
    return images, rows.iloc[pick]
