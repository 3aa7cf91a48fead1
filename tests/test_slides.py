import numpy as np
import pytest

from tests.conftest import shared_data
from tumormap.slides import SlideError, open_slide, plan_read, read_tile, slide_mpp
from tumormap.tiling import tile_grid


@pytest.mark.parametrize("downsamples, mpp0, target, tile, level, read_px, extent", [
    ((1, 2, 4, 8), 0.25, 0.5, 1024, 1, 1024, 2048),       # 40× slide, 20× target: level 1 as is
    ((1, 2, 4, 8), 0.5, 0.5, 1024, 0, 1024, 1024),        # 20× slide: level 0
    ((1, 2, 4, 8), 0.25, 1.0, 256, 2, 256, 1024),         # 10× target: level 2
    ((1, 2.0005, 4.001), 0.25, 0.5, 512, 1, 512, 1024),   # scanners' inexact downsamples
    ((1, 4, 16), 0.25, 0.5, 512, 0, 1024, 1024),          # no 2× level: read 2× more at level 0
    ((1, 2, 4), 0.5, 0.25, 256, 0, 128, 128),             # finer than the slide: upsample level 0
])
def test_plan_read_picks_the_coarsest_sufficient_level(downsamples, mpp0, target, tile, level, read_px, extent):
    plan = plan_read(downsamples, mpp0, target, tile)
    assert (plan.level, plan.read_px, plan.extent0) == (level, read_px, extent)


def test_ndpi_seven_levels_at_0_5_mpp():
    path = shared_data("slides", "fluorescence-dapi-7level.ndpi")
    table = tile_grid(str(path), None, "ndpi", target_mpp=0.5, tile_px=256)
    mpp0 = 0.2281750559028887
    assert table["he_mpp"].iloc[0] == pytest.approx(mpp0)
    assert table["he_level"].iloc[0] == 1  # 0.456 µm/px is the coarsest level at least as fine as 0.5
    assert table["he_extent"].iloc[0] == round(256 * 0.5 / mpp0)
    slide = open_slide(path)
    w, h = slide.dimensions
    assert len(table) == (w // table["he_extent"].iloc[0]) * (h // table["he_extent"].iloc[0])
    row = table.iloc[len(table) // 2]
    from tumormap.slides import TileReader
    tile = TileReader(path, "he").read(row)
    assert tile.shape == (256, 256, 3) and tile.dtype == np.uint8


def test_svs_at_native_20x():
    path = shared_data("slides", "cmu-small-region.svs")
    table = tile_grid(str(path), str(path), "cmu", target_mpp=0.5, tile_px=512, offset=(10, 20))
    assert set(table["he_level"]) == {0} and table["he_extent"].iloc[0] == round(512 * 0.5 / 0.499)
    assert (table["ihc_x"] - table["he_x"] == 10).all() and (table["ihc_y"] - table["he_y"] == 20).all()
    assert table["tile_id"].is_unique


def test_slide_without_mpp_needs_a_fallback():
    path = shared_data("slides", "tcga-cr-7395-01a-01-ts1.svs")
    with pytest.raises(SlideError, match="sample tcga: .*has no openslide.mpp-x"):
        tile_grid(str(path), None, "tcga", target_mpp=0.5, tile_px=256)
    table = tile_grid(str(path), None, "tcga", target_mpp=1.0, tile_px=256, he_mpp=0.5)
    assert table["he_level"].iloc[0] == 1 and table["he_mpp"].iloc[0] == 0.5


def test_unreadable_and_missing_slides_name_sample_and_file(tmp_path):
    bogus = tmp_path / "not_a_slide.svs"
    bogus.write_bytes(b"this is not a slide" * 100)
    with pytest.raises(SlideError, match=r"sample s1: cannot open .*not_a_slide.svs"):
        open_slide(bogus, "s1")
    with pytest.raises(SlideError, match=r"sample s2: slide file not found: .*missing.svs"):
        open_slide(tmp_path / "missing.svs", "s2")


def test_dicom_flavour_openslide_cannot_read_gets_a_clear_error():
    # OpenSlide 4.0.1 reads DICOM WSI volumes, but refuses this file's image flavour.
    path = shared_data("slides", "he-small.dcm")
    try:
        slide = open_slide(path, "dcm")
    except SlideError as exc:
        assert "sample dcm" in str(exc) and "he-small.dcm" in str(exc)
    else:
        assert slide_mpp(slide, 0.5) > 0
        assert read_tile(slide, 0, 0, plan_read(slide.level_downsamples, 0.5, 0.5, 64), 64).shape == (64, 64, 3)
