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
    return logger


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(f"tumormap.{name}")
