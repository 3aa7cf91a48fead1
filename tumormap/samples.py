"""The sample sheet: one row per slide pair (or an H&E slide alone, for prediction only)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

REQUIRED = ("sample", "he")
OPTIONAL = ("ihc", "patient", "label", "purity", "mpp", "offset_x", "offset_y", "he_md5", "ihc_md5", "split",
            "ki67_interval", "ki67_regions")
SPLITS = ("train", "val", "test")
NUMERIC = {"purity": (0.0, 1.0), "mpp": (1e-3, 100.0), "offset_x": (None, None), "offset_y": (None, None)}


class SampleSheetError(ValueError):
    """A bad sample sheet; the message names the row and column."""


def read_sample_sheet(path: str | Path) -> pd.DataFrame:
    """Read and check a TSV sample sheet; index = sample (str).

    Blank optional cells become NaN/None. Errors name the sheet, the row (1-based,
    header = row 1) and the column.
    """
    path = Path(path)
    if not path.exists():
        raise SampleSheetError(f"sample sheet not found: {path}")
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, comment="#")
    df.columns = [c.strip() for c in df.columns]
    for col in REQUIRED:
        if col not in df.columns:
            raise SampleSheetError(f"{path}: missing required column '{col}' (columns: {', '.join(df.columns)})")
    unknown = [c for c in df.columns if c not in REQUIRED + OPTIONAL]
    if unknown:
        raise SampleSheetError(f"{path}: unknown column(s) {', '.join(unknown)}; allowed: "
                               f"{', '.join(REQUIRED + OPTIONAL)}")
    for col in REQUIRED + OPTIONAL:
        if col not in df.columns:
            df[col] = ""
    df = df.apply(lambda s: s.str.strip())
    for i, row in df.iterrows():
        where = f"{path}, row {i + 2} (sample '{row['sample']}')"
        if not row["sample"]:
            raise SampleSheetError(f"{path}, row {i + 2}: column 'sample' is empty")
        if any(ch in row["sample"] for ch in "/\\ \t."):
            raise SampleSheetError(f"{where}: column 'sample' must not contain '/', '.', or spaces")
        if not row["he"]:
            raise SampleSheetError(f"{where}: column 'he' is empty")
        for col, (lo, hi) in NUMERIC.items():
            if row[col] == "":
                continue
            try:
                value = float(row[col])
            except ValueError:
                raise SampleSheetError(f"{where}: column '{col}' is not a number: '{row[col]}'") from None
            if math.isnan(value) or (lo is not None and not lo <= value <= hi):
                raise SampleSheetError(f"{where}: column '{col}' = {value} is out of range [{lo}, {hi}]")
        if row["label"] and row["label"] not in ("tumor", "normal"):
            raise SampleSheetError(f"{where}: column 'label' must be 'tumor' or 'normal', not '{row['label']}'")
        if row["split"] and row["split"] not in SPLITS:
            raise SampleSheetError(f"{where}: column 'split' must be empty or one of {', '.join(SPLITS)}, "
                                   f"not '{row['split']}'")
    dupes = df["sample"][df["sample"].duplicated()].tolist()
    if dupes:
        raise SampleSheetError(f"{path}: duplicate sample name(s): {', '.join(dupes)}")
    for col in NUMERIC:
        df[col] = pd.to_numeric(df[col].replace("", None))
    for col in ("ihc", "patient", "label", "he_md5", "ihc_md5", "split", "ki67_interval", "ki67_regions"):
        df[col] = df[col].replace("", None)
    df["patient"] = df["patient"].fillna(df["sample"])
    return df.set_index("sample", drop=False)


def paired_samples(samples: pd.DataFrame) -> list[str]:
    """Samples with an IHC slide: these get ground truth and may be trained on."""
    return [s for s in samples.index if isinstance(samples.at[s, "ihc"], str) and samples.at[s, "ihc"]]


def he_only_samples(samples: pd.DataFrame) -> list[str]:
    """Samples with an H&E slide only: mapped by trained models, never trained on."""
    paired = set(paired_samples(samples))
    return [s for s in samples.index if s not in paired]


def optional_float(value) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def check_exclude(names, available) -> list[str]:
    """The config's ``exclude:`` list, checked: every name must be a sample (else ValueError naming it)."""
    names = [str(n) for n in (names or [])]
    unknown = [n for n in names if n not in set(available)]
    if unknown:
        raise SampleSheetError(f"exclude: {', '.join(repr(n) for n in unknown)} not in the sample sheet "
                               f"(samples: {', '.join(list(available)[:10])}{' ...' if len(available) > 10 else ''})")
    return names
