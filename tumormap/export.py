"""Maps in the formats pathologists' tools open: GeoJSON for QuPath, a per-slide summary CSV."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from .io import atomic_path

MEASUREMENT = "tumor_ratio"


def tiles_geojson(predictions: pd.DataFrame, *, sample: str, model: str, tumor_threshold: float,
                  object_type: str = "detection") -> dict:
    """A FeatureCollection with one square polygon per predicted tile.

    Coordinates are slide level-0 pixels (x right, y down), as QuPath expects; each
    feature carries the predicted ratio as a QuPath measurement (``properties.measurements``)
    and the tile id, so it lines up with the tile table. Tiles at or above
    ``tumor_threshold`` (``maps.tumor_threshold``) are classified Tumor.
    """
    if object_type not in ("detection", "annotation", "tile"):
        raise ValueError(f"object_type must be detection, annotation or tile, not {object_type!r}")
    features = []
    for row in predictions.itertuples(index=False):
        x0, y0, e = float(row.he_x), float(row.he_y), float(row.he_extent)
        ring = [[x0, y0], [x0 + e, y0], [x0 + e, y0 + e], [x0, y0 + e], [x0, y0]]
        ratio = float(row.predicted_ratio)
        features.append({
            "type": "Feature",
            "id": f"{sample}-{int(row.tile_id)}",
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {
                "objectType": object_type,
                "name": f"tile {int(row.tile_id)}",
                "classification": {"name": "Tumor" if ratio >= tumor_threshold else "Stroma/normal"},
                "measurements": {MEASUREMENT: ratio},
                "tile_id": int(row.tile_id), "row": int(row.row), "col": int(row.col),
                "sample": sample, "model": model,
            },
        })
    return {"type": "FeatureCollection", "features": features}


def write_geojson(collection: dict, path: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(collection))


def slide_summary(predictions: pd.DataFrame, tissue: pd.DataFrame, *, sample: str, model: str,
                  tumor_threshold: float = 0.5) -> dict:
    """Mean and tissue-weighted tumor ratio, and tumor area (mm²) above ``tumor_threshold``."""
    merged = predictions.merge(tissue[["tile_id", "he_tissue", "he_extent", "he_mpp"]], on="tile_id",
                               suffixes=("", "_t"))
    ratio = merged["predicted_ratio"].to_numpy(float)
    weights = merged["he_tissue"].to_numpy(float)
    tile_mm2 = (merged["he_extent"].to_numpy(float) * merged["he_mpp"].to_numpy(float) / 1000.0) ** 2
    tissue_mm2 = tile_mm2 * weights
    above = ratio >= tumor_threshold
    return {
        "sample": sample, "model": model, "n_tissue_tiles": int(len(merged)),
        "mean_tumor_ratio": float(ratio.mean()) if len(ratio) else float("nan"),
        "tissue_weighted_tumor_ratio": float((ratio * weights).sum() / weights.sum()) if weights.sum() else float("nan"),
        "tissue_area_mm2": float(tissue_mm2.sum()),
        f"tumor_area_mm2_ratio_ge_{tumor_threshold:g}": float(tissue_mm2[above].sum()),
        "estimated_tumor_area_mm2": float((tissue_mm2 * ratio).sum()),
    }


def write_summary_csv(rows: list[dict], path: str) -> None:
    with atomic_path(path) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)


def check_geojson(collection: dict, width: int, height: int) -> None:
    """Raise ValueError unless every polygon lies within the slide and every ratio is in [0, 1]."""
    for feature in collection["features"]:
        coords = np.asarray(feature["geometry"]["coordinates"][0], float)
        if coords.min() < 0 or coords[:, 0].max() > width or coords[:, 1].max() > height:
            raise ValueError(f"feature {feature['id']} lies outside the {width}×{height} slide")
        ratio = feature["properties"]["measurements"][MEASUREMENT]
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"feature {feature['id']} has ratio {ratio} outside [0, 1]")
