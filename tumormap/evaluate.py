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
