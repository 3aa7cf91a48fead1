import numpy as np
import pytest

from tests.conftest import shared_data
from tumormap.ssim import pair_ssim
from tumormap.tissue import tissue_fraction


def test_tissue_fraction_known_answers():
    glass = np.full((64, 64, 3), 242, np.uint8)
    assert tissue_fraction(glass) == 0.0
    tissue = np.zeros((64, 64, 3), np.uint8)
    tissue[:] = (190, 90, 160)  # eosin pink
    assert tissue_fraction(tissue) == 1.0
    half = glass.copy()
    half[:, :32] = (120, 60, 150)  # hematoxylin purple
    assert tissue_fraction(half) == pytest.approx(0.5)
    pale_eosin = np.zeros((64, 64, 3), np.uint8)
    pale_eosin[:] = (245, 200, 240)  # bright but coloured: tissue
    assert tissue_fraction(pale_eosin) == 1.0
    ihc_stroma = np.full((64, 64, 3), 205, np.uint8)  # unsaturated but darker than glass: tissue
    assert tissue_fraction(ihc_stroma) == 1.0
    bright_grey = np.full((64, 64, 3), 232, np.uint8)  # bright and unsaturated: glass
    assert tissue_fraction(bright_grey) == 0.0


def test_tissue_fraction_on_a_real_he_tile():
    from tumormap.slides import open_slide, plan_read, read_tile

    slide = open_slide(shared_data("slides", "cmu-small-region.svs"))
    plan = plan_read(slide.level_downsamples, 0.499, 0.5, 512)
    centre = read_tile(slide, 800, 800, plan, 512)
    assert tissue_fraction(centre) > 0.5


def test_ssim_identical_and_unrelated_tiles():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)
    b = rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)
    assert pair_ssim(a, a) == pytest.approx(1.0)
    assert abs(pair_ssim(a, b)) < 0.05


def test_ssim_of_a_real_he_ihc_pair_beats_a_mismatched_pair():
    from PIL import Image

    he_dir, ihc_dir = shared_data("pairs", "mist", "he"), shared_data("pairs", "mist", "ihc")
    names = sorted(p.name for p in he_dir.iterdir())[:3]
    load = lambda p: np.asarray(Image.open(p).convert("RGB").resize((256, 256), Image.Resampling.BOX))
    he = [load(he_dir / n) for n in names]
    ihc = [load(ihc_dir / n) for n in names]
    matched = np.mean([pair_ssim(h, i) for h, i in zip(he, ihc)])
    mismatched = np.mean([pair_ssim(he[k], ihc[(k + 1) % 3]) for k in range(3)])
    assert matched > mismatched
