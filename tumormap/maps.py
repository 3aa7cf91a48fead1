"""Whole-slide tumor maps: predicted beside IHC-derived, over the slide thumbnail."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .evaluate import pearson


def grid_array(table: pd.DataFrame, column: str, shape: tuple[int, int]) -> np.ndarray:
    """A (rows, cols) float array of ``column`` at each tile's grid cell; NaN elsewhere."""
    arr = np.full(shape, np.nan, dtype=np.float32)
    if len(table):
        arr[table["row"].to_numpy(int), table["col"].to_numpy(int)] = table[column].to_numpy(np.float32)
    return arr


def map_agreement(predicted: np.ndarray, ihc: np.ndarray) -> dict:
    """MAE and Pearson r over the tiles that have both values."""
    both = np.isfinite(predicted) & np.isfinite(ihc)
    if not both.any():
        return {"n_tiles": 0, "mae": float("nan"), "pearson_r": float("nan")}
    p, t = predicted[both], ihc[both]
    return {"n_tiles": int(both.sum()), "mae": float(np.abs(p - t).mean()), "pearson_r": pearson(t, p)}


def render_maps(thumb: np.ndarray, thumb_downsample: float, tile_extent0: int, maps: dict[str, np.ndarray],
                path: str, title: str) -> None:
    """One panel per map (same colour scale 0–1, one colour bar) over the thumbnail."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .io import save_figure

    n = len(maps)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n + 0.8, 4.4), dpi=120, squeeze=False)
    h, w = thumb.shape[:2]
    image = None
    for ax, (name, arr) in zip(axes[0], maps.items()):
        ax.imshow(thumb)
        rows, cols = arr.shape
        extent_px = tile_extent0 / thumb_downsample  # a tile's size in thumbnail pixels
        image = ax.imshow(np.ma.masked_invalid(arr), cmap="magma", vmin=0, vmax=1, alpha=0.65,
                          extent=(0, cols * extent_px, rows * extent_px, 0), interpolation="nearest")
        ax.set(xlim=(0, w), ylim=(h, 0), title=name)
        ax.axis("off")
    fig.suptitle(title)
    fig.colorbar(image, ax=axes[0].tolist(), fraction=0.025, pad=0.02, label="tumor ratio")
    save_figure(fig, path)


def slide_maps(predictions_path: str, tiles_path: str, ground_truth_path: str | None, he_path: str, *, sample: str,
               model: str, png: str, arrays: str, agreement: str, thumbnail_px: int = 1024) -> dict:
    """Write a slide's map PNG (predicted, and IHC-derived where there is an IHC), the map
    arrays (npz: predicted, ihc, row/col grid) and the map-level agreement (JSON)."""
    from .io import atomic_path, write_json
    from .slides import open_slide, thumbnail
    from .tiling import grid_shape

    tiles = pd.read_parquet(tiles_path)
    shape = grid_shape(tiles)
    predicted = grid_array(pd.read_parquet(predictions_path), "predicted_ratio", shape)
    maps = {f"predicted ({model})": predicted}
    ihc = np.full(shape, np.nan, dtype=np.float32)
    if ground_truth_path:
        gt = pd.read_parquet(ground_truth_path)[["tile_id", "tumor_ratio"]]
        ihc = grid_array(gt.merge(tiles[["tile_id", "row", "col"]], on="tile_id"), "tumor_ratio", shape)
        maps["IHC-derived"] = ihc
    slide = open_slide(he_path, sample)
    thumb, downsample = thumbnail(slide, thumbnail_px)
    slide.close()
    result = {"sample": sample, "model": model, **map_agreement(predicted, ihc),
              "n_predicted_tiles": int(np.isfinite(predicted).sum()),
              "mean_predicted_ratio": float(np.nanmean(predicted)) if np.isfinite(predicted).any() else float("nan")}
    title = f"{sample}: tumor ratio" + (f" (map MAE {result['mae']:.3f}, r {result['pearson_r']:.2f})"
                                        if result["n_tiles"] else "")
    render_maps(thumb, downsample, int(tiles["he_extent"].iloc[0]), maps, png, title)
    with atomic_path(arrays) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, predicted=predicted, ihc=ihc, tile_extent0=int(tiles["he_extent"].iloc[0]))
    write_json(result, agreement)
    return result
