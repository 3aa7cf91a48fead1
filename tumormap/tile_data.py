"""The H&E tile data path for training and prediction.

Workers read raw uint8 tiles from the slides (OpenSlide, one handle per worker) and
do nothing else; stain normalisation and augmentation run on whole batches on the
training device (GPU when there is one), so the CPU never starves it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from .slides import TileReader


class TileDataset(Dataset):
    """H&E tiles of a table (rows: one tile each, columns as in the tile table).

    Returns ``(uint8 tensor H×W×3, target ratio (NaN if none), sample index)``; the
    sample index points into ``samples`` (the order of stain tensors too).
    """

    def __init__(self, table: pd.DataFrame, slide_paths: dict[str, str], input_px: int,
                 target: str | None = "tumor_ratio", samples: list[str] | None = None):
        self.rows = table.reset_index(drop=True).to_dict("records")
        self.samples = samples or sorted(set(table["sample"].astype(str)))
        self.sample_index = {s: i for i, s in enumerate(self.samples)}
        self.readers = {s: TileReader(slide_paths[s], "he", s) for s in self.samples}
        self.input_px = int(input_px)
        self.targets = (table[target].to_numpy(np.float32) if target and target in table
                        else np.full(len(table), np.nan, np.float32))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        row = self.rows[i]
        rgb = self.readers[str(row["sample"])].read(row, self.input_px)
        return torch.from_numpy(np.ascontiguousarray(rgb)), self.targets[i], self.sample_index[str(row["sample"])]


def make_loader(dataset: TileDataset, *, batch_size: int, shuffle: bool, workers: int, seed: int,
                pin_memory: bool, generator: torch.Generator | None = None) -> DataLoader:
    """``generator`` (shuffling): pass the trainer's, so that a checkpoint carries its state."""
    if generator is None:
        generator = torch.Generator()
        generator.manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                      pin_memory=pin_memory, generator=generator, drop_last=False,
                      persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
                      worker_init_fn=_seed_worker)


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)


class BatchTransform(torch.nn.Module):
    """uint8 NHWC batch → normalised float NCHW batch on the device (channels_last).

    Macenko normalisation to the target stain with each tile's own slide stain, then
    (training only) random flips and 90° rotations per tile. ``normalise=False`` feeds the
    tiles as scanned (every slide's stain taken as the target's: the identity).
    """

    def __init__(self, source_stains: list[dict], target_stain: dict, channels: str, normalise: bool = True):
        super().__init__()
        from .stain import StainTransform, stack_stains

        self.stain = StainTransform(target_stain, channels)
        matrices, max_conc = stack_stains(source_stains if normalise else [target_stain] * len(source_stains))
        self.register_buffer("source_matrix", torch.as_tensor(np.asarray(matrices), dtype=torch.float32))
        self.register_buffer("source_max", torch.as_tensor(np.asarray(max_conc), dtype=torch.float32))
        self.channels = channels

    def forward(self, images: torch.Tensor, sample_idx: torch.Tensor, augment: bool = False,
                generator: torch.Generator | None = None) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2)
        x = self.stain(x, self.source_matrix[sample_idx], self.source_max[sample_idx])
        if augment:
            x = random_dihedral(x, generator)
        return x.contiguous(memory_format=torch.channels_last)


def random_dihedral(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each tile of a square NCHW batch flipped and rotated by one of the 8 dihedral moves."""
    n = x.shape[0]
    moves = torch.randint(0, 8, (n,), generator=generator).tolist()
    out = torch.empty_like(x)
    for move in range(8):
        idx = [i for i, m in enumerate(moves) if m == move]
        if not idx:
            continue
        part = x[idx]
        if move & 4:
            part = part.flip(-1)
        out[idx] = torch.rot90(part, move & 3, dims=(-2, -1))
    return out


def slide_batches(card: dict, tissue: pd.DataFrame, he_path: str, stain: dict, *, sample: str, device,
                  batch_size: int, workers: int, progress: bool, what: str):
    """Normalised batches (on ``device``) of a slide's tissue tiles, in table order, as the card says."""
    from .logs import get_logger

    log = get_logger("predict")
    transform = BatchTransform([stain], card["stain"]["target"], card["channels"],
                               normalise=card["stain"]["method"] == "macenko").to(device)
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
def on_slide_batches(fn, card: dict, tissue: pd.DataFrame, he_path: str, stain: dict, *, sample: str, device,
                     batch_size: int, workers: int, progress: bool, what: str) -> list:
    """``fn(batch)`` under the device's autocast for each batch of :func:`slide_batches`, in order."""
    from .train import autocast

    out = []
    for x in slide_batches(card, tissue, he_path, stain, sample=sample, device=device, batch_size=batch_size,
                           workers=workers, progress=progress, what=what):
        with autocast(device):
            out.append(fn(x))
    return out
