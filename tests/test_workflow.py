"""The whole DAG on a tiny embedded demo, through the real Snakemake, StarDist, HistomicsTK and PyTorch."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
N_PAIRS = 3
HE_ONLY = "demo4"


def tiny_config(workdir: Path) -> dict:
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["samples"] = "samples.tsv"
    cfg["demo"].update(size_px=3072, region_px=1024)
    cfg["tile"]["tile_px"] = 128
    cfg["ssim"]["read_px"] = 64
    cfg["ground_truth"]["nuclei_model"].update(epochs=8, steps_per_epoch=30)
    cfg["train"]["models"]["regressor"].update(epochs=2, input_px=64, batch_size=16, workers=0)
    cfg["train"]["models"]["mil"].update(workers=0, epochs=2, bag_size=8, bags_per_sample=6, map_k=8)
    cfg["train"]["models"]["alphabeta"].update(workers=0, epochs=2, patches=16, steps_per_slide=2)
    # region bags of the tiny demo's 1024 px (256 µm) drawn regions: 4×4 tiles of 64 µm
    cfg["train"]["models"]["llp"].update(workers=0, epochs=2, input_px=64, region_um=256, bag_tiles=8,
                                         min_bag_tiles=2, steps_per_bag=1)
    cfg["stain"]["n_tiles"] = 8
    cfg["maps"]["thumbnail_px"] = 256
    return cfg


def write_workdir(workdir: Path, cfg: dict, remote: dict[str, tuple[str, str, str, str]] | None = None) -> None:
    """Config and sheet; ``remote[sample] = (he URL, ihc URL, he md5, ihc md5)`` for served pairs."""
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    rows = ["sample\the\tihc\tpatient\toffset_x\toffset_y\the_md5\tihc_md5\tlabel"]
    for i in range(1, N_PAIRS + 1):
        s = f"demo{i}"
        he, ihc, he_md5, ihc_md5 = (remote or {}).get(s, (f"resources/demo/{s}_he.tiff",
                                                          f"resources/demo/{s}_ihc.tiff", "", ""))
        rows.append(f"{s}\t{he}\t{ihc}\tP{i}\t12\t-8\t{he_md5}\t{ihc_md5}\ttumor")
    rows.append(f"{HE_ONLY}\tresources/demo/{HE_ONLY}_he.tiff\t\tP9\t\t\t\t\t")  # prediction only
    (workdir / "samples.tsv").write_text("\n".join(rows) + "\n")


def envcheck(workdir: Path) -> dict:
    """Environment in which every rule's script may import only what its declared conda env installs
    (tests/envcheck): running the workflow in it is the test that each rule runs in its env."""
    from tests.envcheck_map import write_map

    table = write_map(workdir.parent / f"{workdir.name}.envcheck.json")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "envcheck"), str(REPO)]),
            "TUMORMAP_ENVCHECK": str(table)}


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [str(SNAKEMAKE), *args, "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", "2",
           "--resources", "gpu=1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1500, env=envcheck(workdir))
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def planned_jobs(proc: subprocess.CompletedProcess) -> dict[str, int]:
    """Job counts from a dry run's 'Job stats' table."""
    text = proc.stdout + proc.stderr
    if "Nothing to be done" in text:
        return {}
    block = text.split("Job stats:")[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, flags=re.M)
            if m.group(1) != "total"}


def truth_path(workdir: Path, sample: str) -> Path:
    served = workdir.parent / "served" / f"{sample}_truth.parquet"
    return served if served.exists() else workdir / f"resources/demo/{sample}_truth.parquet"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The tiny demo through the whole DAG; demo2's slides come from a loopback HTTP server."""
    import hashlib

    from tests.http_server import SlideServer
    from tumormap.demo import make_demo_pair

    base = tmp_path_factory.mktemp("demo")
    workdir, served = base / "work", base / "served"
    workdir.mkdir()
    served.mkdir()
    make_demo_pair(str(served / "demo2_he.tiff"), str(served / "demo2_ihc.tiff"), str(served / "demo2_truth.parquet"),
                   seed=202, size_px=3072, region_px=1024)
    cfg = tiny_config(workdir)
    with SlideServer() as server:
        urls, md5s = [], []
        for name in ("demo2_he.tiff", "demo2_ihc.tiff"):
            data = (served / name).read_bytes()
            server.add_file(name, data)
            urls.append(server.file_url(name))
            md5s.append(hashlib.md5(data).hexdigest())
        write_workdir(workdir, cfg, remote={"demo2": (*urls, *md5s)})
        snakemake(workdir, "all")
        yield workdir, cfg


@pytest.mark.slow
def test_every_output_exists_and_is_sane(demo_run):
    workdir, cfg = demo_run
    for i in range(1, N_PAIRS + 1):
        s = f"demo{i}"
        for path in (f"results/tiles/{s}.parquet", f"results/tissue/{s}.parquet", f"results/ssim/{s}.parquet",
                     f"results/ground_truth/{s}.parquet", f"results/ground_truth/{s}.qc.png",
                     f"results/stain/{s}.json", f"results/maps/regressor/{s}.png",
                     f"results/maps/regressor/{s}.npz", f"results/maps/regressor/{s}.json",
                     f"logs/tile/{s}.log", f"benchmarks/ground_truth/{s}.tsv"):
            assert (workdir / path).stat().st_size > 0, path
    for path in ("results/models/regressor/model.pt", "results/models/regressor/card.json",
                 "results/models/regressor/loss_curve.png", "results/evaluate/regressor/metrics.json",
                 "results/evaluate/comparison.json", "results/split.tsv"):
        assert (workdir / path).stat().st_size > 0, path
    downloaded = workdir / "resources/downloads/demo2/demo2_he.tiff"
    assert downloaded.read_bytes() == (workdir.parent / "served/demo2_he.tiff").read_bytes()
    assert "md5" in (workdir / "logs/download/demo2/demo2_he.tiff.log").read_text()
    metrics = json.loads((workdir / "results/evaluate/regressor/metrics.json").read_text())
    split = pd.read_csv(workdir / "results/split.tsv", sep="\t")
    assert metrics["n"] > 0 and metrics["test_samples"] == sorted(split.loc[split["split"] == "test", "sample"])
    assert metrics["bin_source"] == "binned predicted ratio"  # the tiny regressor trains no 3-bin head
    card = json.loads((workdir / "results/models/alphabeta/card.json").read_text())
    assert card["kind"] == "alphabeta" and card["training"]["train_samples"] == sorted(
        split.loc[split["split"] == "train", "sample"])  # labelled slides only: HE_ONLY has no label
    detection = json.loads((workdir / "results/evaluate/alphabeta/metrics.json").read_text())
    assert 0 <= detection["tumor_auc"] <= 1 and detection["n_tumor_tiles"] + detection["n_normal_tiles"] == detection["n"]
    tissue = pd.read_parquet(workdir / "results/tissue/demo1.parquet")
    assert 0 < tissue["tissue_keep"].sum() < len(tissue)  # the demo has glass to drop
    ssim = pd.read_parquet(workdir / "results/ssim/demo1.parquet")
    assert ssim.loc[ssim["keep"], "ssim"].min() >= cfg["ssim"]["ssim_min"]
    gt = pd.read_parquet(workdir / "results/ground_truth/demo1.parquet")
    assert set(gt["tile_id"]) <= set(ssim.loc[ssim["keep"], "tile_id"])  # blank tiles never reach StarDist


@pytest.mark.slow
def test_ground_truth_recovers_the_synthetic_regions(demo_run):
    """Per region of known tumor ratio: DAB-positive nuclear area / all nuclear area within 0.05.

    Regions at least 70 % tissue, so that the kept tiles cover the area the truth is computed on.
    """
    workdir, _ = demo_run
    errors = []
    for i in range(1, N_PAIRS + 1):
        truth = pd.read_parquet(truth_path(workdir, f"demo{i}"))
        tiles = pd.read_parquet(workdir / f"results/ssim/demo{i}.parquet")
        gt = pd.read_parquet(workdir / f"results/ground_truth/demo{i}.parquet").merge(tiles, on=["sample", "tile_id"])
        for region in truth[(~truth["torn"]) & (truth["tissue_fraction"] >= 0.7)].itertuples():
            inside = gt[(gt["he_x"] >= region.x0) & (gt["he_x"] + gt["he_extent"] <= region.x1)
                        & (gt["he_y"] >= region.y0) & (gt["he_y"] + gt["he_extent"] <= region.y1)]
            if inside["nuclear_area_px"].sum() == 0:
                continue
            measured = inside["positive_area_px"].sum() / inside["nuclear_area_px"].sum()
            errors.append(abs(measured - region.true_ratio))
    assert len(errors) >= 6
    assert max(errors) <= 0.05, f"region errors {np.round(errors, 3)}"


@pytest.mark.slow
def test_rerun_does_nothing_and_ssim_min_reruns_only_downstream(demo_run):
    workdir, cfg = demo_run
    assert planned_jobs(snakemake(workdir, "-n", "all")) == {}
    changed = dict(cfg, ssim=dict(cfg["ssim"], ssim_min=cfg["ssim"]["ssim_min"] + 0.05))
    (workdir / "config.yaml").write_text(yaml.safe_dump(changed))
    try:
        jobs = planned_jobs(snakemake(workdir, "-n", "all"))
    finally:
        (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert jobs.get("ssim") == N_PAIRS
    for downstream in ("ground_truth", "dataset", "train_model", "evaluate", "tumor_map"):
        assert jobs.get(downstream, 0) >= 1, (downstream, jobs)
    for upstream in ("demo_pair", "tile", "tissue", "stain", "train_nuclei_model"):
        assert upstream not in jobs, (upstream, jobs)


@pytest.mark.slow
def test_llp_bags_labels_nuclei_and_interval_metrics(demo_run):
    """The llp model end to end: H&E nuclei per sample, region bags labelled from the IHC, interval
    metrics over the test bags against the drawn truth, the ablation table and the cell overlays."""
    workdir, cfg = demo_run
    for s in [f"demo{i}" for i in range(1, N_PAIRS + 1)] + [HE_ONLY]:
        nuclei = pd.read_parquet(workdir / f"results/he_nuclei/{s}.parquet")
        tissue = pd.read_parquet(workdir / f"results/tissue/{s}.parquet")
        assert set(nuclei["tile_id"]) <= set(tissue.loc[tissue["tissue_keep"], "tile_id"])
        per_tile = nuclei.groupby("tile_id").size()
        assert len(per_tile) > 0.8 * tissue["tissue_keep"].sum() and per_tile.median() >= 5, s  # nucleated tissue
        assert nuclei["x"].between(0, 128).all() and nuclei["y"].between(0, 128).all()
    card = json.loads((workdir / "results/models/llp/card.json").read_text())
    assert card["kind"] == "llp" and card["gammas"] == [0, 2, 2, 2, 2] and card["intervals"][0] == "0–1 %"
    metrics = json.loads((workdir / "results/evaluate/llp/metrics.json").read_text())["proportion"]
    bags = pd.DataFrame(metrics["bags"])
    assert len(bags) >= 4 and metrics["truth_n_bags"] == len(bags)
    # the bag label (pooled IHC ratio of its tiles) recovers the drawn region's true ratio
    assert (bags["ihc_ratio"] - bags["true_ratio"]).abs().median() < 0.1, bags
    assert 0 <= metrics["truth_mF1"] <= 1 and len(metrics["truth_recall"]) == 5
    table = pd.read_csv(workdir / "results/evaluate/llp_ablation.csv")
    assert table["model"].tolist() == ["llp"] and table["loss"].iloc[0] == "weighted_focal"
    assert np.isclose(table["mF1"].iloc[0], metrics["truth_mF1"])
    predictions = pd.read_parquet(workdir / f"results/predictions/llp/{HE_ONLY}.parquet")
    assert predictions["predicted_ratio"].between(0, 1).all() and (predictions["n_he_nuclei"] > 0).mean() > 0.8
    assert (workdir / f"results/maps/llp/{HE_ONLY}.cells.png").stat().st_size > 10_000
    summary = pd.read_csv(workdir / "results/maps/llp/summary.csv").set_index("sample")
    pooled = predictions["positive_score"].sum() / (predictions[["positive_score", "negative_score"]].sum().sum())
    assert np.isclose(summary.at[HE_ONLY, "slide_proportion"], pooled, rtol=1e-4)
    assert summary.at[HE_ONLY, "slide_interval"] in card["intervals"]


@pytest.mark.slow
def test_he_only_sample_is_mapped_but_never_trained_on(demo_run):
    workdir, _ = demo_run
    split = pd.read_csv(workdir / "results/split.tsv", sep="\t")
    assert HE_ONLY not in set(split["sample"])
    assert not (workdir / f"results/ssim/{HE_ONLY}.parquet").exists()
    assert not (workdir / f"results/ground_truth/{HE_ONLY}.parquet").exists()
    for model in ("regressor", "mil", "alphabeta", "llp"):  # every kind maps from its card
        arrays = np.load(workdir / f"results/maps/{model}/{HE_ONLY}.npz")
        assert np.isfinite(arrays["predicted"]).sum() > 10 and np.isnan(arrays["ihc"]).all()
        summary = pd.read_csv(workdir / f"results/maps/{model}/summary.csv")
        assert HE_ONLY in set(summary["sample"]) and len(summary) == N_PAIRS + 1
    assert planned_jobs(snakemake(workdir, "-n", "predict")) == {}


@pytest.mark.slow
def test_geojson_lines_up_with_the_tile_table(demo_run):
    import openslide

    from tumormap.export import check_geojson

    workdir, _ = demo_run
    tissue = pd.read_parquet(workdir / f"results/tissue/{HE_ONLY}.parquet")
    collection = json.loads((workdir / f"results/maps/regressor/{HE_ONLY}.geojson").read_text())
    width, height = openslide.OpenSlide(str(workdir / f"resources/demo/{HE_ONLY}_he.tiff")).dimensions
    check_geojson(collection, width, height)  # within the slide, ratios in [0, 1]
    kept = tissue[tissue["tissue_keep"]].set_index("tile_id")
    assert len(collection["features"]) == len(kept)  # one feature per tissue tile
    for feature in collection["features"]:
        tile = kept.loc[feature["properties"]["tile_id"]]
        (x0, y0), (x1, _), (_, y2) = feature["geometry"]["coordinates"][0][:3]
        assert (x0, y0) == (tile["he_x"], tile["he_y"]) and x1 - x0 == tile["he_extent"] == y2 - y0


@pytest.mark.slow
def test_cli_gives_the_rules_maps(demo_run, tmp_path):
    workdir, _ = demo_run
    out = tmp_path / "cli"
    proc = subprocess.run([str(Path(sys.executable).parent / "tumormap"), "predict", "--model",
                           str(workdir / "results/models/regressor"), str(workdir / f"resources/demo/{HE_ONLY}_he.tiff"),
                           "--out", str(out), "--config", str(workdir / "config.yaml")], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cli = np.load(out / f"{HE_ONLY}_he.npz")["predicted"]
    rule = np.load(workdir / f"results/maps/regressor/{HE_ONLY}.npz")["predicted"]
    np.testing.assert_allclose(cli, rule, atol=1e-5, equal_nan=True)
    assert (out / f"{HE_ONLY}_he.geojson").exists() and (out / "summary.csv").exists()


@pytest.mark.slow
def test_model_folder_with_a_bad_card_is_refused(demo_run, tmp_path):
    from tumormap.predict import load_model

    workdir, _ = demo_run
    model = tmp_path / "model"
    shutil.copytree(workdir / "results/models/regressor", model)
    card = json.loads((model / "card.json").read_text())
    card["options"]["channels"] = "rgb+he"  # 5 input channels; the weights have 3
    (model / "card.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match="model.pt does not match its card"):
        load_model(model)
    (model / "card.json").unlink()
    with pytest.raises(ValueError, match="has no card.json"):
        load_model(model)


def _run_changed(workdir: Path, cfg: dict) -> tuple[dict[str, int], str]:
    """Write ``cfg``, run `snakemake all` for real; (jobs that ran per rule, output)."""
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake(workdir, "all")
    return planned_jobs(proc), proc.stdout + proc.stderr


@pytest.mark.slow
def test_reruns_redo_exactly_what_changed_and_never_resume_another_training(demo_run, tmp_path):
    """Real reruns on a copy of the finished tiny demo, one change at a time (issue #10, items 1 and 6)."""
    import copy

    from tumormap.split import SplitError, split_samples

    source, cfg = demo_run
    workdir = tmp_path / "work"
    shutil.copytree(source, workdir, symlinks=True)
    cfg = copy.deepcopy(cfg)
    n_models = len(cfg["train"]["models"])

    # maps.tumor_threshold: maps and summaries only, and the GeoJSON classes follow it (a threshold
    # between the predictions, so that both classes occur whatever the tiny model learned)
    predicted = np.sort(pd.read_parquet(workdir / f"results/predictions/regressor/{HE_ONLY}.parquet")["predicted_ratio"])
    threshold = float(predicted[len(predicted) // 2])
    assert threshold != cfg["maps"]["tumor_threshold"] and predicted[0] < threshold
    cfg["maps"]["tumor_threshold"] = threshold
    jobs, _ = _run_changed(workdir, cfg)
    assert jobs.get("tumor_map") == n_models * (N_PAIRS + 1) and jobs.get("map_summary") == n_models, jobs
    assert "predict_tiles" not in jobs and "train_model" not in jobs, jobs
    features = json.loads((workdir / f"results/maps/regressor/{HE_ONLY}.geojson").read_text())["features"]
    tumor = [f["properties"]["measurements"]["tumor_ratio"] >= threshold for f in features]
    assert [f["properties"]["classification"]["name"] == "Tumor" for f in features] == tumor and any(tumor)

    # QC gallery size, StarDist batch size and threads: the QC gallery only, no StarDist ground truth
    cfg["ground_truth"].update(qc_tiles=2, batch_size=4, threads=1)
    jobs, _ = _run_changed(workdir, cfg)
    assert set(jobs) <= {"ground_truth_qc", "all"} and jobs.get("ground_truth_qc") == N_PAIRS, jobs

    # how to run (workers, device, prediction batch size) retrains and predicts nothing
    for entry in cfg["train"]["models"].values():
        entry.update(workers=1, device="cpu")
    cfg["maps"]["batch_size"] = 16
    jobs, _ = _run_changed(workdir, cfg)
    assert jobs == {}, jobs

    # a test slide's ground truth changes: evaluation follows, training does not
    split = pd.read_csv(workdir / "results/split.tsv", sep="\t").set_index("sample")["split"]
    test_sample = split[split == "test"].index[0]
    sheet = (workdir / "samples.tsv").read_text().splitlines()
    sheet = [line.replace("\t12\t-8", "\t14\t-8") if line.startswith(f"{test_sample}\t") else line for line in sheet]
    (workdir / "samples.tsv").write_text("\n".join(sheet) + "\n")
    jobs, _ = _run_changed(workdir, cfg)
    assert jobs.get("ground_truth") == 1 and jobs.get("evaluate") == n_models, jobs
    assert "train_model" not in jobs and "dataset" not in jobs, jobs

    # split.seed moves the test slide: both models train all their epochs again, on the new split
    patients = pd.DataFrame({"sample": [f"demo{i}" for i in range(1, N_PAIRS + 1)],
                             "patient": [f"P{i}" for i in range(1, N_PAIRS + 1)]})
    for seed in range(cfg["split"]["seed"] + 1, cfg["split"]["seed"] + 500):
        try:
            new = split_samples(patients, cfg["split"]["fractions"], seed).set_index("sample")["split"]
        except SplitError:
            continue
        if new[test_sample] != "test":
            break
    new_test = new[new == "test"].index[0]
    cfg["split"]["seed"] = seed
    jobs, out = _run_changed(workdir, cfg)
    assert jobs.get("dataset") == 1 and jobs.get("train_model") == n_models, jobs
    for name, entry in cfg["train"]["models"].items():
        log = (workdir / f"logs/train_model/{name}.log").read_text()
        assert "resuming" not in log and "reusing" not in log, log[-2000:]
        assert len(pd.read_csv(workdir / f"results/models/{name}/history.csv")) == entry["epochs"]
        card = json.loads((workdir / f"results/models/{name}/card.json").read_text())["training"]
        assert new_test not in card["train_samples"] + card["val_samples"] and card["test_samples"] == [new_test]
        assert sorted(card["train_samples"] + card["val_samples"]) == sorted(new[new != "test"].index)
    metrics = json.loads((workdir / "results/evaluate/regressor/metrics.json").read_text())
    assert metrics["test_samples"] == [new_test]

    # the DAB threshold changes every ratio: ground truth, then a fresh training (not a resume)
    cfg["ground_truth"]["dab_threshold"] = 0.3
    jobs, _ = _run_changed(workdir, cfg)
    assert jobs.get("ground_truth") == N_PAIRS and jobs.get("train_model") == n_models, jobs
    for name, entry in cfg["train"]["models"].items():
        log = (workdir / f"logs/train_model/{name}.log").read_text()
        assert "written by another training" in log and "resuming" not in log and "reusing" not in log
        assert len(pd.read_csv(workdir / f"results/models/{name}/history.csv")) == entry["epochs"]
