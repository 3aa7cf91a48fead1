"""Bad input gets a clear error naming sample and file, or a warning and an empty but valid output."""
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml

from tests.http_server import SlideServer
from tumormap.demo import make_demo_pair

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"


def workflow(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SNAKEMAKE), *args, "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", "2"],
                          capture_output=True, text=True, timeout=900)


def write_config(workdir: Path, sheet: str, **changes) -> dict:
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["samples"] = sheet
    cfg["tile"]["tile_px"] = 128
    for section, values in changes.items():
        cfg[section].update(values)
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    return cfg


def test_config_value_out_of_range_stops_before_any_job(tmp_path):
    (tmp_path / "s.tsv").write_text("sample\the\na\tmissing.svs\n")
    write_config(tmp_path, "s.tsv", ssim={"ssim_min": 2.0})
    proc = workflow(tmp_path, "-n", "all")
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "On instance['ssim']['ssim_min']" in out and "2.0" in out


def test_missing_local_slide_names_sample_row_and_file(tmp_path):
    (tmp_path / "s.tsv").write_text("sample\the\tihc\na\tslides/a_he.svs\tslides/a_ihc.svs\n")
    write_config(tmp_path, "s.tsv")
    proc = workflow(tmp_path, "-n", "all")
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "row 2 (sample 'a')" in out and "slides/a_he.svs" in out


def test_downloaded_file_that_is_not_a_slide_fails_at_tiling_and_others_finish(tmp_path):
    make_demo_pair(str(tmp_path / "good_he.tiff"), str(tmp_path / "good_ihc.tiff"), str(tmp_path / "t.parquet"),
                   seed=1, size_px=1024, region_px=512)
    junk = b"<html>this is an error page, not a slide</html>" * 200
    with SlideServer() as server:
        server.add_file("bad_he.svs", junk)
        server.add_file("bad_ihc.svs", junk)
        md5 = hashlib.md5(junk).hexdigest()
        (tmp_path / "s.tsv").write_text(
            "sample\the\tihc\the_md5\tihc_md5\n"
            "good\tgood_he.tiff\tgood_ihc.tiff\t\t\n"
            f"bad\t{server.file_url('bad_he.svs')}\t{server.file_url('bad_ihc.svs')}\t{md5}\t{md5}\n")
        write_config(tmp_path, "s.tsv")
        proc = workflow(tmp_path, "--keep-going", "results/ssim/good.parquet", "results/ssim/bad.parquet")
    assert proc.returncode != 0  # the bad sample failed...
    assert (tmp_path / "results/ssim/good.parquet").exists()  # ...and the good one finished
    assert (tmp_path / "resources/downloads/bad/bad_he.svs").read_bytes() == junk  # downloaded and verified
    assert not (tmp_path / "results/tiles/bad.parquet").exists()  # no half output left
    log = (tmp_path / "logs/tile/bad.log").read_text()
    assert "sample bad: cannot open resources/downloads/bad/bad_he.svs as a slide" in log


def test_slide_without_tissue_flows_through_with_empty_outputs(tmp_path):
    """A blank slide: warnings, no tiles kept, the reference stain, and empty but valid maps."""
    from tumormap.export import slide_summary, tiles_geojson
    from tumormap.maps import slide_maps
    from tumormap.ssim import ssim_table
    from tumormap.tiling import tile_grid
    from tumormap.tissue import tissue_table

    glass = np.full((1024, 1024, 3), 244, np.uint8)
    path = str(tmp_path / "blank.tiff")
    with tifffile.TiffWriter(path) as tw:
        for ds in (1, 2, 4):
            tw.write(glass[::ds, ::ds], tile=(256, 256), photometric="rgb", compression="zlib",
                     resolution=(1e4 / (0.5 * ds),) * 2, resolutionunit="CENTIMETER", subfiletype=int(ds > 1))
    tiles = tile_grid(path, path, "blank", target_mpp=0.5, tile_px=128)
    tissue = tissue_table(tiles, path, path, "blank", min_tissue=0.5)
    assert not tissue["tissue_keep"].any()
    ssim = ssim_table(tissue, path, path, "blank", ssim_min=0.4)
    assert not ssim["keep"].any() and ssim["ssim"].isna().all()
    predictions = tissue.loc[tissue["tissue_keep"], ["sample", "tile_id", "row", "col", "he_x", "he_y", "he_extent"]]
    predictions = predictions.assign(predicted_ratio=np.array([], np.float32))
    predictions.to_parquet(tmp_path / "pred.parquet")
    tissue.to_parquet(tmp_path / "tissue.parquet")
    result = slide_maps(str(tmp_path / "pred.parquet"), str(tmp_path / "tissue.parquet"), None, path, sample="blank",
                        model="regressor", png=str(tmp_path / "m.png"), arrays=str(tmp_path / "m.npz"),
                        agreement=str(tmp_path / "m.json"))
    assert result["n_predicted_tiles"] == 0 and (tmp_path / "m.png").stat().st_size > 0
    assert tiles_geojson(predictions, sample="blank", model="regressor")["features"] == []
    assert slide_summary(predictions, tissue, sample="blank", model="regressor")["n_tissue_tiles"] == 0
