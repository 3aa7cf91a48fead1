"""Kind ``alphabeta``: a tile classifier learned from slide diagnoses alone (Lerousseau et al.).

Each step takes ``patches`` (B, 150 in the paper) random tissue tiles of one slide labelled
``tumor`` or ``normal`` in the sample sheet; proxy labels come from the current scores
(``tumormap.weak_labels.proxy_labels``: top ⌊αB⌋ → 1, bottom ⌊βB⌋ → 0 on a tumor slide, all
0 on a normal one), detached; the loss is binary cross-entropy over the labelled patches,
weighted c1/c0 by class, averaged over the mask. The map value is the tumor probability.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..logs import get_logger
from ..slides import TileReader
from ..weak_labels import DEFAULT_ALPHA_BETA, SLIDE_LABELS, check_alpha_beta, proxy_labels
from . import register_kind
from .backbones import resnet18_backbone
from .base import ModelKind, Step

log = get_logger("alphabeta")


class TumorClassifier(nn.Module):
    """ResNet18 → one tumor logit per tile. Per-instance normalisation: a step's batch is one
    slide's patches, so BatchNorm would normalise each slide to itself in training and score
    tiles differently at inference (measured: held-out tile AUC inverted to ≈ 0.07)."""

    def __init__(self, in_channels: int = 3, weights_path: str | None = None, load_weights: bool = True):
        super().__init__()
        self.backbone = resnet18_backbone(in_channels, weights_path, per_instance=True, load_weights=load_weights)
        self.head = nn.Linear(512, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x)).squeeze(-1)


class SlidePatches(Dataset):
    """``steps_per_slide`` items per labelled slide, each ``patches`` distinct random tissue
    tiles of it (all of them on a smaller slide); resampled per epoch from ``seed`` + epoch."""

    def __init__(self, table: pd.DataFrame, slide_paths: dict[str, str], input_px: int, patches: int,
                 steps_per_slide: int, samples: list[str], seed: int):
        self.records = {s: g.to_dict("records") for s, g in table.groupby("sample")}
        self.labels = table.groupby("sample")["label"].first().to_dict()
        self.readers = {s: TileReader(slide_paths[s], "he", s) for s in self.records}
        self.sample_index = {s: i for i, s in enumerate(samples)}
        self.input_px, self.patches, self.steps_per_slide, self.seed = input_px, patches, steps_per_slide, seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        rng = np.random.default_rng(self.seed + 7919 * epoch)
        self.items = []
        for s, records in self.records.items():
            for _ in range(self.steps_per_slide):
                n = min(self.patches, len(records))
                self.items.append((s, np.sort(rng.choice(len(records), n, replace=False))))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        s, idx = self.items[i]
        tiles = np.stack([self.readers[s].read(self.records[s][j], self.input_px) for j in idx])
        return torch.from_numpy(tiles), SLIDE_LABELS[self.labels[s]], self.sample_index[s]


@register_kind("alphabeta")
class AlphaBeta(ModelKind):
    TITLE = "α/β weak supervision"
    CODE = ("weak_labels.py",)
    VALIDATION = "validation proxy-label BCE"
    # stain_normalise off: per-slide Macenko estimates differ between tumor and normal slides (more
    # hematoxylin moves the stain vectors and maxima) and erase the slide-level difference the proxy
    # labels rest on (synthetic held-out tile AUC 0.51 with it, 0.82 without; tests/test_alphabeta.py).
    DEFAULTS = {"alpha": DEFAULT_ALPHA_BETA[0], "beta": DEFAULT_ALPHA_BETA[1], "patches": 150, "steps_per_slide": 8,
                "c0": 1.0, "c1": 1.0, "lr": 1e-4, "stain_normalise": False}

    def __init__(self, options: dict, name: str = "?"):
        super().__init__(options, name)
        check_alpha_beta(self.options["alpha"], self.options["beta"], f"train.models.{name}")

    def training_rows(self, table: pd.DataFrame) -> pd.DataFrame:
        """Every tissue tile of the slides labelled tumor or normal (paired or H&E-only)."""
        return table[table["label"].isin(list(SLIDE_LABELS))]

    def network(self, load_weights: bool = True) -> nn.Module:
        return TumorClassifier(self.in_channels, self.options["pretrained_weights"], load_weights=load_weights)

    def loaders(self, ctx):
        o = self.options

        def loader(part: pd.DataFrame, shuffle: bool, seed: int):
            if part.empty:
                return None
            ds = SlidePatches(part, ctx.slide_paths, ctx.input_px, int(o["patches"]), int(o["steps_per_slide"]),
                              ctx.samples, seed)
            return DataLoader(ds, batch_size=1, shuffle=shuffle, num_workers=ctx.workers,
                              pin_memory=ctx.device.type == "cuda",
                              generator=ctx.loader_generator if shuffle else None)

        train = ctx.split("train")
        if not (train["label"] == "tumor").any():
            raise ValueError(f"model {ctx.name}: no training slide labelled tumor (the sheet's label column); "
                             f"α/β supervision needs tumor slides")
        return loader(train, True, int(o["seed"])), loader(ctx.split("val"), False, int(o["seed"]) + 1)

    def on_epoch_start(self, epoch, model, ctx, train_loader) -> None:
        train_loader.dataset.set_epoch(epoch)

    def masked_loss(self, logits: torch.Tensor, slide_label: int) -> torch.Tensor:
        """BCE over the proxy-labelled patches, c1/c0 per class, averaged over the mask."""
        o = self.options
        labels, mask = proxy_labels(logits.detach().float().cpu().numpy(), "tumor" if slide_label else "normal",
                                    float(o["alpha"]), float(o["beta"]))
        labels = torch.from_numpy(labels).to(logits.device)
        weights = torch.from_numpy(mask.astype(np.float32)).to(logits.device)
        weights = weights * torch.where(labels > 0, float(o["c1"]), float(o["c0"]))
        bce = F.binary_cross_entropy_with_logits(logits.float(), labels, reduction="none")
        return (bce * weights).sum() / max(1, int(mask.sum()))

    def _logits(self, model, images, sample_idx, ctx, augment: bool) -> torch.Tensor:
        from ..train import autocast

        x = ctx.transform(images[0].to(ctx.device, non_blocking=True),
                          sample_idx.to(ctx.device).repeat_interleave(images.shape[1]), augment=augment,
                          generator=ctx.augment_generator if augment else None)
        with autocast(ctx.device):
            return model(x)

    def step(self, model, batch, ctx) -> Step:
        images, slide_label, sample_idx = batch
        logits = self._logits(model, images, sample_idx, ctx, augment=True)
        loss = self.masked_loss(logits, int(slide_label[0]))
        return Step(loss, images.shape[1], [ctx.samples[int(sample_idx[0])]])

    @torch.no_grad()
    def validate(self, model, loader, ctx) -> float:
        model.eval()
        losses = [self.masked_loss(self._logits(model, images, sample_idx, ctx, augment=False),
                                   int(slide_label[0])).item()
                  for images, slide_label, sample_idx in loader]
        return float(np.mean(losses)) if losses else float("nan")

    def card_fields(self) -> dict:
        return {"architecture": "resnet18", "label": "slide diagnosis (α/β proxy labels)",
                "output": "tumor probability per tile"}

    def predict_tiles(self, model, card, tissue, he_path, stain, *, sample, batch_size, workers, progress, aux=None):
        from ..tile_data import on_slide_batches

        t0 = time.time()
        probs = on_slide_batches(lambda x: torch.sigmoid(model(x).float()).cpu().numpy(), card, tissue, he_path, stain,
                                 sample=sample, device=next(model.parameters()).device, batch_size=batch_size,
                                 workers=workers, progress=progress, what="predicting")
        log.info("sample %s: %d tiles classified in %.1f s", sample, len(tissue), time.time() - t0)
        p = np.concatenate(probs).astype(np.float32)
        return pd.DataFrame({"predicted_ratio": p, "tumor_probability": p})
