"""The synthetic demo pair: real OpenSlide reads of the written TIFFs against the known answer."""

from __future__ import annotations

import numpy as np
import openslide
import pandas as pd
import pytest
from skimage.color import rgb2hed

from tumormap.demo import make_demo_pair, make_nucleus_training_set

SIZE, REGION, MPP, OFFSET = 2048, 1024, 0.25, (12, -8)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    summary = make_demo_pair(out / "he.tiff", out / "ihc.tiff", out / "truth.parquet", seed=5, size_px=SIZE,
                             mpp=MPP, ihc_offset=OFFSET, region_px=REGION)
    he, ihc = openslide.OpenSlide(str(out / "he.tiff")), openslide.OpenSlide(str(out / "ihc.tiff"))
    yield summary, he, ihc, pd.read_parquet(out / "truth.parquet")
    he.close()
    ihc.close()


def read_rgb(slide, x, y, w, h, level=0) -> np.ndarray:
    rgba = np.asarray(slide.read_region((x, y), level, (w, h)))
    rgb = rgba[..., :3].copy()
    rgb[rgba[..., 3] == 0] = 255  # outside the slide: glass
    return rgb


def test_slides_open_as_pyramids_with_the_right_resolution(pair):
    summary, he, ihc, _ = pair
    for slide in (he, ihc):
        assert slide.properties["openslide.vendor"] == "generic-tiff"
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(MPP, rel=1e-4)
        assert float(slide.properties["openslide.mpp-y"]) == pytest.approx(MPP, rel=1e-4)
        assert slide.level_count == 4  # 2048, 1024, 512, 256 px
        assert slide.level_downsamples == pytest.approx((1, 2, 4, 8))
        assert slide.dimensions == (SIZE, SIZE)
    assert summary["n_regions"] == 4 and summary["ihc_offset"] == list(OFFSET)


def test_ihc_shows_the_he_tissue_shifted_by_the_offset(pair):
    _, he, ihc, truth = pair
    dx, dy = OFFSET
    he_rgb, ihc_rgb = read_rgb(he, 0, 0, SIZE, SIZE), read_rgb(ihc, 0, 0, SIZE, SIZE)
    # nuclei absorb red on both stains; stroma and glass hardly do
    he_nuc, ihc_nuc = he_rgb[..., 0] < 190, ihc_rgb[..., 0] < 185
    keep = np.ones((SIZE, SIZE), bool)  # H&E pixels whose IHC partner is on the slide and not torn
    keep[:max(0, -dy)], keep[SIZE - max(0, dy):], keep[:, SIZE - max(0, dx):], keep[:, :max(0, -dx)] = (False,) * 4
    for r in truth[truth.torn].itertuples():
        keep[r.y0:r.y1, r.x0:r.x1] = False
    assert keep.mean() > 0.5

    def iou(sx, sy):
        ys, xs = np.nonzero(keep)
        ys, xs = ys[(ys + sy >= 0) & (ys + sy < SIZE) & (xs + sx >= 0) & (xs + sx < SIZE)], \
            xs[(ys + sy >= 0) & (ys + sy < SIZE) & (xs + sx >= 0) & (xs + sx < SIZE)]
        a, b = he_nuc[ys, xs], ihc_nuc[ys + sy, xs + sx]
        return (a & b).sum() / (a | b).sum()

    assert iou(dx, dy) > 0.85
    assert iou(0, 0) < 0.6  # the offset is real: unshifted nuclei do not line up
    # tissue (not glass) agrees too, on a reduced level (downsample 4: offset 3, -2 px)
    he4, ihc4 = read_rgb(he, 0, 0, SIZE // 4, SIZE // 4, 2), read_rgb(ihc, 0, 0, SIZE // 4, SIZE // 4, 2)
    he_t, ihc_t = he4.min(axis=2) < 240, ihc4.min(axis=2) < 240
    sub = keep[::4, ::4]
    shifted = np.zeros_like(ihc_t)
    shifted[max(0, -dy // 4):SIZE // 4 - max(0, dy // 4), max(0, -dx // 4):SIZE // 4 - max(0, dx // 4)] = \
        ihc_t[max(0, dy // 4):SIZE // 4 - max(0, -dy // 4), max(0, dx // 4):SIZE // 4 - max(0, -dx // 4)]
    assert (he_t[sub] == shifted[sub]).mean() > 0.98


def test_tear_removes_ihc_tissue_where_the_he_has_it(pair):
    _, he, ihc, truth = pair
    torn = truth[truth.torn]
    assert len(torn) == 1
    r = torn.iloc[0]
    w, h = int(r.x1 - r.x0), int(r.y1 - r.y0)
    he_glass = (read_rgb(he, int(r.x0), int(r.y0), w, h).min(axis=2) >= 240).mean()
    ihc_glass = (read_rgb(ihc, int(r.x0) + OFFSET[0], int(r.y0) + OFFSET[1], w, h).min(axis=2) >= 240).mean()
    assert ihc_glass > he_glass + 0.05


def test_truth_table_spans_the_range_and_matches_the_pixels(pair):
    _, he, _, truth = pair
    assert list(truth.columns[:5]) == ["region_id", "x0", "y0", "x1", "y1"]
    assert {"true_ratio", "true_ratio_count", "n_nuclei", "tissue_fraction", "torn", "tumor_fraction"} <= set(truth)
    assert len(truth) == 4 and truth.region_id.tolist() == [0, 1, 2, 3]
    tissue = truth[truth.n_nuclei > 0]
    for col in ("true_ratio", "true_ratio_count", "tissue_fraction"):
        assert tissue[col].between(0, 1).all()
    assert tissue.true_ratio_count.min() == 0 and tissue.true_ratio_count.max() >= 0.7
    # the count ratio is exactly the region's drawn fraction, rounded to whole nuclei
    expected = np.floor(tissue.tumor_fraction * tissue.n_nuclei + 0.5) / tissue.n_nuclei
    assert np.allclose(tissue.true_ratio_count, expected)
    # white-patch case: a region of pure glass
    glass = truth[truth.tissue_fraction == 0]
    assert len(glass) >= 1 and (glass.n_nuclei == 0).all() and glass.true_ratio.isna().all()
    assert 0.5 < truth.tissue_fraction.mean() < 0.75
    # tissue_fraction is what the H&E shows (not glass)
    for r in truth.itertuples():
        rgb = read_rgb(he, r.x0, r.y0, r.x1 - r.x0, r.y1 - r.y0)
        assert (rgb.min(axis=2) < 240).mean() == pytest.approx(r.tissue_fraction, abs=0.02)


def test_dab_area_recounted_from_the_ihc_matches_true_ratio(pair):
    _, _, ihc, truth = pair
    dx, dy = OFFSET
    checked = 0
    for r in truth[(truth.n_nuclei > 0) & ~truth.torn].itertuples():
        hed = rgb2hed(read_rgb(ihc, r.x0 + dx, r.y0 + dy, r.x1 - r.x0, r.y1 - r.y0))
        positive = hed[..., 2] > 0.04
        negative = (hed[..., 0] > 0.035) & ~positive
        measured = positive.sum() / (positive.sum() + negative.sum())
        assert measured == pytest.approx(r.true_ratio, abs=0.05), r
        checked += 1
    assert checked >= 2


def test_same_seed_same_pair_other_seed_other_truth(tmp_path):
    def make(name, seed, tear=True):
        d = tmp_path / name
        make_demo_pair(d / "he.tiff", d / "ihc.tiff", d / "truth.parquet", seed=seed, size_px=1024,
                       region_px=512, tear=tear)
        return pd.read_parquet(d / "truth.parquet"), (d / "ihc.tiff").read_bytes()

    (t1, ihc1), (t2, ihc2), (t3, _) = make("a", 11), make("b", 11), make("c", 12, tear=False)
    pd.testing.assert_frame_equal(t1, t2)
    assert ihc1 == ihc2
    assert not t1.equals(t3)
    assert t1.torn.sum() == 1 and not t3.torn.any()


def test_nucleus_training_set_is_consistent_with_its_pixels(tmp_path):
    path = tmp_path / "nuclei.npz"
    make_nucleus_training_set(path, n_patches=12, patch_px=128, mpp=0.5, seed=3)
    z = np.load(path)
    images, labels, positive = z["images"], z["labels"], z["positive"]
    assert images.shape == (12, 128, 128, 3) and images.dtype == np.uint8
    assert labels.shape == (12, 128, 128) and labels.dtype == np.int32
    assert positive.ndim == 2 and positive.shape[0] == 12 and positive.dtype == bool
    assert positive.shape[1] == labels.max() + 1 and not positive[:, 0].any()
    n_per_patch = labels.reshape(12, -1).max(axis=1)
    assert (n_per_patch == 0).any() and (n_per_patch > 20).sum() >= 6
    dab, pos_means, neg_means, neg_areas = rgb2hed(images)[..., 2], [], [], []
    for i in range(12):
        ids = np.unique(labels[i])
        assert ids.tolist() == list(range(len(ids)))  # ids 1..n, no gaps
        assert not positive[i, len(ids):].any()
        for j in ids[1:]:
            mask = labels[i] == j
            (pos_means if positive[i, j] else neg_means).append(dab[i][mask].mean())
            if not positive[i, j] and mask.sum() > 30:
                neg_areas.append(mask.sum())
        if len(ids) > 1:  # nuclei are darker than what surrounds them
            assert images[i][labels[i] > 0].mean() < images[i][labels[i] == 0].mean() - 30
    pos_means, neg_means = np.array(pos_means), np.array(neg_means)
    assert len(pos_means) > 50 and len(neg_means) > 50
    assert np.median(pos_means) > np.median(neg_means) + 0.04
    threshold = (np.median(pos_means) + np.median(neg_means)) / 2
    assert (pos_means > threshold).mean() > 0.95 and (neg_means < threshold).mean() > 0.95
    # normal nuclei ≈ 7 µm across: ≈ 154 px² at 0.5 µm/px (whole ones; some are cut by the edge)
    assert 110 < np.median(neg_areas) < 210
