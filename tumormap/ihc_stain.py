"""Per-slide stain calibration of hematoxylin–DAB (Ki67) IHC, so the ground truth does not
depend on the scanner or the staining run.

A calibration (a JSON-able dict, one per slide) holds

* ``matrix``: 3x3 OD vectors as columns (hematoxylin, DAB, and Ruifrok's eosin as the residual, as
  ``skimage.color.rgb2hed`` unmixes), hematoxylin and DAB estimated
  from the slide's tissue tiles by Macenko's method (:func:`tumormap.stain.estimate_stain`,
  HistomicsTK) or Ruifrok's reference vectors where the estimate is not trusted
  (``vector_source`` says which, and why);
* ``nuclear_h``: the slide's nuclear hematoxylin intensity (base-10 OD): the median
  hematoxylin concentration of the pixels above the Otsu threshold of the tissue's
  hematoxylin that carry little DAB (DAB < ½ H): the counterstained, negative nuclei;
* ``dab_fraction``, ``dab_median``: how much tissue is DAB-stained (DAB ≥ ½ nuclear_h) and its
  median DAB OD, for the record (DAB is not scaled by it);
* ``od_scale = REFERENCE_NUCLEAR_H[vectors] / nuclear_h``: the factor that maps the slide's stain
  concentrations onto the reference look the nuclei model's input range (``od_max``) and the
  DAB threshold were set on.

:func:`calibrated_stains` unmixes a tile with the slide's matrix and multiplies both stains by
``od_scale``: a scan k times darker or paler has k-times larger or smaller concentrations and
a k-times larger or smaller ``nuclear_h``, so it gives the same calibrated tile. DAB is scaled by the
same factor as hematoxylin, never by its own percentile: a tile or slide without positive
nuclei keeps (almost) no DAB. All statistics are ratios or Otsu thresholds of the slide's own
concentrations, so they scale with it (exactly, up to 8-bit rounding).

Optical density is base 10 (``-log10(I / 255)``, as skimage's ``rgb2hed``), the unit of the
ground truth's DAB threshold; with the reference vectors and ``od_scale`` 1 the calibrated
stains are exactly the uncalibrated ones. This module imports HistomicsTK only in :func:`estimate_ihc_calibration` with
``vectors="estimated"``.
"""

from __future__ import annotations

import numpy as np

from .logs import get_logger

log = get_logger("ihc_stain")

# The nuclear hematoxylin (base-10 OD, nuclear_h_intensity) a calibrated slide is given.
# "reference": chosen on the two real DeepLIIF Ki67 fields with the shipped nuclei model (input
# range od_max h 0.45, DAB threshold 0.25), whose own nuclear_h is 0.539 (Bladder1) and 0.422
# (Lung1): 0.46 puts both ratios within 0.05 of their masks (+0.044, -0.034); 0.45 and 0.47 do
# not (bench/bench_scanner.py --scan). An in-sample choice, as od_max and dab_threshold were.
# "estimated": the same look through Macenko's vectors, whose nuclear_h on those fields is
# 0.746x the reference vectors' (0.406, 0.312).
REFERENCE_NUCLEAR_H = {"reference": 0.46, "estimated": 0.343}
DEFAULTS = dict(
    vectors="reference",         # reference (Ruifrok's H and DAB) | estimated (Macenko, per slide)
    max_vector_angle_deg=15.0,   # an estimated vector further than this from the reference is not trusted
    min_dab_fraction=0.005,      # fewer tissue pixels with DAB ≥ ½ nuclear H: too little DAB to estimate its vector
    tissue_od=0.03,              # base-10 OD of H + DAB above which a pixel is tissue
    max_pixels=2_000_000,        # pixels sampled for the Macenko estimate
    seed=0,
)
VECTORS = ("estimated", "reference")


def _unit(v) -> np.ndarray:
    v = np.asarray(v, float)
    return v / np.linalg.norm(v)


def reference_matrix() -> np.ndarray:
    """Ruifrok & Johnston's hematoxylin, DAB and eosin vectors exactly as
    ``skimage.color.rgb_from_hed`` holds them (norms 0.998–1.003), as columns H, DAB, E."""
    from skimage.color import rgb_from_hed

    return np.asarray(rgb_from_hed, float)[[0, 2, 1]].T.copy()


def _angle_deg(a, b) -> float:
    return float(np.degrees(np.arccos(np.clip(np.dot(_unit(a), _unit(b)), -1.0, 1.0))))


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """Base-10 OD of 8-bit RGB, ``-log10(max(I / 255, 1e-6))``, as ``skimage.color.rgb2hed``
    (and :func:`tumormap.nuclei.stain_od`) compute it."""
    return -np.log10(np.maximum(np.asarray(rgb)[..., :3].astype(np.float64) / 255.0, 1e-6))


def stain_concentrations(rgb: np.ndarray, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hematoxylin and DAB concentrations (base-10 OD, float32, may be slightly negative).
    With :func:`reference_matrix` these are :func:`tumormap.nuclei.stain_od`'s, unclipped."""
    od = optical_density(rgb)
    conc = od @ np.linalg.inv(np.asarray(matrix, float)).T
    return conc[..., 0].astype(np.float32), conc[..., 1].astype(np.float32)


def nuclear_h_intensity(h: np.ndarray, dab: np.ndarray, tissue_od: float = DEFAULTS["tissue_od"]) -> dict:
    """The nuclear hematoxylin intensity of pixels ``h``, ``dab`` (concentrations, any shape).

    Tissue: H + DAB ≥ ``tissue_od``. Nuclear: tissue hematoxylin above its Otsu threshold
    with DAB < ½ H (counterstained nuclei, not DAB-covered ones). Returns nuclear_h (their
    median), h_otsu, the nuclear and tissue pixel counts, dab_fraction (tissue pixels with
    DAB ≥ ½ nuclear_h) and dab_median (their median DAB; NaN without any). Raises ValueError
    with too little tissue.
    """
    from skimage.filters import threshold_otsu

    h, dab = np.asarray(h, float).ravel(), np.asarray(dab, float).ravel()
    tissue = (h + np.maximum(dab, 0)) >= tissue_od
    if tissue.sum() < 100:
        raise ValueError(f"only {int(tissue.sum())} tissue pixels (H + DAB OD ≥ {tissue_od}); need 100")
    ht = h[tissue]
    otsu = float(threshold_otsu(ht)) if np.ptp(ht) > 0 else float(ht[0])
    nuclear = tissue & (h > otsu) & (dab < 0.5 * h)
    if nuclear.sum() < 20:
        raise ValueError(f"only {int(nuclear.sum())} hematoxylin-stained nuclear pixels above Otsu {otsu:.3f}")
    value = float(np.median(h[nuclear]))
    stained = dab[tissue][dab[tissue] >= 0.5 * value]
    return dict(nuclear_h=value, h_otsu=otsu, n_nuclear_pixels=int(nuclear.sum()), n_tissue_pixels=int(tissue.sum()),
                dab_fraction=float(len(stained) / tissue.sum()),
                dab_median=float(np.median(stained)) if len(stained) else float("nan"))


def estimate_ihc_calibration(tiles, **params) -> dict:
    """The calibration of one IHC slide from its tissue tiles (uint8 RGB arrays).

    ``params`` (defaults ``DEFAULTS``): ``vectors`` (``estimated``: Macenko per slide, each
    vector kept only within ``max_vector_angle_deg`` of the reference, and DAB only with at
    least ``min_dab_fraction`` of DAB-stained tissue; ``reference``: Ruifrok's), ``tissue_od``,
    ``max_pixels``, ``seed``. Returns the JSON-able calibration (module docstring).
    """
    p = {**DEFAULTS, **params}
    unknown = set(p) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"ihc calibration: unknown parameter(s) {sorted(unknown)}; expected {sorted(DEFAULTS)}")
    if p["vectors"] not in VECTORS:
        raise ValueError(f"ground_truth.calibration.vectors {p['vectors']!r}: expected one of {VECTORS}")
    tiles = [np.asarray(t)[..., :3] for t in tiles]
    if not tiles:
        raise ValueError("ihc calibration: no tiles given")
    pixels = np.concatenate([t.reshape(-1, 3) for t in tiles])
    ref = reference_matrix()
    # the DAB content, judged with the reference vectors: a slide without DAB has no DAB vector to estimate
    ref_stats = nuclear_h_intensity(*stain_concentrations(pixels, ref), p["tissue_od"])
    h_vec, dab_vec = ref[:, 0], ref[:, 1]
    source = {"h": "reference", "dab": "reference"}
    angles = {}
    if p["vectors"] == "estimated":
        from .stain import estimate_stain

        try:
            est = np.asarray(estimate_stain([pixels.reshape(-1, 1, 3)], max_pixels=int(p["max_pixels"]),
                                            seed=int(p["seed"]))["matrix"])
        except ValueError as err:
            source = {"h": f"reference (estimate failed: {err})", "dab": "reference (estimate failed)"}
        else:
            angles = {"h": _angle_deg(est[:, 0], ref[:, 0]), "dab": _angle_deg(est[:, 1], ref[:, 1])}
            limit = float(p["max_vector_angle_deg"])
            if angles["h"] <= limit:
                h_vec, source["h"] = est[:, 0], "estimated"
            else:
                source["h"] = f"reference (estimate {angles['h']:.1f}° off > {limit}°)"
            if ref_stats["dab_fraction"] < float(p["min_dab_fraction"]):
                source["dab"] = (f"reference (DAB in {ref_stats['dab_fraction']:.4f} of tissue < "
                                 f"{p['min_dab_fraction']})")
            elif angles["dab"] > limit:
                source["dab"] = f"reference (estimate {angles['dab']:.1f}° off > {limit}°)"
            else:
                dab_vec, source["dab"] = est[:, 1], "estimated"
    matrix = ref.copy()  # reference columns stay exactly skimage's; estimated ones are unit vectors
    matrix[:, 0], matrix[:, 1] = (v if src.startswith("reference") else _unit(v) for v, src in
                                  ((h_vec, source["h"]), (dab_vec, source["dab"])))
    stats = nuclear_h_intensity(*stain_concentrations(pixels, matrix), p["tissue_od"])
    cal = dict(
        matrix=matrix.tolist(), vector_source=source,
        angle_to_reference_deg={"h": _angle_deg(matrix[:, 0], ref[:, 0]), "dab": _angle_deg(matrix[:, 1], ref[:, 1])},
        macenko_angle_to_reference_deg=angles,
        nuclear_h=stats["nuclear_h"], h_otsu=stats["h_otsu"], dab_fraction=ref_stats["dab_fraction"],
        dab_median=stats["dab_median"],
        reference_nuclear_h=REFERENCE_NUCLEAR_H[p["vectors"]],
        od_scale=REFERENCE_NUCLEAR_H[p["vectors"]] / stats["nuclear_h"],
        n_tiles=len(tiles), n_pixels=int(len(pixels)), n_tissue_pixels=stats["n_tissue_pixels"],
        n_nuclear_pixels=stats["n_nuclear_pixels"], od="base-10", params=p, method="slide",
    )
    return validate_calibration(cal)


def uncalibrated() -> dict:
    """The ``method: none`` calibration: the ground truth deconvolves with fixed vectors, as scanned."""
    return dict(method="none", matrix=reference_matrix().tolist(), od_scale=1.0)


def validate_calibration(cal: dict, name: str = "ihc calibration") -> dict:
    """Raise ValueError unless ``cal`` has a finite invertible 3x3 ``matrix`` and a positive ``od_scale``."""
    if not isinstance(cal, dict) or "matrix" not in cal or "od_scale" not in cal:
        raise ValueError(f"{name}: expected a dict with 'matrix' and 'od_scale', got {cal!r:.200}")
    m = np.asarray(cal["matrix"], float)
    if m.shape != (3, 3) or not np.isfinite(m).all() or abs(np.linalg.det(m)) < 1e-6:
        raise ValueError(f"{name}: 'matrix' must be a finite invertible 3x3 (columns H, DAB, residual), "
                         f"got {m.tolist()}")
    s = float(cal["od_scale"])
    if not (np.isfinite(s) and s > 0):
        raise ValueError(f"{name}: 'od_scale' must be a positive number, got {cal['od_scale']!r}")
    return cal


def calibrated_stains(rgb: np.ndarray, cal: dict) -> tuple[np.ndarray, np.ndarray]:
    """Hematoxylin and DAB of a tile in the reference look: the slide's concentrations × ``od_scale``
    (base-10 OD, float32, ≥ 0), the drop-in for :func:`tumormap.nuclei.stain_od`."""
    h, dab = stain_concentrations(rgb, np.asarray(cal["matrix"], float))
    s = np.float32(cal["od_scale"])
    return np.clip(h * s, 0, None), np.clip(dab * s, 0, None)


def estimate_slide_ihc_calibration(slide_path, tiles, sample: str, *, n_tiles: int = 16, seed: int = 0,
                                   tile_px: int | None = None, **params) -> dict:
    """Calibration of one IHC slide from up to ``n_tiles`` kept tiles of its tile table (DataFrame).

    Uses rows with ``keep`` true; picks ``n_tiles`` at random (``seed``) and reads them with
    :class:`tumormap.slides.TileReader` at ``tile_px`` (default the table's). Extra keyword
    arguments go to :func:`estimate_ihc_calibration`. Errors name the sample and the slide.
    """
    from .slides import read_sample_tiles

    images, picked = read_sample_tiles(slide_path, tiles, "ihc", sample, n_tiles=n_tiles, seed=seed, tile_px=tile_px,
                                       what="calibrate the IHC stain of")
    try:
        cal = estimate_ihc_calibration(images, seed=seed, **params)
    except ValueError as err:
        raise ValueError(f"sample {sample} ({slide_path}): {err}") from None
    cal.update(sample=str(sample), slide=str(slide_path), tile_ids=[int(t) for t in picked["tile_id"]])
    log.info("sample %s: IHC calibration from %d tiles: nuclear H %.3f OD → scale %.3f; vectors H %s, DAB %s",
             sample, len(images), cal["nuclear_h"], cal["od_scale"], cal["vector_source"]["h"],
             cal["vector_source"]["dab"])
    return cal


CONFIG_DEFAULTS = dict(method="slide", n_tiles=16, read_px=None, seed=0)


def slide_calibration(slide_path, tiles, sample: str, cfg: dict | None = None) -> dict:
    """Config ``ground_truth.calibration`` → the calibration of one sample's IHC slide.

    ``method: slide``: :func:`estimate_slide_ihc_calibration` from ``n_tiles`` kept tiles read
    at ``read_px`` (null: the table's tile size); the other keys go to
    :func:`estimate_ihc_calibration`. ``method: none``: :func:`uncalibrated` (fixed vectors and
    OD ranges, as scanned); also, with a warning and the reason as ``fallback``, for a slide
    without kept tiles or with too little stained tissue in them to calibrate on.
    """
    cfg = {**CONFIG_DEFAULTS, **(cfg or {})}
    method = cfg.pop("method")
    if method == "none":
        return dict(uncalibrated(), sample=str(sample), slide=str(slide_path))
    if method != "slide":
        raise ValueError(f"ground_truth.calibration.method {method!r}: expected 'slide' or 'none'")
    n_tiles, read_px = int(cfg.pop("n_tiles")), cfg.pop("read_px")
    unknown = set(cfg) - set(DEFAULTS)
    if unknown:  # a typo would otherwise surface as an uncalibrated slide
        raise ValueError(f"ground_truth.calibration: unknown key(s) {sorted(unknown)}")
    kept = tiles[tiles["keep"].astype(bool)] if "keep" in tiles.columns else tiles
    try:
        if len(kept) == 0:
            raise ValueError("no kept tiles")
        return estimate_slide_ihc_calibration(slide_path, kept, sample, n_tiles=n_tiles,
                                              tile_px=None if read_px is None else int(read_px), **cfg)
    except ValueError as err:
        log.warning("sample %s: IHC not calibrated, fixed stain vectors and ranges instead: %s", sample, err)
        return dict(uncalibrated(), sample=str(sample), slide=str(slide_path), fallback=str(err))
