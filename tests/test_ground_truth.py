"""Ground truth: ratio formulas on known answers, tile edge cases, the tile table, real Ki67 fields."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import shared_data
from tumormap import ground_truth as gt
from tumormap.nuclei import load_nuclei_model

MODEL_DIR = Path(__file__).resolve().parent / "data" / "nuclei_model_gbm40"


@pytest.fixture(scope="module")
def model():
    return load_nuclei_model(str(MODEL_DIR))


def paint_ihc(size=256, n=(6, 6), positive_every=4, radius=7, seed=0):
    """Synthetic IHC at 0.5 µm/px: a grid of disc nuclei (H OD 0.45; every ``positive_every``-th
    also DAB OD 0.7) on pale counterstained tissue. Returns RGB, labels and positive ids."""
    from skimage.color import hed2rgb

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((size, size), np.int32)
    positive = []
    step = size // (n[0] + 1)
    k = 0
    for i in range(n[0]):
        for j in range(n[1]):
            k += 1
            cy, cx = step * (i + 1) + rng.integers(-3, 4), step * (j + 1) + rng.integers(-3, 4)
            r = radius + rng.integers(-1, 2)
            labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
            if k % positive_every == 0:
                positive.append(k)
    od = np.zeros((size, size, 3))
    od[..., 0] = 0.06 + rng.normal(0, 0.01, (size, size))  # counterstained background
    od[..., 1] = 0.05
    od[labels > 0, 0] = 0.45
    pos = np.isin(labels, positive)
    od[pos, 0] = 0.3
    od[pos, 2] = 0.7
    rgb = (hed2rgb(np.clip(od, 0, None) / 6) * 255).round().astype(np.uint8)
    return rgb, labels, positive


# ---------------------------------------------------------------------------- formulas (no model)
def test_ratio_formulas_on_hand_made_labels():
    """4 nuclei of 100 px, one DAB-positive: mean_dab gives 100/400 by both formulas;
    dab_segmentation with a DAB object overlapping half an H nucleus gives the study's
    double-counting denominator."""
    labels = np.zeros((40, 40), np.int32)
    for k, (y, x) in enumerate([(0, 0), (0, 20), (20, 0), (20, 20)], start=1):
        labels[y:y + 10, x:x + 10] = k
    dab = np.zeros((40, 40), np.float32)
    dab[labels == 4] = 0.5
    p = gt._params("dab_over_all", "mean_dab", None)
    row, _, flags = gt._measure((None, dab), labels, None, None, p)
    assert (row["n_nuclei"], row["n_positive"], row["nuclear_area_px"], row["positive_area_px"]) == (4, 1, 400, 100)
    assert flags.tolist() == [False, False, False, False, True]
    for formula in gt.FORMULAS:
        assert gt.ratio_from_areas(formula, row["positive_area_px"], row["nuclear_area_px"], row["dab_area_px"],
                                   row["h_area_px"]) == pytest.approx(0.25)
    # dab_segmentation: H finds nuclei 1-3 (300 px); DAB finds nucleus 4 plus half of nucleus 3 (150 px)
    h_lab = np.where(labels < 4, labels, 0)
    d_lab = np.zeros_like(labels)
    d_lab[labels == 4] = 1
    d_lab[20:30, 0:5] = 2
    p = gt._params("dab_over_all", "dab_segmentation", None)
    row, outline, flags = gt._measure((None, dab), None, h_lab, d_lab, p)
    assert (row["h_area_px"], row["dab_area_px"], row["nuclear_area_px"]) == (300, 150, 400)
    assert (row["n_positive"], row["n_nuclei"]) == (2, 4)  # nucleus 3 is half in DAB: still its own H nucleus
    assert gt.ratio_from_areas("dab_over_all", 150, 400, 150, 300) == pytest.approx(150 / 400)
    assert gt.ratio_from_areas("dab_over_dab_plus_h", 150, 400, 150, 300) == pytest.approx(150 / 450)
    assert math.isnan(gt.ratio_from_areas("dab_over_all", 0, 0, 0, 0))


def test_bad_config_values_are_named():
    with pytest.raises(ValueError, match="ground_truth.formula"):
        gt._params("ki67_index", "mean_dab", None)
    with pytest.raises(ValueError, match="ground_truth.positivity"):
        gt._params("dab_over_all", "eyeball", None)
    with pytest.raises(ValueError, match="dab_threshold"):
        gt._params("dab_over_all", "mean_dab", {"dab_threshold": "high"})


# ---------------------------------------------------------------------------- with the model
@pytest.mark.parametrize("positivity", gt.POSITIVITY)
def test_synthetic_tile_with_known_ratio(model, positivity):
    rgb, labels, positive = paint_ihc()
    truth = np.isin(labels, positive).sum() / (labels > 0).sum()
    row = gt.measure_tiles([rgb], model, mpp=0.5, positivity=positivity)[0][0]
    assert row["reason"] == ""
    assert row["n_positive"] == len(positive) and abs(row["n_nuclei"] - labels.max()) <= 2
    assert row["tumor_ratio"] == pytest.approx(truth, abs=0.05)


def test_edge_case_tiles_get_nan_with_a_reason(model):
    from scipy import ndimage as ndi

    rgb, _, _ = paint_ihc()
    white = np.full((256, 256, 3), 250, np.uint8)
    empty = paint_ihc(n=(0, 0))[0]  # counterstained tissue, no nuclei
    blurred = ndi.gaussian_filter(rgb.astype(float), (6, 6, 0)).round().astype(np.uint8)
    dense = paint_ihc(n=(10, 10), radius=10)[0]  # nuclei cover ~57 %
    rows = [r[0] for r in gt.measure_tiles([white, empty, blurred, dense, rgb], model, mpp=0.5,
                                           params=dict(min_sharpness=1e-3, max_nuclear_fraction=0.5))]
    assert [r["reason"] for r in rows] == ["blank", "no_nuclei", "blurred", "too_dense", ""]
    assert all(math.isnan(r["tumor_ratio"]) for r in rows[:4]) and not math.isnan(rows[4]["tumor_ratio"])


def test_percentile_scaling_turns_dab_noise_into_nuclei(model):
    """DeepLIIF's hematoxylin-only panel has no DAB: with fixed OD ranges the DAB channel
    yields (almost) no nuclei; per-tile percentile scaling stretches its noise into many."""
    t = gt.read_deepliif(shared_data("ki67", "deepliif", "Bladder1.png"))
    rows = {norm: gt.measure_tiles([t["hematoxylin"]], model, mpp=0.25, positivity="dab_segmentation",
                                   params=dict(normalisation=norm))[0][0] for norm in ("fixed", "percentile")}
    assert rows["fixed"]["n_positive"] <= 2
    assert rows["percentile"]["n_positive"] >= 10 * max(rows["fixed"]["n_positive"], 1)


def _write_slide(path, rgb, mpp):
    import tifffile

    with tifffile.TiffWriter(path) as tif:
        tif.write(rgb, tile=(256, 256), photometric="rgb", compression="zlib",
                  resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")


def _tile_table(sample, n_side, px, mpp, keep):
    rows = []
    for r in range(n_side):
        for c in range(n_side):
            rows.append(dict(sample=sample, tile_id=r * n_side + c, row=r, col=c, tile_px=px, mpp=mpp,
                             ihc_x=c * px, ihc_y=r * px, ihc_level=0, ihc_downsample=1.0, ihc_read_px=px,
                             ihc_extent=px, ihc_mpp=mpp, keep=keep(r * n_side + c)))
    return pd.DataFrame(rows)


def test_ground_truth_table_reads_kept_tiles_and_writes_qc(model, tmp_path):
    tiles = [paint_ihc(seed=s, positive_every=e)[0] for s, e in [(1, 2), (2, 3), (3, 4), (4, 100)]]
    tiles[3] = np.full_like(tiles[3], 250)  # glass
    slide = np.concatenate([np.concatenate(tiles[:2], 1), np.concatenate(tiles[2:], 1)], 0)
    _write_slide(tmp_path / "ihc.tiff", slide, 0.5)
    table_in = _tile_table("s1", 2, 256, 0.5, keep=lambda i: i != 1)
    out = gt.ground_truth_table(table_in, str(tmp_path / "ihc.tiff"), model, sample="s1",
                                params=dict(batch_size=2), qc_path=str(tmp_path / "qc.png"))
    assert list(out.columns) == gt.COLUMNS
    assert out["tile_id"].tolist() == [0, 2, 3]  # tile 1 not kept: not read
    assert out.loc[out.tile_id == 0, "tumor_ratio"].item() == pytest.approx(0.5, abs=0.08)
    assert out.loc[out.tile_id == 2, "tumor_ratio"].item() == pytest.approx(0.25, abs=0.06)
    assert out.loc[out.tile_id == 3, "reason"].item() == "blank"
    assert (tmp_path / "qc.png").stat().st_size > 10_000
    # no kept tile: an empty, typed table and a QC image that says so
    empty = gt.ground_truth_table(table_in.assign(keep=False), str(tmp_path / "ihc.tiff"), model, sample="s1",
                                  qc_path=str(tmp_path / "qc_empty.png"))
    assert len(empty) == 0 and list(empty.columns) == gt.COLUMNS and empty["tumor_ratio"].dtype == float
    assert (tmp_path / "qc_empty.png").exists()
    with pytest.raises(ValueError, match="sample s1.*keep"):
        gt.ground_truth_table(table_in.drop(columns="keep"), str(tmp_path / "ihc.tiff"), model, sample="s1")


# ---------------------------------------------------------------------------- real Ki67 fields
# |workflow − mask| positive fraction by area with the shipped model (scanner-augmented,
# bench/nuclei_augment.py), as scanned (fixed vectors and OD ranges) and calibrated on the field
# itself (tumormap.ihc_stain, the workflow's default). Measured (bench/bench_scanner.py):
# mean_dab as scanned +0.010 (Bladder1), -0.030 (Lung1); calibrated +0.044, -0.034.
# dab_segmentation +0.029/+0.017 and +0.024/+0.014 (Bladder1, by formula) but -0.10 to -0.12 on
# Lung1, whose pale granular Ki67 nuclei the DAB channel under-segments: the goal (0.05) holds
# for mean_dab only, hence its default. dab_threshold, od_max and the calibration's reference
# nuclear hematoxylin were chosen on these two fields: the errors are in-sample.
DEEPLIIF_TOLERANCE = {("Bladder1", "mean_dab"): 0.05, ("Lung1", "mean_dab"): 0.05,
                      ("Bladder1", "dab_segmentation"): 0.04, ("Lung1", "dab_segmentation"): 0.13}


@pytest.mark.parametrize("calibrated", [False, True], ids=["as_scanned", "calibrated"])
@pytest.mark.parametrize("name", ["Bladder1", "Lung1"])
def test_deepliif_ratio_matches_the_mask(model, name, calibrated):
    from tumormap.ihc_stain import estimate_ihc_calibration

    t = gt.read_deepliif(shared_data("ki67", "deepliif", f"{name}.png"))
    counts = {"Bladder1": (15, 173), "Lung1": (11, 50)}[name]
    assert t["n_positive"] == counts[0] and abs(t["n_negative"] - counts[1]) <= 6  # small blobs dropped
    params = dict(ihc_calibration=estimate_ihc_calibration([t["ihc"]]) if calibrated else None)
    for positivity in gt.POSITIVITY:
        for formula in gt.FORMULAS:
            row = gt.measure_tiles([t["ihc"]], model, mpp=0.25, positivity=positivity, formula=formula,
                                   params=params)[0][0]
            err = abs(row["tumor_ratio"] - t["area_fraction"])
            assert err <= DEEPLIIF_TOLERANCE[name, positivity], (positivity, formula, row, t["area_fraction"])
