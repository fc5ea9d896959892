"""What weights are and where they live under the models directory: the refs, the
layout of `<org>/<name>/<sha>/`, revision names, and a profile's weights.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Final, Literal

from appliance.errors import (
    BadInputError,
    ExitCode,
    OperationFailedError,
)
from appliance.vocabulary import weights_path

if TYPE_CHECKING:
    from appliance.profile import Profile

_log = logging.getLogger("appliance.weights")


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
    """The directory holding `repo`'s files at commit `sha`: `models_dir/<org>/<name>/<sha>`."""
    _repo_parts(repo)
    return weights_path(models_dir, repo, sha)


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
    """`vocabulary.weights_path` for a checked repo and revision: the snapshot dir or a link to
    it; exists once a pull or an import of that revision completed."""
    _repo_parts(repo)
    _revision_name(revision)
    return weights_path(models_dir, repo, revision)


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
    """Every repo a profile needs: the chat model, its LoRA adapters, the further chat models
    (spec.switching), the embedding model."""
    spec = profile.spec
    refs = [WeightsRef(spec.model.repo, spec.model.revision, "model")]
    refs += [WeightsRef(a.repo, a.revision, "lora") for a in spec.model.lora_adapters]
    switched = spec.switching.models if spec.switching is not None else ()
    refs += [WeightsRef(m.repo, m.revision, "model") for m in switched]
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
