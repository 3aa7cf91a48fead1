"""Simulated scanner and staining changes of an RGB tile: optical-density scale, stain-vector
change, optical blur, JPEG compression.

Used twice: :func:`scanner_change` applies one named change (the scanner benchmark, the
calibration tests), :func:`random_scanner_change` draws one at random (training
augmentation of the nuclei model). Optical density here is natural-log Beer–Lambert as in
:mod:`tumormap.stain` (``OD = -ln((I + 1) / 256)``); scaling it by ``k`` is the same tissue
imaged k times as dark (a darker scan or a stronger stain). Blur is a Gaussian on the
intensities (optics blur light, not dye), in pixels of the given image.
"""

from __future__ import annotations

import io

import numpy as np

from .stain import od_to_rgb, rgb_to_od

# Ruifrok & Johnston's stain OD vectors (as skimage.color.rgb_from_hed), unit columns:
# H&E fields unmix as (hematoxylin, eosin, DAB), IHC as (hematoxylin, DAB, eosin); the first
# two columns are the stains an augmentation jitters.
_RUIFROK = {"h": (0.65, 0.70, 0.29), "e": (0.07, 0.99, 0.11), "dab": (0.27, 0.57, 0.78)}


def _columns(*names: str) -> np.ndarray:
    m = np.array([_RUIFROK[n] for n in names], float).T
    return m / np.linalg.norm(m, axis=0, keepdims=True)


HED_MATRIX = _columns("h", "e", "dab")
HDAB_MATRIX = _columns("h", "dab", "e")

# Augmentation ranges (training): what a new scanner or staining run plausibly does.
DEFAULT_AUGMENT = dict(
    od_scale=(0.6, 1.4),        # global OD factor (all stains alike)
    stain_scale=(0.85, 1.15),   # extra factor per stain (staining batch)
    vector_jitter=0.05,         # s.d. added to each component of each unit stain vector
    blur_sigma=(0.0, 2.0),      # px, drawn with probability p_blur
    p_blur=0.5,
    jpeg_quality=(50, 95),      # drawn with probability p_jpeg
    p_jpeg=0.5,
)


def od_scale(rgb: np.ndarray, k) -> np.ndarray:
    """The image with every pixel's optical density multiplied by ``k`` (a number, or one per
    RGB channel) (uint8)."""
    return np.round(od_to_rgb(rgb_to_od(np.asarray(rgb)[..., :3]) * np.asarray(k, float))).astype(np.uint8)


def blur(rgb: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of the intensities, ``sigma`` in pixels (uint8)."""
    if sigma <= 0:
        return np.asarray(rgb)[..., :3].copy()
    from scipy import ndimage as ndi

    out = ndi.gaussian_filter(np.asarray(rgb)[..., :3].astype(np.float32), (sigma, sigma, 0))
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    """The image after one JPEG round trip at ``quality`` (PIL defaults: 4:2:0 chroma)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(np.asarray(rgb)[..., :3])).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


def restain(rgb: np.ndarray, matrix_from: np.ndarray, matrix_to: np.ndarray,
            scale: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Unmix with stain matrix ``matrix_from`` (3x3, columns = unit OD vectors), scale each
    concentration by ``scale`` and remix with ``matrix_to`` (uint8)."""
    od = rgb_to_od(np.asarray(rgb)[..., :3])
    conc = od @ np.linalg.inv(np.asarray(matrix_from, float)).T
    out = (conc * np.asarray(scale, float)) @ np.asarray(matrix_to, float).T
    return np.round(od_to_rgb(np.maximum(out, 0))).astype(np.uint8)


def scanner_change(rgb: np.ndarray, *, od: float = 1.0, od_rgb: tuple[float, float, float] | None = None,
                   blur_sigma: float = 0.0, jpeg_quality: int | None = None) -> np.ndarray:
    """One simulated scanner: OD × ``od`` (and per RGB channel × ``od_rgb``: a colour change
    that turns every stain vector), then blur ``blur_sigma`` px, then JPEG."""
    k = np.full(3, float(od)) * (np.asarray(od_rgb, float) if od_rgb is not None else 1.0)
    out = od_scale(rgb, k) if (k != 1.0).any() else np.asarray(rgb)[..., :3].copy()
    out = blur(out, blur_sigma)
    return jpeg(out, jpeg_quality) if jpeg_quality else out


def _jitter_matrix(matrix: np.ndarray, rng: np.random.Generator, sd: float) -> np.ndarray:
    m = np.array(matrix, float)
    m[:, :2] = np.abs(m[:, :2] + rng.normal(0, sd, (3, 2)))
    m[:, :2] /= np.linalg.norm(m[:, :2], axis=0, keepdims=True)
    return m


def random_scanner_change(rgb: np.ndarray, rng: np.random.Generator, matrix: np.ndarray,
                          params: dict | None = None) -> np.ndarray:
    """A random scanner/staining change of one image (uint8), ranges ``DEFAULT_AUGMENT``.

    ``matrix`` is the stain matrix the image is unmixed with (3x3, columns = two stains and
    a residual); each stain's OD vector is jittered, each concentration scaled by a global
    and a per-stain factor; then blur and JPEG, each with its probability.
    """
    p = {**DEFAULT_AUGMENT, **(params or {})}
    k = rng.uniform(*p["od_scale"])
    scale = (k * rng.uniform(*p["stain_scale"]), k * rng.uniform(*p["stain_scale"]), k)
    out = restain(rgb, matrix, _jitter_matrix(matrix, rng, float(p["vector_jitter"])), scale)
    if rng.random() < p["p_blur"]:
        out = blur(out, rng.uniform(*p["blur_sigma"]))
    if rng.random() < p["p_jpeg"]:
        out = jpeg(out, int(rng.integers(p["jpeg_quality"][0], p["jpeg_quality"][1] + 1)))
    return out
