"""Registration of consecutive sections: where each H&E point lies on the IHC slide.

A transform maps H&E level-0 pixel coordinates to IHC level-0 pixel coordinates (continuous
coordinates: pixel k covers [k, k + 1), its centre is k + 0.5). It is an affine matrix (3×3,
homogeneous) plus, when non-rigid, a displacement added after it, sampled on a regular grid of
H&E level-0 positions and interpolated bilinearly::

    ihc = matrix · he + field(he)

Registration runs at low resolution on a stain-independent signal: the optical density summed
over R, G, B (dark = much stain, whichever stain; glass ≈ 0), masked to tissue. Steps:

1. rigid start: every rotation in ``angle_step`` degrees (0/90/180/270 among them) with and
   without a flip; the translation of each from the FFT cross-correlation of the two signals;
   the candidate with the highest correlation wins;
2. similarity then affine refinement by ECC (OpenCV's enhanced correlation coefficient, which is
   invariant to a linear change of intensity) over a coarse-to-fine pyramid;
3. optional non-rigid refinement at a finer level: block matching (normalised cross-correlation
   of patches on a grid), outliers dropped, the shifts smoothed into a displacement field.

The score is the correlation of the two signals over the tissue of either slide after the
transform (−1…1); a pair below ``min_score`` (a blank IHC, a different tissue) is not ``ok``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field as dc_field

import numpy as np
from scipy import ndimage

from .logs import get_logger

log = get_logger("registration")

METHODS = ("none", "rigid", "affine", "nonrigid")


# --------------------------------------------------------------------------- transform


@dataclass
class Transform:
    """H&E level-0 → IHC level-0 point mapping: ``matrix`` (3×3) plus an optional grid field.

    ``field`` is None or a (2, ny, nx) array of IHC level-0 px displacements, node (i, j) at
    H&E level-0 ``origin + (j, i) · spacing``; between nodes bilinear, outside the grid the
    nearest edge value.
    """

    matrix: np.ndarray
    field: np.ndarray | None = None
    origin: tuple[float, float] = (0.0, 0.0)
    spacing: float = 1.0

    def __post_init__(self):
        self.matrix = np.asarray(self.matrix, dtype=np.float64).reshape(3, 3)
        if self.field is not None:
            self.field = np.asarray(self.field, dtype=np.float64)
            if self.field.ndim != 3 or self.field.shape[0] != 2:
                raise ValueError(f"field must be (2, ny, nx), got {self.field.shape}")
        self.origin = (float(self.origin[0]), float(self.origin[1]))
        self.spacing = float(self.spacing)

    def apply(self, points) -> np.ndarray:
        """Map (N, 2) H&E level-0 points (x, y) to IHC level-0 points."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        out = pts @ self.matrix[:2, :2].T + self.matrix[:2, 2]
        if self.field is not None:
            out = out + self.displacement(pts)
        return out

    def displacement(self, points) -> np.ndarray:
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        if self.field is None:
            return np.zeros_like(pts)
        cols = (pts[:, 0] - self.origin[0]) / self.spacing
        rows = (pts[:, 1] - self.origin[1]) / self.spacing
        coords = np.stack([rows, cols])
        return np.stack([ndimage.map_coordinates(self.field[k], coords, order=1, mode="nearest")
                         for k in (0, 1)], axis=1)

    def local_affine(self, x0: float, y0: float, x1: float, y1: float, n: int = 5) -> np.ndarray:
        """The 2×3 affine that best matches the transform over the H&E box [x0, x1) × [y0, y1).

        Exact for an affine transform; for a non-rigid one the least-squares fit over an n×n
        grid of points of the box (the field is smooth on the scale of a tile).
        """
        if self.field is None:
            return self.matrix[:2].copy()
        gx, gy = np.meshgrid(np.linspace(x0, x1, n), np.linspace(y0, y1, n))
        src = np.column_stack([gx.ravel(), gy.ravel()])
        dst = self.apply(src)
        design = np.column_stack([src, np.ones(len(src))])
        sol, *_ = np.linalg.lstsq(design, dst, rcond=None)
        return sol.T

    def to_dict(self) -> dict:
        out = {"matrix": self.matrix.tolist(), "field": None}
        if self.field is not None:
            out["field"] = {"origin": list(self.origin), "spacing": self.spacing,
                            "dx": np.round(self.field[0], 4).tolist(), "dy": np.round(self.field[1], 4).tolist()}
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "Transform":
        fld = data.get("field")
        if not fld:
            return cls(np.asarray(data["matrix"], dtype=np.float64))
        return cls(np.asarray(data["matrix"], dtype=np.float64), np.stack([np.asarray(fld["dx"]), np.asarray(fld["dy"])]),
                   tuple(fld["origin"]), float(fld["spacing"]))

    def scaled(self, he_scale: float, ihc_scale: float) -> "Transform":
        """The same mapping in other pixel units: he' = he · he_scale, ihc' = ihc · ihc_scale."""
        s_he = np.diag([he_scale, he_scale, 1.0])
        s_ihc = np.diag([ihc_scale, ihc_scale, 1.0])
        matrix = s_ihc @ self.matrix @ np.linalg.inv(s_he)
        if self.field is None:
            return Transform(matrix)
        return Transform(matrix, self.field * ihc_scale, (self.origin[0] * he_scale, self.origin[1] * he_scale),
                         self.spacing * he_scale)


def translation(dx: float, dy: float) -> np.ndarray:
    m = np.eye(3)
    m[:2, 2] = dx, dy
    return m


def _to_cv(matrix: np.ndarray) -> np.ndarray:
    """Continuous-coordinate matrix → OpenCV's pixel-index convention (centre of pixel j is j)."""
    return translation(-0.5, -0.5) @ matrix @ translation(0.5, 0.5)


def _from_cv(matrix: np.ndarray) -> np.ndarray:
    return translation(0.5, 0.5) @ matrix @ translation(-0.5, -0.5)


def _as3(m2x3: np.ndarray) -> np.ndarray:
    out = np.eye(3)
    out[:2] = m2x3
    return out


# --------------------------------------------------------------------------- warping


def warp_image(moving: np.ndarray, transform: Transform, shape: tuple[int, int], *, border=255,
               interpolation: int | None = None) -> np.ndarray:
    """The moving image resampled on the fixed grid of ``shape`` (rows, cols): out(p) = moving(T(p)).

    Both images are in the transform's pixel units (use :meth:`Transform.scaled`).
    """
    import cv2

    interpolation = cv2.INTER_LINEAR if interpolation is None else interpolation
    h, w = shape
    src = np.ascontiguousarray(moving)
    if transform.field is None:
        m = _to_cv(transform.matrix)[:2].astype(np.float64)
        return cv2.warpAffine(src, m, (w, h), flags=interpolation | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=_border(border, src))
    map_x, map_y = dense_map(transform, shape)
    return cv2.remap(src, map_x, map_y, interpolation, borderMode=cv2.BORDER_CONSTANT,
                     borderValue=_border(border, src))


def dense_map(transform: Transform, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV remap maps (pixel-index convention) of ``transform`` over a fixed grid of ``shape``."""
    h, w = shape
    xs = np.arange(w, dtype=np.float64) + 0.5
    ys = np.arange(h, dtype=np.float64) + 0.5
    m = transform.matrix
    map_x = (m[0, 0] * xs[None, :] + m[0, 1] * ys[:, None] + m[0, 2]).astype(np.float32)
    map_y = (m[1, 0] * xs[None, :] + m[1, 1] * ys[:, None] + m[1, 2]).astype(np.float32)
    if transform.field is not None:
        cols = ((xs - transform.origin[0]) / transform.spacing)
        rows = ((ys - transform.origin[1]) / transform.spacing)
        for k, target in ((0, map_x), (1, map_y)):
            target += bilinear_grid(transform.field[k], rows, cols)
    map_x -= 0.5
    map_y -= 0.5
    return map_x, map_y


def bilinear_grid(grid: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of ``grid`` at every (row, col) of ``rows`` × ``cols`` (fractional
    node indices, clamped to the grid): a (len(rows), len(cols)) float32 array."""
    def weights(pos, n):
        pos = np.clip(pos, 0, n - 1)
        i0 = np.minimum(np.floor(pos).astype(np.int64), max(n - 2, 0))
        i1 = np.minimum(i0 + 1, n - 1)
        t = pos - i0
        return i0, i1, t

    r0, r1, tr = weights(rows, grid.shape[0])
    c0, c1, tc = weights(cols, grid.shape[1])
    along_rows = grid[r0] * (1 - tr)[:, None] + grid[r1] * tr[:, None]
    return (along_rows[:, c0] * (1 - tc)[None, :] + along_rows[:, c1] * tc[None, :]).astype(np.float32)


def _border(border, src):
    if np.ndim(border) == 0 and src.ndim == 3:
        return (border,) * src.shape[2]
    return border


# --------------------------------------------------------------------------- signal


def stain_signal(rgb: np.ndarray, *, sigma_px: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Stain-independent signal and tissue mask of an RGB image.

    The signal is the optical density summed over R, G, B (Beer–Lambert: every stain adds to
    it), smoothed by ``sigma_px``, glass at 0, scaled so that the tissue's 99th percentile is 1.
    The mask is :func:`tumormap.tissue.tissue_mask`, cleaned (opened, holes filled).
    """
    from .tissue import tissue_mask

    rgb = np.asarray(rgb)
    od = -np.log((rgb.astype(np.float32) + 1.0) / 256.0).sum(axis=-1)
    mask = tissue_mask(rgb)
    mask = ndimage.binary_opening(mask, iterations=1)
    mask = ndimage.binary_fill_holes(mask)
    glass = float(np.median(od[~mask])) if (~mask).any() else 0.0
    od = np.clip(od - glass, 0, None)
    if sigma_px > 0:
        od = ndimage.gaussian_filter(od, sigma_px)
    top = float(np.percentile(od[mask], 99)) if mask.any() else 0.0
    if top > 0:
        od = np.clip(od / top, 0, 1.5)
    return od.astype(np.float32), mask


def _resize(img: np.ndarray, factor: float) -> np.ndarray:
    import cv2

    if factor == 1:
        return img
    h, w = img.shape[:2]
    size = (max(1, int(round(w * factor))), max(1, int(round(h * factor))))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)


# --------------------------------------------------------------------------- score


def correlation_score(fixed: np.ndarray, warped: np.ndarray, mask: np.ndarray) -> float:
    """Pearson correlation of two signals over ``mask`` (−1…1; 0 when either is flat)."""
    if mask.sum() < 16:
        return 0.0
    a, b = fixed[mask].astype(np.float64), warped[mask].astype(np.float64)
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else 0.0


def pair_score(fixed_sig, fixed_mask, moving_sig, moving_mask, transform: Transform, smooth_px: float = 0.0) -> float:
    """Correlation of the fixed signal and the warped moving signal over either tissue.

    ``smooth_px``: both signals are first smoothed by this σ (px): consecutive sections share
    structure at the scale of vessels and airways, not of single cells.
    """
    import cv2

    shape = fixed_sig.shape
    warped = warp_image(moving_sig, transform, shape, border=0)
    if smooth_px > 0:
        fixed_sig, warped = ndimage.gaussian_filter(fixed_sig, smooth_px), ndimage.gaussian_filter(warped, smooth_px)
    warped_mask = warp_image(moving_mask.astype(np.uint8), transform, shape, border=0,
                             interpolation=cv2.INTER_NEAREST).astype(bool)
    return correlation_score(fixed_sig, warped, fixed_mask | warped_mask)


# --------------------------------------------------------------------------- rigid search


def _centre(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        h, w = mask.shape
        return np.array([w / 2, h / 2])
    return np.array([xs.mean() + 0.5, ys.mean() + 0.5])


def rigid_candidates(angle_step: float = 90.0, flips: bool = True):
    """(angle in degrees, flip) pairs: every multiple of ``angle_step`` (0/90/180/270 among them)."""
    n = max(1, int(round(360.0 / angle_step)))
    angles = sorted(set(float((k * 360.0 / n) % 360) for k in range(n)) | {0.0, 90.0, 180.0, 270.0})
    return [(a, f) for f in ((False, True) if flips else (False,)) for a in angles]


def _linear(angle_deg: float, flip: bool, scale: float = 1.0) -> np.ndarray:
    """Linear part (fixed → moving): rotate by ``angle_deg`` (y down, clockwise on screen), flip x first."""
    t = math.radians(angle_deg)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]]) * scale
    return rot @ np.diag([-1.0, 1.0]) if flip else rot


def _fft_shift(fixed: np.ndarray, warped: np.ndarray, max_shift: float) -> tuple[float, float, float]:
    """Shift (dx, dy) of ``warped`` that best correlates it with ``fixed`` (zero-padded FFT)."""
    h, w = fixed.shape
    a = fixed - fixed.mean()
    b = warped - warped.mean()
    H, W = 2 * h, 2 * w
    fa = np.fft.rfft2(a, (H, W))
    fb = np.fft.rfft2(b, (H, W))
    cc = np.fft.irfft2(fa * np.conj(fb), (H, W))
    # cc[dy, dx] = Σ a(p) b(p - d): warped shifted by +d matches fixed
    dys = np.fft.fftfreq(H, 1 / H)
    dxs = np.fft.fftfreq(W, 1 / W)
    allowed = (np.abs(dys)[:, None] <= max_shift) & (np.abs(dxs)[None, :] <= max_shift)
    cc = np.where(allowed, cc, -np.inf)
    iy, ix = np.unravel_index(int(np.argmax(cc)), cc.shape)
    norm = math.sqrt(float((a * a).sum()) * float((b * b).sum())) or 1.0
    return float(dxs[ix]), float(dys[iy]), float(cc[iy, ix] / norm)


def rigid_search(fixed_sig, fixed_mask, moving_sig, moving_mask, *, angle_step: float = 90.0, flips: bool = True,
                 scale: float = 1.0, start: np.ndarray | None = None, smooth_px: float = 2.0,
                 keep: int = 4) -> list[tuple[np.ndarray, float, object]]:
    """The ``keep`` best rotations × flips (+ translation) mapping fixed px → moving px, best first.

    Each candidate's linear part turns about the tissue centres; its translation comes from
    the cross-correlation of the fixed signal with the moving one warped by the candidate,
    both smoothed by ``smooth_px`` (a candidate is up to half a step off in angle: only coarse
    structure can agree). ``start`` (a 3×3 matrix, e.g. the sheet's offset) is scored as one
    more candidate. Each entry: (matrix, correlation, (angle, flip) or 'start').
    """
    shape = fixed_sig.shape
    fixed_s = ndimage.gaussian_filter(fixed_sig, smooth_px)
    moving_s = ndimage.gaussian_filter(moving_sig, smooth_px)
    cf, cm = _centre(fixed_mask), _centre(moving_mask)
    max_shift = 0.5 * max(shape)
    found = []
    candidates = [(a, f, None) for a, f in rigid_candidates(angle_step, flips)]
    if start is not None:
        candidates.append((None, None, np.asarray(start, dtype=np.float64)))
    for angle, flip, given in candidates:
        if given is None:
            lin = _linear(angle, flip, scale)
            m = np.eye(3)
            m[:2, :2] = lin
            m[:2, 2] = cm - lin @ cf  # fixed tissue centre → moving tissue centre
        else:
            m = given
        warped = warp_image(moving_s, Transform(m), shape, border=0)
        dx, dy, _ = _fft_shift(fixed_s, warped, max_shift if given is None else 0.1 * max(shape))
        m = m @ translation(-dx, -dy)  # out(p) = warped(p - d)
        score = pair_score(fixed_s, fixed_mask, moving_s, moving_mask, Transform(m))
        found.append((m, score, "start" if given is not None else (angle, flip)))
    found.sort(key=lambda c: -c[1])
    return found[:keep]


# --------------------------------------------------------------------------- affine (ECC)


def ecc_refine(fixed_sig, fixed_mask, moving_sig, matrix: np.ndarray, *, motion: str = "affine",
               iterations: int = 200, eps: float = 1e-6, gauss: int = 5) -> tuple[np.ndarray, float | None]:
    """Refine ``matrix`` (fixed px → moving px, continuous coordinates) by ECC; (matrix, ecc or None).

    ``motion``: 'euclidean' (rotation + translation), 'affine'. On failure to converge the
    input matrix comes back with None.
    """
    import cv2

    mode = {"euclidean": cv2.MOTION_EUCLIDEAN, "affine": cv2.MOTION_AFFINE}[motion]
    if motion == "euclidean":
        # OpenCV reads the angle off the matrix, which fails for 180° and flips: refine a small
        # rotation + translation of the moving image pre-warped by ``matrix`` instead
        warped = warp_image(moving_sig, Transform(matrix), fixed_sig.shape, border=0)
        correction, cc = _ecc(fixed_sig, warped, np.eye(3), mode, iterations, eps, gauss)
        return (matrix, None) if cc is None else (matrix @ correction, cc)
    return _ecc(fixed_sig, moving_sig, matrix, mode, iterations, eps, gauss)


def _ecc(fixed_sig, moving_sig, matrix, mode, iterations, eps, gauss):
    import cv2

    warp = _to_cv(matrix)[:2].astype(np.float32)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, iterations, eps)
    try:
        cc, warp = cv2.findTransformECC(fixed_sig.astype(np.float32), moving_sig.astype(np.float32), warp, mode,
                                        criteria, None, gauss)
    except cv2.error as exc:
        log.debug("ECC (mode %d) did not converge: %s", mode, str(exc).strip().splitlines()[-1])
        return matrix, None
    return _from_cv(_as3(warp.astype(np.float64))), float(cc)


# --------------------------------------------------------------------------- non-rigid


def _local_normalise(signal: np.ndarray, sigma: float) -> np.ndarray:
    """Signal minus its local mean over its local s.d. (σ = ``sigma`` px), as uint8 around 128.

    Removes what differs between stains at large scale (overall darkness, contrast), keeps
    the structure that consecutive sections share.
    """
    mean = ndimage.gaussian_filter(signal, sigma)
    centred = signal - mean
    sd = np.sqrt(ndimage.gaussian_filter(centred * centred, sigma) + 1e-4)
    return np.clip(centred / sd * 40 + 128, 0, 255).astype(np.uint8)


def flow_field(fixed_sig, moving_sig, transform: Transform, *, fixed_mask=None, moving_mask=None,
               normalise_px: float = 8.0, smooth_px: float = 5.0, iterations: int = 1) -> Transform:
    """Non-rigid refinement: a smooth displacement field added to ``transform`` (images' px units).

    Dense optical flow (OpenCV's DIS, 'medium' preset) from the fixed signal to the moving
    signal warped by the transform, both locally normalised (:func:`_local_normalise`), then
    smoothed by ``smooth_px`` as a normalised convolution over the pixels that are tissue on
    both slides (given the masks): glass, tears and tissue found on one slide only carry no
    flow of their own and take their neighbours'. The field is kept on a grid of spacing
    ≈ smooth_px (the field varies little within one σ).
    """
    import cv2

    h, w = fixed_sig.shape
    spacing = max(1, int(round(smooth_px)))
    rows, cols = np.arange(0, h + spacing, spacing), np.arange(0, w + spacing, spacing)
    fixed_u8 = _local_normalise(fixed_sig.astype(np.float32), normalise_px)
    for _ in range(iterations):
        warped = warp_image(moving_sig, transform, (h, w), border=0).astype(np.float32)
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        flow = dis.calc(fixed_u8, _local_normalise(warped, normalise_px), None)
        weight = np.ones((h, w), np.float32)
        if fixed_mask is not None and moving_mask is not None:
            both = fixed_mask & warp_image(moving_mask.astype(np.uint8), transform, (h, w), border=0,
                                           interpolation=cv2.INTER_NEAREST).astype(bool)
            if both.mean() > 0.01:
                weight = both.astype(np.float32)
        den = np.maximum(ndimage.gaussian_filter(weight, smooth_px), 1e-3)
        flow = np.stack([ndimage.gaussian_filter(flow[..., k] * weight, smooth_px) / den for k in (0, 1)])
        grid = flow[:, np.minimum(rows, h - 1)][:, :, np.minimum(cols, w - 1)].astype(np.float64)
        # fixed(p) ≈ warped(p + s) = moving(T(p + s)) ≈ moving(T(p) + J·s): the field adds J·s
        disp = np.einsum("ab,bij->aij", transform.matrix[:2, :2], grid)
        gx, gy = np.meshgrid(cols + 0.5, rows + 0.5)
        if transform.field is not None:
            disp += transform.displacement(np.column_stack([gx.ravel(), gy.ravel()])).T.reshape(disp.shape)
        transform = Transform(transform.matrix, disp, (0.5, 0.5), float(spacing))
    return transform


# --------------------------------------------------------------------------- the whole pair


@dataclass
class Registration:
    transform: Transform  # in the pixel units of the arrays given to register_arrays
    method: str
    score: float
    ok: bool
    reason: str
    steps: dict = dc_field(default_factory=dict)


def register_arrays(fixed_rgb: np.ndarray, moving_rgb: np.ndarray, *, method: str = "affine",
                    rigid_px: int = 256, angle_step: float = 15.0, flips: bool = True, scale: float = 1.0,
                    start: np.ndarray | None = None, affine_px: int = 1024, normalise_px: float = 8.0,
                    smooth_px: float = 5.0, nonrigid_iterations: int = 1, score_px: float = 4.0,
                    min_score: float = 0.45, max_stretch: float = 1.25, min_tissue: float = 0.01) -> Registration:
    """Register two RGB images (fixed = H&E, moving = IHC); the transform maps fixed px → moving px.

    ``scale``: expected moving px per fixed px (1 when both images are at the same µm/px).
    ``start``: an optional 3×3 start matrix (e.g. the sheet's offset), tried beside the search.
    The rigid search runs with the longer side at ``rigid_px``, ECC up to ``affine_px``, the
    non-rigid step on the images as given. ``method`` 'rigid' stops after a Euclidean ECC.
    Non-rigid: ``normalise_px`` (local contrast normalisation σ), ``smooth_px`` (field
    smoothing σ), ``nonrigid_iterations``. The pair is ``ok`` when the score (correlation of the
    signals smoothed by ``score_px``) is ≥ ``min_score`` and the affine stretches by no more than
    ``max_stretch`` (either way) beyond ``scale``. All lengths in px of the images given.
    """
    if method not in METHODS or method == "none":
        raise ValueError(f"registration method must be one of {METHODS[1:]}, got {method!r}")
    fixed_sig, fixed_mask = stain_signal(fixed_rgb)
    moving_sig, moving_mask = stain_signal(moving_rgb)
    steps: dict = {}
    for name, mask in (("H&E", fixed_mask), ("IHC", moving_mask)):
        if mask.mean() < min_tissue:
            reason = f"the {name} shows no tissue at registration resolution ({100 * mask.mean():.2f} % of pixels)"
            return Registration(Transform(start if start is not None else np.diag([scale, scale, 1.0])), method,
                                0.0, False, reason, steps)

    def level(px):  # images and signals with the longer fixed side at px (never upsampled)
        f = min(1.0, px / max(fixed_sig.shape))
        if f == 1.0:
            return 1.0, fixed_sig, fixed_mask, moving_sig, moving_mask
        fs, ms = _resize(fixed_sig, f), _resize(moving_sig, f)
        fm = _resize(fixed_mask.astype(np.float32), f) >= 0.5
        mm = _resize(moving_mask.astype(np.float32), f) >= 0.5
        return f, fs, fm, ms, mm

    rigid_px = min(rigid_px, affine_px)  # never search finer than the affine level: cells differ, tissue does not
    f, fs, fm, ms, mm = level(rigid_px)
    start_low = None if start is None else Transform(start).scaled(f, f).matrix
    # the best few candidates of the search, each refined (rotation + translation) and compared after it
    best = None
    for m_low, corr, which in rigid_search(fs, fm, ms, mm, angle_step=angle_step, flips=flips, scale=scale,
                                           start=start_low):
        refined, cc = ecc_refine(fs, fm, ms, m_low, motion="euclidean")
        after = pair_score(fs, fm, ms, mm, Transform(refined), 1.0)
        if best is None or after > best[1]:
            best = (refined, after, which, corr)
    steps["rigid"] = {"candidate": best[2], "search_correlation": round(best[3], 4),
                      "refined_correlation": round(best[1], 4)}
    matrix = Transform(best[0]).scaled(1 / f, 1 / f).matrix
    levels = sorted({min(rigid_px, max(fixed_sig.shape)), min(affine_px, max(fixed_sig.shape))})
    for motion in ("euclidean",) + (() if method == "rigid" else ("affine",)):
        for px in levels:
            f, fs, fm, ms, mm = level(px)
            m_low, cc = ecc_refine(fs, fm, ms, Transform(matrix).scaled(f, f).matrix, motion=motion)
            if cc is not None:
                matrix = Transform(m_low).scaled(1 / f, 1 / f).matrix
            steps[f"ecc_{motion}_{px}"] = None if cc is None else round(cc, 4)
    transform = Transform(matrix)
    if method == "nonrigid":
        transform = flow_field(fixed_sig, moving_sig, transform, fixed_mask=fixed_mask, moving_mask=moving_mask,
                               normalise_px=normalise_px, smooth_px=smooth_px, iterations=nonrigid_iterations)
    score = pair_score(fixed_sig, fixed_mask, moving_sig, moving_mask, transform, score_px)
    stretch = np.linalg.svd(transform.matrix[:2, :2] / scale, compute_uv=False)
    steps["stretch"] = [round(float(v), 4) for v in stretch]
    ok, reason = True, ""
    if score < min_score:
        ok, reason = False, f"registration score {score:.3f} < min_score {min_score:.3f}: the sections do not match"
    elif stretch.max() > max_stretch or stretch.min() < 1 / max_stretch:
        ok, reason = False, (f"the affine stretches the IHC by {stretch.min():.2f}–{stretch.max():.2f} (allowed "
                             f"1/{max_stretch:g}–{max_stretch:g}): not consecutive sections of one tissue")
    return Registration(transform, method, score, ok, reason, steps)


# --------------------------------------------------------------------------- landmarks


def rtre(transform: Transform, fixed_points, moving_points, diagonal: float) -> np.ndarray:
    """ANHIR's relative target registration error per landmark: |T(fixed) − moving| / diagonal."""
    mapped = transform.apply(fixed_points)
    return np.hypot(*(mapped - np.asarray(moving_points, dtype=np.float64)).T) / float(diagonal)


# --------------------------------------------------------------------------- slides


def read_slide_at(path, mpp: float, sample: str = "?", fallback_mpp: float | None = None) -> tuple[np.ndarray, float]:
    """The whole slide as RGB at about ``mpp`` µm/px (never finer than level 0), and its scale
    (image px per level-0 px)."""
    from .slides import open_slide, slide_mpp

    slide = open_slide(path, sample)
    try:
        mpp0 = slide_mpp(slide, fallback_mpp, sample, path)
        w, h = slide.dimensions
        factor = min(1.0, mpp0 / mpp)
        size = (max(1, int(round(w * factor))), max(1, int(round(h * factor))))
        rgba = slide.get_thumbnail(size).convert("RGB")
        rgb = np.asarray(rgba)
    finally:
        slide.close()
    scale = 0.5 * (rgb.shape[1] / w + rgb.shape[0] / h)
    return rgb, scale


def register_slides(he_path, ihc_path, sample: str, *, method: str = "affine", mpp: float = 4.0,
                    nonrigid_mpp: float = 2.0, angle_step: float = 15.0, flips: bool = True,
                    offset: tuple[float, float] | None = None, offset_mode: str = "start",
                    min_score: float = 0.45, max_stretch: float = 1.25,
                    normalise_um: float = 32.0, smooth_um: float = 20.0, score_um: float = 16.0,
                    he_mpp: float | None = None, ihc_mpp: float | None = None) -> tuple[dict, np.ndarray]:
    """Register one sample's IHC slide to its H&E slide; (result dict for JSON, QC image).

    The rigid search and the affine run at ``mpp`` µm/px, the non-rigid step at
    ``nonrigid_mpp``; ``normalise_um``, ``smooth_um``, ``score_um`` are the non-rigid and
    score scales in µm. ``offset`` (IHC level-0 px, the sheet's) is scored as a start beside
    the search (``offset_mode`` 'start') or used as the whole transform ('override': no search,
    only the score). The dict holds ``sample, method, matrix`` (3×3, H&E level-0 → IHC level-0),
    ``field`` (None or the grid of IHC level-0 px displacements), ``score, ok, reason`` and
    the steps' details.
    """
    from .slides import open_slide, slide_mpp

    fine = nonrigid_mpp if method == "nonrigid" else mpp
    he_rgb, he_scale = read_slide_at(he_path, fine, sample, he_mpp)
    ihc_rgb, ihc_scale = read_slide_at(ihc_path, fine, sample, ihc_mpp)
    mpps = []
    for path, fb in ((he_path, he_mpp), (ihc_path, ihc_mpp)):
        slide = open_slide(path, sample)
        mpps.append(slide_mpp(slide, fb, sample, path))
        slide.close()
    um_px = mpps[0] / he_scale  # µm per registration px (H&E); the IHC's is the same up to rounding
    nominal = Transform(np.diag([mpps[0] / mpps[1], mpps[0] / mpps[1], 1.0]))  # same physical position
    before = nominal if offset is None else Transform(translation(*offset) @ nominal.matrix)
    start = before.scaled(he_scale, ihc_scale).matrix
    if offset_mode not in ("start", "override"):
        raise ValueError(f"sample {sample}: registration.sheet_offset must be start or override, got {offset_mode!r}")
    if offset is not None and offset_mode == "override":
        method = "sheet_offset"
        result = score_transform(he_rgb, ihc_rgb, before.scaled(he_scale, ihc_scale), score_px=score_um / um_px,
                                 min_score=min_score)
    else:
        result = register_arrays(
            he_rgb, ihc_rgb, method=method, angle_step=angle_step, flips=flips,
            scale=ihc_scale / he_scale * mpps[0] / mpps[1], start=start if offset is not None else None,
            affine_px=int(round(max(he_rgb.shape[:2]) * um_px / mpp)), normalise_px=normalise_um / um_px,
            smooth_px=smooth_um / um_px, score_px=score_um / um_px, min_score=min_score, max_stretch=max_stretch)
    level0 = result.transform.scaled(1 / he_scale, 1 / ihc_scale)
    if not result.ok:
        log.warning("sample %s: IHC not registered to the H&E: %s", sample, result.reason)
    log.info("sample %s: %s registration at %.2f µm/px, score %.3f, steps %s", sample, method, um_px,
             result.score, result.steps)
    qc = qc_image(he_rgb, ihc_rgb, before.scaled(he_scale, ihc_scale), result.transform)
    out = {"sample": sample, "method": method, **level0.to_dict(), "score": round(float(result.score), 4),
           "ok": bool(result.ok), "reason": result.reason, "steps": result.steps,
           "registration_mpp": round(um_px, 4), "he_mpp": mpps[0], "ihc_mpp": mpps[1]}
    return out, qc


def score_transform(fixed_rgb, moving_rgb, transform: Transform, *, score_px: float = 4.0,
                    min_score: float = 0.45) -> Registration:
    """Score a given transform (e.g. the sheet's offset) without searching: a Registration."""
    fixed_sig, fixed_mask = stain_signal(fixed_rgb)
    moving_sig, moving_mask = stain_signal(moving_rgb)
    score = pair_score(fixed_sig, fixed_mask, moving_sig, moving_mask, transform, score_px)
    ok = bool(score >= min_score)
    reason = "" if ok else f"registration score {score:.3f} < min_score {min_score:.3f}: the sections do not match"
    return Registration(transform, "sheet_offset", score, ok, reason, {})


def qc_image(fixed_rgb, moving_rgb, before: Transform, after: Transform, squares: int = 8,
             max_px: int = 800) -> np.ndarray:
    """Checkerboards of the H&E and the IHC warped onto it: before (left) and after (right)."""
    f = min(1.0, max_px / max(fixed_rgb.shape[:2]))
    fixed = _resize(np.ascontiguousarray(fixed_rgb), f)
    h, w = fixed.shape[:2]
    panels = []
    for t in (before, after):
        warped = warp_image(moving_rgb, t.scaled(f, 1.0), (h, w))
        side = max(h, w) / squares
        yy, xx = np.mgrid[0:h, 0:w]
        board = ((yy // side + xx // side) % 2).astype(bool)
        panels.append(np.where(board[..., None], warped, fixed))
    gap = np.full((h, 8, 3), 255, np.uint8)
    return np.concatenate([panels[0], gap, panels[1]], axis=1).astype(np.uint8)


def save_registration(result: dict, qc: np.ndarray, json_path, png_path, field_path=None) -> None:
    """Write the registration JSON, its QC PNG and (``field_path``) the displacement field.

    The field's arrays go to an .npz (``dx``, ``dy`` float32, IHC level-0 px; empty when the
    transform has no field, so the file always exists) and the JSON names it, beside the
    field's ``origin`` and ``spacing``. Without ``field_path`` the arrays stay in the JSON.
    """
    from pathlib import Path

    from PIL import Image

    from .io import atomic_path, write_json

    result = dict(result)
    fld = result.get("field")
    if field_path is not None:
        dx = np.asarray(fld["dx"], np.float32) if fld else np.zeros((0, 0), np.float32)
        dy = np.asarray(fld["dy"], np.float32) if fld else np.zeros((0, 0), np.float32)
        with atomic_path(field_path, suffix=".npz") as tmp:
            np.savez_compressed(tmp, dx=dx, dy=dy)
        if fld:
            result["field"] = {"origin": fld["origin"], "spacing": fld["spacing"], "shape": list(dx.shape),
                               "file": Path(field_path).name}
    with atomic_path(png_path) as tmp:
        Image.fromarray(qc).save(tmp)
    write_json(result, json_path)


def load_transform(path) -> tuple[Transform, dict]:
    """A registration JSON as written by :func:`save_registration`: (Transform, the whole dict).

    A field kept in a separate .npz is read from beside the JSON.
    """
    from pathlib import Path

    from .io import read_json

    data = read_json(path)
    fld = data.get("field")
    if fld and "file" in fld:
        with np.load(Path(path).parent / fld["file"]) as arrays:
            data = {**data, "field": {**fld, "dx": arrays["dx"], "dy": arrays["dy"]}}
    return Transform.from_dict(data), data
