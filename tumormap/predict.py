"""Using a trained model of any kind: predict every tissue tile of a slide."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .logs import get_logger
from .models import get_kind
from .train import load_card, pick_device

log = get_logger("predict")


def load_model(model_dir: str | Path, device: torch.device | None = None):
    """(model in eval mode, card, kind) from a model folder; everything comes from the card."""
    card = load_card(model_dir)
    kind = get_kind(card["kind"], f"{Path(model_dir) / 'card.json'}").from_card(card)
    device = device or pick_device()
    model = kind.network(load_weights=False)
    state = torch.load(Path(model_dir) / "model.pt", map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"{model_dir}: model.pt does not match its card ({card['kind']}, "
                         f"{card.get('channels')}): {str(exc).splitlines()[0]}") from None
    return model.to(device).eval(), card, kind


def check_resolution(card: dict, tiles: pd.DataFrame, sample: str) -> None:
    """The model must see tiles at the µm/px and size it was trained on."""
    mpp, px = float(tiles["mpp"].iloc[0]), int(tiles["tile_px"].iloc[0])
    if not np.isclose(mpp, card["input_mpp"], rtol=0.02) or px != card["tile_px"]:
        raise ValueError(f"sample {sample}: tiles are {px} px at {mpp} µm/px but the model was trained on "
                         f"{card['tile_px']} px at {card['input_mpp']} µm/px: re-tile with those values")


@torch.no_grad()
def predict_slide(model, card: dict, kind, tiles: pd.DataFrame, he_path: str, stain: dict, *, sample: str,
                  batch_size: int = 32, workers: int = 2, progress: bool = False,
                  aux: dict | None = None) -> pd.DataFrame:
    """``sample, tile_id, row, col, he_x, he_y, he_extent, predicted_ratio`` (+ the kind's own
    columns) for the tissue tiles. ``aux``: per-slide inputs of the kind (e.g. ``he_nuclei``)."""
    tissue = tiles[tiles["tissue_keep"]].reset_index(drop=True)
    out = tissue[["sample", "tile_id", "row", "col", "he_x", "he_y", "he_extent"]].copy()
    if tissue.empty:
        out["predicted_ratio"] = np.array([], dtype=np.float32)
        return out
    check_resolution(card, tissue, sample)
    values = kind.predict_tiles(model, card, tissue, he_path, stain, sample=sample, batch_size=batch_size,
                                workers=workers, progress=progress, aux=aux)
    if len(values) != len(tissue) or "predicted_ratio" not in values:
        raise RuntimeError(f"model kind {card['kind']} returned {len(values)} rows without predicted_ratio "
                           f"for {len(tissue)} tiles")
    return pd.concat([out, values.reset_index(drop=True)], axis=1)
