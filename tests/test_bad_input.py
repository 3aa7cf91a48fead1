"""Bad input gets a clear error naming sample and file, or a warning and an empty but valid output."""
import hashlib
import json
import re
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
    cfg["train"]["models"].pop("alphabeta")  # these sheets have no slide labels
    cfg["train"]["models"].pop("llp")  # keeps these runs short; its inputs are checked in test_llp.py
    for section, values in changes.items():
        if isinstance(values, dict):
            cfg[section].update(values)
        else:
            cfg[section] = values
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
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]  # keep-going: the bad sample is flagged...
    assert (tmp_path / "results/ssim/good.parquet").exists()  # ...and the good one finished
    assert (tmp_path / "resources/downloads/bad/bad_he.svs").read_bytes() == junk  # downloaded and verified
    assert pd.read_parquet(tmp_path / "results/tiles/bad.parquet").empty  # a valid, empty table
    assert pd.read_parquet(tmp_path / "results/ssim/bad.parquet").empty
    record = json.loads((tmp_path / "results/qc/tile/bad.json").read_text())
    assert record["ok"] is False and record["file"] == "resources/downloads/bad/bad_he.svs"
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
    assert tiles_geojson(predictions, sample="blank", model="regressor", tumor_threshold=0.5)["features"] == []
    assert slide_summary(predictions, tissue, sample="blank", model="regressor")["n_tissue_tiles"] == 0


# ------------------------------------------------------------------ one bad slide in a cohort (issue #10, item 2)
GOOD = {"good1": "train", "good2": "val", "good3": "test"}  # pinned: a 4-sample cohort needs each split


def bad_cohort(workdir: Path) -> dict:
    """Three demo pairs and one pair whose H&E file is truncated (as an interrupted copy leaves it)."""
    rows = ["sample\the\tihc\tpatient\toffset_x\toffset_y\tsplit"]
    for seed, (sample, split) in enumerate({**GOOD, "bad": "train"}.items(), start=11):
        make_demo_pair(str(workdir / f"{sample}_he.tiff"), str(workdir / f"{sample}_ihc.tiff"),
                       str(workdir / f"{sample}_truth.parquet"), seed=seed, size_px=1536, region_px=512)
        rows.append(f"{sample}\t{sample}_he.tiff\t{sample}_ihc.tiff\tP_{sample}\t12\t-8\t{split}")
    data = (workdir / "bad_he.tiff").read_bytes()
    (workdir / "bad_he.tiff").write_bytes(data[: len(data) * 2 // 3])
    (workdir / "s.tsv").write_text("\n".join(rows) + "\n")
    cfg = write_config(workdir, "s.tsv", ssim={"read_px": 64}, stain={"n_tiles": 4}, maps={"thumbnail_px": 256})
    cfg["ground_truth"]["nuclei_model"]["source"] = str(REPO / "tests/data/nuclei_model_gbm40")
    cfg["train"]["models"]["regressor"].update(epochs=1, input_px=32, batch_size=16, workers=0)
    cfg["train"]["models"]["mil"].update(epochs=1, input_px=32, bag_size=8, bags_per_sample=2, map_k=8, workers=0)
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    return cfg


@pytest.fixture(scope="module")
def bad_cohort_run(tmp_path_factory):
    """`snakemake all` without, then with -k, on three good pairs and one truncated H&E."""
    workdir = tmp_path_factory.mktemp("bad_cohort")
    cfg = bad_cohort(workdir)
    without_k = workflow(workdir, "all")
    no_tiles = not (workdir / "results/tiles/bad.parquet").exists()
    with_k = workflow(workdir, "--keep-going", "all")
    return workdir, cfg, without_k, no_tiles, with_k


@pytest.mark.slow
def test_without_keep_going_the_error_names_sample_and_file(bad_cohort_run):
    _, _, proc, no_tiles, _ = bad_cohort_run
    assert proc.returncode != 0 and no_tiles
    assert "sample bad: cannot open bad_he.tiff as a slide" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_with_keep_going_the_truncated_slide_is_left_out_and_the_cohort_goes_on(bad_cohort_run):
    workdir, cfg, _, _, proc = bad_cohort_run
    out = proc.stdout + proc.stderr
    for model in cfg["train"]["models"]:
        for path in ("model.pt", "card.json"):
            assert (workdir / f"results/models/{model}/{path}").stat().st_size > 0, (model, path, out[-3000:])
        assert (workdir / f"results/evaluate/{model}/metrics.json").exists()
        for sample in GOOD:
            assert (workdir / f"results/maps/{model}/{sample}.png").stat().st_size > 0
        summary = pd.read_csv(workdir / f"results/maps/{model}/summary.csv")
        assert set(GOOD) <= set(summary["sample"])
    assert (workdir / "results/evaluate/comparison.json").exists()
    for sample in GOOD:
        assert (workdir / f"results/ground_truth/{sample}.qc.png").exists()
    dataset = pd.read_parquet(workdir / "results/dataset.parquet")
    assert set(dataset["sample"]) == {s for s, split in GOOD.items() if split != "test"}  # test slides never train
    qc = pd.read_csv(workdir / "results/qc/samples.tsv", sep="\t").set_index("sample")
    assert qc.loc[list(GOOD), "usable"].all() and (qc.loc[list(GOOD), "n_ratio"] > 0).all()
    bad = qc.loc["bad"]
    assert not bad["usable"] and bad["stage"] == "tile" and bad["file"] == "bad_he.tiff"
    assert "cannot open bad_he.tiff as a slide" in bad["reason"]
    assert "fallback" in json.loads((workdir / "results/stain/bad.json").read_text())
    # No job failed but, at most, the bad sample's map (its slide cannot be drawn): nothing else is missing.
    assert set(re.findall(r"Error in rule (\w+):", out)) <= {"tumor_map"}, out[-3000:]


@pytest.mark.slow
def test_cli_maps_every_readable_slide_and_lists_the_failures(bad_cohort_run, tmp_path):
    """Two slides map; a third without µm/px and a truncated one are listed; summary.csv has the two."""
    workdir, _, _, _, _ = bad_cohort_run
    nompp = tmp_path / "nompp.tiff"
    tifffile.imwrite(nompp, np.full((512, 512, 3), 200, np.uint8), tile=(256, 256), photometric="rgb")
    slides = [workdir / "good1_he.tiff", workdir / "good2_he.tiff", nompp, workdir / "bad_he.tiff"]
    proc = subprocess.run([str(Path(sys.executable).parent / "tumormap"), "predict", "--model",
                           str(workdir / "results/models/regressor"), *map(str, slides), "--out", str(tmp_path / "out"),
                           "--config", str(workdir / "config.yaml")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr[-3000:]
    summary = pd.read_csv(tmp_path / "out/summary.csv")
    assert list(summary["sample"]) == ["good1_he", "good2_he"]
    assert f"{nompp}: not mapped" in proc.stderr and "--mpp" in proc.stderr
    assert f"{workdir / 'bad_he.tiff'}: not mapped" in proc.stderr and "2 of 4 slides mapped" in proc.stderr


def test_exclude_drops_samples_and_unknown_names_are_errors(tmp_path):
    (tmp_path / "s.tsv").write_text("sample\the\tihc\na\ta_he.svs\ta_ihc.svs\nb\tmissing_he.svs\tmissing_ihc.svs\n")
    for name in ("a_he.svs", "a_ihc.svs"):
        (tmp_path / name).write_bytes(b"not read in a dry run")
    write_config(tmp_path, "s.tsv", exclude=None)
    cfg = yaml.safe_load((tmp_path / "config.yaml").read_text())
    for exclude, ok in ((["b"], True), (["nope"], False)):
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(dict(cfg, exclude=exclude)))
        proc = workflow(tmp_path, "-n", "results/qc/samples.tsv")
        out = proc.stdout + proc.stderr
        if ok:  # b's missing files are no error: b is gone from every target
            assert proc.returncode == 0, out[-3000:]
            assert "results/tiles/a.parquet" in out and "results/tiles/b.parquet" not in out
        else:
            assert proc.returncode != 0 and "exclude: 'nope' not in the sample sheet" in out


def test_an_empty_split_stops_only_the_rules_that_need_the_split(tmp_path):
    (tmp_path / "s.tsv").write_text("sample\the\tihc\na\ta_he.svs\ta_ihc.svs\n")
    for name in ("a_he.svs", "a_ihc.svs"):
        (tmp_path / name).write_bytes(b"not read in a dry run")
    write_config(tmp_path, "s.tsv")
    tiles = workflow(tmp_path, "-n", "results/ssim/a.parquet")  # one patient: per-sample stages still run
    assert tiles.returncode == 0 and "results/ssim/a.parquet" in tiles.stdout, (tiles.stdout + tiles.stderr)[-3000:]
    split = workflow(tmp_path, "results/split.tsv")  # the split job itself fails, naming the problem
    out = split.stdout + split.stderr
    assert split.returncode != 0 and "split: no patient in" in out and "split.seed 170" in out, out[-3000:]
    assert not (tmp_path / "results/split.tsv").exists()
