"""Training any model kind: seeded, checkpointed every epoch, resumable, guarded against
non-finite losses, ending in a self-describing model folder.

A trained model is a folder: ``model.pt`` (weights) and ``card.json`` (everything needed
to use it: name, kind and options, input µm/px, tile size, channels, stain target, the
train/val/test samples, software versions and the content key).

A checkpoint is resumed only by the run that wrote it: it carries the *content key*, a
hash of everything the model learns from (the training rows with their labels and split,
the stain matrices and target, the learned options, tile geometry, the model code). When
training ends the checkpoint is superseded by a small final record (best weights and
history, no optimiser state); a rerun with the same key rewrites the folder from it
without training again.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import random
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .io import atomic_path, read_json, save_figure, write_json
from .logs import get_logger
from .models import get_kind, learned_options

log = get_logger("train")

CARD_VERSION = 2


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN or infinite loss; the message names epoch, batch and samples."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def pick_device(prefer: str = "auto") -> torch.device:
    if prefer == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def software_versions() -> dict:
    import torchvision

    from . import __version__

    return {"tumormap": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "python": platform.python_version()}


def autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def _code_files(kind_cls) -> list[Path]:
    import inspect

    here = Path(__file__).parent
    files = {Path(inspect.getfile(kind_cls)), here / "train.py", here / "tile_data.py", here / "stain.py",
             here / "models" / "base.py", here / "models" / "backbones.py"}
    files.update(here / f for f in getattr(kind_cls, "CODE", ()))
    return sorted(files)


def content_key(kind, rows: pd.DataFrame, stains: dict[str, dict], target_stain: dict, *, tile_mpp: float,
                tile_px: int, extra: dict | None = None) -> str:
    """Hash of everything a model learns from (see the module docstring)."""
    h = hashlib.sha256()
    samples = sorted(set(rows["sample"].astype(str)))
    h.update(json.dumps({"kind": kind.kind, "options": learned_options(kind.options), "tile_mpp": tile_mpp,
                         "tile_px": tile_px, "target": target_stain, "stains": {s: stains[s] for s in samples},
                         "extra": extra or {}}, sort_keys=True, default=str).encode())
    ordered = rows.sort_values(["sample", "tile_id"]).reset_index(drop=True)
    ordered = ordered[sorted(ordered.columns)]
    h.update(pd.util.hash_pandas_object(ordered, index=False).to_numpy().tobytes())
    for path in _code_files(type(kind)):
        h.update(path.read_bytes())
    return h.hexdigest()[:20]


def load_checkpoint(path: Path, key: str) -> dict | None:
    """The checkpoint if this very training wrote it (same content key), else None."""
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("content_key") != key:
        log.info("checkpoint %s was written by another training (its data, options or code differ): "
                 "starting afresh", path)
        return None
    return state


def save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def plot_history(history: pd.DataFrame, path: str, title: str, validation: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    for col, label in (("train_loss", "training loss"), ("val", validation)):
        if col in history and history[col].notna().any():
            ax.plot(history["epoch"], history[col], marker="o", ms=3, label=label)
    ax.set_xlabel("epoch")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def _describe_batch(samples: list[str]) -> str:
    counts = pd.Series(samples).value_counts() if samples else pd.Series(dtype=int)
    return ", ".join(f"{s} ({n})" for s, n in counts.items()) or "unknown"


def run_epochs(kind, model, optimizer, scheduler, ctx, train_loader, val_loader, *, epochs: int, ckpt_path: Path,
               key: str) -> tuple[list[dict], dict]:
    """The shared epoch loop: hook, steps, validation, best weights, an atomic checkpoint per epoch.

    Resumes from ``ckpt_path`` when it carries ``key`` (model, optimiser, scheduler, history,
    best weights and every random generator), so a preempted job goes on where it stopped.
    """
    generators = {"augment": ctx.augment_generator, "loader": ctx.loader_generator}
    state = load_checkpoint(ckpt_path, key)
    start_epoch, history, best = 0, [], {"val": float("inf"), "state": None, "epoch": -1}
    if state is not None and state.get("final"):
        log.info("%s: training with content key %s already finished (%s): reusing it", ctx.name, key, ckpt_path)
        return state["history"], state["best"]
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, history, best = state["epoch"] + 1, state["history"], state["best"]
        torch.set_rng_state(state["rng_torch"])
        for name, gen in generators.items():
            gen.set_state(state["rng"][name])
        log.info("resuming from %s at epoch %d of %d", ckpt_path, start_epoch + 1, epochs)
    for epoch in range(start_epoch, epochs):
        t0 = time.time()
        kind.on_epoch_start(epoch, model, ctx, train_loader)
        model.train()
        total, n_images, n_items = 0.0, 0, 0
        for batch_no, batch in enumerate(train_loader, 1):
            step = kind.step(model, batch, ctx)
            if not torch.isfinite(step.loss.detach()).all():
                raise NonFiniteLoss(f"model {ctx.name}: loss {step.loss.item()} at epoch {epoch + 1}, batch {batch_no}; "
                                    f"samples in the batch: {_describe_batch(step.samples)}. Check these samples' "
                                    f"stain JSON and tiles, or lower the learning rate ({kind.options['lr']})")
            optimizer.zero_grad(set_to_none=True)
            step.loss.backward()
            optimizer.step()
            items = max(1, len(step.samples))
            total += step.loss.item() * items
            n_items += items
            n_images += step.n_images
        scheduler.step()
        val = kind.validate(model, val_loader, ctx) if val_loader is not None else float("nan")
        seconds = time.time() - t0
        train_loss = total / max(1, n_items)
        row = {"epoch": epoch + 1, "train_loss": train_loss, "val": val, "lr": scheduler.get_last_lr()[0],
               "seconds": seconds, "images_per_s": n_images / max(1e-9, seconds)}
        history.append(row)
        score = val if np.isfinite(val) else train_loss
        if score <= best["val"]:
            best = {"val": float(score), "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                    "epoch": epoch + 1}
        save_checkpoint(ckpt_path, {"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                    "scheduler": scheduler.state_dict(), "history": history, "best": best,
                                    "content_key": key, "rng_torch": torch.get_rng_state(),
                                    "rng": {name: gen.get_state() for name, gen in generators.items()}})
        log.info("%s epoch %d/%d: training loss %.4f, %s %.4f, %.1f img/s, %.1f s", ctx.name, epoch + 1, epochs,
                 train_loss, kind.VALIDATION, val, row["images_per_s"], seconds)
    if best["state"] is None:
        raise NonFiniteLoss(f"model {ctx.name}: no epoch gave a finite score; nothing to save")
    save_checkpoint(ckpt_path, {"final": True, "history": history, "best": best, "content_key": key})
    return history, best


def write_model_folder(out_dir: str, best: dict, history: list[dict], card: dict, title: str,
                       validation: str) -> dict:
    """``model.pt`` (best weights), ``history.csv``, ``loss_curve.png`` and ``card.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "model.pt") as tmp:
        torch.save(best["state"], tmp)
    hist = pd.DataFrame(history)
    with atomic_path(out / "history.csv") as tmp:
        hist.to_csv(tmp, index=False)
    plot_history(hist, str(out / "loss_curve.png"), title, validation)
    card = {"card_version": CARD_VERSION, **card, "software": software_versions()}
    card["training"].update(best_epoch=best["epoch"], best_val=best["val"])
    write_json(card, out / "card.json")
    return card


def train_model(name: str, options: dict, dataset_table: pd.DataFrame, slide_paths: dict[str, str],
                stains: dict[str, dict], target_stain: dict, out_dir: str, checkpoint_dir: str, *, tile_mpp: float,
                tile_px: int, test_samples: list[str] | tuple = (), extra: dict | None = None,
                tables: dict | None = None) -> dict:
    """Train model ``name`` (``options["kind"]`` picks the kind) on the table's train split,
    select on its val split; write ``out_dir/{model.pt, card.json, history.csv, loss_curve.png}``.

    ``dataset_table``: the dataset (``split`` column); the kind picks its rows. ``extra``:
    kind-specific inputs (e.g. ``{"purity": {...}, "labels": {...}}``), part of the content key.
    ``tables``: kind-specific data too large for the key (e.g. ``he_nuclei_tables``), handed to
    the kind in ``ctx.extra``; ``extra`` must then carry their digests.
    """
    from .tile_data import BatchTransform

    kind = get_kind(options.get("kind", "?"), f"train.models.{name}")(options, name)
    opts = kind.options
    seed = int(opts["seed"])
    seed_everything(seed)
    device = pick_device(opts["device"])
    rows = kind.training_rows(dataset_table)
    rows = rows[rows["split"].isin(["train", "val"])].reset_index(drop=True)
    if not (rows["split"] == "train").any():
        raise ValueError(f"model {name}: no training rows (kind {kind.kind}); see results/qc/samples.tsv and the "
                         f"ssim/ground_truth logs")
    samples = sorted(set(rows["sample"].astype(str)))
    missing = [s for s in samples if s not in stains or s not in slide_paths]
    if missing:
        raise ValueError(f"model {name}: no slide or stain given for sample(s) {', '.join(missing)}")
    input_px = int(opts["input_px"] or tile_px)
    ctx_extra = dict(extra or {})
    from .models.base import TrainContext

    ctx = TrainContext(name=name, table=rows, samples=samples, slide_paths=slide_paths,
                       transform=BatchTransform([stains[s] for s in samples], target_stain, opts["channels"],
                                                 normalise=bool(opts["stain_normalise"])).to(device),
                       device=device, options=opts, input_px=input_px, workers=int(opts["workers"]),
                       augment_generator=torch.Generator().manual_seed(seed + 1),
                       loader_generator=torch.Generator().manual_seed(seed), extra={**ctx_extra, **(tables or {})})
    train_loader, val_loader = kind.loaders(ctx)
    model = kind.network().to(device).to(memory_format=torch.channels_last)
    optimizer = kind.optimizer(model)
    scheduler = kind.scheduler(optimizer)
    key = content_key(kind, rows, stains, target_stain, tile_mpp=tile_mpp, tile_px=tile_px, extra=ctx_extra)
    epochs = int(opts["epochs"])
    split_samples = {part: sorted(set(rows.loc[rows["split"] == part, "sample"].astype(str))) for part in ("train", "val")}
    log.info("training %s (kind %s) on %s: %d train rows from %s, %d val rows from %s, %d epochs, input %d px, "
             "content key %s", name, kind.kind, device, int((rows["split"] == "train").sum()),
             ", ".join(split_samples["train"]), int((rows["split"] == "val").sum()),
             ", ".join(split_samples["val"]) or "none", epochs, input_px, key)
    ckpt_path = Path(checkpoint_dir) / "last.pt"
    ckpt_path.parent.mkdir(parents=True, exist_ok=True)
    history, best = run_epochs(kind, model, optimizer, scheduler, ctx, train_loader, val_loader, epochs=epochs,
                               ckpt_path=ckpt_path, key=key)
    card = {
        "name": name, "kind": kind.kind, "options": learned_options(opts), "input_mpp": tile_mpp, "tile_px": tile_px,
        "input_px": input_px, "channels": opts["channels"], "in_channels": kind.in_channels,
        "stain": {"method": "macenko" if opts["stain_normalise"] else "none", "target": target_stain}, **kind.card_fields(),
        "training": {"train_samples": split_samples["train"], "val_samples": split_samples["val"],
                     "test_samples": sorted(set(map(str, test_samples)) - set(samples)),
                     "n_train_rows": int((rows["split"] == "train").sum()),
                     "n_val_rows": int((rows["split"] == "val").sum()), "epochs": epochs,
                     "validation": kind.VALIDATION},
        "content_key": key,
    }
    return write_model_folder(out_dir, best, history, card, f"{name} ({kind.TITLE})", kind.VALIDATION)


def load_card(model_dir: str | os.PathLike) -> dict:
    """A model folder's card, checked; errors name the folder and what is wrong."""
    model_dir = Path(model_dir)
    card_path = model_dir / "card.json"
    if not card_path.exists():
        raise ValueError(f"model folder {model_dir} has no card.json: not a tumormap model")
    try:
        card = read_json(card_path)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{card_path} is not valid JSON: {exc}") from None
    missing = [k for k in ("card_version", "kind", "options", "input_mpp", "tile_px", "input_px", "channels", "stain")
               if k not in card]
    if missing:
        raise ValueError(f"{card_path} lacks {', '.join(missing)}"
                         + (" (a card of tumormap < 0.2: retrain the model)" if card.get("card_version") == 1 else ""))
    if card["card_version"] > CARD_VERSION:
        raise ValueError(f"{card_path} has card_version {card['card_version']}; this tumormap reads ≤ {CARD_VERSION}")
    if not (model_dir / "model.pt").exists():
        raise ValueError(f"model folder {model_dir} has a card but no model.pt")
    return card
