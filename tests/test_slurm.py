"""The SLURM profile, and the workflow run through a real SLURM.

Tests marked `slurm` submit jobs to the single-node SLURM started by
`.ci/slurm/start.sh` (run as root) and are skipped when `sinfo` does not
answer. They run tests/slurm_workflow/Snakefile, whose rule names are the real
workflow's, with `--profile profiles/slurm --profile profiles/slurm-ci`.
The other tests only read the profile and need no SLURM.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / "tests" / "slurm_workflow" / "Snakefile"
USER_PROFILE = REPO / "profiles" / "slurm"
CI_PROFILE = REPO / "profiles" / "slurm-ci"
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
GPU_RULES = ("train_model", "predict_tiles", "mnist_bags")
STARDIST_RULES = ("ground_truth", "train_nuclei_model")
SAMPLES = ("s1", "s2")
STAGES = ("tile", "tissue", "ssim", "stain")
SUBMITTED = re.compile(r"has been submitted with SLURM jobid (\d+)")


def _slurm_down_reason() -> str | None:
    """Why the local SLURM cannot run the tests, or None when it can."""
    if shutil.which("sinfo") is None:
        return "no sinfo: start SLURM with `sudo .ci/slurm/start.sh`"
    try:
        r = subprocess.run(["sinfo", "-h", "-o", "%P %t"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 15 s"
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no message"])[-1]
        return f"sinfo failed (start SLURM with `sudo .ci/slurm/start.sh`): {last}"
    states = dict(line.split() for line in r.stdout.splitlines() if line.strip())
    usable = {"idle", "mix", "alloc"}
    for partition in ("cpu*", "gpu"):
        if states.get(partition) not in usable:
            return f"SLURM partition {partition.rstrip('*')} missing or not up: sinfo says {states}"
    return None


_DOWN = _slurm_down_reason()


def needs_slurm(test):
    return pytest.mark.slurm(pytest.mark.skipif(_DOWN is not None, reason=str(_DOWN))(test))


def _snakemake(workdir: Path, *args: str, limit_s: int = 150, profiles=(USER_PROFILE, CI_PROFILE),
               background: bool = False):
    """Run Snakemake on the test workflow in ``workdir`` (killed after ``limit_s``)."""
    cmd = ["timeout", "-k", "15", str(limit_s), str(SNAKEMAKE), "-s", str(WORKFLOW)]
    for p in profiles:
        cmd += ["--profile", str(p)]
    cmd += list(args)
    env = dict(os.environ, PATH=f"{SNAKEMAKE.parent}{os.pathsep}{os.environ['PATH']}")
    log = open(workdir / "snakemake.out", "w")
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    if background:
        return proc
    proc.wait()
    return proc.returncode, (workdir / "snakemake.out").read_text()


def _scontrol_job(job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True,
                         check=True).stdout
    return dict(f.split("=", 1) for f in out.split() if "=" in f)


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


# --- profile only (no SLURM needed) -----------------------------------------

def test_bare_profile_name_resolves_to_repo_profile(monkeypatch):
    """`snakemake --profile slurm` from the repo root uses profiles/slurm."""
    from snakemake.cli import get_profile_dir

    monkeypatch.chdir(REPO)
    for name in ("slurm", "profiles/slurm"):
        found = get_profile_dir(name)
        assert found is not None, f"--profile {name} not found from {REPO}"
        assert found[1].resolve() == USER_PROFILE / "config.yaml"


def test_profile_gpu_rules_request_gpus_on_gpu_partition():
    for profile in (USER_PROFILE, CI_PROFILE):
        conf = yaml.safe_load((profile / "config.yaml").read_text())
        per_rule = conf["set-resources"]
        assert set(GPU_RULES) <= set(per_rule), f"{profile}: GPU rules missing from set-resources"
        for rule in GPU_RULES:
            res = per_rule[rule]
            assert res["slurm_partition"] == "gpu" and res["gpu"] == 1, (profile, rule, res)
            assert not re.search(r"--gpus|--gres", str(res.get("slurm_extra", ""))), (profile, rule)
        for rule in STARDIST_RULES:  # tensorflow-cpu: a GPU held by StarDist would sit idle
            res = per_rule.get(rule, {})
            assert "gpu" not in res and res.get("slurm_partition", "cpu") == "cpu", (profile, rule, res)
        assert conf["default-resources"]["slurm_partition"] == "cpu", profile
        assert set(STAGES) <= set(conf.get("groups", {})) or profile == CI_PROFILE


def test_profile_resources_as_snakemake_evaluates_them(tmp_path):
    """Dry run with the user profile: per-rule partitions, GPUs and memory as Snakemake computes them."""
    code, out = _snakemake(tmp_path, "--dry-run", "all", "preempt", profiles=(USER_PROFILE,), limit_s=120)
    assert code == 0, out[-3000:]
    resources = dict(re.findall(r"rule (\w+):\n(?:\s+\w+: .*\n)*?\s+resources: (.*)", out))
    assert set(STAGES) | {"train_model", "predict_tiles"} <= set(resources), sorted(resources)
    for rule, line in resources.items():
        partition = re.search(r"slurm_partition=(\w+)", line).group(1)
        if rule in GPU_RULES:
            assert partition == "gpu" and "gpu=1" in line and "mem_mb=32000" in line, (rule, line)
        else:
            assert partition == "cpu" and "gpu=" not in line and "mem_mb=4000" in line, (rule, line)
    assert "Group job per_sample" in out


# --- through the real SLURM ---------------------------------------------------

@needs_slurm
def test_workflow_runs_through_slurm(tmp_path):
    code, out = _snakemake(tmp_path, "all")
    assert code == 0, out[-4000:]
    job_ids = SUBMITTED.findall(out)

    # One SLURM job per sample for the grouped CPU stages, one for the GPU rule.
    assert len(job_ids) == len(SAMPLES) + 1, job_ids
    sample_jobs = set()
    for sample in SAMPLES:
        envs = [_read(tmp_path / "results" / sample / f"{stage}.json")["env"] for stage in STAGES]
        ids = {e["SLURM_JOB_ID"] for e in envs}
        assert len(ids) == 1 and ids <= set(job_ids), (sample, ids, job_ids)
        assert {e["SLURM_JOB_PARTITION"] for e in envs} == {"cpu"}
        assert all(e["CUDA_VISIBLE_DEVICES"] is None for e in envs)
        sample_jobs |= ids
    assert len(sample_jobs) == len(SAMPLES)

    gpu = _read(tmp_path / "results" / "model" / "regressor.json")["env"]
    assert gpu["SLURM_JOB_ID"] in job_ids and gpu["SLURM_JOB_ID"] not in sample_jobs
    assert gpu["SLURM_JOB_PARTITION"] == "gpu"
    assert gpu["SLURM_GPUS_ON_NODE"] == "1" and gpu["CUDA_VISIBLE_DEVICES"] == "0"
    record = _scontrol_job(gpu["SLURM_JOB_ID"])     # kept by slurmctld for MinJobAge = 300 s
    assert record["Partition"] == "gpu"
    assert record["TresPerJob"] == "gres:gpu:1", "not submitted as sbatch --gpus=1"
    assert record["Comment"] == "rule_train_model"
    log = tmp_path / ".snakemake" / "slurm_logs" / "rule_train_model" / f"{gpu['SLURM_JOB_ID']}.log"
    assert "rule train_model:" in log.read_text()

    # Everything is up to date: the second run submits nothing.
    code, out = _snakemake(tmp_path, "all", limit_s=60)
    assert code == 0, out[-3000:]
    assert SUBMITTED.findall(out) == [] and "Nothing to be done" in out


@needs_slurm
def test_requeued_job_resumes_from_checkpoint(tmp_path):
    """A running GPU job requeued by SLURM (as on preemption) continues from its checkpoint."""
    # The cluster, like many, makes jobs requeueable only on request ...
    plain = subprocess.run(["sbatch", "--parsable", "-p", "cpu", "-o", "/dev/null", "--wrap", "sleep 60"],
                           capture_output=True, text=True, check=True).stdout.strip()
    try:
        _wait_for(lambda: _scontrol_job(plain)["JobState"] == "RUNNING", 30, "plain job start")
        refused = subprocess.run(["scontrol", "requeue", plain], capture_output=True, text=True)
        assert refused.returncode != 0, "cluster requeues jobs without --requeue: test proves nothing"
    finally:
        subprocess.run(["scancel", plain], check=False)

    # ... which the profile's `slurm-requeue: true` (sbatch --requeue) does.
    steps = 12
    proc = _snakemake(tmp_path, "preempt", "--config", f"steps={steps}", "step_seconds=1",
                      limit_s=170, background=True)
    try:
        checkpoint = tmp_path / "checkpoints" / "mil.json"
        _wait_for(lambda: checkpoint.exists() and _read(checkpoint)["step"] >= 3, 90, "3 checkpointed steps")
        job_id = json.loads((tmp_path / "checkpoints" / "mil_starts.json").read_text())[0]["job_id"]
        subprocess.run(["scontrol", "requeue", job_id], check=True)
        _wait_for(lambda: _scontrol_job(job_id)["JobState"] == "PENDING", 30, "job back in queue")
        reached = _read(checkpoint)["step"]        # the first run is dead now
        # SLURM holds a requeued job for 2 min (BeginTime); release it now.
        subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)
        proc.wait(timeout=150)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
    out = (tmp_path / "snakemake.out").read_text()
    assert proc.returncode == 0, out[-4000:]
    assert SUBMITTED.findall(out) == [job_id], "Snakemake resubmitted instead of waiting for SLURM"

    result = _read(tmp_path / "results" / "model" / "mil.json")
    assert result["step"] == steps
    first, second = result["starts"]
    assert first == {"start_step": 0, "job_id": job_id}
    assert second["job_id"] == job_id and _scontrol_job(job_id)["Restarts"] == "1"
    assert second["start_step"] == reached and 3 <= reached < steps, (second, reached)


@needs_slurm
def test_failed_job_is_retried_with_more_memory(tmp_path):
    """profiles' `mem_mb: N * attempt`: the retry gets twice the memory from SLURM."""
    code, out = _snakemake(tmp_path, "retry", "--retries", "1", "--config", "need_mb=1000")
    assert code == 0, out[-4000:]
    first, second = SUBMITTED.findall(out)
    assert _scontrol_job(first)["JobState"] == "FAILED"
    assert "has 500 MB, needs 1000 MB" in (tmp_path / ".snakemake" / "slurm_logs" / "rule_needs_memory"
                                         / f"{first}.log").read_text()
    assert _read(tmp_path / "results" / "retry" / "memory.json") == {"allocated_mb": 1000, "job_id": second}


def _wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.2)
