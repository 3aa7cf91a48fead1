"""Nuclei model: stain channels, annotated-data loaders, detection F1, training, loading."""

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import shared_data
from tumormap import nuclei

MODEL_DIR = Path(__file__).resolve().parent / "data" / "nuclei_model_gbm40"


def test_stain_od_separates_hematoxylin_and_dab():
    from skimage.color import hed2rgb

    od = np.zeros((2, 3, 3))  # OD / ln(1e6), skimage's unit
    od[0, 0, 0] = 0.5 / 6  # hematoxylin OD 0.5
    od[0, 1, 2] = 0.8 / 6  # DAB OD 0.8
    rgb = (hed2rgb(od) * 255).round().astype(np.uint8)
    h, dab = nuclei.stain_od(rgb)
    assert h[0, 0] == pytest.approx(0.5, abs=0.03) and dab[0, 0] < 0.03
    assert dab[0, 1] == pytest.approx(0.8, abs=0.04) and h[0, 1] < 0.05
    assert h[1].max() < 0.01 and dab[1].max() < 0.01  # white glass has no stain


def test_model_input_fixed_range_and_errors():
    h = np.array([[0.0, 0.3, 0.6, 1.2]], np.float32)
    dab = np.array([[0.0, 0.5, 0.0, 0.0]], np.float32)
    x = nuclei.model_input(None, "h", {"h": 0.6}, stains=(h, dab))
    assert x.tolist() == [[0.0, 0.5, 1.0, 1.0]]
    assert nuclei.model_input(None, "h+dab", {"h": 0.6}, stains=(h, dab))[0, 1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown nuclei channel"):
        nuclei.model_input(None, "eosin", stains=(h, dab))
    with pytest.raises(ValueError, match="normalisation"):
        nuclei.model_input(None, "h", normalisation="zscore", stains=(h, dab))


def test_gbm40_contours_become_label_images():
    directory = shared_data("nuclei", "gbm40")
    labels = nuclei.parse_gbm40_xml(directory / "contours" / "01_data.xml", (512, 512))
    assert labels.max() == 102  # 102 SmoothPolygon shapes in the file
    areas = np.bincount(labels.ravel())[1:]
    assert np.median(areas) > 200 and (areas > 0).sum() >= 95  # nuclei, a few covered by later contours
    oval = nuclei.parse_gbm40_xml(directory / "contours" / "02_data.xml", (512, 512))
    assert oval.max() == 104  # 103 polygons + 1 oval
    images, label_images, names = nuclei.load_gbm40(directory)
    assert names[:2] == ["01", "02"] and len(images) == 12 and images[0].shape == (512, 512, 3)
    assert all(lab.shape == img.shape[:2] for img, lab in zip(images, label_images))


def test_gbm40_parser_rejects_bad_xml(tmp_path):
    bad = tmp_path / "x_data.xml"
    bad.write_text("<Document><Layers></Layers></Document>")
    with pytest.raises(ValueError, match="no nucleus contours"):
        nuclei.parse_gbm40_xml(bad, (64, 64))
    bad.write_text("<Document")
    with pytest.raises(ValueError, match="not a readable contour XML"):
        nuclei.parse_gbm40_xml(bad, (64, 64))


def test_detection_f1_known_answers():
    true = np.zeros((64, 64), np.int32)
    for k, (y, x) in enumerate([(10, 10), (10, 40), (40, 10), (40, 40)], start=1):
        true[y:y + 12, x:x + 12] = k
    assert nuclei.detection_f1(true, true)["f1"] == 1.0
    half = np.where(np.isin(true, [1, 2]), true, 0)  # two of four found
    s = nuclei.detection_f1(half, true)
    assert (s["precision"], s["recall"], s["f1"]) == (1.0, 0.5, pytest.approx(2 / 3))
    shifted = np.roll(true, 8, axis=1)  # 12-px squares moved 8 px: IoU 4/20 < 0.5
    assert nuclei.detection_f1(shifted, true)["tp"] == 0
    assert nuclei.pooled_f1([true, half], [true, true])["f1"] == pytest.approx(2 * 6 / (2 * 6 + 2))


def test_training_npz_pairs_hdab_with_all_and_dab_with_positives(tmp_path):
    from skimage.color import hed2rgb

    labels = np.zeros((1, 32, 32), np.int32)
    labels[0, 4:12, 4:12], labels[0, 20:28, 20:28] = 1, 2
    od = np.zeros((32, 32, 3))
    od[labels[0] > 0, 0] = 0.4 / 6
    od[labels[0] == 2, 2] = 0.7 / 6
    images = (hed2rgb(od)[None] * 255).round().astype(np.uint8)
    positive = np.array([[False, False, True]])
    np.savez(tmp_path / "t.npz", images=images, labels=labels, positive=positive)
    xs, ys = nuclei.load_training_npz(tmp_path / "t.npz")
    assert len(xs) == 2
    assert set(np.unique(ys[0])) == {0, 1, 2} and set(np.unique(ys[1])) == {0, 2}
    assert xs[1][24, 24] > 0.5 and xs[1][8, 8] < 0.05  # DAB channel: only the positive nucleus is bright
    np.savez(tmp_path / "bad.npz", images=images)
    with pytest.raises(ValueError, match="bad.npz"):
        nuclei.load_training_npz(tmp_path / "bad.npz")


def test_train_tiny_model_writes_a_loadable_folder(tmp_path):
    directory = shared_data("nuclei", "gbm40")
    data = nuclei.training_set("gbm40", params=dict(gbm40_dir=str(directory), with_fluo=False,
                                                    val_fields=["10"], test_fields=["11"]))
    assert len(data["x"]) == 10 and len(data["val_x"]) == 1 and len(data["test_x"]) == 1
    assert data["x"][0].shape == (256, 256)  # 512² at 0.25 µm/px → 0.5 µm/px
    params = dict(epochs=1, steps_per_epoch=3, patch_px=64, n_rays=8, grid=2, unet_n_depth=2,
                  unet_n_filter_base=8, batch_size=2)
    out = tmp_path / "model"
    metrics = nuclei.train_nuclei_model(out, images=data["x"][:3], labels=data["y"][:3], params=params,
                                        val_images=data["val_x"], val_labels=data["val_y"],
                                        test_images=data["test_x"], test_labels=data["test_y"])
    for name in ("config.json", "weights_best.h5", "thresholds.json", nuclei.INPUT_SPEC_FILE):
        assert (out / name).exists(), name
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temp folder left behind
    assert {"val_f1_iou50", "test_f1_iou50"} <= set(metrics)  # F1 itself: detection_f1's known-answer test
    assert json.loads((out / nuclei.INPUT_SPEC_FILE).read_text())["channel"] == "h+dab"
    nm = nuclei.load_nuclei_model(str(out))
    labels = nuclei.predict_labels(nm, [data["test_x"][0]] * 2)
    assert len(labels) == 2 and labels[0].shape == (256, 256) and labels[0].dtype == np.int32


def test_pretrained_name_offline_says_how_to_fetch():
    with pytest.raises(RuntimeError, match=r"from_pretrained\('2D_versatile_he'\)"):
        nuclei.load_nuclei_model("2D_versatile_he")
    with pytest.raises(RuntimeError, match="not a model folder"):
        nuclei.load_nuclei_model("no_such_model_anywhere")


def test_shipped_model_detects_held_out_gbm40_nuclei():
    """The committed model (trained on GBM40 fields 01-08, each with 4 simulated-scanner copies,
    + StarDist's fluorescence field; thresholds on 09-10) on fields 11-12, never seen in training."""
    directory = shared_data("nuclei", "gbm40")
    nm = nuclei.load_nuclei_model(str(MODEL_DIR))
    data = nuclei.training_set("gbm40", params=dict(gbm40_dir=str(directory), with_fluo=False))
    preds = nuclei.predict_labels(nm, data["test_x"])
    score = nuclei.pooled_f1(preds, data["test_y"], 0.5)
    assert score["f1"] >= 0.875, score  # measured 0.882 (P 0.948, R 0.825); nuclei_model_gbm40/metrics.json
