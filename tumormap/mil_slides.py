"""MIL with distribution pooling on slides (Oner et al.): bags of tiles, training, k-NN maps.

A training bag is N tiles of one sample: a random tile and its N−1 nearest tissue tiles
on the grid (a region), so bags span the range of tumor ratios a slide holds. Its label
is the area-weighted IHC ratio of those tiles (DAB-positive nuclear area / nuclear
area), or the sample sheet's slide-level ``purity`` when given and ``bag_label: purity``.
A tile's map value is the model's output on the bag of its k nearest tiles (k = 16 in
the original), computed from per-tile features extracted once.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .logs import get_logger
from .slides import TileReader

log = get_logger("mil")


def build_mil_model(card: dict):
    """The MIL network a card describes (ResNet18 extractor → distribution pooling → MLP)."""
    from .mil import DistributionPoolingMIL, resnet18_extractor

    return DistributionPoolingMIL(resnet18_extractor(card["in_channels"], card["n_features"]),
                                  n_features=card["n_features"], n_bins=card["n_bins"], sigma=card["sigma"],
                                  dropout=card.get("dropout", 0.5))


def nearest_tiles(rows: np.ndarray, cols: np.ndarray, k: int) -> np.ndarray:
    """(T, k) indices of each tile's k nearest tiles on the grid (itself first)."""
    from scipy.spatial import cKDTree

    coords = np.stack([rows, cols], axis=1).astype(np.float64)
    k = min(k, len(coords))
    _, idx = cKDTree(coords).query(coords, k=k)
    return np.asarray(idx, dtype=np.int64).reshape(len(coords), k)


def bag_label(tiles: pd.DataFrame) -> float:
    """Area-weighted ratio of a bag: Σ DAB-positive nuclear area / Σ nuclear area."""
    area = tiles["nuclear_area_px"].to_numpy(float)
    if area.sum() > 0:
        return float(tiles["positive_area_px"].to_numpy(float).sum() / area.sum())
    return float(np.nanmean(tiles["tumor_ratio"]))


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


def _bags_to_batch(transform, images: torch.Tensor, sample_idx: torch.Tensor, device, augment=False, gen=None):
    """(B, N, H, W, 3) uint8 → (B, N, C, H, W) normalised on the device."""
    b, n = images.shape[:2]
    x = transform(images.flatten(0, 1).to(device, non_blocking=True),
                  sample_idx.to(device).repeat_interleave(n), augment=augment, generator=gen)
    return x.view(b, n, *x.shape[1:])


def train_mil(dataset_table: pd.DataFrame, slide_paths: dict[str, str], stains: dict[str, dict], target_stain: dict,
              out_dir: str, checkpoint_dir: str, cfg: dict, *, tile_mpp: float, tile_px: int,
              purity: dict[str, float] | None = None) -> dict:
    """Train the distribution-pooling MIL model on neighbourhood bags; same folder layout as the regressor."""
    from .mil import DistributionPoolingMIL, resnet18_extractor
    from .tile_data import BatchTransform
    from .train import autocast, config_hash, pick_device, run_epochs, seed_everything, write_model_folder

    seed = int(cfg.get("seed", 0))
    seed_everything(seed)
    device = pick_device(cfg.get("device", "auto"))
    channels = cfg.get("channels", "rgb")
    in_channels = 3 if channels == "rgb" else 5
    input_px = int(cfg.get("input_px") or tile_px)
    n_features, n_bins, sigma = int(cfg["n_features"]), int(cfg["n_bins"]), float(cfg["sigma"])
    table = dataset_table[np.isfinite(dataset_table["tumor_ratio"])]
    samples = sorted(set(table["sample"]))
    use_purity = purity if cfg.get("bag_label", "ihc") == "purity" else None
    transform = BatchTransform([stains[s] for s in samples], target_stain, channels).to(device)

    def loader(split, shuffle, bags_per_sample):
        part = table[table["split"] == split]
        if part.empty:
            return None
        ds = BagDataset(part, slide_paths, input_px, int(cfg["bag_size"]), bags_per_sample, samples, seed, use_purity)
        gen = torch.Generator().manual_seed(seed)
        return DataLoader(ds, batch_size=int(cfg["batch_size"]), shuffle=shuffle, num_workers=int(cfg.get("workers", 2)),
                          pin_memory=device.type == "cuda", generator=gen)

    train_loader = loader("train", True, int(cfg["bags_per_sample"]))
    if train_loader is None:
        raise ValueError("no training tiles for the MIL model (see the ssim/ground_truth logs)")
    val_loader = loader("val", False, max(1, int(cfg["bags_per_sample"]) // 2))
    model = DistributionPoolingMIL(resnet18_extractor(in_channels, n_features, cfg.get("pretrained_weights")),
                                   n_features=n_features, n_bins=n_bins, sigma=sigma,
                                   dropout=float(cfg.get("dropout", 0.5))).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=float(cfg["lr"]), weight_decay=float(cfg["weight_decay"]))
    epochs = int(cfg["epochs"])
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, epochs), gamma=1.0)  # constant, as Oner
    chash = config_hash({"kind": "mil", "cfg": cfg, "tiles": int(len(table)), "samples": samples, "tile_px": tile_px,
                         "mpp": tile_mpp})
    augment_gen = torch.Generator().manual_seed(seed + 1)
    epoch_counter = {"epoch": 0}
    log.info("training MIL on %s: %d train bags of %d tiles per epoch, %d epochs", device, len(train_loader.dataset),
             int(cfg["bag_size"]), epochs)

    def train_epoch():
        train_loader.dataset.set_epoch(epoch_counter["epoch"])
        epoch_counter["epoch"] += 1
        total, n_bags, n_images = 0.0, 0, 0
        for images, labels, sample_idx in train_loader:
            x = _bags_to_batch(transform, images, sample_idx, device, augment=True, gen=augment_gen)
            labels = labels.to(device)
            with autocast(device):
                loss = F.l1_loss(model(x).float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(labels)
            n_bags += len(labels)
            n_images += images.shape[0] * images.shape[1]
        return total / max(1, n_bags), n_images

    @torch.no_grad()
    def validate():
        if val_loader is None:
            return float("nan")
        model.eval()
        errors, n = 0.0, 0
        for images, labels, sample_idx in val_loader:
            with autocast(device):
                pred = model(_bags_to_batch(transform, images, sample_idx, device)).float().cpu()
            errors += (pred - labels).abs().sum().item()
            n += len(labels)
        return errors / max(1, n)

    history, best = run_epochs(model, optimizer, scheduler, epochs=epochs, checkpoint_dir=checkpoint_dir, chash=chash,
                               train_epoch=train_epoch, validate=validate,
                               generators={"augment": augment_gen, "loader": train_loader.generator})
    card = {
        "kind": "mil", "architecture": "resnet18+distribution_pooling", "input_mpp": tile_mpp, "tile_px": tile_px,
        "input_px": input_px, "channels": channels, "in_channels": in_channels, "n_features": n_features,
        "n_bins": n_bins, "sigma": sigma, "dropout": float(cfg.get("dropout", 0.5)), "bag_size": int(cfg["bag_size"]),
        "map_k": int(cfg["map_k"]), "stain": {"method": "macenko", "target": target_stain},
        "training": {"samples": samples, "n_train_tiles": int((table["split"] == "train").sum()),
                     "n_val_tiles": int((table["split"] == "val").sum()), "epochs": epochs,
                     "bag_label": cfg.get("bag_label", "ihc"), "config": cfg},
        "config_hash": chash,
    }
    return write_model_folder(out_dir, best, history, card, "MIL (distribution pooling)")


@torch.no_grad()
def mil_tile_map(model, card: dict, tissue: pd.DataFrame, he_path: str, stain: dict, *, sample: str,
                 batch_size: int = 32, workers: int = 2, progress: bool = False) -> np.ndarray:
    """Per-tile purity: the model on the bag of each tile's ``map_k`` nearest tissue tiles."""
    from .predict import slide_batches
    from .train import autocast

    device = next(model.parameters()).device
    feats, t0 = [], time.time()
    for x in slide_batches(card, tissue, he_path, stain, sample=sample, device=device, batch_size=batch_size,
                           workers=workers, progress=progress, what="tile features"):
        with autocast(device):
            feats.append(model.instance_features(x).float())
    features = torch.cat(feats)
    neighbours = torch.as_tensor(nearest_tiles(tissue["row"].to_numpy(), tissue["col"].to_numpy(), card["map_k"]),
                                 device=device)
    out = []
    for start in range(0, len(neighbours), 256):
        out.append(model.ratio_from_features(features[neighbours[start:start + 256]]).float().cpu().numpy())
    log.info("sample %s: MIL map of %d tiles (k = %d) in %.1f s", sample, len(tissue), card["map_k"], time.time() - t0)
    return np.concatenate(out).astype(np.float32)
