"""Stand-in for a job killed for lack of memory: fails unless SLURM gave it enough.

Usage: python memory_probe.py OUT.json NEED_MB
Reads the memory SLURM allocated to this job (scontrol show job) and exits
with an error when it is below NEED_MB; otherwise writes {allocated_mb, job_id}.
"""

import os
import re
import subprocess
import sys

from tumormap.io import write_json


def allocated_mb(job_id: str) -> int:
    """Memory in MB that SLURM allocated to job ``job_id``."""
    record = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True,
                            check=True).stdout
    m = re.search(r"\bTRES=\S*?mem=(\d+(?:\.\d+)?)([MG])", record)
    if m is None:
        sys.exit(f"job {job_id}: no memory in its SLURM record: {record[:300]}")
    return round(float(m.group(1)) * (1024 if m.group(2) == "G" else 1))


if __name__ == "__main__":
    out, need_mb = sys.argv[1], int(sys.argv[2])
    job_id = os.environ["SLURM_JOB_ID"]
    got = allocated_mb(job_id)
    if got < need_mb:
        sys.exit(f"{out}: SLURM job {job_id} has {got} MB, needs {need_mb} MB")
    write_json({"allocated_mb": got, "job_id": job_id}, out)
