"""The tile regressor: ResNet18 from an H&E tile to its tumor ratio, optionally with 3 bins."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

BINS = (0.0, 0.2, 0.5, 1.0)  # the original study's classes: 0–0.2, 0.2–0.5, 0.5–1


def resnet18_backbone(in_channels: int = 3, weights_path: str | Path | None = None) -> nn.Module:
    """torchvision ResNet18 with ``fc`` = Identity (512 features). Random weights unless
    ``weights_path`` names a local torchvision resnet18 state dict: nothing is downloaded.

    For ``in_channels`` ≠ 3, conv1 is rebuilt: its first three input channels keep the RGB
    filters (when weights are loaded), any further channels get their mean.
    """
    from torchvision.models import resnet18

    net = resnet18(weights=None)
    if weights_path is not None:
        path = Path(weights_path)
        if not path.is_file():
            raise FileNotFoundError(f"resnet18 weights file not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        try:
            net.load_state_dict(state)
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"{path}: not a torchvision resnet18 state dict ({err})") from err
    if in_channels != 3:
        old = net.conv1.weight.detach()
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        if weights_path is not None:
            with torch.no_grad():
                n = min(3, in_channels)
                net.conv1.weight[:, :n] = old[:, :n]
                net.conv1.weight[:, n:] = old.mean(dim=1, keepdim=True)
    net.fc = nn.Identity()
    return net


class TumorRatioRegressor(nn.Module):
    """ResNet18 → tumor ratio in [0, 1] (sigmoid), and 3-bin logits when ``bins``."""

    def __init__(self, in_channels: int = 3, bins: bool = False, weights_path: str | None = None):
        super().__init__()
        self.backbone = resnet18_backbone(in_channels, weights_path)
        self.ratio_head = nn.Linear(512, 1)
        self.bin_head = nn.Linear(512, len(BINS) - 1) if bins else None

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(x)
        out = {"ratio": torch.sigmoid(self.ratio_head(features)).squeeze(-1)}
        if self.bin_head is not None:
            out["bin_logits"] = self.bin_head(features)
        return out


def ratio_to_bin(ratio: torch.Tensor) -> torch.Tensor:
    """Class index of each ratio in BINS (0–0.2 → 0, 0.2–0.5 → 1, 0.5–1 → 2)."""
    edges = torch.tensor(BINS[1:-1], device=ratio.device, dtype=ratio.dtype)
    return torch.bucketize(ratio, edges, right=True)
