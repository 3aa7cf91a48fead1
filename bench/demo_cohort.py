"""The cohort benchmarks' set-up: a folder with a sheet of N generated demo pairs (one patient
each), a config built from config.yaml with the given models, and `snakemake` run there."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def write_cohort(out: Path, pairs: int, models: dict) -> dict:
    """``out``/samples.tsv (demo1 … demoN pairs) and ``out``/config.yaml training ``models``."""
    out.mkdir(parents=True, exist_ok=True)
    rows = ["sample\the\tihc\tpatient\toffset_x\toffset_y"]
    rows += [f"demo{i}\tresources/demo/demo{i}_he.tiff\tresources/demo/demo{i}_ihc.tiff\tP{i}\t12\t-8"
             for i in range(1, pairs + 1)]
    (out / "samples.tsv").write_text("\n".join(rows) + "\n")
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["samples"] = "samples.tsv"
    cfg["train"]["models"] = models
    (out / "config.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return cfg


def shipped_model(name: str) -> dict:
    """A model entry of the shipped config.yaml."""
    return dict(yaml.safe_load((REPO / "config.yaml").read_text())["train"]["models"][name])


def run_workflow(out: Path, cores: str = "all", *targets: str) -> None:
    snakemake = Path(sys.executable).parent / "snakemake"
    subprocess.run([str(snakemake), *(targets or ("all",)), "-s", str(REPO / "Snakefile"), "-d", str(out),
                    "--cores", cores, "--resources", "gpu=1"], check=True)
