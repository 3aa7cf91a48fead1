"""Per-rule logging: each workflow script logs stage lines to its Snakemake log file."""

from __future__ import annotations

import logging
import sys


def setup_logging(log_path: str | None = None, level: int = logging.INFO) -> logging.Logger:
    """Send the package's log lines to ``log_path`` (and stderr), one line per event."""
    logger = logging.getLogger("tumormap")
    logger.setLevel(level)
    logger.handlers.clear()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        handlers.append(logging.FileHandler(log_path, mode="w"))
    for handler in handlers:
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    logging.captureWarnings(True)
    previous_hook = sys.excepthook

    def log_uncaught(exc_type, exc, tb):  # the rule's log file says why the job failed
        if not issubclass(exc_type, KeyboardInterrupt):
            logger.error("failed: %s: %s", exc_type.__name__, exc, exc_info=(exc_type, exc, tb))
        previous_hook(exc_type, exc, tb)

    sys.excepthook = log_uncaught
    log_job_context(logger)
    return logger


def log_job_context(logger: logging.Logger) -> None:
    """One line naming the SLURM job, partition and GPUs this step runs with (if any)."""
    import os

    env = os.environ
    if "SLURM_JOB_ID" in env:
        logger.info("SLURM job %s on %s, partition %s, %s CPUs, GPUs on node %s (CUDA_VISIBLE_DEVICES=%s)",
                    env["SLURM_JOB_ID"], env.get("SLURMD_NODENAME", "?"), env.get("SLURM_JOB_PARTITION", "?"),
                    env.get("SLURM_CPUS_PER_TASK", env.get("SLURM_CPUS_ON_NODE", "?")),
                    env.get("SLURM_GPUS_ON_NODE", "0"), env.get("CUDA_VISIBLE_DEVICES", ""))


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(f"tumormap.{name}")
