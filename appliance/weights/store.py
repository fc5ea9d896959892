"""The weights store on disk: free space, one writer per repo, atomic writes, manifests
(written last: a snapshot without one is incomplete), listing and removal.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import logging
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from appliance import __version__, fileio
from appliance.errors import (
    BadInputError,
    EnvironmentNotReadyError,
    OperationFailedError,
    RefusedError,
)
from appliance.units import human_bytes
from appliance.weights.layout import (
    _COMMIT_RE,
    _GIB,
    _LOCKS_DIR,
    _MANIFEST_FORMAT,
    InstalledWeights,
    ManifestFile,
    _manifest_path,
    _ref_path,
    _repo_dir,
    _repo_parts,
    _revision_name,
    profile_weights,
    revision_dir,
    snapshot_dir,
)

if TYPE_CHECKING:
    from appliance.profile import Profile

_log = logging.getLogger("appliance.weights")


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
