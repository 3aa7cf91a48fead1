"""Training-step throughput: the real data path against the model-only step, in one run.

    python bench/bench_training.py [--slide S.tiff --stain S.json] [--sizes 256 512 1024] [--workers 14]

For the tile regressor (ResNet18) and the MIL model (distribution pooling, bags of tiles):
  model-only  forward + backward + optimizer step on random tensors already on the device
  real path   tiles read from the slide by DataLoader workers (OpenSlide), pinned, copied,
              Macenko-normalised and flipped/rotated on the device, then the same step
and prints images/s of each and their ratio (goal: real ≥ 0.8 × model-only). bf16 autocast
and channels_last on CUDA. Without --slide it generates a synthetic demo slide (needs
tumormap.demo and imagecodecs) and uses the reference stain. Writes a JSON to --json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F


def random_tiles(slide_path: str, n: int, tile_px: int, mpp: float, seed: int = 0) -> pd.DataFrame:
    """A tile table of ``n`` random positions (the data path's cost, not the grid's)."""
    from tumormap.slides import open_slide, plan_read, slide_mpp

    slide = open_slide(slide_path)
    mpp0 = slide_mpp(slide, 0.25)
    plan = plan_read(slide.level_downsamples, mpp0, mpp, tile_px)
    w, h = slide.dimensions
    rng = np.random.default_rng(seed)
    xs = rng.integers(0, max(1, w - plan.extent0), n)
    ys = rng.integers(0, max(1, h - plan.extent0), n)
    return pd.DataFrame({"sample": "bench", "tile_id": np.arange(n), "row": ys // plan.extent0,
                         "col": xs // plan.extent0, "tile_px": tile_px, "mpp": mpp, "he_x": xs, "he_y": ys,
                         "he_level": plan.level, "he_downsample": plan.level_downsample,
                         "he_read_px": plan.read_px, "he_extent": plan.extent0, "he_mpp": mpp0,
                         "tumor_ratio": rng.random(n).astype(np.float32)})


def timed(step, n_steps: int, warmup: int, device) -> float:
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    images = 0
    for _ in range(n_steps):
        images += step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return images / (time.perf_counter() - t0)


def bench_regressor(args, slide, stain, target, size, device) -> dict:
    from tumormap.models.regressor import TumorRatioRegressor
    from tumormap.tile_data import BatchTransform, TileDataset, make_loader
    from tumormap.train import autocast

    bs = args.batch or max(8, min(256, 256 * 256 * 64 // (size * size)))
    model = TumorRatioRegressor(3).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step_on(x, y):
        with autocast(device):
            loss = F.l1_loss(model(x)["ratio"].float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return len(y)

    x_rand = torch.rand(bs, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y_rand = torch.rand(bs, device=device)
    model_only = timed(lambda: step_on(x_rand, y_rand), args.steps, 3, device)

    table = random_tiles(slide, bs * (args.steps + 4), size, args.mpp)
    transform = BatchTransform([stain], target, "rgb").to(device)
    loader = make_loader(TileDataset(table, {"bench": slide}, size), batch_size=bs, shuffle=True,
                         workers=args.workers, seed=0, pin_memory=device.type == "cuda")
    batches = iter(loader)
    gen = torch.Generator().manual_seed(0)

    def real_step():
        images, y, idx = next(batches)
        x = transform(images.to(device, non_blocking=True), idx.to(device, non_blocking=True), augment=True,
                      generator=gen)
        return step_on(x, y.to(device, non_blocking=True))

    real = timed(real_step, args.steps, 3, device)
    return {"model": "regressor", "tile_px": size, "batch": bs, "model_only_img_s": model_only, "real_img_s": real,
            "ratio": real / model_only}


def bench_mil(args, slide, stain, target, size, device) -> dict:
    from torch.utils.data import DataLoader

    from tumormap.mil import DistributionPoolingMIL, resnet18_extractor
    from tumormap.models.mil import BagDataset, bags_to_batch as _bags_to_batch
    from tumormap.train import autocast

    bag = args.bag_size
    n_bags = max(1, round(args.mil_images * (256 / size) ** 2 / bag))  # same pixels per step at every size
    model = DistributionPoolingMIL(resnet18_extractor(3, 128)).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=5e-4)

    def step_on(x, y):
        with autocast(device):
            loss = F.l1_loss(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return x.shape[0] * x.shape[1]

    x_rand = torch.rand(n_bags, bag, 3, size, size, device=device)
    y_rand = torch.rand(n_bags, device=device)
    model_only = timed(lambda: step_on(x_rand, y_rand), args.steps, 2, device)

    from tumormap.tile_data import BatchTransform

    table = random_tiles(slide, 4 * bag * n_bags, size, args.mpp)
    table["nuclear_area_px"], table["positive_area_px"] = 100.0, 100.0 * table["tumor_ratio"]
    transform = BatchTransform([stain], target, "rgb").to(device)
    ds = BagDataset(table, {"bench": slide}, size, bag, n_bags * (args.steps + 4), ["bench"], 0)
    loader = DataLoader(ds, batch_size=n_bags, shuffle=True, num_workers=args.workers,
                        pin_memory=device.type == "cuda", persistent_workers=args.workers > 0,
                        prefetch_factor=4 if args.workers else None)
    batches = iter(loader)
    gen = torch.Generator().manual_seed(0)

    def real_step():
        images, y, idx = next(batches)
        return step_on(_bags_to_batch(transform, images, idx, device, augment=True, gen=gen), y.to(device))

    real = timed(real_step, args.steps, 2, device)
    return {"model": "mil", "tile_px": size, "bags": n_bags, "bag_size": bag, "model_only_img_s": model_only,
            "real_img_s": real, "ratio": real / model_only}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slide")
    ap.add_argument("--stain", help="stain JSON of the slide (default: the reference stain)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    ap.add_argument("--mpp", type=float, default=0.5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    ap.add_argument("--bag-size", type=int, default=100)
    ap.add_argument("--mil-images", type=int, default=400, help="tiles per MIL step at 256 px")
    ap.add_argument("--models", nargs="+", default=["regressor", "mil"])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from tumormap.stain import reference_stain

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    slide = args.slide
    if slide is None:
        from demo_slide import demo_slide

        slide = demo_slide()
    stain = json.loads(Path(args.stain).read_text()) if args.stain else reference_stain()
    target = reference_stain()
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"device {name}, {args.workers} loader workers, slide {slide}")
    results = []
    for size in args.sizes:
        for kind in args.models:
            fn = bench_regressor if kind == "regressor" else bench_mil
            r = fn(args, slide, stain, target, size, device)
            results.append(r)
            print(f"{r['model']:9s} {size:5d} px: model-only {r['model_only_img_s']:9.1f} img/s, "
                  f"real data path {r['real_img_s']:9.1f} img/s, ratio {r['ratio']:.2f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "workers": args.workers, "results": results}, indent=2))


if __name__ == "__main__":
    main()
