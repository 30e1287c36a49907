"""A Hugging Face Hub-compatible HTTP server on 127.0.0.1, for tests (standard library only).

It implements the slice of the Hub API that `huggingface_hub` 2.4, `transformers`, `datasets` and
`peft` use to push and pull model and dataset repositories:

    GET  /api/whoami-v2                                        who the token belongs to
    POST /api/repos/create                                     create a repo, private or public (409 if it exists)
    POST /api/validate-yaml                                    README metadata check
    GET  /api/{models|datasets}/{repo}[/revision/{rev}]        repo info (sha, siblings)
    GET  /api/{type}s/{repo}/refs                              branches
    GET  /api/{type}s/{repo}/tree/{rev}[/{path}]               listing, `recursive=true|false`
    POST /api/{type}s/{repo}/paths-info/{rev}                  info of given paths
    POST /api/{type}s/{repo}/preupload/{rev}                   regular vs LFS upload mode
    POST /api/{type}s/{repo}/commit/{rev}                      NDJSON commit (file, lfsFile, deletes)
    POST /[datasets/]{repo}.git/info/lfs/objects/batch         LFS batch API ("basic" transfer)
    PUT  /lfs-upload/{sha256}                                  LFS object upload (checked against its oid)
    HEAD/GET /[datasets/]{repo}/resolve/{rev}/{path}           download, with byte ranges

Repositories live in memory as a chain of commits, each a full {path: file} snapshot. Errors carry
the Hub's `X-Error-Code` / `X-Error-Message` headers, so clients raise their usual exceptions; a download's 404 for a
file not in the revision carries its `X-Repo-Commit` too, as the Hub's does, from which huggingface_hub records the
file's absence in the cache (`.no_exist`, read by `try_to_load_from_cache`).

Tokens are users' (`HubState.users`: `CLIENT_TOKEN` is `USER`'s; `add_user` adds one). As on the Hub, an unknown
token is refused (401), a write (create, preupload, commit, LFS batch) needs a token (401 without one), and a
private repo is seen only with its owner's token (the user who created it): to anyone else every request about it
answers as for a missing repo, `RepoNotFound` (401 without a token, 404 with another user's; a missing repo answers
so too), which huggingface_hub raises as `RepositoryNotFoundError`. Who may write to a public repo is not checked.

For error-path tests, `require_token` makes every request without that bearer token fail with
401 (but those the Hub takes without one: `_TOKENLESS_HANDLERS`), and `fail_next(repo_id, status,
times)` makes the next requests touching a repo fail.

Xet storage is not implemented: clients must run with HF_HUB_DISABLE_XET=1.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from isolated import isolated_command

USER = "maple-tester"
CLIENT_TOKEN = "hf_maple_test_token"  # USER's token, the one `run_client` gives its children
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".parquet", ".arrow", ".png", ".jpg", ".jpeg", ".npy")
LFS_MIN_SIZE = 10 * 2**20  # the Hub's default threshold for LFS
LFS_POINTER_SIZE = 134  # length of a git-lfs pointer file, reported as `pointerSize`

_REPO = r"(?P<namespace>[\w.-]+)/(?P<name>[\w.-]+)"
_ROUTES = [  # (method, pattern, handler name); the first match wins
    ("GET", r"/api/whoami-v2", "whoami"),
    ("POST", r"/api/repos/create", "create_repo"),
    ("POST", r"/api/validate-yaml", "validate_yaml"),
    ("GET", rf"/api/(?P<type>model|dataset)s/{_REPO}(?:/revision/(?P<rev>[^/]+))?", "repo_info"),
    ("GET", rf"/api/(?P<type>model|dataset)s/{_REPO}/refs", "refs"),
    ("GET", rf"/api/(?P<type>model|dataset)s/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?", "tree"),
    ("POST", rf"/api/(?P<type>model|dataset)s/{_REPO}/paths-info/(?P<rev>[^/]+)", "paths_info"),
    ("POST", rf"/api/(?P<type>model|dataset)s/{_REPO}/preupload/(?P<rev>[^/]+)", "preupload"),
    ("POST", rf"/api/(?P<type>model|dataset)s/{_REPO}/commit/(?P<rev>[^/]+)", "commit"),
    ("POST", rf"/(?:(?P<type>dataset)s/)?{_REPO}\.git/info/lfs/objects/batch", "lfs_batch"),
    ("PUT", r"/lfs-upload/(?P<oid>[0-9a-f]{64})", "lfs_upload"),
    ("GET", rf"/(?:(?P<type>dataset)s/)?{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
    ("HEAD", rf"/(?:(?P<type>dataset)s/)?{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
]
# Requests the Hub takes without a token, and clients send without one: the metadata check (`RepoCard.validate`), and
# LFS uploads, to the URLs the Hub presigns.
_TOKENLESS_HANDLERS = {"validate_yaml", "lfs_upload"}
# Requests that write, which the Hub refuses without a token
_WRITE_HANDLERS = {"create_repo", "preupload", "commit", "lfs_batch"}


class HubError(Exception):
    """An error answer: HTTP status plus the Hub's X-Error-Code header, and any other headers the Hub sends with it."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None, **body):
        super().__init__(message)
        self.status, self.message, self.code, self.headers, self.body = status, message, code, headers or {}, body


@dataclass(frozen=True)
class StoredFile:
    content: bytes
    lfs: bool

    @property
    def git_oid(self) -> str:
        """The git blob id (sha1 of "blob <size>\\0" + content)."""
        return hashlib.sha1(b"blob %d\0" % len(self.content) + self.content).hexdigest()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    def entry(self, path: str) -> dict:
        """The file's entry in tree and paths-info answers."""
        entry = {"type": "file", "path": path, "oid": self.git_oid, "size": len(self.content)}
        if self.lfs:
            entry["lfs"] = {"oid": self.sha256, "size": len(self.content), "pointerSize": LFS_POINTER_SIZE}
        return entry


@dataclass
class Repo:
    repo_type: str  # "model" | "dataset"
    repo_id: str
    commits: dict[str, dict[str, StoredFile]] = field(default_factory=dict)  # sha -> snapshot
    main: str = ""  # sha of the head of the only branch
    private: bool = False  # as created
    owner: str = USER  # the user who created it: the only one who sees it when private
    summaries: list[str] = field(default_factory=list)  # the commit messages, oldest first

    def snapshot(self, revision: str) -> tuple[str, dict[str, StoredFile]]:
        sha = self.main if revision == "main" else revision
        if sha not in self.commits:
            raise HubError(404, f"Invalid rev id: {revision} in {self.repo_type} repo {self.repo_id}", "RevisionNotFound")
        return sha, self.commits[sha]

    def add_commit(self, files: dict[str, StoredFile], summary: str) -> str:
        manifest = json.dumps([self.main, summary, sorted((p, f.git_oid) for p, f in files.items())])
        sha = hashlib.sha1(manifest.encode()).hexdigest()
        self.commits[sha], self.main = files, sha
        self.summaries.append(summary)
        return sha


class HubState:
    """Everything the server stores; all access under one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.required_token: str | None = None
        self.users: dict[str, str] = {CLIENT_TOKEN: USER}  # token -> user name
        self.pending_failures: dict[str, list[int]] = {}  # repo_id -> statuses of its next requests

    def repo(self, repo_type: str, repo_id: str) -> Repo:
        try:
            return self.repos[(repo_type, repo_id)]
        except KeyError:
            raise HubError(404, f"{repo_type.capitalize()} repo {repo_id} not found", "RepoNotFound") from None


class HubRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the clients expect
    server: "HubServer"

    def log_message(self, format: str, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    # -- plumbing -------------------------------------------------------------------------------
    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        self.query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        self.body = self._read_body()
        state = self.server.state
        try:
            for route_method, pattern, handler in _ROUTES:
                match = re.fullmatch(pattern, url.path) if route_method == method else None
                if match:
                    self.params = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                    self._check_access(state, handler)
                    with state.lock:
                        getattr(self, f"handle_{handler}")(state)
                    return
            raise HubError(404, f"no route for {method} {url.path}")
        except HubError as error:
            self._send_error(error)
        except Exception as error:  # a server bug: answer 500 with the cause rather than drop the connection
            self._send_error(HubError(500, f"hub_server failed on {method} {url.path}: {error!r}"))

    def _send_error(self, error: HubError) -> None:
        body = json.dumps({"error": error.message, **error.body}).encode()
        headers = {"X-Error-Message": error.message, **({"X-Error-Code": error.code} if error.code else {}), **error.headers}
        self._send(error.status, body, "application/json", headers)

    def _check_access(self, state: HubState, handler: str) -> None:
        """Sets `self.user` (None: no token); refuses a token that is not required or not known, and a write without
        one."""
        authorization = self.headers.get("Authorization")
        if (state.required_token and handler not in _TOKENLESS_HANDLERS
                and authorization != f"Bearer {state.required_token}"):
            raise HubError(401, "Invalid credentials in Authorization header")
        token = authorization.removeprefix("Bearer ") if authorization and authorization.startswith("Bearer ") else None
        with state.lock:
            self.user = state.users.get(token) if token else None
        if token and self.user is None and handler not in _TOKENLESS_HANDLERS:
            raise HubError(401, "Invalid credentials in Authorization header")
        if self.user is None and handler in _WRITE_HANDLERS:
            raise HubError(401, "Invalid username or password.")
        repo_id = f"{self.params['namespace']}/{self.params['name']}" if "name" in self.params else None
        with state.lock:
            failures = state.pending_failures.get(repo_id) if repo_id else None
            status = failures.pop() if failures else None
        if status is not None:
            raise HubError(status, f"Injected failure {status} for repo {repo_id}")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, payload, status: int = 200) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def _repo(self, state: HubState) -> Repo:
        """The repo the request names, if its user may see it: a private repo is, to anyone but its owner, missing."""
        try:
            repo = state.repo(self.params.get("type") or "model", f"{self.params['namespace']}/{self.params['name']}")
        except HubError:
            if self.user is None:  # the Hub answers a request without a token alike for a missing and a private repo
                raise HubError(401, "Repository not found", "RepoNotFound") from None
            raise
        if repo.private and self.user != repo.owner:
            # as the Hub answers: 401 without a token, 404 with a token that does not see it
            raise HubError(401 if self.user is None else 404, "Repository not found", "RepoNotFound")
        return repo

    def _repo_url(self, repo: Repo) -> str:
        prefix = "datasets/" if repo.repo_type == "dataset" else ""
        return f"{self.server.url}/{prefix}{repo.repo_id}"

    # -- account and repos ----------------------------------------------------------------------
    def handle_whoami(self, state: HubState) -> None:
        if self.user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        self._json({"type": "user", "name": self.user, "orgs": [], "auth": {"accessToken": {"role": "write"}}})

    def handle_create_repo(self, state: HubState) -> None:
        payload = json.loads(self.body)
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or self.user}/{payload['name']}"
        if (repo_type, repo_id) in state.repos:
            existing = state.repos[(repo_type, repo_id)]
            raise HubError(409, f"You already created this {repo_type} repo: {repo_id}", url=self._repo_url(existing))
        private = payload.get("visibility") == "private" or bool(payload.get("private"))  # older clients send `private`
        repo = state.repos[(repo_type, repo_id)] = Repo(repo_type, repo_id, private=private, owner=self.user)
        repo.add_commit({}, "initial commit")
        self._json({"url": self._repo_url(repo), "name": repo_id})

    def handle_validate_yaml(self, state: HubState) -> None:
        self._json({"errors": [], "warnings": []})

    def handle_repo_info(self, state: HubState) -> None:
        repo = self._repo(state)
        sha, files = repo.snapshot(self.params.get("rev", "main"))
        self._json(
            {
                "id": repo.repo_id,
                "_id": sha[:24],
                "sha": sha,
                "private": repo.private,
                "disabled": False,
                "gated": False,
                "lastModified": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                "tags": _card_tags(files.get("README.md")),
                "siblings": [{"rfilename": path, "size": len(f.content)} for path, f in sorted(files.items())],
            }
        )

    def handle_refs(self, state: HubState) -> None:
        repo = self._repo(state)
        self._json({"branches": [{"name": "main", "ref": "refs/heads/main", "targetCommit": repo.main}], "tags": [], "converts": []})

    # -- listing --------------------------------------------------------------------------------
    def _entries(self, files: dict[str, StoredFile], paths: list[str]) -> list[dict]:
        """Entries of the given paths that exist, as files or directories."""
        entries = []
        for path in paths:
            path = path.strip("/")
            if path in files:
                entries.append(files[path].entry(path))
            elif any(p.startswith(path + "/") for p in files):
                entries.append({"type": "directory", "path": path, "oid": hashlib.sha1(path.encode()).hexdigest(), "size": 0})
        return entries

    def handle_tree(self, state: HubState) -> None:
        repo = self._repo(state)
        _, files = repo.snapshot(self.params["rev"])
        root = self.params.get("path", "").strip("/")
        prefix = root + "/" if root else ""
        if root and root not in files and not any(p.startswith(prefix) for p in files):
            raise HubError(404, f"{root} does not exist in {repo.repo_type} repo {repo.repo_id}", "EntryNotFound")
        below = [p[len(prefix) :] for p in files if p.startswith(prefix)]
        if self.query.get("recursive", "false").lower() == "true":
            directories = {"/".join(p.split("/")[:i]) for p in below for i in range(1, p.count("/") + 1)}
            children = sorted(directories | set(below))
        else:
            children = sorted({p.split("/")[0] for p in below})
        self._json(self._entries(files, [prefix + child for child in children]))

    def handle_paths_info(self, state: HubState) -> None:
        repo = self._repo(state)
        _, files = repo.snapshot(self.params["rev"])
        if self.headers.get("Content-Type", "").startswith("application/json"):
            paths = json.loads(self.body)["paths"]
        else:
            paths = parse_qs(self.body.decode()).get("paths", [])
        self._json(self._entries(files, paths))

    # -- upload -----------------------------------------------------------------------------------
    def handle_preupload(self, state: HubState) -> None:
        repo = self._repo(state)
        _, files = repo.snapshot(self.params["rev"])
        answers = []
        for file in json.loads(self.body)["files"]:
            lfs = file["path"].lower().endswith(LFS_SUFFIXES) or file["size"] >= LFS_MIN_SIZE
            existing = files.get(file["path"])
            answers.append(
                {
                    "path": file["path"],
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": False,
                    "oid": existing.git_oid if existing else None,
                }
            )
        self._json({"files": answers})

    def handle_lfs_batch(self, state: HubState) -> None:
        self._repo(state)  # 404 for unknown repos
        objects = []
        for obj in json.loads(self.body)["objects"]:
            answer = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in state.lfs_objects:
                answer["actions"] = {"upload": {"href": f"{self.server.url}/lfs-upload/{obj['oid']}"}}
            objects.append(answer)
        self._json({"transfer": "basic", "objects": objects}, status=200)

    def handle_lfs_upload(self, state: HubState) -> None:
        oid = self.params["oid"]
        if hashlib.sha256(self.body).hexdigest() != oid:
            raise HubError(400, f"LFS object content does not match its oid {oid}")
        state.lfs_objects[oid] = self.body
        self._send(200, b"", "text/plain")

    def handle_commit(self, state: HubState) -> None:
        repo = self._repo(state)
        _, files = repo.snapshot(self.params["rev"])
        files = dict(files)
        summary = ""
        for line in self.body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                summary = value.get("summary", "")
            elif key == "file":
                files[value["path"]] = StoredFile(base64.b64decode(value["content"]), lfs=False)
            elif key == "lfsFile":
                if value["oid"] not in state.lfs_objects:
                    raise HubError(422, f"LFS object {value['oid']} for {value['path']} was never uploaded")
                files[value["path"]] = StoredFile(state.lfs_objects[value["oid"]], lfs=True)
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                folder = value["path"].rstrip("/") + "/"
                files = {p: f for p, f in files.items() if not p.startswith(folder)}
            else:
                raise HubError(400, f"unsupported commit operation {key!r}")
        sha = repo.add_commit(files, summary)
        self._json({"success": True, "commitOid": sha, "commitUrl": f"{self._repo_url(repo)}/commit/{sha}", "pullRequestUrl": None})

    # -- download ---------------------------------------------------------------------------------
    def handle_resolve(self, state: HubState) -> None:
        repo = self._repo(state)
        sha, files = repo.snapshot(self.params["rev"])
        path = self.params["path"]
        if path not in files:
            raise HubError(404, f"Entry {path} not found in {repo.repo_type} repo {repo.repo_id}", "EntryNotFound",
                           headers={"X-Repo-Commit": sha})
        stored = files[path]
        etag = stored.sha256 if stored.lfs else stored.git_oid
        headers = {"X-Repo-Commit": sha, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        if stored.lfs:
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(stored.content))})
        content, status = stored.content, 200
        byte_range = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        if byte_range and content:
            first, last = byte_range.groups()
            start = int(first) if first else max(len(content) - int(last), 0)
            end = int(last) if first and last else len(content) - 1
            headers["Content-Range"] = f"bytes {start}-{min(end, len(content) - 1)}/{len(content)}"
            content, status = content[start : end + 1], 206
        self._send(status, content, "application/octet-stream", headers)


class HubServer(ThreadingHTTPServer):
    """The server; `start()` serves on 127.0.0.1 at a free port in a daemon thread."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), HubRequestHandler)
        self.state = HubState()
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self._thread = threading.Thread(target=self.serve_forever, name="hub-server", daemon=True)

    def start(self) -> "HubServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join()

    def require_token(self, token: str | None) -> None:
        """Answer 401 to every request without `Authorization: Bearer <token>` (None: accept all)."""
        self.state.required_token = token

    def add_user(self, token: str, name: str) -> None:
        """A user whose requests carry `token` (`CLIENT_TOKEN` is `USER`'s)."""
        with self.state.lock:
            self.state.users[token] = name

    def fail_next(self, repo_id: str, status: int, times: int = 1) -> None:
        """Answer `status` to the next `times` requests that touch `repo_id`."""
        with self.state.lock:
            self.state.pending_failures[repo_id] = [status] * times

    def files(self, repo_id: str, repo_type: str = "model") -> dict[str, bytes]:
        """The files at the head of a repo (for assertions)."""
        with self.state.lock:
            repo = self.state.repo(repo_type, repo_id)
            return {path: f.content for path, f in repo.commits[repo.main].items()}


REPO_ROOT = Path(__file__).resolve().parents[1]


def run_client(server: HubServer, workdir: Path, code: str, isolated: bool = False, expect_failure: bool = False, **env: str) -> str:
    """Run Python `code` in a child process whose Hub is `server`; return its stdout (its stderr
    when `expect_failure`). A child that fails unexpectedly (or succeeds unexpectedly) fails the test.

    HF_* variables are read when huggingface_hub is imported, hence a child. Each call gets its own
    HF_HOME under `workdir`, so loading processes download everything afresh. `isolated=True` runs
    `python -I -S` with only the interpreter's site-packages on sys.path and no .pth file processed:
    neither this working tree nor its editable install is importable, as for a user who has only
    transformers and the Hub. Otherwise the working tree is on PYTHONPATH.
    """
    home = Path(workdir) / f"hf_home_{len(list(Path(workdir).glob('hf_home_*')))}"
    child_env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "PYTHON"))}
    child_env |= {
        "HF_ENDPOINT": server.url,
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_TOKEN": CLIENT_TOKEN,
        "HF_HOME": str(home),
        "OMP_NUM_THREADS": "1",
    } | env
    if isolated:
        command = isolated_command(code)
    else:
        child_env["PYTHONPATH"] = str(REPO_ROOT)
        command = [sys.executable, "-c", textwrap.dedent(code)]
    result = subprocess.run(command, env=child_env, cwd=workdir, capture_output=True, text=True, timeout=300)
    if expect_failure:
        assert result.returncode != 0, f"client unexpectedly succeeded:\n{result.stdout}"
        return result.stderr
    assert result.returncode == 0, f"client failed ({result.returncode}):\n{result.stderr[-6000:]}"
    return result.stdout


def files_holding(root: Path, text: str) -> list[Path]:
    """The files under `root` whose bytes hold `text` (a token that must be written nowhere)."""
    return [path for path in Path(root).rglob("*") if path.is_file() and text.encode() in path.read_bytes()]


def _card_tags(card: StoredFile | None) -> list[str]:
    """The tags the Hub derives from a card's metadata: here only `license:<id>`."""
    if card is None:
        return []
    match = re.match(r"---\n(.*?)\n---", card.content.decode(errors="replace"), re.S)
    license = match and re.search(r"^license:\s*(\S+)\s*$", match.group(1), re.M)
    return [f"license:{license.group(1)}"] if license else []

