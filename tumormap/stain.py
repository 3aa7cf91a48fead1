"""Macenko stain estimation (HistomicsTK) and stain normalisation, in numpy and torch.

Units and conventions
---------------------
* Optical density (OD) is natural-log Beer–Lambert: ``OD = -ln((I + 1) / (I_0 + 1))`` for an 8-bit
  intensity ``I`` and background intensity ``I_0`` (default 255, so white is OD 0), clipped at 0.
  This is HistomicsTK's ``rgb_to_od`` / ``rgb_to_sda(I_0=None)`` up to its constant factor
  ``255 / ln(256)`` (stain vectors are unit vectors, so the factor only scales concentrations).
* A stain dict (JSON-able) holds ``matrix``: 3x3, columns hematoxylin, eosin, residual
  (unit OD vectors, residual = normalised H x E), and ``max_concentration``: the 99th percentile
  of the H and E concentrations over tissue pixels, in the OD units above.
* Concentrations are ``C = OD · inv(W)ᵀ`` (per pixel, row vectors). Normalisation rescales the H and E
  concentrations by ``target_max / source_max`` (Macenko 2009), keeps the residual one, and rebuilds
  ``OD = W_target · C``. Normalising an image to its own stain is the identity.

Importing this module imports neither torch nor TensorFlow; ``StainTransform`` builds its
``torch.nn.Module`` class on first access.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np

CHANNELS = ("rgb", "rgb+he", "rgb+hed")
N_CHANNELS = {"rgb": 3, "rgb+he": 5, "rgb+hed": 6}
# Macenko et al. 2009 reference H and E 99th-percentile concentrations (natural-log OD), as in the
# reference implementation (github schaugf/HEnorm_python, maxCRef) and TIAToolbox.
REFERENCE_MAX_CONCENTRATION = (1.9705, 1.0308)
# Macenko's beta: a pixel is background unless its OD is at least this in every channel.
DEFAULT_BACKGROUND_OD = 0.15


def _histomicstk():
    from histomicstk.preprocessing import color_deconvolution as cd

    return cd


def _histomicstk_version() -> str:
    import histomicstk

    return str(histomicstk.__version__)


def rgb_to_od(rgb: np.ndarray, I_0: float = 255.0) -> np.ndarray:
    """Natural-log optical density of 8-bit intensities (float64, same shape, >= 0)."""
    od = -np.log((np.asarray(rgb, dtype=np.float64) + 1.0) / (float(I_0) + 1.0))
    return np.maximum(od, 0.0)


def od_to_rgb(od: np.ndarray, I_0: float = 255.0) -> np.ndarray:
    """Inverse of :func:`rgb_to_od`: intensities in [0, 255] (float64, unclipped above by I_0 <= 255)."""
    return np.clip((float(I_0) + 1.0) * np.exp(-od) - 1.0, 0.0, 255.0)


def tissue_pixels(rgb: np.ndarray, I_0: float = 255.0,
                  background_threshold: float = DEFAULT_BACKGROUND_OD) -> np.ndarray:
    """OD rows (N x 3) of the pixels whose OD is >= ``background_threshold`` in every channel."""
    od = rgb_to_od(np.asarray(rgb)[..., :3].reshape(-1, 3), I_0)
    return od[_is_tissue(od, background_threshold)]


def _is_tissue(od: np.ndarray, background_threshold: float) -> np.ndarray:
    """Macenko's background test on OD rows: tissue where every channel's OD >= the threshold."""
    return (od >= background_threshold).all(axis=1)


def _unit_columns(w: np.ndarray) -> np.ndarray:
    return w / np.linalg.norm(w, axis=0, keepdims=True)


def _pad(w2: np.ndarray) -> np.ndarray:
    w = np.zeros((3, 3))
    w[:, :2] = w2
    return w


def concentrations(rgb: np.ndarray, stain: dict, I_0: float | None = None) -> np.ndarray:
    """Stain concentrations (H, E, residual) per pixel, float64 (..., 3), in natural-log OD units."""
    matrix = stain_matrix(stain)
    I_0 = float(stain.get("I_0", 255.0)) if I_0 is None else float(I_0)
    od = rgb_to_od(np.asarray(rgb)[..., :3], I_0)
    return od @ np.linalg.inv(matrix).T


def estimate_stain(tiles: Iterable[np.ndarray], *, I_0: float = 255.0,
                   background_threshold: float = DEFAULT_BACKGROUND_OD, min_pixels: int = 2000,
                   max_pixels: int = 2_000_000, percentile: float = 99.0, seed: int = 0,
                   minimum_magnitude: float = 16.0, min_angle_percentile: float = 0.01,
                   max_angle_percentile: float = 0.99) -> dict:
    """Macenko stain matrix and H/E max concentrations of one slide, from its tissue tiles.

    ``tiles``: uint8 RGB arrays (H x W x 3, any sizes). Background pixels (OD below
    ``background_threshold`` in any channel, Macenko's beta) are excluded; at most ``max_pixels``
    tissue pixels (random, ``seed``) go to HistomicsTK's ``rgb_separate_stains_macenko_pca``
    (``minimum_magnitude`` is in its SDA units, 0..255; angle percentiles as fractions).
    Raises ValueError when fewer than ``min_pixels`` tissue pixels remain.
    """
    cd = _histomicstk()
    tiles = list(tiles)
    if not tiles:
        raise ValueError("estimate_stain: no tiles given")
    parts, n_total = [], 0
    for i, tile in enumerate(tiles):
        tile = np.asarray(tile)
        if tile.ndim != 3 or tile.shape[-1] < 3:
            raise ValueError(f"estimate_stain: tile {i} has shape {tile.shape}; expected H x W x 3 RGB")
        rgb = tile[..., :3].reshape(-1, 3)
        n_total += len(rgb)
        parts.append(rgb[_is_tissue(rgb_to_od(rgb, I_0), background_threshold)])
    rgb = np.concatenate(parts)
    n_tissue = len(rgb)
    if n_tissue < min_pixels:
        raise ValueError(
            f"estimate_stain: only {n_tissue} tissue pixels (OD >= {background_threshold} in every channel) "
            f"among {n_total} pixels in {len(tiles)} tiles; need at least {min_pixels}")
    if n_tissue > max_pixels:
        rgb = rgb[np.random.default_rng(seed).choice(n_tissue, max_pixels, replace=False)]

    # HistomicsTK SDA with I_0 + 1 on I + 1 is our OD times 255 / ln(I_0 + 1).
    w = cd.rgb_separate_stains_macenko_pca(
        rgb.T.astype(np.float64) + 1.0, float(I_0) + 1.0, minimum_magnitude=minimum_magnitude,
        min_angle_percentile=min_angle_percentile, max_angle_percentile=max_angle_percentile)
    two = w[:, :2] * np.where(w[:, :2].sum(axis=0) < 0, -1.0, 1.0)  # OD vectors point into the + octant
    i_h = int(cd.find_stain_index(cd.stain_color_map["hematoxylin"], two))
    matrix = cd.complement_stain_matrix(_pad(_unit_columns(two[:, [i_h, 1 - i_h]])))
    if not np.isfinite(matrix).all() or abs(np.linalg.det(matrix)) < 1e-6:
        raise ValueError(f"estimate_stain: degenerate stain matrix from {len(rgb)} tissue pixels: {matrix.tolist()}")

    conc = rgb_to_od(rgb, I_0) @ np.linalg.inv(matrix).T
    max_conc = np.percentile(conc[:, :2], percentile, axis=0)
    if not (max_conc > 0).all():
        raise ValueError(f"estimate_stain: non-positive {percentile}th-percentile H/E concentrations {max_conc}")
    return {
        "matrix": matrix.tolist(),
        "max_concentration": [float(v) for v in max_conc],
        "n_pixels": int(len(rgb)),
        "n_tissue_pixels": int(n_tissue),
        "n_tiles": len(tiles),
        "I_0": float(I_0),
        "background_threshold": float(background_threshold),
        "percentile": float(percentile),
        "method": "macenko_pca",
        "histomicstk": _histomicstk_version(),
    }


# HistomicsTK's stain_color_map hematoxylin and eosin (histomicstk.preprocessing.color_deconvolution),
# copied so that rules without HistomicsTK in their env (training, prediction) can use the reference.
REFERENCE_HE = ((0.65, 0.70, 0.29), (0.07, 0.99, 0.11))


def reference_stain() -> dict:
    """Target stain: HistomicsTK's standard H and E vectors (third column: their unit cross
    product, as its complement_stain_matrix), Macenko's reference max concentrations."""
    w = _unit_columns(np.array(REFERENCE_HE, dtype=float).T)
    third = np.cross(w[:, 0], w[:, 1])
    matrix = np.column_stack([w, third / np.linalg.norm(third)])
    return {
        "matrix": matrix.tolist(),
        "max_concentration": list(REFERENCE_MAX_CONCENTRATION),
        "I_0": 255.0,
        "method": "reference",
        "source": "histomicstk stain_color_map hematoxylin/eosin; Macenko 2009 maxCRef",
    }


def stain_matrix(stain: dict) -> np.ndarray:
    """The 3x3 float64 matrix of a stain dict, checked."""
    validate_stain(stain)
    return np.asarray(stain["matrix"], dtype=np.float64)


def validate_stain(stain: dict, name: str = "stain") -> dict:
    """Raise ValueError unless ``stain`` has a finite invertible 3x3 matrix and two positive max concentrations."""
    if not isinstance(stain, dict) or "matrix" not in stain or "max_concentration" not in stain:
        raise ValueError(f"{name}: expected a dict with 'matrix' and 'max_concentration', got {stain!r:.200}")
    m = np.asarray(stain["matrix"], dtype=np.float64)
    c = np.asarray(stain["max_concentration"], dtype=np.float64)
    if m.shape != (3, 3) or not np.isfinite(m).all() or abs(np.linalg.det(m)) < 1e-6:
        raise ValueError(f"{name}: 'matrix' must be a finite invertible 3x3 (columns H, E, residual), got {m.tolist()}")
    if c.shape != (2,) or not (np.isfinite(c).all() and (c > 0).all()):
        raise ValueError(f"{name}: 'max_concentration' must be two positive numbers [H, E], got {c.tolist()}")
    return stain


def load_target(spec: str | Path) -> dict:
    """Config ``stain.target``: ``"reference"`` or the path of a stain JSON written from :func:`estimate_stain`."""
    if str(spec) == "reference":
        return reference_stain()
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"stain.target: {path} is neither 'reference' nor an existing stain JSON file")
    try:
        stain = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"stain.target: {path} is not valid JSON: {err}") from None
    return validate_stain(stain, name=f"stain.target {path}")


def _check_channels(channels: str) -> None:
    if channels not in CHANNELS:
        raise ValueError(f"channels must be one of {CHANNELS}, got {channels!r}")


def normalise_numpy(rgb: np.ndarray, source: dict, target: dict, channels: str = "rgb") -> np.ndarray:
    """Macenko-normalise one H x W x 3 uint8 image from ``source`` stain to ``target`` stain.

    Returns float32 H x W x C: C = 3 (``"rgb"``, intensities / 255 in [0, 1]), C = 5
    (``"rgb+he"``: plus the H and E concentrations divided by the source max concentration,
    i.e. normalised concentration / target max, about [0, 1]; unclipped) or C = 6 (``"rgb+hed"``:
    plus the third, residual stain's concentration on the hematoxylin scale: the six input
    layers of seed 002, RGB beside the separated stains).
    """
    _check_channels(channels)
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] < 3:
        raise ValueError(f"normalise_numpy: expected H x W x 3 RGB, got shape {rgb.shape}")
    w_s, w_t = stain_matrix(source), stain_matrix(target)
    scale = np.ones(3)
    scale[:2] = np.asarray(target["max_concentration"], float) / np.asarray(source["max_concentration"], float)
    conc = rgb_to_od(rgb[..., :3], source.get("I_0", 255.0)) @ np.linalg.inv(w_s).T
    out_rgb = od_to_rgb((conc * scale) @ w_t.T, target.get("I_0", 255.0)) / 255.0
    if channels == "rgb":
        return out_rgb.astype(np.float32)
    n = N_CHANNELS[channels] - 3
    scale_c = np.asarray([*source["max_concentration"], source["max_concentration"][0]], float)[:n]
    return np.concatenate([out_rgb, conc[..., :n] / scale_c], axis=-1).astype(np.float32)


def stack_stains(stains: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample stain dicts -> (matrices N x 3 x 3, max concentrations N x 2), float64, for StainTransform."""
    return (np.stack([stain_matrix(s) for s in stains]),
            np.stack([np.asarray(s["max_concentration"], dtype=np.float64) for s in stains]))


def estimate_slide_stain(slide_path: str | Path, tiles, sample: str, *, n_tiles: int = 64, seed: int = 0,
                         tile_px: int | None = None, **kwargs) -> dict:
    """Stain dict of one H&E slide from up to ``n_tiles`` tiles of its tile table (DataFrame).

    Uses rows with ``keep`` true when that column exists; picks ``n_tiles`` at random (``seed``);
    reads them with :class:`tumormap.slides.TileReader` at ``tile_px`` (default the table's).
    Extra keyword arguments go to :func:`estimate_stain`. Errors name the sample and the slide.
    """
    from .slides import read_sample_tiles

    images, _ = read_sample_tiles(slide_path, tiles, "he", sample, n_tiles=n_tiles, seed=seed, tile_px=tile_px,
                                  what="estimate the stain of")
    try:
        stain = estimate_stain(images, seed=seed, **kwargs)
    except ValueError as err:
        raise ValueError(f"sample {sample} ({slide_path}): {err}") from None
    stain.update(sample=str(sample), slide=str(slide_path))
    return stain


def stain_degeneracy(stain: dict, *, min_angle_deg: float = 10.0, min_component: float = -0.05) -> str:
    """Why an estimated stain is unusable, or "" when it is fine.

    Degenerate, measurably: a non-finite or singular matrix, an H or E OD vector with a
    component below ``min_component`` (OD vectors point into the + octant), H and E vectors
    less than ``min_angle_deg`` apart (one stain seen twice), or non-positive max concentrations.
    """
    m = np.asarray(stain.get("matrix"), dtype=np.float64)
    c = np.asarray(stain.get("max_concentration"), dtype=np.float64)
    if m.shape != (3, 3) or not np.isfinite(m).all():
        return f"non-finite stain matrix {m.tolist()}"
    if abs(np.linalg.det(m)) < 1e-6:
        return f"singular stain matrix (det {np.linalg.det(m):.2g})"
    h, e = _unit_columns(m[:, :2]).T
    if min(h.min(), e.min()) < min_component:
        return f"negative OD component in H {np.round(h, 3).tolist()} or E {np.round(e, 3).tolist()}"
    angle = float(np.degrees(np.arccos(np.clip(abs(h @ e), 0.0, 1.0))))
    if angle < min_angle_deg:
        return f"H and E vectors {angle:.1f}° apart (< {min_angle_deg}°)"
    if c.shape != (2,) or not (np.isfinite(c).all() and (c > 0).all()):
        return f"non-positive max concentrations {c.tolist()}"
    return ""


def slide_stain_or_reference(slide_path: str | Path, tiles, sample: str, *, n_tiles: int = 64,
                             tile_px: int | None = None, min_tissue_tiles: int = 1, min_angle_deg: float = 10.0,
                             **kwargs) -> dict:
    """:func:`estimate_slide_stain`, or the reference stain flagged with ``fallback: <reason>``.

    Falls back when the slide has fewer than ``min_tissue_tiles`` tissue tiles, when the
    estimate fails on the tissue (too few tissue pixels, singular matrix), or when the
    estimated matrix is degenerate (:func:`stain_degeneracy`; the rejected estimate is kept
    under ``rejected``). Errors reading the slide are raised, not hidden.
    """
    rows = tiles[tiles["keep"].astype(bool)] if "keep" in tiles.columns else tiles
    n = len(rows)
    reason, rejected = "", None
    if n < max(1, int(min_tissue_tiles)):
        reason = f"too little tissue: {n} tissue tiles (< stain.min_tissue_tiles {min_tissue_tiles})"
    else:
        try:
            stain = estimate_slide_stain(slide_path, tiles, sample, n_tiles=n_tiles, tile_px=tile_px, **kwargs)
        except ValueError as err:
            reason = f"estimate failed: {err}"
        else:
            reason = stain_degeneracy(stain, min_angle_deg=min_angle_deg)
            if not reason:
                return stain
            rejected = stain
    from .logs import get_logger

    get_logger("stain").warning("sample %s: stain of %s falls back to the reference: %s", sample, slide_path, reason)
    out = dict(reference_stain(), sample=str(sample), slide=str(slide_path), fallback=reason)
    if rejected is not None:
        out["rejected"] = {k: rejected[k] for k in ("matrix", "max_concentration") if k in rejected}
    return out


def __getattr__(name: str) -> Any:
    if name == "StainTransform":
        return _stain_transform_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _stain_transform_class():
    import torch

    class StainTransform(torch.nn.Module):
        """Batched Macenko normalisation on the tensor's device (same maths as :func:`normalise_numpy`).

        ``forward(x, source_matrix, source_max)``: ``x`` is N x 3 x H x W (NCHW), uint8 or float
        holding 0..255 intensities; ``source_matrix`` N x 3 x 3 and ``source_max`` N x 2 (tensors or
        arrays, e.g. from :func:`stack_stains`). Returns float32 N x C x H x W, C = 3 (RGB in [0, 1]),
        5 (``"rgb+he"``: plus H and E concentration / source max) or 6 (``"rgb+hed"``: plus the
        residual stain on the hematoxylin scale).
        """

        def __init__(self, target: dict, channels: str = "rgb", source_I_0: float = 255.0):
            super().__init__()
            _check_channels(channels)
            self.channels = channels
            self.out_channels = N_CHANNELS[channels]
            self.source_I_0 = float(source_I_0)
            self.target_I_0 = float(target.get("I_0", 255.0))
            self.register_buffer("target_matrix", torch.as_tensor(stain_matrix(target), dtype=torch.float32))
            self.register_buffer("target_max", torch.as_tensor(np.asarray(target["max_concentration"], float),
                                                               dtype=torch.float32))

        def forward(self, x, source_matrix, source_max):
            if x.ndim != 4 or x.shape[1] != 3:
                raise ValueError(f"StainTransform: expected N x 3 x H x W, got {tuple(x.shape)}")
            dev = x.device
            w_s = torch.as_tensor(source_matrix, dtype=torch.float64, device=dev)
            c_s = torch.as_tensor(source_max, dtype=torch.float64, device=dev)
            if w_s.shape != (x.shape[0], 3, 3) or c_s.shape != (x.shape[0], 2):
                raise ValueError(f"StainTransform: source_matrix {tuple(w_s.shape)} / source_max {tuple(c_s.shape)} "
                                 f"do not match batch size {x.shape[0]} (want N x 3 x 3 and N x 2)")
            inv = torch.linalg.inv(w_s)  # N x 3 x 3, float64 for accuracy, tiny
            scale = torch.ones(x.shape[0], 3, dtype=torch.float64, device=dev)
            scale[:, :2] = self.target_max.double() / c_s
            # normalised OD = W_t · diag(scale) · inv(W_s) · OD: one 3x3 per sample
            mix = (self.target_matrix.double() @ (scale[:, :, None] * inv)).float()
            od = (-torch.log((x.float() + 1.0) / (self.source_I_0 + 1.0))).clamp_min(0.0)
            n, _, h, w = od.shape
            od = od.reshape(n, 3, h * w)
            out_od = torch.bmm(mix, od)
            rgb = ((self.target_I_0 + 1.0) * torch.exp(-out_od) - 1.0).clamp(0.0, 255.0) / 255.0
            if self.channels == "rgb":
                return rgb.reshape(n, 3, h, w)
            k = self.out_channels - 3
            c_all = torch.cat([c_s, c_s[:, :1]], dim=1)[:, :k]  # the residual on the hematoxylin scale
            stains = torch.bmm((inv[:, :k, :] / c_all[:, :, None]).float(), od)
            return torch.cat([rgb, stains], dim=1).reshape(n, self.out_channels, h, w)

    StainTransform.__module__ = __name__
    return StainTransform
