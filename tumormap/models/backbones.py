"""Networks shared by the model kinds. Random weights unless a local weights file is named:
nothing is ever downloaded."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def _group_norm(channels: int) -> nn.Module:
    return nn.GroupNorm(min(32, channels), channels)


def resnet18_backbone(in_channels: int = 3, weights_path: str | Path | None = None,
                      per_instance: bool = False, load_weights: bool = True) -> nn.Module:
    """torchvision ResNet18 with ``fc`` = Identity (512 features).

    ``weights_path``: a local torchvision resnet18 state dict. For ``in_channels`` ≠ 3,
    conv1 is rebuilt: its first three input channels keep the RGB filters (when weights
    are loaded), any further channels get their mean.

    ``per_instance``: each image's features depend on that image alone, in training too
    (MIL: a bag must not see its batch-mates). Random init uses GroupNorm instead of
    BatchNorm; loaded weights keep their BatchNorm statistics, frozen.

    ``load_weights=False`` builds the architecture ``weights_path`` implies without reading
    the file (a trained state dict follows).
    """
    from torchvision.models import resnet18
    from torchvision.ops.misc import FrozenBatchNorm2d

    if per_instance and weights_path is None:
        net = resnet18(weights=None, norm_layer=_group_norm)
    else:
        net = resnet18(weights=None, norm_layer=FrozenBatchNorm2d if per_instance else None)
    if weights_path is not None and load_weights:
        path = Path(weights_path)
        if not path.is_file():
            raise FileNotFoundError(f"resnet18 weights file not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        if per_instance:  # FrozenBatchNorm2d has no num_batches_tracked
            state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
        try:
            net.load_state_dict(state)
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"{path}: not a torchvision resnet18 state dict ({err})") from err
    if in_channels != 3:
        old = net.conv1.weight.detach()
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        if weights_path is not None and load_weights:
            with torch.no_grad():
                n = min(3, in_channels)
                net.conv1.weight[:, :n] = old[:, :n]
                net.conv1.weight[:, n:] = old.mean(dim=1, keepdim=True)
    net.fc = nn.Identity()
    return net
