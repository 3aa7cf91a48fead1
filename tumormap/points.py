"""Point annotations (rare events such as tumor foci or mitoses, seed 002): reading them from the
tools pathologists use, turning them into probability maps, and scoring point detections.

Points are in H&E level-0 pixels with a class name: QuPath's GeoJSON export (Point and MultiPoint
features, ``properties.classification.name``) or a CSV/TSV with columns ``x, y`` and optional
``class``. A point becomes a probability map by a kernel of the distance d to it: ``gaussian``
exp(−d² / 2σ²) (σ = ``scale_um``) or the paper's ``exponential`` e^(−a·d) (a = 1 / ``scale_um``),
so that tiles cut next to a point are labelled too. Torch-free.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

KERNELS = ("gaussian", "exponential")
POINT_COLUMNS = ["x", "y", "class"]


class PointFileError(ValueError):
    """A point file that cannot be read; the message names the file and the reason."""


def _feature_points(feature, path: Path, i: int) -> list[tuple[float, float, str]]:
    if not isinstance(feature, dict) or feature.get("type") != "Feature":
        raise PointFileError(f"{path}: item {i} is not a GeoJSON Feature")
    geometry = feature.get("geometry") or {}
    kind = geometry.get("type")
    if kind not in ("Point", "MultiPoint"):
        return []  # QuPath exports may hold polygons too: only points are point labels
    props = feature.get("properties") or {}
    cls = props.get("classification")
    name = cls.get("name", "") if isinstance(cls, dict) else (cls or "")
    coords = [geometry.get("coordinates")] if kind == "Point" else geometry.get("coordinates")
    out = []
    for c in coords or []:
        try:
            x, y = float(c[0]), float(c[1])
        except (TypeError, ValueError, IndexError):
            raise PointFileError(f"{path}: feature {i} ({kind}) has a coordinate that is not [x, y]: {c!r}") from None
        if not (math.isfinite(x) and math.isfinite(y)):
            raise PointFileError(f"{path}: feature {i} has a non-finite coordinate {c!r}")
        out.append((x, y, str(name)))
    return out


def read_points(path: str | Path) -> pd.DataFrame:
    """Points of a QuPath GeoJSON export (``.geojson``/``.json``) or a CSV/TSV (``x, y[, class]``),
    as a table ``x, y, class`` (level-0 px). A malformed file is refused with its name and why."""
    path = Path(path)
    if not path.is_file():
        raise PointFileError(f"point file not found: {path}")
    if path.suffix.lower() in (".geojson", ".json"):
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PointFileError(f"{path}: not valid JSON ({exc})") from None
        if isinstance(data, dict) and data.get("type") == "FeatureCollection":
            features = data.get("features")
        elif isinstance(data, dict) and data.get("type") == "Feature":
            features = [data]
        elif isinstance(data, list):
            features = data
        else:
            raise PointFileError(f"{path}: expected a GeoJSON FeatureCollection, Feature or list of Features")
        if not isinstance(features, list):
            raise PointFileError(f"{path}: 'features' is not a list")
        rows = [p for i, f in enumerate(features) for p in _feature_points(f, path, i)]
        if features and not rows:
            raise PointFileError(f"{path}: no Point or MultiPoint feature among {len(features)} features")
        return pd.DataFrame(rows, columns=POINT_COLUMNS).astype({"x": float, "y": float, "class": str})
    if path.suffix.lower() in (".csv", ".tsv", ".txt"):
        try:
            table = pd.read_csv(path, sep=None, engine="python")
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise PointFileError(f"{path}: not a readable CSV/TSV ({exc})") from None
        table.columns = [str(c).strip().lower() for c in table.columns]
        missing = [c for c in ("x", "y") if c not in table]
        if missing:
            raise PointFileError(f"{path}: missing column(s) {', '.join(missing)} "
                                 f"(columns: {', '.join(table.columns)})")
        xy = table[["x", "y"]].apply(pd.to_numeric, errors="coerce")
        bad = xy.isna().any(axis=1) | ~np.isfinite(xy.to_numpy(float)).all(axis=1)
        if bad.any():
            raise PointFileError(f"{path}: row {int(np.flatnonzero(bad.to_numpy())[0]) + 2}: x/y is not a number")
        cls = table["class"].fillna("").astype(str) if "class" in table else pd.Series([""] * len(table))
        return pd.DataFrame({"x": xy["x"].astype(float), "y": xy["y"].astype(float), "class": cls.to_numpy()})
    raise PointFileError(f"{path}: unknown point file type {path.suffix!r} (QuPath .geojson, or .csv/.tsv with x, y)")


def points_geojson(points: pd.DataFrame, object_type: str = "annotation") -> dict:
    """A QuPath-importable FeatureCollection: one Point feature per row, classified by ``class``."""
    features = [{"type": "Feature", "id": f"point-{i}",
                 "geometry": {"type": "Point", "coordinates": [float(r.x), float(r.y)]},
                 "properties": {"objectType": object_type, **({"classification": {"name": r[2]}} if r[2] else {})}}
                for i, r in enumerate(points[POINT_COLUMNS].itertuples(index=False))]
    return {"type": "FeatureCollection", "features": features}


# ---------------------------------------------------------------------------- probability maps
def kernel(d: np.ndarray, kind: str, scale: float) -> np.ndarray:
    """The probability at distance ``d`` (same unit as ``scale``): ``gaussian`` exp(−d²/2σ²) with
    σ = scale, ``exponential`` e^(−d/scale)."""
    d = np.asarray(d, dtype=float)
    if kind == "gaussian":
        return np.exp(-(d ** 2) / (2 * scale ** 2))
    if kind == "exponential":
        return np.exp(-d / scale)
    raise ValueError(f"kernel {kind!r}: expected one of {', '.join(KERNELS)}")


def probability_map(points_xy, shape: tuple[int, int], *, px_size: float = 1.0, kind: str = "gaussian",
                    scale: float = 1.0) -> np.ndarray:
    """float32 map of ``shape``: per pixel the largest kernel value over the points; distances
    between pixel indices (a point at (x, y) = (3, 1) lights pixel [1, 3] with 1.0), times
    ``px_size`` (µm per map pixel) in the unit of ``scale``."""
    h, w = shape
    out = np.zeros((h, w), np.float32)
    yy, xx = np.mgrid[:h, :w].astype(float)
    for x, y in np.asarray(points_xy, dtype=float).reshape(-1, 2):
        d = np.hypot(xx - x, yy - y) * px_size
        np.maximum(out, kernel(d, kind, scale).astype(np.float32), out=out)
    return out


def tile_point_maps(points: pd.DataFrame, tiles: pd.DataFrame, *, out_px: int, kind: str = "gaussian",
                    scale_um: float = 8.0, threshold: float = 0.5) -> tuple[pd.DataFrame, np.ndarray]:
    """Per tile of a tile table (``tile_id, he_x, he_y, he_extent, he_mpp``): its probability map
    at ``out_px`` (points near the tile count too) and a table ``tile_id, n_points`` (inside the
    tile), ``max_probability``, ``label`` (max ≥ ``threshold``). Maps: float16 N × out_px × out_px."""
    maps = np.zeros((len(tiles), out_px, out_px), np.float16)
    rows = []
    xy = points[["x", "y"]].to_numpy(float)
    for i, t in enumerate(tiles[["tile_id", "he_x", "he_y", "he_extent", "he_mpp"]].itertuples(index=False)):
        px0 = float(t.he_extent) / out_px                     # level-0 px per map pixel
        reach = 4 * scale_um / float(t.he_mpp) if kind == "gaussian" else 12 * scale_um / float(t.he_mpp)
        near = xy[(xy[:, 0] > t.he_x - reach) & (xy[:, 0] < t.he_x + t.he_extent + reach)
                  & (xy[:, 1] > t.he_y - reach) & (xy[:, 1] < t.he_y + t.he_extent + reach)]
        local = (near - [t.he_x, t.he_y]) / px0 - 0.5          # map pixel indices (pixel centres at integers)
        m = probability_map(local, (out_px, out_px), px_size=px0 * float(t.he_mpp), kind=kind, scale=scale_um)
        maps[i] = m
        inside = ((near[:, 0] >= t.he_x) & (near[:, 0] < t.he_x + t.he_extent) & (near[:, 1] >= t.he_y)
                  & (near[:, 1] < t.he_y + t.he_extent))
        rows.append({"tile_id": int(t.tile_id), "n_points": int(inside.sum()), "max_probability": float(m.max()),
                     "label": bool(m.max() >= threshold)})
    return pd.DataFrame(rows, columns=["tile_id", "n_points", "max_probability", "label"]), maps


# ---------------------------------------------------------------------------- scoring detections
def match_points(detected, truth, tolerance: float) -> dict:
    """One-to-one matching of detected to true points within ``tolerance`` (same unit), as many
    matches as possible (Hungarian on distances): TP, FP, FN, precision, recall, F1."""
    from scipy.optimize import linear_sum_assignment

    d = np.asarray(detected, float).reshape(-1, 2)
    t = np.asarray(truth, float).reshape(-1, 2)
    tp = 0
    if len(d) and len(t):
        dist = np.hypot(d[:, None, 0] - t[None, :, 0], d[:, None, 1] - t[None, :, 1])
        ok = dist <= tolerance
        cost = np.where(ok, dist, tolerance * (len(d) + len(t) + 1) + 1.0)  # any valid match beats none
        rows, cols = linear_sum_assignment(cost)
        tp = int(ok[rows, cols].sum())
    fp, fn = len(d) - tp, len(t) - tp
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
    return {"tp": tp, "fp": fp, "fn": fn, "precision": precision, "recall": recall, "f1": f1}


def negative_feed(predicted, labels, correct_fraction: float, seed: int = 0) -> np.ndarray:
    """Seed 002's 'negative feed': the indices of every misclassified example plus a random share
    ``correct_fraction`` (rounded down) of the correctly classified ones, sorted.
    ``predicted``/``labels``: class per example."""
    p, y = np.asarray(predicted), np.asarray(labels)
    if p.shape != y.shape:
        raise ValueError(f"negative_feed: predictions of shape {p.shape} for labels of shape {y.shape}")
    wrong = np.flatnonzero(p != y)
    right = np.flatnonzero(p == y)
    if not 0 <= correct_fraction <= 1:
        raise ValueError(f"negative_feed: correct_fraction {correct_fraction} is not in [0, 1]")
    n = int(math.floor(correct_fraction * len(right) + 1e-9))
    extra = np.random.default_rng(seed).choice(right, n, replace=False) if n else np.zeros(0, int)
    return np.sort(np.concatenate([wrong, extra]).astype(int))
