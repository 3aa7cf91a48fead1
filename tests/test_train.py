"""The trainers on a small synthetic slide: learning signal, checkpoints, resume after a kill."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tumormap.demo import make_demo_pair
from tumormap.stain import reference_stain
from tumormap.tiling import tile_grid
from tumormap.tissue import tissue_table

CFG = dict(kind="regressor", epochs=4, batch_size=8, lr=1e-3, weight_decay=1e-4, input_px=32, channels="rgb",
           bins=True, workers=0, seed=3, device="cpu")


def labelled_tiles(d: Path, he: str, seed: int) -> pd.DataFrame:
    """Tissue tiles (64 px at 0.5 µm/px) of a new 2048² demo slide, each with its region's true ratio."""
    make_demo_pair(he, str(d / "ihc.tiff"), str(d / "truth.parquet"), seed=seed, size_px=2048, region_px=1024)
    tiles = tissue_table(tile_grid(he, None, "s", target_mpp=0.5, tile_px=64), he, None, "s", min_tissue=0.5)
    tiles = tiles[tiles["tissue_keep"]].copy()
    truth = pd.read_parquet(d / "truth.parquet")
    cx, cy = tiles["he_x"] + tiles["he_extent"] // 2, tiles["he_y"] + tiles["he_extent"] // 2
    tiles["tumor_ratio"] = np.nan
    for r in truth.itertuples():
        inside = ((cx >= r.x0) & (cx < r.x1) & (cy >= r.y0) & (cy < r.y1)).to_numpy()
        tiles.loc[inside, "tumor_ratio"] = r.true_ratio
    return tiles


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Tiles of a 2048² synthetic slide labelled with their region's true ratio; split by region."""
    d = tmp_path_factory.mktemp("train")
    he = str(d / "he.tiff")
    tiles = labelled_tiles(d, he, seed=5)
    tiles["split"] = np.where(tiles["tile_id"] % 5 == 0, "val", "train")
    tiles = tiles[np.isfinite(tiles["tumor_ratio"])].sample(48, random_state=0)
    path = d / "dataset.parquet"
    tiles.to_parquet(path)
    return d, path, he


def train_args(d: Path, dataset_path: Path, he: str, name: str) -> list[str]:
    return [str(dataset_path), he, str(d / name / "model"), str(d / name / "ckpt"), json.dumps(CFG)]


RUNNER = """
import json, sys, pandas as pd
from tumormap.logs import setup_logging
setup_logging(None)
from tumormap.stain import reference_stain
from tumormap.train import train_model
table, he, out, ckpt, cfg = sys.argv[1:]
train_model("regressor", json.loads(cfg), pd.read_parquet(table), {"s": he}, {"s": reference_stain()},
            reference_stain(), out, ckpt, tile_mpp=0.5, tile_px=64, test_samples=["t1"])
"""


def run_training(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", RUNNER, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def test_killed_training_resumes_from_its_checkpoint_and_matches_an_uninterrupted_run(dataset):
    d, path, he = dataset
    full = run_training(train_args(d, path, he, "full"))
    assert full.wait(timeout=600) == 0, full.stdout.read()[-3000:]

    killed = run_training(train_args(d, path, he, "killed"))
    ckpt = d / "killed" / "ckpt" / "last.pt"
    deadline = time.time() + 300
    while time.time() < deadline and killed.poll() is None:
        if ckpt.exists() and torch.load(ckpt, weights_only=False).get("epoch", 0) >= 1:
            break
        time.sleep(0.2)
    assert killed.poll() is None, "training finished before it could be killed"
    killed.send_signal(signal.SIGKILL)  # preemption: no chance to clean up
    killed.wait()
    done_epochs = torch.load(ckpt, weights_only=False)["epoch"] + 1
    assert 1 <= done_epochs < CFG["epochs"] and not (d / "killed" / "model" / "model.pt").exists()

    resumed = run_training(train_args(d, path, he, "killed"))
    out = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, out[-3000:]
    assert f"resuming from {ckpt} at epoch {done_epochs + 1}" in out
    a = pd.read_csv(d / "full" / "model" / "history.csv")
    b = pd.read_csv(d / "killed" / "model" / "history.csv")
    assert list(b["epoch"]) == list(range(1, CFG["epochs"] + 1))
    np.testing.assert_allclose(a["train_loss"], b["train_loss"], rtol=1e-5)  # same run, not a restart from zero
    wa = torch.load(d / "full" / "model" / "model.pt")
    wb = torch.load(d / "killed" / "model" / "model.pt")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)


def test_card_describes_the_model(dataset):
    d, _, _ = dataset
    card = json.loads((d / "full" / "model" / "card.json").read_text())
    assert card["name"] == "regressor" and card["kind"] == "regressor" and card["options"]["bins"] is True
    assert card["input_mpp"] == 0.5 and card["tile_px"] == 64 and card["input_px"] == 32 and card["channels"] == "rgb"
    assert "workers" not in card["options"] and "device" not in card["options"]  # runtime, not the model
    assert card["stain"]["target"]["matrix"] == reference_stain()["matrix"]
    assert card["training"]["train_samples"] == ["s"] and card["training"]["test_samples"] == ["t1"]
    assert card["training"]["n_train_rows"] > 0 and card["software"]["torch"] == torch.__version__
    assert (d / "full" / "model" / "loss_curve.png").stat().st_size > 0


def test_mil_model_learns_and_maps_with_neighbourhoods(dataset, tmp_path):
    from tumormap.models.mil import nearest_tiles
    from tumormap.predict import load_model
    from tumormap.train import train_model

    d, path, he = dataset
    table = pd.read_parquet(path)
    table["nuclear_area_px"], table["positive_area_px"] = 1000.0, 1000.0 * table["tumor_ratio"]
    cfg = dict(kind="mil", bag_size=8, bags_per_sample=12, n_features=16, n_bins=11, sigma=0.05, dropout=0.0,
               map_k=4, epochs=3, batch_size=2, lr=1e-3, weight_decay=5e-4, input_px=32, workers=0, seed=0,
               device="cpu")
    card = train_model("mil", cfg, table, {"s": he}, {"s": reference_stain()}, reference_stain(),
                       str(tmp_path / "mil"), str(tmp_path / "ckpt"), tile_mpp=0.5, tile_px=64)
    history = pd.read_csv(tmp_path / "mil" / "history.csv")
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    assert card["kind"] == "mil" and card["options"]["map_k"] == 4
    model, card, kind = load_model(tmp_path / "mil", torch.device("cpu"))
    tiles = pd.read_parquet(path)
    values = kind.predict_tiles(model, card, tiles, he, reference_stain(), sample="s", batch_size=16, workers=0,
                                progress=False)["predicted_ratio"].to_numpy()
    assert values.shape == (len(tiles),) and np.isfinite(values).all()
    assert values.std() > 0  # the map is not one value
    idx = nearest_tiles(tiles["row"].to_numpy(), tiles["col"].to_numpy(), 4)
    assert (idx[:, 0] == np.arange(len(tiles))).all()  # each tile's bag starts with itself


def _train(d, path, he, name, cfg, ckpt="ckpt", stains=None, table=None):
    from tumormap.train import train_model

    table = pd.read_parquet(path) if table is None else table
    return train_model("regressor", cfg, table, {"s": he}, stains or {"s": reference_stain()}, reference_stain(),
                       str(d / name / "model"), str(d / name / ckpt), tile_mpp=0.5, tile_px=64)


def test_a_checkpoint_is_resumed_only_by_the_training_that_wrote_it(dataset, caplog):
    """Same counts, other labels: today's count-keyed checkpoint resumed it; the content key does not."""
    d, path, he = dataset
    cfg = dict(CFG, epochs=2, bins=False)
    _train(d, path, he, "keyed", cfg)
    ckpt = torch.load(d / "keyed" / "ckpt" / "last.pt", weights_only=False)
    assert ckpt["final"] and "optimizer" not in ckpt  # superseded by the final record: no optimiser state
    relabelled = pd.read_parquet(path)
    relabelled["tumor_ratio"] = 1.0 - relabelled["tumor_ratio"]  # same tiles, counts and samples
    with caplog.at_level("INFO", logger="tumormap"):
        card = _train(d, path, he, "keyed", cfg, table=relabelled)
    assert "written by another training" in caplog.text and "resuming" not in caplog.text
    assert len(pd.read_csv(d / "keyed" / "model" / "history.csv")) == 2  # all epochs trained again
    caplog.clear()
    with caplog.at_level("INFO", logger="tumormap"):
        again = _train(d, path, he, "keyed", cfg, table=relabelled)
    assert "already finished" in caplog.text and "reusing it" in caplog.text and again["content_key"] == card["content_key"]
    for changed in (dict(cfg, lr=2e-3), dict(cfg, channels="rgb+he")):  # options are part of the key
        from tumormap.models import get_kind
        from tumormap.train import content_key

        k = get_kind("regressor")
        assert content_key(k(changed), relabelled, {"s": reference_stain()}, reference_stain(), tile_mpp=0.5,
                           tile_px=64) != card["content_key"]
    same = dict(cfg, workers=3, device="cpu")  # runtime options are not
    assert content_key(get_kind("regressor")(same), relabelled, {"s": reference_stain()}, reference_stain(),
                       tile_mpp=0.5, tile_px=64) == card["content_key"]


def test_a_non_finite_loss_stops_training_naming_epoch_batch_and_sample(dataset):
    from tumormap.train import NonFiniteLoss

    d, path, he = dataset
    # a learning rate that blows the weights up: the first step's update overflows them
    with pytest.raises(NonFiniteLoss, match=r"model regressor: loss nan at epoch 1, batch \d+; samples in the batch: "
                                            r"s \(\d+\)"):
        _train(d, path, he, "nan", dict(CFG, epochs=1, lr=1e30, bins=False))
    assert not (d / "nan" / "model" / "model.pt").exists()


def test_the_regressor_learns_beyond_a_constant_predictor(tmp_path):
    """On held-out tiles of a synthetic slide (4 region ratios), MAE must be below 0.7× that of the
    best constant predictor (the training mean)."""
    he = str(tmp_path / "he.tiff")
    tiles = labelled_tiles(tmp_path, he, seed=11)
    tiles = tiles[np.isfinite(tiles["tumor_ratio"])].reset_index(drop=True)
    held_out = ((tiles["row"] + tiles["col"]) % 4 == 0).to_numpy()
    tiles["split"] = np.where(held_out, "test", "train")
    from tumormap.predict import load_model
    from tumormap.train import train_model

    cfg = dict(CFG, epochs=6, bins=False, lr=2e-3)
    train_model("regressor", cfg, tiles, {"s": he}, {"s": reference_stain()}, reference_stain(),
                str(tmp_path / "model"), str(tmp_path / "ckpt"), tile_mpp=0.5, tile_px=64)
    model, card, kind = load_model(tmp_path / "model", torch.device("cpu"))
    test = tiles[held_out].assign(tissue_keep=True)
    pred = kind.predict_tiles(model, card, test.reset_index(drop=True), he, reference_stain(), sample="s",
                              batch_size=32, workers=0, progress=False)["predicted_ratio"].to_numpy()
    truth_test = test["tumor_ratio"].to_numpy()
    model_mae = np.abs(pred - truth_test).mean()
    constant_mae = np.abs(tiles.loc[~held_out, "tumor_ratio"].mean() - truth_test).mean()
    assert len(set(np.round(truth_test, 3))) >= 3, "the held-out tiles must span several ratios"
    assert model_mae < 0.7 * constant_mae, (model_mae, constant_mae)
