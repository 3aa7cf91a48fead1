"""MIL on a synthetic cohort of N demo pairs (issue #10, item 8): test MAE and map spread.

    python bench/bench_mil_cohort.py [--pairs 12] [--out /tmp/mil_cohort] [--epochs 8]

Writes a sheet of N generated demo pairs (one patient each) and a config that trains only the
`mil` model, runs `snakemake all` there, then prints the MIL test MAE against the IHC-derived
ratio and, per test slide, the spread (std over tiles) of the MIL map over that of the IHC map.
Goals: MAE ≤ 0.08 and spread ratio ≥ 0.7.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from demo_cohort import run_workflow, shipped_model, write_cohort  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=12)
    ap.add_argument("--out", default="/tmp/mil_cohort")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--cores", default="all")
    args = ap.parse_args()
    out = Path(args.out)
    write_cohort(out, args.pairs, {"mil": dict(shipped_model("mil"), epochs=args.epochs)})
    run_workflow(out, args.cores)
    metrics = json.loads((out / "results/evaluate/mil/metrics.json").read_text())
    print(f"MIL test MAE {metrics['mae']:.3f} (goal ≤ 0.08), Pearson r {metrics['pearson_r']:.3f}, "
          f"{metrics['n']} tiles of {', '.join(metrics['test_samples'])}")
    for sample in metrics["test_samples"]:
        arrays = np.load(out / f"results/maps/mil/{sample}.npz")
        both = np.isfinite(arrays["predicted"]) & np.isfinite(arrays["ihc"])
        ratio = np.std(arrays["predicted"][both]) / max(1e-9, np.std(arrays["ihc"][both]))
        print(f"{sample}: map spread MIL / IHC = {ratio:.2f} (goal ≥ 0.7) over {both.sum()} tiles")
    return 0


if __name__ == "__main__":
    sys.exit(main())
