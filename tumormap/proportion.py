"""Proportion labels as pathologists record them (intervals such as '1–25 %'), the bags they
label, the nucleus mask, and the interval metrics of Okuo et al. (masked learning from label
proportions). Torch-free: the sample-sheet check and the evaluation use it without torch; the
model kind ``llp`` (``tumormap/models/llp.py``) builds on it.

Intervals are given by increasing edges in [0, 1]; interval k is [edges[k], edges[k+1]) (the
last one closed). A bag's training target is its interval's midpoint.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

PAPER_EDGES = (0.0, 0.01, 0.25, 0.5, 0.75, 1.0)  # '0–1 %', '1–25 %', '25–50 %', '50–75 %', '75–100 %'
LOSSES = ("proportion", "focal", "weighted_focal")
MASKS = ("nuclei", "none")
BAGS = ("region", "slide")
LABEL_SOURCES = ("ihc", "sheet", "regions")
SHEET_COLUMN = "ki67_interval"
REGIONS_COLUMN = "ki67_regions"  # a QuPath GeoJSON of polygons, each classified by its interval
DEFAULT_OPTIONS = {"loss": "weighted_focal", "mask": "nuclei", "edges": list(PAPER_EDGES), "bag": "region",
                   "labels": "ihc"}


def check_edges(edges, where: str = "edges") -> np.ndarray:
    """Edges as a float array: at least two intervals, strictly increasing, within [0, 1]."""
    try:
        e = np.asarray([float(x) for x in edges], dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: interval edges must be numbers, got {edges!r}") from None
    if len(e) < 3:
        raise ValueError(f"{where}: need at least 3 interval edges (2 intervals), got {list(e)}")
    if not np.all(np.diff(e) > 0):
        raise ValueError(f"{where}: interval edges must be strictly increasing, got {list(e)}")
    if e[0] < 0 or e[-1] > 1:
        raise ValueError(f"{where}: interval edges must lie in [0, 1] (proportions), got {list(e)}")
    return e


def _pct(x: float) -> str:
    return f"{100 * x:.4g}"


def interval_names(edges) -> list[str]:
    """'0–1 %', '1–25 %', … for the edges."""
    e = check_edges(edges)
    return [f"{_pct(lo)}–{_pct(hi)} %" for lo, hi in zip(e[:-1], e[1:])]


def midpoints(edges) -> np.ndarray:
    e = check_edges(edges)
    return (e[:-1] + e[1:]) / 2


def interval_index(ratio, edges) -> np.ndarray:
    """The interval of each ratio (int array; -1 where the ratio is NaN)."""
    e = check_edges(edges)
    r = np.atleast_1d(np.asarray(ratio, dtype=float))
    out = np.searchsorted(e[1:-1], np.clip(r, e[0], e[-1]), side="right").astype(int)
    out[~np.isfinite(r)] = -1
    return out


_NUMBER = r"(\d+(?:\.\d+)?)"
_INTERVAL_TEXT = re.compile(rf"^\s*{_NUMBER}\s*(%?)\s*(?:-|–|—|to)\s*{_NUMBER}\s*(%?)\s*$")


def parse_interval(text, edges, where: str) -> int:
    """The interval index of a label such as '1–25 %', '1-25%', '1 to 25 %' or '0.01-0.25'
    (fractions when both numbers are ≤ 1 and no '%' is written). Refused, naming ``where``, when
    the text is not an interval or matches none of the configured ones."""
    e = check_edges(edges)
    names = interval_names(e)
    m = _INTERVAL_TEXT.match(str(text))
    if not m:
        raise ValueError(f"{where}: {SHEET_COLUMN} {text!r} is not an interval such as '1–25 %'; "
                         f"expected one of {', '.join(names)}")
    lo, hi = float(m.group(1)), float(m.group(3))
    if m.group(2) or m.group(4) or max(lo, hi) > 1:
        lo, hi = lo / 100, hi / 100
    for k, (a, b) in enumerate(zip(e[:-1], e[1:])):
        if math.isclose(lo, a, abs_tol=1e-9) and math.isclose(hi, b, abs_tol=1e-9):
            return k
    raise ValueError(f"{where}: {SHEET_COLUMN} {text!r} is none of the configured intervals "
                     f"({', '.join(names)}; the model's `edges`)")


def check_sheet_intervals(sheet: pd.DataFrame, edges, sheet_name: str) -> None:
    """Every non-empty ``ki67_interval`` of the sheet parses, and so does every region of its
    ``ki67_regions`` files (errors name the sheet, the row as :func:`tumormap.samples.read_sample_sheet`
    counts them, header = row 1, the sample, and for a region the file and feature)."""
    for i, row in enumerate(sheet.to_dict("records"), start=2):
        where = f"{sheet_name}, row {i} (sample '{row['sample']}')"
        text = row.get(SHEET_COLUMN)
        if isinstance(text, str) and text.strip():
            parse_interval(text, edges, where)
        path = row.get(REGIONS_COLUMN)
        if isinstance(path, str) and path.strip():
            read_interval_regions(path, edges, where)


def read_interval_regions(path, edges, where: str = "") -> list[dict]:
    """Annotated regions of a QuPath GeoJSON export: Polygon and MultiPolygon features (H&E level-0
    px) classified by their interval ('1–25 %', …). Returns per feature its ``rings`` (exterior
    first, then holes, per polygon), the label ``text`` and ``interval`` index. A file that is not
    such a GeoJSON, or a region whose class is no configured interval, is refused by name.
    ``edges`` None: the texts are kept unparsed (``interval`` -1; the model parses them)."""
    import json
    from pathlib import Path

    path = Path(path)
    prefix = f"{where}: " if where else ""
    if not path.is_file():
        raise ValueError(f"{prefix}{REGIONS_COLUMN} file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{prefix}{path}: not valid JSON ({exc})") from None
    features = data.get("features") if isinstance(data, dict) and data.get("type") == "FeatureCollection" else         [data] if isinstance(data, dict) and data.get("type") == "Feature" else data
    if not isinstance(features, list):
        raise ValueError(f"{prefix}{path}: expected a GeoJSON FeatureCollection, Feature or list of Features")
    regions = []
    for i, f in enumerate(features):
        geometry = (f or {}).get("geometry") or {} if isinstance(f, dict) else {}
        if geometry.get("type") not in ("Polygon", "MultiPolygon"):
            continue
        cls = (f.get("properties") or {}).get("classification")
        text = cls.get("name", "") if isinstance(cls, dict) else (cls or "")
        k = parse_interval(text, edges, f"{prefix}{path}, feature {i}") if edges is not None else -1
        polygons = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
        try:
            rings = [[np.asarray(ring, float)[:, :2] for ring in polygon] for polygon in polygons]
        except (TypeError, ValueError, IndexError):
            raise ValueError(f"{prefix}{path}, feature {i}: coordinates are not [[x, y], …] rings") from None
        regions.append({"text": str(text), "interval": k, "rings": rings})
    if not regions:
        raise ValueError(f"{prefix}{path}: no Polygon or MultiPolygon region among {len(features)} features")
    return regions


def region_of_tiles(tiles: pd.DataFrame, regions: list[dict]) -> np.ndarray:
    """Per tile (``he_x, he_y, he_extent``), the index of the first region holding its centre (inside
    an exterior ring and outside its holes), -1 for none."""
    from matplotlib.path import Path as Polygon

    centres = np.column_stack([tiles["he_x"].to_numpy(float) + tiles["he_extent"].to_numpy(float) / 2,
                               tiles["he_y"].to_numpy(float) + tiles["he_extent"].to_numpy(float) / 2])
    out = np.full(len(tiles), -1, int)
    for r, region in enumerate(regions):
        inside = np.zeros(len(tiles), bool)
        for exterior, *holes in region["rings"]:
            part = Polygon(exterior).contains_points(centres)
            for hole in holes:
                part &= ~Polygon(hole).contains_points(centres)
            inside |= part
        out[(out < 0) & inside] = r
    return out


def interval_gammas(edges, loss: str, gamma: float = 2.0) -> np.ndarray:
    """γ per interval: ``proportion`` 0 everywhere (the plain KL proportion loss); ``focal`` γ
    everywhere; ``weighted_focal`` 0 for the narrowest interval(s) and γ for the others
    (Okuo et al.: γ = 0 for '0–1 %', 2 otherwise)."""
    e = check_edges(edges)
    widths = np.diff(e)
    if loss == "proportion":
        return np.zeros(len(widths))
    if loss == "focal":
        return np.full(len(widths), float(gamma))
    if loss == "weighted_focal":
        return np.where(np.isclose(widths, widths.min()), 0.0, float(gamma))
    raise ValueError(f"loss {loss!r}: expected one of {', '.join(LOSSES)}")


def check_options(options: dict, where: str) -> None:
    """The torch-free checks of an ``llp`` model entry (run when the workflow starts)."""
    o = {**DEFAULT_OPTIONS, **options}
    check_edges(o["edges"], f"{where}.edges")
    for key, allowed in (("loss", LOSSES), ("mask", MASKS), ("bag", BAGS), ("labels", LABEL_SOURCES)):
        if o[key] not in allowed:
            raise ValueError(f"{where}.{key}: {o[key]!r} is not one of {', '.join(allowed)}")
    if o["labels"] == "sheet" and o["bag"] != "slide":
        raise ValueError(f"{where}: labels from the sheet ({SHEET_COLUMN}) label whole slides: set bag: slide")
    if o["labels"] == "regions" and o["bag"] != "region":
        raise ValueError(f"{where}: labels: regions makes the annotated regions ({REGIONS_COLUMN}) the bags: "
                         f"set bag: region (the default)")


def uses_nuclei(entry: dict) -> bool:
    """Whether a model entry needs the H&E nuclei (an ``llp`` model with the nucleus mask)."""
    return entry.get("kind") == "llp" and entry.get("mask", DEFAULT_OPTIONS["mask"]) == "nuclei"


# ---------------------------------------------------------------------------- bags
def region_bags(tiles: pd.DataFrame, region_px: float) -> np.ndarray:
    """Bag id per tile: the square of side ``region_px`` (H&E level-0 px, grid from the slide
    origin) holding the tile's centre, as 'col_row' strings; tiles need ``he_x, he_y, he_extent``."""
    cx = (tiles["he_x"].to_numpy(float) + tiles["he_extent"].to_numpy(float) / 2) // region_px
    cy = (tiles["he_y"].to_numpy(float) + tiles["he_extent"].to_numpy(float) / 2) // region_px
    return np.array([f"{int(x)}_{int(y)}" for x, y in zip(cx, cy)], dtype=object)


def bag_ids(tiles: pd.DataFrame, bag: str, region_um: float, mpp0: float | pd.Series) -> np.ndarray:
    """'sample:bag' per tile for ``bag`` = region (squares of ``region_um``) or slide."""
    sample = tiles["sample"].astype(str).to_numpy()
    if bag == "slide":
        return sample.astype(object)
    region_px = float(region_um) / np.asarray(mpp0, dtype=float)
    if np.ndim(region_px):
        ids = np.empty(len(tiles), dtype=object)
        for value in np.unique(region_px):
            sel = region_px == value
            ids[sel] = region_bags(tiles[sel], float(value))
    else:
        ids = region_bags(tiles, float(region_px))
    return np.array([f"{s}:{b}" for s, b in zip(sample, ids)], dtype=object)


def ihc_bag_ratio(tiles: pd.DataFrame) -> float:
    """A bag's IHC ratio: positive nuclear area / nuclear area summed over its tiles with a ratio
    (the tile formula dab_over_all pooled over the bag; NaN without nuclei). MIL bags too."""
    ok = np.isfinite(tiles["tumor_ratio"].astype(float))
    nuclear = float(tiles.loc[ok, "nuclear_area_px"].sum())
    return float(tiles.loc[ok, "positive_area_px"].sum()) / nuclear if nuclear > 0 else math.nan


# ---------------------------------------------------------------------------- masks
def disc_mask(centroids, shape: tuple[int, int], radius_px: float) -> np.ndarray:
    """Boolean mask of discs of ``radius_px`` around (x, y) centroids (pixel centres at
    integer + 0.5 coordinates are in a disc when their distance ≤ radius)."""
    h, w = shape
    mask = np.zeros((h, w), bool)
    pts = np.asarray(centroids, dtype=float).reshape(-1, 2)
    r = float(radius_px)
    for x, y in pts:
        x0, x1 = max(0, int(math.floor(x - r))), min(w, int(math.ceil(x + r)) + 1)
        y0, y1 = max(0, int(math.floor(y - r))), min(h, int(math.ceil(y + r)) + 1)
        if x0 >= x1 or y0 >= y1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        mask[y0:y1, x0:x1] |= (xx + 0.5 - x) ** 2 + (yy + 0.5 - y) ** 2 <= r * r
    return mask


# ---------------------------------------------------------------------------- metrics
def interval_metrics(true_idx, pred_idx, n_intervals: int) -> dict:
    """Per-interval recall, precision and F1, and their means (mRecall, mPrecision, mF1: the
    mean over the intervals present in the truth or the predictions, as scikit-learn's macro
    average with zero_division=0), from interval indices (-1 entries are left out)."""
    t, p = np.asarray(true_idx, int), np.asarray(pred_idx, int)
    ok = (t >= 0) & (p >= 0)
    t, p = t[ok], p[ok]
    cm = np.zeros((n_intervals, n_intervals), int)
    np.add.at(cm, (t, p), 1)
    tp = np.diag(cm).astype(float)
    support, predicted = cm.sum(1).astype(float), cm.sum(0).astype(float)
    recall = np.divide(tp, support, out=np.zeros(n_intervals), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros(n_intervals), where=predicted > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(n_intervals),
                   where=precision + recall > 0)
    seen = (support > 0) | (predicted > 0)
    mean = (lambda x: float(x[seen].mean())) if seen.any() else (lambda x: math.nan)
    return {"confusion": cm.tolist(), "recall": recall.tolist(), "precision": precision.tolist(), "f1": f1.tolist(),
            "support": support.astype(int).tolist(), "mRecall": mean(recall), "mPrecision": mean(precision),
            "mF1": mean(f1), "accuracy": float(tp.sum() / max(1, len(t))), "n_bags": int(len(t))}


# ---------------------------------------------------------------------------- evaluation
def bag_table(predictions: pd.DataFrame, ground_truth: pd.DataFrame, card: dict,
              regions: dict[str, pd.DataFrame] | None = None) -> pd.DataFrame:
    """One row per test bag as the model's card defines bags (``bag``, ``region_um``): the
    estimate r̂ = Σ s_p / Σ (s_p + s_n) over the bag's tiles with an IHC ratio (the tiles a
    training bag holds), the bag's IHC ratio, and for demo slides (``regions``: sample → truth
    table) the drawn region's true ratio; with the intervals of each."""
    from .evaluate import region_fraction

    o = card["options"]
    edges = check_edges(o["edges"])
    merged = predictions.merge(ground_truth[["sample", "tile_id", "tumor_ratio", "nuclear_area_px",
                                             "positive_area_px"]], on=["sample", "tile_id"], how="inner")
    merged = merged[np.isfinite(merged["tumor_ratio"].astype(float)) & (merged.get("n_he_nuclei", 1) != 0)]
    columns = ["sample", "bag", "n_tiles", "r_hat", "ihc_ratio", "true_ratio", "ihc_interval", "true_interval",
               "predicted_interval"]
    if merged.empty:
        return pd.DataFrame(columns=columns)
    mpp0 = float(card["input_mpp"]) * float(card["tile_px"]) / merged["he_extent"].astype(float)
    merged = merged.assign(bag=bag_ids(merged, o["bag"], float(o.get("region_um", 512.0)), mpp0))
    truth = np.full(len(merged), np.nan)
    for sample, table in (regions or {}).items():
        sel = (merged["sample"] == sample).to_numpy()
        truth[sel] = region_fraction(merged[sel], table, "true_ratio")
    merged["true_ratio"] = truth
    rows = []
    for bag, g in merged.groupby("bag", sort=True):
        if len(g) < int(o.get("min_bag_tiles", 1)):
            continue
        s_p, s_n = float(g["positive_score"].sum()), float(g["negative_score"].sum())
        t = g["true_ratio"].dropna()
        rows.append({"sample": str(g["sample"].iloc[0]), "bag": str(bag), "n_tiles": int(len(g)),
                     "r_hat": s_p / (s_p + s_n) if s_p + s_n > 0 else 0.0, "ihc_ratio": ihc_bag_ratio(g),
                     "true_ratio": float(t.median()) if len(t) else np.nan})
    out = pd.DataFrame(rows, columns=columns[:6])
    for col, src in (("ihc_interval", "ihc_ratio"), ("true_interval", "true_ratio"), ("predicted_interval", "r_hat")):
        out[col] = interval_index(out[src].to_numpy(float), edges) if len(out) else np.zeros(0, int)
    return out[columns]


def slide_proportion(predictions: pd.DataFrame, edges) -> dict:
    """A whole slide as one bag: r̂ = Σ s_p / Σ (s_p + s_n) over its tiles, and its interval."""
    s_p, s_n = float(predictions["positive_score"].sum()), float(predictions["negative_score"].sum())
    r_hat = s_p / (s_p + s_n) if s_p + s_n > 0 else float("nan")
    k = int(interval_index(r_hat, edges)[0])
    return {"slide_proportion": r_hat, "slide_interval": interval_names(edges)[k] if k >= 0 else ""}


def proportion_metrics(bags: pd.DataFrame, edges) -> dict:
    """Interval metrics (:func:`interval_metrics`) and MAE of the bag estimates against the IHC
    ratio, and against the drawn truth where the bags have one (keys prefixed ``truth_``)."""
    e = check_edges(edges)
    n = len(e) - 1
    out = {"intervals": interval_names(e), "n_bags": int(len(bags))}
    for prefix, ratio, interval in (("", "ihc_ratio", "ihc_interval"), ("truth_", "true_ratio", "true_interval")):
        ok = np.isfinite(bags[ratio].astype(float)) if len(bags) else np.zeros(0, bool)
        if not ok.any():
            continue
        m = interval_metrics(bags.loc[ok, interval], bags.loc[ok, "predicted_interval"], n)
        m["mae"] = float(np.abs(bags.loc[ok, "r_hat"] - bags.loc[ok, ratio]).mean())
        out.update({f"{prefix}{k}": v for k, v in m.items()})
    return out


def ablation_table(metrics: dict[str, dict], options: dict[str, dict]) -> pd.DataFrame:
    """One row per llp model: loss, mask, mRecall, mPrecision, mF1, per-interval recall and MAE on
    the test bags (drawn truth where measured, else IHC), best mF1 first."""
    rows = []
    for name, m in metrics.items():
        prefix = "truth_" if "truth_mF1" in m else ""
        row = {"model": name, "loss": options[name].get("loss", DEFAULT_OPTIONS["loss"]),
               "mask": options[name].get("mask", DEFAULT_OPTIONS["mask"]),
               "truth": "drawn regions" if prefix else "IHC", "n_bags": m.get(f"{prefix}n_bags", m.get("n_bags", 0))}
        for key in ("mRecall", "mPrecision", "mF1", "mae"):
            row[key] = m.get(f"{prefix}{key}", np.nan)
        for interval, recall in zip(m.get("intervals", []), m.get(f"{prefix}recall", [])):
            row[f"recall {interval}"] = recall
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.sort_values("mF1", ascending=False, kind="stable").reset_index(drop=True) if len(table) else table


def plot_ablation_table(table: pd.DataFrame, path: str) -> None:
    """The ablation table as a figure for the report (the paper's Table 1 layout)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .io import save_figure

    shown = table.drop(columns=[c for c in ("truth", "n_bags") if c in table]).copy()
    cells = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row] for row in shown.itertuples(index=False)]
    fig, ax = plt.subplots(figsize=(min(2 + 1.1 * shown.shape[1], 18), 0.6 + 0.35 * max(1, len(shown))), dpi=110)
    ax.axis("off")
    if cells:
        tab = ax.table(cellText=cells, colLabels=[c.replace("recall ", "R ") for c in shown.columns], loc="center")
        tab.auto_set_font_size(False)
        tab.set_fontsize(8)
    truth = table["truth"].iloc[0] if len(table) else "-"
    ax.set_title(f"llp models on the test bags (truth: {truth}; R = per-interval recall)", fontsize=9)
    save_figure(fig, path)
