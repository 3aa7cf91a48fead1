"""Per-tile tumor ratio from Ki67 IHC tiles: StarDist nuclei in deconvolved stain channels.

A tile (uint8 RGB) is colour-deconvolved into hematoxylin and DAB optical density: with the
slide's calibration (``params["ihc_calibration"]``, :mod:`tumormap.ihc_stain`: the slide's own
stain vectors, both stains scaled by the slide's ``od_scale`` onto the reference look), or
without one with Ruifrok's fixed vectors as scanned (:func:`tumormap.nuclei.stain_od`). A
StarDist model finds nuclei in a channel built by :func:`tumormap.nuclei.model_input` with
the model's fixed OD ranges. Two positivity modes:

- ``mean_dab`` (default): nuclei found on hematoxylin+DAB OD (every nucleus, stained or
  not); a nucleus is positive when its mean DAB OD exceeds ``dab_threshold`` (OD, or
  ``"otsu"`` over the tile's per-nucleus means, never below ``dab_threshold_min``). With a
  calibration the threshold applies to calibrated DAB, i.e. it is relative to the slide's
  calibration: in the slide's own OD it is ``dab_threshold / od_scale``, the value the
  table's ``dab_threshold`` column records (``od_scale`` beside it; 1 without calibration).
- ``dab_segmentation``: nuclei found in the hematoxylin channel and, separately, in the
  DAB channel; nuclei found in DAB are positive (the original study's approach).

Two ratio formulas:

- ``dab_over_all`` (default): DAB-positive nuclear area / area of the union of all nuclei.
- ``dab_over_dab_plus_h``: DAB-segmented area / (DAB area + H area), as the study's code
  computed; with ``mean_dab`` the H area is that of the negative nuclei, so both agree.

Tiles where no ratio can be trusted get ``tumor_ratio`` NaN and a ``reason``: ``blank``
(little stained tissue), ``blurred`` (low Laplacian energy), ``no_nuclei``, ``too_dense``
(nuclei cover more than ``max_nuclear_fraction`` of the tile: merged, unreliable objects).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .logs import get_logger
from .ihc_stain import calibrated_stains, validate_calibration
from .nuclei import model_input, stain_od

log = get_logger("ground_truth")

FORMULAS = ("dab_over_all", "dab_over_dab_plus_h")
POSITIVITY = ("mean_dab", "dab_segmentation")
COLUMNS = ["sample", "tile_id", "n_nuclei", "n_positive", "nuclear_area_px", "positive_area_px", "h_area_px",
           "dab_area_px", "tumor_ratio", "reason", "dab_threshold", "od_scale"]
DEFAULTS = dict(
    formula="dab_over_all",
    positivity="mean_dab",
    dab_threshold=0.25,        # mean DAB OD (base 10) of a positive nucleus, or "otsu" (measured on DeepLIIF)
    dab_threshold_min=0.10,    # floor for the Otsu threshold (a tile without DAB has no positives)
    prob_thresh=None,          # StarDist thresholds; None: the model's own (optimised at training)
    nms_thresh=None,
    normalisation="fixed",     # "fixed" OD ranges (od_max) or "percentile" per tile
    od_max=None,               # {h: OD, dab: OD}; None: the model's (tumormap.nuclei.DEFAULT_OD_MAX)
    batch_size=8,
    tissue_od=0.15,            # summed RGB OD above which a pixel counts as stained tissue
    min_tissue_fraction=0.05,  # below: "blank"
    min_sharpness=None,        # Laplacian variance of the stain OD below which a tile is "blurred"; None: off
    max_nuclear_fraction=0.7,  # above: "too_dense"
    min_nuclei=1,              # below: "no_nuclei"
    ihc_calibration=None,      # the slide's IHC calibration (tumormap.ihc_stain); None: fixed vectors, as scanned
)


def _params(formula: str, positivity: str, params: dict | None) -> dict:
    p = {**DEFAULTS, **(params or {})}
    p["formula"], p["positivity"] = formula, positivity
    if formula not in FORMULAS:
        raise ValueError(f"ground_truth.formula {formula!r}: expected one of {FORMULAS}")
    if positivity not in POSITIVITY:
        raise ValueError(f"ground_truth.positivity {positivity!r}: expected one of {POSITIVITY}")
    thr = p["dab_threshold"]
    if not (thr == "otsu" or isinstance(thr, (int, float))):
        raise ValueError(f"ground_truth.dab_threshold {thr!r}: expected an OD number or 'otsu'")
    if p["ihc_calibration"] is not None:
        validate_calibration(p["ihc_calibration"])
    return p


# ---------------------------------------------------------------------------- tile checks
def tissue_fraction(rgb: np.ndarray, tissue_od: float = 0.15) -> float:
    """Fraction of pixels whose summed RGB optical density exceeds ``tissue_od``."""
    od = -np.log10(np.clip(rgb[..., :3].astype(np.float32), 1, 255) / 255.0).sum(-1)
    return float((od > tissue_od).mean())


def sharpness(stains: tuple[np.ndarray, np.ndarray]) -> float:
    """Variance of the Laplacian of hematoxylin+DAB OD (a focus measure; OD² per px⁴)."""
    from scipy import ndimage as ndi

    return float(ndi.laplace(stains[0] + stains[1]).var())


# ---------------------------------------------------------------------------- measuring
def ratio_from_areas(formula: str, positive_area: float, nuclear_area: float, dab_area: float,
                     h_area: float) -> float:
    """The tumor ratio for ``formula`` from nuclear areas (any unit); NaN where undefined."""
    if formula == "dab_over_all":
        return positive_area / nuclear_area if nuclear_area > 0 else math.nan
    if formula == "dab_over_dab_plus_h":
        return dab_area / (dab_area + h_area) if dab_area + h_area > 0 else math.nan
    raise ValueError(f"unknown formula {formula!r}")


def _otsu(values: np.ndarray) -> float:
    from skimage.filters import threshold_otsu

    return float(threshold_otsu(values)) if len(values) > 1 and np.ptp(values) > 0 else math.inf


def _measure(stains, labels_all, labels_h, labels_dab, p) -> tuple[dict, np.ndarray, np.ndarray]:
    """Counts and areas from predicted labels; returns (row, outline labels, positive flag per label)."""
    from scipy import ndimage as ndi

    if p["positivity"] == "mean_dab":
        n = int(labels_all.max())
        ids = np.arange(1, n + 1)
        means = np.asarray(ndi.mean(stains[1], labels_all, ids)) if n else np.zeros(0)
        thr = p["dab_threshold"]
        if thr == "otsu":
            thr = max(_otsu(means), float(p["dab_threshold_min"]))
        flags = np.zeros(n + 1, bool)
        flags[1:] = means > float(thr)
        thr = float(thr) if math.isfinite(thr) else math.nan
        present = np.bincount(labels_all.ravel(), minlength=n + 1) > 0
        present[0] = False
        fg = labels_all > 0
        pos_area = int(flags[labels_all].sum())
        row = dict(n_nuclei=int(present.sum()), n_positive=int((flags & present).sum()),
                   nuclear_area_px=int(fg.sum()), positive_area_px=pos_area,
                   h_area_px=int(fg.sum()) - pos_area, dab_area_px=pos_area, dab_threshold=thr)
        return row, labels_all, flags
    # dab_segmentation: DAB nuclei are positive; H nuclei mostly covered by a DAB nucleus are the same cell
    fg_h, fg_d = labels_h > 0, labels_dab > 0
    n_h, n_d = int(labels_h.max()), int(labels_dab.max())
    h_area = np.bincount(labels_h.ravel(), minlength=n_h + 1)
    h_in_dab = np.bincount(labels_h[fg_d].ravel(), minlength=n_h + 1)
    h_only = (h_area > 0) & (h_in_dab < 0.5 * h_area)
    h_only[0] = False
    n_pos = int((np.bincount(labels_dab.ravel(), minlength=n_d + 1)[1:] > 0).sum())
    # outlines: DAB nuclei (positive) over the H-only nuclei (negative), relabelled
    combined = np.where(fg_d, labels_dab, 0).astype(np.int32)
    keep_h = h_only[labels_h] & ~fg_d
    combined[keep_h] = labels_h[keep_h] + n_d
    flags = np.zeros(n_d + n_h + 1, bool)
    flags[1:n_d + 1] = True
    row = dict(n_nuclei=n_pos + int(h_only.sum()), n_positive=n_pos, nuclear_area_px=int((fg_h | fg_d).sum()),
               positive_area_px=int(fg_d.sum()), h_area_px=int(fg_h.sum()), dab_area_px=int(fg_d.sum()),
               dab_threshold=math.nan)
    return row, combined, flags


def _empty_row(reason: str, od_scale: float = 1.0) -> dict:
    return dict(n_nuclei=0, n_positive=0, nuclear_area_px=0, positive_area_px=0, h_area_px=0, dab_area_px=0,
                tumor_ratio=math.nan, reason=reason, dab_threshold=math.nan, od_scale=od_scale)


def measure_tiles(rgbs: list[np.ndarray], nm, *, mpp: float, formula: str = "dab_over_all",
                  positivity: str = "mean_dab", params: dict | None = None) -> list[tuple[dict, np.ndarray, np.ndarray]]:
    """Measure equally sized RGB tiles at ``mpp`` µm/px with nuclei model ``nm`` (one batch).

    Returns per tile (row dict without sample/tile_id, outline labels, positive flags).
    ``params["ihc_calibration"]``: the slide's IHC calibration (module docstring), or None.
    """
    from .nuclei import predict_labels, scale_percentile

    p = _params(formula, positivity, params)
    spec = nm.spec
    od_max = {**spec.get("od_max", {}), **(p["od_max"] or {})}
    norm = p["normalisation"] or spec.get("normalisation", "fixed")
    scale = float(mpp) / float(spec.get("mpp", mpp))
    cal = p["ihc_calibration"]
    cal = cal if cal is not None and cal.get("method", "slide") != "none" else None
    od_scale = float(cal["od_scale"]) if cal is not None else 1.0
    results: list = [None] * len(rgbs)
    todo, stains_of = [], {}
    for i, rgb in enumerate(rgbs):
        rgb = np.asarray(rgb)
        if tissue_fraction(rgb, p["tissue_od"]) < p["min_tissue_fraction"]:
            results[i] = (_empty_row("blank", od_scale), None, None)
            continue
        stains = calibrated_stains(rgb, cal) if cal is not None else stain_od(rgb)
        if p["min_sharpness"] is not None and sharpness(stains) < float(p["min_sharpness"]):
            results[i] = (_empty_row("blurred", od_scale), None, None)
            continue
        stains_of[i] = stains
        todo.append(i)
    if todo:
        kw = dict(scale=scale, prob_thresh=p["prob_thresh"], nms_thresh=p["nms_thresh"])

        def inputs(channel):
            if spec.get("channel") == "rgb":  # a pretrained RGB model sees the whole tile
                return [np.stack([scale_percentile(c) for c in np.moveaxis(rgbs[i][..., :3].astype(np.float32), -1, 0)],
                                 -1) for i in todo]
            return [model_input(None, channel, od_max, norm, stains=stains_of[i]) for i in todo]

        if positivity == "mean_dab":
            all_labels = predict_labels(nm, inputs("h+dab"), **kw)
            h_labels = dab_labels = [None] * len(todo)
        else:
            if spec.get("channel") == "rgb":
                raise ValueError("positivity 'dab_segmentation' needs a single-channel nuclei model; "
                                 f"{nm.source} takes RGB")
            h_labels = predict_labels(nm, inputs("h"), **kw)
            dab_labels = predict_labels(nm, inputs("dab"), **kw)
            all_labels = [None] * len(todo)
        for j, i in enumerate(todo):
            row, outline, flags = _measure(stains_of[i], all_labels[j], h_labels[j], dab_labels[j], p)
            reason = ""
            if row["n_nuclei"] < int(p["min_nuclei"]):
                reason = "no_nuclei"
            elif row["nuclear_area_px"] > float(p["max_nuclear_fraction"]) * outline.size:
                reason = "too_dense"
            ratio = math.nan if reason else ratio_from_areas(formula, row["positive_area_px"], row["nuclear_area_px"],
                                                             row["dab_area_px"], row["h_area_px"])
            # the threshold in the slide's own OD (calibrated DAB = own DAB × od_scale)
            row.update(tumor_ratio=ratio, reason=reason, dab_threshold=row["dab_threshold"] / od_scale,
                       od_scale=od_scale)
            results[i] = (row, outline, flags)
    return results


# ---------------------------------------------------------------------------- tables
def ground_truth_table(tiles: pd.DataFrame, ihc_path: str, model, *, sample: str, formula: str = "dab_over_all",
                       positivity: str = "mean_dab", params: dict | None = None, qc_path: str | None = None,
                       qc_n: int = 4, calibration: dict | None = None) -> pd.DataFrame:
    """Tumor ratio per kept tile of one sample's IHC slide (columns ``COLUMNS``).

    ``model`` is a :class:`tumormap.nuclei.NucleiModel` (from ``load_nuclei_model``).
    Rows with ``keep`` False are not read. Areas are in tile pixels (at the table's ``mpp``).
    ``calibration``: the slide's IHC calibration (:mod:`tumormap.ihc_stain`; ``method: none``
    or None: fixed stain vectors and OD ranges, as scanned), shown in the QC figure.
    """
    from .slides import TileReader

    p = _params(formula, positivity, {**(params or {}), "ihc_calibration": calibration})
    if "keep" not in tiles.columns:
        raise ValueError(f"sample {sample}: tile table has no 'keep' column (expected the ssim stage's output)")
    kept = tiles[tiles["keep"].astype(bool)]
    reader = TileReader(ihc_path, "ihc", sample)
    rows, gallery = [], []
    batch = max(1, int(p["batch_size"]))
    t0 = time.time()
    total = len(kept)
    log.info("sample %s: ground truth on %d kept tiles of %d (%s, %s)", sample, total, len(tiles), formula, positivity)
    for start in range(0, total, batch):
        chunk = kept.iloc[start:start + batch]
        rgbs = [reader.read(r) for _, r in chunk.iterrows()]
        by_mpp: dict[float, list[int]] = {}
        for k, (_, r) in enumerate(chunk.iterrows()):
            by_mpp.setdefault(float(r["mpp"]), []).append(k)
        res: list = [None] * len(rgbs)
        for mpp, idx in by_mpp.items():
            for k, out in zip(idx, measure_tiles([rgbs[k] for k in idx], model, mpp=mpp, formula=formula,
                                                 positivity=positivity, params=p)):
                res[k] = out
        for k, (_, r) in enumerate(chunk.iterrows()):
            row, outline, flags = res[k]
            rows.append(dict(sample=sample, tile_id=int(r["tile_id"]), **row))
            if qc_path and outline is not None and row["n_nuclei"] > 0:
                gallery.append((row["n_positive"], int(r["tile_id"]), rgbs[k], outline, flags, row["tumor_ratio"]))
                gallery = sorted(gallery, key=lambda g: (-g[0], g[1]))[:qc_n]
        done = min(start + batch, total)
        dt = time.time() - t0
        log.info("sample %s: %d/%d tiles, %.2f tiles/s", sample, done, total, done / dt if dt > 0 else float("nan"))
    reader.close()
    table = pd.DataFrame(rows, columns=COLUMNS)
    table = table.astype({"sample": str, "tile_id": "int64", "n_nuclei": "int64", "n_positive": "int64",
                          "nuclear_area_px": "int64", "positive_area_px": "int64", "h_area_px": "int64",
                          "dab_area_px": "int64", "tumor_ratio": "float64", "reason": str,
                          "dab_threshold": "float64", "od_scale": "float64"})
    if qc_path:
        qc_gallery(table, gallery, qc_path, sample=sample, formula=formula, positivity=positivity,
                   calibration=calibration)
    return table


def outline_overlay(rgb: np.ndarray, labels: np.ndarray, flags: np.ndarray) -> np.ndarray:
    """RGB with positive nuclei outlined red and negative nuclei outlined cyan."""
    from skimage.segmentation import find_boundaries

    out = np.array(rgb[..., :3], copy=True)
    edge = find_boundaries(labels, mode="inner")
    pos = flags[labels]
    out[edge & pos] = (255, 0, 0)
    out[edge & ~pos & (labels > 0)] = (0, 200, 255)
    return out


def calibration_note(calibration: dict | None, table: pd.DataFrame) -> str:
    """One line for the QC: the slide's calibration and the DAB threshold it chose."""
    thr = table["dab_threshold"].dropna() if len(table) else pd.Series(dtype=float)
    if len(thr) and thr.nunique() == 1:
        thr_txt = f"DAB threshold {thr.iloc[0]:.3f}"
    elif len(thr):
        thr_txt = f"DAB threshold {thr.min():.3f}–{thr.max():.3f} (per tile)"
    else:
        thr_txt = "no DAB threshold"
    if not calibration or calibration.get("method", "slide") == "none":
        return f"no stain calibration (fixed vectors, as scanned); {thr_txt} (OD)"
    src = calibration.get("vector_source", {})
    ang = calibration.get("angle_to_reference_deg", {})
    return (f"calibration: nuclear H {calibration.get('nuclear_h', float('nan')):.3f} OD "
            f"→ ×{calibration['od_scale']:.2f}; "
            f"H vector {src.get('h', '?').split(' (')[0]} ({ang.get('h', 0):.0f}° from ref), "
            f"DAB {src.get('dab', '?').split(' (')[0]} ({ang.get('dab', 0):.0f}°); {thr_txt} (slide's own OD)")


def qc_gallery(table: pd.DataFrame, gallery: list, qc_path: str, *, sample: str, formula: str,
               positivity: str, calibration: dict | None = None) -> None:
    """QC PNG: up to n tiles with outlines (red positive, cyan negative), the ratio histogram,
    and the slide's stain calibration with the DAB threshold it chose."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .io import save_figure

    n = len(gallery)
    fig, axes = plt.subplots(1, n + 1, figsize=(4 * (n + 1), 4.4), squeeze=False)
    axes = axes[0]
    for ax, (_, tile_id, rgb, outline, flags, ratio) in zip(axes, gallery):
        ax.imshow(outline_overlay(rgb, outline, flags))
        ax.set_title(f"tile {tile_id}: ratio {ratio:.2f}", fontsize=9)
        ax.axis("off")
    ax = axes[-1]
    ratios = table["tumor_ratio"].dropna() if len(table) else pd.Series(dtype=float)
    if len(ratios):
        ax.hist(ratios, bins=20, range=(0, 1), color="0.4")
        ax.set_xlabel("tumor ratio")
        ax.set_ylabel("tiles")
        reasons = table["reason"][table["reason"] != ""].value_counts()
        note = ", ".join(f"{k}: {v}" for k, v in reasons.items())
        ax.set_title(f"{len(ratios)} tiles with a ratio" + (f"\nNaN: {note}" if note else ""), fontsize=9)
    else:
        msg = "no kept tiles" if not len(table) else "no tile has a ratio"
        ax.text(0.5, 0.5, f"sample {sample}:\n{msg}", ha="center", va="center")
        ax.axis("off")
    fig.suptitle(f"{sample}: {formula}, {positivity} (red: positive, cyan: negative)\n"
                 f"{calibration_note(calibration, table)}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, qc_path, dpi=80)


def ground_truth_qc(table: pd.DataFrame, tiles: pd.DataFrame, ihc_path: str, model, *, sample: str,
                    formula: str = "dab_over_all", positivity: str = "mean_dab", params: dict | None = None,
                    qc_path: str, qc_n: int = 4, calibration: dict | None = None) -> None:
    """The QC gallery from a finished ground-truth table: its ``qc_n`` tiles with the most
    positive nuclei, segmented again (the same model, settings and calibration) to draw their outlines."""
    from .slides import TileReader

    p = _params(formula, positivity, {**(params or {}), "ihc_calibration": calibration})
    top = table[table["n_nuclei"] > 0].sort_values(["n_positive", "tile_id"], ascending=[False, True]).head(qc_n)
    chosen = tiles.set_index("tile_id").loc[top["tile_id"]].reset_index()
    reader = TileReader(ihc_path, "ihc", sample)
    gallery = []
    for _, r in chosen.iterrows():
        rgb = reader.read(r)
        row, outline, flags = measure_tiles([rgb], model, mpp=float(r["mpp"]), formula=formula, positivity=positivity,
                                            params=p)[0]
        if outline is not None:
            gallery.append((row["n_positive"], int(r["tile_id"]), rgb, outline, flags, row["tumor_ratio"]))
    reader.close()
    qc_gallery(table, gallery, qc_path, sample=sample, formula=formula, positivity=positivity,
               calibration=calibration)


# ---------------------------------------------------------------------------- real-data validation
def read_deepliif(path: str | Path, align: bool = True, max_shift: int = 20) -> dict:
    """A DeepLIIF training PNG (six 512² panels: IHC, hematoxylin, DAPI, Lap2, Ki67, mask).

    Returns the IHC and hematoxylin panels and the mask's truth: positive (red) and
    negative (blue) nucleus masks, counts (connected components ≥ 30 px) and the positive
    fraction by count and by area. The mask (drawn on the immunofluorescence) is offset
    from the IHC by a few pixels; ``align`` shifts it by the integer offset (≤
    ``max_shift`` px) that best overlaps stained pixels (H+DAB OD > 0.3), as ``shift``.
    """
    from PIL import Image
    from scipy import ndimage as ndi

    path = Path(path)
    im = np.asarray(Image.open(path).convert("RGB"))
    if im.shape[1] != 6 * im.shape[0]:
        raise ValueError(f"{path}: expected six square panels side by side, got {im.shape[1]}×{im.shape[0]}")
    s = im.shape[0]
    mask = im[:, 5 * s:].astype(int)
    red = (mask[..., 0] > 200) & (mask[..., 1] < 50) & (mask[..., 2] < 50)
    blue = (mask[..., 2] > 200) & (mask[..., 0] < 50) & (mask[..., 1] < 50)

    def count(m):
        lab, _ = ndi.label(m)
        return int((np.bincount(lab.ravel())[1:] >= 30).sum())

    n_pos, n_neg = count(red), count(blue)
    area_fraction = float(red.sum() / max(red.sum() + blue.sum(), 1))
    shift = (0, 0)
    if align:
        h, dab = stain_od(im[:, :s])
        stained = (h + dab) > 0.3
        fg = red | blue
        c = slice(max_shift, s - max_shift)
        _, dy, dx = max((int((np.roll(fg, (dy, dx), (0, 1)) & stained)[c, c].sum()), dy, dx)
                        for dy in range(-max_shift, max_shift + 1) for dx in range(-max_shift, max_shift + 1))
        shift = (dy, dx)
        red, blue = (ndi.shift(m, shift, order=0, cval=0) for m in (red, blue))
    return dict(ihc=im[:, :s], hematoxylin=im[:, s:2 * s], positive=red, negative=blue, n_positive=n_pos,
                n_negative=n_neg, count_fraction=n_pos / max(n_pos + n_neg, 1),
                area_fraction=area_fraction, shift=shift)
