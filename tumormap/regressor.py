"""The tile regressor: ResNet18 from an H&E tile to its tumor ratio, optionally with 3 bins."""

from __future__ import annotations

import torch
from torch import nn

BINS = (0.0, 0.2, 0.5, 1.0)  # the original study's classes: 0–0.2, 0.2–0.5, 0.5–1


def resnet18_backbone(in_channels: int = 3, weights_path: str | None = None) -> nn.Module:
    """torchvision ResNet18 without its classifier (512 features). No download, ever:
    weights come only from a local ``weights_path`` (a torchvision state dict)."""
    from torchvision.models import resnet18

    net = resnet18(weights=None)
    if weights_path:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    if in_channels != 3:
        old = net.conv1
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        with torch.no_grad():
            net.conv1.weight[:, :3] = old.weight
            net.conv1.weight[:, 3:] = old.weight.mean(dim=1, keepdim=True)
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
