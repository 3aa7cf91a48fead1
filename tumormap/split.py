"""Train/validation/test split by patient (else by sample), stable under cohort changes.

Each patient's split depends only on its id and the seed: a hash of the two gives a number
``u`` uniform in [0, 1), cut by the fractions (train below ``f_train``, val below
``f_train + f_val``, else test). Adding, removing or failing a sample therefore never moves
another patient, and the fractions hold approximately on large cohorts. A small cohort can
leave a split empty: that is an error naming the split, unless the sheet's ``split`` column
pins samples (a pinned patient takes its pin; its samples must agree).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from .logs import get_logger

SPLITS = ("train", "val", "test")
log = get_logger("split")


class SplitError(ValueError):
    """The split cannot be used (an empty split, conflicting pins); the message says which."""


def patient_uniform(patient: str, seed: int) -> float:
    """A number in [0, 1) that depends only on ``patient`` and ``seed`` (SHA-256, first 8 bytes)."""
    digest = hashlib.sha256(f"tumormap-split\x00{int(seed)}\x00{patient}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def patient_split(patient: str, fractions: dict[str, float], seed: int) -> str:
    """``train``/``val``/``test`` of one patient: its uniform number cut by the fractions."""
    u = patient_uniform(patient, seed)
    edge = 0.0
    for name in SPLITS:
        edge += fractions.get(name, 0.0)
        if u < edge:
            return name
    return [k for k in SPLITS if fractions.get(k, 0.0) > 0][-1]  # u rounding above a sum of 1 - eps


def split_samples(samples: pd.DataFrame, fractions: dict[str, float], seed: int = 0, *,
                  require: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Assign each sample to train/val/test so that no patient spans two splits.

    ``samples`` has columns ``sample`` and ``patient`` (a missing patient is the sample
    itself) and optionally ``split`` (a pin: ``train``/``val``/``test`` or empty). Returns
    ``sample, patient, split, pinned``, sorted by sample. Raises :class:`SplitError` when
    the samples of one patient are pinned to different splits, or when a split in
    ``require`` (default: train, test, and val if its fraction is > 0) gets no patient.
    """
    total = sum(fractions.get(k, 0.0) for k in SPLITS)
    if not np.isclose(total, 1.0) or any(fractions.get(k, 0.0) < 0 for k in SPLITS):
        raise SplitError(f"split.fractions must be ≥ 0 and sum to 1, got {fractions}")
    patients_of = samples["patient"].where(samples["patient"].notna(), samples["sample"]).astype(str)
    out = pd.DataFrame({"sample": samples["sample"].astype(str).to_numpy(), "patient": patients_of.to_numpy()})
    pins = samples["split"] if "split" in samples.columns else pd.Series([None] * len(samples))
    out["pin"] = [p if isinstance(p, str) and p else None for p in pins]
    bad = sorted(set(out["pin"].dropna()) - set(SPLITS))
    if bad:
        raise SplitError(f"split pins must be one of {', '.join(SPLITS)}, got {', '.join(bad)}")
    assignment, pinned = {}, set()
    for patient, group in out.groupby("patient", sort=True):
        pin = set(group["pin"].dropna())
        if len(pin) > 1:
            raise SplitError(f"patient {patient}: its samples are pinned to different splits "
                             f"({', '.join(f'{s}={p}' for s, p in zip(group['sample'], group['pin']) if p)})")
        if pin:
            assignment[patient], _ = pin.pop(), pinned.add(patient)
        else:
            assignment[patient] = patient_split(patient, fractions, seed)
    out["split"] = out["patient"].map(assignment)
    out["pinned"] = out["patient"].isin(pinned)
    out = out.drop(columns="pin").sort_values("sample").reset_index(drop=True)
    check_split(out, fractions, seed, require)
    per_split = out.drop_duplicates("patient")["split"].value_counts()
    for k in SPLITS:
        log.info("split %s: %d patients, %d samples", k, int(per_split.get(k, 0)), int((out["split"] == k).sum()))
    return out


def check_split(split: pd.DataFrame, fractions: dict[str, float], seed: int,
                require: tuple[str, ...] | None = None) -> None:
    """Raise :class:`SplitError` when a split in ``require`` (default: train, test, and val if
    its fraction is > 0) has no patient in ``split`` (the table of :func:`split_samples`)."""
    if require is None:
        require = tuple(k for k in SPLITS if k != "val" or fractions.get("val", 0.0) > 0)
    per_split = split.drop_duplicates("patient")["split"].value_counts()
    empty = [k for k in require if per_split.get(k, 0) == 0]
    if len(split) and empty:
        raise SplitError(
            f"split: no patient in {' and '.join(empty)} ({split['patient'].nunique()} patients: "
            + ", ".join(f"{k} {int(per_split.get(k, 0))}" for k in SPLITS)
            + f"; split.seed {seed}, fractions {fractions}). Each patient's split is a hash of its id and the seed, "
            "so small cohorts can leave a split empty: pin samples with the sheet's `split` column, "
            "or try another split.seed")
