"""Tile-read throughput of tumormap against raw reads of the same slide, in one run.

    .venv/bin/python bench/bench_tiling.py [SLIDE] [--tile-px 256] [--mpp 0.5] [--n 400]

Without SLIDE it generates (once) a demo slide under bench/.cache. Prints tiles/s of:
  tumormap   TileReader.read on the tile table (what training/prediction do)
  openslide  raw OpenSlide read_region of the same regions at the same level
  tiffslide  raw tiffslide read_region of the same regions (peer library)
  store      reading the same tiles back from a per-sample uint8 array store (np.memmap),
             and the time it takes to build that store
and the ratios tumormap/openslide and tumormap/fastest raw reader.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def rate(fn, items) -> float:
    t0 = time.perf_counter()
    for item in items:
        fn(item)
    return len(items) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("slide", nargs="?")
    ap.add_argument("--tile-px", type=int, default=256)
    ap.add_argument("--mpp", type=float, default=0.5)
    ap.add_argument("--n", type=int, default=400)
    args = ap.parse_args()

    import openslide
    import tiffslide

    from tumormap.slides import TileReader
    from tumormap.tiling import tile_grid

    slide = args.slide
    if slide is None:
        from demo_slide import demo_slide

        slide = demo_slide()
    table = tile_grid(slide, None, "bench", target_mpp=args.mpp, tile_px=args.tile_px)
    rows = table.sample(min(args.n, len(table)), random_state=0).to_dict("records")
    level, read_px = int(rows[0]["he_level"]), int(rows[0]["he_read_px"])
    print(f"slide {slide}: {len(table)} tiles of {args.tile_px} px at {args.mpp} µm/px; reading {len(rows)} "
          f"tiles of {read_px} px at level {level}")

    reader = TileReader(slide, "he", "bench")
    osl = openslide.OpenSlide(slide)
    tsl = tiffslide.TiffSlide(slide)
    results = {}
    for _ in range(2):  # second pass is the measured one (warm page cache for every reader alike)
        results["tumormap"] = rate(lambda r: reader.read(r), rows)
        results["openslide"] = rate(lambda r: osl.read_region((int(r["he_x"]), int(r["he_y"])), level,
                                                              (read_px, read_px)), rows)
        results["tiffslide"] = rate(lambda r: tsl.read_region((int(r["he_x"]), int(r["he_y"])), level,
                                                              (read_px, read_px), as_array=True), rows)
    t0 = time.perf_counter()
    store_path = Path(__file__).parent / ".cache" / "store.npy"
    store_path.parent.mkdir(exist_ok=True)
    store = np.lib.format.open_memmap(store_path, mode="w+", dtype=np.uint8,
                                      shape=(len(rows), args.tile_px, args.tile_px, 3))
    for i, r in enumerate(rows):
        store[i] = reader.read(r)
    store.flush()
    build_s = time.perf_counter() - t0
    store = np.load(store_path, mmap_mode="r")
    results["store"] = rate(lambda i: np.array(store[i]), list(range(len(rows))))
    store_path.unlink()

    for name, value in results.items():
        print(f"{name:10s} {value:9.1f} tiles/s")
    fastest_raw = max(results["openslide"], results["tiffslide"])
    print(f"ratio tumormap/openslide      {results['tumormap'] / results['openslide']:.2f}")
    print(f"ratio tumormap/fastest raw    {results['tumormap'] / fastest_raw:.2f}")
    print(f"array store: build {build_s:.1f} s for {len(rows)} tiles ({len(rows) / build_s:.1f} tiles/s), "
          f"then {results['store'] / results['tumormap']:.1f}x the slide read rate; "
          f"size {len(rows) * args.tile_px ** 2 * 3 / 2**20:.0f} MiB uncompressed")


if __name__ == "__main__":
    main()
