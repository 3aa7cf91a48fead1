"""Verified, resumable HTTP downloads of slides.

A download streams into ``.<name>.part`` beside the target, resumes that partial
file with an HTTP ``Range`` request after a dropped connection, retries connection
errors, stalls and 5xx/408/429 answers with exponential backoff, checks size and
md5, and renames the part onto the target only when verified. Nothing ever appears
at the target path unless it is complete and verified.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path

import requests

from .io import file_digest
from .logs import get_logger

log = get_logger("download")

# Defaults for the config section ``download`` (units in the key names).
DOWNLOAD_DEFAULTS = {
    "timeout_s": 60.0,       # connect timeout, and longest wait for the next byte (stall)
    "retries": 5,            # further attempts after the first, within one job
    "backoff_s": 2.0,        # wait before the first retry; doubles each retry (capped at 300 s)
    "chunk_mb": 1.0,         # streaming chunk size (a dropped connection loses at most one chunk)
    "progress_interval_s": 30.0,  # seconds between progress lines in the log
}

RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}
MAX_BACKOFF_S = 300.0


class DownloadError(RuntimeError):
    """A download failed; the message names the sample, the stain and the URL."""


class ChecksumError(DownloadError):
    """The downloaded bytes do not have the expected md5."""


def download_settings(cfg: dict | None) -> dict:
    """Keyword arguments for :func:`download` from the config section ``download``."""
    cfg = {**DOWNLOAD_DEFAULTS, **{k: v for k, v in (cfg or {}).items() if k in DOWNLOAD_DEFAULTS}}
    return {
        "timeout_s": float(cfg["timeout_s"]),
        "retries": int(cfg["retries"]),
        "backoff_s": float(cfg["backoff_s"]),
        "chunk_bytes": max(1, int(float(cfg["chunk_mb"]) * 2**20)),
        "progress_interval_s": float(cfg["progress_interval_s"]),
    }


def part_path(dest: str | os.PathLike) -> Path:
    """The partial file a download of ``dest`` streams into (kept between attempts to resume)."""
    dest = Path(dest)
    return dest.with_name(f".{dest.name}.part")


def file_md5(path: str | os.PathLike, chunk_bytes: int = 8 * 2**20) -> str:
    return file_digest(path, "md5", chunk_bytes)


class _Retry(Exception):
    """One attempt failed in a way worth retrying; ``wait_s`` overrides the backoff."""

    def __init__(self, reason: str, wait_s: float | None = None):
        super().__init__(reason)
        self.wait_s = wait_s


def download(url: str, dest: str | os.PathLike, *, md5: str | None = None, size: int | None = None,
             sample: str, stain: str, timeout_s: float, retries: int, backoff_s: float,
             chunk_bytes: int, progress: bool = True, progress_interval_s: float = 30.0,
             session: requests.Session | None = None) -> Path:
    """Download ``url`` to ``dest``, resuming, retrying and verifying; return ``dest``.

    ``md5`` (hex) and ``size`` (bytes) are checked when given. ``timeout_s`` bounds the
    connection and every wait for data, so a stalled server fails the attempt.
    ``retries`` further attempts follow the first, after ``backoff_s`` × 2^k seconds.
    On a checksum mismatch or a 4xx answer the partial file is removed; on exhausted
    retries it is kept so the next run resumes. Raises :class:`DownloadError`.
    """
    dest = Path(dest)
    part = part_path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    md5 = md5.lower() if md5 else None
    where = f"sample {sample!r}, stain {stain!r}"
    own_session = session is None
    session = session or requests.Session()
    last_reason, last_error = "no attempt made", None
    try:
        for attempt in range(retries + 1):
            if attempt:
                wait = min(backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S)
                if last_error is not None and last_error.wait_s is not None:
                    wait = max(wait, min(last_error.wait_s, MAX_BACKOFF_S))
                log.warning("%s: attempt %d/%d failed (%s); retrying in %.1f s: %s",
                            where, attempt, retries + 1, last_reason, wait, url)
                time.sleep(wait)
            last_error = None
            try:
                total = _attempt(session, url, part, size=size, where=where, timeout_s=timeout_s,
                                 chunk_bytes=chunk_bytes, progress=progress,
                                 progress_interval_s=progress_interval_s)
                break
            except _Retry as exc:
                last_error, last_reason = exc, str(exc)
        else:
            raise DownloadError(f"{where}: download failed after {retries + 1} attempts, last: {last_reason} "
                                f"(partial file kept for resuming: {part}): {url}")

        got = part.stat().st_size
        if got != total:  # defensive: _attempt only returns on a complete body
            raise DownloadError(f"{where}: truncated body, {got} of {total} bytes: {url}")
        if md5:
            actual = file_md5(part, chunk_bytes)
            if actual != md5:
                part.unlink(missing_ok=True)
                raise ChecksumError(f"{where}: checksum mismatch, md5 {actual} but expected {md5} "
                                    f"({got} bytes; download removed): {url}")
            log.info("%s: md5 %s verified", where, actual)
        else:
            log.warning("%s: no md5 known, only the size (%d bytes) was checked: %s", where, got, url)
        os.replace(part, dest)
        log.info("%s: saved %s (%d bytes)", where, dest, got)
        return dest
    finally:
        if own_session:
            session.close()


def _attempt(session: requests.Session, url: str, part: Path, *, size: int | None, where: str,
             timeout_s: float, chunk_bytes: int, progress: bool, progress_interval_s: float) -> int:
    """One GET, resuming ``part``; return the total size once ``part`` holds all of it."""
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:
        log.warning("%s: partial file larger than the expected %d bytes; starting over", where, size)
        part.unlink()
        offset = 0
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = session.get(url, headers=headers, stream=True, timeout=(timeout_s, timeout_s),
                               allow_redirects=True)
    except requests.exceptions.Timeout as exc:
        raise _Retry(f"stalled: no answer within {timeout_s:g} s ({type(exc).__name__})") from exc
    except requests.exceptions.RequestException as exc:
        raise _Retry(f"connection error ({type(exc).__name__}: {exc})") from exc

    with response:
        status = response.status_code
        if status == 416 and offset:
            total = _range_total(response.headers.get("Content-Range"))
            if total is not None and total == offset:
                return total  # the partial file was already complete
            part.unlink(missing_ok=True)
            raise _Retry(f"HTTP 416 for a resume at byte {offset}; partial file discarded", wait_s=0)
        if status in RETRYABLE_STATUS:
            raise _Retry(f"HTTP {status} {response.reason}", wait_s=_retry_after(response))
        if status == 404:
            part.unlink(missing_ok=True)
            raise DownloadError(f"{where}: HTTP 404 Not Found: {url}")
        if status >= 400:
            part.unlink(missing_ok=True)
            raise DownloadError(f"{where}: HTTP {status} {response.reason}: {url}")
        if status not in (200, 206):
            raise DownloadError(f"{where}: unexpected HTTP {status} {response.reason}: {url}")

        if status == 206:
            start, total = _content_range(response.headers.get("Content-Range"))
            if start != offset:
                part.unlink(missing_ok=True)
                raise _Retry(f"server resumed at byte {start}, not {offset}; partial file discarded", wait_s=0)
            mode = "ab"
        else:
            if offset:
                log.warning("%s: server ignored the Range request; restarting from byte 0", where)
            offset, mode = 0, "wb"
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None and length.isdigit() else None
        if total is None:
            total = size
        if size is not None and total is not None and total != size:
            part.unlink(missing_ok=True)
            raise DownloadError(f"{where}: server announces {total} bytes but {size} were expected: {url}")

        done = offset
        bar = _progress_bar(progress, total, offset, where, progress_interval_s)
        try:
            with open(part, mode) as handle:
                for chunk in response.iter_content(chunk_size=chunk_bytes):
                    handle.write(chunk)
                    done += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
        except requests.exceptions.ConnectionError as exc:
            # requests reports a read timeout during the body as a ConnectionError
            if "timed out" in str(exc).lower():
                raise _Retry(f"stalled: no data for {timeout_s:g} s at byte {done}") from exc
            raise _Retry(f"connection dropped at byte {done} of {total}") from exc
        except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError) as exc:
            raise _Retry(f"truncated body: connection closed at byte {done} of {total}") from exc
        except requests.exceptions.Timeout as exc:
            raise _Retry(f"stalled: no data for {timeout_s:g} s at byte {done}") from exc
        finally:
            if bar is not None:
                bar.close()
        if total is None:
            return done  # no length announced or expected: all the server sent
        if done < total:
            raise _Retry(f"truncated body: {done} of {total} bytes")
        return total


def _progress_bar(enabled: bool, total: int | None, initial: int, where: str, interval_s: float):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                desc=where, file=_LogStream(), mininterval=interval_s, maxinterval=interval_s * 2,
                ascii=True, dynamic_ncols=False, ncols=100)


class _LogStream:
    """File-like target for tqdm: each refresh of the bar becomes one log line."""

    def write(self, text: str) -> None:
        text = text.strip("\r\n ")
        if text:
            log.info("%s", text)

    def flush(self) -> None:
        pass


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def _content_range(header: str | None) -> tuple[int | None, int | None]:
    match = _CONTENT_RANGE.match(header or "")
    if not match:
        return None, None
    total = match.group(3)
    return int(match.group(1)), (int(total) if total != "*" else None)


def _range_total(header: str | None) -> int | None:
    match = re.match(r"bytes\s+\*/(\d+)", header or "")
    return int(match.group(1)) if match else None


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    return float(value) if value.strip().isdigit() else None
