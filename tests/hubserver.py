"""A small Hugging Face hub on loopback, serving what ``huggingface_hub`` and ``pull`` call.

Endpoints: repo info (``/api/models/{repo}/revision/{rev}``, with ``blobs=true`` file sizes,
blob ids and LFS sha256), the tree (``/api/models/{repo}/tree/{rev}``), and file resolve
(``HEAD``/``GET /{repo}/resolve/{rev}/{path}``) with ``ETag``, ``X-Repo-Commit``, and for
LFS files ``X-Linked-Size``/``X-Linked-Etag`` and a 302 to a "CDN" path that serves the
bytes, as the real hub does; ``Range`` requests everywhere. Faults on demand:
drop the connection once part-way through a file, or serve bytes that do not match the
published checksum. Every request is logged for the tests to inspect.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"
_LFS_MIN = 1024  # files this big or bigger are "stored with LFS"


@dataclass
class Repo:
    files: dict[str, bytes]
    commit: str = COMMIT


@dataclass(frozen=True)
class Hit:
    method: str
    path: str
    range: str | None


@dataclass
class HubState:
    repos: dict[str, Repo] = field(default_factory=dict)
    hits: list[Hit] = field(default_factory=list)
    drop_once: dict[str, int] = field(default_factory=dict)
    """File path → byte offset at which the next transfer of it is cut off (once)."""
    corrupt: set[str] = field(default_factory=set)
    """File paths served with one byte flipped."""
    slow: set[str] = field(default_factory=set)
    """File paths served at about 6 MB/s (64 KiB every 10 ms), while they are in the set."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def downloads(self, path: str) -> list[Hit]:
        return [h for h in self.hits if h.method == "GET" and h.path.endswith(f"/{path}")]


def _sha1_blob(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def _entry(path: str, data: bytes) -> dict[str, object]:
    entry: dict[str, object] = {"rfilename": path, "size": len(data), "blobId": _sha1_blob(data)}
    if len(data) >= _LFS_MIN:
        entry["lfs"] = {
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "pointerSize": 134,
        }
    return entry


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        url = urlsplit(self.path)
        path = unquote(url.path)
        info = re.match(r"^/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?$", path)
        tree = re.match(r"^/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?$", path)
        resolve = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
        cdn = re.match(r"^/cdn/([^/]+/[^/]+)/(.+)$", path)
        if resolve:
            self._resolve(resolve[1], resolve[2], resolve[3], body, path, cdn=False)
            return
        if cdn:
            self._resolve(cdn[1], "main", cdn[2], body, path, cdn=True)
            return
        self._hit(path)
        if info:
            self._info(info[1], info[2] or "main", "blobs" in parse_qs(url.query))
        elif tree:
            self._tree(tree[1])
        else:
            self._json(404, {"error": "not found"})

    def _hit(self, path: str, method: str | None = None) -> None:
        state = self.server.state
        with state.lock:
            state.hits.append(Hit(method or self.command, path, self.headers.get("Range")))

    def _repo(self, name: str, revision: str) -> Repo | None:
        repo = self.server.state.repos.get(name)
        if repo is None:
            self._json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            return None
        if revision not in ("main", repo.commit):
            self._json(404, {"error": "Invalid rev id"}, {"X-Error-Code": "RevisionNotFound"})
            return None
        return repo

    def _info(self, name: str, revision: str, blobs: bool) -> None:
        repo = self._repo(name, revision)
        if repo is None:
            return
        siblings = [
            _entry(p, d) if blobs else {"rfilename": p} for p, d in sorted(repo.files.items())
        ]
        self._json(200, {"id": name, "modelId": name, "sha": repo.commit, "siblings": siblings})

    def _tree(self, name: str) -> None:
        repo = self._repo(name, "main")
        if repo is None:
            return
        entries = []
        for p, d in sorted(repo.files.items()):
            e = _entry(p, d)
            entry = {"type": "file", "path": p, "size": len(d), "oid": e["blobId"]}
            if "lfs" in e:
                lfs = e["lfs"]
                assert isinstance(lfs, dict)
                entry["lfs"] = {"oid": lfs["sha256"], "size": len(d), "pointerSize": 134}
            entries.append(entry)
        self._json(200, entries)

    def _resolve(
        self, name: str, revision: str, file: str, body: bool, path: str, cdn: bool
    ) -> None:
        """A file's bytes; an LFS file's resolve answers 302 to the "CDN", as the hub does."""
        state = self.server.state
        repo = self._repo(name, revision)
        if repo is None:
            return
        data = repo.files.get(file)
        if data is None:
            self._json(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
            return
        if file in state.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        entry = _entry(file, data if file not in state.corrupt else repo.files[file])
        lfs = entry.get("lfs")
        etag = lfs["sha256"] if isinstance(lfs, dict) else entry["blobId"]
        headers = {
            "ETag": f'"{etag}"',
            "X-Repo-Commit": repo.commit,
            "Accept-Ranges": "bytes",
        }
        if isinstance(lfs, dict):
            headers["X-Linked-Size"] = str(len(data))
            headers["X-Linked-Etag"] = f'"{etag}"'
            if not cdn:
                self._hit(path, "REDIRECT")
                host, port = self.server.server_address[:2]
                headers["Location"] = f"http://{host}:{port}/cdn/{name}/{file}"
                self.send_response(302)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        self._hit(path)
        start = 0
        status = 200
        requested = self.headers.get("Range")
        if requested:
            match = re.match(r"bytes=(\d+)-$", requested)
            if match is None or int(match[1]) >= len(data):
                self._json(416, {"error": "range not satisfiable"})
                return
            start = int(match[1])
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        payload = data[start:]
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if not body:
            return
        with state.lock:
            cut = state.drop_once.pop(file, None)
        if cut is not None and start < cut:
            self.wfile.write(payload[: cut - start])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        view = memoryview(payload)
        for start in range(0, len(payload), 65536):
            if file in state.slow:
                time.sleep(0.01)
            self.wfile.write(view[start : start + 65536])

    def _json(self, status: int, data: object, headers: dict[str, str] | None = None) -> None:
        payload = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: HubState) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that hangs up (or a dropped transfer) is expected here


@dataclass
class FakeHub:
    url: str
    state: HubState


def running_hub() -> Iterator[FakeHub]:
    """A hub serving on a free loopback port until the generator is closed."""
    state = HubState()
    server = _Server(state)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield FakeHub(f"http://127.0.0.1:{server.server_address[1]}", state)
    finally:
        server.shutdown()
        server.server_close()
