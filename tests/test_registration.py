"""Registration of consecutive sections: known transforms recovered, tiles read through them,
the landmark metric, and pairs that cannot be registered kept out of training."""

import glob
import math

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from tests.conftest import shared_data
from tumormap.registration import (Transform, load_transform, register_arrays, register_slides, rtre,
                                   save_registration, warp_image)

SIZE = 320


def _rotation_about(angle_deg, flip, centre, shift=(0.0, 0.0), stretch=(1.0, 1.0)) -> np.ndarray:
    """3×3: fixed → moving, turning about ``centre`` (flip x first, then stretch, then rotate)."""
    t = math.radians(angle_deg)
    lin = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]]) @ np.diag(stretch)
    if flip:
        lin = lin @ np.diag([-1.0, 1.0])
    m = np.eye(3)
    m[:2, :2] = lin
    m[:2, 2] = np.asarray(centre) - lin @ np.asarray(centre) + np.asarray(shift)
    return m


def _density(seed: int, size: int = SIZE) -> np.ndarray:
    """Asymmetric tissue: an off-centre blob with a lobe, textured; 0 on glass."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    shape = np.maximum(1 - np.hypot((xx - 0.45) / 0.28, (yy - 0.5) / 0.2),
                       1 - np.hypot((xx - 0.62) / 0.1, (yy - 0.3) / 0.16))
    shape += 0.25 * ndimage.gaussian_filter(rng.standard_normal((size, size)), size / 20) * size / 20
    tissue = ndimage.gaussian_filter((shape > 0.1).astype(np.float32), 1.0)
    texture = ndimage.gaussian_filter(rng.standard_normal((size, size)), 2.0)
    texture = np.clip(0.6 + texture / texture.std() * 0.25, 0.1, 1.2)
    return (tissue * texture).astype(np.float32)


def _stain(density: np.ndarray, kind: str) -> np.ndarray:
    """H&E (purple nuclei-like texture on pink) or IHC (blue-grey with brown) from one density."""
    h, e, dab = np.array([0.65, 0.70, 0.29]), np.array([0.07, 0.99, 0.11]), np.array([0.27, 0.57, 0.78])
    tissue = np.clip(density * 3, 0, 1)
    if kind == "he":
        od = density[..., None] * h * 0.9 + tissue[..., None] * e * 0.35
    else:
        od = density[..., None] * h * 0.6 + (density[..., None] ** 2) * dab * 0.5 + tissue[..., None] * h * 0.1
    return np.clip(255 * np.exp(-od - 0.02), 0, 255).astype(np.uint8)


def _pair(matrix: np.ndarray, seed: int = 0):
    density = _density(seed)
    moving = warp_image(density, Transform(np.linalg.inv(matrix)), density.shape, border=0)  # moving(T p) = fixed(p)
    return _stain(density, "he"), _stain(moving, "ihc"), density


def _tissue_points(density: np.ndarray, n: int = 200) -> np.ndarray:
    ys, xs = np.nonzero(ndimage.binary_erosion(density > 0.05, iterations=8))
    pick = np.random.default_rng(1).choice(len(xs), n)
    return np.column_stack([xs[pick] + 0.5, ys[pick] + 0.5])


@pytest.mark.parametrize("angle, flip, shift, stretch", [
    (180.0, False, (6.0, -4.0), (1.0, 1.0)),      # upside down
    (90.0, True, (-5.0, 3.0), (1.0, 1.0)),        # a quarter turn of the mirrored section
    (187.0, True, (10.0, 7.0), (1.04, 0.97)),     # between candidates, flipped, stretched
    (-12.0, False, (-8.0, 12.0), (0.98, 1.03)),
])
def test_known_affine_is_recovered(angle, flip, shift, stretch):
    truth = _rotation_about(angle, flip, (SIZE / 2, SIZE / 2), shift, stretch)
    he, ihc, density = _pair(truth)
    result = register_arrays(he, ihc, method="affine")
    pts = _tissue_points(density)
    err = np.hypot(*(result.transform.apply(pts) - Transform(truth).apply(pts)).T)
    assert result.ok, result.reason
    assert np.median(err) < 0.5 and err.max() < 1.0  # px at 320 px: the stated tolerance
    rigid = register_arrays(he, ihc, method="rigid")  # rotation + translation only: off by the stretch alone
    err_rigid = np.hypot(*(rigid.transform.apply(pts) - Transform(truth).apply(pts)).T)
    assert np.median(err_rigid) < 0.5 + SIZE * max(abs(s - 1) for s in stretch)


def test_transform_file_round_trips(tmp_path):
    rng = np.random.default_rng(3)
    field = rng.normal(0, 2.0, (2, 6, 7))
    transform = Transform(_rotation_about(33, True, (500, 400), (12, -7), (1.1, 0.95)), field, (10.0, 20.0), 150.0)
    result = {"sample": "s", "method": "nonrigid", **transform.to_dict(), "score": 0.7, "ok": True, "reason": ""}
    save_registration(result, np.zeros((4, 4, 3), np.uint8), tmp_path / "s.json", tmp_path / "s.png",
                      tmp_path / "s.field.npz")
    loaded, data = load_transform(tmp_path / "s.json")
    pts = rng.uniform(-100, 1200, (50, 2))
    np.testing.assert_allclose(loaded.apply(pts), transform.apply(pts), atol=1e-3)
    assert data["field"]["file"] == "s.field.npz"
    save_registration({**result, **Transform(transform.matrix).to_dict()}, np.zeros((4, 4, 3), np.uint8),
                      tmp_path / "a.json", tmp_path / "a.png", tmp_path / "a.field.npz")  # affine: empty field file
    affine, _ = load_transform(tmp_path / "a.json")
    assert affine.field is None and (tmp_path / "a.field.npz").exists()
    np.testing.assert_allclose(affine.matrix, transform.matrix)
    assert data["ok"] is True and data["method"] == "nonrigid" and np.asarray(data["matrix"]).shape == (3, 3)
    # the field is bilinear between its nodes: at a node it is the node's value
    node = np.array([[10.0 + 2 * 150.0, 20.0 + 3 * 150.0]])
    np.testing.assert_allclose(loaded.displacement(node)[0], field[:, 3, 2], atol=1e-4)


def test_landmark_metric_known_case():
    fixed = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    shifted = fixed + [3.0, 4.0]  # 5 px off everywhere
    assert rtre(Transform(np.eye(3)), fixed, shifted, 100.0) == pytest.approx([0.05] * 3)
    from tumormap.registration import translation
    assert rtre(Transform(translation(3, 4)), fixed, shifted, 100.0) == pytest.approx([0.0] * 3)


def _anhir(name):
    folder = shared_data("registration", "lung-lesion_3")
    from PIL import Image
    img = np.asarray(Image.open(glob.glob(str(folder / f"*-{name}-*.jpg"))[0]).convert("RGB"))
    points = pd.read_csv(glob.glob(str(folder / "landmarks-50pc" / f"*-{name}-*.csv"))[0])[["X", "Y"]].to_numpy() / 10
    return img, points


def test_anhir_landmarks_identity_and_affine():
    """Real consecutive sections: ANHIR's identity rTRE reproduced; the affine cuts it 10× (CD31)."""
    he, he_pts = _anhir("He")
    diagonal = math.hypot(*he.shape[:2])
    for name, identity in (("CD31", 0.065), ("Cc10", 0.018), ("proSPC", 0.043)):
        _, pts = _anhir(name)
        assert np.median(rtre(Transform(np.eye(3)), he_pts, pts, diagonal)) == pytest.approx(identity, abs=0.001)
    ihc, ihc_pts = _anhir("CD31")
    result = register_arrays(he, ihc, method="affine")
    assert result.ok
    assert np.median(rtre(result.transform, he_pts, ihc_pts, diagonal)) < 0.0075  # measured 0.0059


def test_unregistrable_pairs_are_flagged():
    he, ihc, _ = _pair(np.eye(3))
    blank = np.clip(np.random.default_rng(0).normal(242, 2, he.shape), 0, 255).astype(np.uint8)
    result = register_arrays(he, blank, method="affine")
    assert not result.ok and "IHC shows no tissue" in result.reason and result.score == 0
    other = _stain(np.rot90(_density(seed=11)).copy() * (np.random.default_rng(2).random((SIZE, SIZE)) > 0.5), "ihc")
    result = register_arrays(he, other, method="affine")
    assert not result.ok and ("do not match" in result.reason or "stretches" in result.reason)


# --------------------------------------------------------------------------- slides and tiles


@pytest.fixture(scope="module")
def warped_demo(tmp_path_factory):
    """A small demo pair whose IHC is turned 187°, flipped, shifted and elastically warped."""
    from tumormap.demo import make_demo_pair

    d = tmp_path_factory.mktemp("warped_demo")
    summary = make_demo_pair(d / "he.tiff", d / "ihc.tiff", d / "truth.parquet", seed=3, size_px=2048, region_px=1024,
                             ihc_warp=dict(rotation_deg=187.0, flip=True, shift_px=(40, -25), elastic_um=8.0,
                                           elastic_scale_um=200.0, seed=1))
    return d, summary


def test_demo_warp_is_recovered(warped_demo):
    from tumormap.demo import demo_ihc_mapping

    d, summary = warped_demo
    truth = demo_ihc_mapping(summary)
    pts = np.random.default_rng(0).uniform(0.25, 0.75, (200, 2)) * summary["size_px"]
    mpp = summary["mpp"]
    before = np.hypot(*(pts + summary["ihc_offset"] - truth(pts)).T) * mpp
    errors = {}
    for method in ("affine", "nonrigid"):
        result, qc = register_slides(d / "he.tiff", d / "ihc.tiff", "w", method=method)
        assert result["ok"], result["reason"]
        errors[method] = np.hypot(*(Transform.from_dict(result).apply(pts) - truth(pts)).T) * mpp
    assert np.median(before) > 100  # µm: without registration the IHC is nowhere near
    assert np.median(errors["affine"]) < 1.5 and np.median(errors["nonrigid"]) < 0.5  # µm
    assert np.median(errors["nonrigid"]) < np.median(errors["affine"])
    assert qc.ndim == 3 and qc.shape[1] > 2 * qc.shape[0] * 0.9  # before | after


def test_tile_read_through_transform_matches_warped_image(tmp_path):
    """Reader: the IHC tile through a transform equals the whole IHC warped, then cut and reduced."""
    import cv2

    from tumormap.demo import _write_pyramid_tiff
    from tumormap.slides import TileReader, reduced_reads
    from tumormap.tiling import apply_registration, tile_grid

    rng = np.random.default_rng(5)
    base = ndimage.gaussian_filter(rng.standard_normal((1024, 1024, 3)), (16, 16, 0))
    ihc = np.clip(128 + base / base.std() * 50, 0, 255).astype(np.uint8)
    _write_pyramid_tiff(ihc, tmp_path / "ihc.tiff", 0.5, quality=100)
    _write_pyramid_tiff(np.full((1024, 1024, 3), 200, np.uint8), tmp_path / "he.tiff", 0.5)
    tiles = tile_grid(str(tmp_path / "he.tiff"), str(tmp_path / "ihc.tiff"), "t", target_mpp=1.0, tile_px=128)
    matrix = _rotation_about(163.0, True, (512, 512), (15.5, -9.25), (1.05, 0.96))
    registered = apply_registration(tiles, {"method": "affine", **Transform(matrix).to_dict(), "ok": True,
                                            "score": 1.0, "reason": ""})
    warped = warp_image(ihc, Transform(matrix), (1024, 1024))  # level 0, on the H&E grid
    reader = TileReader(tmp_path / "ihc.tiff", "ihc", "t")
    for out_px, table in ((128, registered), (32, reduced_reads(registered, "ihc", 32, reader.slide))):
        for row in table.iloc[[5, 9, 10]].to_dict("records"):
            got = reader.read(row, out_px).astype(np.float32)
            x, y, e = row["he_x"], row["he_y"], row["he_extent"]
            want = cv2.resize(warped[y:y + e, x:x + e], (out_px, out_px), interpolation=cv2.INTER_AREA)
            error = np.abs(got - want).mean()  # grey levels, of a 0–255 texture with s.d. 50
            off_by_one = np.abs(np.roll(got, 1, axis=1) - want)[:, 1:].mean()  # one output px to the side
            assert error < 3.5 and error < off_by_one / 3
    # an identity-plus-offset transform reads what the plain offset read gives
    shifted = apply_registration(tiles, {"method": "affine", **Transform(np.eye(3) + np.array(
        [[0, 0, 7], [0, 0, -5], [0, 0, 0]])).to_dict(), "ok": True, "score": 1.0, "reason": ""})
    plain = tile_grid(str(tmp_path / "he.tiff"), str(tmp_path / "ihc.tiff"), "t", target_mpp=1.0, tile_px=128,
                      offset=(7, -5))
    row_m, row_p = shifted.iloc[9].to_dict(), plain.iloc[9].to_dict()
    assert (row_m["ihc_x"], row_m["ihc_y"]) == (row_p["ihc_x"], row_p["ihc_y"])
    assert np.abs(reader.read(row_m).astype(float) - reader.read(row_p).astype(float)).mean() < 1.5


def test_unregistered_pair_keeps_no_tile(warped_demo):
    """A pair whose 'IHC' is another tissue (a real colon H&E): flagged, and SSIM keeps nothing."""
    from tumormap.ssim import ssim_table
    from tumormap.tiling import apply_registration, tile_grid
    from tumormap.tissue import tissue_table

    d, _ = warped_demo
    he, other = str(d / "he.tiff"), str(shared_data("slides", "cmu-small-region.svs"))
    result, _ = register_slides(he, other, "mixed", method="affine")
    assert not result["ok"] and "do not match" in result["reason"]
    tiles = apply_registration(tile_grid(he, other, "mixed", target_mpp=1.0, tile_px=128), result)
    table = ssim_table(tissue_table(tiles, he, other, "mixed", min_tissue=0.5), he, other, "mixed", ssim_min=-1.0)
    assert table["tissue_keep"].any() and not table["keep"].any()
    assert not table["registration_ok"].any()


def test_sheet_offset_start_and_override(warped_demo):
    """The sheet's offset is a start (the search still finds the turned IHC) or, overridden, the answer."""
    d, summary = warped_demo
    start, _ = register_slides(d / "he.tiff", d / "ihc.tiff", "w", method="affine", offset=(12, -8))
    assert start["ok"] and start["method"] == "affine"
    override, _ = register_slides(d / "he.tiff", d / "ihc.tiff", "w", method="affine", offset=(12, -8),
                                  offset_mode="override")
    assert override["method"] == "sheet_offset" and not override["ok"]  # the IHC is turned: the offset is wrong
    np.testing.assert_allclose(np.asarray(override["matrix"])[:2, 2], [12, -8])
