"""A real HTTP server on loopback for download tests, with switchable faults.

    with SlideServer() as server:
        server.add_file("a.svs", data)
        server.add_record(42, ["a.svs", "b.svs"])
        server.set_fault("a.svs", "drop_once")
        url = server.file_url("a.svs")          # /files/a.svs
        api = server.api_url                    # /api, serving /api/records/42

Files are served with Range support (206 / 416). Faults, per file name:
``drop_once`` (first GET sends half the body, then closes), ``truncate`` (every GET
sends half the body with the full Content-Length), ``not_found`` (404),
``error_once`` (first GET answers 500), ``stall`` (sends a first block, then sleeps
``stall_s``), ``wrong_bytes`` (serves other bytes than the md5 in the record).
``delay_s`` delays every file answer (to make concurrent downloads overlap).
``server.requests`` logs every request: path, Range header, status, body bytes sent,
and its start / end times ``t0`` / ``t1`` (time.monotonic()).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote

FAULTS = {"drop_once", "truncate", "not_found", "error_once", "stall", "wrong_bytes"}


class SlideServer:
    def __init__(self, stall_s: float = 5.0, delay_s: float = 0.0):
        self.files: dict[str, bytes] = {}
        self.records: dict[str, list[str]] = {}
        self.faults: dict[str, str] = {}
        self.requests: list[dict] = []
        self.stall_s = stall_s
        self.delay_s = delay_s
        self._fired: set[str] = set()
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    # --- setup ---
    def add_file(self, name: str, data: bytes) -> None:
        self.files[name] = data

    def add_record(self, record: int | str, names: list[str]) -> None:
        self.records[str(record)] = list(names)

    def set_fault(self, name: str, fault: str | None) -> None:
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of {sorted(FAULTS)}")
        with self._lock:
            self._fired.discard(name)
            if fault is None:
                self.faults.pop(name, None)
            else:
                self.faults[name] = fault

    # --- addresses ---
    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/api"

    def file_url(self, name: str) -> str:
        return f"{self.base_url}/files/{quote(name)}"

    def record_file_url(self, record: int | str, name: str) -> str:
        return f"{self.api_url}/records/{record}/files/{quote(name)}/content"

    def record_json(self, record: int | str) -> dict:
        record = str(record)
        return {
            "id": int(record),
            "metadata": {"title": f"test record {record}"},
            "files": [{
                "id": hashlib.md5(name.encode()).hexdigest(),
                "key": name,
                "size": len(self.files[name]),
                "checksum": "md5:" + hashlib.md5(self.files[name]).hexdigest(),
                "links": {"self": self.record_file_url(record, name)},
            } for name in self.records[record]],
        }

    def requests_for(self, name: str) -> list[dict]:
        return [r for r in self.requests if r.get("name") == name]

    # --- lifecycle ---
    def __enter__(self) -> "SlideServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _take_fault(self, name: str) -> str | None:
        """The fault to apply to this request (one-shot faults fire once)."""
        with self._lock:
            fault = self.faults.get(name)
            if fault in ("drop_once", "error_once"):
                if name in self._fired:
                    return None
                self._fired.add(name)
            return fault


_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


def _make_handler(server: SlideServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output quiet
            pass

        def do_GET(self):
            entry = {"path": self.path, "range": self.headers.get("Range"), "status": None, "sent": 0,
                     "name": None, "t0": time.monotonic(), "t1": None}
            server.requests.append(entry)
            try:
                self._get(entry)
            except (BrokenPipeError, ConnectionResetError):
                pass
            finally:
                entry["t1"] = time.monotonic()

        def _get(self, entry):
            path = unquote(self.path.split("?", 1)[0])
            match = re.fullmatch(r"/api/records/(\d+)", path)
            if match:
                record = match.group(1)
                if record not in server.records:
                    return self._plain(entry, 404, b'{"status": 404, "message": "not found"}')
                return self._plain(entry, 200, json.dumps(server.record_json(record)).encode(),
                                   "application/json")
            match = re.fullmatch(r"/api/records/(\d+)/files/(.+)/content", path) or \
                re.fullmatch(r"/files/(.+)", path)
            if not match:
                return self._plain(entry, 404, b"no such path")
            name = match.groups()[-1]
            entry["name"] = name
            fault = server._take_fault(name)
            if name not in server.files or fault == "not_found":
                return self._plain(entry, 404, b"not found")
            if fault == "error_once":
                return self._plain(entry, 500, b"internal error")
            if server.delay_s:
                time.sleep(server.delay_s)
            data = server.files[name]
            if fault == "wrong_bytes":
                data = bytes(b ^ 0xFF for b in data)
            self._send_body(entry, data, fault)

        def _send_body(self, entry, data: bytes, fault: str | None):
            total, start, end = len(data), 0, len(data) - 1
            rng = self.headers.get("Range")
            status = 200
            if rng:
                match = _RANGE.match(rng.strip())
                if not match:
                    return self._plain(entry, 416, b"bad range", extra={"Content-Range": f"bytes */{total}"})
                start = int(match.group(1))
                end = min(int(match.group(2)), total - 1) if match.group(2) else total - 1
                if start >= total:
                    return self._plain(entry, 416, b"", extra={"Content-Range": f"bytes */{total}"})
                status = 206
            body = data[start:end + 1]
            entry["status"] = status
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Connection", "close")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{total}")
            self.end_headers()
            self.close_connection = True
            if fault in ("drop_once", "truncate"):
                body = body[:len(body) // 2]
            elif fault == "stall":
                first = body[:len(body) // 4]
                self._write(entry, first)
                time.sleep(server.stall_s)
                body = body[len(first):]
            self._write(entry, body)

        def _write(self, entry, chunk: bytes):
            self.wfile.write(chunk)
            self.wfile.flush()
            entry["sent"] += len(chunk)

        def _plain(self, entry, status: int, body: bytes, content_type: str = "text/plain", extra=None):
            entry["status"] = status
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.close_connection = True
            self._write(entry, body)

    return Handler
