"""Weights on the box: Hub downloads with preflight, byte progress, resume and verification, and
air-gapped import. The only module that talks to `huggingface_hub`.

Layout under `models_dir` (what the engine containers mount read-only):

    <org>/<name>/<sha>/                  the files, directly inside; complete and verified only
    <org>/<name>/<revision>  → <sha>     a relative symlink per requested revision ("/" → "--"),
                                         so `runtime.specs.weights_path(models_dir, repo, revision)`
                                         names a mountable directory for a branch, tag or commit
    <org>/<name>/refs/<revision>         the commit the revision resolved to (text, like the Hub's)
    <org>/<name>/manifests/<sha>.json    repo, revision, sha, files (size, sha256), completed_at
    <org>/<name>/.partial/<sha>/<file>   bytes still arriving; never mounted, never trusted

What must stay true:

- A `<sha>/` directory holds only files whose size (and SHA-256 where the Hub gives it, git blob id
  otherwise) matched the Hub's listing; each is renamed into place only after it verified. The
  manifest is written last, so a snapshot without one is incomplete and `list_weights` skips it.
- Nothing is fetched before preflight passed: revision resolved to a commit, file list and sizes
  known, access checked (HEAD of every file still missing), free disk checked.
- huggingface_hub 2.4's `hf_hub_download` downloads into a process-unique temporary file and
  deletes it on failure (`_download_to_tmp_and_move`), so an interrupted run could not resume on the
  next one. The transfers therefore go into partial files that this module owns and keeps, through
  huggingface_hub's own pieces: `http_get` (one stream, Range resume) for files up to ~1.5 chunks,
  `http_stream_backoff` for parallel range requests (~64 MiB chunks, resumable per chunk, see
  "parallel ranges"), and `xet_get` (hf_xet) for files the Hub says are Xet-backed. A CDN caps each
  connection, so a pull keeps up to `_CONNECTIONS` transfers going at once, across files and chunks.
- The token comes from a 0600 token file, `HF_TOKEN`, or huggingface_hub's login, in that order;
  it is only ever handed to huggingface_hub and never formatted into a message or a log line.
- `huggingface_hub` is imported inside the functions that reach the Hub, so listing, removing and
  path arithmetic stay cheap to import (the CLI and `runtime.specs` use them).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import fnmatch
import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import tarfile
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any, Final, Literal
from urllib.parse import urljoin, urlsplit

from appliance import __version__, fileio
from appliance.errors import (
    ApplianceError,
    BadInputError,
    EnvironmentNotReadyError,
    ExitCode,
    OperationFailedError,
    RefusedError,
)
from appliance.units import human_bytes

if TYPE_CHECKING:
    from appliance.profile import Profile

_log = logging.getLogger("appliance.weights")

__all__ = [
    "ALLOW_PATTERNS",
    "IGNORE_PATTERNS",
    "DownloadCancelledError",
    "DownloadProgress",
    "HubModelMetadata",
    "HubToken",
    "InstalledWeights",
    "ManifestFile",
    "PullPlan",
    "RemoteFile",
    "WeightsRef",
    "check_safetensors",
    "disk_free_bytes",
    "find_installed",
    "hub_model_metadata",
    "import_weights",
    "list_weights",
    "parse_repo_ref",
    "plan_pull",
    "profile_weights",
    "pull_profile",
    "pull_weights",
    "remove_weights",
    "resolve_token",
    "revision_dir",
    "snapshot_dir",
]

DEFAULT_ENDPOINT: Final = "https://huggingface.co"
# What an engine needs: weights as safetensors, configs (config.json, generation_config.json,
# *.safetensors.index.json, adapter_config.json, sentence-transformers' modules.json and
# 1_Pooling/config.json), tokenizers and chat templates. Pickled weights never.
ALLOW_PATTERNS: Final = (
    "*.safetensors",
    "*.json",
    "*.jinja",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "*.tiktoken",
    "vocab.txt",
    "merges.txt",
)
IGNORE_PATTERNS: Final = (
    "*.bin",
    "*.pt",
    "*.pth",
    "*.ckpt",
    "*.h5",
    "*.msgpack",
    "*.gguf",
    "*.onnx",
    "onnx/*",
    "openvino/*",
    "coreml/*",
)
_COMMIT_RE: Final = re.compile(r"^[0-9a-f]{40}$")
_RESERVED_NAMES: Final = frozenset({"refs", "manifests", ".partial", ".lock"})
# What `git check-ref-format` refuses (the Hub's branches and tags are git refs): control
# characters, space, ~ ^ : ? * [ \, "..", "@{", "//", a component starting with "." or ending
# with ".lock", a trailing "/" or ".".
_BAD_REVISION: Final = re.compile(
    r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//|(^|/)\.|\.lock(/|$)|^/|[/.]$"
)
# A revision is one file name (refs/<name>, and the `.<name>.link` being renamed into place):
# 255 bytes on every Linux filesystem, less the 6 of the temporary link's dot and suffix.
_MAX_REVISION_BYTES: Final = 255 - len("..link")
# Hidden siblings of the `<org>` directories: `_repo_parts` refuses an org starting with ".".
_LOCKS_DIR: Final = ".locks"
_STAGING_DIR: Final = ".staging"
# safetensors' own bound on the JSON header (MAX_HEADER_SIZE, huggingface/safetensors
# safetensors/src/tensor.rs), and its element widths in bits (`Dtype::bitsize` there).
_SAFETENSORS_MAX_HEADER: Final = 100_000_000
_SAFETENSORS_BITS: Final = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8,
    "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16,
    "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64,
}  # fmt: skip
# An engine reads the model's architecture from config.json; a LoRA adapter has its own.
_CONFIG_FILES: Final = ("config.json", "adapter_config.json")
_MANIFEST_FORMAT: Final = 1
_GIB: Final = 1024**3
_PROGRESS_INTERVAL_S: Final = 0.1
_RATE_WINDOW_S: Final = 5.0
_HASH_CHUNK: Final = 8 * 1024 * 1024
_WRITEBACK_BYTES: Final = 8 * 1024 * 1024
# Parallel range downloads. A CDN caps each connection (tens of MiB/s), so a large file is fetched
# as fixed ~64 MiB chunks over several connections at once, as `hf download`'s 8 workers fetch
# several files at once; `_CONNECTIONS` bounds all transfers of a pull together (files and chunks).
_MIB: Final = 1024 * 1024
_CHUNK_BYTES: Final = 64 * _MIB
# 16 connections: hf_xet keeps a pool of 16 (xet-runtime 1.5.2 src/config/groups/client.rs, idle
# connections "default value is 16"); `hf download` runs 8 workers of one stream each.
_CONNECTIONS: Final = 16
_CHUNK_ATTEMPTS: Final = 4  # a dropped chunk is asked for again from its last byte, this often
_CHUNKS_SUFFIX: Final = ".chunks.json"


# --- data ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DownloadProgress:
    """One progress report; the CLI renders it with rich, the TUI posts it as a message.

    `bytes_total` is known from preflight; `bytes_done` counts bytes already on disk from an earlier
    run too, so a resumed download starts part-way. Rate and ETA are over the bytes of this run
    (None until there is something to measure). Reports come at most every 0.1 s (and at each
    file's end), from the download's worker threads: a Textual app must hand them over with
    `post_message` / `call_from_thread`, never touch widgets in the callback.
    """

    repo: str
    sha: str
    phase: Literal["download", "verify", "import", "done"]
    file: str | None
    files_done: int
    files_total: int
    bytes_done: int
    bytes_total: int
    rate_bytes_per_second: float | None
    eta_seconds: float | None

    @property
    def fraction(self) -> float:
        return self.bytes_done / self.bytes_total if self.bytes_total else 1.0


ProgressCallback = Callable[[DownloadProgress], None]


@dataclass(frozen=True)
class HubToken:
    """A Hugging Face token and where it came from; `repr` and `str` never show the value."""

    value: str = field(repr=False)
    source: str  # "token file /path", "HF_TOKEN", "huggingface_hub login"

    def __str__(self) -> str:
        return f"<token from {self.source}>"


@dataclass(frozen=True)
class WeightsRef:
    """A repo at a revision that a profile needs, and what for."""

    repo: str
    revision: str
    role: Literal["model", "lora", "embeddings"]


@dataclass(frozen=True)
class RemoteFile:
    """A file as the Hub lists it at a commit."""

    path: str
    size: int
    sha256: str | None  # LFS files only
    blob_id: str | None  # git blob id (sha1 of "blob <size>\\0" + content)


@dataclass(frozen=True)
class PullPlan:
    """What a pull will do, decided before any byte of a file is fetched."""

    repo: str
    revision: str
    sha: str
    files: tuple[RemoteFile, ...]
    gated: bool
    bytes_on_disk: int  # complete files plus partial ones from an interrupted run
    installed: bool  # the snapshot is complete already: the pull is a no-op
    catalog_weight_bytes: int | None  # what the catalog expects the safetensors to weigh

    @property
    def bytes_total(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def bytes_to_fetch(self) -> int:
        return 0 if self.installed else self.bytes_total - self.bytes_on_disk


@dataclass(frozen=True)
class ManifestFile:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class InstalledWeights:
    """A complete snapshot on the box, from its manifest."""

    repo: str
    revision: str  # the revision it was pulled or imported as
    sha: str
    path: Path
    files: tuple[ManifestFile, ...]
    completed_at: str  # ISO 8601, UTC
    source: Literal["hub", "import"]
    revisions: tuple[str, ...] = ()  # every revision name that resolves to this sha on the box
    used_by: tuple[str, ...] = ()  # profile names, when profiles were passed in

    @property
    def size_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> dict[str, object]:
        return {
            "repo": self.repo,
            "revision": self.revision,
            "revisions": list(self.revisions),
            "sha": self.sha,
            "path": str(self.path),
            "size_bytes": self.size_bytes,
            "files": len(self.files),
            "completed_at": self.completed_at,
            "source": self.source,
            "used_by": list(self.used_by),
        }


class DownloadCancelledError(OperationFailedError):
    """The download was cancelled; what arrived so far is kept and the next pull resumes it."""

    exit_code = ExitCode.INTERRUPTED


# --- paths --------------------------------------------------------------------------------------


def _repo_parts(repo: str) -> tuple[str, str]:
    org, sep, name = repo.partition("/")
    if not sep or not org or not name or "/" in name or ".." in repo or repo.startswith("."):
        raise BadInputError(
            f"'{repo}' is not a Hugging Face repo id (owner/name)",
            "write it as owner/name, e.g. Qwen/Qwen2.5-7B-Instruct-AWQ",
        )
    return org, name


def _repo_dir(models_dir: Path, repo: str) -> Path:
    org, name = _repo_parts(repo)
    return models_dir / org / name


def snapshot_dir(models_dir: Path, repo: str, sha: str) -> Path:
    """The directory holding `repo`'s files at commit `sha`: `models_dir/<org>/<name>/<sha>`.

    Equal to `runtime.specs.weights_path(models_dir, repo, sha)`.
    """
    return _repo_dir(models_dir, repo) / sha


def _revision_name(revision: str) -> str:
    """The revision as one file name under `<org>/<name>/`; refused when git (so the Hub) would
    not take it as a ref name, or when it cannot be a file name here."""
    name = revision.replace("/", "--")
    problem = None
    if len(name.encode()) > _MAX_REVISION_BYTES:
        problem = f"is {len(name.encode())} bytes long; at most {_MAX_REVISION_BYTES} fit here"
    elif _BAD_REVISION.search(revision) or not name:
        problem = "is not a git branch, tag or commit name"
    elif name in _RESERVED_NAMES or name.startswith("."):
        problem = "is a name the weights store keeps for itself"
    if problem is not None:
        shown = revision if len(revision) <= 60 else revision[:57] + "..."
        raise BadInputError(
            f"the revision '{shown}' {problem}",
            "give a branch, tag or full 40-character commit hash, as the Hub shows them",
        )
    return name


def revision_dir(models_dir: Path, repo: str, revision: str) -> Path:
    """`models_dir/<org>/<name>/<revision with "/" → "--">`: the snapshot dir or a link to it.

    Equal to `runtime.specs.weights_path(models_dir, repo, revision)`; exists once a pull or an
    import of that revision completed.
    """
    return _repo_dir(models_dir, repo) / _revision_name(revision)


def _manifest_path(models_dir: Path, repo: str, sha: str) -> Path:
    return _repo_dir(models_dir, repo) / "manifests" / f"{sha}.json"


def _ref_path(models_dir: Path, repo: str, revision: str) -> Path:
    return _repo_dir(models_dir, repo) / "refs" / _revision_name(revision)


def _partial_dir(models_dir: Path, repo: str, sha: str) -> Path:
    return _repo_dir(models_dir, repo) / ".partial" / sha


def _safe_relative(path: str) -> PurePosixPath:
    rel = PurePosixPath(path)
    if rel.is_absolute() or not rel.parts or ".." in rel.parts or "\\" in path:
        raise OperationFailedError(f"refusing the file name '{path}': it would leave the snapshot")
    return rel


# --- profiles -----------------------------------------------------------------------------------


def profile_weights(profile: Profile) -> tuple[WeightsRef, ...]:
    """Every repo a profile needs: the chat model, its LoRA adapters, the embedding model."""
    spec = profile.spec
    refs = [WeightsRef(spec.model.repo, spec.model.revision, "model")]
    refs += [WeightsRef(a.repo, a.revision, "lora") for a in spec.model.lora_adapters]
    if spec.embeddings is not None and spec.embeddings.enabled and spec.embeddings.repo:
        refs.append(WeightsRef(spec.embeddings.repo, spec.embeddings.revision, "embeddings"))
    return tuple(dict.fromkeys(refs))


def parse_repo_ref(text: str) -> tuple[str, str | None]:
    """`owner/name[@revision]` → (repo, revision or None), as `weights import --as` takes it."""
    repo, sep, revision = text.partition("@")
    _repo_parts(repo)
    if sep and not revision:
        raise BadInputError(f"'{text}' names no revision after '@'", "write owner/name@main")
    if sep:
        _revision_name(revision)
    return repo, (revision if sep else None)


# --- token --------------------------------------------------------------------------------------


def resolve_token(
    token_file: Path | None = None, environ: Mapping[str, str] | None = None
) -> HubToken | None:
    """The token to use: a 0600 `token_file`, else `HF_TOKEN`, else huggingface_hub's login.

    A token file others can read is refused (the fix is in the hint); a missing one is bad input.
    """
    env = os.environ if environ is None else environ
    if token_file is not None:
        try:
            mode = token_file.stat().st_mode
            # utf-8-sig: Windows editors start files with a byte-order mark, never part of a token
            text = token_file.read_text(encoding="utf-8-sig").strip()
        except UnicodeDecodeError:
            raise BadInputError(
                f"token file {token_file} is not UTF-8 text",
                "save it as plain text holding only the token (hf_…)",
            ) from None
        except FileNotFoundError:
            raise BadInputError(
                f"token file {token_file} does not exist",
                "write the Hugging Face token into it and chmod 600 it",
            ) from None
        except OSError as exc:
            raise EnvironmentNotReadyError(
                f"cannot read token file {token_file}: {exc.strerror}",
                "run as the user that owns it, or fix its ownership",
            ) from None
        if mode & 0o077:
            raise RefusedError(
                f"token file {token_file} can be read by other users (mode {mode & 0o777:o})",
                f"make it private: chmod 600 {token_file}",
            )
        if not text:
            raise BadInputError(f"token file {token_file} is empty", "write the token into it")
        if not text.isascii() or not text.isprintable() or any(c.isspace() for c in text):
            # An HTTP header cannot carry it; never echo the text, it may be the token itself.
            raise BadInputError(
                f"token file {token_file} holds more than a token (spaces, lines or non-ASCII)",
                "put only the token in it, on one line (hf_…)",
            )
        return HubToken(text, f"token file {token_file}")
    if value := env.get("HF_TOKEN", "").strip():
        return HubToken(value, "HF_TOKEN")
    from huggingface_hub import get_token  # noqa: TID251 - this is the Hub adapter

    stored = get_token()
    return HubToken(stored, "huggingface_hub login") if stored else None


# --- disk ---------------------------------------------------------------------------------------


def disk_free_bytes(path: Path) -> int:
    """Free bytes for an unprivileged writer on the filesystem that holds (or will hold) `path`."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def _margin(needed: int) -> int:
    """Headroom kept free after a download: 5 % of it, at least 2 GiB (logs, Docker, the OS)."""
    return max(needed // 20, 2 * _GIB)


def _check_disk(
    models_dir: Path, needed: int, free_bytes: Callable[[Path], int], margin: int | None
) -> None:
    if needed <= 0:
        return
    keep = _margin(needed) if margin is None else margin
    free = free_bytes(models_dir)
    if free < needed + keep:
        raise EnvironmentNotReadyError(
            f"not enough free disk under {models_dir}: the download needs {human_bytes(needed)} "
            f"plus {human_bytes(keep)} headroom, and {human_bytes(free)} is free",
            "free some space (appliance weights list / rm), or point storage.models_dir at a "
            "larger filesystem",
        )


# --- locking and atomic writes ------------------------------------------------------------------


@contextlib.contextmanager
def _repo_lock(models_dir: Path, repo: str) -> Iterator[None]:
    """One writer per repo at a time (a CLI pull and a TUI pull must not interleave).

    The lock files live in `models_dir/.locks/`, not in the repo's directory, so an import that
    is refused leaves no `<org>/<name>/` behind; they are never deleted (deleting a lock file
    races with the next locker)."""
    org, name = _repo_parts(repo)
    with fileio.exclusive_lock(
        models_dir / _LOCKS_DIR / f"{org}--{name}.lock",
        wait=False,
        mode=0o644,
        hint="run as a user that may write storage.models_dir, or change it in the profile",
    ) as held:
        if held is None:
            raise RefusedError(
                f"another pull or import of {repo} is running",
                "wait for it to finish, then run this again",
            )
        yield


def _write_atomic(path: Path, text: str) -> None:
    fileio.atomic_write(path, text.encode("utf-8"), mode=0o644)


def _point_revision(models_dir: Path, repo: str, revision: str, sha: str) -> None:
    """Record `revision → sha`: the refs file, and the revision link the runtime mounts."""
    if revision != sha:
        _write_atomic(_ref_path(models_dir, repo, revision), sha + "\n")
        link = revision_dir(models_dir, repo, revision)
        if link.is_dir() and not link.is_symlink():
            raise OperationFailedError(f"{link} is a directory, not a link; remove it and retry")
        tmp = link.with_name(f".{link.name}.link")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(sha)  # relative: the tree can move, or be mounted elsewhere
        tmp.replace(link)


# --- manifests ----------------------------------------------------------------------------------


def _write_manifest(
    models_dir: Path,
    repo: str,
    *,
    revision: str,
    sha: str,
    files: Sequence[ManifestFile],
    source: Literal["hub", "import"],
    extra: Mapping[str, object] | None = None,
) -> InstalledWeights:
    completed_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    document = {
        "format": _MANIFEST_FORMAT,
        "repo": repo,
        "revision": revision,
        "sha": sha,
        "source": source,
        "completed_at": completed_at,
        "appliance_version": __version__,
        "files": [dataclasses.asdict(f) for f in sorted(files, key=lambda f: f.path)],
        **(extra or {}),
    }
    _write_atomic(_manifest_path(models_dir, repo, sha), json.dumps(document, indent=2) + "\n")
    return InstalledWeights(
        repo=repo,
        revision=revision,
        sha=sha,
        path=snapshot_dir(models_dir, repo, sha),
        files=tuple(sorted(files, key=lambda f: f.path)),
        completed_at=completed_at,
        source=source,
    )


def _read_manifest(path: Path) -> InstalledWeights | None:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        repo = str(document["repo"])
        sha = str(document["sha"])
        files = tuple(
            ManifestFile(str(f["path"]), int(f["size"]), str(f["sha256"]))
            for f in document["files"]
        )
        source: Literal["hub", "import"] = "import" if document.get("source") == "import" else "hub"
        return InstalledWeights(
            repo=repo,
            revision=str(document["revision"]),
            sha=sha,
            path=path.parent.parent / sha,
            files=files,
            completed_at=str(document["completed_at"]),
            source=source,
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _snapshot_intact(installed: InstalledWeights) -> bool:
    """Every file of the manifest is in place with its size (cheap: no hashing)."""
    for f in installed.files:
        try:
            if (installed.path / f.path).stat().st_size != f.size:
                return False
        except OSError:
            return False
    return True


def _refs(repo_dir: Path) -> dict[str, str]:
    """revision name (as written in refs/, "/" shown as "--") → sha."""
    refs: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for ref in (repo_dir / "refs").iterdir():
            with contextlib.suppress(OSError):
                refs[ref.name] = ref.read_text(encoding="utf-8").strip()
    return refs


def find_installed(models_dir: Path, repo: str, revision: str) -> InstalledWeights | None:
    """The complete snapshot `revision` names on this box (no network), or None.

    Works offline: a commit is looked up directly, a branch or tag through `refs/`.
    """
    sha = revision
    if not _COMMIT_RE.match(revision):
        recorded = _refs(_repo_dir(models_dir, repo)).get(_revision_name(revision))
        if recorded is None:
            return None
        sha = recorded
    installed = _read_manifest(_manifest_path(models_dir, repo, sha))
    if installed is None or not _snapshot_intact(installed):
        return None
    return installed


# --- list and remove ----------------------------------------------------------------------------


def list_weights(models_dir: Path, profiles: Sequence[Profile] = ()) -> list[InstalledWeights]:
    """Every complete snapshot under `models_dir`, with the profiles (passed in) that use it."""
    found: list[InstalledWeights] = []
    if not models_dir.is_dir():
        return found
    wanted = [(p.metadata.name, ref) for p in profiles for ref in profile_weights(p)]
    for manifest in sorted(models_dir.glob("*/*/manifests/*.json")):
        installed = _read_manifest(manifest)
        if installed is None or not installed.path.is_dir():
            continue
        names = sorted(
            n.replace("--", "/")
            for n, sha in _refs(manifest.parent.parent).items()
            if sha == installed.sha
        )
        revisions = tuple(dict.fromkeys([*names, installed.sha]))
        used_by = tuple(
            dict.fromkeys(
                name
                for name, ref in wanted
                if ref.repo == installed.repo and ref.revision in revisions
            )
        )
        found.append(dataclasses.replace(installed, revisions=revisions, used_by=used_by))
    return found


def remove_weights(
    models_dir: Path,
    repo: str,
    in_use: Sequence[Profile] = (),
    mounted_by: Sequence[tuple[str, str]] = (),
) -> list[InstalledWeights]:
    """Delete every snapshot (and partial download) of `repo`; returns what was removed.

    Refused while a profile in `in_use` (the deployed ones) needs the repo, or while a container
    in `mounted_by` — (container name, host path) of the running engines' mounts, from
    `runtime.containers.weights_mounts` — mounts a directory of it (or one holding it).
    """
    repo_dir = _repo_dir(models_dir, repo)
    users = sorted({p.metadata.name for p in in_use for r in profile_weights(p) if r.repo == repo})
    if users:
        raise RefusedError(
            f"{repo} is used by profile {', '.join(users)}",
            "stop or change that deployment first, then remove the weights",
        )
    held = repo_dir.resolve()
    containers = sorted(
        {
            name
            for name, source in mounted_by
            if Path(source).resolve().is_relative_to(held)
            or held.is_relative_to(Path(source).resolve())
        }
    )
    if containers:
        raise RefusedError(
            f"{repo} is mounted by the running container {', '.join(containers)}",
            "stop that deployment first (appliance down, or apply a profile without it), "
            "then remove the weights",
        )
    if not repo_dir.is_dir():
        raise BadInputError(
            f"no weights of {repo} under {models_dir}", "see what is there: appliance weights list"
        )
    removed = [w for w in list_weights(models_dir) if w.repo == repo]
    with _repo_lock(models_dir, repo):
        for child in repo_dir.iterdir():
            if child.name == ".lock":
                continue
            if child.is_symlink() or not child.is_dir():
                child.unlink()
            else:
                shutil.rmtree(child)
    shutil.rmtree(repo_dir, ignore_errors=True)
    with contextlib.suppress(OSError):
        repo_dir.parent.rmdir()  # the org directory, when this was its last repo
    return removed


# --- progress -----------------------------------------------------------------------------------


class _Cancelled(Exception):  # noqa: N818 - a control-flow signal, never shown to anyone
    pass


class _Progress:
    """Thread-safe byte counter that reports at most every 0.1 s (and at file boundaries)."""

    def __init__(
        self,
        repo: str,
        sha: str,
        *,
        files_total: int,
        bytes_total: int,
        bytes_initial: int,
        callback: ProgressCallback | None,
        clock: Callable[[], float],
        stop: threading.Event,
        cancel: threading.Event | None,
        phase: Literal["download", "import"] = "download",
    ) -> None:
        self._lock = threading.Lock()
        self._repo, self._sha, self._phase = repo, sha, phase
        self._files_total, self._bytes_total = files_total, bytes_total
        self._bytes_done = bytes_initial
        self._files_done = 0
        self._callback = callback
        self._clock = clock
        self._stop = stop
        self._cancel = cancel
        self._window: deque[tuple[float, int]] = deque()
        self._run_bytes = 0
        self._last_emit: float | None = None
        self._file: str | None = None

    def check(self) -> None:
        """Raise in the worker when the caller cancelled or another file failed."""
        if self._stop.is_set() or (self._cancel is not None and self._cancel.is_set()):
            raise _Cancelled

    def add(self, n: int, file: str | None = None) -> None:
        self.check()
        with self._lock:
            self._bytes_done += n
            self._run_bytes += n
            if file is not None:
                self._file = file
            now = self._clock()
            self._window.append((now, self._run_bytes))
            while len(self._window) > 2 and now - self._window[0][0] > _RATE_WINDOW_S:
                self._window.popleft()
            due = self._last_emit is None or now - self._last_emit >= _PROGRESS_INTERVAL_S
        if due:
            self.emit()

    def file_done(self, file: str) -> None:
        with self._lock:
            self._files_done += 1
            self._file = file
        self.emit()

    def emit(self, phase: Literal["download", "verify", "import", "done"] | None = None) -> None:
        if self._callback is None:
            return
        with self._lock:
            now = self._clock()
            self._last_emit = now
            rate: float | None = None
            if len(self._window) >= 2:
                (t0, b0), (t1, b1) = self._window[0], self._window[-1]
                if t1 > t0:
                    rate = (b1 - b0) / (t1 - t0)
            remaining = max(self._bytes_total - self._bytes_done, 0)
            eta = remaining / rate if rate else (0.0 if remaining == 0 else None)
            report = DownloadProgress(
                repo=self._repo,
                sha=self._sha,
                phase=phase or self._phase,
                file=self._file,
                files_done=self._files_done,
                files_total=self._files_total,
                bytes_done=self._bytes_done,
                bytes_total=self._bytes_total,
                rate_bytes_per_second=rate,
                eta_seconds=eta,
            )
        self._callback(report)

    def bar_class(self, file: str) -> type:
        """A tqdm stand-in for huggingface_hub's `http_get`: counts bytes, raises on cancel."""
        progress = self

        class _Bar:
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                progress.check()

            def __enter__(self) -> _Bar:
                return self

            def __exit__(self, *exc: object) -> None:
                return None

            counted = 0  # bytes this file's bar added, to take back when its transfer is dropped

            def update(self, n: float | None = 1) -> None:
                progress.add(int(n or 0), file)
                type(self).counted += int(n or 0)

            def close(self) -> None:
                return None

            # huggingface_hub's Xet progress reporter: one bar (it calls `update` with the bytes
            # written to the file) when the class has `update_transfer` (network bytes, not
            # counted: with dedup they are not the file's bytes).
            def update_transfer(self, n: float | None = 1) -> None:
                progress.check()

            def set_postfix_str(self, *args: Any, **kwargs: Any) -> None:
                return None

            def set_transfer_postfix_str(self, *args: Any, **kwargs: Any) -> None:
                return None

        return _Bar


class _HashingWriter:
    """The partial file as `http_get` sees it: hashes what it writes, so verifying costs nothing.

    Always SHA-256 (the Hub's LFS hash, and the manifest's); the git blob id (sha1 over
    "blob <size>\\0" + content) only when `git_blob_size` is given, for small non-LFS files: an LFS
    file's tree `oid` is its pointer's blob id, which says nothing about the content.
    `http_get` only writes, asks `tell()`, and — when a server ignored the Range header — seeks
    back to where it started (0 here) and truncates; the hashes restart with the file.
    """

    def __init__(self, handle: IO[bytes], git_blob_size: int | None = None) -> None:
        self._handle = handle
        self._git_blob_size = git_blob_size
        self._unflushed = 0
        self.sha256 = hashlib.sha256()
        self.sha1: hashlib._Hash | None = None
        self._restart()

    def _restart(self) -> None:
        self.sha256 = hashlib.sha256()
        if self._git_blob_size is not None:
            self.sha1 = hashlib.sha1(b"blob %d\0" % self._git_blob_size)  # noqa: S324 - git id

    def _update(self, data: bytes) -> None:
        self.sha256.update(data)
        if self.sha1 is not None:
            self.sha1.update(data)

    def absorb_existing(self) -> None:
        self._handle.seek(0)
        while chunk := self._handle.read(_HASH_CHUNK):
            self._update(chunk)
        self._handle.seek(0, os.SEEK_END)

    def write(self, data: bytes) -> int:
        self._update(data)
        written = self._handle.write(data)
        self._unflushed += written
        if self._unflushed >= _WRITEBACK_BYTES:
            # Start writing what arrived to disk now (Linux: FADV_DONTNEED begins writeback of
            # dirty pages without waiting), so the fsync before the rename has little left.
            self._handle.flush()
            end = self._handle.tell()
            os.posix_fadvise(
                self._handle.fileno(),
                end - self._unflushed,
                self._unflushed,
                os.POSIX_FADV_DONTNEED,
            )
            self._unflushed = 0
        return written

    def tell(self) -> int:
        return self._handle.tell()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if (offset, whence) != (0, os.SEEK_SET):
            raise OSError(errno.ESPIPE, "partial downloads only rewind to the start")
        self._restart()
        self._unflushed = 0
        return self._handle.seek(0)

    def truncate(self, size: int | None = None) -> int:
        return self._handle.truncate(size)

    def flush(self) -> None:
        self._handle.flush()


# --- the Hub ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Located:
    """Where a file's bytes are: the URL to GET (a signed CDN URL for LFS files), the headers to
    send there, and huggingface_hub's `XetFileData` when the Hub says the file is Xet-backed."""

    url: str
    headers: Mapping[str, str]
    xet: Any | None = None


class _NoRanges(Exception):  # noqa: N818 - a control-flow signal, never shown to anyone
    """The server answered a Range request with the whole file."""


def _select(paths: Sequence[str]) -> list[str]:
    return [
        p
        for p in paths
        if any(fnmatch.fnmatch(p, pat) for pat in ALLOW_PATTERNS)
        and not any(fnmatch.fnmatch(p, pat) for pat in IGNORE_PATTERNS)
    ]


class _Hub:
    """The huggingface_hub calls this module makes, with vendor errors turned into ours."""

    def __init__(self, endpoint: str | None, token: HubToken | None) -> None:
        from huggingface_hub import HfApi  # noqa: TID251 - this is the Hub adapter

        self.endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        self.token = token
        self._auth: str | bool = token.value if token is not None else False
        self.api = HfApi(
            endpoint=self.endpoint,
            token=self._auth,
            library_name="llm-appliance",
            library_version=__version__,
        )

    @contextlib.contextmanager
    def errors(self, repo: str, revision: str) -> Iterator[None]:
        """Map huggingface_hub and HTTP failures to errors a person can act on."""
        import httpx2  # the HTTP client huggingface_hub 2.x uses
        from huggingface_hub import errors as hub_errors  # noqa: TID251 - this is the Hub adapter

        page = f"{self.endpoint}/{repo}"
        how_to_authenticate = (
            "give a token with read access: export HF_TOKEN=hf_…, or a 0600 token file, or "
            "`hf auth login` as this user"
        )
        try:
            yield
        except hub_errors.GatedRepoError:
            who = (
                f"the token ({self.token.source}) has not been granted access"
                if self.token
                else "no Hugging Face token was given"
            )
            raise RefusedError(
                f"{repo} is gated and {who}",
                f"open {page} while logged in, accept its licence, then {how_to_authenticate}",
            ) from None
        except hub_errors.RevisionNotFoundError:
            raise BadInputError(
                f"{repo} has no revision '{revision}'",
                f"check the branches, tags and commits at {page}; a commit must be the full "
                "40-character hash",
            ) from None
        except hub_errors.RepositoryNotFoundError:
            why = "or the token has no access to it" if self.token else "or it is private"
            raise BadInputError(
                f"{repo} was not found on {self.endpoint} ({why})",
                f"check the spelling at {page}"
                + ("" if self.token else f"; if private, {how_to_authenticate}"),
            ) from None
        except hub_errors.OfflineModeIsEnabled:
            raise EnvironmentNotReadyError(
                "HF_HUB_OFFLINE is set, so the Hub is not contacted",
                "unset HF_HUB_OFFLINE for this command, or bring the files in with "
                "appliance weights import PATH --as OWNER/NAME",
            ) from None
        except (httpx2.ConnectError, httpx2.TimeoutException) as exc:
            raise EnvironmentNotReadyError(
                f"cannot reach the Hub at {self.endpoint} ({type(exc).__name__})",
                "check the network and proxy (HTTPS_PROXY); on an air-gapped box use "
                "appliance weights import PATH --as OWNER/NAME",
            ) from None
        except hub_errors.HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "no"
            raise OperationFailedError(
                f"the Hub answered HTTP {status} for {repo}",
                "try again later; what has arrived is kept and the next pull resumes",
            ) from None
        except (httpx2.HTTPError, hub_errors.FileMetadataError) as exc:
            raise OperationFailedError(
                f"the download of {repo} failed ({type(exc).__name__})",
                "run the pull again; it resumes where it stopped",
            ) from None

    def resolve(self, repo: str, revision: str) -> tuple[str, bool]:
        """(commit sha, gated) for `revision`; a commit is checked to exist too."""
        with self.errors(repo, revision):
            info = self.api.model_info(repo, revision=revision)
        if not info.sha or not _COMMIT_RE.match(info.sha):
            raise OperationFailedError(f"the Hub gave no commit for {repo}@{revision}")
        return info.sha, bool(info.gated)

    def model_files(self, repo: str, revision: str) -> tuple[str, frozenset[str]]:
        """(commit sha, the repo's file names) for `revision`."""
        return _model_files(self, repo, revision)

    def model_metadata(
        self, repo: str, revision: str, sha: str, files: frozenset[str], *, download_dir: Path
    ) -> HubModelMetadata:
        return _model_metadata(self, repo, revision, sha, files, download_dir=download_dir)

    def list_files(self, repo: str, revision: str, sha: str) -> list[RemoteFile]:
        from huggingface_hub.hf_api import RepoFile  # noqa: TID251 - this is the Hub adapter

        with self.errors(repo, revision):
            entries = list(self.api.list_repo_tree(repo, revision=sha, recursive=True))
        return [
            RemoteFile(
                path=e.path,
                size=int(e.size),
                sha256=e.lfs.sha256 if e.lfs is not None else None,
                blob_id=e.blob_id,
            )
            for e in entries
            if isinstance(e, RepoFile)
        ]

    def locate(self, repo: str, revision: str, sha: str, path: str) -> _Located:
        """HEAD the file: where to GET it, and whether it is Xet-backed. Checks access before any
        byte is fetched."""
        from huggingface_hub import get_hf_file_metadata, hf_hub_url  # noqa: TID251
        from huggingface_hub.utils._headers import build_hf_headers  # noqa: TID251

        url = hf_hub_url(repo, path, revision=sha, endpoint=self.endpoint)
        with self.errors(repo, revision):
            meta = get_hf_file_metadata(url, token=self._auth, endpoint=self.endpoint)
        headers = build_hf_headers(
            token=self._auth, library_name="llm-appliance", library_version=__version__
        )
        location = urljoin(url, meta.location or url)
        if urlsplit(location).netloc != urlsplit(url).netloc:
            # A signed CDN URL: the token stays with the Hub.
            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        return _Located(location, headers, meta.xet_file_data)

    def fetch(
        self,
        repo: str,
        revision: str,
        url: str,
        *,
        headers: dict[str, str],
        writer: _HashingWriter,
        resume_size: int,
        expected_size: int,
        bar: type,
    ) -> None:
        from huggingface_hub.file_download import http_get  # noqa: TID251

        with self.errors(repo, revision):
            http_get(
                url,
                writer,  # type: ignore[arg-type]  # duck-typed: write/tell/seek/truncate
                resume_size=resume_size,
                headers=headers,
                expected_size=expected_size,
                displayed_filename=url.rsplit("/", 1)[-1],
                tqdm_class=bar,  # duck-typed progress bar (update, context manager)
            )

    def fetch_range(
        self,
        url: str,
        *,
        headers: Mapping[str, str],
        start: int,
        end: int,
        sink: Callable[[bytes], None],
    ) -> None:
        """GET bytes [start, end) of `url` into `sink`, through huggingface_hub's HTTP client (its
        retries on connect errors and 5xx/429). Raises `_NoRanges` when the server answers with the
        whole file, and the client's own errors unmapped: the caller retries a dropped chunk."""
        from huggingface_hub import constants  # noqa: TID251
        from huggingface_hub.utils._http import (  # noqa: TID251
            hf_raise_for_status,
            http_stream_backoff,
        )

        with http_stream_backoff(
            method="GET",
            url=url,
            headers={**headers, "Range": f"bytes={start}-{end - 1}"},
            timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT,
            # A drop mid-body is retried by the caller from the last byte written, not here.
            retry_on_exceptions=(),
        ) as response:
            hf_raise_for_status(response)
            if response.status_code != 206:
                raise _NoRanges
            # As the socket delivers (no buffering to a size): bytes that arrived before a drop
            # are written, so the retry asks only for the rest.
            for data in response.iter_bytes():
                sink(data)

    def fetch_xet(self, located: _Located, *, partial: Path, expected_size: int, bar: type) -> None:
        """Fetch a Xet-backed file into `partial` through hf_xet, as `hf download` does."""
        from huggingface_hub.file_download import xet_get  # noqa: TID251

        xet_get(
            incomplete_path=partial,
            xet_file_data=located.xet,  # type: ignore[arg-type]  # checked by the caller
            headers=dict(located.headers),
            expected_size=expected_size,
            displayed_filename=partial.name,
            tqdm_class=bar,
        )


def _xet_usable() -> bool:
    """hf_xet importable and not switched off (HF_HUB_DISABLE_XET), as huggingface_hub decides."""
    from huggingface_hub.utils._runtime import is_xet_available  # noqa: TID251

    return is_xet_available()


# --- pull ---------------------------------------------------------------------------------------


def _catalog_bytes(repo: str) -> int | None:
    from appliance.catalog import load_catalog

    catalog = load_catalog()
    found = catalog.model_by_repo(repo)
    if found is not None:
        return found[1].weight_bytes
    embedding = catalog.embedding(repo)
    return embedding.weight_bytes if embedding is not None else None


def _bytes_on_disk(models_dir: Path, repo: str, sha: str, files: Sequence[RemoteFile]) -> int:
    done = 0
    final, partial = snapshot_dir(models_dir, repo, sha), _partial_dir(models_dir, repo, sha)
    for f in files:
        rel = _safe_relative(f.path)
        with contextlib.suppress(OSError):
            if (final / rel).stat().st_size == f.size:
                done += f.size
                continue
        done += _partial_bytes(partial / rel, f)
    return done


def _plan(hub: _Hub, repo: str, revision: str, models_dir: Path) -> PullPlan:
    _revision_name(revision)
    sha, gated = hub.resolve(repo, revision)
    listed = hub.list_files(repo, revision, sha)
    chosen = set(_select([f.path for f in listed]))
    files = tuple(sorted((f for f in listed if f.path in chosen), key=lambda f: f.path))
    if not any(f.path.endswith(".safetensors") for f in files):
        others = sorted(f.path for f in listed if f.path.endswith((".bin", ".pt", ".pth", ".gguf")))
        found = f"; it has only {', '.join(others[:3])}" if others else ""
        raise BadInputError(
            f"{repo}@{revision} (commit {sha[:12]}) has no .safetensors weights{found}",
            "the appliance loads safetensors only, never pickled .bin/.pt weights; choose a "
            "repo that publishes safetensors (see the catalog), or convert and import it",
        )
    installed = find_installed(models_dir, repo, sha)
    return PullPlan(
        repo=repo,
        revision=revision,
        sha=sha,
        files=files,
        gated=gated,
        bytes_on_disk=_bytes_on_disk(models_dir, repo, sha, files),
        installed=installed is not None,
        catalog_weight_bytes=_catalog_bytes(repo),
    )


def _plan_or_installed(
    hub: _Hub, repo: str, revision: str, models_dir: Path
) -> PullPlan | InstalledWeights:
    """The plan; or, when the Hub cannot be asked (HF_HUB_OFFLINE, no network) but the revision
    is complete on the box already (pulled earlier, or imported), that snapshot: a no-op."""
    try:
        return _plan(hub, repo, revision, models_dir)
    except EnvironmentNotReadyError:
        installed = find_installed(models_dir, repo, revision)
        if installed is None:
            raise
        return installed


def plan_pull(
    repo: str,
    revision: str = "main",
    *,
    models_dir: Path,
    token: HubToken | None = None,
    endpoint: str | None = None,
) -> PullPlan:
    """Preflight only: resolve the revision, list the files and what is on disk. No file bytes."""
    return _plan(_Hub(endpoint, token), repo, revision, models_dir)


def _verify(f: RemoteFile, path: Path, writer: _HashingWriter) -> str | None:
    """None when the file is what the Hub listed, else what is wrong."""
    return _verify_digests(f, path, writer.sha256.hexdigest(), writer.sha1)


def _verify_digests(f: RemoteFile, path: Path, sha256: str, sha1: Any | None) -> str | None:
    size = path.stat().st_size
    if size != f.size:
        return f"size {size} B, the Hub lists {f.size} B"
    if f.sha256 is not None and sha256 != f.sha256:
        return "SHA-256 differs from the Hub's"
    if sha1 is not None and f.blob_id is not None and sha1.hexdigest() != f.blob_id:
        return "git blob id differs from the Hub's"
    return None


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class _Transfers:
    """What all files of a pull share: at most `slots` HTTP transfers at once (files and chunks
    together), the pool that fetches chunks, and the chunk size."""

    slots: threading.BoundedSemaphore
    chunk_pool: ThreadPoolExecutor
    chunk_bytes: int
    stop: threading.Event


def _damaged(plan: PullPlan, f: RemoteFile, problem: str) -> OperationFailedError:
    return OperationFailedError(
        f"{plan.repo}: {f.path} arrived damaged twice ({problem})",
        "the file was discarded; check the network or proxy and pull again",
    )


def _disk_full(models_dir: Path, f: RemoteFile) -> EnvironmentNotReadyError:
    return EnvironmentNotReadyError(
        f"the disk under {models_dir} filled up while downloading {f.path}",
        "free some space and pull again; it resumes",
    )


def _install(partial: Path, final: Path) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(partial, 0o644)  # noqa: PTH101 - readable by the engine containers
    partial.replace(final)


def _download_file(
    hub: _Hub,
    plan: PullPlan,
    f: RemoteFile,
    *,
    models_dir: Path,
    progress: _Progress,
    located: _Located,
    transfers: _Transfers,
) -> ManifestFile:
    """Fetch (or resume) one file into .partial, verify it, move it into the snapshot: through
    hf_xet when the Hub says the file is Xet-backed (and hf_xet is installed), as parallel range
    requests when it is larger than a chunk, as one stream otherwise."""
    rel = _safe_relative(f.path)
    final = snapshot_dir(models_dir, plan.repo, plan.sha) / rel
    if final.is_file() and final.stat().st_size == f.size:
        # Verified before it was renamed into place by an earlier, interrupted run.
        progress.file_done(f.path)
        return ManifestFile(f.path, f.size, f.sha256 or _sha256_of(final))
    partial = _partial_dir(models_dir, plan.repo, plan.sha) / rel
    partial.parent.mkdir(parents=True, exist_ok=True)
    try:
        digest: str | None = None
        if located.xet is not None and _xet_usable():
            digest = _download_xet(
                hub,
                plan=plan,
                f=f,
                partial=partial,
                located=located,
                progress=progress,
                transfers=transfers,
            )
        if digest is not None:
            pass
        elif len(_chunk_bounds(f.size, transfers.chunk_bytes)) > 1:
            digest = _download_chunked(
                hub,
                plan=plan,
                f=f,
                partial=partial,
                located=located,
                progress=progress,
                transfers=transfers,
            )
        else:
            digest = _download_stream(
                hub,
                plan=plan,
                f=f,
                partial=partial,
                located=located,
                progress=progress,
                transfers=transfers,
            )
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise _disk_full(models_dir, f) from None
        raise
    _install(partial, final)
    progress.file_done(f.path)
    return ManifestFile(f.path, f.size, digest)


def _download_stream(
    hub: _Hub,
    *,
    plan: PullPlan,
    f: RemoteFile,
    partial: Path,
    located: _Located,
    progress: _Progress,
    transfers: _Transfers,
) -> str:
    """One HTTP stream with Range resume (huggingface_hub's `http_get`), hashed while written."""
    if _chunks_path(partial).exists():
        # Left by a chunked run (another chunk size): full-size and sparse, so no prefix to resume.
        progress.add(-_partial_bytes(partial, f))
        partial.unlink(missing_ok=True)
        _chunks_path(partial).unlink()
    for attempt in (1, 2):
        if partial.exists() and partial.stat().st_size > f.size:
            progress.add(-partial.stat().st_size)
            partial.unlink()
        mode = "r+b" if partial.exists() else "w+b"
        with partial.open(mode) as handle:
            writer = _HashingWriter(handle, None if f.sha256 else f.size)
            writer.absorb_existing()
            resume = handle.tell()
            try:
                with transfers.slots:
                    hub.fetch(
                        plan.repo,
                        plan.revision,
                        located.url,
                        headers=dict(located.headers),
                        writer=writer,
                        resume_size=resume,
                        expected_size=f.size,
                        bar=progress.bar_class(f.path),
                    )
            except OSError as exc:
                if exc.errno is not None:
                    raise
                problem: str | None = str(exc).split("\n", 1)[0]  # http_get's size check
            else:
                handle.flush()
                os.fsync(handle.fileno())
                problem = _verify(f, partial, writer)
        if problem is None:
            return writer.sha256.hexdigest()
        progress.add(-partial.stat().st_size if partial.exists() else 0)
        partial.unlink(missing_ok=True)
        if attempt == 2:
            raise _damaged(plan, f, problem)
    raise AssertionError("unreachable")  # pragma: no cover


def _download_xet(
    hub: _Hub,
    *,
    plan: PullPlan,
    f: RemoteFile,
    partial: Path,
    located: _Located,
    progress: _Progress,
    transfers: _Transfers,
) -> str | None:
    """A Xet-backed file through huggingface_hub's `xet_get` (hf_xet: many chunk streams, its own
    retries); None when hf_xet failed, and the caller fetches the file over HTTP instead (the Hub
    serves Xet-backed files at the same URL). hf_xet writes the whole file, so a Xet-backed file
    cut off mid-way starts again from its first byte on the next pull (complete files are kept;
    bytes an earlier HTTP run left in the partial file leave the byte count). Verified by reading
    the file back: hf_xet checks its chunks' hashes; ours is the Hub's SHA-256."""
    for attempt in (1, 2):
        progress.add(-_partial_bytes(partial, f))
        partial.unlink(missing_ok=True)
        _chunks_path(partial).unlink(missing_ok=True)
        bar: Any = progress.bar_class(f.path)
        try:
            with transfers.slots:
                hub.fetch_xet(located, partial=partial, expected_size=f.size, bar=bar)
        except _Cancelled:
            raise
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise
            failure: Exception | None = exc
        except Exception as exc:  # noqa: BLE001 - any hf_xet failure: HTTP still works
            failure = exc
        else:
            failure = None
        if failure is not None:
            progress.check()  # a cancel shows in hf_xet as a failed progress callback
            _log.warning(
                "hf_xet could not fetch %s (%s); fetching it over HTTP",
                f.path,
                type(failure).__name__,
            )
            progress.add(-bar.counted)
            partial.unlink(missing_ok=True)
            return None
        digest = _sha256_of(partial)
        problem = _verify_digests(f, partial, digest, None)
        if problem is None:
            return digest
        progress.add(f.size - bar.counted)  # the next round takes back the file's size
        if attempt == 2:
            progress.add(-f.size)
            partial.unlink(missing_ok=True)
            raise _damaged(plan, f, problem)
    raise AssertionError("unreachable")  # pragma: no cover


# --- parallel ranges ----------------------------------------------------------------------------
#
# A file of at least ~1.5 chunks is cut into equal chunks of about C (`_chunk_bounds`), fetched
# over up to `_CONNECTIONS` connections, each written with pwrite into the partial file (made
# full-size, sparse, first). What is on disk is recorded in a sidecar `<file>.chunks.json`
# ({"size", "done": [[start, end], …]}), rewritten atomically after each chunk was fdatasync'ed:
# a crash never records unwritten bytes, and the next run fetches only what is missing, whatever
# its chunk size. A partial file without a sidecar (from a single-stream run) counts as its
# contiguous prefix. SHA-256 is computed in order by the file's own worker as the contiguous
# prefix of finished chunks grows (read back from the page cache while later chunks still
# arrive), so little hashing is left when the last chunk lands.


def _chunk_bounds(size: int, chunk_bytes: int) -> list[tuple[int, int]]:
    """`size` cut into the nearest whole number of equal chunks (1 MiB-aligned where they are
    larger): no 64 MiB shard ends in a chunk of a few bytes."""
    count = max(1, round(size / chunk_bytes))
    step = -(-size // count)
    if step > _MIB:
        step = -(-step // _MIB) * _MIB
    return [(a, min(a + step, size)) for a in range(0, size, step)]


def _chunks_path(partial: Path) -> Path:
    return partial.with_name(partial.name + _CHUNKS_SUFFIX)


def _merge(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _done_ranges(partial: Path, size: int) -> list[tuple[int, int]]:
    """The byte ranges of `partial` an earlier run wrote and recorded, merged."""
    try:
        on_disk = partial.stat().st_size
    except OSError:
        return []
    try:
        recorded = json.loads(_chunks_path(partial).read_text())
    except FileNotFoundError:
        return [(0, on_disk)] if 0 < on_disk <= size else []
    except (OSError, ValueError):
        return []
    if not isinstance(recorded, dict) or recorded.get("size") != size or on_disk != size:
        return []
    try:
        ranges = [(int(a), int(b)) for a, b in recorded["done"]]
    except (KeyError, TypeError, ValueError):
        return []
    return _merge([(a, b) for a, b in ranges if 0 <= a < b <= size])


def _partial_bytes(partial: Path, f: RemoteFile) -> int:
    """What `partial` holds of `f` that a resumed pull keeps (and progress counts as done)."""
    return sum(b - a for a, b in _done_ranges(partial, f.size))


def _record_chunks(partial: Path, size: int, done: Sequence[tuple[int, int]]) -> None:
    payload = {"size": size, "done": [list(r) for r in _merge(done)]}
    fileio.atomic_write(_chunks_path(partial), json.dumps(payload).encode(), mode=0o600)


def _transient(exc: Exception) -> bool:
    """Worth asking for the rest of the chunk again: a dropped connection, a timeout, a 5xx/429."""
    import httpx2
    from huggingface_hub import errors as hub_errors  # noqa: TID251 - this is the Hub adapter

    if isinstance(exc, hub_errors.HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else 0
        return status >= 500 or status in (408, 429)
    return isinstance(exc, httpx2.TransportError)


def _refused(exc: Exception) -> bool:
    from huggingface_hub import errors as hub_errors  # noqa: TID251 - this is the Hub adapter

    response = exc.response if isinstance(exc, hub_errors.HfHubHTTPError) else None
    return response is not None and response.status_code in (401, 403, 410)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


class _ChunkedFile:
    """One file's chunks: which are on disk, fetching the missing ones, hashing the prefix."""

    def __init__(self, partial: Path, f: RemoteFile, chunk_bytes: int) -> None:
        self.partial, self.f = partial, f
        self.chunks = _chunk_bounds(f.size, chunk_bytes)
        kept = _done_ranges(partial, f.size)
        # Bytes of a chunk already there: the part of a recorded range that starts at its start.
        self.have = [
            next((min(y, b) - a for x, y in kept if x <= a < y), 0) for a, b in self.chunks
        ]
        self.done = {i for i, (a, b) in enumerate(self.chunks) if self.have[i] == b - a}
        self.kept_bytes = sum(self.have)
        self._recorded = [(a, a + h) for (a, _), h in zip(self.chunks, self.have, strict=True) if h]
        self._cond = threading.Condition()
        # The sidecar before the file is made full-size: a full-size file is never mistaken for
        # a complete prefix.
        _record_chunks(partial, f.size, self._recorded)
        self.fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(self.fd, f.size)

    def close(self) -> None:
        os.close(self.fd)

    def fetch(
        self,
        i: int,
        *,
        hub: _Hub,
        plan: PullPlan,
        located: _Located,
        progress: _Progress,
        slots: threading.BoundedSemaphore,
    ) -> None:
        start, end = self.chunks[i]
        position = start + self.have[i]
        url, headers, renewed = located.url, located.headers, False

        def sink(data: bytes) -> None:
            nonlocal position
            if position + len(data) > end:
                raise OperationFailedError(
                    f"{plan.repo}: the server sent more of {self.f.path} than asked"
                )
            _pwrite_all(self.fd, data, position)
            position += len(data)
            progress.add(len(data), self.f.path)

        for attempt in range(1, _CHUNK_ATTEMPTS + 1):
            progress.check()
            try:
                with slots:
                    hub.fetch_range(url, headers=headers, start=position, end=end, sink=sink)
            except _NoRanges:
                raise OperationFailedError(
                    f"the server of {plan.repo} ignored a Range request for {self.f.path}",
                    "check the proxy in between (HTTPS_PROXY): it must pass Range requests",
                ) from None
            except (_Cancelled, ApplianceError):
                raise
            except Exception as exc:
                if isinstance(exc, OSError) and exc.errno is not None:
                    raise  # the local disk (huggingface_hub's HTTP errors are OSErrors too)
                if attempt < _CHUNK_ATTEMPTS and _refused(exc) and not renewed:
                    # A signed CDN URL lives about an hour; a long pull asks the Hub for a new one
                    # (and a real refusal shows on that HEAD, mapped as for any file).
                    fresh = hub.locate(plan.repo, plan.revision, plan.sha, self.f.path)
                    url, headers, renewed = fresh.url, fresh.headers, True
                    continue
                if attempt == _CHUNK_ATTEMPTS or not _transient(exc):
                    with hub.errors(plan.repo, plan.revision):
                        raise
                time.sleep(0.25 * 2**attempt)
                continue  # the rest of the chunk, from the byte it stopped at
            if position == end:
                break
        else:
            raise OperationFailedError(
                f"{plan.repo}: a chunk of {self.f.path} kept arriving short",
                "run the pull again; it resumes where it stopped",
            )
        os.fdatasync(self.fd)
        with self._cond:
            self._recorded.append((start, end))
            _record_chunks(self.partial, self.f.size, self._recorded)
            self.done.add(i)
            self._cond.notify_all()

    def wake(self, _future: object = None) -> None:
        with self._cond:
            self._cond.notify_all()

    def hash_in_order(
        self, futures: Sequence[Future[None]], progress: _Progress
    ) -> _HashingWriter | None:
        """SHA-256 (and the git blob id for a non-LFS file) over the chunks in order, each as soon
        as it is on disk; None when a chunk failed or the pull was cancelled."""
        hasher = _HashingWriter(io.BytesIO(), None if self.f.sha256 else self.f.size)
        for i, (start, end) in enumerate(self.chunks):
            with self._cond:
                while i not in self.done:
                    if any(fu.done() and fu.exception() is not None for fu in futures):
                        return None
                    self._cond.wait(1.0)
            offset = start
            while offset < end:
                progress.check()
                data = os.pread(self.fd, min(_HASH_CHUNK, end - offset), offset)
                if not data:
                    raise OperationFailedError(f"{self.partial} shrank while downloading")
                hasher._update(data)
                offset += len(data)
        return hasher


def _download_chunked(
    hub: _Hub,
    *,
    plan: PullPlan,
    f: RemoteFile,
    partial: Path,
    located: _Located,
    progress: _Progress,
    transfers: _Transfers,
) -> str:
    for attempt in (1, 2):
        counted = _partial_bytes(partial, f)  # what preflight (or the failed try) counted as done
        chunked = _ChunkedFile(partial, f, transfers.chunk_bytes)
        try:
            progress.add(chunked.kept_bytes - counted)
            futures = [
                transfers.chunk_pool.submit(
                    chunked.fetch,
                    i,
                    hub=hub,
                    plan=plan,
                    located=located,
                    progress=progress,
                    slots=transfers.slots,
                )
                for i in range(len(chunked.chunks))
                if i not in chunked.done
            ]
            for future in futures:
                future.add_done_callback(chunked.wake)
            try:
                hasher = chunked.hash_in_order(futures, progress)
            finally:
                if any(fu.done() and fu.exception() is not None for fu in futures):
                    transfers.stop.set()  # a real failure stops the whole pull, as for files
                wait(futures)
            errors = [e for fu in futures if (e := fu.exception()) is not None]
            real = [e for e in errors if not isinstance(e, _Cancelled)]
            if real:
                raise real[0]
            if errors or hasher is None:
                raise _Cancelled
            problem = _verify_digests(f, partial, hasher.sha256.hexdigest(), hasher.sha1)
        finally:
            chunked.close()
        if problem is None:
            _chunks_path(partial).unlink(missing_ok=True)
            return hasher.sha256.hexdigest()
        progress.add(-f.size)
        partial.unlink(missing_ok=True)
        _chunks_path(partial).unlink(missing_ok=True)
        if attempt == 2:
            raise _damaged(plan, f, problem)
    raise AssertionError("unreachable")  # pragma: no cover


def pull_weights(
    repo: str,
    revision: str = "main",
    *,
    models_dir: Path,
    token: HubToken | None = None,
    endpoint: str | None = None,
    on_progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    free_bytes: Callable[[Path], int] = disk_free_bytes,
    margin_bytes: int | None = None,
    max_workers: int = _CONNECTIONS,
    chunk_bytes: int = _CHUNK_BYTES,
    clock: Callable[[], float] = time.monotonic,
) -> InstalledWeights:
    """Download `repo` at `revision` into `models_dir`, or do nothing when it is there already.

    Raises `BadInputError` (no such repo/revision, no safetensors), `RefusedError` (gated without
    access, another pull running), `EnvironmentNotReadyError` (disk, network, HF_HUB_OFFLINE),
    `OperationFailedError` (the Hub failed, a file arrived damaged twice) and
    `DownloadCancelledError` (`cancel` was set; the next pull resumes).
    """
    hub = _Hub(endpoint, token)
    plan = _plan_or_installed(hub, repo, revision, models_dir)
    if isinstance(plan, InstalledWeights):
        return plan
    return _execute(
        hub,
        plan,
        models_dir,
        on_progress=on_progress,
        cancel=cancel,
        free_bytes=free_bytes,
        margin_bytes=margin_bytes,
        max_workers=max_workers,
        chunk_bytes=chunk_bytes,
        clock=clock,
    )


def _execute(
    hub: _Hub,
    plan: PullPlan,
    models_dir: Path,
    *,
    on_progress: ProgressCallback | None,
    cancel: threading.Event | None,
    free_bytes: Callable[[Path], int],
    margin_bytes: int | None,
    max_workers: int,
    chunk_bytes: int,
    clock: Callable[[], float],
) -> InstalledWeights:
    with _repo_lock(models_dir, plan.repo):
        if plan.installed:
            _point_revision(models_dir, plan.repo, plan.revision, plan.sha)
            installed = find_installed(models_dir, plan.repo, plan.sha)
            if installed is not None:
                return installed
        _check_disk(models_dir, plan.bytes_total - plan.bytes_on_disk, free_bytes, margin_bytes)
        stop = threading.Event()
        progress = _Progress(
            plan.repo,
            plan.sha,
            files_total=len(plan.files),
            bytes_total=plan.bytes_total,
            bytes_initial=plan.bytes_on_disk,
            callback=on_progress,
            clock=clock,
            stop=stop,
            cancel=cancel,
        )
        final = snapshot_dir(models_dir, plan.repo, plan.sha)
        missing = [
            f
            for f in plan.files
            if not ((final / f.path).is_file() and (final / f.path).stat().st_size == f.size)
        ]
        workers = max(1, min(max_workers, len(plan.files)))
        connections = max(1, max_workers)
        with (
            ThreadPoolExecutor(workers, thread_name_prefix="weights") as pool,
            ThreadPoolExecutor(connections, thread_name_prefix="weights-chunk") as chunk_pool,
        ):
            transfers = _Transfers(
                threading.BoundedSemaphore(connections), chunk_pool, chunk_bytes, stop
            )
            # Access (gated, private) shows on the file HEADs: all of them before any GET.
            located = dict(
                zip(
                    [f.path for f in missing],
                    pool.map(
                        lambda f: hub.locate(plan.repo, plan.revision, plan.sha, f.path), missing
                    ),
                    strict=True,
                )
            )
            progress.emit()
            futures = [
                pool.submit(
                    _download_file,
                    hub,
                    plan,
                    f,
                    models_dir=models_dir,
                    progress=progress,
                    located=located.get(f.path, _Located("", {})),
                    transfers=transfers,
                )
                for f in plan.files
            ]
            files = _gather(futures, stop)
        if files is None:
            raise DownloadCancelledError(
                f"the download of {plan.repo} was cancelled",
                "what has arrived is kept; pull again to resume",
            )
        progress.emit("verify")
        try:
            for f in plan.files:
                if f.path.endswith(".safetensors"):
                    check_safetensors(final / f.path, f"{plan.repo}: {f.path}")
        except BadInputError as error:
            # The bytes are the repo's (hashes matched), so fetching again would not help.
            shutil.rmtree(final, ignore_errors=True)
            error.hint = "the repo's own file is broken: pick another revision or repo"
            raise
        installed = _write_manifest(
            models_dir,
            plan.repo,
            revision=plan.revision,
            sha=plan.sha,
            files=files,
            source="hub",
            extra={"endpoint": hub.endpoint},
        )
        _point_revision(models_dir, plan.repo, plan.revision, plan.sha)
        shutil.rmtree(_partial_dir(models_dir, plan.repo, plan.sha), ignore_errors=True)
        with contextlib.suppress(OSError):
            _partial_dir(models_dir, plan.repo, plan.sha).parent.rmdir()
        progress.emit("done")
        return installed


def _gather(
    futures: Sequence[Future[ManifestFile]], stop: threading.Event
) -> list[ManifestFile] | None:
    """Results in order, or None when cancelled. The first failure stops the other workers at
    their next chunk and is raised; so does Ctrl-C in the waiting thread."""
    try:
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in done if not f.cancelled() and f.exception() is not None]
        if any(not isinstance(f.exception(), _Cancelled) for f in failed):
            stop.set()
        wait(futures)
    finally:
        stop.set()
    errors = [e for f in futures if (e := f.exception()) is not None]
    real = [e for e in errors if not isinstance(e, _Cancelled)]
    if real:
        if isinstance(real[0], ApplianceError):
            raise real[0]
        raise OperationFailedError(f"the download failed: {real[0]}") from real[0]
    return None if errors else [f.result() for f in futures]


def pull_profile(
    profile: Profile,
    *,
    models_dir: Path | None = None,
    token: HubToken | None = None,
    endpoint: str | None = None,
    on_progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    free_bytes: Callable[[Path], int] = disk_free_bytes,
    margin_bytes: int | None = None,
    max_workers: int = _CONNECTIONS,
    chunk_bytes: int = _CHUNK_BYTES,
    clock: Callable[[], float] = time.monotonic,
) -> list[InstalledWeights]:
    """Pull everything a profile needs; all preflights (and the disk check for the sum) first."""
    target = models_dir or profile.spec.storage.models_dir
    hub = _Hub(endpoint, token)
    plans = [_plan_or_installed(hub, r.repo, r.revision, target) for r in profile_weights(profile)]
    needed = sum(p.bytes_to_fetch for p in plans if isinstance(p, PullPlan))
    _check_disk(target, needed, free_bytes, margin_bytes)
    return [
        p
        if isinstance(p, InstalledWeights)
        else _execute(
            hub,
            p,
            target,
            on_progress=on_progress,
            cancel=cancel,
            free_bytes=free_bytes,
            margin_bytes=margin_bytes,
            max_workers=max_workers,
            chunk_bytes=chunk_bytes,
            clock=clock,
        )
        for p in plans
    ]


# --- import -------------------------------------------------------------------------------------


def _is_tarball(path: Path) -> bool:
    return path.is_file() and tarfile.is_tarfile(path)


def _extract_tarball(tarball: Path, into: Path, check_space: Callable[[int], None]) -> None:
    """Extract regular files and directories only; no absolute paths, `..`, links or devices.

    Every member is checked before anything is written, then the unpacked size against the disk.
    """
    try:
        with tarfile.open(tarball) as archive:
            members = archive.getmembers()
            for member in members:
                name = PurePosixPath(member.name)
                if name.is_absolute() or ".." in name.parts:
                    raise RefusedError(
                        f"{tarball} contains '{member.name}', which would land outside the "
                        "import directory",
                        "build the tarball from inside the model directory: "
                        "tar -C MODEL_DIR -czf model.tar.gz .",
                    )
                if not (member.isfile() or member.isdir()):
                    raise RefusedError(
                        f"{tarball} contains '{member.name}', which is a link or a device",
                        "pack the files themselves: tar --dereference -czf model.tar.gz …",
                    )
            check_space(sum(m.size for m in members if m.isfile()))
            archive.extractall(into, members=members, filter="data")
    except (tarfile.TarError, EOFError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise EnvironmentNotReadyError(
                f"the disk under {into} filled up while extracting {tarball}",
                "free some space and import again",
            ) from None
        raise BadInputError(f"cannot read {tarball} as a tarball: {exc}") from None


def _model_root(directory: Path) -> Path:
    """The directory with the weights: `directory`, or its single subdirectory if only that.

    A link is never that subdirectory: the tree walk then finds it and refuses it."""
    entries = [e for e in directory.iterdir() if not e.name.startswith(".")]
    if (
        len(entries) == 1
        and entries[0].is_dir()
        and not entries[0].is_symlink()
        and not any(directory.glob("*.safetensors"))
    ):
        return entries[0]
    return directory


def _source_commit(root: Path) -> str | None:
    """The commit a directory came from, when it says so: a Hub cache snapshot dir, or a
    `local_dir` download's metadata (`.cache/huggingface/download/*.metadata`, first line)."""
    if _COMMIT_RE.match(root.name):
        return root.name
    for meta in sorted((root / ".cache" / "huggingface" / "download").glob("*.metadata")):
        with contextlib.suppress(OSError, IndexError):
            first = meta.read_text(encoding="utf-8").splitlines()[0].strip()
            if _COMMIT_RE.match(first):
                return first
    return None


def import_weights(
    source: Path,
    repo: str,
    revision: str | None = None,
    *,
    models_dir: Path,
    on_progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    free_bytes: Callable[[Path], int] = disk_free_bytes,
    margin_bytes: int | None = None,
    clock: Callable[[], float] = time.monotonic,
    verified_sha256: Mapping[str, str] | None = None,
) -> InstalledWeights:
    """Record weights brought in by hand (a directory or a tarball) as `repo` at `revision`.

    `verified_sha256` (path in the snapshot → SHA-256): the directory is the caller's own
    staging copy on the models dir's filesystem whose files it has just hash-checked
    (`bundle load`); they are moved in, neither copied nor hashed again.

    The same files a pull would keep are copied (safetensors, configs, tokenizer, templates) and
    hashed into a manifest. The snapshot is named by the source's commit when it tells one (a
    40-hex `revision`, a Hub cache snapshot directory, a `local_dir` download), else by a content
    id (sha1 over the files' names and SHA-256s). `revision` defaults to main, so a profile that
    says `revision: main` finds it offline.

    What must stay true: links in a directory are refused, never followed (a Hub cache
    snapshot's links into its own `blobs/` are the one exception); every safetensors header is
    checked and a config is required before a byte is copied; the copy is staged in
    `models_dir/.staging/` (same filesystem), renamed into place, and the manifest — what makes
    `list_weights` show it — is written last. A failure at any step leaves nothing behind.
    """
    _repo_parts(repo)
    wanted_revision = revision or "main"
    _revision_name(wanted_revision)
    if not source.exists():
        raise BadInputError(f"{source} does not exist", "give a model directory or a tarball")
    if not (source.is_dir() or _is_tarball(source)):
        raise BadInputError(
            f"{source} is neither a directory nor a tarball",
            "give the model directory (config.json and *.safetensors) or a .tar/.tar.gz of it",
        )
    repo_dir = _repo_dir(models_dir, repo)
    stop = threading.Event()
    placed: Path | None = None
    completed = False
    with _repo_lock(models_dir, repo):
        staging = Path(tempfile.mkdtemp(prefix="import-", dir=_ensure(models_dir / _STAGING_DIR)))
        try:
            if source.is_dir():
                root = _model_root(source)
            else:
                _extract_tarball(
                    source,
                    staging / "extracted",
                    lambda size: _check_disk(models_dir, size, free_bytes, margin_bytes),
                )
                root = _model_root(staging / "extracted")
            files = _import_files(root, source, repo)
            _check_import(files, source)
            total = sum(p.stat().st_size for _, p in files)
            consume = verified_sha256 is not None
            if source.is_dir() and not consume:  # moved files need no new space
                _check_disk(models_dir, total, free_bytes, margin_bytes)
            progress = _Progress(
                repo,
                "",
                files_total=len(files),
                bytes_total=total,
                bytes_initial=0,
                callback=on_progress,
                clock=clock,
                stop=stop,
                cancel=cancel,
                phase="import",
            )
            manifest = _copy_into(
                files,
                staging / "snapshot",
                progress,
                move=consume or not source.is_dir(),
                known=verified_sha256,
            )
            commit = _commit_for(revision, root, manifest)
            final = snapshot_dir(models_dir, repo, commit)
            if final.exists():  # imported before: unlist it first, then replace it
                _manifest_path(models_dir, repo, commit).unlink(missing_ok=True)
                shutil.rmtree(final)
            final.parent.mkdir(parents=True, exist_ok=True)
            (staging / "snapshot").replace(final)
            placed = final
            _point_revision(models_dir, repo, wanted_revision, commit)
            installed = _write_manifest(
                models_dir,
                repo,
                revision=wanted_revision,
                sha=commit,
                files=manifest,
                source="import",
                extra={
                    "imported_from": str(source.resolve()),
                    "sha_is_commit": commit != _content_id(manifest),
                },
            )
            completed = True
            progress.emit("done")
            return installed
        except _Cancelled:
            raise DownloadCancelledError(f"the import of {repo} was cancelled") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            if not completed and placed is not None:
                shutil.rmtree(placed, ignore_errors=True)
            _remove_empty(models_dir / _STAGING_DIR, repo_dir, repo_dir.parent)


def _remove_empty(*directories: Path) -> None:
    """rmdir each directory that is empty (a failed import's leftovers); others stay."""
    for directory in directories:
        with contextlib.suppress(OSError):
            directory.rmdir()


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _hub_cache_blobs(root: Path) -> Path | None:
    """`<cache>/models--org--name/blobs` when `root` is a snapshot of huggingface_hub's cache
    (`…/snapshots/<commit>`), whose files are relative links into that `blobs/`."""
    if _COMMIT_RE.match(root.name) and root.parent.name == "snapshots":
        blobs = root.parent.parent / "blobs"
        if blobs.is_dir() and not blobs.is_symlink():
            return blobs.resolve()
    return None


def _refuse_link(source: Path, path: Path, root: Path) -> RefusedError:
    rel = path.relative_to(root).as_posix()
    try:
        target = str(path.readlink())
    except OSError:
        target = "?"
    return RefusedError(
        f"{source} contains '{rel}', which is a link (to {target}); links are never followed "
        "into the models directory",
        "replace the link with the file itself (cp --dereference, after checking where it "
        "points), or remove it, then import again",
    )


def _import_files(root: Path, source: Path, repo: str) -> list[tuple[str, Path]]:
    """(path in the snapshot, file to read) of every file to import.

    Walks without following links and refuses the first link it meets, file or directory,
    wherever it is (what it points to, `/etc/shadow` or `/proc/self/environ`, must never land
    in the models dir). A Hub cache snapshot's links into its own `blobs/` are read as the blob
    they resolve to, and only when that is a regular file inside that `blobs/`.
    """
    blobs = _hub_cache_blobs(root)
    found: list[tuple[str, Path]] = []

    def unreadable(error: OSError) -> None:
        raise error  # os.walk would skip a directory it cannot read; the caller says so

    for directory, dirnames, filenames in os.walk(root, onerror=unreadable, followlinks=False):
        here = Path(directory)
        rel_dir = here.relative_to(root).as_posix()
        if rel_dir == ".cache" or rel_dir.startswith(".cache/"):
            dirnames.clear()  # huggingface_hub's download metadata: read by _source_commit only
            continue
        for name in sorted(dirnames):
            if (here / name).is_symlink():
                raise _refuse_link(source, here / name, root)
        for name in sorted(filenames):
            path = here / name
            rel = path.relative_to(root).as_posix()
            if not path.is_symlink():
                if path.is_file():  # FIFOs, sockets and devices are not weights
                    found.append((rel, path))
                continue
            target = Path(os.path.realpath(path))
            if blobs is None or not target.is_relative_to(blobs) or target.is_symlink():
                raise _refuse_link(source, path, root)
            if target.is_file():
                found.append((rel, target))
    found.sort()
    keep = set(_select([rel for rel, _ in found]))
    chosen = [(rel, path) for rel, path in found if rel in keep]
    if not any(rel.endswith(".safetensors") for rel, _ in chosen):
        raise BadInputError(
            f"{source} holds no .safetensors files to import as {repo}",
            "point at the model directory itself (config.json and *.safetensors inside)",
        )
    return chosen


def _check_import(files: Sequence[tuple[str, Path]], source: Path) -> None:
    """What an engine would refuse, found before copying: a missing config, a damaged
    safetensors file (truncated, not safetensors, offsets outside the file)."""
    names = {rel for rel, _ in files}
    if not names.intersection(_CONFIG_FILES):
        raise BadInputError(
            f"{source} has no config.json (nor adapter_config.json, for a LoRA adapter): an "
            "engine cannot load weights without it",
            "import the whole model directory as the Hub has it, config.json included",
        )
    for rel, path in files:
        if rel.endswith(".safetensors"):
            check_safetensors(path, rel)


def check_safetensors(path: Path, name: str | None = None) -> None:
    """Raise `BadInputError` naming the file unless its header is one the safetensors library
    would load: 8-byte little-endian length within the file and within safetensors' bound,
    a UTF-8 JSON object, every tensor of a known dtype with offsets that tile the data after
    the header exactly and match shape x dtype (safetensors/src/tensor.rs, `read_metadata` and
    `Metadata::validate`). Reads the header only."""
    shown = name or str(path)

    def broken(why: str) -> BadInputError:
        return BadInputError(
            f"{shown} is not a valid safetensors file: {why}",
            "copy it again from the source (it may be truncated or damaged), or check that "
            "it really is the model's weights",
        )

    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise broken(f"{size} bytes is too short for a header")
            length = int.from_bytes(prefix, "little")
            if length > min(size - 8, _SAFETENSORS_MAX_HEADER):
                raise broken(f"its header claims {length} bytes, the file has {size}")
            raw = handle.read(length)
    except OSError as exc:
        raise EnvironmentNotReadyError(
            f"cannot read {shown}: {exc.strerror}", "check its permissions"
        ) from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise broken("its header is not JSON") from None
    if not isinstance(header, dict):
        raise broken("its header is not a JSON object")
    _check_tensors(header, size - 8 - length, broken)


def _check_tensors(
    header: dict[str, Any], data_bytes: int, broken: Callable[[str], BadInputError]
) -> None:
    """Each tensor's dtype, shape and offsets, and that together they tile the data exactly."""
    spans: list[tuple[int, int, str]] = []
    for tensor, info in header.items():
        if tensor == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise broken(f"tensor '{tensor}' lacks dtype, shape or data_offsets") from None
        if dtype not in _SAFETENSORS_BITS:
            raise broken(f"tensor '{tensor}' has the unknown dtype {dtype!r}")
        if not (
            isinstance(shape, list)
            and all(type(d) is int and d >= 0 for d in shape)
            and type(begin) is int
            and type(end) is int
            and 0 <= begin <= end
        ):
            raise broken(f"tensor '{tensor}' has a malformed shape or data_offsets")
        if end > data_bytes:
            raise broken(
                f"tensor '{tensor}' ends at byte {end} of the data, past the file's end "
                f"({data_bytes} bytes of data): the file is truncated"
            )
        bits = math.prod(shape) * _SAFETENSORS_BITS[dtype]
        if bits % 8 or end - begin != bits // 8:
            raise broken(
                f"tensor '{tensor}' ({dtype} {shape}) needs {bits / 8:g} bytes, its "
                f"data_offsets span {end - begin}"
            )
        spans.append((begin, end, tensor))
    position = 0
    for begin, end, tensor in sorted(spans):
        if begin != position:
            raise broken(f"tensor '{tensor}' starts at byte {begin} of the data, not {position}")
        position = end
    if position != data_bytes:
        raise broken(f"its tensors cover {position} bytes of data, the file holds {data_bytes}")


def _copy_into(
    files: Sequence[tuple[str, Path]],
    into: Path,
    progress: _Progress,
    *,
    move: bool,
    known: Mapping[str, str] | None = None,
) -> list[ManifestFile]:
    manifest: list[ManifestFile] = []
    for rel, path in files:
        target = into / _safe_relative(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        if move and known is not None and rel in known:  # hash-checked by the caller just now
            size = path.stat().st_size
            path.replace(target)
            target.chmod(0o644)
            manifest.append(ManifestFile(rel, size, known[rel]))
            progress.add(size, rel)
            progress.file_done(rel)
            continue
        if move:  # extracted from a tarball onto this filesystem: hash it, then rename
            with path.open("rb") as src:
                while chunk := src.read(_HASH_CHUNK):
                    digest.update(chunk)
                    progress.add(len(chunk), rel)
            path.replace(target)
        else:
            with path.open("rb") as src, target.open("wb") as dst:
                while chunk := src.read(_HASH_CHUNK):
                    digest.update(chunk)
                    dst.write(chunk)
                    progress.add(len(chunk), rel)
        target.chmod(0o644)
        manifest.append(ManifestFile(rel, target.stat().st_size, digest.hexdigest()))
        progress.file_done(rel)
    return manifest


def _content_id(manifest: Sequence[ManifestFile]) -> str:
    digest = hashlib.sha1()  # noqa: S324 - a name for content, in the shape of a commit id
    for f in sorted(manifest, key=lambda f: f.path):
        digest.update(f"{f.path}\0{f.sha256}\n".encode())
    return digest.hexdigest()


def _commit_for(revision: str | None, root: Path, manifest: Sequence[ManifestFile]) -> str:
    if revision is not None and _COMMIT_RE.match(revision):
        return revision
    return _source_commit(root) or _content_id(manifest)


# --- a model's shape and weight bytes from the Hub, without its weights -------------------------

_SINGLE_FILE: Final = "model.safetensors"
_INDEX_FILE: Final = "model.safetensors.index.json"
_HEADER_READERS: Final = 8  # parallel Range reads of shard headers (DeepSeek-V3 has 163 shards)


@dataclass(frozen=True)
class HubModelMetadata:
    """What `estimate ORG/NAME` needs from a Hub repo: its config.json and, from the safetensors
    headers alone (Range reads of each shard's first bytes, as hf-mem does), the exact tensor
    bytes and the parameter count per safetensors dtype ("BF16", "F8_E4M3", "I32", ...)."""

    repo: str
    revision: str
    sha: str
    config: dict[str, Any]
    weight_bytes: int
    parameters: dict[str, int]
    shards: tuple[str, ...]
    # Parameters in 2-D floating-point weights other than the embeddings and lm_head: what an
    # FP8 or INT4 quantisation of this checkpoint would shrink (it keeps those two and norms).
    linear_parameters: int = 0

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "shards": list(self.shards)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HubModelMetadata:
        return cls(
            repo=str(data["repo"]),
            revision=str(data["revision"]),
            sha=str(data["sha"]),
            config=dict(data["config"]),
            weight_bytes=int(data["weight_bytes"]),
            parameters={str(k): int(v) for k, v in dict(data["parameters"]).items()},
            shards=tuple(str(s) for s in data["shards"]),
            linear_parameters=int(data.get("linear_parameters", 0)),
        )


def _metadata_dir(cache_dir: Path, repo: str) -> Path:
    org, name = _repo_parts(repo)
    return cache_dir / "hub-models" / f"{org}--{name}"


def _cached_metadata(where: Path, sha: str | None) -> HubModelMetadata | None:
    if sha is None:
        return None
    try:
        return HubModelMetadata.from_json(json.loads((where / f"{sha}.json").read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent or damaged: read the Hub again


def _cached_ref(where: Path, revision: str) -> str | None:
    with contextlib.suppress(OSError):
        sha = (where / "refs" / _revision_name(revision)).read_text().strip()
        return sha if _COMMIT_RE.match(sha) else None
    return None


def _remember(where: Path, revision: str, metadata: HubModelMetadata) -> None:
    """Cache by commit (a commit never changes) and note which commit the revision named, so an
    offline box can still size what it read before. Failing to cache never fails the command."""
    with contextlib.suppress(OSError):
        fileio.atomic_write(
            where / f"{metadata.sha}.json", json.dumps(metadata.to_json()).encode(), mode=0o644
        )
        fileio.atomic_write(
            where / "refs" / _revision_name(revision), metadata.sha.encode(), mode=0o644
        )


def hub_model_metadata(
    repo: str,
    revision: str = "main",
    *,
    cache_dir: Path,
    token: HubToken | None = None,
    endpoint: str | None = None,
) -> HubModelMetadata:
    """config.json and the safetensors headers of `repo`@`revision`, cached under `cache_dir`
    by commit. Never downloads a tensor.

    Raises BadInputError (bad name, no such repo or revision, not a safetensors repo),
    RefusedError (gated, no access), EnvironmentNotReadyError (HF_HUB_OFFLINE or no network,
    with nothing cached for this revision), OperationFailedError (the Hub failed).
    """
    _repo_parts(repo)
    _revision_name(revision)
    where = _metadata_dir(cache_dir, repo)
    hub = _Hub(endpoint, token)
    try:
        sha, files = hub.model_files(repo, revision)
    except EnvironmentNotReadyError:
        cached = _cached_metadata(where, _cached_ref(where, revision))
        if cached is None:
            raise
        return cached
    metadata = _cached_metadata(where, sha) or hub.model_metadata(
        repo, revision, sha, files, download_dir=where / "files"
    )
    _remember(where, revision, metadata)
    return metadata


def _model_files(hub: _Hub, repo: str, revision: str) -> tuple[str, frozenset[str]]:
    with hub.errors(repo, revision):
        info = hub.api.model_info(repo, revision=revision)
    if not info.sha or not _COMMIT_RE.match(info.sha):
        raise OperationFailedError(f"the Hub gave no commit for {repo}@{revision}")
    return info.sha, frozenset(s.rfilename for s in info.siblings or ())


def _model_metadata(
    hub: _Hub, repo: str, revision: str, sha: str, files: frozenset[str], *, download_dir: Path
) -> HubModelMetadata:
    from huggingface_hub import hf_hub_download  # noqa: TID251 - this is the Hub adapter
    from huggingface_hub.errors import SafetensorsParsingError  # noqa: TID251

    page = f"{hub.endpoint}/{repo}"
    if "config.json" not in files:
        raise BadInputError(
            f"{repo} has no config.json, so it is not a model vLLM can load",
            f"check the repo at {page}",
        )
    if _SINGLE_FILE not in files and _INDEX_FILE not in files:
        raise BadInputError(
            f"{repo} has neither {_SINGLE_FILE} nor {_INDEX_FILE}",
            f"vLLM loads safetensors checkpoints; look for a safetensors repo of it at {page}",
        )

    def download(name: str) -> dict[str, Any]:
        path = hf_hub_download(
            repo, name, revision=sha, cache_dir=download_dir, token=hub._auth,
            endpoint=hub.endpoint,
        )  # fmt: skip
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise OperationFailedError(f"{repo}'s {name} is not readable JSON ({exc})") from None
        if not isinstance(data, dict):
            raise OperationFailedError(f"{repo}'s {name} is not a JSON object")
        return data

    with hub.errors(repo, revision):
        config = download("config.json")
        if _SINGLE_FILE in files:
            shards: tuple[str, ...] = (_SINGLE_FILE,)
        else:
            weight_map = download(_INDEX_FILE).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise OperationFailedError(f"{repo}'s {_INDEX_FILE} has no weight_map")
            shards = tuple(sorted({str(v) for v in weight_map.values()}))

        def header(shard: str) -> Any:
            try:
                return hub.api.parse_safetensors_file_metadata(repo, shard, revision=sha)
            except SafetensorsParsingError as exc:
                raise OperationFailedError(
                    f"{repo}'s {shard} has no readable safetensors header ({exc})"
                ) from None

        with ThreadPoolExecutor(max_workers=_HEADER_READERS) as pool:
            headers = list(pool.map(header, shards))
    weight_bytes = linear = 0
    parameters: dict[str, int] = {}
    for parsed in headers:
        for name, tensor in parsed.tensors.items():
            begin, end = tensor.data_offsets
            weight_bytes += int(end) - int(begin)
            if (
                len(tensor.shape) == 2
                and tensor.dtype in ("BF16", "F16", "F32")
                and "embed" not in name
                and "lm_head" not in name
            ):
                linear += int(tensor.parameter_count)
        for dtype, count in parsed.parameter_count.items():
            parameters[str(dtype)] = parameters.get(str(dtype), 0) + int(count)
    return HubModelMetadata(repo, revision, sha, config, weight_bytes, parameters, shards, linear)
