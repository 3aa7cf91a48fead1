"""Tiles/s of the ground-truth step (batched, with deconvolution and measuring) against bare
StarDist ``predict_instances`` on the same tiles' model inputs, in the same run.

    .venv/bin/python bench/bench_ground_truth.py [model_dir] [n_tiles] [tile_px]
"""

import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tumormap import ground_truth as gt  # noqa: E402
from tumormap.nuclei import load_nuclei_model, model_input  # noqa: E402


def tiles(n: int, px: int) -> list[np.ndarray]:
    """Real Ki67 IHC: DeepLIIF panels (0.25 µm/px) tiled/reflected to ``px`` at 0.5 µm/px."""
    data = REPO.parent / "shared" / "data" / "ki67" / "deepliif"
    panels = [gt.read_deepliif(data / f"{name}.png", align=False)["ihc"] for name in ("Bladder1", "Lung1")]
    panels = [p[::2, ::2] for p in panels]  # 256² at 0.5 µm/px
    out = []
    for i in range(n):
        p = panels[i % 2]
        reps = -(-px // p.shape[0])
        big = np.tile(np.rot90(p, i % 4), (reps, reps, 1))[:px, :px]
        out.append(np.ascontiguousarray(big))
    return out


def main() -> None:
    model_dir = sys.argv[1] if len(sys.argv) > 1 else str(REPO / "tests" / "data" / "nuclei_model_gbm40")
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 16
    px = int(sys.argv[3]) if len(sys.argv) > 3 else 512
    nm = load_nuclei_model(model_dir)
    rgbs = tiles(n, px)
    gt.measure_tiles(rgbs[:1], nm, mpp=0.5)  # warm-up (graph build)
    nm.model.predict_instances(model_input(rgbs[0], "h+dab"), verbose=False)

    t0 = time.perf_counter()
    for start in range(0, n, 8):
        gt.measure_tiles(rgbs[start:start + 8], nm, mpp=0.5)
    t_step = time.perf_counter() - t0

    inputs = [model_input(r, "h+dab", nm.spec["od_max"]) for r in rgbs]
    t0 = time.perf_counter()
    for x in inputs:
        nm.model.predict_instances(x, verbose=False)
    t_bare = time.perf_counter() - t0

    print(f"{n} tiles of {px}² px (mean_dab, batch 8)")
    print(f"ground-truth step: {n / t_step:.2f} tiles/s")
    print(f"bare predict_instances (inputs precomputed): {n / t_bare:.2f} tiles/s")
    print(f"ratio step/bare: {t_bare / t_step:.2f}")


if __name__ == "__main__":
    main()
