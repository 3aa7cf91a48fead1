"""The demo DAG through a real single-node SLURM, with the user's command (issue: SLURM GPU nodes).

Runs `snakemake --profile slurm all` from the repository root (plus the CI profile's
faster polling) on the tiny demo config, then checks that every output exists, that each
GPU rule ran inside a SLURM job of the gpu partition with one GPU (`--gpus=1`), that
each job's id is one Snakemake submitted, and that a second run submits nothing.
"""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_slurm import SUBMITTED, _scontrol_job, needs_slurm
from tests.test_workflow import HE_ONLY, N_PAIRS, tiny_config, write_workdir

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"


def run(workdir: Path, *args: str, limit_s: int = 1500) -> subprocess.CompletedProcess:
    cmd = ["timeout", "-k", "30", str(limit_s), str(SNAKEMAKE), "--profile", "slurm", "--profile",
           "profiles/slurm-ci", *args, "--directory", str(workdir)]
    env = {"PATH": f"{SNAKEMAKE.parent}:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": str(Path.home())}
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)


@needs_slurm
@pytest.mark.slow
def test_demo_dag_runs_through_slurm_with_gpu_jobs_on_the_gpu_partition(tmp_path):
    cfg = tiny_config(tmp_path)
    cfg["train"]["models"]["regressor"]["epochs"] = 1
    cfg["train"]["models"]["mil"]["epochs"] = 1
    cfg["train"]["models"].pop("llp")  # its extra StarDist and training jobs add nothing to the SLURM path
    write_workdir(tmp_path, cfg)
    first = run(tmp_path, "all")
    out = first.stdout + first.stderr
    assert first.returncode == 0, out[-6000:]
    submitted = set(SUBMITTED.findall(out))
    assert len(submitted) >= 10, out[-3000:]
    for path in ("results/evaluate/comparison.json", "results/maps/regressor/summary.csv",
                 "results/maps/mil/summary.csv", f"results/maps/mil/{HE_ONLY}.geojson",
                 *(f"results/maps/regressor/demo{i}.png" for i in range(1, N_PAIRS + 1))):
        assert (tmp_path / path).stat().st_size > 0, path
    logs = [tmp_path / "logs/train_model/regressor.log", tmp_path / "logs/train_model/mil.log",
            tmp_path / "logs/predict_tiles/regressor/demo1.log"]
    for log in logs:
        m = re.search(r"SLURM job (\d+) on \S+, partition (\S+), \S+ CPUs, GPUs on node (\S+)", log.read_text())
        assert m, f"{log} does not show a SLURM job"
        job_id, partition, gpus = m.groups()
        assert job_id in submitted and partition == "gpu" and gpus == "1", (log, m.groups())
        assert "gpu:1" in _scontrol_job(job_id).get("TresPerJob", ""), job_id  # what --gpus=1 requests
    for cpu_log in ("logs/tissue/demo1.log", "logs/ground_truth/demo1.log", "logs/train_nuclei_model.log"):
        m = re.search(r"SLURM job (\d+) on \S+, partition ([^,\s]+), \S+ CPUs, GPUs on node (\S+)",
                      (tmp_path / cpu_log).read_text())
        assert m and m.group(2) == "cpu" and m.group(3) == "0" and m.group(1) in submitted, (cpu_log, m and m.groups())

    second = run(tmp_path, "all", limit_s=300)
    assert second.returncode == 0 and not SUBMITTED.findall(second.stdout + second.stderr)
    assert "Nothing to be done" in second.stdout + second.stderr


@needs_slurm
def test_failing_slurm_job_names_its_log_and_keep_going_finishes_the_rest(tmp_path):
    from tumormap.demo import make_demo_pair

    make_demo_pair(str(tmp_path / "good_he.tiff"), str(tmp_path / "good_ihc.tiff"), str(tmp_path / "t.parquet"),
                   seed=2, size_px=1024, region_px=512)
    (tmp_path / "corrupt_he.svs").write_bytes(b"II*\x00" + b"\x00" * 4096)  # a TIFF header and nothing else
    (tmp_path / "samples.tsv").write_text("sample\the\tihc\ngood\tgood_he.tiff\tgood_ihc.tiff\n"
                                          "corrupt\tcorrupt_he.svs\tgood_ihc.tiff\n")
    cfg = tiny_config(tmp_path)
    (tmp_path / "config.yaml").write_text(__import__("yaml").safe_dump(cfg))
    proc = run(tmp_path, "results/tissue/good.parquet", "results/tissue/corrupt.parquet", limit_s=600)
    out = proc.stdout + proc.stderr
    # keep-going (the user profile) reaches the SLURM job through sbatch's environment (TUMORMAP_KEEP_GOING,
    # set in onstart): the corrupt sample is flagged with its reason instead of failing; the good one finishes
    assert proc.returncode == 0, out[-3000:]
    assert (tmp_path / "results/tissue/good.parquet").exists()
    record = __import__("json").loads((tmp_path / "results/qc/tile/corrupt.json").read_text())
    assert record["ok"] is False and "sample corrupt: cannot open corrupt_he.svs as a slide" in record["reason"]
    # without the flag (--no-hooks: onstart does not run, the variable is unset) the job fails, and the
    # failure names the SLURM job's log, which says why
    proc = run(tmp_path, "--no-hooks", "--forcerun", "tile", "results/tissue/corrupt.parquet", limit_s=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert not (tmp_path / "results/tiles/corrupt.parquet").exists(), out[-3000:]
    logs = re.findall(r"\S*\.snakemake/slurm_logs/\S+\.log", out)
    assert logs, out[-3000:]  # the failure names the SLURM job's log...
    text = "\n".join(Path(p if Path(p).is_absolute() else tmp_path / p).read_text() for p in logs
                     if Path(p if Path(p).is_absolute() else tmp_path / p).exists())
    assert "sample corrupt: cannot open corrupt_he.svs as a slide" in text  # ...which says why
