"""Training the tile regressor: seeded, checkpointed every epoch, resumable.

A trained model is a folder: ``model.pt`` (weights) and ``card.json`` (everything
needed to use it: kind, input µm/px, tile size, channels, stain target, metrics,
software versions, config hash).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import random
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .io import atomic_path, read_json, save_figure, write_json
from .logs import get_logger

log = get_logger("train")

CARD_VERSION = 1


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def pick_device(prefer: str = "auto") -> torch.device:
    if prefer == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def config_hash(cfg: dict) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


def software_versions() -> dict:
    import torchvision

    from . import __version__

    return {"tumormap": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "python": platform.python_version()}


def save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, expected_hash: str) -> dict | None:
    """The last checkpoint if it belongs to this very configuration, else None."""
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("config_hash") != expected_hash:
        log.info("checkpoint %s is from another configuration: starting afresh", path)
        return None
    return state


def autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def plot_history(history: pd.DataFrame, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    for col, label in (("train_loss", "train L1"), ("val_mae", "validation MAE")):
        if col in history and history[col].notna().any():
            ax.plot(history["epoch"], history[col], marker="o", ms=3, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("tumor ratio error")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def run_epochs(model, optimizer, scheduler, *, epochs: int, checkpoint_dir: str, chash: str,
               train_epoch: Callable[[], tuple[float, int]], validate: Callable[[], float],
               generators: dict[str, torch.Generator]) -> tuple[list[dict], dict]:
    """The shared epoch loop: train, validate, keep the best weights, checkpoint atomically.

    Resumes from ``checkpoint_dir/last.pt`` when it was written with the same ``chash``
    (model, optimiser, scheduler, history, best weights and every random generator), so a
    preempted job continues where it stopped. ``train_epoch`` returns (mean loss, images).
    """
    ckpt_path = Path(checkpoint_dir) / "last.pt"
    ckpt_path.parent.mkdir(parents=True, exist_ok=True)
    state = load_checkpoint(ckpt_path, chash)
    start_epoch, history, best = 0, [], {"val_mae": float("inf"), "state": None, "epoch": -1}
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, history, best = state["epoch"] + 1, state["history"], state["best"]
        torch.set_rng_state(state["rng_torch"])
        for name, gen in generators.items():
            gen.set_state(state["rng"][name])
        log.info("resuming from %s at epoch %d of %d", ckpt_path, start_epoch + 1, epochs)
    for epoch in range(start_epoch, epochs):
        t0 = time.time()
        model.train()
        train_loss, n_images = train_epoch()
        scheduler.step()
        val_mae = validate()
        seconds = time.time() - t0
        row = {"epoch": epoch + 1, "train_loss": train_loss, "val_mae": val_mae, "lr": scheduler.get_last_lr()[0],
               "seconds": seconds, "images_per_s": n_images / max(1e-9, seconds)}
        history.append(row)
        score = val_mae if np.isfinite(val_mae) else train_loss
        if score <= best["val_mae"]:
            best = {"val_mae": score, "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                    "epoch": epoch + 1}
        save_checkpoint(ckpt_path, {"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                    "scheduler": scheduler.state_dict(), "history": history, "best": best,
                                    "config_hash": chash, "rng_torch": torch.get_rng_state(),
                                    "rng": {name: gen.get_state() for name, gen in generators.items()}})
        log.info("epoch %d/%d: train L1 %.4f, val MAE %.4f, %.1f img/s, %.1f s", epoch + 1, epochs, train_loss,
                 val_mae, row["images_per_s"], seconds)
    return history, best


def write_model_folder(out_dir: str, best: dict, history: list[dict], card: dict, title: str) -> dict:
    """``model.pt`` (best weights), ``history.csv``, ``loss_curve.png`` and ``card.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "model.pt") as tmp:
        torch.save(best["state"], tmp)
    hist = pd.DataFrame(history)
    with atomic_path(out / "history.csv") as tmp:
        hist.to_csv(tmp, index=False)
    plot_history(hist, str(out / "loss_curve.png"), title)
    card = {"card_version": CARD_VERSION, **card, "software": software_versions()}
    card["training"].update(best_epoch=best["epoch"], best_val_mae=best["val_mae"])
    write_json(card, out / "card.json")
    return card


def train_regressor(dataset_table: pd.DataFrame, slide_paths: dict[str, str], stains: dict[str, dict],
                    target_stain: dict, out_dir: str, checkpoint_dir: str, cfg: dict, *, tile_mpp: float,
                    tile_px: int) -> dict:
    """Train ``TumorRatioRegressor`` on the train split, select on validation MAE.

    ``dataset_table``: kept tiles with a finite ``tumor_ratio`` and a ``split`` column.
    Writes ``out_dir/{model.pt, card.json, history.csv, loss_curve.png}``; resumes from
    ``checkpoint_dir/last.pt`` when it was written by the same configuration.
    """
    from .regressor import TumorRatioRegressor, ratio_to_bin
    from .tile_data import BatchTransform, TileDataset, make_loader

    seed = int(cfg.get("seed", 0))
    seed_everything(seed)
    device = pick_device(cfg.get("device", "auto"))
    channels = cfg.get("channels", "rgb")
    in_channels = 3 if channels == "rgb" else 5
    use_bins = bool(cfg.get("bins", False))
    input_px = int(cfg.get("input_px") or tile_px)
    table = dataset_table[np.isfinite(dataset_table["tumor_ratio"])]
    train_t, val_t = table[table["split"] == "train"], table[table["split"] == "val"]
    if len(train_t) == 0:
        raise ValueError("no training tiles: every train-split tile lacks ground truth (see ssim/ground_truth logs)")
    samples = sorted(set(table["sample"]))
    transform = BatchTransform([stains[s] for s in samples], target_stain, channels).to(device)

    def loader(t, shuffle):
        ds = TileDataset(t, slide_paths, input_px, samples=samples)
        return make_loader(ds, batch_size=int(cfg["batch_size"]), shuffle=shuffle, workers=int(cfg.get("workers", 2)),
                           seed=seed, pin_memory=device.type == "cuda")

    train_loader = loader(train_t, True)
    val_loader = loader(val_t, False) if len(val_t) else None
    model = TumorRatioRegressor(in_channels, bins=use_bins, weights_path=cfg.get("pretrained_weights")).to(device)
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(cfg["lr"]), weight_decay=float(cfg["weight_decay"]))
    epochs = int(cfg["epochs"])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs))
    chash = config_hash({"kind": "regressor", "cfg": cfg, "tiles": int(len(table)), "samples": samples,
                         "tile_px": tile_px, "mpp": tile_mpp})
    augment_gen = torch.Generator().manual_seed(seed + 1)
    log.info("training the regressor on %s: %d train tiles, %d val tiles, %d epochs, input %d px, channels %s",
             device, len(train_t), len(val_t), epochs, input_px, channels)

    def train_epoch():
        total, n = 0.0, 0
        for images, targets, sample_idx in train_loader:
            images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            x = transform(images, sample_idx.to(device), augment=True, generator=augment_gen)
            with autocast(device):
                out = model(x)
                loss = F.l1_loss(out["ratio"].float(), targets)
                if use_bins:
                    loss = loss + 0.1 * F.cross_entropy(out["bin_logits"].float(), ratio_to_bin(targets))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(targets)
            n += len(targets)
        return total / max(1, n), n

    history, best = run_epochs(
        model, optimizer, scheduler, epochs=epochs, checkpoint_dir=checkpoint_dir, chash=chash,
        train_epoch=train_epoch,
        validate=lambda: evaluate_loader(model, transform, val_loader, device) if val_loader else float("nan"),
        generators={"augment": augment_gen, "loader": train_loader.generator})
    card = {
        "kind": "regressor", "architecture": "resnet18", "input_mpp": tile_mpp, "tile_px": tile_px,
        "input_px": input_px, "channels": channels, "in_channels": in_channels, "bins": use_bins,
        "stain": {"method": "macenko", "target": target_stain},
        "training": {"samples": samples, "n_train_tiles": int(len(train_t)), "n_val_tiles": int(len(val_t)),
                     "epochs": epochs, "config": cfg},
        "config_hash": chash,
    }
    return write_model_folder(out_dir, best, history, card, "tile regressor")


@torch.no_grad()
def evaluate_loader(model, transform, loader, device) -> float:
    model.eval()
    errors, n = 0.0, 0
    for images, targets, sample_idx in loader:
        x = transform(images.to(device), sample_idx.to(device))
        with autocast(device):
            pred = model(x)["ratio"].float()
        errors += (pred.cpu() - targets).abs().sum().item()
        n += len(targets)
    return errors / max(1, n)


def load_card(model_dir: str | os.PathLike) -> dict:
    """A model folder's card, checked; errors name the folder and what is wrong."""
    model_dir = Path(model_dir)
    card_path = model_dir / "card.json"
    if not card_path.exists():
        raise ValueError(f"model folder {model_dir} has no card.json: not a tumormap model")
    try:
        card = read_json(card_path)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{card_path} is not valid JSON: {exc}") from None
    missing = [k for k in ("card_version", "kind", "input_mpp", "tile_px", "input_px", "channels", "stain")
               if k not in card]
    if missing:
        raise ValueError(f"{card_path} lacks {', '.join(missing)}")
    if card["card_version"] > CARD_VERSION:
        raise ValueError(f"{card_path} has card_version {card['card_version']}; this tumormap reads ≤ {CARD_VERSION}")
    if not (model_dir / "model.pt").exists():
        raise ValueError(f"model folder {model_dir} has a card but no model.pt")
    return card
