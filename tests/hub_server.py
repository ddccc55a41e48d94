"""A minimal fake Hugging Face Hub on 127.0.0.1, enough for `HfApi.create_repo` + `HfApi.upload_folder`.

huggingface_hub 2.4 makes exactly four kinds of request for that (read from its `hf_api.py`, `_commit_api.py`
and `_upload_pipeline.py`):

* ``POST /api/repos/create``                  JSON {"name", "organization", "visibility"?} -> {"url"}; 409 if it exists
* ``POST /api/validate-yaml``                 JSON {"content", "repoType"} -> {"errors": [], "warnings": []}
* ``POST /api/models/{ns}/{name}/preupload/{revision}``  JSON {"files": [{"path", "sample", "size"}]}
                                              -> {"files": [{"path", "uploadMode", "shouldIgnore"}]}
* ``POST /api/models/{ns}/{name}/commit/{revision}``     NDJSON: a "header" line, then one "file" line per file
                                              with base64 content -> {"commitUrl", "commitOid"}

Preupload answers ``uploadMode: "regular"`` for every file, so file contents arrive inline in the commit and
neither LFS nor Xet storage is involved. Everything else is answered 404 and recorded, so tests can assert that
nothing unexpected was asked. The server binds 127.0.0.1 on a free port, runs in a daemon thread, and stops
with `stop()` (or on leaving its `with` block).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import yaml

ROUTES = {
    "create_repo": re.compile(r"^/api/repos/create$"),
    "validate_yaml": re.compile(r"^/api/validate-yaml$"),
    "preupload": re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/preupload/(?P<revision>[^/]+)$"),
    "commit": re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/commit/(?P<revision>[^/]+)$"),
}
# Bounds: one request body, and how long a connection may sit idle, so a stuck client cannot hang a test.
MAX_BODY_BYTES = 256 * 1024 * 1024
SOCKET_TIMEOUT_S = 10


@dataclass
class ReceivedRequest:
    method: str
    path: str
    query: str
    route: str | None  # a key of ROUTES, or None for anything the fake does not know
    headers: dict[str, str]
    body: bytes
    status: int = 0  # what the fake answered


@dataclass
class FakeRepo:
    repo_id: str
    visibility: str | None
    files: dict[str, dict[str, bytes]] = field(default_factory=dict)  # revision -> path -> content
    commits: list[dict] = field(default_factory=list)


class FakeHub:
    """Records every request; stores committed files per repo and revision; can be told to fail."""

    def __init__(self) -> None:
        self.requests: list[ReceivedRequest] = []
        self.repos: dict[str, FakeRepo] = {}
        self._fail_status: int | None = None
        self._fail_routes: set[str] | None = None
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            fake_hub = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-hub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeHub is not running: call start() or use it as a context manager")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- test controls -----------------------------------------------------------------------------------

    def fail(self, status: int = 500, routes: set[str] | None = None) -> None:
        """Answer `status` to the given routes (all routes when None) from now on."""
        unknown = set(routes or ()) - set(ROUTES)
        if unknown:
            raise ValueError(f"unknown routes {sorted(unknown)}; expected some of {sorted(ROUTES)}")
        with self._lock:
            self._fail_status = status
            self._fail_routes = set(routes) if routes is not None else None

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        with self._lock:
            return dict(self.repos[repo_id].files.get(revision, {}))

    def write_files(self, repo_id: str, destination: Path, revision: str = "main") -> Path:
        """Write what the repo holds at `revision` into `destination`, as a download would."""
        for name, content in self.files(repo_id, revision).items():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        return destination

    def routes_seen(self) -> list[str | None]:
        with self._lock:
            return [request.route for request in self.requests]

    # -- request handling (called from server threads) ---------------------------------------------------

    def handle(self, request: ReceivedRequest) -> tuple[int, dict]:
        with self._lock:
            self.requests.append(request)
            if self._fail_status is not None and (self._fail_routes is None or request.route in self._fail_routes):
                return self._fail_status, {"error": f"fake Hub told to answer {self._fail_status}"}
            if request.method != "POST" or request.route is None:
                return 404, {"error": f"fake Hub has no route for {request.method} {request.path}"}
            match = ROUTES[request.route].match(request.path)
            try:
                payload = json.loads(request.body) if request.route != "commit" else None
            except ValueError as err:
                return 400, {"error": f"body is not JSON: {err}"}
            if request.route == "create_repo":
                return self._create_repo(payload, request)
            if request.route == "validate_yaml":
                return self._validate_yaml(payload)
            repo_id = unquote(match["repo"])
            if repo_id not in self.repos:
                return 404, {"error": f"Repository {repo_id} not found"}
            revision = unquote(match["revision"])
            if request.route == "preupload":
                return self._preupload(payload)
            return self._commit(self.repos[repo_id], revision, request.body)

    def _create_repo(self, payload: dict, request: ReceivedRequest) -> tuple[int, dict]:
        # Without an organization the real Hub uses the token's user; the fake has one user, "user".
        repo_id = f"{payload.get('organization') or 'user'}/{payload['name']}"
        url = f"http://{request.headers.get('host', '127.0.0.1')}/{repo_id}"
        if repo_id in self.repos:
            return 409, {"error": "You already created this model repo", "url": url}
        self.repos[repo_id] = FakeRepo(repo_id=repo_id, visibility=payload.get("visibility"))
        return 200, {"url": url, "name": repo_id}

    @staticmethod
    def _validate_yaml(payload: dict) -> tuple[int, dict]:
        content = payload.get("content", "")
        front = re.match(r"^---\n(.*?)\n---\n", content, flags=re.DOTALL)
        if front is None:
            return 200, {"errors": [], "warnings": [{"message": "empty or missing yaml metadata"}]}
        try:
            metadata = yaml.safe_load(front.group(1))
        except yaml.YAMLError as err:
            return 400, {"errors": [{"message": f"invalid YAML: {err}"}]}
        if not isinstance(metadata, dict):
            return 400, {"errors": [{"message": "metadata must be a YAML mapping"}]}
        return 200, {"errors": [], "warnings": []}

    @staticmethod
    def _preupload(payload: dict) -> tuple[int, dict]:
        files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in payload["files"]]
        return 200, {"files": files, "commitOid": None}

    def _commit(self, repo: FakeRepo, revision: str, body: bytes) -> tuple[int, dict]:
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            return 400, {"error": "commit payload must start with a header line"}
        tree = dict(repo.files.get(revision, {}))
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value", {})
            if key == "file" and value.get("encoding") == "base64":
                tree[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                tree.pop(value["path"], None)
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                tree = {path: data for path, data in tree.items() if not path.startswith(prefix)}
            else:
                # lfsFile would need an LFS/Xet store; the fake never asks for one (preupload says "regular").
                return 400, {"error": f"fake Hub does not support commit entries of kind {key!r}"}
        repo.files[revision] = tree
        oid = hashlib.sha1(body).hexdigest()
        repo.commits.append({"revision": revision, "oid": oid, "summary": lines[0]["value"].get("summary")})
        return 200, {"commitUrl": f"{self.url}/{repo.repo_id}/commit/{oid}", "commitOid": oid}


class _Handler(BaseHTTPRequestHandler):
    fake_hub: FakeHub
    timeout = SOCKET_TIMEOUT_S

    def _serve(self) -> None:
        parts = urlsplit(self.path)
        body = self._read_body()
        if body is None:
            self._reply(413, {"error": f"body larger than {MAX_BODY_BYTES} bytes"})
            return
        route = next((name for name, pattern in ROUTES.items() if pattern.match(parts.path)), None)
        request = ReceivedRequest(
            method=self.command,
            path=parts.path,
            query=parts.query,
            route=route,
            headers={key.lower(): value for key, value in self.headers.items()},
            body=body,
        )
        status, payload = self.fake_hub.handle(request)
        request.status = status
        self._reply(status, payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _serve

    def _read_body(self) -> bytes | None:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            chunks, total = [], 0
            while (size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)) > 0:
                total += size
                if total > MAX_BODY_BYTES:
                    return None
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # the CRLF after each chunk
            self.rfile.readline()  # the final CRLF
            return b"".join(chunks)
        length = int(self.headers.get("content-length") or 0)
        if length > MAX_BODY_BYTES:
            return None
        return self.rfile.read(length)

    def _reply(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 404 and "not found" in payload.get("error", ""):
            # huggingface_hub turns this into RepositoryNotFoundError, as with the real Hub.
            self.send_header("X-Error-Code", "RepoNotFound")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the stdlib's signature
        pass  # requests are recorded in FakeHub.requests; keep test output clean


def loopback_only_client():
    """A huggingface_hub HTTP client that refuses any host but the loopback, with bounded timeouts.

    Install it with `huggingface_hub.set_client_factory(loopback_only_client)` so that a test that would reach
    huggingface.co (or anywhere else) fails loudly instead of sending the request.
    """
    import httpx2
    from huggingface_hub.utils._http import default_client_factory

    def refuse_non_loopback(request) -> None:
        if request.url.host not in ("127.0.0.1", "localhost", "::1"):
            raise RuntimeError(f"test tried to reach {request.url}: only the local fake Hub (127.0.0.1) is allowed")

    client = default_client_factory()
    hooks = client.event_hooks
    client.event_hooks = {"request": [refuse_non_loopback, *hooks["request"]], "response": hooks["response"]}
    client.timeout = httpx2.Timeout(30.0)
    return client
