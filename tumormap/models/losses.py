"""Losses shared by tile-classifier kinds (imports torch)."""

from __future__ import annotations

import torch

LOSSES = ("bce", "hinge", "rare_hinge")


def rare_hinge_loss(score: torch.Tensor, label: torch.Tensor, a: float = 2.0, margin: float = 1.0) -> torch.Tensor:
    """Seed 002's 'binary rare hinge loss', per example: max(0, Δ + 1 − 2·s_y) · e^(a·y).

    ``score`` s ∈ [0, 1] is the positive-class probability, ``label`` y ∈ {0, 1}; s_y is the
    score of the true class (s for y = 1, 1 − s for y = 0), so Δ + s_j − s_y with s_j = 1 − s_y
    is the binary SVM hinge (Δ = ``margin``; 1 is the usual hinge on ±1 scores). Positives are
    weighed e^a for the same margin violation (a = 2 or 4 in the paper). The paper prints
    max(0, s_j·s_yi + Δ)·e^(a·s_yi), which is garbled (a product where the hinge has a difference,
    and the weight on the score rather than the label): this is the form its text describes.
    ``a = 0`` is the plain hinge.
    """
    y = label.to(score.dtype)
    s_y = torch.where(y > 0.5, score, 1 - score)
    return torch.clamp(margin + 1 - 2 * s_y, min=0) * torch.exp(a * y)
