"""A Hugging Face Hub stand-in on 127.0.0.1 for the download and upload tests.

Downloads: it answers ``HEAD`` and ``GET /{repo_id}/resolve/{revision}/{filename}`` as the Hub's resolve
endpoint does for an LFS file: ``X-Repo-Commit`` (the commit the revision resolves to), ``ETag`` and
``X-Linked-Etag`` (the quoted sha256 of the file), ``X-Linked-Size`` and ``Content-Length``; errors
are 404s with the ``X-Error-Code`` that ``huggingface_hub`` turns into its exceptions. It sends no
Xet headers, so the client takes its plain HTTP path. ``fault`` makes it misbehave on ``GET``:
"wrong_bytes" sends other bytes of the right size, "truncated" sends the first half of the file.

Uploads, as ``HfApi.create_repo``, ``create_branch`` and ``create_commit`` call them with Xet off
(``huggingface_hub.constants.HF_HUB_DISABLE_XET``): repository creation (409 when it exists, with an
initial commit holding ``.gitattributes`` as the Hub makes), ``/api/validate-yaml`` for a README's front
matter, branch creation, pre-upload (``*.safetensors`` are LFS files, the rest regular), the LFS batch
endpoint with basic transfer to a ``PUT`` URL that checks the sha256, and the NDJSON commit (regular
files inline in base64, LFS files by sha256 of what was uploaded). With ``token`` set, writes need
``Authorization: Bearer TOKEN`` and are refused with 401 otherwise.
"""
from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import unquote

import yaml

def isolate_client(monkeypatch, tmp_path, token: str) -> None:
    """huggingface_hub's cache, token and settings under ``tmp_path``, with ``token`` as HF_TOKEN; its Xet
    upload path off, since the stand-in speaks the Hub's plain LFS protocol."""
    import huggingface_hub.constants

    for var in ("HF_HUB_OFFLINE", "QSNN_ZOO_WEIGHTS", "HF_HUB_CACHE", "HF_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("HF_TOKEN", token)


GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
Response = Tuple[int, Dict[str, str], bytes]


@dataclass
class Repo:
    commits: Dict[str, Dict[str, bytes]] = field(default_factory=dict)  # commit -> filename -> bytes
    branches: Dict[str, str] = field(default_factory=dict)  # branch -> commit
    messages: Dict[str, str] = field(default_factory=dict)  # commit -> summary


class FakeHub:
    """``with FakeHub() as hub: hub.commit(repo, {name: data})`` serves the files at ``hub.url``."""

    def __init__(self) -> None:
        self.repos: Dict[str, Repo] = {}
        self.lfs: Dict[str, bytes] = {}  # sha256 -> bytes uploaded through the LFS endpoint
        self.token: Optional[str] = None
        self.fault: Optional[str] = None
        self.requests: List[Tuple[str, str]] = []  # (method, path) in arrival order
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    def commit(self, repo_id: str, files: Dict[str, bytes], branch: str = "main", message: str = "",
               deleted: Tuple[str, ...] = ()) -> str:
        """A new commit on ``branch`` holding the branch's files updated with ``files``; returns its hash."""
        repo = self.repos.setdefault(repo_id, Repo())
        parent = repo.branches.get(branch)
        tree = dict(repo.commits[parent]) if parent else {}
        tree.update(files)
        for path in deleted:
            tree.pop(path, None)
        digest = hashlib.sha1(repr((repo_id, parent, message, sorted(tree.items()))).encode())
        commit = digest.hexdigest()
        repo.commits[commit] = tree
        repo.branches[branch] = commit
        repo.messages[commit] = message
        return commit

    def files(self, repo_id: str, revision: str = "main") -> Dict[str, bytes]:
        repo = self.repos[repo_id]
        return repo.commits[repo.branches.get(revision, revision)]

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


    # ------------------------------------------------------------ uploads

    def write(self, method: str, path: str, headers: Dict[str, str], body: bytes) -> Response:
        """Status, headers and body for a write request (see the module doc)."""
        parts = [unquote(p) for p in path.split("?", 1)[0].strip("/").split("/")]
        if method == "PUT" and parts[0] == "lfs-upload":  # a presigned storage URL on the Hub: no token
            return self._lfs_upload(parts[1], body)
        if self.token is not None and headers.get("authorization") != f"Bearer {self.token}":
            return _json(401, {"error": "Invalid credentials in Authorization header"}, {"X-Error-Message": "Invalid credentials"})
        if parts[:3] == ["api", "repos", "create"]:
            return self._create_repo(json.loads(body))
        if parts[:2] == ["api", "validate-yaml"]:
            return _validate_yaml(json.loads(body)["content"])
        if parts[2:] == ["info", "lfs", "objects", "batch"]:
            return self._lfs_batch(parts[0] + "/" + parts[1].removesuffix(".git"), json.loads(body))
        if len(parts) >= 6 and parts[:2] == ["api", "models"]:
            repo_id, action, revision = f"{parts[2]}/{parts[3]}", parts[4], "/".join(parts[5:])
            if repo_id not in self.repos:
                return _json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            handler = {"preupload": self._preupload, "commit": self._commit, "branch": self._create_branch}.get(action)
            if handler is not None:
                return handler(repo_id, revision, body)
        return _json(404, {"error": f"no route {method} {path}"})

    def _create_repo(self, payload: Dict[str, Any]) -> Response:
        repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
        if repo_id in self.repos:
            return _json(409, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"})
        self.commit(repo_id, {".gitattributes": GITATTRIBUTES}, message="initial commit")
        return _json(200, {"url": f"{self.url}/{repo_id}"})

    def _create_branch(self, repo_id: str, branch: str, body: bytes) -> Response:
        repo = self.repos[repo_id]
        if branch in repo.branches:
            return _json(409, {"error": f"branch {branch} already exists"})
        start = (json.loads(body) if body else {}).get("startingPoint") or "main"
        repo.branches[branch] = repo.branches.get(start, start)
        return _json(200, {})

    def _preupload(self, repo_id: str, revision: str, body: bytes) -> Response:
        files = [
            {"path": f["path"], "uploadMode": "lfs" if f["path"].endswith(".safetensors") else "regular",
             "shouldIgnore": False, "oid": None}
            for f in json.loads(body)["files"]
        ]
        return _json(200, {"files": files, "commitOid": self.repos[repo_id].branches.get(revision)})

    def _lfs_batch(self, repo_id: str, payload: Dict[str, Any]) -> Response:
        if repo_id not in self.repos:
            return _json(404, {"message": "Repository not found"})
        objects = []
        for obj in payload["objects"]:
            item = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.lfs:
                item["actions"] = {"upload": {"href": f"{self.url}/lfs-upload/{obj['oid']}"}}
            objects.append(item)
        return _json(200, {"transfer": "basic", "objects": objects})

    def _lfs_upload(self, oid: str, body: bytes) -> Response:
        if hashlib.sha256(body).hexdigest() != oid:
            return _json(400, {"error": "uploaded bytes do not have the announced sha256"})
        self.lfs[oid] = body
        return 200, {}, b""

    def _commit(self, repo_id: str, revision: str, body: bytes) -> Response:
        if revision not in self.repos[repo_id].branches:
            return _json(404, {"error": "Invalid rev id"}, {"X-Error-Code": "RevisionNotFound"})
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next(line["value"] for line in lines if line["key"] == "header")
        files: Dict[str, bytes] = {}
        deleted = []
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "lfsFile":
                data = self.lfs.get(value["oid"])
                if data is None or len(data) != value["size"]:
                    return _json(400, {"error": f"LFS object {value['oid']} of {value['path']} was not uploaded"})
                files[value["path"]] = data
            elif key == "deletedFile":
                deleted.append(value["path"])
        commit = self.commit(repo_id, files, branch=revision, message=header["summary"], deleted=tuple(deleted))
        return _json(200, {"commitUrl": f"{self.url}/{repo_id}/commit/{commit}", "commitOid": commit,
                           "pullRequestUrl": None})


def _json(status: int, data: Any, headers: Optional[Dict[str, str]] = None) -> Response:
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(data).encode()


def _validate_yaml(content: str) -> Response:
    """The Hub refuses a README whose front matter is not a YAML mapping."""
    if not content.startswith("---\n"):
        return _json(200, {"errors": [], "warnings": [{"message": "empty or missing yaml metadata"}]})
    try:
        meta = yaml.safe_load(content[4:].split("\n---", 1)[0])
    except yaml.YAMLError as err:
        return _json(400, {"errors": [{"message": f"invalid YAML: {err}"}]})
    if not isinstance(meta, dict):
        return _json(400, {"errors": [{"message": "metadata must be a mapping"}]})
    return _json(200, {"errors": [], "warnings": []})


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

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0], 16)
                    chunk = self.rfile.read(size + 2)[:size]  # each chunk ends in CRLF
                    if size == 0:
                        return b"".join(chunks)
                    chunks.append(chunk)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _write(self) -> None:
            body = self._body()
            hub.requests.append((self.command, self.path))
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, reply_headers, reply = hub.write(self.command, self.path, headers, body)
            self.send_response(status)
            for key, value in reply_headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        do_POST = do_PUT = _write  # noqa: N815

        def log_message(self, *args) -> None:  # keep test output clean
            pass

    return Handler
