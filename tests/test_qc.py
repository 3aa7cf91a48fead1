"""Per-sample QC: data errors flagged under keep-going, the cohort table, stain fallbacks, the exclude list."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from tumormap.demo import make_demo_pair
from tumormap.qc import (KEEP_GOING_ENV, empty_tiles, no_tissue, placeholder_figure, qc_table, read_records,
                         run_stage)
from tumormap.samples import SampleSheetError
from tumormap.slides import MissingMppError, SlideError
from tumormap.sources import resolve_sheet
from tumormap.stain import od_to_rgb, reference_stain, slide_stain_or_reference, stain_degeneracy
from tumormap.tiling import tile_grid
from tumormap.tissue import tissue_table


def write_tiff(path: Path, rgb: np.ndarray, mpp: float | None = 0.25) -> str:
    res = dict(resolution=(1e4 / mpp,) * 2, resolutionunit="CENTIMETER") if mpp else {}
    with tifffile.TiffWriter(str(path)) as tw:
        tw.write(rgb, tile=(256, 256), photometric="rgb", compression="zlib", **res)
    return str(path)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("qc")
    make_demo_pair(str(d / "he.tiff"), str(d / "ihc.tiff"), str(d / "truth.parquet"), seed=3, size_px=1024,
                   region_px=512)
    data = (d / "he.tiff").read_bytes()
    (d / "truncated.tiff").write_bytes(data[: len(data) // 2])
    return d


def tile(d: Path, he: str):
    return lambda: tile_grid(str(d / he), str(d / "ihc.tiff"), "s", target_mpp=0.5, tile_px=128)


def test_truncated_slide_raises_without_keep_going(pair, monkeypatch, tmp_path):
    monkeypatch.setenv(KEEP_GOING_ENV, "0")
    with pytest.raises(SlideError, match=f"sample s: cannot open {pair / 'truncated.tiff'} as a slide"):
        run_stage("tile", "s", tmp_path / "r.json", tile(pair, "truncated.tiff"),
                  on_failure=lambda: empty_tiles("s", True))
    assert not (tmp_path / "r.json").exists()


def test_truncated_slide_is_flagged_with_keep_going(pair, monkeypatch, tmp_path):
    monkeypatch.setenv(KEEP_GOING_ENV, "1")
    he, ihc = str(pair / "truncated.tiff"), str(pair / "ihc.tiff")
    table = run_stage("tile", "s", tmp_path / "r.json", tile(pair, "truncated.tiff"),
                      on_failure=lambda: empty_tiles("s", True), files=(he, ihc),
                      counts=lambda t: {"n_tiles": len(t)})
    good = tile(pair, "he.tiff")()
    assert table.empty and list(table.columns) == list(good.columns)  # the columns downstream stages read
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["ok"] is False and record["file"] == he and record["n_tiles"] == 0
    assert record["reason"].startswith("SlideError: sample s: cannot open") and he in record["reason"]
    # the next stage skips, and keeps the table's shape
    tissue = run_stage("tissue", "s", tmp_path / "t.json", lambda: 1 / 0, on_failure=lambda: no_tissue(table),
                       skip="no tiles: the tile step failed", counts=lambda t: {"n_tissue": int(t["tissue_keep"].sum())})
    assert tissue.empty and "tissue_keep" in tissue.columns
    assert json.loads((tmp_path / "t.json").read_text())["skipped"] is True


def test_programming_errors_fail_even_with_keep_going(monkeypatch, tmp_path):
    monkeypatch.setenv(KEEP_GOING_ENV, "1")
    with pytest.raises(KeyError):
        run_stage("tile", "s", tmp_path / "r.json", lambda: {}["x"], on_failure=lambda: None)


def test_missing_mpp_names_every_way_to_give_it(tmp_path):
    path = write_tiff(tmp_path / "nompp.tiff", np.full((512, 512, 3), 200, np.uint8), mpp=None)
    with pytest.raises(MissingMppError, match="`mpp` column.*tile.fallback_mpp.*--mpp"):
        tile_grid(path, None, "s", target_mpp=0.5, tile_px=128)
    assert len(tile_grid(path, None, "s", target_mpp=0.5, tile_px=128, he_mpp=0.25)) == 4


def test_qc_table_names_first_failing_or_empty_stage():
    def rec(sample, stage, ok=True, **kw):
        return {"sample": sample, "stage": stage, "ok": ok, "reason": kw.pop("reason", ""), "file": "f", **kw}

    records = [
        rec("good", "tile", n_tiles=36), rec("good", "tissue", n_tissue=20), rec("good", "ssim", n_kept=15),
        rec("good", "ground_truth", n_ratio=12), rec("good", "stain", fallback=""),
        rec("bad", "tile", ok=False, reason="SlideError: cannot open", n_tiles=0),
        rec("bad", "tissue", skipped=True, n_tissue=0), rec("bad", "ssim", n_kept=0),
        rec("bad", "ground_truth", n_ratio=0), rec("bad", "stain", fallback="slide unreadable"),
        rec("blank", "tile", n_tiles=36), rec("blank", "tissue", n_tissue=0), rec("blank", "ssim", n_kept=0),
        rec("blank", "ground_truth", n_ratio=0), rec("blank", "stain", fallback="too little tissue: 0"),
        rec("nonuclei", "tile", n_tiles=36), rec("nonuclei", "tissue", n_tissue=20),
        rec("nonuclei", "ssim", n_kept=15), rec("nonuclei", "ground_truth", n_ratio=0),
        rec("nonuclei", "stain", fallback=""),
        rec("heonly", "tile", n_tiles=36), rec("heonly", "tissue", n_tissue=20), rec("heonly", "stain", fallback=""),
    ]
    table = qc_table(records, ["good", "bad", "blank", "nonuclei", "heonly", "notrun"],
                     ["good", "bad", "blank", "nonuclei", "notrun"]).set_index("sample")
    assert table["usable"].to_dict() == {"good": True, "bad": False, "blank": False, "nonuclei": False,
                                         "heonly": True, "notrun": False}
    assert table["stage"].to_dict() == {"good": "", "bad": "tile", "blank": "tissue", "nonuclei": "ground_truth",
                                        "heonly": "", "notrun": "tile"}
    assert table.at["bad", "reason"] == "SlideError: cannot open" and table.at["bad", "file"] == "f"
    assert table.at["blank", "reason"] == "no tile has enough tissue"
    assert table.at["blank", "stain_fallback"].startswith("too little tissue")
    assert table.at["good", "n_ratio"] == 12 and pd.isna(table.at["heonly", "n_ratio"])


def test_stain_falls_back_to_the_reference_flagged(tmp_path, pair):
    ref = np.asarray(reference_stain()["matrix"])
    assert stain_degeneracy(reference_stain()) == ""
    parallel = dict(reference_stain(), matrix=np.stack([ref[:, 0], ref[:, 0] * 0.99 + 0.01, ref[:, 2]], 1).tolist())
    assert "apart" in stain_degeneracy(parallel)
    negative = dict(reference_stain(), matrix=np.stack([ref[:, 0], [0.7, 0.7, -0.2], ref[:, 2]], 1).tolist())
    assert "negative OD component" in stain_degeneracy(negative)
    assert "non-finite" in stain_degeneracy(dict(reference_stain(), matrix=np.full((3, 3), np.nan).tolist()))

    # a slide stained with hematoxylin only: Macenko's two vectors come out 0.6° apart
    rng = np.random.default_rng(0)
    od = rng.uniform(0.2, 1.5, (1024, 1024, 1)) * ref[:, 0]
    path = write_tiff(tmp_path / "h_only.tiff", np.clip(od_to_rgb(od), 0, 255).astype(np.uint8))
    tiles = tissue_table(tile_grid(path, None, "h", target_mpp=0.5, tile_px=128), path, None, "h", min_tissue=0.5)
    stain = slide_stain_or_reference(path, tiles[tiles["tissue_keep"]], "h", n_tiles=8, min_tissue_tiles=4)
    assert stain["matrix"] == reference_stain()["matrix"] and "apart" in stain["fallback"]
    assert "rejected" in stain
    # too little tissue: three tiles where four are asked for
    he = str(pair / "he.tiff")
    tiles = tissue_table(tile_grid(he, None, "s", target_mpp=0.5, tile_px=128), he, None, "s", min_tissue=0.5)
    few = slide_stain_or_reference(he, tiles[tiles["tissue_keep"]].head(3), "s", n_tiles=8, min_tissue_tiles=4)
    assert few["fallback"].startswith("too little tissue: 3 tissue tiles") and few["method"] == "reference"
    fine = slide_stain_or_reference(he, tiles[tiles["tissue_keep"]], "s", n_tiles=8, min_tissue_tiles=4)
    assert "fallback" not in fine and fine["method"] == "macenko_pca"


def test_exclude_list(tmp_path):
    for name in ("a.svs", "b.svs"):
        (tmp_path / name).write_bytes(b"x")
    sheet = pd.DataFrame({"sample": ["a", "b", "c"], "he": [str(tmp_path / "a.svs"), str(tmp_path / "b.svs"),
                                                            str(tmp_path / "missing.svs")]})
    out = resolve_sheet(sheet, {}, str(tmp_path), exclude=["c"])  # c's missing file is no error: c is gone
    assert list(out["sample"]) == ["a", "b"]
    with pytest.raises(SampleSheetError, match="exclude: 'x' not in the sample sheet"):
        resolve_sheet(sheet, {}, str(tmp_path), exclude=["c", "x"])


def test_records_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv(KEEP_GOING_ENV, "0")
    run_stage("stain", "s", tmp_path / "s.json", lambda: {"fallback": ""}, on_failure=dict,
              counts=lambda s: {"fallback": s["fallback"]})
    assert read_records([tmp_path / "s.json"]) == [{"sample": "s", "stage": "stain", "ok": True, "skipped": False,
                                                    "reason": "", "file": "", "fallback": ""}]


def test_placeholder_figure_is_a_png(tmp_path):
    from PIL import Image

    placeholder_figure(tmp_path / "m.png", "regressor: bad", "SlideError: sample bad: cannot open bad_he.tiff " * 3)
    assert Image.open(tmp_path / "m.png").format == "PNG"


def test_an_unregistrable_pair_is_left_out_at_registration_with_its_reason():
    from tumormap.qc import qc_table

    good = [{"sample": "a", "stage": st, "ok": True, "reason": "", "n_tiles": 9, "n_tissue": 9, "n_kept": 5,
             "n_ratio": 5} for st in ("tile", "tissue", "ssim", "ground_truth", "stain")]
    records = good + [dict(r, sample="b") for r in good]
    registration = [{"stage": "register", "sample": "b", "ok": False, "reason": "score 0.31 < min_score 0.45"},
                    {"stage": "register", "sample": "a", "ok": True, "reason": ""}]
    table = qc_table(records + registration, ["a", "b"], ["a", "b"]).set_index("sample")
    assert table.loc["a", "usable"] and not table.loc["b", "usable"]
    assert table.loc["b", "stage"] == "register" and "min_score" in table.loc["b", "reason"]
    assert qc_table(records, ["a", "b"], ["a", "b"])["usable"].all()  # registration off: no record needed
