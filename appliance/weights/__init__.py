"""Weights on the box: Hub downloads with preflight, byte progress, resume and verification, and
air-gapped import. The only package that talks to `huggingface_hub`.

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

The package: `layout` (refs, paths, a profile's weights), `token`, `store` (disk, locks, manifests,
list, remove), `progress`, `hub` (the Hub adapter), `pull` (preflight, transfers, parallel
ranges) and `importer` (air-gapped import).
"""

from __future__ import annotations

from appliance.weights.hub import HubModelMetadata, hub_model_metadata
from appliance.weights.importer import check_safetensors, import_weights
from appliance.weights.layout import (
    ALLOW_PATTERNS,
    IGNORE_PATTERNS,
    DownloadCancelledError,
    DownloadProgress,
    HubToken,
    InstalledWeights,
    ManifestFile,
    PullPlan,
    RemoteFile,
    WeightsRef,
    parse_repo_ref,
    profile_weights,
    revision_dir,
    snapshot_dir,
)
from appliance.weights.pull import plan_pull, pull_profile, pull_weights
from appliance.weights.store import disk_free_bytes, find_installed, list_weights, remove_weights
from appliance.weights.token import resolve_token

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
