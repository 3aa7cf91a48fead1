"""Kind ``llp``: a tile's positive-cell proportion learned from interval labels of whole bags
(masked learning from label proportions with the weighted focal proportion loss, Okuo et al.).

A fully convolutional ResNet18 trunk (stride 8) gives per position a positive and a negative
map, F_p and F_n (softmax over the two). The cell mask M is 1 on discs of ``mask_radius_um``
around the nuclei StarDist finds on the H&E (``mask: none``: 1 everywhere), averaged onto the
map grid. Over a bag (a region of ``region_um`` or a whole slide), s_p = Σ F_p ⊙ M,
s_n = Σ F_n ⊙ M and r̂ = s_p / (s_p + s_n). The bag's label is an interval (from the IHC ratio
of the bag, or the sheet's ``ki67_interval``); its target r is the interval's midpoint and the
loss is |r − r̂|^γ · KL((r, 1 − r) ‖ (r̂, 1 − r̂)), γ by interval (``tumormap.proportion``).
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
from ..proportion import (DEFAULT_OPTIONS, bag_ids, check_options, disc_mask, ihc_bag_ratio, interval_gammas,
                          interval_index, interval_names, midpoints, parse_interval)
from ..slides import TileReader
from . import register_kind
from .backbones import resnet18_backbone
from .base import ModelKind, Step

log = get_logger("llp")
STRIDE = 4  # input px per map position


def proportion_loss(r_hat: torch.Tensor, r: float, gamma: float, eps: float = 1e-6) -> torch.Tensor:
    """|r − r̂|^γ · Σ_k r_k log(r_k / r̂_k) with r_1 = r, r_2 = 1 − r (the paper's leading minus
    sign and 'r_2 = 1 − r_k' are typos). γ = 0 is the plain proportion (KL) loss."""
    r_hat = r_hat.clamp(eps, 1 - eps)
    r_t = torch.as_tensor(float(r), dtype=r_hat.dtype, device=r_hat.device)
    kl = torch.special.xlogy(r_t, r_t) - r_t * torch.log(r_hat) + torch.special.xlogy(1 - r_t, 1 - r_t) \
        - (1 - r_t) * torch.log(1 - r_hat)
    if gamma > 0:  # |d|^0 would have an undefined gradient at d = 0
        return (r_t - r_hat).abs() ** float(gamma) * kl
    return kl


class ProportionNet(nn.Module):
    """ResNet18 up to layer2 (stride 8), its features upsampled onto layer1's (stride 4) and
    merged (a one-step feature pyramid), → (positive, negative) logits per position at stride 4:
    fine enough that one map position rarely spans two nuclei (at stride 8 neighbouring nuclei
    of both kinds share positions and every proportion is pulled towards the middle)."""

    def __init__(self, in_channels: int = 3, weights_path: str | None = None, load_weights: bool = True):
        super().__init__()
        net = resnet18_backbone(in_channels, weights_path, per_instance=True, load_weights=load_weights)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1)
        self.layer2 = net.layer2
        self.lateral = nn.Conv2d(128, 64, kernel_size=1)
        self.head = nn.Sequential(nn.Conv2d(64, 64, kernel_size=3, padding=1), nn.GroupNorm(16, 64),
                                  nn.ReLU(inplace=True), nn.Conv2d(64, 2, kernel_size=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fine = self.stem(x)
        coarse = F.interpolate(self.lateral(self.layer2(fine)), size=fine.shape[-2:], mode="nearest")
        return self.head(fine + coarse)

    @staticmethod
    def maps(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(F_p, F_n), each N×h×w, summing to 1 per position."""
        p = torch.softmax(logits.float(), dim=1)
        return p[:, 0], p[:, 1]


def masked_scores(logits: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per tile s_p = Σ F_p ⊙ M and s_n = Σ F_n ⊙ M; ``mask`` N×H×W at input resolution (area
    fractions are averaged onto the map grid), None: M = 1."""
    fp, fn = ProportionNet.maps(logits)
    if mask is None:
        m = torch.ones_like(fp)
    else:
        m = F.avg_pool2d(mask[:, None].float(), STRIDE)[:, 0]
        if m.shape != fp.shape:
            raise ValueError(f"mask grid {tuple(m.shape)} ≠ map grid {tuple(fp.shape)}: input_px must be a multiple "
                             f"of {STRIDE}")
    return (fp * m).flatten(1).sum(1), (fn * m).flatten(1).sum(1)


class NucleusMasks:
    """Disc masks of a table's tiles at the network's input size, from H&E nucleus centroids."""

    def __init__(self, nuclei: dict[str, pd.DataFrame] | None, input_px: int, radius_um: float):
        self.input_px, self.radius_um = int(input_px), float(radius_um)
        self.points = {}
        for sample, table in (nuclei or {}).items():
            for tile_id, g in table.groupby("tile_id"):
                self.points[(str(sample), int(tile_id))] = g[["x", "y"]].to_numpy(float)

    def n_nuclei(self, row) -> int:
        return len(self.points.get((str(row["sample"]), int(row["tile_id"])), ()))

    def mask(self, row) -> np.ndarray:
        scale = self.input_px / float(row["tile_px"])
        pts = self.points.get((str(row["sample"]), int(row["tile_id"])), np.zeros((0, 2)))
        return disc_mask(pts * scale, (self.input_px, self.input_px),
                         self.radius_um / (float(row["mpp"]) / scale)).astype(np.float32)


class Bags(Dataset):
    """``steps_per_bag`` items per bag per epoch, each up to ``bag_tiles`` distinct random tiles
    of the bag with their masks; ``seed`` + epoch picks them (``shuffle=False``: the first tiles)."""

    def __init__(self, bags: list[dict], slide_paths: dict[str, str], masks: NucleusMasks | None, input_px: int,
                 bag_tiles: int, steps_per_bag: int, samples: list[str], seed: int, sample_tiles: bool = True):
        self.bags, self.masks, self.input_px = bags, masks, input_px
        self.readers = {s: TileReader(slide_paths[s], "he", s) for s in {b["sample"] for b in bags}}
        self.sample_index = {s: i for i, s in enumerate(samples)}
        self.bag_tiles, self.steps_per_bag, self.seed, self.sample_tiles = bag_tiles, steps_per_bag, seed, sample_tiles
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        rng = np.random.default_rng(self.seed + 7919 * epoch)
        self.items = []
        for b, bag in enumerate(self.bags):
            n = len(bag["rows"])
            for _ in range(self.steps_per_bag if self.sample_tiles else 1):
                pick = rng.choice(n, min(self.bag_tiles, n), replace=False) if self.sample_tiles \
                    else np.arange(min(self.bag_tiles, n))
                self.items.append((b, np.sort(pick)))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        b, pick = self.items[i]
        bag = self.bags[b]
        rows = [bag["rows"][j] for j in pick]
        images = np.stack([self.readers[bag["sample"]].read(r, self.input_px) for r in rows])
        masks = np.stack([self.masks.mask(r) for r in rows]) if self.masks is not None \
            else np.zeros((0, self.input_px, self.input_px), np.float32)
        return (torch.from_numpy(images), torch.from_numpy(masks), float(bag["target"]), float(bag["gamma"]),
                self.sample_index[bag["sample"]])


@register_kind("llp")
class LearningFromProportions(ModelKind):
    TITLE = "learning from label proportions"
    CODE = ("proportion.py",)
    VALIDATION = "validation proportion loss"
    DEFAULTS = {**DEFAULT_OPTIONS, "gamma": 2.0, "mask_radius_um": 4.0, "region_um": 512.0, "bag_tiles": 16,
                "min_bag_tiles": 4, "steps_per_bag": 2, "lr": 1e-4, "input_px": 128}

    def __init__(self, options: dict, name: str = "?"):
        super().__init__(options, name)
        check_options(self.options, f"train.models.{name}")
        if int(self.options["input_px"]) % STRIDE:
            raise ValueError(f"train.models.{name}.input_px: must be a multiple of {STRIDE}")
        self.edges = np.asarray(self.options["edges"], float)
        self.gammas = interval_gammas(self.edges, self.options["loss"], float(self.options["gamma"]))
        self.targets = midpoints(self.edges)

    @property
    def masked(self) -> bool:
        return self.options["mask"] == "nuclei"

    def training_rows(self, table: pd.DataFrame) -> pd.DataFrame:
        """IHC labels: the SSIM-kept tiles with a ratio; sheet labels: every tissue tile of the
        slides with a ``ki67_interval``; region labels: every tissue tile in an annotated region."""
        column = {"sheet": "ki67_interval", "regions": "region_id"}.get(self.options["labels"])
        if column is not None:
            return table[table[column].notna()] if column in table else table.iloc[:0]
        return super().training_rows(table)

    def bags(self, part: pd.DataFrame, masks: NucleusMasks | None) -> list[dict]:
        """The labelled bags of a table part: tiles, interval, target and γ (logged)."""
        o = self.options
        ids = part["region_id"].to_numpy(object) if o["labels"] == "regions" else \
            bag_ids(part, o["bag"], float(o["region_um"]), part["he_mpp"])
        out = []
        for bag_id, g in part.groupby(ids, sort=True):
            if masks is not None:
                g = g[[masks.n_nuclei(r) > 0 for r in g.to_dict("records")]]
            if len(g) < int(o["min_bag_tiles"]):
                continue
            if o["labels"] in ("sheet", "regions"):
                ratio = float("nan")
                column = "ki67_interval" if o["labels"] == "sheet" else "region_interval"
                k = parse_interval(g[column].iloc[0], self.edges, f"sample {g['sample'].iloc[0]}, bag {bag_id}")
            else:
                ratio = ihc_bag_ratio(g)
                if not np.isfinite(ratio):
                    continue
                k = int(interval_index(ratio, self.edges)[0])
            out.append({"bag": str(bag_id), "sample": str(g["sample"].iloc[0]), "rows": g.to_dict("records"),
                        "interval": k, "ratio": ratio, "target": float(self.targets[k]),
                        "gamma": float(self.gammas[k])})
        names = interval_names(self.edges)
        counts = pd.Series([names[b["interval"]] for b in out], dtype=object).value_counts()
        log.info("%d bags (%s) from %d tiles: %s", len(out), o["bag"], len(part),
                 ", ".join(f"{n}: {counts.get(n, 0)}" for n in names))
        return out

    def network(self, load_weights: bool = True) -> nn.Module:
        return ProportionNet(self.in_channels, self.options["pretrained_weights"], load_weights=load_weights)

    def _masks(self, ctx) -> NucleusMasks | None:
        if not self.masked:
            return None
        nuclei = ctx.extra.get("he_nuclei_tables")
        if nuclei is None:
            raise ValueError(f"model {ctx.name}: mask: nuclei needs the H&E nuclei (rule he_nuclei)")
        return NucleusMasks(nuclei, ctx.input_px, float(self.options["mask_radius_um"]))

    def loaders(self, ctx):
        o = self.options
        masks = self._masks(ctx)

        def loader(part: pd.DataFrame, train: bool):
            bags = self.bags(part, masks) if not part.empty else []
            if not bags:
                return None
            ds = Bags(bags, ctx.slide_paths, masks, ctx.input_px, int(o["bag_tiles"]), int(o["steps_per_bag"]),
                      ctx.samples, int(o["seed"]) + (0 if train else 1), sample_tiles=train)
            return DataLoader(ds, batch_size=1, shuffle=train, num_workers=ctx.workers,
                              pin_memory=ctx.device.type == "cuda", generator=ctx.loader_generator if train else None)

        train = loader(ctx.split("train"), True)
        if train is None:
            what = {"ihc": "an IHC ratio", "sheet": "a ki67_interval", "regions": "an annotated region"}[o["labels"]]
            raise ValueError(f"model {ctx.name}: no labelled training bag (need ≥ {o['min_bag_tiles']} tiles with "
                             f"{what} per bag)")
        return train, loader(ctx.split("val"), False)

    def on_epoch_start(self, epoch, model, ctx, train_loader) -> None:
        train_loader.dataset.set_epoch(epoch)

    def bag_estimate(self, model, images, masks, sample_idx, ctx, augment: bool) -> torch.Tensor:
        """r̂ of one bag (a batch of one item)."""
        from ..tile_data import random_dihedral
        from ..train import autocast

        n = images.shape[1]
        x = ctx.transform(images[0].to(ctx.device, non_blocking=True),
                          sample_idx.to(ctx.device).repeat_interleave(n), augment=False)
        m = masks[0].to(ctx.device) if self.masked else None
        if augment:  # the same flips and rotations for tiles and their masks
            stacked = torch.cat([x, m[:, None].to(x.dtype)], 1) if m is not None else x
            stacked = random_dihedral(stacked, ctx.augment_generator)
            x, m = (stacked[:, :-1], stacked[:, -1]) if m is not None else (stacked, None)
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(ctx.device):
            logits = model(x)
        s_p, s_n = masked_scores(logits, m)
        return s_p.sum() / (s_p.sum() + s_n.sum()).clamp_min(1e-6)

    def step(self, model, batch, ctx) -> Step:
        images, masks, target, gamma, sample_idx = batch
        r_hat = self.bag_estimate(model, images, masks, sample_idx, ctx, augment=True)
        return Step(proportion_loss(r_hat, float(target[0]), float(gamma[0])), images.shape[1],
                    [ctx.samples[int(sample_idx[0])]])

    @torch.no_grad()
    def validate(self, model, loader, ctx) -> float:
        model.eval()
        losses = [proportion_loss(self.bag_estimate(model, images, masks, idx, ctx, augment=False), float(target[0]),
                                  float(gamma[0])).item() for images, masks, target, gamma, idx in loader]
        return float(np.mean(losses)) if losses else float("nan")

    def card_fields(self) -> dict:
        return {"architecture": "resnet18 to layer2, merged onto layer1 (stride 4) → positive/negative maps",
                "label": f"{self.options['labels']} intervals per {self.options['bag']} bag",
                "intervals": interval_names(self.edges), "gammas": self.gammas.tolist(),
                "output": "positive-cell proportion per tile (s_p / (s_p + s_n))"}

    # ---- using a trained model ----
    def tile_maps(self, model, card, tissue, he_path, stain, *, sample, batch_size, workers, progress,
                  nuclei: pd.DataFrame | None, keep_maps: bool = False):
        """Per tile s_p, s_n, the nucleus count; and with ``keep_maps`` F_p and F_n upsampled
        (bilinear) to the input size and the masks at input size."""
        from ..tile_data import on_slide_batches

        masks = NucleusMasks({sample: nuclei} if nuclei is not None else {}, int(card["input_px"]),
                             float(self.options["mask_radius_um"])) if self.masked else None
        if self.masked and nuclei is None:
            raise ValueError(f"sample {sample}: model {card.get('name')} uses the nucleus mask: H&E nuclei needed")
        records = tissue.to_dict("records")
        device = next(model.parameters()).device
        done = [0]

        def fn(x):
            rows = records[done[0]:done[0] + len(x)]
            done[0] += len(x)
            m = torch.from_numpy(np.stack([masks.mask(r) for r in rows])).to(device) if masks is not None else None
            logits = model(x)
            s_p, s_n = masked_scores(logits, m)
            out = {"s_p": s_p.cpu().numpy(), "s_n": s_n.cpu().numpy()}
            if keep_maps:
                fp, fneg = (F.interpolate(f[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
                            for f in ProportionNet.maps(logits))
                out.update(fp=fp.cpu().numpy(), fn=fneg.cpu().numpy(),
                           mask=m.cpu().numpy() if m is not None else np.ones(tuple(fp.shape), np.float32))
            return out

        parts = on_slide_batches(fn, card, tissue, he_path, stain, sample=sample, device=device, batch_size=batch_size,
                                 workers=workers, progress=progress, what="estimating proportions")
        out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        out["n_nuclei"] = np.array([masks.n_nuclei(r) for r in records] if masks is not None
                                   else np.full(len(records), -1), int)
        return out

    def predict_tiles(self, model, card, tissue, he_path, stain, *, sample, batch_size, workers, progress, aux=None):
        t0 = time.time()
        out = self.tile_maps(model, card, tissue, he_path, stain, sample=sample, batch_size=batch_size,
                             workers=workers, progress=progress, nuclei=(aux or {}).get("he_nuclei"))
        s_p, s_n = out["s_p"].astype(np.float64), out["s_n"].astype(np.float64)
        total = s_p + s_n
        # a tile without nuclei has no cells to count, so no positive ones: 0 (n_he_nuclei says so)
        ratio = np.where(total > 0, s_p / np.where(total > 0, total, 1), 0.0)
        log.info("sample %s: proportions of %d tiles in %.1f s (%d without nuclei)", sample, len(tissue),
                 time.time() - t0, int((total <= 0).sum()))
        return pd.DataFrame({"predicted_ratio": ratio.astype(np.float32), "positive_score": s_p.astype(np.float32),
                             "negative_score": s_n.astype(np.float32), "n_he_nuclei": out["n_nuclei"],
                             "predicted_interval": interval_index(ratio, self.edges)})


def cell_overlay(kind: LearningFromProportions, model, card: dict, tissue: pd.DataFrame, predictions: pd.DataFrame,
                 he_path: str, stain: dict, *, sample: str, nuclei: pd.DataFrame | None, path: str,
                 n_tiles: int = 4) -> None:
    """Which cells the model counts as positive: for ``n_tiles`` tiles spread over the slide's
    predicted proportions, the H&E tile, and F_p ⊙ M (red) over F_n ⊙ M (blue) on it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import save_figure
    from ..slides import TileReader

    pred = predictions.set_index("tile_id")
    with_cells = tissue[tissue["tile_id"].map(pred["n_he_nuclei"]).fillna(0).ne(0)] if "n_he_nuclei" in pred \
        else tissue
    order = with_cells.assign(r=with_cells["tile_id"].map(pred["predicted_ratio"])).sort_values("r", kind="stable")
    picks = order.iloc[np.unique(np.linspace(0, len(order) - 1, min(n_tiles, len(order))).round().astype(int))] \
        if len(order) else order
    fig, axes = plt.subplots(2, max(1, len(picks)), figsize=(3 * max(1, len(picks)), 6.2), dpi=110, squeeze=False)
    if len(picks):
        maps = kind.tile_maps(model, card, picks.reset_index(drop=True), he_path, stain, sample=sample,
                              batch_size=len(picks), workers=0, progress=False, nuclei=nuclei, keep_maps=True)
        reader = TileReader(he_path, "he", sample)
        px = int(card["input_px"])
        for j, row in enumerate(picks.to_dict("records")):
            rgb = reader.read(row, px)
            m = maps["mask"][j]
            overlay = np.zeros((px, px, 4))
            overlay[..., 0] = maps["fp"][j] * m
            overlay[..., 2] = maps["fn"][j] * m
            overlay[..., 3] = 0.8 * np.clip(m, 0, 1)
            r_hat = maps["s_p"][j] / max(1e-9, maps["s_p"][j] + maps["s_n"][j])
            axes[0, j].imshow(rgb)
            axes[0, j].set_title(f"tile {row['tile_id']}: r̂ = {r_hat:.2f}", fontsize=8)
            axes[1, j].imshow(rgb)
            axes[1, j].imshow(overlay)
            axes[1, j].set_title("red: F_p⊙M, blue: F_n⊙M", fontsize=8)
        reader.close()
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle(f"{card.get('name')} on {sample}: cells counted positive / negative", fontsize=9)
    save_figure(fig, path)
