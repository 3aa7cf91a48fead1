"""``tumormap``: one-off use outside Snakemake, with the same functions the rules call.

    tumormap predict --model results/models/regressor SLIDE [SLIDE ...] --out maps/
    tumormap demo --out demo/            # a synthetic H&E/IHC pair with its known truth
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

REPO_CONFIG = Path(__file__).resolve().parents[1] / "config.yaml"


def load_sections(config_path: str | Path | None = None) -> dict:
    """tissue/stain/maps sections of a workflow config (default: the repository's config.yaml)."""
    path = Path(config_path) if config_path else REPO_CONFIG
    if not path.exists():
        raise ValueError(f"config file not found: {path}")
    cfg = yaml.safe_load(path.read_text()) or {}
    return {k: dict(cfg.get(k) or {}) for k in ("tissue", "stain", "maps")}


def map_he_slide(model_dir: str, he_path: str, out_dir: str, *, sample: str | None = None,
                 tissue_cfg: dict | None = None, stain_cfg: dict | None = None, maps_cfg: dict | None = None,
                 fallback_mpp: float | None = None, progress: bool = True) -> dict:
    """Map one H&E slide with a trained model: tiles → tissue → stain → prediction → map,
    GeoJSON and a summary row. Writes ``out_dir/<sample>.{parquet,png,npz,json,geojson}``."""
    import pandas as pd

    from .export import slide_summary, tiles_geojson, write_geojson
    from .io import write_json, write_parquet
    from .maps import slide_maps
    from .predict import load_model, predict_slide
    from .stain import slide_stain_or_reference
    from .tiling import tile_grid
    from .tissue import tissue_table
    from .train import load_card

    defaults = load_sections()
    tissue_cfg = {**defaults["tissue"], **(tissue_cfg or {})}
    stain_cfg = {**defaults["stain"], **(stain_cfg or {})}
    maps_cfg = {**defaults["maps"], **(maps_cfg or {})}
    sample = sample or Path(he_path).stem
    out = Path(out_dir)
    card = load_card(model_dir)
    tiles = tile_grid(he_path, None, sample, target_mpp=card["input_mpp"], tile_px=card["tile_px"],
                      he_mpp=fallback_mpp)
    tissue = tissue_table(tiles, he_path, None, sample, min_tissue=tissue_cfg["min_tissue"],
                          read_px=tissue_cfg["read_px"], white=tissue_cfg["white"],
                          min_saturation=tissue_cfg["min_saturation"])
    write_parquet(tissue, out / f"{sample}.tiles.parquet")
    stain = slide_stain_or_reference(he_path, tissue[tissue["tissue_keep"]], sample, n_tiles=stain_cfg["n_tiles"],
                                     tile_px=stain_cfg["read_px"],
                                     min_tissue_tiles=stain_cfg.get("min_tissue_tiles", 4),
                                     min_angle_deg=stain_cfg.get("min_angle_deg", 10.0))
    write_json(stain, out / f"{sample}.stain.json")
    model, card, kind = load_model(model_dir)
    predictions = predict_slide(model, card, kind, tissue, he_path, stain, sample=sample,
                                batch_size=maps_cfg["batch_size"], progress=progress)
    write_parquet(predictions, out / f"{sample}.parquet")
    slide_maps(str(out / f"{sample}.parquet"), str(out / f"{sample}.tiles.parquet"), None, he_path, sample=sample,
               model=card["name"], png=str(out / f"{sample}.png"), arrays=str(out / f"{sample}.npz"),
               agreement=str(out / f"{sample}.json"), thumbnail_px=maps_cfg["thumbnail_px"])
    write_geojson(tiles_geojson(predictions, sample=sample, model=card["name"],
                                tumor_threshold=maps_cfg.get("tumor_threshold", 0.5)), str(out / f"{sample}.geojson"))
    return slide_summary(predictions, tissue, sample=sample, model=card["name"],
                         tumor_threshold=maps_cfg.get("tumor_threshold", 0.5))


def _predict(args) -> int:
    """Map every readable slide; write summary.csv for those; list the failures and exit 1 if any."""
    from .export import write_summary_csv
    from .logs import setup_logging
    from .qc import data_errors
    from .slides import MissingMppError

    setup_logging(None)
    sections = load_sections(args.config)
    rows, failures = [], []
    for slide in args.slides:
        try:
            rows.append(map_he_slide(args.model, slide, args.out, fallback_mpp=args.mpp,
                                     tissue_cfg=sections["tissue"], stain_cfg=sections["stain"],
                                     maps_cfg=sections["maps"]))
        except MissingMppError as exc:
            failures.append((slide, f"{exc.path} has no µm/px in its metadata (openslide.mpp-x): give it with "
                                    "--mpp (level-0 µm per pixel)"))
            continue
        except data_errors() + (ValueError,) as exc:
            failures.append((slide, f"{type(exc).__name__}: {exc}"))
            continue
        print(f"{slide}: mean tumor ratio {rows[-1]['mean_tumor_ratio']:.3f} "
              f"({rows[-1]['n_tissue_tiles']} tissue tiles) -> {args.out}", file=sys.stderr)
    if rows:
        write_summary_csv(rows, str(Path(args.out) / "summary.csv"))
    for slide, reason in failures:
        print(f"tumormap: error: {slide}: not mapped: {reason}", file=sys.stderr)
    if failures:
        print(f"tumormap: {len(rows)} of {len(args.slides)} slides mapped"
              + (f" (summary: {Path(args.out) / 'summary.csv'})" if rows else ""), file=sys.stderr)
        return 1
    return 0


def _demo(args) -> int:
    from .demo import make_demo_pair

    out = Path(args.out)
    summary = make_demo_pair(str(out / "demo_he.tiff"), str(out / "demo_ihc.tiff"), str(out / "demo_truth.parquet"),
                             seed=args.seed, size_px=args.size_px)
    print(summary)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tumormap", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("predict", help="map H&E slides with a trained model")
    p.add_argument("--model", required=True, help="model folder (model.pt + card.json)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--mpp", type=float, default=None, help="level-0 µm/px for slides that lack one")
    p.add_argument("--config", default=None,
                   help="workflow config whose tissue/stain/maps settings to use (default: the repository's)")
    p.add_argument("slides", nargs="+", help="H&E slide files (any format OpenSlide reads)")
    p.set_defaults(func=_predict)
    d = sub.add_parser("demo", help="write a synthetic H&E/IHC slide pair with known tumor ratios")
    d.add_argument("--out", required=True)
    d.add_argument("--seed", type=int, default=7)
    d.add_argument("--size-px", type=int, default=6144)
    d.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, RuntimeError) as exc:
        print(f"tumormap: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
