"""Synthetic paired H&E / Ki67-IHC whole-slide images whose tumor ratio is known exactly.

One renderer draws a tissue "scene" (tissue outline, stroma fibres, nuclei) in world
coordinates, i.e. H&E level-0 pixels; the H&E shows the scene at (x, y), the IHC the same
scene shifted by ``ihc_offset``: a feature at (x, y) on the H&E lies at (x + dx, y + dy) on
the IHC. Colours follow Beer–Lambert with the Ruifrok–Johnston stain vectors
(OD = Σ concentration × stain vector, RGB = 255·exp(−OD)).

Tumor nuclei are larger (1.4× radius), darker and more irregular on the H&E and
DAB-positive (brown) on the IHC; the other nuclei are hematoxylin-blue on both. The slide
is split into square regions, each with its own tumor fraction (by nucleus count); the
truth table gives, per region, the DAB-positive share of the nuclear area computed from
the rendered nucleus masks.

Public API: :func:`make_demo_pair` (with an optional :class:`IhcWarp` of the IHC and
:func:`demo_ihc_mapping`, its true point mapping), :func:`make_nucleus_training_set`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial import cKDTree

from .io import atomic_path, write_parquet
from .logs import get_logger

log = get_logger("demo")

_STAINS = {name: np.asarray(v, dtype=np.float32) / np.linalg.norm(v) for name, v in {
    "H": [0.65, 0.70, 0.29], "E": [0.07, 0.99, 0.11], "DAB": [0.27, 0.57, 0.78]}.items()}

# Geometry, in µm
NORMAL_RADIUS_UM = 3.5        # normal nucleus: ≈ 7 µm diameter
TUMOR_RADIUS_SCALE = 1.4
MIN_GAP_UM = 0.75             # nuclei never come closer than this (membrane to membrane)
_TEXTURE_TILE_PX = 256

# Per status (normal, tumor): radius spread, extra aspect ratio, boundary irregularity,
# chromatin texture strength
_SIZE_SD = (0.08, 0.12)
_ASPECT_MAX = (0.3, 0.6)
_IRREGULARITY = (0.05, 0.16)
_TEXTURE_AMP = (0.18, 0.35)
# Stain concentrations (OD units per unit chromatin density) per status (normal, tumor)
_HE_NUCLEUS_H = (0.95, 1.40)
_IHC_NUCLEUS_H = (0.75, 0.15)
_IHC_NUCLEUS_DAB = (0.0, 1.25)
_GLASS_OD = 0.012


# --------------------------------------------------------------------------- public API


def make_demo_pair(he_path, ihc_path, truth_path, *, seed: int, size_px: int = 6144, mpp: float = 0.25,
                   ihc_offset: tuple[int, int] = (12, -8), region_px: int = 2048, tear: bool = True,
                   ihc_warp: "IhcWarp | dict | None" = None, tumor_free: bool = False) -> dict:
    """Write a synthetic H&E/IHC pair of pyramidal TIFFs and its region truth table.

    size_px: level-0 width = height (px); mpp: level-0 µm/px; ihc_offset: (dx, dy) level-0 px,
    a feature at (x, y) on the H&E is at (x + dx, y + dy) on the IHC; region_px: side of the
    square truth regions (H&E level-0 px; the last row/column is cut at the slide edge);
    tear: cut a tissue-free hole into the IHC (the H&E keeps its tissue there);
    ihc_warp: an :class:`IhcWarp` (or its fields as a dict) that rotates, flips, shifts and
    elastically warps the IHC after rendering (default none: the IHC is the shifted scene only).
    :func:`demo_ihc_mapping` of the returned summary maps H&E points to the IHC exactly.
    tumor_free: every region's tumor fraction is 0 (a 'normal' slide for slide-label training).

    The truth Parquet has one row per region: ``region_id, x0, y0, x1, y1`` (H&E level-0 px,
    end exclusive), ``tumor_fraction`` (the region's drawn tumor share of nuclei by count;
    NaN without tissue), ``true_ratio`` (DAB-positive nuclear area / all nuclear area inside
    the box; NaN without nuclei), ``true_ratio_count``, ``n_nuclei`` (nuclei centred in the
    box), ``tissue_fraction`` and ``torn`` (the box holds tissue the IHC tear removed).
    Returns a summary dict.
    """
    size_px, region_px = int(size_px), int(region_px)
    dx, dy = (int(v) for v in ihc_offset)
    where = f"demo pair {he_path}"
    if size_px < 256 or region_px < 64 or region_px > size_px:
        raise ValueError(f"{where}: need size_px ≥ 256 and 64 ≤ region_px ≤ size_px (got {size_px}, {region_px})")
    if not mpp > 0:
        raise ValueError(f"{where}: mpp must be positive (got {mpp})")
    if max(abs(dx), abs(dy)) > size_px // 8:
        raise ValueError(f"{where}: ihc_offset {ihc_offset} is too large for a {size_px} px slide")
    rng = np.random.default_rng(seed)

    # World canvas: H&E [0, S)² plus the strip the shifted IHC also shows.
    origin = (min(0, -dx), min(0, -dy))
    shape = (size_px + abs(dy), size_px + abs(dx))
    grid = _RegionGrid(size_px, region_px)
    empty = grid.pick_empty(rng)
    tissue = _slide_tissue(rng, shape, origin, size_px, mpp, grid, empty)
    he_view = _View(-origin[0], -origin[1], size_px)
    tissue_frac = grid.mean_per_region(tissue.hard[he_view.rows(0, size_px), he_view.cols])
    fractions, keep_clear = grid.assign_fractions(rng, tissue_frac)
    if tumor_free:
        fractions = np.where(np.isnan(fractions), np.nan, 0.0)
    tear_mask = _slide_tear(rng, origin, mpp, grid, tissue_frac, keep_clear) if tear else None
    log.info("demo pair seed %d: %d px at %.3g µm/px, tissue %.0f %%, %d regions (%d empty)", seed, size_px,
             mpp, 100 * float(tissue.hard[he_view.rows(0, size_px), he_view.cols].mean()), grid.n, len(empty))

    key, key_fraction = grid.keys(fractions)
    nuclei = _place_nuclei(rng, tissue.hard, origin, mpp, key, key_fraction)
    raster = _rasterize(nuclei, tissue.soft, origin, mpp, labels=False)
    log.info("demo pair: %d nuclei (%d tumor) drawn", len(nuclei.x), int(nuclei.tumor.sum()))
    fibres = _fibre_field(rng, shape, origin, mpp)

    truth = _region_truth(grid, raster, tissue, he_view, nuclei, fractions, tissue_frac, tear_mask, origin)
    ihc_view = _View(-origin[0] - dx, -origin[1] - dy, size_px)
    warp = IhcWarp(**ihc_warp) if isinstance(ihc_warp, dict) else ihc_warp
    for stain, view, path in (("he", he_view, he_path), ("ihc", ihc_view, ihc_path)):
        rgb = _stain_view(rng, stain, view, raster, tissue.soft, fibres,
                          tear_mask if stain == "ihc" else None)
        if stain == "ihc" and warp is not None:
            rgb = warp.render(rgb, mpp)
        _write_pyramid_tiff(rgb, path, mpp)
        del rgb
        log.info("demo pair: wrote %s slide %s", stain, path)
    write_parquet(truth, truth_path)
    summary = {"he": str(he_path), "ihc": str(ihc_path), "truth": str(truth_path), "seed": int(seed),
               "size_px": size_px, "mpp": float(mpp), "ihc_offset": [dx, dy], "region_px": region_px,
               "n_regions": int(len(truth)), "n_tissue_regions": int((truth.tissue_fraction > 0).sum()),
               "n_torn": int(truth.torn.sum()), "n_nuclei": int(truth.n_nuclei.sum())}
    if warp is not None:
        summary["ihc_warp"] = warp.as_dict()
    return summary


@dataclass
class IhcWarp:
    """A known deformation of the demo IHC, applied after rendering (as a lab's section would be).

    The rendered IHC (the scene shifted by ``ihc_offset``) is rotated by ``rotation_deg``
    (clockwise on screen, about the slide centre), mirrored left–right first when ``flip``,
    shifted by ``shift_px`` (level-0 px) and then elastically warped: a smooth random
    displacement of at most ``elastic_um`` µm that varies over ``elastic_scale_um`` µm (node
    spacing of a bilinear grid of Gaussian-smoothed noise drawn from ``seed``). Pixels that
    come from outside the rendered slide are glass (white).
    """

    rotation_deg: float = 0.0
    flip: bool = False
    shift_px: tuple[float, float] = (0.0, 0.0)
    elastic_um: float = 0.0
    elastic_scale_um: float = 400.0
    seed: int = 0

    def as_dict(self) -> dict:
        return {"rotation_deg": float(self.rotation_deg), "flip": bool(self.flip),
                "shift_px": [float(v) for v in self.shift_px], "elastic_um": float(self.elastic_um),
                "elastic_scale_um": float(self.elastic_scale_um), "seed": int(self.seed)}

    def _affine(self, size_px: int) -> np.ndarray:
        """3×3 matrix: rendered IHC → final IHC (continuous level-0 coordinates), before the elastic part."""
        t = math.radians(self.rotation_deg)
        c = size_px / 2
        lin = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
        if self.flip:
            lin = lin @ np.diag([-1.0, 1.0])
        m = np.eye(3)
        m[:2, :2] = lin
        m[:2, 2] = np.array([c, c]) - lin @ np.array([c, c]) + np.asarray(self.shift_px, dtype=np.float64)
        return m

    def _elastic_grid(self, size_px: int, mpp: float) -> tuple[np.ndarray, float]:
        """(2, n, n) displacement nodes (rendered px) every ``step`` px of the final IHC, and step."""
        step = max(8.0, self.elastic_scale_um / mpp)
        n = int(math.ceil(size_px / step)) + 2
        if self.elastic_um <= 0:
            return np.zeros((2, n, n)), step
        rng = np.random.default_rng(self.seed)
        field = np.stack([ndimage.gaussian_filter(rng.standard_normal((n, n)), 1.0, mode="nearest") for _ in (0, 1)])
        field *= (self.elastic_um / mpp) / max(float(np.abs(field).max()), 1e-9)
        return field, step

    def source(self, points, size_px: int, mpp: float) -> np.ndarray:
        """Where final-IHC points (N, 2) were taken from on the rendered IHC (continuous px)."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        inv = np.linalg.inv(self._affine(size_px))
        out = pts @ inv[:2, :2].T + inv[:2, 2]
        grid, step = self._elastic_grid(size_px, mpp)
        coords = np.stack([pts[:, 1] / step, pts[:, 0] / step])
        return out + np.stack([ndimage.map_coordinates(grid[k], coords, order=1, mode="nearest")
                               for k in (0, 1)], axis=1)

    def forward(self, points, size_px: int, mpp: float, iterations: int = 50) -> np.ndarray:
        """Where rendered-IHC points (N, 2) lie on the final IHC: the inverse of :meth:`source`."""
        target = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        fwd = self._affine(size_px)
        y = target @ fwd[:2, :2].T + fwd[:2, 2]
        for _ in range(iterations):
            y = y + (target - self.source(y, size_px, mpp)) @ fwd[:2, :2].T
        return y

    def render(self, rgb: np.ndarray, mpp: float, strip: int = 512) -> np.ndarray:
        """The final IHC: ``rgb`` (the rendered IHC) resampled through :meth:`source`."""
        import cv2

        from .registration import bilinear_grid

        size = rgb.shape[0]
        inv = np.linalg.inv(self._affine(size))
        grid, step = self._elastic_grid(size, mpp)
        out = np.empty_like(rgb)
        xs = np.arange(size, dtype=np.float64) + 0.5
        for r0 in range(0, size, strip):
            ys = np.arange(r0, min(size, r0 + strip), dtype=np.float64) + 0.5
            map_x = inv[0, 0] * xs[None, :] + inv[0, 1] * ys[:, None] + inv[0, 2]
            map_y = inv[1, 0] * xs[None, :] + inv[1, 1] * ys[:, None] + inv[1, 2]
            map_x += bilinear_grid(grid[0], ys / step, xs / step)
            map_y += bilinear_grid(grid[1], ys / step, xs / step)
            out[r0:r0 + len(ys)] = cv2.remap(rgb, (map_x - 0.5).astype(np.float32), (map_y - 0.5).astype(np.float32),
                                             cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(255, 255, 255))
        return out


def demo_ihc_mapping(summary: dict):
    """The true H&E level-0 → IHC level-0 point mapping of a demo pair, from its summary dict.

    Returns a function of (N, 2) points (x, y), continuous coordinates (pixel k covers [k, k+1)).
    """
    offset = np.asarray(summary["ihc_offset"], dtype=np.float64)
    warp = IhcWarp(**summary["ihc_warp"]) if summary.get("ihc_warp") else None
    size, mpp = int(summary["size_px"]), float(summary["mpp"])

    def mapping(points) -> np.ndarray:
        rendered = np.asarray(points, dtype=np.float64).reshape(-1, 2) + offset
        return rendered if warp is None else warp.forward(rendered, size, mpp)

    return mapping


def make_nucleus_training_set(path_npz, *, n_patches: int = 48, patch_px: int = 256, mpp: float = 0.5,
                              seed: int = 0) -> dict:
    """Write IHC patches with instance masks, drawn by the slide renderer, for nucleus-model training.

    Each patch is rendered at mpp/2 and downsampled 2× (image by area, labels by nearest) to
    ``patch_px``² at ``mpp`` µm/px. The npz holds ``images`` (N, H, W, 3) uint8 RGB, ``labels``
    (N, H, W) int32 instance ids (0 = background, 1..n per patch) and ``positive`` (N, K) bool,
    ``positive[i, j]`` = nucleus j of patch i is DAB-positive (K = 1 + most nuclei in a patch;
    column 0 is background). Patches mix tumor fractions; some have no nuclei. Returns a summary.
    """
    if n_patches < 1 or patch_px < 32 or not mpp > 0:
        raise ValueError(f"nucleus training set {path_npz}: need n_patches ≥ 1, patch_px ≥ 32, mpp > 0 "
                         f"(got {n_patches}, {patch_px}, {mpp})")
    rng = np.random.default_rng(seed)
    fine_mpp, fine_px = mpp / 2, 2 * patch_px
    kinds = np.array(["tissue"] * n_patches, dtype=object)
    n_special = max(1, n_patches // 8)
    special = rng.permutation(n_patches)
    kinds[special[:n_special]] = "no_nuclei"
    kinds[special[n_special:2 * n_special]] = "edge"
    spread = np.array([0.0, 0.0, 0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9, 1.0])
    images = np.empty((n_patches, patch_px, patch_px, 3), np.uint8)
    labels = np.zeros((n_patches, patch_px, patch_px), np.int32)
    positives: list[np.ndarray] = []
    for i, kind in enumerate(kinds):
        shape, origin = (fine_px, fine_px), (0, 0)
        tissue = _patch_tissue(rng, shape, fine_mpp, {"edge": "edge", "tissue": "stroma"}.get(
            kind, "stroma" if i % 2 else "glass"))
        fraction = float(rng.choice(spread))
        if kind == "no_nuclei":
            nuclei = _Nuclei.empty()
        else:
            nuclei = _place_nuclei(rng, tissue.hard, origin, fine_mpp, lambda x, y: np.zeros(len(x), np.int64),
                                   np.array([fraction]))
        raster = _rasterize(nuclei, tissue.soft, origin, fine_mpp, labels=True)
        fibres = _fibre_field(rng, shape, origin, fine_mpp)
        rgb = _stain_view(rng, "ihc", _View(0, 0, fine_px), raster, tissue.soft, fibres, None)
        images[i] = rgb.reshape(patch_px, 2, patch_px, 2, 3).mean(axis=(1, 3)).round().astype(np.uint8)
        coarse = raster.labels[::2, ::2]
        ids, relabelled = np.unique(coarse, return_inverse=True)  # ids[0] == 0 when background is present
        if ids[0] != 0:
            ids, relabelled = np.concatenate([[0], ids]), relabelled + 1
        labels[i] = relabelled.reshape(coarse.shape)
        pos = np.zeros(len(ids), bool)
        pos[1:] = nuclei.tumor[ids[1:] - 1]
        positives.append(pos)
    width = max(len(p) for p in positives)
    positive = np.zeros((n_patches, width), bool)
    for i, pos in enumerate(positives):
        positive[i, :len(pos)] = pos
    with atomic_path(path_npz, suffix=".npz") as tmp:
        np.savez_compressed(tmp, images=images, labels=labels, positive=positive,
                            mpp=np.float32(mpp))
    n_nuclei = int(sum(len(p) - 1 for p in positives))
    log.info("nucleus training set: %d patches of %d px at %.3g µm/px, %d nuclei (%d positive) -> %s",
             n_patches, patch_px, mpp, n_nuclei, int(positive.sum()), path_npz)
    return {"path": str(path_npz), "n_patches": n_patches, "patch_px": patch_px, "mpp": float(mpp),
            "n_nuclei": n_nuclei, "n_positive": int(positive.sum())}


# --------------------------------------------------------------------------- regions


class _RegionGrid:
    """Square truth regions over the H&E [0, size)², row-major ids."""

    def __init__(self, size_px: int, region_px: int):
        self.size, self.step = size_px, region_px
        self.nx = self.ny = math.ceil(size_px / region_px)
        self.n = self.nx * self.ny

    def box(self, rid: int) -> tuple[int, int, int, int]:
        r, c = divmod(rid, self.nx)
        return (c * self.step, r * self.step, min((c + 1) * self.step, self.size), min((r + 1) * self.step, self.size))

    def pick_empty(self, rng) -> list[int]:
        """Regions kept free of tissue (white-patch cases): corners, about one in eight."""
        if self.n < 2:
            return []
        corners = sorted({0, self.nx - 1, self.n - self.nx, self.n - 1})
        n_empty = max(1, self.n // 8)
        picked = list(rng.permutation(corners)[:n_empty])
        return sorted(int(v) for v in picked)

    def mean_per_region(self, image: np.ndarray) -> np.ndarray:
        out = np.empty(self.n)
        for rid in range(self.n):
            x0, y0, x1, y1 = self.box(rid)
            out[rid] = float(image[y0:y1, x0:x1].mean())
        return out

    def assign_fractions(self, rng, tissue_frac: np.ndarray) -> tuple[np.ndarray, set[int]]:
        """Tumor fractions spread over 0 … 0.9; 0 and 0.9 go to the two most tissue-rich regions.

        Returns the fractions (NaN without tissue) and the regions the tear must avoid.
        """
        fractions = np.full(self.n, np.nan)
        with_tissue = [int(r) for r in np.argsort(-tissue_frac, kind="stable") if tissue_frac[r] > 0]
        if not with_tissue:
            return fractions, set()
        values = np.linspace(0.0, 0.9, len(with_tissue)) if len(with_tissue) > 1 else np.array([0.45])
        rest = rng.permutation(values[1:-1]) if len(values) > 2 else np.array([])
        ordered = [values[0], values[-1], *rest] if len(values) > 1 else list(values)
        for rid, value in zip(with_tissue, ordered):
            fractions[rid] = round(float(value), 4)
        return fractions, set(with_tissue[:2])

    def keys(self, fractions: np.ndarray):
        """Quota key per nucleus centre: its region, or a separate key outside the H&E."""
        fill = np.nan_to_num(fractions, nan=0.0)
        key_fraction = np.concatenate([fill, fill])

        def key(x: np.ndarray, y: np.ndarray) -> np.ndarray:
            col = np.clip(np.floor(x / self.step), 0, self.nx - 1).astype(np.int64)
            row = np.clip(np.floor(y / self.step), 0, self.ny - 1).astype(np.int64)
            inside = (x >= 0) & (y >= 0) & (x < self.size) & (y < self.size)
            return row * self.nx + col + np.where(inside, 0, self.n)

        return key, key_fraction


@dataclass
class _View:
    """Where an S×S slide lies on the world canvas (canvas column/row of its pixel (0, 0))."""

    col0: int
    row0: int
    size: int

    def rows(self, r0: int, r1: int) -> slice:
        return slice(self.row0 + r0, self.row0 + r1)

    @property
    def cols(self) -> slice:
        return slice(self.col0, self.col0 + self.size)


# --------------------------------------------------------------------------- tissue


@dataclass
class _Tissue:
    soft: np.ndarray  # float32 [0, 1], anti-aliased tissue coverage
    hard: np.ndarray  # bool, tissue (soft ≥ 0.5)


def _smooth_noise(rng, shape, sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return field / max(float(field.std()), 1e-6)


def _upsample(low: np.ndarray, step: int, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of a coarse grid whose node (i, j) sits at pixel (i·step, j·step).

    ``low`` needs (rows − 1)·step ≥ shape[0] and likewise for columns.
    """
    step = int(step)
    h, w = shape
    low = low.astype(np.float32, copy=False)
    t = np.arange(step, dtype=np.float32) / step
    rows = (low[:-1, None, :] * (1 - t)[:, None] + low[1:, None, :] * t[:, None]).reshape(-1, low.shape[1])[:h]
    out = rows[:, :-1, None] * (1 - t)
    out += rows[:, 1:, None] * t
    out = out.reshape(h, -1)
    return out[:, :w] if out.shape[1] == w else np.ascontiguousarray(out[:, :w])


def _coverage(signed_px: np.ndarray) -> _Tissue:
    """Soft/hard masks from a signed distance to the edge in px (> 0 inside), 1 px ramp."""
    soft = signed_px.astype(np.float32, copy=True)
    soft += 0.5
    np.clip(soft, 0, 1, out=soft)
    return _Tissue(soft=soft, hard=soft >= 0.5)


def _slide_tissue(rng, shape, origin, size_px: int, mpp: float, grid: _RegionGrid, empty: list[int]) -> _Tissue:
    """A union of noisy ellipses covering ~55–70 % of the H&E, glass elsewhere."""
    step = max(4, int(round(4.0 / mpp)))  # coarse grid every ~4 µm
    low_shape = (shape[0] // step + 2, shape[1] // step + 2)
    ly = (np.arange(low_shape[0]) * step + origin[1])[:, None] / size_px  # world, in slide sizes
    lx = (np.arange(low_shape[1]) * step + origin[0])[None, :] / size_px
    field = np.full(low_shape, -1.0, np.float32)
    for _ in range(int(rng.integers(3, 6))):
        cx, cy = rng.uniform(0.3, 0.7, 2)
        a, b = rng.uniform(0.22, 0.42), rng.uniform(0.15, 0.32)
        t = rng.uniform(0, np.pi)
        u = ((lx - cx) * np.cos(t) + (ly - cy) * np.sin(t)) / a
        v = (-(lx - cx) * np.sin(t) + (ly - cy) * np.cos(t)) / b
        field = np.maximum(field, (1 - np.sqrt(u * u + v * v)).astype(np.float32))
    per_size = low_shape[0] / (shape[0] / size_px)  # coarse nodes per slide width
    for sigma, amp in ((per_size / 12, 0.18), (per_size / 40, 0.08), (1.2, 0.035)):
        field += amp * _smooth_noise(rng, low_shape, max(sigma, 0.8))
    # keep off the slide border and out of the empty regions
    # fade out towards the slide border and around the empty regions (rounded, not boxy)
    edge = np.minimum(np.minimum(lx, 1 - lx), np.minimum(ly, 1 - ly))
    field -= 2.0 * np.clip(1 - edge / 0.15, 0, None) ** 2
    blocked = np.zeros(low_shape, bool)
    for rid in empty:
        x0, y0, x1, y1 = (v / size_px for v in grid.box(rid))
        blocked |= (lx >= x0) & (lx < x1) & (ly >= y0) & (ly < y1)
    if blocked.any():
        near = ndimage.distance_transform_edt(~blocked) / per_size  # in slide widths
        field -= 2.0 * np.clip(1 - near / 0.15, 0, 1) ** 2
    on_slide = (lx >= 0) & (lx < 1) & (ly >= 0) & (ly < 1)
    inside = on_slide & ~blocked
    # tissue share of the unblocked part that gives ~58–66 % of the whole slide
    coverage = rng.uniform(0.58, 0.66) * on_slide.sum() / max(int(inside.sum()), 1)
    threshold = np.quantile(field[inside], 1 - min(coverage, 0.95))
    # signed distance-ish field in pixels: the coarse field changes ~1 per 0.2 slide widths
    scale = 5.0 / size_px
    full = _upsample((field - threshold) / scale, step, shape)
    tissue = _coverage(full)
    del full
    for rid in empty:  # exactly glass there
        x0, y0, x1, y1 = grid.box(rid)
        tissue.soft[y0 - origin[1]:y1 - origin[1], x0 - origin[0]:x1 - origin[0]] = 0
        tissue.hard[y0 - origin[1]:y1 - origin[1], x0 - origin[0]:x1 - origin[0]] = False
    return tissue


def _patch_tissue(rng, shape, mpp: float, kind: str) -> _Tissue:
    """Tissue for a training patch: all stroma, all glass, or a noisy tissue edge."""
    if kind == "stroma":
        return _Tissue(soft=np.ones(shape, np.float32), hard=np.ones(shape, bool))
    if kind == "glass":
        return _Tissue(soft=np.zeros(shape, np.float32), hard=np.zeros(shape, bool))
    step = max(4, int(round(4.0 / mpp)))
    low_shape = (shape[0] // step + 2, shape[1] // step + 2)
    t = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:low_shape[0], 0:low_shape[1]] * step
    d = (xx - shape[1] / 2) * np.cos(t) + (yy - shape[0] / 2) * np.sin(t) + rng.uniform(-0.25, 0.25) * shape[0]
    low = (d + 0.04 * shape[0] * _smooth_noise(rng, low_shape, 2.0)).astype(np.float32)
    return _coverage(_upsample(low, step, shape))


@dataclass
class _Tear:
    """Tissue missing from the IHC: a soft mask [0, 1] over a box of the world canvas."""

    row0: int
    col0: int
    mask: np.ndarray

    def crop(self, rows: slice, cols: slice) -> np.ndarray:
        """The mask over canvas ``rows`` × ``cols`` (zero outside the box)."""
        out = np.zeros((rows.stop - rows.start, cols.stop - cols.start), np.float32)
        r0, r1 = max(rows.start, self.row0), min(rows.stop, self.row0 + self.mask.shape[0])
        c0, c1 = max(cols.start, self.col0), min(cols.stop, self.col0 + self.mask.shape[1])
        if r1 > r0 and c1 > c0:
            out[r0 - rows.start:r1 - rows.start, c0 - cols.start:c1 - cols.start] = \
                self.mask[r0 - self.row0:r1 - self.row0, c0 - self.col0:c1 - self.col0]
        return out


def _slide_tear(rng, origin, mpp, grid, tissue_frac, keep_clear) -> _Tear | None:
    """A noisy elliptical hole (~15 % of one tissue-rich region) the IHC lacks."""
    candidates = [r for r in np.argsort(-tissue_frac, kind="stable") if tissue_frac[r] > 0.3 and r not in keep_clear]
    if not candidates:
        candidates = [r for r in np.argsort(-tissue_frac, kind="stable") if tissue_frac[r] > 0]
    if not candidates:
        return None
    rid = int(candidates[int(rng.integers(0, min(2, len(candidates))))])
    x0, y0, x1, y1 = grid.box(rid)
    w, h = x1 - x0, y1 - y0
    cx, cy = w * rng.uniform(0.42, 0.58), h * rng.uniform(0.42, 0.58)
    a, b, t = 0.30 * min(w, h), 0.15 * min(w, h), rng.uniform(0, np.pi)
    yy, xx = np.arange(h, dtype=np.float32)[:, None] - cy, np.arange(w, dtype=np.float32)[None, :] - cx
    u = (xx * np.cos(t) + yy * np.sin(t)) / a
    v = (-xx * np.sin(t) + yy * np.cos(t)) / b
    step = max(4, int(round(2.0 / mpp)))
    noise = _upsample(_smooth_noise(rng, (h // step + 2, w // step + 2), 3.0), step, (h, w))
    signed = (1 - np.sqrt(u * u + v * v) + 0.12 * noise) * b  # ≈ px inside the tear edge
    return _Tear(row0=y0 - origin[1], col0=x0 - origin[0], mask=np.clip(signed + 0.5, 0, 1))


# --------------------------------------------------------------------------- nuclei


@dataclass
class _Nuclei:
    """Nuclei in world pixels: centre, status and shape."""

    x: np.ndarray
    y: np.ndarray
    tumor: np.ndarray      # bool
    radius: np.ndarray     # area-equivalent radius, px
    aspect: np.ndarray     # ≥ 1
    angle: np.ndarray      # rad
    amps: np.ndarray       # (n, 4) boundary harmonics 2..5, relative
    phases: np.ndarray     # (n, 4)
    density: np.ndarray    # relative chromatin density
    extent: np.ndarray     # px, upper bound of the boundary's distance from the centre

    @classmethod
    def empty(cls) -> "_Nuclei":
        z = np.zeros(0)
        return cls(z, z, z.astype(bool), z, z, z, np.zeros((0, 4)), np.zeros((0, 4)), z, z)


def _shapes(rng, n: int, mpp: float) -> dict:
    """Shape parameters of `n` nuclei as both statuses: out[0] normal, out[1] tumor (larger, longer, more irregular)."""
    size_z = np.clip(rng.standard_normal(n), -2.5, 2.5)
    aspect_u, angle = rng.uniform(0, 1, n), rng.uniform(0, np.pi, n)
    harm = rng.uniform(0, 1, (n, 4)) * np.array([0.4, 0.3, 0.2, 0.1])
    phases, dens_z = rng.uniform(0, 2 * np.pi, (n, 4)), np.clip(rng.standard_normal(n), -2.5, 2.5)
    out = {}
    for status in (0, 1):
        r = NORMAL_RADIUS_UM / mpp * (TUMOR_RADIUS_SCALE if status else 1.0) * (1 + _SIZE_SD[status] * size_z)
        aspect = 1 + _ASPECT_MAX[status] * aspect_u
        amps = harm * _IRREGULARITY[status]
        out[status] = dict(radius=r, aspect=aspect, amps=amps,
                           extent=r * np.sqrt(aspect) * (1 + amps.sum(axis=1)) + 0.5,
                           density=1 + (0.08 if status == 0 else 0.12) * dens_z)
    out["angle"], out["phases"] = angle, phases
    return out


def _place_nuclei(rng, tissue_hard: np.ndarray, origin, mpp: float, key_of, key_fraction: np.ndarray) -> _Nuclei:
    """Random sequential placement inside tissue with a minimum membrane gap.

    Each nucleus is tumor or not so that, within each quota key (region), the count of
    tumor nuclei stays exactly round(fraction × count) after every accepted nucleus.
    """
    h, w = tissue_hard.shape
    r_normal = NORMAL_RADIUS_UM / mpp
    density = 5.0 / (np.pi * (1.45 * r_normal) ** 2)  # attempts per px²: ~6× what fits
    n_try = int(rng.poisson(density * h * w))
    x = rng.uniform(0, w, n_try)
    y = rng.uniform(0, h, n_try)
    inside = tissue_hard[y.astype(np.int64), x.astype(np.int64)]
    x, y = x[inside] + origin[0], y[inside] + origin[1]
    n = len(x)
    if n == 0:
        return _Nuclei.empty()
    shapes = _shapes(rng, n, mpp)
    ext = np.stack([shapes[0]["extent"], shapes[1]["extent"]])  # (2, n)
    gap = MIN_GAP_UM / mpp
    keys = key_of(x, y)
    pts = np.column_stack([x, y])
    pairs = cKDTree(pts).query_pairs(2 * float(ext.max()) + gap, output_type="ndarray")
    # candidate pairs that could touch, as lists of earlier neighbours (CSR) in the random order
    lo, hi = np.minimum(pairs[:, 0], pairs[:, 1]), np.maximum(pairs[:, 0], pairs[:, 1])
    dist = np.hypot(x[hi] - x[lo], y[hi] - y[lo]) - gap
    close = dist < ext[1, lo] + ext[1, hi]
    lo, hi, dist = lo[close], hi[close], dist[close]
    order = np.argsort(hi, kind="stable")
    nb, dist = lo[order].tolist(), dist[order].tolist()
    ptr = np.searchsorted(hi[order], np.arange(n + 1)).tolist()
    ext_n, ext_t = ext[0].tolist(), ext[1].tolist()
    placed_ext = [-1e9] * n  # not (yet) placed: never in the way
    status = np.full(n, -1, np.int8)
    counts = [0] * len(key_fraction)
    tumors = [0] * len(key_fraction)
    fraction = [float(f) for f in key_fraction]
    for i, g in enumerate(keys.tolist()):
        want = 1 if math.floor(fraction[g] * (counts[g] + 1) + 0.5) > tumors[g] else 0
        e = ext_t[i] if want else ext_n[i]
        if any(d < e + placed_ext[j] for j, d in zip(nb[ptr[i]:ptr[i + 1]], dist[ptr[i]:ptr[i + 1]])):
            continue
        status[i] = want
        placed_ext[i] = e
        counts[g] += 1
        tumors[g] += want
    keep = status >= 0
    tumor = status[keep] == 1
    pick = lambda name: np.where(tumor, shapes[1][name][keep], shapes[0][name][keep])  # noqa: E731
    return _Nuclei(x=x[keep], y=y[keep], tumor=tumor, radius=pick("radius"), aspect=pick("aspect"),
                   angle=shapes["angle"][keep], amps=np.where(tumor[:, None], shapes[1]["amps"][keep],
                                                              shapes[0]["amps"][keep]),
                   phases=shapes["phases"][keep], density=pick("density"), extent=pick("extent"))


@dataclass
class _Raster:
    alpha: np.ndarray          # float32 nuclear coverage [0, 1]
    chromatin: np.ndarray      # float32 coverage × relative chromatin density
    tumor: np.ndarray          # bool, pixel belongs to a tumor nucleus
    labels: np.ndarray | None  # int32 nucleus index + 1 where alpha ≥ 0.5


def _texture_tile(seed: int, mpp: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return _smooth_noise(rng, (_TEXTURE_TILE_PX, _TEXTURE_TILE_PX), max(0.6, 0.35 / mpp))


def _rasterize(nuclei: _Nuclei, tissue_soft: np.ndarray, origin, mpp: float, labels: bool) -> _Raster:
    """Draw the nuclei from small local stamps (vectorised in batches of similar stamp size).

    Nuclei are cut by the tissue edge (a section through cells), never drawn on glass.
    """
    h, w = shape = tissue_soft.shape
    alpha = np.zeros(shape, np.float32)
    chromatin = np.zeros(shape, np.float32)
    tumor_px = np.zeros(shape, bool)
    label_map = np.zeros(shape, np.int32) if labels else None
    texture = _texture_tile(12345, mpp)
    n = len(nuclei.x)
    if n == 0:
        return _Raster(alpha, chromatin, tumor_px, label_map)
    tex_amp = np.where(nuclei.tumor, _TEXTURE_AMP[1], _TEXTURE_AMP[0]).astype(np.float32)
    by_size = np.argsort(nuclei.extent, kind="stable")  # batches of similar stamp size
    b0 = 0
    while b0 < n:
        k = 2 * int(math.ceil(float(nuclei.extent[by_size[min(n - 1, b0 + 255)]]))) + 3
        b1 = min(n, b0 + max(1, 2_000_000 // (k * k)))
        k = 2 * int(math.ceil(float(nuclei.extent[by_size[b1 - 1]]))) + 3
        offs = np.arange(k) - k // 2
        sl = by_size[b0:b1]
        cx, cy = nuclei.x[sl] - origin[0], nuclei.y[sl] - origin[1]  # canvas px
        ix, iy = np.floor(cx).astype(np.int64), np.floor(cy).astype(np.int64)
        px = ix[:, None] + offs[None, :]  # (m, k) canvas columns
        py = iy[:, None] + offs[None, :]
        dxs = (px + 0.5 - cx[:, None]).astype(np.float32)[:, None, :]
        dys = (py + 0.5 - cy[:, None]).astype(np.float32)[:, :, None]
        c, s = np.cos(nuclei.angle[sl]).astype(np.float32), np.sin(nuclei.angle[sl]).astype(np.float32)
        sq = np.sqrt(nuclei.aspect[sl]).astype(np.float32)
        r = nuclei.radius[sl].astype(np.float32)
        col = lambda v: v[:, None, None]  # noqa: E731
        u = (dxs * col(c) + dys * col(s)) / col(r * sq)
        v = (-dxs * col(s) + dys * col(c)) / col(r / sq)
        rho = np.sqrt(u * u + v * v) + 1e-6
        cos1, sin1 = u / rho, v / rho
        boundary = np.ones_like(rho)
        ck, sk = cos1, sin1
        for h_i in range(4):  # harmonics 2..5 by angle-addition recurrence
            ck, sk = ck * cos1 - sk * sin1, sk * cos1 + ck * sin1
            a = nuclei.amps[sl, h_i].astype(np.float32)
            ph = nuclei.phases[sl, h_i]
            boundary += col(a * np.cos(ph).astype(np.float32)) * ck - col(a * np.sin(ph).astype(np.float32)) * sk
        q = rho / boundary  # 1 on the membrane
        a_px = np.clip((1 - q) * col(r) + 0.5, 0, 1)  # ≈ signed distance in px, anti-aliased
        ok = (a_px > 0) & (py[:, :, None] >= 0) & (py[:, :, None] < h) & (px[:, None, :] >= 0) & (px[:, None, :] < w)
        m_idx, yy, xx = np.nonzero(ok)
        a_ok, q_ok = a_px[ok], q[ok]
        row, column = py[m_idx, yy], px[m_idx, xx]
        tex = texture[row % _TEXTURE_TILE_PX, column % _TEXTURE_TILE_PX]
        rim = 1 + 0.25 * np.clip((q_ok - 0.7) / 0.3, 0, 1)  # darker nuclear membrane
        idx = sl[m_idx]
        flat = row * w + column
        a_ok *= tissue_soft.ravel()[flat]
        dens = a_ok * nuclei.density[idx].astype(np.float32) * (1 + tex_amp[idx] * tex) * rim
        alpha.ravel()[flat] = a_ok
        chromatin.ravel()[flat] = np.maximum(dens, 0)
        tumor_px.ravel()[flat] = nuclei.tumor[idx]
        if labels:
            inner = a_ok >= 0.5
            label_map.ravel()[flat[inner]] = (sl[m_idx[inner]] + 1).astype(np.int32)
        b0 = b1
    return _Raster(alpha, chromatin, tumor_px, label_map)


# --------------------------------------------------------------------------- stroma and staining


def _fibre_tile(rng, size: int, mpp: float, vertical: bool) -> np.ndarray:
    """A periodic (size × size) texture of wavy collagen fibres, zero mean, unit s.d."""
    noise = rng.standard_normal((size, size)).astype(np.float32)
    sigma = (max(0.8, 0.5 / mpp), max(3.0, 6.0 / mpp))
    tile = ndimage.gaussian_filter(noise, sigma[::-1] if vertical else sigma, mode="wrap")
    tile /= tile.std()
    step = 16
    n = size // step
    warps = []
    for _ in range(2):  # periodic smooth displacement, ~6 µm
        low = _smooth_noise(rng, (n, n), 1.5) * (6.0 / mpp)
        warps.append(_upsample(np.pad(low, ((0, 1), (0, 1)), mode="wrap"), step, (size, size)))
    yy = (np.arange(size)[:, None] + warps[0]).astype(np.int64) % size
    xx = (np.arange(size)[None, :] + warps[1]).astype(np.int64) % size
    return tile[yy, xx]


def _periodic(tile: np.ndarray, row0: int, col0: int, shape) -> np.ndarray:
    """Tile ``tile`` over the plane and cut ``shape`` at (row0, col0)."""
    rows = (np.arange(shape[0]) + row0) % tile.shape[0]
    cols = (np.arange(shape[1]) + col0) % tile.shape[1]
    return tile.take(rows, axis=0).take(cols, axis=1)


def _fibre_field(rng, shape, origin, mpp: float) -> np.ndarray:
    """Eosin density of stroma, ≈ 0.15–0.6: fibres of two orientations mixed region by region."""
    base = max(256, min(2048, -(-max(shape) // 64) * 64))
    fibre_a = _periodic(_fibre_tile(rng, base, mpp, False), origin[1], origin[0], shape)
    fibre_b = _periodic(_fibre_tile(rng, base * 3 // 4 // 16 * 16, mpp, True), origin[1], origin[0], shape)
    step = max(8, int(round(16.0 / mpp)))
    low_shape = (shape[0] // step + 2, shape[1] // step + 2)
    mix = _upsample(np.clip(_smooth_noise(rng, low_shape, 3.0) * 0.6 + 0.5, 0, 1), step, shape)
    out = fibre_a
    out -= fibre_b
    out *= mix
    out += fibre_b
    del fibre_b, mix
    out *= 0.08
    out += 0.36
    np.clip(out, 0.12, 0.65, out=out)
    return out


def _stain_view(rng, stain: str, view: _View, raster: _Raster, tissue_soft, fibres, tear) -> np.ndarray:
    """RGB uint8 of one slide (``stain`` 'he' or 'ihc') seen through ``view``, in row strips."""
    size = view.size
    out = np.empty((size, size, 3), np.uint8)
    cols = view.cols
    strip = 512
    hv, ev, dv = _STAINS["H"], _STAINS["E"], _STAINS["DAB"]
    # mild sensor noise (s.d. 2 grey levels), from a bank shifted per strip and channel
    bank = rng.standard_normal((strip + 64, size + 64), dtype=np.float32) * 2.0
    for r0 in range(0, size, strip):
        r1 = min(size, r0 + strip)
        rows = view.rows(r0, r1)
        a, chrom, tum = raster.alpha[rows, cols], raster.chromatin[rows, cols], raster.tumor[rows, cols]
        tis = tissue_soft[rows, cols]
        if tear is not None:
            keep = 1 - tear.crop(rows, cols)
            a, chrom, tis = a * keep, chrom * keep, tis * keep
        stroma = tis * (1 - a)
        per_status = lambda pair: _by_status(chrom, tum, pair)  # noqa: E731
        if stain == "he":
            c_h = per_status(_HE_NUCLEUS_H)
            c_h += np.float32(0.06) * stroma
            c_e = fibres[rows, cols] * stroma
            c_e += np.float32(0.12) * a
            c_d = None
        else:
            c_h = per_status(_IHC_NUCLEUS_H)
            c_h += np.float32(0.36) * stroma * (np.float32(0.6) + np.float32(0.5) * fibres[rows, cols])
            c_e = None
            c_d = per_status(_IHC_NUCLEUS_DAB)
            c_d += np.float32(0.03) * stroma
        for ch in range(3):
            od = c_h * hv[ch] + _GLASS_OD
            if c_e is not None:
                od += c_e * ev[ch]
            if c_d is not None:
                od += c_d * dv[ch]
            np.negative(od, out=od)
            val = np.exp(od, out=od)
            val *= np.float32(255.0)
            oy, ox = rng.integers(0, 64, 2)
            val += bank[oy:oy + r1 - r0, ox:ox + size]
            np.clip(val, 0, 255, out=val)
            out[r0:r1, :, ch] = (val + 0.5).astype(np.uint8)
    return out


def _by_status(chromatin: np.ndarray, tumor: np.ndarray, pair: tuple[float, float]) -> np.ndarray:
    """chromatin × (pair[0] for normal, pair[1] for tumor pixels), float32."""
    factor = tumor.astype(np.float32)
    factor *= np.float32(pair[1] - pair[0])
    factor += np.float32(pair[0])
    factor *= chromatin
    return factor


# --------------------------------------------------------------------------- truth and writing


def _region_truth(grid, raster, tissue, view, nuclei, fractions, tissue_frac, tear, origin) -> pd.DataFrame:
    rows = []
    inside = raster.alpha >= 0.5
    for rid in range(grid.n):
        x0, y0, x1, y1 = grid.box(rid)
        sl = (slice(y0 - origin[1], y1 - origin[1]), slice(x0 - origin[0], x1 - origin[0]))
        nuc = inside[sl]
        n_area = int(nuc.sum())
        pos_area = int((nuc & raster.tumor[sl]).sum())
        centred = (nuclei.x >= x0) & (nuclei.x < x1) & (nuclei.y >= y0) & (nuclei.y < y1)
        n_nuc = int(centred.sum())
        torn = bool(tear is not None and np.any((tear.crop(*sl) >= 0.5) & tissue.hard[sl]))
        rows.append(dict(region_id=rid, x0=x0, y0=y0, x1=x1, y1=y1, tumor_fraction=float(fractions[rid]),
                         true_ratio=pos_area / n_area if n_area else float("nan"),
                         true_ratio_count=float(nuclei.tumor[centred].sum()) / n_nuc if n_nuc else float("nan"),
                         n_nuclei=n_nuc, nuclear_area_px=n_area, tissue_fraction=float(tissue_frac[rid]),
                         torn=torn))
    df = pd.DataFrame(rows)
    return df.astype({"region_id": "int64", "x0": "int64", "y0": "int64", "x1": "int64", "y1": "int64",
                      "n_nuclei": "int64", "nuclear_area_px": "int64", "torn": "bool"})


def _write_pyramid_tiff(rgb: np.ndarray, path, mpp: float, tile: int = 256, quality: int = 90) -> None:
    """Tiled JPEG pyramid (downsample 1, 2, 4, … while ≥ 256 px) that OpenSlide reads as generic TIFF."""
    import tifffile

    with atomic_path(path) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=rgb.nbytes > 2**31) as tif:
            level, ds = rgb, 1
            while True:
                mpp_level = mpp * ds
                tif.write(level, tile=(tile, tile), compression="jpeg", compressionargs={"level": quality},
                          photometric="rgb", resolution=(1e4 / mpp_level, 1e4 / mpp_level),
                          resolutionunit="CENTIMETER", subfiletype=0 if ds == 1 else 1, metadata=None)
                h, w = level.shape[:2]
                if min(h // 2, w // 2) < 256:
                    break
                level = _halve(level)
                ds *= 2


def _halve(img: np.ndarray) -> np.ndarray:
    """2× box downsampling (odd last row/column dropped)."""
    from PIL import Image

    h, w = img.shape[0] // 2 * 2, img.shape[1] // 2 * 2
    return np.asarray(Image.fromarray(np.ascontiguousarray(img[:h, :w])).reduce(2))
