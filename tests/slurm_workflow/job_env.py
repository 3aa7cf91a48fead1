"""Record where a job ran: the SLURM variables of its environment, as JSON.

Usage: python job_env.py OUT.json [INPUT ...]
A job that did not run under SLURM has no SLURM_JOB_ID and fails here.
"""

import os
import sys

from tumormap.io import write_json

KEYS = ("SLURM_JOB_ID", "SLURM_JOB_PARTITION", "SLURM_CPUS_PER_TASK", "SLURM_GPUS_ON_NODE",
        "CUDA_VISIBLE_DEVICES")

if __name__ == "__main__":
    out, inputs = sys.argv[1], sys.argv[2:]
    if "SLURM_JOB_ID" not in os.environ:
        sys.exit(f"{out}: job is not running inside a SLURM job (no SLURM_JOB_ID)")
    write_json({"env": {k: os.environ.get(k) for k in KEYS}, "inputs": inputs}, out)
