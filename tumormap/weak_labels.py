"""α/β proxy labels from slide diagnoses (Lerousseau et al.), torch-free.

On a tumor slide, of the ``n`` patches a step sees, the ⌊α·n⌋ with the highest current
score are labelled 1 and the ⌊β·n⌋ with the lowest 0; the rest are left out of the loss.
On a normal slide every patch is labelled 0. The reference code (tcga_segmentation,
``MaxMinMIL``) takes ``int(α·n)``; we floor ``α·n + 1e-9`` so that float error never drops
a patch (0.29·100 = 28.999… gives 29, not 28). Ties rank by patch index: among equal
scores the earlier patch counts as higher, so the top and bottom sets never overlap.
"""

from __future__ import annotations

import math

import numpy as np

SLIDE_LABELS = {"tumor": 1, "normal": 0}
PAPER_ALPHAS = (0.2, 0.4, 0.6, 0.8, 1.0)
PAPER_BETAS = (0.0, 0.2, 0.4, 0.6, 0.8)


DEFAULT_ALPHA_BETA = (0.2, 0.2)  # the paper's best configuration


def alpha_beta(entry: dict) -> tuple[float, float]:
    """(α, β) of a ``train.models`` entry of kind alphabeta, defaults filled in."""
    return float(entry.get("alpha", DEFAULT_ALPHA_BETA[0])), float(entry.get("beta", DEFAULT_ALPHA_BETA[1]))


def check_alpha_beta(alpha: float, beta: float, where: str = "train.models") -> None:
    """α in (0, 1], β in [0, 1), α + β ≤ 1, else a ValueError naming ``where``."""
    alpha, beta = float(alpha), float(beta)
    if not 0 < alpha <= 1 or not 0 <= beta < 1:
        raise ValueError(f"{where}: need 0 < alpha ≤ 1 and 0 ≤ beta < 1 (got alpha {alpha}, beta {beta})")
    if alpha + beta > 1 + 1e-9:
        raise ValueError(f"{where}: alpha + beta must be ≤ 1 (got {alpha} + {beta} = {alpha + beta:g}): the top-α "
                         "patches (labelled tumor) and the bottom-β patches (labelled normal) would overlap")


def n_selected(fraction: float, n: int) -> int:
    """⌊fraction · n⌋, robust to float error."""
    return int(math.floor(float(fraction) * n + 1e-9))


def proxy_labels(scores, slide_label: str, alpha: float, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """(labels, mask) for one slide's patch ``scores`` (any monotone score: logits or probabilities).

    ``slide_label`` is ``tumor`` or ``normal``. ``labels`` is float32 0/1, ``mask`` bool: which
    patches enter the loss.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    n = len(scores)
    if slide_label not in SLIDE_LABELS:
        raise ValueError(f"slide label must be one of {', '.join(SLIDE_LABELS)}, got {slide_label!r}")
    labels, mask = np.zeros(n, np.float32), np.zeros(n, bool)
    if slide_label == "normal":
        mask[:] = True
        return labels, mask
    order = np.argsort(-scores, kind="stable")  # highest first; ties: lower index first
    k_top, k_bottom = n_selected(alpha, n), n_selected(beta, n)
    top, bottom = order[:k_top], order[n - k_bottom:] if k_bottom else order[:0]
    labels[top], mask[top], mask[bottom] = 1.0, True, True
    return labels, mask


def paper_grid() -> list[tuple[float, float]]:
    """The paper's 15 (α, β): α ∈ {0.2, …, 1}, β ∈ {0, …, 0.8}, α + β ≤ 1."""
    return [(a, b) for a in PAPER_ALPHAS for b in PAPER_BETAS if a + b <= 1 + 1e-9]


def grid_name(name: str, alpha: float, beta: float) -> str:
    """``ab``, 0.2, 0 → ``ab_a20_b0`` (model names hold no dots)."""
    return f"{name}_a{round(100 * alpha)}_b{round(100 * beta)}"


def expand_grids(models: dict) -> dict:
    """``train.models`` with every entry holding ``alphabeta_grid: paper`` replaced by one entry
    per (α, β) of the paper, named ``{name}_a{100α}_b{100β}`` (e.g. ``ab_a20_b0`` for α 0.2, β 0)."""
    out = {}
    for name, entry in models.items():
        grid = entry.get("alphabeta_grid")
        if grid is None:
            out[name] = entry
            continue
        if grid != "paper" or entry.get("kind") != "alphabeta":
            raise ValueError(f"train.models.{name}: alphabeta_grid must be 'paper' on a model of kind alphabeta")
        base = {k: v for k, v in entry.items() if k not in ("alphabeta_grid", "alpha", "beta")}
        for alpha, beta in paper_grid():
            out[grid_name(name, alpha, beta)] = {**base, "alpha": alpha, "beta": beta}
    return out
