"""Kind ``regressor``: ResNet18 from an H&E tile to its IHC tumor ratio (sigmoid, L1 loss),
optionally with the original study's 3-bin classifier head (0–0.2–0.5–1)."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..evaluate import BINS
from ..logs import get_logger
from . import register_kind
from .backbones import resnet18_backbone
from .base import ModelKind, Step

log = get_logger("regressor")


class TumorRatioRegressor(nn.Module):
    """ResNet18 → tumor ratio in [0, 1] (sigmoid), and 3-bin logits when ``bins``."""

    def __init__(self, in_channels: int = 3, bins: bool = False, weights_path: str | None = None):
        super().__init__()
        self.backbone = resnet18_backbone(in_channels, weights_path)
        self.ratio_head = nn.Linear(512, 1)
        self.bin_head = nn.Linear(512, len(BINS) - 1) if bins else None

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(x)
        out = {"ratio": torch.sigmoid(self.ratio_head(features)).squeeze(-1)}
        if self.bin_head is not None:
            out["bin_logits"] = self.bin_head(features)
        return out


def ratio_to_bin(ratio: torch.Tensor) -> torch.Tensor:
    """Class index of each ratio in BINS (0–0.2 → 0, 0.2–0.5 → 1, 0.5–1 → 2)."""
    edges = torch.tensor(BINS[1:-1], device=ratio.device, dtype=ratio.dtype)
    return torch.bucketize(ratio, edges, right=True)


@register_kind("regressor")
class Regressor(ModelKind):
    TITLE = "tile regressor"
    DEFAULTS = {"bins": False, "bin_loss_weight": 0.1}

    def network(self, load_weights: bool = True) -> nn.Module:
        return TumorRatioRegressor(self.in_channels, bins=bool(self.options["bins"]),
                                   weights_path=self.options["pretrained_weights"] if load_weights else None)

    def loaders(self, ctx):
        from ..tile_data import TileDataset, make_loader

        def loader(part: pd.DataFrame, shuffle: bool):
            if part.empty:
                return None
            return make_loader(TileDataset(part, ctx.slide_paths, ctx.input_px, samples=ctx.samples),
                               batch_size=int(self.options["batch_size"]), shuffle=shuffle, workers=ctx.workers,
                               seed=int(self.options["seed"]), pin_memory=ctx.device.type == "cuda",
                               generator=ctx.loader_generator if shuffle else None)

        return loader(ctx.split("train"), True), loader(ctx.split("val"), False)

    def step(self, model, batch, ctx) -> Step:
        from ..train import autocast

        images, targets, sample_idx = batch
        images, targets = images.to(ctx.device, non_blocking=True), targets.to(ctx.device, non_blocking=True)
        x = ctx.transform(images, sample_idx.to(ctx.device), augment=True, generator=ctx.augment_generator)
        with autocast(ctx.device):
            out = model(x)
            loss = F.l1_loss(out["ratio"].float(), targets)
            if self.options["bins"]:
                loss = loss + float(self.options["bin_loss_weight"]) * F.cross_entropy(out["bin_logits"].float(),
                                                                                       ratio_to_bin(targets))
        return Step(loss, len(targets), [ctx.samples[i] for i in sample_idx.tolist()])

    @torch.no_grad()
    def validate(self, model, loader, ctx) -> float:
        from ..train import autocast

        model.eval()
        errors, n = 0.0, 0
        for images, targets, sample_idx in loader:
            x = ctx.transform(images.to(ctx.device), sample_idx.to(ctx.device))
            with autocast(ctx.device):
                pred = model(x)["ratio"].float()
            errors += (pred.cpu() - targets).abs().sum().item()
            n += len(targets)
        return errors / max(1, n)

    def card_fields(self) -> dict:
        return {"architecture": "resnet18", "label": "IHC tumor ratio per tile"}

    @torch.no_grad()
    def predict_tiles(self, model, card, tissue, he_path, stain, *, sample, batch_size, workers, progress, aux=None):
        from ..tile_data import on_slide_batches

        t0 = time.time()
        outs = on_slide_batches(lambda x: {k: v.float().cpu() for k, v in model(x).items()}, card, tissue, he_path,
                                stain, sample=sample, device=next(model.parameters()).device, batch_size=batch_size,
                                workers=workers, progress=progress, what="predicting")
        ratios = [out["ratio"].numpy() for out in outs]
        bins = [out["bin_logits"].argmax(-1).numpy() for out in outs if "bin_logits" in out]
        result = pd.DataFrame({"predicted_ratio": np.concatenate(ratios).astype(np.float32)})
        if bins:
            result["predicted_bin"] = np.concatenate(bins).astype(np.int8)
        log.info("sample %s: %d tiles predicted in %.1f s", sample, len(result), time.time() - t0)
        return result
