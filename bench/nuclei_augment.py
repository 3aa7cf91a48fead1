"""Does scanner augmentation keep the GBM40 nuclei model as good? Trains the shipped model's
recipe (tests/data/nuclei_model_gbm40/metrics.json params) with ``augment: scanner`` and
reports detection F1@IoU0.5 on held-out GBM40 fields 11–12 (thresholds on 09–10), the
protocol of bench/nuclei_channel_polarity.py, on the fields as scanned and after simulated
scanner changes (tumormap.augment.scanner_change; blur σ in the fields' 0.25 µm/px pixels).

    nice -n 10 .venv/bin/python bench/nuclei_augment.py OUT_DIR [--augment scanner] [--epochs 60]
    nice -n 10 .venv/bin/python bench/nuclei_augment.py --score MODEL_DIR [MODEL_DIR ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tumormap import nuclei as nu
from tumormap.augment import scanner_change
from tumormap.nuclei import train_from_config

REPO = Path(__file__).resolve().parents[1]
GBM40 = REPO.parent / "shared" / "data" / "nuclei" / "gbm40"
CHANGES = [("as scanned", {}), ("OD ×0.6", dict(od=0.6)), ("OD ×1.4", dict(od=1.4)),
           ("blur σ1.5", dict(blur_sigma=1.5)),
           ("blur σ3", dict(blur_sigma=3.0)), ("JPEG 60", dict(jpeg_quality=60)),
           ("colour R×1.15 B×0.85", dict(od_rgb=(1.15, 1.0, 0.85)))]


def score(model_dir: str, gbm40: str, test_fields=("11", "12")) -> dict:
    """Pooled F1@IoU0.5 on the held-out GBM40 fields after each change in ``CHANGES``."""
    imgs, labs, names = nu.load_gbm40(gbm40)
    test = [(i, lab) for i, lab, n in zip(imgs, labs, names) if n in test_fields]
    nm = nu.load_nuclei_model(model_dir)
    out = {}
    for label, change in CHANGES:
        xs, ys = [], []
        for img, lab in test:
            h, _ = nu.stain_od(scanner_change(img, **change))
            x, y = nu.rescale_pair(nu.scale_od(h, nu.HE_OD_MAX_H), lab, nu.GBM40_MPP / float(nm.spec.get("mpp", 0.5)))
            xs.append(x)
            ys.append(y)
        out[label] = nu.pooled_f1(nu.predict_labels(nm, xs), ys)["f1"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", nargs="?")
    ap.add_argument("--score", nargs="+", default=None, help="only score these model folders")
    ap.add_argument("--augment", default="scanner")
    ap.add_argument("--copies", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gbm40", default=str(GBM40))
    ap.add_argument("--augment-params", default="{}", help="JSON overrides of tumormap.augment.DEFAULT_AUGMENT")
    args = ap.parse_args()
    if args.score:
        print("| model | " + " | ".join(label for label, _ in CHANGES) + " |")
        print("|---|" + "---|" * len(CHANGES))
        for model_dir in args.score:
            f1 = score(model_dir, args.gbm40)
            print(f"| {model_dir} | " + " | ".join(f"{f1[label]:.3f}" for label, _ in CHANGES) + " |", flush=True)
        return
    if not args.out_dir:
        ap.error("OUT_DIR is needed to train")
    shipped = json.loads((REPO / "tests" / "data" / "nuclei_model_gbm40" / "metrics.json").read_text())["params"]
    cfg = {**shipped, "gbm40_dir": args.gbm40, "epochs": args.epochs, "steps_per_epoch": args.steps,
           "seed": args.seed, "augment": args.augment, "augment_copies": args.copies,
           "augment_params": json.loads(args.augment_params)}
    m = train_from_config(args.out_dir, cfg)
    print(f"augment {args.augment} ({args.copies} copies, {args.augment_params}), {args.epochs}×{args.steps} steps, "
          f"seed {args.seed}: "
          f"held-out F1@0.5 {m['test_f1_iou50']:.3f} (precision {m['test_precision']:.3f}, recall "
          f"{m['test_recall']:.3f}), validation F1 {m['val_f1_iou50']:.3f}, {m['seconds']:.0f} s")


if __name__ == "__main__":
    main()
