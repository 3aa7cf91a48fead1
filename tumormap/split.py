"""Train/validation/test split by patient (else by sample), deterministic for a seed."""

from __future__ import annotations

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")


def split_samples(samples: pd.DataFrame, fractions: dict[str, float], seed: int = 0) -> pd.DataFrame:
    """Assign each sample to train/val/test so that no patient spans two splits.

    ``samples`` has columns ``sample`` and ``patient`` (a missing patient is the sample
    itself). Patients are shuffled with ``seed`` and cut by ``fractions`` (train, val,
    test; summing to 1). With ≥ 3 patients, val and test get at least one patient each
    when their fraction is > 0, and train keeps at least one.
    """
    total = sum(fractions.get(k, 0.0) for k in SPLITS)
    if not np.isclose(total, 1.0) or any(fractions.get(k, 0.0) < 0 for k in SPLITS):
        raise ValueError(f"split.fractions must be ≥ 0 and sum to 1, got {fractions}")
    patients_of = samples["patient"].where(samples["patient"].notna(), samples["sample"]).astype(str)
    patients = np.array(sorted(set(patients_of)))
    rng = np.random.default_rng(seed)
    patients = patients[rng.permutation(len(patients))]
    n = len(patients)
    counts = {k: int(round(fractions.get(k, 0.0) * n)) for k in ("val", "test")}
    if n >= 3:
        for k in ("val", "test"):
            if fractions.get(k, 0.0) > 0:
                counts[k] = max(1, counts[k])
    while counts["val"] + counts["test"] >= n and counts["val"] + counts["test"] > 0:
        k = "val" if counts["val"] >= counts["test"] and counts["val"] > 0 else "test"
        counts[k] -= 1
    assignment = {}
    for i, patient in enumerate(patients):
        assignment[patient] = "test" if i < counts["test"] else "val" if i < counts["test"] + counts["val"] else "train"
    out = pd.DataFrame({"sample": samples["sample"].astype(str).to_numpy(), "patient": patients_of.to_numpy()})
    out["split"] = out["patient"].map(assignment)
    return out.sort_values("sample").reset_index(drop=True)
