"""Stand-in for a trainer that resumes from its last checkpoint after preemption.

Counts to --steps, one step per --step-seconds, saving the step reached to
--checkpoint (atomically) after each step. On start it resumes from that
checkpoint and appends {start_step, SLURM_JOB_ID} to --history, so a requeued
job shows whether it continued or started over.
The checkpoint and history are not Snakemake outputs: Snakemake deletes the
outputs of a job it reruns, but must not delete its checkpoint.
"""

import argparse
import os
import time
from pathlib import Path

from tumormap.io import read_json, write_json


def run(steps: int, step_seconds: float, checkpoint: Path, history: Path, out: Path) -> None:
    step = read_json(checkpoint)["step"] if checkpoint.exists() else 0
    starts = read_json(history) if history.exists() else []
    starts.append({"start_step": step, "job_id": os.environ.get("SLURM_JOB_ID")})
    write_json(starts, history)
    while step < steps:
        time.sleep(step_seconds)
        step += 1
        write_json({"step": step}, checkpoint)
    write_json({"step": step, "starts": starts}, out)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--step-seconds", type=float, required=True)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--history", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    run(a.steps, a.step_seconds, a.checkpoint, a.history, a.out)
