"""StarDist nuclei: the model's input channel, training, loading, batched prediction, scoring.

Every model input is one stain channel made by :func:`model_input` from an RGB tile:
colour deconvolution (``skimage.color.rgb2hed``) gives per-pixel optical density (OD,
base 10) of hematoxylin and DAB; a channel (``h``, ``dab`` or ``h+dab``) is scaled to
[0, 1] by a FIXED OD range (``od_max``), not by per-image percentiles: percentile
scaling stretches a tile without DAB until its noise looks like nuclei (measured in
tests/test_ground_truth.py). Nuclei are bright on a dark background, as in fluorescence.

A model folder written by :func:`train_nuclei_model` carries ``tumormap_input.json``
(channel, OD ranges, µm/px it was trained at), so the ground-truth step feeds it exactly
what it was trained on. This module imports TensorFlow (through StarDist) lazily.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from .logs import get_logger

# TensorFlow (imported lazily below) logs its C++ start-up chatter unless told otherwise.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

log = get_logger("nuclei")

INPUT_SPEC_FILE = "tumormap_input.json"
CHANNELS = ("h", "dab", "h+dab")
# OD (base 10) mapped to 1.0 for IHC tiles, measured on real Ki67 IHC (DeepLIIF Bladder1,
# Lung1): negative nuclei have median hematoxylin OD 0.31-0.34, positive nuclei median DAB
# OD 0.3-0.5 (p99 1.1-1.9). h 0.45 gave the best ratio there (0.6: Bladder1 +0.10 error).
DEFAULT_OD_MAX = {"h": 0.45, "dab": 1.0}
# H&E hematoxylin is ~2.5× darker than an IHC counterstain (GBM40 nuclei: median H OD
# 0.85; DeepLIIF Ki67 negatives: 0.34), so H&E training fields get their own fixed range.
HE_OD_MAX_H = 1.5
DEFAULT_TRAIN = dict(epochs=40, steps_per_epoch=50, patch_px=128, n_rays=32, grid=2, unet_n_depth=3,
                     unet_n_filter_base=16, batch_size=4, learning_rate=3e-4, val_fraction=0.15, seed=0,
                     mpp=0.5, channel="h+dab", augment="none", augment_copies=4, calibrate=True)
AUGMENT = ("none", "scanner")
GBM40_MPP = 0.25  # assumed: 40× fields; nuclei median 539 px² ≈ 6.5 µm diameter, as DeepLIIF's 40× fields


# ---------------------------------------------------------------------------- channels
def stain_od(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hematoxylin and DAB optical density (base 10, ≥ 0, float32) of a uint8 RGB image."""
    from skimage.color import rgb2hed

    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] < 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {rgb.shape}")
    # rgb2hed returns OD / ln(1e6) (natural log, clipped at 1e-6 transmission): ×6 → base-10 OD
    hed = rgb2hed(rgb[..., :3]).astype(np.float32) * np.float32(np.log(1e6) / np.log(10))
    return np.clip(hed[..., 0], 0, None), np.clip(hed[..., 2], 0, None)


def scale_od(od: np.ndarray, od_max: float) -> np.ndarray:
    """OD → [0, 1] by a fixed range (0 → 0, ``od_max`` → 1, clipped)."""
    return np.clip(od / np.float32(od_max), 0, 1).astype(np.float32)


def scale_percentile(x: np.ndarray, lo: float = 1.0, hi: float = 99.8) -> np.ndarray:
    """Per-image percentile scaling (StarDist's usual normalisation), clipped to [0, 1]."""
    a, b = np.percentile(x, [lo, hi])
    return np.clip((x - a) / max(float(b - a), 1e-6), 0, 1).astype(np.float32)


def model_input(rgb: np.ndarray, channel: str, od_max: dict | None = None, normalisation: str = "fixed",
                stains: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """The single-channel [0, 1] float32 image a nuclei model sees for ``channel``.

    ``h``: hematoxylin OD; ``dab``: DAB OD; ``h+dab``: both added (all nuclei of an
    IHC slide, positive or not) on the hematoxylin range. ``normalisation`` is
    ``fixed`` (``od_max`` per stain) or ``percentile`` (1-99.8 % per image).
    ``stains`` reuses precomputed :func:`stain_od` output.
    """
    if channel not in CHANNELS:
        raise ValueError(f"unknown nuclei channel {channel!r}; expected one of {CHANNELS}")
    od_max = {**DEFAULT_OD_MAX, **(od_max or {})}
    h, dab = stains if stains is not None else stain_od(rgb)
    od, rng = {"h": (h, od_max["h"]), "dab": (dab, od_max["dab"]), "h+dab": (h + dab, od_max["h"])}[channel]
    if normalisation == "fixed":
        return scale_od(od, rng)
    if normalisation == "percentile":
        return scale_percentile(od)
    raise ValueError(f"unknown normalisation {normalisation!r}; expected 'fixed' or 'percentile'")


# ---------------------------------------------------------------------------- annotated data
def _polygon_mask(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    from skimage.draw import polygon

    rr, cc = polygon(points[:, 1], points[:, 0], shape)
    mask = np.zeros(shape, bool)
    mask[rr, cc] = True
    return mask


def parse_gbm40_xml(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """Label image (int32, 0 = background) from one GBM40 contour file.

    Shapes are ``Polygon``/``SmoothPolygon`` (``Data/Points/Point X= Y=`` in image px) or
    ``Oval`` (``Data/Extent X Y Width Height``). Where contours overlap, the later one wins.
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise ValueError(f"{path}: not a readable contour XML ({exc})") from exc
    labels = np.zeros(shape, np.int32)
    n = 0
    for shape_el in root.iter("Shape"):
        kind = shape_el.get("Type", "")
        data = shape_el.find("Data")
        if data is None:
            continue
        if kind in ("Polygon", "SmoothPolygon"):
            pts = np.array([[float(p.get("X")), float(p.get("Y"))] for p in data.iter("Point")])
            if len(pts) < 3:
                continue
            mask = _polygon_mask(pts, shape)
        elif kind == "Oval":
            ext = data.find("Extent")
            x, y, w, h = (float(ext.get(k)) for k in ("X", "Y", "Width", "Height"))
            yy, xx = np.mgrid[:shape[0], :shape[1]]
            mask = ((xx + 0.5 - x - w / 2) / (w / 2)) ** 2 + ((yy + 0.5 - y - h / 2) / (h / 2)) ** 2 <= 1
        else:
            log.warning("%s: skipping shape of unknown type %r", path, kind)
            continue
        if mask.any():
            n += 1
            labels[mask] = n
    if n == 0:
        raise ValueError(f"{path}: no nucleus contours found")
    return labels


def load_gbm40(directory: str | Path) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """GBM40 fields: (RGB uint8 images, int32 label images, names) from ``images/NN.png``
    and ``contours/NN_data.xml``."""
    from PIL import Image

    directory = Path(directory)
    files = sorted((directory / "images").glob("*.png"))
    if not files:
        raise FileNotFoundError(f"{directory}: no images/*.png")
    images, labels, names = [], [], []
    for f in files:
        xml = directory / "contours" / f"{f.stem}_data.xml"
        if not xml.exists():
            raise FileNotFoundError(f"{xml}: missing contours for {f}")
        img = np.asarray(Image.open(f).convert("RGB"))
        images.append(img)
        labels.append(parse_gbm40_xml(xml, img.shape[:2]))
        names.append(f.stem)
    return images, labels, names


def load_training_npz(path: str | Path, od_max: dict | None = None, *, augment: str = "none",
                      augment_copies: int = 4, seed: int = 0, calibrate: bool = False,
                      augment_params: dict | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Synthetic IHC patches (``images``, ``labels``, ``positive``) → model training pairs.

    Each patch gives two pairs: the ``h+dab`` channel with all its nuclei, and the ``dab``
    channel with its DAB-positive nuclei only — the two inputs the ground-truth step feeds.
    ``augment="scanner"`` adds ``augment_copies`` simulated-scanner copies of each patch
    (:func:`scanner_copies`). ``calibrate``: the patches are one slide, calibrated as the ground
    truth calibrates a slide (:mod:`tumormap.ihc_stain`, from the unchanged patches), so the
    model learns the look the ground truth feeds it.
    """
    path = Path(path)
    try:
        data = np.load(path, allow_pickle=False)
        images, labels, positive = data["images"], data["labels"], data["positive"]
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"{path}: not a nucleus training npz with images/labels/positive ({exc})") from exc
    if images.ndim != 4 or images.shape[-1] != 3 or labels.shape != images.shape[:3]:
        raise ValueError(f"{path}: images {images.shape} and labels {labels.shape} do not match (N,H,W,3)/(N,H,W)")
    from .augment import HDAB_MATRIX
    from .ihc_stain import calibrated_stains, estimate_ihc_calibration

    cal = estimate_ihc_calibration(list(images)) if calibrate else None
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for i in range(len(images)):
        lab = labels[i].astype(np.int32)
        pos_ids = _positive_ids(positive, i, lab)
        for rgb in scanner_copies(images[i], augment, augment_copies, rng, HDAB_MATRIX, augment_params):
            stains = calibrated_stains(rgb, cal) if cal is not None else stain_od(rgb)
            xs.append(model_input(None, "h+dab", od_max, stains=stains))
            ys.append(lab)
            if len(pos_ids):
                xs.append(model_input(None, "dab", od_max, stains=stains))
                ys.append(np.where(np.isin(lab, pos_ids), lab, 0).astype(np.int32))
    return xs, ys


def scanner_copies(rgb: np.ndarray, augment: str, copies: int, rng: np.random.Generator,
                   matrix: np.ndarray, params: dict | None = None) -> list[np.ndarray]:
    """The RGB image, plus (``augment="scanner"``) ``copies`` random scanner/staining changes of
    it (:func:`tumormap.augment.random_scanner_change`: OD scale, stain vectors, blur, JPEG),
    unmixed with stain ``matrix``, ranges ``params`` over ``tumormap.augment.DEFAULT_AUGMENT``.
    Made before the stain channel, so each copy is deconvolved as a real scan would be; the
    per-patch intensity jitter of training comes on top."""
    if augment not in AUGMENT:
        raise ValueError(f"ground_truth.nuclei_model.augment {augment!r}: expected one of {AUGMENT}")
    if augment == "none":
        return [rgb]
    from .augment import random_scanner_change

    return [rgb] + [random_scanner_change(rgb, rng, matrix, params) for _ in range(int(copies))]


def _positive_ids(positive: np.ndarray, i: int, lab: np.ndarray) -> np.ndarray:
    """Label ids flagged positive in patch ``i``: ``positive`` is (N, max_label+1) flags
    indexed by label id, or a per-pixel (N, H, W) mask."""
    if positive.ndim == 3:
        ids = np.unique(lab[positive[i].astype(bool)])
    else:
        flags = np.asarray(positive[i]).astype(bool)
        ids = np.flatnonzero(flags)
    return ids[ids > 0]


def fluo_example() -> tuple[np.ndarray, np.ndarray]:
    """StarDist's shipped fluorescence field (183 labelled nuclei), scaled to [0, 1]."""
    from stardist.data import test_image_nuclei_2d

    img, mask = test_image_nuclei_2d(return_mask=True)
    return scale_percentile(img.astype(np.float32)), mask.astype(np.int32)


def rescale_pair(x: np.ndarray, y: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """Resize an image (linear) and its labels (nearest) by ``factor``."""
    if abs(factor - 1) < 1e-6:
        return x, y
    from skimage.transform import rescale

    xs = rescale(x, factor, order=1, preserve_range=True, anti_aliasing=factor < 1).astype(np.float32)
    ys = rescale(y, factor, order=0, preserve_range=True, anti_aliasing=False).astype(np.int32)
    return xs, ys


def training_set(train_data: str, *, npz_paths: list[str] | None = None, params: dict | None = None) -> dict:
    """Training and validation pairs at the model's µm/px for ``train_data``:

    ``synthetic``: the demo npz files (``h+dab`` with all nuclei, ``dab`` with positives),
    each calibrated as one slide when ``calibrate``; a ``val_fraction`` is held out (with
    ``augment``, copies of one patch may fall on both sides). ``gbm40``: the GBM40 H&E fields (hematoxylin OD on
    ``HE_OD_MAX_H``) resized from ``GBM40_MPP`` to ``mpp``, plus StarDist's fluorescence field;
    fields named in ``val_fields`` pick thresholds, ``test_fields`` are held out from both.
    Returns dict(x, y, val_x, val_y, test_x, test_y, info).
    """
    p = {**DEFAULT_TRAIN, **(params or {})}
    mpp = float(p["mpp"])
    if train_data == "synthetic":
        if not npz_paths:
            raise ValueError("train_data 'synthetic' needs at least one training npz")
        xs, ys = [], []
        for path in npz_paths:
            x, y = load_training_npz(path, p.get("od_max"), augment=str(p["augment"]),
                                     augment_copies=int(p["augment_copies"]), seed=int(p["seed"]),
                                     calibrate=bool(p["calibrate"]), augment_params=p.get("augment_params"))
            xs, ys = xs + x, ys + y
        rng = np.random.default_rng(int(p["seed"]))
        order = rng.permutation(len(xs))
        n_val = max(1, int(round(len(xs) * float(p["val_fraction"]))))
        val, tr = order[:n_val], order[n_val:]
        return dict(x=[xs[i] for i in tr], y=[ys[i] for i in tr], val_x=[xs[i] for i in val],
                    val_y=[ys[i] for i in val], test_x=[], test_y=[], info=dict(train_data="synthetic",
                    npz=[str(q) for q in npz_paths], n_pairs=len(xs), augment=str(p["augment"]),
                    calibrated=bool(p["calibrate"])))
    if train_data == "gbm40":
        directory = Path(p.get("gbm40_dir") or "")
        if not (directory / "images").is_dir():
            raise FileNotFoundError(f"train_data 'gbm40': {directory}/images not found; set "
                                    "ground_truth.nuclei_model.gbm40_dir")
        val_fields = [str(f) for f in p.get("val_fields", ["09", "10"])]
        test_fields = [str(f) for f in p.get("test_fields", ["11", "12"])]
        from .augment import HED_MATRIX

        imgs, labs, names = load_gbm40(directory)
        rng = np.random.default_rng(int(p["seed"]))
        out = dict(x=[], y=[], val_x=[], val_y=[], test_x=[], test_y=[])
        for img, lab, name in zip(imgs, labs, names):
            key = "test_" if name in test_fields else "val_" if name in val_fields else ""
            # only training fields are augmented: thresholds and scores come from the fields as scanned
            copies = scanner_copies(img, str(p["augment"]) if not key else "none", int(p["augment_copies"]), rng,
                                    HED_MATRIX, p.get("augment_params"))
            for rgb in copies:
                h, _ = stain_od(rgb)
                x, y = rescale_pair(scale_od(h, HE_OD_MAX_H), lab, GBM40_MPP / mpp)
                out[key + "x"].append(x)
                out[key + "y"].append(y)
        if p.get("with_fluo", True):
            fx, fy = fluo_example()
            out["x"].append(fx)
            out["y"].append(fy)
        out["info"] = dict(train_data="gbm40", gbm40_dir=str(directory), val_fields=val_fields,
                           test_fields=test_fields, gbm40_mpp=GBM40_MPP, he_od_max_h=HE_OD_MAX_H,
                           with_fluo=bool(p.get("with_fluo", True)), augment=str(p["augment"]),
                           augment_copies=int(p["augment_copies"]) if p["augment"] != "none" else 0,
                           augment_params=p.get("augment_params"))
        return out
    raise ValueError(f"unknown train_data {train_data!r}; expected 'synthetic' or 'gbm40'")


# ---------------------------------------------------------------------------- scoring
def detection_f1(pred_labels: np.ndarray, true_labels: np.ndarray, iou: float = 0.5) -> dict:
    """Object-level detection scores (StarDist ``matching``): f1, precision, recall, tp, fp, fn."""
    from stardist.matching import matching

    m = matching(np.asarray(true_labels), np.asarray(pred_labels), thresh=iou)
    return dict(f1=float(m.f1), precision=float(m.precision), recall=float(m.recall), tp=int(m.tp),
                fp=int(m.fp), fn=int(m.fn), mean_matched_iou=float(m.mean_matched_score), iou=iou)


def pooled_f1(preds: list[np.ndarray], trues: list[np.ndarray], iou: float = 0.5) -> dict:
    """Detection scores pooled over several fields (counts summed, then F1)."""
    tp = fp = fn = 0
    for p, t in zip(preds, trues):
        s = detection_f1(p, t, iou)
        tp, fp, fn = tp + s["tp"], fp + s["fp"], fn + s["fn"]
    prec = tp / max(tp + fp, 1)
    rec = tp / max(tp + fn, 1)
    return dict(f1=2 * tp / max(2 * tp + fp + fn, 1), precision=prec, recall=rec, tp=tp, fp=fp, fn=fn, iou=iou)


# ---------------------------------------------------------------------------- training
def _augmenter(rng: np.random.Generator):
    def augment(x, y):
        k = int(rng.integers(4))
        x, y = np.rot90(x, k), np.rot90(y, k)
        if rng.random() < 0.5:
            x, y = x[:, ::-1], y[:, ::-1]
        # stain intensity varies between slides: scale and shift, then a little noise
        x = x * rng.uniform(0.6, 1.4) + rng.uniform(-0.05, 0.05)
        x = x + rng.normal(0, 0.02, x.shape)
        return np.clip(x, 0, 1).astype(np.float32), np.ascontiguousarray(y)
    return augment


def _fit_patch(xs, ys, patch_px: int):
    """Pad images smaller than the training patch with background (0 image, 0 label)."""
    out_x, out_y = [], []
    for x, y in zip(xs, ys):
        ph, pw = max(0, patch_px - x.shape[0]), max(0, patch_px - x.shape[1])
        if ph or pw:
            x = np.pad(x, ((0, ph), (0, pw)))
            y = np.pad(y, ((0, ph), (0, pw)))
        out_x.append(x.astype(np.float32))
        out_y.append(y.astype(np.int32))
    return out_x, out_y


def train_nuclei_model(out_dir: str | Path, *, images: list[np.ndarray], labels: list[np.ndarray],
                       params: dict, val_images: list[np.ndarray] | None = None,
                       val_labels: list[np.ndarray] | None = None, test_images: list[np.ndarray] | None = None,
                       test_labels: list[np.ndarray] | None = None) -> dict:
    """Train a small StarDist2D on single-channel [0, 1] images (from :func:`model_input`).

    ``params`` (defaults in ``DEFAULT_TRAIN``): epochs, steps_per_epoch, patch_px, n_rays,
    grid, unet_n_depth, unet_n_filter_base, batch_size, learning_rate, val_fraction, seed,
    and the input spec recorded with the model: channel, mpp (µm/px of the training
    images), od_max. Without ``val_*`` a ``val_fraction`` of the images is held out.
    The model folder (config.json, weights_best.h5, thresholds.json, tumormap_input.json)
    is built beside ``out_dir`` and renamed onto it. Returns metrics: detection F1 at IoU
    0.5 on the validation images (which also pick the thresholds) and on ``test_*``
    images held out from both, thresholds, counts, seconds.
    """
    p = {**DEFAULT_TRAIN, **(params or {})}
    if len(images) != len(labels) or not images:
        raise ValueError(f"need equally many images and label images, got {len(images)} and {len(labels)}")
    for i, (x, y) in enumerate(zip(images, labels)):
        if x.ndim != 2 or x.shape != y.shape:
            raise ValueError(f"training pair {i}: image {x.shape} and labels {y.shape} must be equal 2-D shapes")
    t0 = time.time()
    rng = np.random.default_rng(int(p["seed"]))
    images, labels = _fit_patch(images, labels, int(p["patch_px"]))
    if val_images is None:
        order = rng.permutation(len(images))
        n_val = max(1, int(round(len(images) * float(p["val_fraction"])))) if len(images) > 1 else 0
        val_idx, tr_idx = order[:n_val], order[n_val:]
        val_images = [images[i] for i in val_idx] or images[:1]
        val_labels = [labels[i] for i in val_idx] or labels[:1]
        images, labels = [images[i] for i in tr_idx], [labels[i] for i in tr_idx]
    else:
        val_images, val_labels = _fit_patch(val_images, val_labels, int(p["patch_px"]))

    from stardist.models import Config2D, StarDist2D

    grid = (int(p["grid"]),) * 2
    conf = Config2D(n_rays=int(p["n_rays"]), grid=grid, n_channel_in=1,
                    train_patch_size=(int(p["patch_px"]),) * 2, train_batch_size=int(p["batch_size"]),
                    unet_n_depth=int(p["unet_n_depth"]), unet_n_filter_base=int(p["unet_n_filter_base"]),
                    net_conv_after_unet=4 * int(p["unet_n_filter_base"]),
                    train_epochs=int(p["epochs"]), train_steps_per_epoch=int(p["steps_per_epoch"]),
                    train_learning_rate=float(p["learning_rate"]), train_tensorboard=False)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model = StarDist2D(conf, name=tmp.name, basedir=str(tmp.parent))
        log.info("training StarDist2D on %d images (%d validation), %d epochs × %d steps, patch %d px",
                 len(images), len(val_images), conf.train_epochs, conf.train_steps_per_epoch, p["patch_px"])
        hist = model.train(images, labels, validation_data=(val_images, val_labels),
                           augmenter=_augmenter(rng), seed=int(p["seed"]))
        model.optimize_thresholds(val_images, val_labels)
        preds = [model.predict_instances(x, verbose=False)[0] for x in val_images]
        scores = pooled_f1(preds, val_labels, 0.5)
        spec = dict(channel=p["channel"], mpp=float(p["mpp"]), od_max={**DEFAULT_OD_MAX, **(p.get("od_max") or {})},
                    normalisation="fixed")
        if test_images:
            test_preds = [model.predict_instances(x, verbose=False)[0] for x in test_images]
            t = pooled_f1(test_preds, test_labels, 0.5)
            metrics_test = dict(test_f1_iou50=t["f1"], test_precision=t["precision"], test_recall=t["recall"],
                                test_tp=t["tp"], test_fp=t["fp"], test_fn=t["fn"], n_test_images=len(test_images))
        else:
            metrics_test = {}
        (tmp / INPUT_SPEC_FILE).write_text(json.dumps(spec, indent=2) + "\n")
        metrics = dict(val_f1_iou50=scores["f1"], val_precision=scores["precision"], val_recall=scores["recall"],
                       val_tp=scores["tp"], val_fp=scores["fp"], val_fn=scores["fn"],
                       n_train_images=len(images), n_val_images=len(val_images),
                       n_train_nuclei=int(sum(len(np.unique(y)) - 1 for y in labels)),
                       prob_thresh=float(model.thresholds.prob), nms_thresh=float(model.thresholds.nms),
                       final_loss=float(hist.history["loss"][-1]), final_val_loss=float(hist.history["val_loss"][-1]),
                       seconds=round(time.time() - t0, 1), input_spec=spec, params=p, **metrics_test)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("nuclei model written to %s: validation F1@0.5 %.3f (%.0f s)", out_dir, metrics["val_f1_iou50"],
             metrics["seconds"])
    return metrics


def train_from_config(out_dir: str | Path, cfg: dict, npz_paths: list[str] | None = None) -> dict:
    """Build the training set named by ``cfg['train_data']`` and train; returns metrics."""
    cfg = dict(cfg or {})
    data = training_set(str(cfg.get("train_data", "synthetic")), npz_paths=npz_paths, params=cfg)
    metrics = train_nuclei_model(out_dir, images=data["x"], labels=data["y"], params=cfg,
                                 val_images=data["val_x"], val_labels=data["val_y"],
                                 test_images=data["test_x"] or None, test_labels=data["test_y"] or None)
    metrics["data"] = data["info"]
    return metrics


# ---------------------------------------------------------------------------- loading and prediction
class NucleiModel:
    """A StarDist2D model plus the input spec it was trained with."""

    def __init__(self, model, spec: dict, source: str):
        self.model = model
        self.spec = spec
        self.source = source

    @property
    def n_channel_in(self) -> int:
        return int(self.model.config.n_channel_in)

    def __repr__(self) -> str:
        return f"NucleiModel({self.source!r}, {self.spec})"


def load_nuclei_model(spec: str | Path) -> NucleiModel:
    """A local model folder (from :func:`train_nuclei_model` or any StarDist2D folder) or a
    pretrained StarDist name such as ``2D_versatile_he``."""
    from stardist.models import StarDist2D

    path = Path(spec)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path}: not a StarDist model folder (no config.json)")
        model = StarDist2D(None, name=path.name, basedir=str(path.parent))
        spec_file = path / INPUT_SPEC_FILE
        if spec_file.exists():
            input_spec = json.loads(spec_file.read_text())
        else:  # a foreign single-channel model: assume hematoxylin, percentile-normalised
            input_spec = dict(channel="h", mpp=0.5, od_max=dict(DEFAULT_OD_MAX), normalisation="percentile")
        return NucleiModel(model, input_spec, str(path))
    name = str(spec)
    try:
        model = StarDist2D.from_pretrained(name)
    except Exception as exc:  # noqa: BLE001 - network errors come in many types
        model, err = None, exc
    else:
        err = None
    if model is None:
        raise RuntimeError(
            f"nuclei model {name!r}: not a model folder, and the pretrained StarDist model could not be "
            f"loaded ({type(err).__name__ if err else 'unknown name'}: {err}). Pretrained weights need the "
            "internet once: on a host that has it (e.g. the submit host) run\n"
            f"  python -c \"from stardist.models import StarDist2D; StarDist2D.from_pretrained('{name}')\"\n"
            "which caches them under ~/.keras/models, or set ground_truth.nuclei_model.source: train")
    rgb = int(model.config.n_channel_in) == 3
    input_spec = dict(channel="rgb" if rgb else "h", mpp=0.5, od_max=dict(DEFAULT_OD_MAX), normalisation="percentile")
    return NucleiModel(model, input_spec, name)


def predict_labels(nm: NucleiModel, inputs: list[np.ndarray], *, scale: float = 1.0,
                   prob_thresh: float | None = None, nms_thresh: float | None = None) -> list[np.ndarray]:
    """Instance labels (int32, input size) for equally shaped model inputs, in one network
    batch. ``scale`` resizes inputs for the network (model µm/px ↔ tile µm/px) and labels back."""
    if not inputs:
        return []
    from scipy import ndimage as ndi

    model = nm.model
    shape = inputs[0].shape[:2]
    x = np.stack([np.atleast_3d(i) if i.ndim == 2 else i for i in inputs]).astype(np.float32)
    if abs(scale - 1) > 1e-6:
        x = ndi.zoom(x, (1, scale, scale, 1), order=1)
    div = max(model._axes_div_by("YX"))
    h, w = x.shape[1:3]
    ph, pw = (-h) % div, (-w) % div
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)))
    prob, dist = model.keras_model.predict(x, verbose=0)[:2]
    g = tuple(model.config.grid)
    hh, ww = -(-h // g[0]), -(-w // g[1])
    out = []
    for i in range(len(inputs)):
        labels, _ = model._instances_from_prediction(
            shape, prob[i, :hh, :ww, 0], dist[i, :hh, :ww], prob_thresh=prob_thresh, nms_thresh=nms_thresh,
            scale=None if abs(scale - 1) <= 1e-6 else dict(X=scale, Y=scale))
        out.append(labels.astype(np.int32))
    return out


def set_tensorflow_threads(threads: int) -> None:
    """Run TensorFlow on the job's ``threads`` CPU threads (call before loading a model)."""
    threads = max(1, int(threads))
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
    log.info("TensorFlow on %d CPU thread(s)", threads)


# ---------------------------------------------------------------------------- H&E nuclei
HE_NUCLEI_COLUMNS = ["sample", "tile_id", "x", "y", "area_px"]


def he_nuclei_table(tiles, he_path: str | Path, nm: NucleiModel, *, sample: str, batch_size: int = 8,
                    od_max_h: float = HE_OD_MAX_H, progress_every: int = 50):
    """Nuclei of a slide's tissue tiles on the H&E: the nuclei model on the hematoxylin OD
    (colour deconvolution, scaled to [0, 1] by ``od_max_h``, H&E's own fixed range).

    One row per nucleus: ``sample, tile_id``, centroid ``x, y`` and ``area_px`` in the tile's
    pixels at the tile table's resolution (``tile_px`` at ``mpp``). A table, not a file per tile.
    """
    import pandas as pd
    from scipy import ndimage as ndi

    from .slides import TileReader

    tissue = tiles[tiles["tissue_keep"].astype(bool)] if "tissue_keep" in tiles else tiles
    rows = []
    if len(tissue) == 0:
        return pd.DataFrame({c: pd.Series(dtype="float64" if c in ("x", "y") else "int64") for c in HE_NUCLEI_COLUMNS}
                            ).astype({"sample": object})
    mpp = float(tissue["mpp"].iloc[0])
    scale = mpp / float(nm.spec.get("mpp", mpp))
    reader = TileReader(he_path, "he", sample)
    t0 = time.time()
    records = tissue.to_dict("records")
    try:
        for start in range(0, len(records), batch_size):
            batch = records[start:start + batch_size]
            inputs = [scale_od(stain_od(reader.read(r))[0], od_max_h) for r in batch]
            for r, labels in zip(batch, predict_labels(nm, inputs, scale=scale)):
                n = int(labels.max())
                if n == 0:
                    continue
                ids = np.arange(1, n + 1)
                area = np.bincount(labels.ravel(), minlength=n + 1)[1:]
                centres = np.asarray(ndi.center_of_mass(np.ones_like(labels), labels, ids), float).reshape(-1, 2)
                for (cy, cx), a in zip(centres, area):
                    if a > 0:  # centre of mass of pixel centres → continuous coordinates (+0.5)
                        rows.append((sample, int(r["tile_id"]), cx + 0.5, cy + 0.5, int(a)))
            done = min(start + batch_size, len(records))
            if done == len(records) or done // progress_every != (done - len(batch)) // progress_every:
                log.info("%s: H&E nuclei in %d/%d tiles (%d nuclei, %.0f s)", sample, done, len(records), len(rows),
                         time.time() - t0)
    finally:
        reader.close()
    return pd.DataFrame(rows, columns=HE_NUCLEI_COLUMNS).astype({"x": "float64", "y": "float64", "area_px": "int64",
                                                                 "tile_id": "int64"})
