"""The Hub adapter: the only module that imports `huggingface_hub`, with its errors turned
into ours; and a model's shape and weight bytes read from the Hub without its weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urljoin, urlsplit

from appliance import __version__, fileio
from appliance.errors import (
    BadInputError,
    EnvironmentNotReadyError,
    OperationFailedError,
    RefusedError,
)
from appliance.weights.layout import (
    _COMMIT_RE,
    ALLOW_PATTERNS,
    DEFAULT_ENDPOINT,
    IGNORE_PATTERNS,
    HubToken,
    RemoteFile,
    _repo_parts,
    _revision_name,
)
from appliance.weights.progress import _HashingWriter

if TYPE_CHECKING:
    pass

_log = logging.getLogger("appliance.weights")


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
