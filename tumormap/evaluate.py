"""Metrics of predicted against IHC-derived tumor ratio."""

from __future__ import annotations

import numpy as np
import pandas as pd

BINS = (0.0, 0.2, 0.5, 1.0)  # the original study's classes: 0–0.2, 0.2–0.5, 0.5–1
TOLERANCES = (0.05, 0.1, 0.2)


def bin_index(ratio: np.ndarray) -> np.ndarray:
    return np.digitize(ratio, BINS[1:-1], right=False)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def regression_metrics(y_true, y_pred, pred_bin=None) -> dict:
    """MAE, RMSE, Pearson r, accuracy within |Δ| ≤ 0.05/0.1/0.2, 3-bin accuracy and confusion.

    The 3-bin accuracy is the 3-bin head's when ``pred_bin`` (its class per tile) is given,
    else that of the binned predicted ratio; ``bin_source`` says which. Rows where either
    value is NaN are dropped; ``n`` says how many remained.
    """
    y_true, y_pred = np.asarray(y_true, float), np.asarray(y_pred, float)
    ok = np.isfinite(y_true) & np.isfinite(y_pred)
    y_true, y_pred = y_true[ok], y_pred[ok]
    n = int(len(y_true))
    if n == 0:
        return {"n": 0}
    err = y_pred - y_true
    if pred_bin is not None:
        bins_pred, source = np.asarray(pred_bin, int)[ok], "3-bin head"
    else:
        bins_pred, source = bin_index(y_pred), "binned predicted ratio"
    confusion = np.zeros((3, 3), dtype=int)
    np.add.at(confusion, (bin_index(y_true), bins_pred), 1)
    metrics = {"n": n, "mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err ** 2).mean())),
               "pearson_r": pearson(y_true, y_pred), "bin_accuracy": float(np.trace(confusion) / n),
               "bin_source": source, "bin_edges": list(BINS), "confusion_matrix": confusion.tolist()}
    for tol in TOLERANCES:
        metrics[f"within_{tol:g}"] = float((np.abs(err) <= tol + 1e-12).mean())
    return metrics


def roc_auc(positive, score) -> float:
    """Area under the ROC curve (Mann–Whitney U with mid-ranks for ties); NaN without both classes."""
    positive, score = np.asarray(positive, bool), np.asarray(score, float)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = pd.Series(score).rank(method="average").to_numpy()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def tumor_detection_metrics(y_true_ratio, score, threshold: float) -> dict:
    """Tile AUC of ``score`` against the IHC truth 'ratio ≥ threshold' (maps.tumor_threshold):
    what a tumor/normal classifier (alphabeta) is judged on, and a regressor too."""
    y, s = np.asarray(y_true_ratio, float), np.asarray(score, float)
    ok = np.isfinite(y) & np.isfinite(s)
    positive = y[ok] >= threshold
    return {"tumor_threshold": float(threshold), "tumor_auc": roc_auc(positive, s[ok]),
            "n_tumor_tiles": int(positive.sum()), "n_normal_tiles": int((~positive).sum())}


def region_fraction(tiles: pd.DataFrame, regions: pd.DataFrame, column: str = "tumor_fraction") -> np.ndarray:
    """Per tile, the drawn tumor fraction (or another ``column``, e.g. ``true_ratio``) of the
    synthetic region holding its centre (NaN outside every region). ``tiles``: ``he_x, he_y,
    he_extent``; ``regions``: a demo truth table."""
    cx = (tiles["he_x"] + tiles["he_extent"] / 2).to_numpy(float)
    cy = (tiles["he_y"] + tiles["he_extent"] / 2).to_numpy(float)
    out = np.full(len(tiles), np.nan)
    for r in regions.itertuples():
        out[(cx >= r.x0) & (cx < r.x1) & (cy >= r.y0) & (cy < r.y1)] = getattr(r, column)
    return out


def region_detection_metrics(predictions: list[pd.DataFrame], regions: dict[str, pd.DataFrame],
                             threshold: float) -> dict:
    """Tile AUC of ``predicted_ratio`` against the synthetic slides' drawn tumor regions
    (region tumor fraction ≥ ``threshold``), over the samples in ``regions``."""
    truth, score = [], []
    for pred in predictions:
        if len(pred) and str(pred["sample"].iloc[0]) in regions:
            truth.append(region_fraction(pred, regions[str(pred["sample"].iloc[0])]))
            score.append(pred["predicted_ratio"].to_numpy(float))
    if not truth:
        return {}
    y, s = np.concatenate(truth), np.concatenate(score)
    ok = np.isfinite(y) & np.isfinite(s)
    return {"region_auc": roc_auc(y[ok] >= threshold, s[ok]), "region_auc_tiles": int(ok.sum())}


def evaluation_table(predictions: list[pd.DataFrame], ground_truth: list[pd.DataFrame],
                     samples: list[str]) -> pd.DataFrame:
    """Predicted and IHC ratios of the given (test) samples' tiles that have both."""
    samples = set(samples)
    pred = pd.concat([p for p in predictions if len(p)] or [pd.DataFrame(columns=["sample", "tile_id"])])
    gt = pd.concat([g for g in ground_truth if len(g)] or [pd.DataFrame(columns=["sample", "tile_id"])])
    pred, gt = pred[pred["sample"].isin(samples)], gt[gt["sample"].isin(samples)]
    merged = pred.merge(gt[["sample", "tile_id", "tumor_ratio"]], on=["sample", "tile_id"], how="inner")
    return merged[np.isfinite(merged["tumor_ratio"].astype(float))]


def plot_evaluation(table: pd.DataFrame, metrics: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .io import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(9, 4), dpi=110)
    ax = axes[0]
    if len(table):
        ax.scatter(table["tumor_ratio"], table["predicted_ratio"], s=8, alpha=0.6)
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="IHC-derived tumor ratio", ylabel="predicted tumor ratio",
           title=f"{title}: MAE {metrics.get('mae', float('nan')):.3f}, r {metrics.get('pearson_r', float('nan')):.2f}")
    ax = axes[1]
    cm = np.array(metrics.get("confusion_matrix", np.zeros((3, 3))))
    ax.imshow(cm, cmap="Blues")
    labels = ["0–0.2", "0.2–0.5", "0.5–1"]
    ax.set(xticks=range(3), yticks=range(3), xticklabels=labels, yticklabels=labels, xlabel="predicted bin",
           ylabel="IHC bin", title=f"3-bin accuracy {metrics.get('bin_accuracy', float('nan')):.2f}")
    for i in range(3):
        for j in range(3):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center")
    fig.tight_layout()
    save_figure(fig, path)


def alphabeta_grid_table(metrics: dict[str, dict], grid: dict[str, tuple[float, float]]) -> pd.DataFrame:
    """One row per α/β model: ``model, alpha, beta`` and its test AUCs (IHC truth; synthetic regions
    where the test slides are demo slides), sorted by α then β (the paper's Table 1 as a table)."""
    rows = [{"model": name, "alpha": float(grid[name][0]), "beta": float(grid[name][1]),
             "tumor_auc": metrics[name].get("tumor_auc", np.nan),
             "region_auc": metrics[name].get("region_auc", np.nan)} for name in grid]
    return pd.DataFrame(rows, columns=["model", "alpha", "beta", "tumor_auc", "region_auc"]).sort_values(
        ["alpha", "beta"]).reset_index(drop=True)


def plot_alphabeta_grid(table: pd.DataFrame, path: str) -> None:
    """Heatmap of the test tile AUC over (α, β), one panel per truth that was measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .io import save_figure

    columns = [c for c in ("tumor_auc", "region_auc") if table[c].notna().any()] or ["tumor_auc"]
    alphas, betas = sorted(table["alpha"].unique()), sorted(table["beta"].unique())
    fig, axes = plt.subplots(1, len(columns), figsize=(4.2 * len(columns), 3.6), dpi=110, squeeze=False)
    for ax, column in zip(axes[0], columns):
        grid = np.full((len(alphas), len(betas)), np.nan)
        for row in table.itertuples():
            grid[alphas.index(row.alpha), betas.index(row.beta)] = getattr(row, column)
        image = ax.imshow(grid, cmap="viridis", vmin=0.5, vmax=1.0, origin="lower")
        for i in range(len(alphas)):
            for j in range(len(betas)):
                if np.isfinite(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", color="w", fontsize=8)
        ax.set(xticks=range(len(betas)), xticklabels=[f"{b:g}" for b in betas], xlabel="β",
               yticks=range(len(alphas)), yticklabels=[f"{a:g}" for a in alphas], ylabel="α",
               title={"tumor_auc": "tile AUC vs IHC ratio ≥ threshold",
                      "region_auc": "tile AUC vs drawn tumor regions"}[column])
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    save_figure(fig, path)
