"""Kind ``mil``: multiple-instance learning with distribution pooling (Oner et al.) on slides.

Training bags are neighbourhoods of ``bag_size`` tiles labelled with their area-weighted
IHC ratio (or the sheet's slide ``purity``); the map value of a tile is the model on the
bag of its ``map_k`` nearest tissue tiles, features extracted once per tile. The network
(ResNet18 with per-instance normalisation → J sigmoid features → per-feature kernel
densities → MLP) lives in ``tumormap.mil``.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ..logs import get_logger
from ..proportion import ihc_bag_ratio
from ..slides import TileReader
from . import register_kind
from .base import ModelKind, Step

log = get_logger("mil")


def nearest_tiles(rows: np.ndarray, cols: np.ndarray, k: int) -> np.ndarray:
    """(T, k) indices of each tile's k nearest tiles on the grid (itself first)."""
    from scipy.spatial import cKDTree

    coords = np.stack([rows, cols], axis=1).astype(np.float64)
    k = min(k, len(coords))
    _, idx = cKDTree(coords).query(coords, k=k)
    return np.asarray(idx, dtype=np.int64).reshape(len(coords), k)


def bag_label(tiles: pd.DataFrame) -> float:
    """Area-weighted ratio of a bag: Σ DAB-positive nuclear area / Σ nuclear area (the mean tile
    ratio when no tile has nuclear area)."""
    ratio = ihc_bag_ratio(tiles)
    return ratio if np.isfinite(ratio) else float(np.nanmean(tiles["tumor_ratio"]))


class BagDataset(Dataset):
    """Neighbourhood bags of ``bag_size`` tiles; resampled per epoch from ``seed`` + epoch."""

    def __init__(self, table: pd.DataFrame, slide_paths: dict[str, str], input_px: int, bag_size: int,
                 bags_per_sample: int, samples: list[str], seed: int, purity: dict[str, float] | None = None):
        self.by_sample = {s: g.reset_index(drop=True) for s, g in table.groupby("sample")}
        self.records = {s: g.to_dict("records") for s, g in self.by_sample.items()}  # no Series per tile read
        self.readers = {s: TileReader(slide_paths[s], "he", s) for s in self.by_sample}
        self.neighbours = {s: nearest_tiles(g["row"].to_numpy(), g["col"].to_numpy(), bag_size)
                           for s, g in self.by_sample.items()}
        self.sample_index = {s: i for i, s in enumerate(samples)}
        self.input_px, self.bag_size, self.bags_per_sample = input_px, bag_size, bags_per_sample
        self.seed, self.purity = seed, purity or {}
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        rng = np.random.default_rng(self.seed + 7919 * epoch)
        self.bags = []
        for s, g in self.by_sample.items():
            centres = rng.choice(len(g), self.bags_per_sample, replace=len(g) < self.bags_per_sample)
            for c in centres:
                idx = self.neighbours[s][c]
                if len(idx) < self.bag_size:  # a small slide: repeat tiles to fill the bag
                    idx = rng.choice(idx, self.bag_size, replace=True)
                label = self.purity.get(s, bag_label(g.iloc[idx]))
                self.bags.append((s, idx, label))

    def __len__(self) -> int:
        return len(self.bags)

    def __getitem__(self, i: int):
        s, idx, label = self.bags[i]
        records = self.records[s]
        tiles = np.stack([self.readers[s].read(records[j], self.input_px) for j in idx])
        return torch.from_numpy(tiles), np.float32(label), self.sample_index[s]


def bags_to_batch(transform, images: torch.Tensor, sample_idx: torch.Tensor, device, augment=False, gen=None):
    """(B, N, H, W, 3) uint8 → (B, N, C, H, W) normalised on the device."""
    b, n = images.shape[:2]
    x = transform(images.flatten(0, 1).to(device, non_blocking=True),
                  sample_idx.to(device).repeat_interleave(n), augment=augment, generator=gen)
    return x.view(b, n, *x.shape[1:])


@register_kind("mil")
class DistributionPoolingMILKind(ModelKind):
    TITLE = "MIL (distribution pooling)"
    CODE = ("mil.py",)
    DEFAULTS = {"bag_size": 100, "bags_per_sample": 24, "bag_label": "ihc", "n_features": 128, "n_bins": 21,
                "sigma": 0.05, "dropout": 0.5, "map_k": 16, "lr": 1e-4, "weight_decay": 5e-4, "batch_size": 2,
                "calibration_bags": 4}

    def network(self, load_weights: bool = True):
        from ..mil import DistributionPoolingMIL, resnet18_extractor

        o = self.options
        extractor = resnet18_extractor(self.in_channels, int(o["n_features"]), o["pretrained_weights"],
                                       load_weights=load_weights)
        return DistributionPoolingMIL(extractor, n_features=int(o["n_features"]), n_bins=int(o["n_bins"]),
                                      sigma=float(o["sigma"]), dropout=float(o["dropout"]))

    def optimizer(self, model):
        return torch.optim.Adam(model.parameters(), lr=float(self.options["lr"]),
                                weight_decay=float(self.options["weight_decay"]))

    def scheduler(self, optimizer):  # constant learning rate, as Oner et al.
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)

    def loaders(self, ctx):
        o = self.options
        purity = None
        if o["bag_label"] == "purity":
            if "purity" not in ctx.table or ctx.table["purity"].isna().any():
                missing = sorted(set(ctx.table.loc[ctx.table.get("purity", pd.Series(np.nan, ctx.table.index)).isna(),
                                                   "sample"]))
                raise ValueError(f"model {ctx.name}: bag_label purity needs the sheet's purity column for every "
                                 f"train/val sample; missing for {', '.join(missing)}")
            purity = ctx.table.groupby("sample")["purity"].first().astype(float).to_dict()

        def loader(part: pd.DataFrame, shuffle: bool, bags_per_sample: int):
            if part.empty:
                return None
            ds = BagDataset(part, ctx.slide_paths, ctx.input_px, int(o["bag_size"]), bags_per_sample, ctx.samples,
                            int(o["seed"]), purity)
            return DataLoader(ds, batch_size=int(o["batch_size"]), shuffle=shuffle, num_workers=ctx.workers,
                              pin_memory=ctx.device.type == "cuda",
                              generator=ctx.loader_generator if shuffle else None)

        return (loader(ctx.split("train"), True, int(o["bags_per_sample"])),
                loader(ctx.split("val"), False, max(1, int(o["bags_per_sample"]) // 2)))

    def on_epoch_start(self, epoch, model, ctx, train_loader) -> None:
        train_loader.dataset.set_epoch(epoch)
        if epoch == 0:  # feature standardisation from the first training bags (fixed afterwards)
            ds = train_loader.dataset
            items = [ds[i] for i in range(min(len(ds), int(self.options["calibration_bags"])))]
            images = torch.cat([it[0] for it in items])
            idx = torch.tensor([it[2] for it in items]).repeat_interleave(items[0][0].shape[0])
            model.eval()
            model.calibrate(ctx.transform(images.to(ctx.device), idx.to(ctx.device)))

    def step(self, model, batch, ctx) -> Step:
        from ..train import autocast

        images, labels, sample_idx = batch
        x = bags_to_batch(ctx.transform, images, sample_idx, ctx.device, augment=True, gen=ctx.augment_generator)
        with autocast(ctx.device):
            loss = F.l1_loss(model(x).float(), labels.to(ctx.device))
        return Step(loss, images.shape[0] * images.shape[1], [ctx.samples[i] for i in sample_idx.tolist()])

    @torch.no_grad()
    def validate(self, model, loader, ctx) -> float:
        from ..train import autocast

        model.eval()
        errors, n = 0.0, 0
        for images, labels, sample_idx in loader:
            with autocast(ctx.device):
                pred = model(bags_to_batch(ctx.transform, images, sample_idx, ctx.device)).float().cpu()
            errors += (pred - labels).abs().sum().item()
            n += len(labels)
        return errors / max(1, n)

    def card_fields(self) -> dict:
        return {"architecture": "resnet18+distribution_pooling",
                "label": "slide purity" if self.options["bag_label"] == "purity" else "area-weighted IHC ratio of the bag"}

    @torch.no_grad()
    def predict_tiles(self, model, card, tissue, he_path, stain, *, sample, batch_size, workers, progress, aux=None):
        """Per-tile purity: the model on the bag of each tile's ``map_k`` nearest tissue tiles."""
        from ..tile_data import on_slide_batches

        device, t0 = next(model.parameters()).device, time.time()
        features = torch.cat(on_slide_batches(lambda x: model.instance_features(x).float(), card, tissue, he_path, stain,
                                              sample=sample, device=device, batch_size=batch_size, workers=workers,
                                              progress=progress, what="tile features"))
        k = int(self.options["map_k"])
        neighbours = torch.as_tensor(nearest_tiles(tissue["row"].to_numpy(), tissue["col"].to_numpy(), k),
                                     device=device)
        out = [model.ratio_from_features(features[neighbours[start:start + 256]]).float().cpu().numpy()
               for start in range(0, len(neighbours), 256)]
        log.info("sample %s: MIL map of %d tiles (k = %d) in %.1f s", sample, len(tissue), k, time.time() - t0)
        return pd.DataFrame({"predicted_ratio": np.concatenate(out).astype(np.float32)})
