"""A small Hugging Face Hub double on 127.0.0.1, speaking exactly what huggingface_hub 2.x asks.

The real huggingface_hub client code runs against it (`endpoint=` / `HF_ENDPOINT`); only the
server is fake. Endpoints, as read from huggingface_hub 2.4.0 (`hf_api.py`, `file_download.py`,
`utils/_http.py`, `utils/_pagination.py`):

- `GET /api/models/{repo}/revision/{rev}` → `{"id", "sha", "gated", "private", "siblings"}`;
  a missing repo is 404 `X-Error-Code: RepoNotFound`, a missing revision 404 `RevisionNotFound`.
- `GET /api/models/{repo}/tree/{rev}?recursive=true` → file entries with `type`, `oid` (git blob
  sha1), `size`, `path` and, for LFS files, `lfs: {oid: sha256, size, pointerSize}`; paginated
  with a GitHub-style `Link: <…>; rel="next"` header (`page_size` entries a page).
- `HEAD|GET /{repo}/resolve/{rev}/{path}` → `X-Repo-Commit`, `ETag` (the blob oid, or the sha256
  for LFS files with `X-Linked-Etag`/`X-Linked-Size` too), `Content-Length`, `Accept-Ranges`;
  `Range: bytes=N-` or `bytes=N-M` answers 206 with `Content-Range`. No `X-Xet-*` header unless
  a file was marked with `xet_backed` (then `X-Xet-Hash` and `X-Xet-Refresh-Route`, as the Hub
  sends for a Xet-stored file; there is no CAS server behind them). Gated repos answer 401 (no
  token) or 403 (a token without access) with
  `X-Error-Code: GatedRepo`; a missing file is 404 `EntryNotFound`.

With `lfs_redirect=True`, LFS files are answered as the real Hub does: `/resolve/` gives a 302 to a
signed "CDN" URL on another host (a second listener on 127.0.0.2) carrying `X-Linked-Size`,
`X-Linked-Etag` and `X-Repo-Commit`; the CDN serves the bytes (with Range) and must never see the
token.

Faults are armed per file: `cut_once` sends the headers for the whole file, part of the body,
then drops the connection; `fail_after_cut` also answers the follow-up request with
503 (so the client gives up and the *next run* must resume); `corrupt_once` serves the right
length with one byte flipped (`times` GETs in a row). Every request is recorded with its headers.

`rate_bytes_per_second` caps each connection's body bandwidth (a token bucket per connection), as a
CDN caps each of its streams: what makes several connections at once faster than one.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import parse_qs, quote, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".model", ".gguf")


def safetensors_bytes(tensors: Mapping[str, tuple[str, tuple[int, ...], bytes]]) -> bytes:
    """A valid safetensors file: 8-byte little-endian header length, JSON header, raw data.

    `tensors` maps a name to (dtype such as "F32", shape, raw little-endian bytes).
    """
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the format pads the header to 8 bytes
    return struct.pack("<Q", len(encoded)) + encoded + b"".join(d for _, _, d in tensors.values())


def tiny_model_files(weight_bytes: int = 3 * 1024 * 1024, seed: int = 1) -> dict[str, bytes]:
    """A small but real repo: one F32 safetensors tensor, config and tokenizer files."""
    count = weight_bytes // 4
    block = hashlib.sha256(str(seed).encode()).digest()
    raw = (block * (count * 4 // len(block) + 1))[: count * 4]
    return {
        "model.safetensors": safetensors_bytes({"lm_head.weight": ("F32", (count,), raw)}),
        "config.json": json.dumps(
            {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}
        ).encode(),
        "generation_config.json": b'{"do_sample": true}',
        "tokenizer.json": json.dumps({"version": "1.0", "model": {"type": "BPE"}}).encode(),
        "tokenizer_config.json": b'{"chat_template": "{{ messages }}"}',
        "special_tokens_map.json": b'{"eos_token": "</s>"}',
        "README.md": b"# tiny\n",
        "pytorch_model.bin": b"\0" * 4096,  # must never be fetched when safetensors exist
    }


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class HubRepo:
    repo_id: str
    files: dict[str, bytes]
    sha: str
    refs: dict[str, str]
    gated: bool = False
    allowed_tokens: frozenset[str] = frozenset()

    _digests: dict[str, tuple[str, str]] = field(default_factory=dict)

    def is_lfs(self, path: str) -> bool:
        return path.endswith(LFS_SUFFIXES)

    def digests(self, path: str) -> tuple[str, str]:
        """(git blob oid, sha256) of a file, computed once: a benchmark's files are GiBs."""
        if path not in self._digests:
            data = self.files[path]
            self._digests[path] = (git_blob_oid(data), hashlib.sha256(data).hexdigest())
        return self._digests[path]


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased: HTTP header names are case-insensitive

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class _Faults:
    cut: dict[str, int] = field(default_factory=dict)  # path → bytes sent before the drop
    fail_next: set[str] = field(default_factory=set)  # path → next GET answers 503
    fail_after_cut: set[str] = field(default_factory=set)
    corrupt: dict[str, int] = field(default_factory=dict)  # path → how many more GETs


class HubDouble:
    """The server: add repos, arm faults, read `requests` afterwards."""

    def __init__(
        self,
        page_size: int = 3,
        *,
        lfs_redirect: bool = False,
        rate_bytes_per_second: int | None = None,
    ) -> None:
        self.page_size = page_size
        self.lfs_redirect = lfs_redirect
        self.rate_bytes_per_second = rate_bytes_per_second
        self.xet_backed: set[tuple[str, str]] = set()  # (repo, path) the Hub says are Xet-stored
        self._cdn_gets_left: int | None = None
        self.repos: dict[str, HubRepo] = {}
        self.requests: list[RequestRecord] = []
        self._faults = _Faults()
        self._lock = threading.Lock()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._cdn: http.server.ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []

    # --- setup --------------------------------------------------------------------------------

    def add_repo(
        self,
        repo_id: str,
        files: Mapping[str, bytes],
        *,
        revision: str = "main",
        gated: bool = False,
        allowed_tokens: frozenset[str] = frozenset(),
    ) -> HubRepo:
        digest = hashlib.sha1(repo_id.encode())
        for name in sorted(files):
            digest.update(name.encode() + b"\0" + files[name])
        sha = digest.hexdigest()
        repo = HubRepo(repo_id, dict(files), sha, {revision: sha}, gated, allowed_tokens)
        self.repos[repo_id] = repo
        return repo

    def cut_once(self, path: str, after_bytes: int) -> None:
        with self._lock:
            self._faults.cut[path] = after_bytes

    def fail_after_cut(self, path: str, after_bytes: int) -> None:
        with self._lock:
            self._faults.cut[path] = after_bytes
            self._faults.fail_after_cut.add(path)

    def expire_cdn_urls(self, after_gets: int) -> None:
        """The CDN answers 403 "expired" to every GET after the next `after_gets`, until a new
        signed URL is handed out by `/resolve/` (as a real signed URL's lifetime ends)."""
        with self._lock:
            self._cdn_gets_left = after_gets

    def _take_expiry(self) -> bool:
        with self._lock:
            if self._cdn_gets_left is None:
                return False
            if self._cdn_gets_left == 0:
                return True
            self._cdn_gets_left -= 1
            return False

    def _renew_cdn_urls(self) -> None:
        with self._lock:
            if self._cdn_gets_left == 0:  # only once expired: a new URL lives on
                self._cdn_gets_left = None

    def mark_xet_backed(self, repo_id: str, path: str) -> None:
        self.xet_backed.add((repo_id, path))

    def corrupt_once(self, path: str, times: int = 1) -> None:
        with self._lock:
            self._faults.corrupt[path] = times

    def requests_for(self, path_suffix: str, method: str = "GET") -> list[RequestRecord]:
        with self._lock:
            return [r for r in self.requests if r.method == method and r.path.endswith(path_suffix)]

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def cdn_url(self) -> str:
        assert self._cdn is not None
        host, port = self._cdn.server_address[:2]
        return f"http://{host!s}:{port}"

    # --- lifecycle ----------------------------------------------------------------------------

    @contextmanager
    def running(self) -> Iterator[HubDouble]:
        double = self

        class Handler(_Handler):
            hub = double

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._cdn = http.server.ThreadingHTTPServer(("127.0.0.2", 0), Handler)
        servers = (self._server, self._cdn)
        for server in servers:
            server.daemon_threads = True
            thread = threading.Thread(target=server.serve_forever, daemon=True)
            thread.start()
            self._threads.append(thread)
        try:
            yield self
        finally:
            for server in servers:
                server.shutdown()
                server.server_close()
            for thread in self._threads:
                thread.join(timeout=5)
            self._threads.clear()

    # --- used by the handler ------------------------------------------------------------------

    def _record(self, method: str, path: str, headers: Mapping[str, str]) -> None:
        with self._lock:
            self.requests.append(
                RequestRecord(method, path, {k.lower(): v for k, v in headers.items()})
            )

    def _take_fault(self, path: str) -> tuple[int | None, bool, bool]:
        """(cut after N bytes, answer 503, corrupt) for this GET, each firing once."""
        with self._lock:
            if path in self._faults.fail_next:
                self._faults.fail_next.discard(path)
                return None, True, False
            cut = self._faults.cut.pop(path, None)
            if cut is not None and path in self._faults.fail_after_cut:
                self._faults.fail_after_cut.discard(path)
                self._faults.fail_next.add(path)
            left = self._faults.corrupt.get(path, 0)
            if left:
                self._faults.corrupt[path] = left - 1
            return cut, False, left > 0


_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_CDN = re.compile(r"^/cdn/(?P<repo>[^/]+/[^/]+)/(?P<sha>[^/]+)/(?P<path>.+)$")
_XET_TOKEN = re.compile(r"^/api/models/[^/]+/[^/]+/xet-read-token/[^/]+$")
_API = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/(?P<kind>revision|tree)/(?P<rev>[^/?]+)$")


class _Handler(http.server.BaseHTTPRequestHandler):
    hub: HubDouble
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        """Silent: the tests read `hub.requests` instead."""

    def handle(self) -> None:
        # A client that drops its keep-alive connection (or a cancelled download) is normal here.
        with contextlib.suppress(ConnectionError):
            super().handle()

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def _dispatch(self, *, head: bool) -> None:
        url = urlsplit(self.path)
        self.hub._record(self.command, unquote(url.path), dict(self.headers.items()))
        if match := _XET_TOKEN.match(url.path):
            # The Hub's Xet read token: the CAS address it names is never reachable here.
            headers = {
                "X-Xet-Cas-Url": "http://127.0.0.1:9/cas",
                "X-Xet-Access-Token": "xet-read-token",
                "X-Xet-Token-Expiration": str(int(time.time()) + 3600),
            }
            self._send(200, headers, 0, b"")
        elif match := _API.match(url.path):
            self._api(match, parse_qs(url.query))
        elif match := _CDN.match(url.path):
            self._cdn(match, head=head)
        elif match := _RESOLVE.match(url.path):
            self._resolve_route(match, head=head)
        else:
            self._error(404, "RepoNotFound", "no such route")

    def _api(self, match: re.Match[str], query: dict[str, list[str]]) -> None:
        repo = self._repo(unquote(match["repo"]))
        sha = self._revision(repo, unquote(match["rev"])) if repo is not None else None
        if repo is None or sha is None:
            return
        if match["kind"] == "tree":
            self._tree(repo, sha, match["rev"], query)
            return
        self._json(
            {
                "id": repo.repo_id,
                "sha": sha,
                "gated": "manual" if repo.gated else False,
                "private": False,
                "siblings": [{"rfilename": name} for name in sorted(repo.files)],
            }
        )

    def _cdn(self, match: re.Match[str], *, head: bool) -> None:
        repo = self.hub.repos.get(unquote(match["repo"]))
        if repo is None or unquote(match["path"]) not in repo.files:
            self._error(404, None, "no such object")
            return
        if not head and self.hub._take_expiry():
            self._error(403, None, "Request has expired")  # a signed URL past its lifetime
            return
        self._resolve(repo, repo.sha, unquote(match["path"]), head=head, cdn=True)

    def _resolve_route(self, match: re.Match[str], *, head: bool) -> None:
        repo = self._repo(unquote(match["repo"]))
        if repo is None or not self._may_read(repo):
            return
        sha = self._revision(repo, unquote(match["rev"]))
        if sha is not None:
            self._resolve(repo, sha, unquote(match["path"]), head=head)

    def _repo(self, repo_id: str) -> HubRepo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
        return repo

    def _revision(self, repo: HubRepo, revision: str) -> str | None:
        sha = repo.refs.get(revision) or (revision if revision == repo.sha else None)
        if sha is None:
            self._error(404, "RevisionNotFound", "Invalid rev id")
        return sha

    def _may_read(self, repo: HubRepo) -> bool:
        if not repo.gated:
            return True
        auth = self.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None
        if token is not None and token in repo.allowed_tokens:
            return True
        status = 401 if token is None else 403
        self._error(status, "GatedRepo", "Access to this repo is restricted")
        return False

    def _tree(self, repo: HubRepo, sha: str, rev_in_url: str, query: dict[str, list[str]]) -> None:
        entries = []
        for name in sorted(repo.files):
            data = repo.files[name]
            entry: dict[str, object] = {
                "type": "file",
                "oid": repo.digests(name)[0],
                "size": len(data),
                "path": name,
            }
            if repo.is_lfs(name):
                entry["lfs"] = {
                    "oid": repo.digests(name)[1],
                    "size": len(data),
                    "pointerSize": 134,
                }
            entries.append(entry)
        start = int(query.get("cursor", ["0"])[0])
        page = entries[start : start + self.hub.page_size]
        headers = {}
        if start + self.hub.page_size < len(entries):
            nxt = (
                f"{self.hub.url}/api/models/{repo.repo_id}/tree/{rev_in_url}"
                f"?recursive=true&cursor={start + self.hub.page_size}"
            )
            headers["Link"] = f'<{nxt}>; rel="next"'
        self._json(page, headers)

    def _resolve(
        self, repo: HubRepo, sha: str, name: str, *, head: bool, cdn: bool = False
    ) -> None:
        data = repo.files.get(name)
        if data is None:
            self._error(404, "EntryNotFound", f"{name} does not exist", commit=sha)
            return
        etag = repo.digests(name)[1] if repo.is_lfs(name) else repo.digests(name)[0]
        if self.hub.lfs_redirect and repo.is_lfs(name) and not cdn:
            location = f"{self.hub.cdn_url}/cdn/{repo.repo_id}/{sha}/{quote(name)}?signed=1"
            redirect = {
                "X-Repo-Commit": sha,
                "X-Linked-Etag": f'"{etag}"',
                "X-Linked-Size": str(len(data)),
                "ETag": f'"{etag}"',
                "Location": location,
            }
            if head:
                self.hub._renew_cdn_urls()
            self._send(302, redirect, 0, b"")
            return
        headers = {
            "X-Repo-Commit": sha,
            "ETag": f'"{etag}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if repo.is_lfs(name):
            headers["X-Linked-Etag"] = f'"{etag}"'
            headers["X-Linked-Size"] = str(len(data))
        if (repo.repo_id, name) in self.hub.xet_backed:
            headers["X-Xet-Hash"] = hashlib.sha256(
                b"xet" + repo.digests(name)[1].encode()
            ).hexdigest()
            headers["X-Xet-Refresh-Route"] = (
                f"{self.hub.url}/api/models/{repo.repo_id}/xet-read-token/{sha}"
            )
        if head:
            self._send(200, headers, len(data), b"")
            return
        cut, fail, corrupt = self.hub._take_fault(name)
        if fail:
            self._error(503, None, "try again later")
            return
        start, end = 0, len(data)
        status = 200
        # "bytes=N-" (a resume) or "bytes=A-B" (a header read: huggingface_hub's
        # parse_safetensors_file_metadata asks for bytes=0-100000, then the rest of the header)
        if match := re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", "")):
            start = int(match[1])
            end = min(int(match[2]) + 1, len(data)) if match[2] else len(data)
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
        body = memoryview(data)[start:end]
        if corrupt and body:
            body = bytes([body[0] ^ 0xFF]) + body[1:]
        if cut is not None:
            self._send(status, headers, len(body), body[:cut])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self._send(status, headers, len(body), body)

    def _json(self, payload: object, headers: Mapping[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        self._send(200, {"Content-Type": "application/json", **(headers or {})}, len(body), body)

    def _error(
        self, status: int, code: str | None, message: str, commit: str | None = None
    ) -> None:
        body = json.dumps({"error": message}).encode()
        headers = {"Content-Type": "application/json", "X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        if commit:
            headers["X-Repo-Commit"] = commit
        self._send(status, headers, len(body), b"" if self.command == "HEAD" else body)

    def _send(
        self, status: int, headers: Mapping[str, str], length: int, body: bytes | memoryview
    ) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        rate = self.hub.rate_bytes_per_second
        if not body:
            return
        if rate is None:
            self.wfile.write(body)
            return
        # A token bucket per connection: never ahead of `rate` since the body started.
        piece = max(rate // 50, 16 * 1024)
        started = time.monotonic()
        view = memoryview(body)
        for offset in range(0, len(view), piece):
            ahead = (offset / rate) - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
            self.wfile.write(view[offset : offset + piece])


def quoted(revision: str) -> str:
    """How huggingface_hub puts a revision into a URL path."""
    return quote(revision, safe="")
