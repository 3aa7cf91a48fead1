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
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--gbm40", default=str(GBM40))
    args = ap.parse_args()
    results: dict[str, list[float]] = {}
    for seed in args.seeds:
        params = dict(epochs=args.epochs, steps_per_epoch=args.steps, learning_rate=1e-3, gbm40_dir=args.gbm40,
                      seed=seed)
        data = training_set("gbm40", params=params)
        for name, f in (("as is (nuclei bright)", lambda x: x), ("inverted (nuclei dark)", lambda x: 1.0 - x)):
            t0 = time.time()
            with tempfile.TemporaryDirectory() as tmp:
                m = train_nuclei_model(Path(tmp) / "model", images=[f(x) for x in data["x"]], labels=data["y"],
                                       params=params, val_images=[f(x) for x in data["val_x"]],
                                       val_labels=data["val_y"], test_images=[f(x) for x in data["test_x"]],
                                       test_labels=data["test_y"])
            results.setdefault(name, []).append(m["test_f1_iou50"])
            print(f"seed {seed} {name:24s} held-out F1@0.5 {m['test_f1_iou50']:.3f} (precision "
                  f"{m['test_precision']:.3f}, recall {m['test_recall']:.3f}; {time.time() - t0:.0f} s)", flush=True)
    for name, f1s in results.items():
        print(f"{name:24s} mean held-out F1@0.5 {sum(f1s) / len(f1s):.3f} over seeds {args.seeds}: "
              f"{', '.join(f'{v:.3f}' for v in f1s)}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
