"""Using a trained model: predict the tumor ratio of every tissue tile of a slide."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .logs import get_logger
from .train import autocast, load_card, pick_device

log = get_logger("predict")


def load_model(model_dir: str | Path, device: torch.device | None = None):
    """(model in eval mode, card) from a model folder; everything comes from the card."""
    card = load_card(model_dir)
    device = device or pick_device()
    if card["kind"] == "regressor":
        from .regressor import TumorRatioRegressor

        model = TumorRatioRegressor(card["in_channels"], bins=card.get("bins", False))
    elif card["kind"] == "mil":
        from .mil_slides import build_mil_model

        model = build_mil_model(card)
    else:
        raise ValueError(f"{model_dir}/card.json: unknown model kind '{card['kind']}'")
    state = torch.load(Path(model_dir) / "model.pt", map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"{model_dir}: model.pt does not match its card ({card['kind']}, "
                         f"{card.get('channels')}): {str(exc).splitlines()[0]}") from None
    return model.to(device).eval(), card


def check_resolution(card: dict, tiles: pd.DataFrame, sample: str) -> None:
    """The model must see tiles at the µm/px and size it was trained on."""
    mpp, px = float(tiles["mpp"].iloc[0]), int(tiles["tile_px"].iloc[0])
    if not np.isclose(mpp, card["input_mpp"], rtol=0.02) or px != card["tile_px"]:
        raise ValueError(f"sample {sample}: tiles are {px} px at {mpp} µm/px but the model was trained on "
                         f"{card['tile_px']} px at {card['input_mpp']} µm/px: re-tile with those values")


def slide_batches(card: dict, tissue: pd.DataFrame, he_path: str, stain: dict, *, sample: str, device,
                  batch_size: int, workers: int, progress: bool, what: str):
    """Normalised batches (on ``device``) of a slide's tissue tiles, in table order, as the card says."""
    from .tile_data import BatchTransform, TileDataset, make_loader

    transform = BatchTransform([stain], card["stain"]["target"], card["channels"]).to(device)
    loader = make_loader(TileDataset(tissue, {sample: he_path}, card["input_px"], target=None),
                         batch_size=batch_size, shuffle=False, workers=workers, seed=0,
                         pin_memory=device.type == "cuda")
    if progress:
        from tqdm import tqdm

        loader = tqdm(loader, desc=f"{sample}: {what}", unit="batch")
    for k, (images, _, idx) in enumerate(loader):
        yield transform(images.to(device, non_blocking=True), idx.to(device, non_blocking=True))
        if (k + 1) % 20 == 0:
            log.info("sample %s: %s, %d/%d tiles", sample, what, min((k + 1) * batch_size, len(tissue)), len(tissue))


@torch.no_grad()
def predict_slide(model, card: dict, tiles: pd.DataFrame, he_path: str, stain: dict, *, sample: str,
                  batch_size: int = 32, workers: int = 2, progress: bool = False) -> pd.DataFrame:
    """``sample, tile_id, row, col, he_x, he_y, he_extent, predicted_ratio`` for the tissue tiles."""
    tissue = tiles[tiles["tissue_keep"]].reset_index(drop=True)
    out = tissue[["sample", "tile_id", "row", "col", "he_x", "he_y", "he_extent"]].copy()
    if tissue.empty:
        out["predicted_ratio"] = np.array([], dtype=np.float32)
        return out
    check_resolution(card, tissue, sample)
    if card["kind"] == "mil":
        from .mil_slides import mil_tile_map

        out["predicted_ratio"] = mil_tile_map(model, card, tissue, he_path, stain, sample=sample,
                                              batch_size=batch_size, workers=workers, progress=progress)
        return out
    device = next(model.parameters()).device
    preds, t0 = [], time.time()
    for x in slide_batches(card, tissue, he_path, stain, sample=sample, device=device, batch_size=batch_size,
                           workers=workers, progress=progress, what="predicting"):
        with autocast(device):
            preds.append(model(x)["ratio"].float().cpu().numpy())
    out["predicted_ratio"] = np.concatenate(preds).astype(np.float32)
    log.info("sample %s: %d tiles predicted in %.1f s", sample, len(out), time.time() - t0)
    return out
