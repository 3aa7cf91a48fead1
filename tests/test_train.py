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

CFG = dict(epochs=4, batch_size=8, lr=1e-3, weight_decay=1e-4, input_px=32, channels="rgb", bins=True, workers=0,
           seed=3, device="cpu")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Tiles of a 2048² synthetic slide labelled with their region's true ratio; split by region."""
    d = tmp_path_factory.mktemp("train")
    he = str(d / "he.tiff")
    make_demo_pair(he, str(d / "ihc.tiff"), str(d / "truth.parquet"), seed=5, size_px=2048, region_px=1024)
    tiles = tissue_table(tile_grid(he, None, "s", target_mpp=0.5, tile_px=64), he, None, "s", min_tissue=0.5)
    tiles = tiles[tiles["tissue_keep"]].copy()
    truth = pd.read_parquet(d / "truth.parquet")
    cx, cy = tiles["he_x"] + tiles["he_extent"] // 2, tiles["he_y"] + tiles["he_extent"] // 2
    tiles["tumor_ratio"] = np.nan
    for r in truth.itertuples():
        inside = ((cx >= r.x0) & (cx < r.x1) & (cy >= r.y0) & (cy < r.y1)).to_numpy()
        tiles.loc[inside, "tumor_ratio"] = r.true_ratio
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
from tumormap.train import train_regressor
table, he, out, ckpt, cfg = sys.argv[1:]
train_regressor(pd.read_parquet(table), {"s": he}, {"s": reference_stain()}, reference_stain(), out, ckpt,
                json.loads(cfg), tile_mpp=0.5, tile_px=64)
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
        if ckpt.exists() and torch.load(ckpt, weights_only=False)["epoch"] >= 1:
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
    assert card["kind"] == "regressor" and card["input_mpp"] == 0.5 and card["tile_px"] == 64
    assert card["input_px"] == 32 and card["channels"] == "rgb" and card["bins"] is True
    assert card["stain"]["target"]["matrix"] == reference_stain()["matrix"]
    assert card["training"]["n_train_tiles"] > 0 and card["software"]["torch"] == torch.__version__
    assert (d / "full" / "model" / "loss_curve.png").stat().st_size > 0


def test_mil_model_learns_and_maps_with_neighbourhoods(dataset, tmp_path):
    from tumormap.mil_slides import mil_tile_map, nearest_tiles, train_mil
    from tumormap.predict import load_model

    d, path, he = dataset
    table = pd.read_parquet(path)
    table["nuclear_area_px"], table["positive_area_px"] = 1000.0, 1000.0 * table["tumor_ratio"]
    cfg = dict(bag_size=8, bags_per_sample=12, n_features=16, n_bins=11, sigma=0.05, dropout=0.0, map_k=4,
               epochs=3, batch_size=2, lr=1e-3, weight_decay=5e-4, input_px=32, workers=0, seed=0, device="cpu")
    card = train_mil(table, {"s": he}, {"s": reference_stain()}, reference_stain(), str(tmp_path / "mil"),
                     str(tmp_path / "ckpt"), cfg, tile_mpp=0.5, tile_px=64)
    history = pd.read_csv(tmp_path / "mil" / "history.csv")
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    assert card["kind"] == "mil" and card["map_k"] == 4
    model, card = load_model(tmp_path / "mil", torch.device("cpu"))
    tiles = pd.read_parquet(path)
    values = mil_tile_map(model, card, tiles, he, reference_stain(), sample="s", workers=0)
    assert values.shape == (len(tiles),) and ((values >= 0) & (values <= 1)).all()
    idx = nearest_tiles(tiles["row"].to_numpy(), tiles["col"].to_numpy(), 4)
    assert (idx[:, 0] == np.arange(len(tiles))).all()  # each tile's bag starts with itself
