"""Should StarDist see the hematoxylin OD as is (nuclei bright) or inverted (nuclei dark)?

    .venv/bin/python bench/nuclei_channel_polarity.py [--epochs 15] [--steps 50]

Trains the same small StarDist2D twice on the real GBM40 fields (hematoxylin OD, hand
contours) plus StarDist's fluorescence sample: once on the channel as the ground-truth
step builds it, once on 1 − channel (every training image inverted alike). Thresholds are
picked on fields 09–10; detection F1 at IoU 0.5 is reported on held-out fields 11–12.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from tumormap.nuclei import train_nuclei_model, training_set

GBM40 = Path(__file__).resolve().parents[2] / "shared" / "data" / "nuclei" / "gbm40"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--gbm40", default=str(GBM40))
    args = ap.parse_args()
    params = dict(epochs=args.epochs, steps_per_epoch=args.steps, learning_rate=1e-3, gbm40_dir=args.gbm40, seed=0)
    data = training_set("gbm40", params=params)
    results = {}
    for name, f in (("as is (nuclei bright)", lambda x: x), ("inverted (nuclei dark)", lambda x: 1.0 - x)):
        t0 = time.time()
        with tempfile.TemporaryDirectory() as tmp:
            m = train_nuclei_model(Path(tmp) / "model", images=[f(x) for x in data["x"]], labels=data["y"],
                                   params=params, val_images=[f(x) for x in data["val_x"]], val_labels=data["val_y"],
                                   test_images=[f(x) for x in data["test_x"]], test_labels=data["test_y"])
        results[name] = {k: m[k] for k in ("val_f1_iou50", "test_f1_iou50", "test_precision", "test_recall")}
        print(f"{name:24s} held-out F1@0.5 {m['test_f1_iou50']:.3f} (precision {m['test_precision']:.3f}, "
              f"recall {m['test_recall']:.3f}; {time.time() - t0:.0f} s)", flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
