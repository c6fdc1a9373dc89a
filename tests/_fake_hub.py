"""A Hugging Face Hub on 127.0.0.1, inside a test, for the real `huggingface_hub` client.

What the client needs (read from huggingface_hub 2.4's `hf_api.model_info`, `file_download.
get_hf_file_metadata` / `http_get` and `utils._http.hf_raise_for_status`):
- `GET /api/models/{owner}/{name}/revision/{rev}?blobs=True` -> JSON with `id`, `sha` (the commit) and
  `siblings` [{rfilename, size, blobId, lfs: {size, sha256, pointerSize}}] (lfs only for LFS files);
- `HEAD|GET /{owner}/{name}/resolve/{rev}/{path}` -> the file, with `X-Repo-Commit`, `ETag` (the
  git blob id, or the sha256 for LFS files, which also get `X-Linked-Etag` and `X-Linked-Size`),
  `Content-Length`, `Accept-Ranges: bytes`; `Range: bytes=N-` -> 206 with `Content-Range`;
- errors as the hub sends them: 404 with `X-Error-Code: RepoNotFound | RevisionNotFound |
  EntryNotFound` (the client turns each into its own exception).

Faults for tests: `cut[(repo, path)] = n` sends n bytes of the next full GET then drops the
connection (the client must resume with a Range request); `tamper[(repo, path)]` serves one byte
flipped (a corrupted transfer); `on_send(repo, path, sent)` is called while a body is sent (a test
fills the disk there). `log` records every request (method, path, Range header).
"""
from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import unquote, urlparse

LFS_SUFFIXES = (".safetensors", ".pth", ".bin")


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, dict[str, bytes]] = {}
        self.cut: dict[tuple[str, str], int] = {}
        self.tamper: set[tuple[str, str]] = set()
        self.on_send: Optional[Callable[[str, str, int], None]] = None
        self.log: list[tuple[str, str, Optional[str]]] = []
        self.gated: dict[str, str] = {}          # repo -> the token it requires (403 GatedRepo otherwise)
        self.auth: list[Optional[str]] = []      # the Authorization header of every request
        self._server: Optional[ThreadingHTTPServer] = None

    # -- content ------------------------------------------------------------------------------

    def add_repo(self, repo: str, files: dict[str, bytes]) -> None:
        self.repos[repo] = dict(files)

    def add_folder(self, repo: str, folder: Path, prefix: str = "") -> None:
        """Every file under `folder` (symbolic links followed) as `prefix + relative path`."""
        import os

        files = self.repos.setdefault(repo, {})
        for dirpath, _, names in os.walk(folder, followlinks=True):
            for n in names:
                p = Path(dirpath) / n
                files[prefix + p.relative_to(folder).as_posix()] = p.read_bytes()

    def commit(self, repo: str) -> str:
        h = hashlib.sha1()
        for name, data in sorted(self.repos[repo].items()):
            h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
        return h.hexdigest()

    @staticmethod
    def is_lfs(name: str, data: bytes) -> bool:
        return name.endswith(LFS_SUFFIXES) or len(data) > 1 << 20

    # -- server -------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FakeHub":
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):   # quiet
                pass

            def do_HEAD(self):
                hub._handle(self, head=True)

            def do_GET(self):
                hub._handle(self, head=False)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # -- requests -----------------------------------------------------------------------------

    def _error(self, h, code: int, error_code: Optional[str], message: str, commit: Optional[str] = None,
               head: bool = False) -> None:
        body = json.dumps({"error": message}).encode()
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        if error_code:
            h.send_header("X-Error-Code", error_code)
            h.send_header("X-Error-Message", message)
        if commit:
            h.send_header("X-Repo-Commit", commit)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if not head:
            h.wfile.write(body)

    def _handle(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        url = urlparse(h.path)
        path = unquote(url.path)
        self.log.append(("HEAD" if head else "GET", path, h.headers.get("Range")))
        self.auth.append(h.headers.get("Authorization"))
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)
        if m:
            return self._api(h, m.group(1), m.group(2) or "main", head)
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m:
            return self._resolve(h, m.group(1), m.group(2), m.group(3), head)
        return self._error(h, 404, None, f"no route {path}", head=head)

    def _repo_rev(self, h, repo: str, rev: str, head: bool) -> Optional[str]:
        if repo not in self.repos:
            self._error(h, 404, "RepoNotFound", f"Repository Not Found for url: {repo}", head=head)
            return None
        if repo in self.gated and h.headers.get("Authorization") != f"Bearer {self.gated[repo]}":
            self._error(h, 403, "GatedRepo", f"Access to model {repo} is restricted", head=head)
            return None
        commit = self.commit(repo)
        if rev not in ("main", commit):
            self._error(h, 404, "RevisionNotFound", f"Invalid rev id: {rev}", head=head)
            return None
        return commit

    def _api(self, h, repo: str, rev: str, head: bool) -> None:
        commit = self._repo_rev(h, repo, rev, head)
        if commit is None:
            return
        siblings = []
        for name, data in sorted(self.repos[repo].items()):
            sib = {"rfilename": name, "size": len(data), "blobId": git_sha1(data)}
            if self.is_lfs(name, data):
                sib["lfs"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "pointerSize": 134}
            siblings.append(sib)
        body = json.dumps({"_id": commit[:24], "id": repo, "modelId": repo, "sha": commit, "private": False,
                           "siblings": siblings}).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if not head:
            h.wfile.write(body)

    def _resolve(self, h, repo: str, rev: str, name: str, head: bool) -> None:
        commit = self._repo_rev(h, repo, rev, head)
        if commit is None:
            return
        files = self.repos[repo]
        if name not in files:
            return self._error(h, 404, "EntryNotFound", f"{name} does not exist on {rev}", commit=commit, head=head)
        data = files[name]
        key = (repo, name)
        if key in self.tamper:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        lfs = self.is_lfs(name, data)
        etag = hashlib.sha256(files[name]).hexdigest() if lfs else git_sha1(files[name])
        start = 0
        rng = h.headers.get("Range")
        if rng:
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
            start = int(m.group(1)) if m else 0
        body = data[start:]
        h.send_response(206 if rng and start else 200)
        h.send_header("X-Repo-Commit", commit)
        h.send_header("ETag", f'"{etag}"')
        if lfs:
            h.send_header("X-Linked-Etag", f'"{etag}"')
            h.send_header("X-Linked-Size", str(len(data)))
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("Content-Length", str(len(body)))
        if rng and start:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.end_headers()
        if head:
            return
        limit = self.cut.pop(key, None) if not rng else None
        sent = 0
        chunk = 64 * 1024
        while sent < len(body):
            end = min(len(body), sent + chunk)
            if limit is not None and end > limit:
                end = limit
            try:
                h.wfile.write(body[sent:end])
            except (ConnectionError, BrokenPipeError):
                h.close_connection = True       # the client went away (interrupted, disk full)
                return
            sent = end
            if self.on_send is not None:
                self.on_send(repo, name, start + sent)
            if limit is not None and sent >= limit:
                h.wfile.flush()
                try:
                    h.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                h.close_connection = True
                return
