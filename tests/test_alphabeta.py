"""α/β weak supervision (Lerousseau et al.): proxy labels, the grid, the loss, and a tiny run that learns."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from tumormap.demo import make_demo_pair
from tumormap.evaluate import region_fraction, roc_auc
from tumormap.stain import estimate_slide_stain, reference_stain
from tumormap.tiling import tile_grid
from tumormap.tissue import tissue_table
from tumormap.weak_labels import check_alpha_beta, expand_grids, n_selected, paper_grid, proxy_labels

REPO = Path(__file__).resolve().parents[1]
SCORES = [0.1, 0.9, 0.5, 0.7, 0.3, 0.2, 0.8, 0.4, 0.6, 0.0]


def test_proxy_labels_pick_exactly_the_top_alpha_and_bottom_beta_patches():
    labels, mask = proxy_labels(SCORES, "tumor", alpha=0.2, beta=0.3)
    assert sorted(np.flatnonzero(labels == 1)) == [1, 6]          # 0.9, 0.8
    assert sorted(np.flatnonzero(mask & (labels == 0))) == [0, 5, 9]  # 0.1, 0.2, 0.0
    assert mask.sum() == 5  # the other five patches stay out of the loss


def test_proxy_label_counts_floor_alpha_n_without_float_error():
    assert n_selected(0.2, 7) == 1 and n_selected(0.5, 7) == 3 and n_selected(0.29, 100) == 29
    labels, mask = proxy_labels(np.arange(7.0), "tumor", alpha=0.2, beta=0.5)
    assert list(np.flatnonzero(labels)) == [6] and list(np.flatnonzero(mask & (labels == 0))) == [0, 1, 2]
    labels, mask = proxy_labels(np.arange(4.0), "tumor", alpha=0.2, beta=0.2)  # ⌊0.8⌋ = 0: nothing labelled
    assert not mask.any()


def test_ties_rank_by_index_so_top_and_bottom_never_overlap():
    labels, mask = proxy_labels(np.zeros(5), "tumor", alpha=0.4, beta=0.6)
    assert list(np.flatnonzero(labels)) == [0, 1] and list(np.flatnonzero(mask & (labels == 0))) == [2, 3, 4]


def test_normal_slides_label_every_patch_zero_and_alpha_beta_over_one_is_refused():
    labels, mask = proxy_labels(SCORES, "normal", alpha=0.2, beta=0.2)
    assert mask.all() and not labels.any()
    with pytest.raises(ValueError, match=r"train.models.x: alpha \+ beta must be ≤ 1 \(got 0.8 \+ 0.4"):
        check_alpha_beta(0.8, 0.4, "train.models.x")
    with pytest.raises(ValueError, match="slide label must be one of tumor, normal"):
        proxy_labels(SCORES, "benign", 0.2, 0.2)


def test_paper_grid_has_its_fifteen_configurations_as_named_entries():
    grid = paper_grid()
    assert len(grid) == 15 and (0.2, 0.2) in grid and (1.0, 0.0) in grid and (0.4, 0.8) not in grid
    models = expand_grids({"reg": {"kind": "regressor"}, "ab": {"kind": "alphabeta", "alphabeta_grid": "paper",
                                                                "epochs": 3}})
    assert len(models) == 16 and models["reg"] == {"kind": "regressor"}
    assert models["ab_a20_b20"] == {"kind": "alphabeta", "epochs": 3, "alpha": 0.2, "beta": 0.2}
    with pytest.raises(ValueError, match="alphabeta_grid must be 'paper'"):
        expand_grids({"x": {"kind": "regressor", "alphabeta_grid": "paper"}})


def test_masked_loss_is_bce_over_the_labelled_patches_only():
    from tumormap.models.alphabeta import AlphaBeta

    kind = AlphaBeta({"alpha": 0.2, "beta": 0.3, "c1": 2.0}, "ab")
    logits = torch.tensor(SCORES, requires_grad=True)
    loss = kind.masked_loss(logits, slide_label=1)
    target = torch.tensor([0.0, 1, 0, 0, 0, 0, 1, 0, 0, 0])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits.detach(), target, reduction="none")
    expected = (2 * bce[1] + 2 * bce[6] + bce[0] + bce[5] + bce[9]) / 5
    torch.testing.assert_close(loss.detach(), expected)
    loss.backward()
    assert (logits.grad[[2, 3, 4, 7, 8]] == 0).all() and (logits.grad[[1, 6, 0, 5, 9]] != 0).all()
    with pytest.raises(ValueError, match=r"alpha \+ beta must be ≤ 1"):
        AlphaBeta({"alpha": 0.8, "beta": 0.4}, "ab")


def test_alpha_beta_over_one_stops_the_workflow_before_any_job(tmp_path):
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["samples"] = "s.tsv"
    cfg["train"]["models"] = {"ab": {"kind": "alphabeta", "alpha": 0.8, "beta": 0.4}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "s.tsv").write_text("sample\the\tlabel\na\ta.svs\ttumor\n")
    (tmp_path / "a.svs").write_bytes(b"not read in a dry run")
    proc = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "-n", "-s", str(REPO / "Snakefile"),
                           "-d", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "config train.models.ab: alpha + beta must be ≤ 1" in proc.stdout + proc.stderr


def test_alpha_beta_model_without_slide_labels_never_blocks_the_per_sample_stages(tmp_path):
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["samples"] = "s.tsv"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "s.tsv").write_text("sample\the\na\ta.svs\nb\tb.svs\n")  # no labels, and too few for a split
    for s in "ab":
        (tmp_path / f"{s}.svs").write_bytes(b"not read in a dry run")

    def dry_run(*targets):
        return subprocess.run([str(Path(sys.executable).parent / "snakemake"), "-n", *targets, "-s",
                               str(REPO / "Snakefile"), "-d", str(tmp_path)], capture_output=True, text=True, timeout=300)

    assert dry_run("results/tissue/a.parquet").returncode == 0
    proc = dry_run("--forcerun", "tile", "results/tissue/a.parquet")  # forcerun builds more of the DAG
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]


def slide_tiles(d: Path, name: str, seed: int, tumor_free: bool) -> tuple[pd.DataFrame, str, pd.DataFrame]:
    """Tissue tiles (64 px at 0.5 µm/px) of a new 2048² demo slide, its path and its region truth."""
    he = str(d / f"{name}_he.tiff")
    make_demo_pair(he, str(d / f"{name}_ihc.tiff"), str(d / f"{name}_truth.parquet"), seed=seed, size_px=2048,
                   region_px=512, tumor_free=tumor_free)
    tiles = tissue_table(tile_grid(he, None, name, target_mpp=0.5, tile_px=64), he, None, name, min_tissue=0.5)
    return tiles[tiles["tissue_keep"]].reset_index(drop=True), he, pd.read_parquet(d / f"{name}_truth.parquet")


@pytest.mark.slow
def test_tiny_alpha_beta_run_learns_tumor_tiles_from_slide_labels_and_maps_from_its_card(tmp_path):
    """Two tumor and two normal slides, labels per slide only; tile AUC on a held-out slide against
    its drawn tumor regions (fraction ≥ 0.5 vs ≤ 0.2) must clear 0.75 (chance 0.5; measured 0.82).
    Each slide's own Macenko stain is estimated, as the workflow does; the kind's default
    (stain_normalise false) feeds tiles as scanned (0.51 with per-slide normalisation; README)."""
    from tumormap.predict import load_model, predict_slide
    from tumormap.train import train_model

    parts, paths, stains = [], {}, {}
    for name, seed, label, split in (("t1", 31, "tumor", "train"), ("n1", 32, "normal", "train"),
                                     ("t2", 33, "tumor", "train"), ("n2", 34, "normal", "train")):
        tiles, paths[name], _ = slide_tiles(tmp_path, name, seed, tumor_free=label == "normal")
        parts.append(tiles.assign(label=label, split=split, keep=True, tumor_ratio=np.nan))
        stains[name] = estimate_slide_stain(paths[name], tiles, name, n_tiles=16, tile_px=256)
    held_out, held_path, truth = slide_tiles(tmp_path, "h", 35, tumor_free=False)
    options = dict(kind="alphabeta", alpha=0.2, beta=0.2, patches=48, steps_per_slide=6, epochs=10, lr=1e-3,
                   input_px=64, workers=0, seed=0, device="cpu")
    card = train_model("ab", options, pd.concat(parts, ignore_index=True), paths, stains, reference_stain(),
                       str(tmp_path / "model"), str(tmp_path / "ckpt"), tile_mpp=0.5, tile_px=64)
    assert card["kind"] == "alphabeta" and card["training"]["train_samples"] == ["n1", "n2", "t1", "t2"]
    assert card["stain"]["method"] == "none"  # the kind's default: tiles as scanned
    model, card, kind = load_model(tmp_path / "model", torch.device("cpu"))
    held_stain = estimate_slide_stain(held_path, held_out, "h", n_tiles=16, tile_px=256)
    pred = predict_slide(model, card, kind, held_out.assign(sample="h"), held_path, held_stain, sample="h", workers=0)
    fraction = region_fraction(held_out, truth)
    clear = (fraction >= 0.5) | (fraction <= 0.2)
    auc = roc_auc(fraction[clear] >= 0.5, pred["tumor_probability"].to_numpy()[clear])
    print(f"held-out tile AUC {auc:.3f} over {int(clear.sum())} tiles")
    assert auc >= 0.75, auc


def test_roc_auc_counts_ties_as_half():
    assert roc_auc([1, 0], [0.9, 0.1]) == 1.0 and roc_auc([1, 0], [0.1, 0.9]) == 0.0
    assert roc_auc([1, 0, 1, 0], [0.5, 0.5, 0.5, 0.5]) == 0.5 and np.isnan(roc_auc([1, 1], [0.2, 0.3]))
