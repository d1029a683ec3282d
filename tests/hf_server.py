"""A Hugging Face Hub stand-in on 127.0.0.1 for the download tests.

It answers ``HEAD`` and ``GET /{repo_id}/resolve/{revision}/{filename}`` as the Hub's resolve endpoint
does for an LFS file: ``X-Repo-Commit`` (the commit the revision resolves to), ``ETag`` and
``X-Linked-Etag`` (the quoted sha256 of the file), ``X-Linked-Size`` and ``Content-Length``; errors
are 404s with the ``X-Error-Code`` that ``huggingface_hub`` turns into its exceptions. It sends no
Xet headers, so the client takes its plain HTTP path. ``fault`` makes it misbehave on ``GET``:
"wrong_bytes" sends other bytes of the right size, "truncated" sends the first half of the file.
"""
from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Tuple
from urllib.parse import unquote

@dataclass
class Repo:
    commits: Dict[str, Dict[str, bytes]] = field(default_factory=dict)  # commit -> filename -> bytes
    branches: Dict[str, str] = field(default_factory=dict)  # branch -> commit


class FakeHub:
    """``with FakeHub() as hub: hub.commit(repo, {name: data})`` serves the files at ``hub.url``."""

    def __init__(self) -> None:
        self.repos: Dict[str, Repo] = {}
        self.fault: Optional[str] = None
        self.requests: List[Tuple[str, str]] = []  # (method, path) in arrival order
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    def commit(self, repo_id: str, files: Dict[str, bytes], branch: str = "main") -> str:
        """A new commit on ``branch`` holding the branch's files updated with ``files``; returns its hash."""
        repo = self.repos.setdefault(repo_id, Repo())
        parent = repo.branches.get(branch)
        tree = dict(repo.commits[parent]) if parent else {}
        tree.update(files)
        digest = hashlib.sha1(repr((repo_id, parent, sorted(tree.items()))).encode())
        commit = digest.hexdigest()
        repo.commits[commit] = tree
        repo.branches[branch] = commit
        return commit

    def start(self) -> "FakeHub":
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._server = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def resolve(self, path: str) -> Tuple[int, Dict[str, str], bytes]:
        """Status, headers and full body for a resolve URL path."""
        parts = [unquote(p) for p in path.split("?", 1)[0].strip("/").split("/")]
        if len(parts) < 5 or parts[2] != "resolve":
            return 404, {"X-Error-Code": "RepoNotFound"}, b""
        repo_id, revision, filename = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
        repo = self.repos.get(repo_id)
        if repo is None:
            return 404, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}, b""
        commit = repo.branches.get(revision, revision)
        if commit not in repo.commits:
            return 404, {"X-Error-Code": "RevisionNotFound", "X-Error-Message": "Invalid rev id"}, b""
        data = repo.commits[commit].get(filename)
        if data is None:
            headers = {"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found", "X-Repo-Commit": commit}
            return 404, headers, b""
        etag = f'"{hashlib.sha256(data).hexdigest()}"'
        headers = {
            "X-Repo-Commit": commit,
            "ETag": etag,
            "X-Linked-Etag": etag,
            "X-Linked-Size": str(len(data)),
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
        }
        return 200, headers, data


def _served_body(data: bytes, fault: Optional[str]) -> bytes:
    if fault == "wrong_bytes":
        return bytes(b ^ 0xFF for b in data)
    if fault == "truncated":
        return data[: len(data) // 2]
    return data


def _make_handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        def _answer(self, send_body: bool) -> None:
            hub.requests.append((self.command, self.path))
            status, headers, data = hub.resolve(self.path)
            body = _served_body(data, hub.fault) if send_body else data
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
            self._answer(send_body=False)

        def do_GET(self) -> None:  # noqa: N802
            self._answer(send_body=True)

        def log_message(self, *args) -> None:  # keep test output clean
            pass

    return Handler
