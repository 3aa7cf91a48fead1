"""The benchmarks' default slide: a synthetic demo H&E slide, generated once into bench/.cache."""

from pathlib import Path

CACHE = Path(__file__).parent / ".cache"


def demo_slide() -> str:
    from tumormap.demo import make_demo_pair

    slide = CACHE / "bench_he.tiff"
    if not slide.exists():
        CACHE.mkdir(exist_ok=True)
        make_demo_pair(str(slide), str(CACHE / "bench_ihc.tiff"), str(CACHE / "bench_truth.parquet"), seed=1)
    return str(slide)
