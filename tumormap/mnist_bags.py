"""MNIST-bag check of the distribution-pooling MIL model.

Bags of ``bag_size`` real MNIST digits mixing zeros and sevens; the label is the fraction
of zeros, drawn ~U(0, 1) per bag. Digits are split once into train and held-out sets, so
no digit seen in training ever appears in a held-out bag. Success: held-out L1 <= 0.03.
"""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import numpy as np

from .io import atomic_path, save_figure, write_json
from .logs import get_logger

log = get_logger("mnist_bags")

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
GOAL_L1 = 0.03


def read_idx(path: str | Path) -> np.ndarray:
    """Read an MNIST idx file (gzipped or raw): images (K, 28, 28) uint8 or labels (K,) uint8."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MNIST idx file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 8:
        raise ValueError(f"{path}: too short for an idx header ({len(data)} bytes)")
    magic, count = int.from_bytes(data[0:4], "big"), int.from_bytes(data[4:8], "big")
    if magic == LABELS_MAGIC:
        shape, offset = (count,), 8
    elif magic == IMAGES_MAGIC:
        rows, cols = int.from_bytes(data[8:12], "big"), int.from_bytes(data[12:16], "big")
        shape, offset = (count, rows, cols), 16
    else:
        raise ValueError(f"{path}: not an MNIST idx file (magic {magic}, expected {IMAGES_MAGIC} or {LABELS_MAGIC})")
    expected = offset + int(np.prod(shape))
    if len(data) != expected:
        raise ValueError(f"{path}: {len(data)} bytes, header announces {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def load_digits(images_path: str | Path, labels_path: str | Path,
                digits: tuple[int, int] = (0, 7)) -> tuple[np.ndarray, np.ndarray]:
    """Images (K, 1, 28, 28) float32 in [0, 1] and labels (K,) of the chosen digits only."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{images_path} / {labels_path}: images {images.shape} and labels {labels.shape} do not pair up")
    keep = np.isin(labels, digits)
    return (images[keep].astype(np.float32) / 255.0)[:, None], labels[keep].astype(np.int64)


def split_digits(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint (train, test) index arrays, split per digit class with a fixed seed."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for digit in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == digit))
        n_test = int(round(len(idx) * test_fraction))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def sample_bags(rng: np.random.Generator, positive_pool: np.ndarray, negative_pool: np.ndarray,
                n_bags: int, bag_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Bags of digit indices (n_bags, bag_size) and their fraction of positives (n_bags,).

    Per bag: x ~ U(0, 1), round(x * bag_size) positives and the rest negatives, each drawn
    without replacement from its pool, in random order; the label is the exact fraction.
    """
    if min(len(positive_pool), len(negative_pool)) < bag_size:
        raise ValueError(f"pools of {len(positive_pool)} positive and {len(negative_pool)} negative digits "
                         f"cannot fill a bag of {bag_size} of one kind")
    bags = np.empty((n_bags, bag_size), dtype=np.int64)
    fractions = np.empty(n_bags, dtype=np.float32)
    for b in range(n_bags):
        n_pos = int(round(rng.uniform(0.0, 1.0) * bag_size))
        members = np.concatenate([rng.choice(positive_pool, n_pos, replace=False),
                                  rng.choice(negative_pool, bag_size - n_pos, replace=False)])
        bags[b] = rng.permutation(members)
        fractions[b] = n_pos / bag_size
    return bags, fractions


def train_mnist_bags(images: np.ndarray, labels: np.ndarray, *, positive_digit: int = 0, bag_size: int = 100,
                     test_fraction: float = 0.3, train_bags_per_epoch: int = 64, test_bags: int = 200,
                     batch_size: int = 8, epochs: int = 80, lr: float = 5e-4, weight_decay: float = 5e-4,
                     lr_schedule: str = "cosine",
                     n_features: int = 128, n_bins: int = 21, sigma: float = 0.05, dropout: float = 0.5,
                     seed: int = 0, device: str = "auto"):
    """Train the MIL model on bags of train digits; evaluate on bags of held-out digits.

    lr_schedule: "constant", or "cosine" (decay from ``lr`` to 0 over all steps).
    Returns (model, history, info): history is one dict per epoch (train L1 = mean batch
    loss in train mode; test L1 = held-out bags in eval mode), info describes the run
    (including the untrained model's held-out L1 and the final held-out predictions).
    """
    import torch

    from .mil import DistributionPoolingMIL, small_cnn_extractor

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(seed)
    np.random.seed(seed)
    train_idx, test_idx = split_digits(labels, test_fraction, seed)
    pools = {name: (idx[labels[idx] == positive_digit], idx[labels[idx] != positive_digit])
             for name, idx in (("train", train_idx), ("test", test_idx))}
    test_bag_idx, test_y = sample_bags(np.random.default_rng(seed + 1), *pools["test"], test_bags, bag_size)
    train_rng = np.random.default_rng(seed + 2)

    all_images = torch.from_numpy(images).to(device)
    test_digits = torch.from_numpy(test_idx).to(device)
    # held-out bags re-indexed into the held-out digit set, so each digit is embedded once
    test_pos = torch.from_numpy(np.searchsorted(test_idx, test_bag_idx)).to(device)
    test_target = torch.from_numpy(test_y).to(device)

    model = DistributionPoolingMIL(small_cnn_extractor(n_features), n_features, n_bins, sigma, dropout).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    if lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {lr_schedule!r}")
    total_steps = epochs * -(-train_bags_per_epoch // batch_size)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total_steps) if lr_schedule == "cosine"
                 else torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0))
    loss_fn = torch.nn.L1Loss()
    info = {"device": device, "n_train_digits": int(len(train_idx)), "n_test_digits": int(len(test_idx)),
            "n_train_positive": int(len(pools["train"][0])), "n_test_positive": int(len(pools["test"][0]))}
    log.info("device %s; %d train digits (%d zeros), %d held-out digits (%d zeros); %d held-out bags of %d",
             device, info["n_train_digits"], info["n_train_positive"], info["n_test_digits"],
             info["n_test_positive"], test_bags, bag_size)

    def evaluate() -> np.ndarray:
        model.eval()
        with torch.no_grad():
            feats = torch.cat([model.instance_features(all_images[chunk])
                               for chunk in test_digits.split(2048)])
            pred = model.ratio_from_features(feats[test_pos])
        return pred.cpu().numpy()

    info["initial_test_l1"] = float(np.abs(evaluate() - test_y).mean())
    history = []
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        bag_idx, y = sample_bags(train_rng, *pools["train"], train_bags_per_epoch, bag_size)
        bag_idx, y = torch.from_numpy(bag_idx).to(device), torch.from_numpy(y).to(device)
        losses = []
        for first in range(0, train_bags_per_epoch, batch_size):
            batch = bag_idx[first:first + batch_size]
            bags = all_images[batch.flatten()].view(*batch.shape, *images.shape[1:])
            loss = loss_fn(model(bags), y[first:first + batch_size])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        test_l1 = float(np.abs(evaluate() - test_y).mean())
        row = {"epoch": epoch, "train_l1": float(np.mean(losses)), "test_l1": test_l1,
               "seconds": time.perf_counter() - start}
        history.append(row)
        log.info("epoch %d/%d: train L1 %.4f, held-out L1 %.4f (%.0f s)",
                 epoch, epochs, row["train_l1"], test_l1, row["seconds"])
    pred = evaluate()
    info.update(test_predictions=pred, test_fractions=test_y, seconds=time.perf_counter() - start)
    return model, history, info


def run_mnist_bags(images_path: str | Path, labels_path: str | Path, metrics_path: str | Path,
                   loss_curve_path: str | Path, model_path: str | Path, history_path: str | Path,
                   **params) -> dict:
    """Run the MNIST-bag check end to end; write metrics JSON, loss curve PNG, model, history CSV.

    ``params`` are the keyword arguments of :func:`train_mnist_bags` (digits: positive_digit
    vs negative_digit). Returns the metrics dict.
    """
    import pandas as pd
    import torch

    params = dict(params)
    digits = (int(params.get("positive_digit", 0)), int(params.pop("negative_digit", 7)))
    images, labels = load_digits(images_path, labels_path, digits)
    if len(np.unique(labels)) != 2:
        raise ValueError(f"{labels_path}: digits {digits} not both present")
    model, history, info = train_mnist_bags(images, labels, **params)
    pred, truth = info.pop("test_predictions"), info.pop("test_fractions")
    err = pred - truth
    metrics = {
        "test_l1": float(np.abs(err).mean()),
        "test_rmse": float(np.sqrt((err**2).mean())),
        "test_max_abs_error": float(np.abs(err).max()),
        "test_pearson_r": float(np.corrcoef(pred, truth)[0, 1]),
        "final_train_l1": history[-1]["train_l1"],
        "goal_l1": GOAL_L1,
        "goal_met": bool(np.abs(err).mean() <= GOAL_L1),
        "digits": {"positive": digits[0], "negative": digits[1]},
        "params": params,
        **info,
    }
    with atomic_path(history_path) as tmp:
        pd.DataFrame(history).to_csv(tmp, index=False)
    with atomic_path(model_path) as tmp:
        torch.save({"state_dict": model.state_dict(), "params": params, "digits": digits}, tmp)
    save_figure(_loss_curve(history), loss_curve_path, dpi=120)
    write_json(metrics, metrics_path)
    log.info("held-out L1 %.4f (goal <= %.2f) after %d epochs in %.0f s",
             metrics["test_l1"], GOAL_L1, len(history), info["seconds"])
    return metrics


def _loss_curve(history: list[dict]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [row["train_l1"] for row in history], label="train L1 (dropout on)")
    ax.plot(epochs, [row["test_l1"] for row in history], label="held-out L1")
    ax.axhline(GOAL_L1, color="grey", linestyle="--", linewidth=1, label=f"goal {GOAL_L1}")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("L1 (fraction of zeros)")
    ax.set_title("MNIST bags: distribution-pooling MIL")
    ax.legend()
    fig.tight_layout()
    return fig
