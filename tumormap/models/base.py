"""The interface every model kind implements, and what the shared trainer hands it.

A kind says which rows of the training table it learns from, builds its network from
its options, turns a batch into a loss, validates, may act at the start of each epoch
(relabelling, mining), and predicts every tissue tile of a slide. The epoch loop,
checkpoints, the non-finite-loss guard and the model card live once, in
``tumormap.train``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..stain import N_CHANNELS

# Options every tile model shares; a kind adds its own in DEFAULTS.
COMMON_DEFAULTS: dict[str, Any] = {
    "epochs": 8, "batch_size": 16, "lr": 1e-3, "weight_decay": 1e-4, "input_px": None, "channels": "rgb",
    "seed": 0, "pretrained_weights": None, "workers": 2, "device": "auto",
    "stain_normalise": True,  # Macenko per slide to stain.target; false: tiles as scanned
}
CHANNELS = N_CHANNELS  # network input channels per `channels` option: rgb 3, rgb+he 5, rgb+hed 6


@dataclass
class Step:
    """One optimiser step's loss, how many tiles it saw, and which samples they came from."""

    loss: torch.Tensor
    n_images: int
    samples: list[str] = field(default_factory=list)


@dataclass
class TrainContext:
    """Everything a kind needs to build its data and run a step (built by the trainer)."""

    name: str
    table: pd.DataFrame              # the rows this kind learns from (train and val), with a `split` column
    samples: list[str]               # index i of a batch's sample_idx is samples[i]
    slide_paths: dict[str, str]
    transform: torch.nn.Module       # uint8 NHWC → normalised NCHW on the device (BatchTransform)
    device: torch.device
    options: dict
    input_px: int
    workers: int
    augment_generator: torch.Generator
    loader_generator: torch.Generator
    extra: dict = field(default_factory=dict)  # e.g. slide-level labels, purity

    def split(self, name: str) -> pd.DataFrame:
        return self.table[self.table["split"] == name]


class ModelKind:
    """Base class of a model kind. Subclasses set DEFAULTS and TITLE and implement the hooks."""

    kind = "?"                       # set by @register_kind
    TITLE = "model"
    DEFAULTS: dict[str, Any] = {}
    VALIDATION = "validation MAE"    # what ``validate`` returns (lower is better)

    def __init__(self, options: dict, name: str = "?"):
        known = {**COMMON_DEFAULTS, **self.DEFAULTS}
        unknown = sorted(set(options) - set(known) - {"kind"})
        if unknown:
            raise ValueError(f"train.models.{name} (kind {self.kind}): unknown option(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known))}")
        self.name = name
        self.options = {**known, **{k: v for k, v in options.items() if k != "kind"}}
        if self.options["channels"] not in CHANNELS:
            raise ValueError(f"train.models.{name}: channels must be one of {', '.join(CHANNELS)}")
        self.in_channels = CHANNELS[self.options["channels"]]

    # ---- training ----
    def training_rows(self, table: pd.DataFrame) -> pd.DataFrame:
        """Rows of the dataset this kind learns from. Default: SSIM-kept tiles with a finite IHC ratio."""
        keep = table["keep"] if "keep" in table else True
        return table[keep & np.isfinite(table["tumor_ratio"].astype(float))]

    def network(self, load_weights: bool = True) -> torch.nn.Module:
        """The untrained network. ``load_weights=False`` when a trained state dict follows
        (the pretrained-weights file need not exist where a model is used)."""
        raise NotImplementedError

    def optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        return torch.optim.AdamW(model.parameters(), lr=float(self.options["lr"]),
                                 weight_decay=float(self.options["weight_decay"]))

    def scheduler(self, optimizer: torch.optim.Optimizer):
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, int(self.options["epochs"])))

    def loaders(self, ctx: TrainContext):
        """(train loader, validation loader or None)."""
        raise NotImplementedError

    def on_epoch_start(self, epoch: int, model: torch.nn.Module, ctx: TrainContext, train_loader) -> None:
        """Hook before each epoch (0-based): resample bags, relabel, mine hard examples. Default: nothing."""

    def step(self, model: torch.nn.Module, batch, ctx: TrainContext) -> Step:
        raise NotImplementedError

    def validate(self, model: torch.nn.Module, loader, ctx: TrainContext) -> float:
        raise NotImplementedError

    def card_fields(self) -> dict:
        """Kind-specific facts for the card beyond the options (architecture, label source…)."""
        return {}

    # ---- using a trained model ----
    @classmethod
    def from_card(cls, card: dict) -> "ModelKind":
        return cls(card["options"], name=card.get("name", cls.kind))

    def predict_tiles(self, model: torch.nn.Module, card: dict, tissue: pd.DataFrame, he_path: str, stain: dict, *,
                      sample: str, batch_size: int, workers: int, progress: bool,
                      aux: dict | None = None) -> pd.DataFrame:
        """Per tissue tile (table order): ``predicted_ratio`` in [0, 1] (what the map shows) and any
        kind-specific columns. ``aux``: the per-slide inputs the kind asks for (``llp``: ``he_nuclei``)."""
        raise NotImplementedError
