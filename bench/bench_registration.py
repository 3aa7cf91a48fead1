"""Registration accuracy and time: real consecutive sections (ANHIR) and a demo pair with a known warp.

    .venv/bin/python bench/bench_registration.py [demo_size_px]

1. ANHIR lung-lesion_3 (../shared/data/registration): each IHC (CD31, Cc10, proSPC) onto the
   H&E at 5 % scale; rTRE = landmark distance / image diagonal (ANHIR's metric), median and
   max over the 80 landmarks, without registration, affine and non-rigid, and seconds.
   Negative controls: the H&E against unrelated real slides and a blank image (score, ok).
   If SimpleITK is importable, its B-spline (Mattes mutual information, started from our
   affine) is run on the same signals for comparison.
2. A demo pair whose IHC is turned 187°, mirrored, shifted and elastically warped (known
   mapping): TRE in µm over H&E tissue points, and the SSIM stage (kept pairs, median SSIM of
   kept pairs) with the sheet offset only, affine, non-rigid, and on the same pair unwarped.
"""

import glob
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tumormap.registration import (Transform, read_slide_at, register_arrays, register_slides,  # noqa: E402
                                   rtre, stain_signal)

ANHIR = REPO.parent / "shared" / "data" / "registration" / "lung-lesion_3"
SLIDES = REPO.parent / "shared" / "data" / "slides"


def anhir_image(name):
    from PIL import Image

    img = np.asarray(Image.open(glob.glob(str(ANHIR / f"*-{name}-*.jpg"))[0]).convert("RGB"))
    pts = pd.read_csv(glob.glob(str(ANHIR / "landmarks-50pc" / f"*-{name}-*.csv"))[0])[["X", "Y"]].to_numpy() / 10
    return img, pts


def simpleitk_bspline(he, ihc, affine: Transform, points, mesh: int = 8):
    """SimpleITK B-spline (Mattes MI, LBFGSB, 3 levels) after our affine; landmarks mapped."""
    import SimpleITK as sitk

    fs, _ = stain_signal(he)
    ms, _ = stain_signal(ihc)
    fixed, moving = sitk.GetImageFromArray(fs), sitk.GetImageFromArray(ms)
    m = np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1]]) @ affine.matrix @ np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    aff = sitk.AffineTransform(2)
    aff.SetMatrix(m[:2, :2].ravel().tolist())
    aff.SetTranslation(m[:2, 2].tolist())
    bspline = sitk.BSplineTransformInitializer(fixed, [mesh, mesh], order=3)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.2, seed=1)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=100, maximumNumberOfCorrections=5)
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([2, 1, 0])
    reg.SetMovingInitialTransform(aff)
    reg.SetInitialTransform(bspline, inPlace=True)
    reg.Execute(fixed, moving)
    both = sitk.CompositeTransform([aff, bspline])
    return np.array([both.TransformPoint((float(x) - 0.5, float(y) - 0.5)) for x, y in points]) + 0.5


def bench_anhir() -> None:
    if not ANHIR.exists():
        print(f"ANHIR data not available ({ANHIR}): skipped")
        return
    try:
        import SimpleITK  # noqa: F401
        have_sitk = True
    except ImportError:
        have_sitk = False
    he, he_pts = anhir_image("He")
    diagonal = math.hypot(*he.shape[:2])
    print(f"ANHIR lung-lesion_3 at 5 % ({he.shape[1]}×{he.shape[0]} px), rTRE median / max over 80 landmarks")
    print(f"{'pair':<16}{'none':>16}{'affine':>16}{'nonrigid':>16}{'s (aff/nonr)':>14}{'score':>7}"
          + (f"{'SimpleITK B-spline':>26}" if have_sitk else ""))
    for name in ("CD31", "Cc10", "proSPC"):
        ihc, ihc_pts = anhir_image(name)
        cells, times = [], []
        e = rtre(Transform(np.eye(3)), he_pts, ihc_pts, diagonal)
        cells.append(f"{np.median(e):.4f}/{e.max():.4f}")
        for method in ("affine", "nonrigid"):
            t0 = time.perf_counter()
            result = register_arrays(he, ihc, method=method)
            times.append(time.perf_counter() - t0)
            e = rtre(result.transform, he_pts, ihc_pts, diagonal)
            cells.append(f"{np.median(e):.4f}/{e.max():.4f}")
            if method == "affine":
                affine = result.transform
        line = f"{name + ' → H&E':<16}" + "".join(f"{c:>16}" for c in cells)
        line += f"{times[0]:>7.1f}/{times[1]:<6.1f}{result.score:>7.3f}"
        if have_sitk:
            t0 = time.perf_counter()
            mapped = simpleitk_bspline(he, ihc, affine, he_pts)
            e = np.hypot(*(mapped - ihc_pts).T) / diagonal
            line += f"{np.median(e):>11.4f}/{e.max():.4f} ({time.perf_counter() - t0:.0f} s)"
        print(line)
    print("what the landmarks themselves allow (rTRE median / max):")
    from scipy.interpolate import RBFInterpolator

    for name in ("CD31", "Cc10", "proSPC"):
        _, ihc_pts = anhir_image(name)
        design = np.column_stack([he_pts, np.ones(len(he_pts))])
        fit, *_ = np.linalg.lstsq(design, ihc_pts, rcond=None)
        e_aff = np.hypot(*(design @ fit - ihc_pts).T) / diagonal
        loo = []
        for i in range(len(he_pts)):
            rest = np.arange(len(he_pts)) != i
            tps = RBFInterpolator(he_pts[rest], ihc_pts[rest] - he_pts[rest], kernel="thin_plate_spline", degree=1)
            loo.append(np.hypot(*(he_pts[i] + tps(he_pts[i:i + 1])[0] - ihc_pts[i])) / diagonal)
        loo = np.array(loo)
        print(f"  {name:<8} affine fitted to all landmarks {np.median(e_aff):.4f}/{e_aff.max():.4f}; "
              f"thin-plate spline through the other 79, leave-one-out {np.median(loo):.4f}/{loo.max():.4f}")
    print("negative controls (the H&E against):")
    import openslide

    for name in ("cmu-small-region.svs", "tcga-cr-7395-01a-01-ts1.svs"):
        if (SLIDES / name).exists():
            other = np.asarray(openslide.OpenSlide(str(SLIDES / name)).get_thumbnail((900, 900)).convert("RGB"))
            r = register_arrays(he, other, method="affine")
            print(f"  {name:<30} score {r.score:.3f} ok {r.ok}")
    blank = np.clip(np.random.default_rng(0).normal(242, 2, he.shape), 0, 255).astype(np.uint8)
    r = register_arrays(he, blank, method="affine")
    print(f"  {'a blank image':<30} score {r.score:.3f} ok {r.ok} ({r.reason})")


def ssim_stage(he, ihc, registration, tile_mpp=0.5, tile_px=256):
    from tumormap.ssim import ssim_table
    from tumormap.tiling import apply_registration, tile_grid
    from tumormap.tissue import tissue_table

    tiles = tile_grid(he, ihc, "bench", target_mpp=tile_mpp, tile_px=tile_px, offset=(12, -8))
    if registration is not None:
        tiles = apply_registration(tiles, registration)
    table = ssim_table(tissue_table(tiles, he, ihc, "bench", min_tissue=0.5), he, ihc, "bench", ssim_min=0.4,
                       read_px=128)
    kept = table[table["keep"]]
    return int(table["tissue_keep"].sum()), len(kept), float(kept["ssim"].median()) if len(kept) else float("nan")


def bench_demo(size_px: int) -> None:
    from tumormap.demo import demo_ihc_mapping, make_demo_pair

    warp = dict(rotation_deg=187.0, flip=True, shift_px=(60, -35), elastic_um=15.0, elastic_scale_um=250.0, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        summary = make_demo_pair(d / "he.tiff", d / "ihc.tiff", d / "truth.parquet", seed=11, size_px=size_px,
                                 region_px=size_px // 3, ihc_warp=warp)
        make_demo_pair(d / "he0.tiff", d / "ihc0.tiff", d / "truth0.parquet", seed=11, size_px=size_px,
                       region_px=size_px // 3)
        mpp = summary["mpp"]
        truth = demo_ihc_mapping(summary)
        low, scale = read_slide_at(d / "he.tiff", 8.0)
        _, mask = stain_signal(low)
        ys, xs = np.nonzero(mask)
        pick = np.random.default_rng(0).choice(len(xs), 1000)
        pts = (np.column_stack([xs[pick], ys[pick]]) + 0.5) / scale  # H&E tissue, level-0 px
        print(f"\ndemo pair {size_px} px at {mpp} µm/px; IHC turned {warp['rotation_deg']}°, mirrored, shifted "
              f"{warp['shift_px']} px, elastic warp ≤ {warp['elastic_um']} µm over {warp['elastic_scale_um']} µm")
        print(f"{'IHC placement':<28}{'TRE µm median':>14}{'max':>8}{'s':>7}{'tissue pairs':>14}{'kept':>6}"
              f"{'SSIM kept (median)':>20}")
        he, ihc = str(d / "he.tiff"), str(d / "ihc.tiff")
        offset_only = np.hypot(*(pts + [12, -8] - truth(pts)).T) * mpp
        n_tissue, n_kept, ssim = ssim_stage(he, ihc, None)
        print(f"{'sheet offset only':<28}{np.median(offset_only):>14.2f}{offset_only.max():>8.1f}{'':>7}"
              f"{n_tissue:>14}{n_kept:>6}{ssim:>20.3f}")
        for method in ("affine", "nonrigid"):
            t0 = time.perf_counter()
            result, _ = register_slides(he, ihc, "bench", method=method)
            seconds = time.perf_counter() - t0
            err = np.hypot(*(Transform.from_dict(result).apply(pts) - truth(pts)).T) * mpp
            n_tissue, n_kept, ssim = ssim_stage(he, ihc, result)
            print(f"{method + ' (score %.2f)' % result['score']:<28}{np.median(err):>14.2f}{err.max():>8.1f}"
                  f"{seconds:>7.1f}{n_tissue:>14}{n_kept:>6}{ssim:>20.3f}")
        n_tissue, n_kept, ssim = ssim_stage(str(d / "he0.tiff"), str(d / "ihc0.tiff"), None)
        print(f"{'unwarped pair, offset':<28}{'0 (exact)':>14}{'':>8}{'':>7}{n_tissue:>14}{n_kept:>6}{ssim:>20.3f}")


if __name__ == "__main__":
    bench_anhir()
    bench_demo(int(sys.argv[1]) if len(sys.argv) > 1 else 4096)
