"""Per-sample quality control: one bad slide never takes the cohort down.

Each per-sample stage (tile, tissue, ssim, ground_truth, stain) runs through
:func:`run_stage`, which writes a small JSON record next to the stage's output:
sample, stage, ok, reason, file, and what the stage yielded (tiles, tissue tiles,
kept pairs, tiles with a ratio, stain fallback). When the user asked Snakemake to keep
going (``-k``; :data:`KEEP_GOING_ENV` carries that to the jobs) a *data* error (the slide
is unreadable or truncated, has no µm/px, ...) does not fail the job: the stage writes
valid, empty outputs and a record with ``ok: false``, so the cohort's aggregate steps run
and leave the sample out. Without ``-k`` the error propagates and the job fails with the
message naming sample and file. Programming errors (TypeError, KeyError, ...) always fail.

:func:`qc_table` turns the records into ``results/qc/samples.tsv``: one row per sample,
the first stage that failed or yielded nothing usable, and why.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd

from .io import write_json
from .logs import get_logger

log = get_logger("qc")

KEEP_GOING_ENV = "TUMORMAP_KEEP_GOING"
STAGES = ("register", "tile", "tissue", "ssim", "ground_truth", "stain")
OPTIONAL_STAGES = ("register",)  # only when registration.method is not none
COUNTS = {"tile": "n_tiles", "tissue": "n_tissue", "ssim": "n_kept", "ground_truth": "n_ratio"}
NOTHING = {"tile": "no tiles", "tissue": "no tile has enough tissue", "ssim": "no tile pair passed SSIM",
           "ground_truth": "no tile has a finite tumor ratio"}
COLUMNS = ("sample", "paired", "usable", "stage", "reason", "file", "n_tiles", "n_tissue", "n_kept", "n_ratio",
           "stain_fallback")


def keep_going() -> bool:
    """True when the workflow runs with ``--keep-going`` (set in the environment by rules/common.smk)."""
    return os.environ.get(KEEP_GOING_ENV, "0") == "1"


def data_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "this sample's data is bad", not "the code is wrong"."""
    import openslide

    from .slides import SlideError

    return SlideError, openslide.OpenSlideError, OSError


def _file_named(message: str, files: Iterable[str | None]) -> str:
    files = [str(f) for f in files if f]
    named = [f for f in files if f in message]
    return ", ".join(named or files)


def run_stage(stage: str, sample: str, record_path: str | os.PathLike, compute: Callable[[], object], *,
              on_failure: Callable[[], object], files: Iterable[str | None] = (),
              counts: Callable[[object], dict] | None = None, skip: str | None = None):
    """``compute()``, with a QC record of the outcome written to ``record_path``.

    ``skip``: a reason not to compute at all (an upstream stage left nothing): ``on_failure()``
    is returned and the record says ``skipped``. On a data error (:func:`data_errors`) with
    keep-going on, ``on_failure()`` is returned (the stage's valid, empty output) and the
    record says ``ok: false`` with the reason and file; without keep-going the error is raised.
    ``counts(result)`` adds what the stage yielded (e.g. ``{"n_tiles": 120}``).
    """
    files = list(files)
    record = {"sample": str(sample), "stage": stage, "ok": True, "skipped": False, "reason": "",
              "file": _file_named("", files)}
    if skip:
        log.warning("sample %s: %s skipped: %s", sample, stage, skip)
        result = on_failure()
        record.update(skipped=True, reason=skip)
    else:
        try:
            result = compute()
        except data_errors() as exc:
            if not keep_going():
                raise
            reason = f"{type(exc).__name__}: {exc}"
            log.error("sample %s: %s failed: %s. Keep-going: writing empty, flagged outputs; the sample is left "
                      "out of the dataset and the other samples go on", sample, stage, reason)
            result = on_failure()
            record.update(ok=False, reason=reason, file=_file_named(str(exc), files))
    if counts is not None:
        record.update({k: (v.item() if isinstance(v, np.generic) else v) for k, v in counts(result).items()})
    write_json(record, record_path)
    return result


# ----------------------------------------------------------------------------- empty stage outputs
def empty_tiles(sample: str, paired: bool) -> pd.DataFrame:
    """A tile table with no rows and the columns ``tumormap.tiling.tile_grid`` writes."""
    cols = {"sample": str, "tile_id": "int64", "row": "int64", "col": "int64", "tile_px": "int64", "mpp": "float64"}
    for stain in ("he", "ihc") if paired else ("he",):
        cols.update({f"{stain}_x": "int64", f"{stain}_y": "int64", f"{stain}_level": "int64",
                     f"{stain}_downsample": "float64", f"{stain}_read_px": "int64", f"{stain}_extent": "int64",
                     f"{stain}_mpp": "float64"})
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in cols.items()})


def no_tissue(tiles: pd.DataFrame) -> pd.DataFrame:
    """The tissue stage's columns with nothing kept (every tile of the grid is kept as a row)."""
    return tiles.assign(he_tissue=np.float32(np.nan), ihc_tissue=np.float32(np.nan), tissue_keep=False)


def no_pairs(tissue: pd.DataFrame) -> pd.DataFrame:
    """The ssim stage's columns with no pair kept."""
    return tissue.assign(ssim=np.float32(np.nan), keep=False)


# ----------------------------------------------------------------------------- the cohort table
def read_records(paths: Iterable[str | os.PathLike], stage: str | None = None) -> list[dict]:
    """QC records; ``stage`` names the stage of records that do not (registration JSONs)."""
    records = [json.loads(Path(p).read_text()) for p in paths]
    return [{"stage": stage, **r} if stage else r for r in records]


def qc_table(records: list[dict], samples: list[str], paired: Iterable[str]) -> pd.DataFrame:
    """One row per sample (``COLUMNS``): whether it is usable, and if not the first stage that
    failed or yielded nothing usable, its reason and file.

    Usable: a paired sample has at least one tile with a finite ratio (it can be trained and
    evaluated on); an H&E-only sample has at least one tissue tile (it can be mapped). A stain
    fallback to the reference matrix is flagged in ``stain_fallback`` but does not make a sample
    unusable.
    """
    paired = set(paired)
    by_sample: dict[str, dict[str, dict]] = {s: {} for s in samples}
    for rec in records:
        if rec["sample"] in by_sample:
            by_sample[rec["sample"]][rec["stage"]] = rec
    rows = []
    for sample in samples:
        recs = by_sample[sample]
        is_paired = sample in paired
        stages = [s for s in STAGES if is_paired or s not in ("register", "ssim", "ground_truth")]
        row = {"sample": sample, "paired": is_paired, "usable": True, "stage": "", "reason": "", "file": ""}
        for stage, column in COUNTS.items():
            row[column] = recs.get(stage, {}).get(column, pd.NA)
        row["stain_fallback"] = recs.get("stain", {}).get("fallback", "") or ""
        for stage in stages:
            rec = recs.get(stage)
            if rec is None and stage in OPTIONAL_STAGES:
                continue
            if rec is None:
                row.update(usable=False, stage=stage, reason="no QC record (stage not run)")
                break
            if not rec["ok"]:
                row.update(usable=False, stage=stage, reason=rec["reason"], file=rec.get("file", ""))
                break
            count = COUNTS.get(stage)
            if count and rec.get(count) == 0:
                row.update(usable=False, stage=stage, reason=NOTHING[stage], file=rec.get("file", ""))
                break
        rows.append(row)
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    for column in COUNTS.values():
        table[column] = table[column].astype("Int64")
    return table


def placeholder_figure(path: str | os.PathLike, title: str, reason: str) -> None:
    """A PNG that says why there is no figure (a sample left out), so the report still builds."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .io import save_figure

    fig, ax = plt.subplots(figsize=(6, 3))
    ax.text(0.5, 0.5, f"{title}\n\n" + "\n".join(textwrap.wrap(reason, 70)), ha="center", va="center", fontsize=9)
    ax.axis("off")
    save_figure(fig, path, dpi=100)
