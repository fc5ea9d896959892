"""The appliance and everything it needs at run time, as wheels, made from this installation with
no package index: what a bundle carries for `install.sh --offline`.

Each dependency is repacked from the files this environment installed for it (the same pinned
versions, the same compiled extensions, for this Python and platform); the appliance itself too,
or, when it runs from a checkout (an editable install), built from that checkout with the build
backend already installed here. An air-gapped box then installs exactly what ran on the
connected one.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import re
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

from appliance.errors import EnvironmentNotReadyError

PROJECT = "llm-appliance"
# Files pip writes at install time; a wheel must not carry them (RECORD is written anew).
_PIP_WRITTEN = {"INSTALLER", "REQUESTED", "direct_url.json", "RECORD"}


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_distributions(project: str = PROJECT) -> list[metadata.Distribution]:
    """The installed distributions `project` needs at run time (its dependencies' closure,
    extras followed, environment markers evaluated for this interpreter)."""
    found: dict[str, metadata.Distribution] = {}
    pending: list[tuple[str, frozenset[str]]] = [(project, frozenset())]
    while pending:
        name, extras = pending.pop()
        dist = metadata.distribution(name)
        for text in dist.requires or ():
            requirement = Requirement(text)
            marker = requirement.marker
            if marker is not None and not any(
                marker.evaluate({"extra": extra}) for extra in (extras or {""})
            ):
                continue
            key = _normalized(requirement.name)
            if key not in found:
                try:
                    found[key] = metadata.distribution(requirement.name)
                except metadata.PackageNotFoundError:
                    raise EnvironmentNotReadyError(
                        f"{requirement.name}, which {name} needs, is not installed here",
                        hint="reinstall the appliance (./install.sh), or pass --wheels DIR",
                    ) from None
                pending.append((requirement.name, frozenset(requirement.extras)))
            elif requirement.extras:
                pending.append((requirement.name, frozenset(requirement.extras)))
    return sorted(found.values(), key=lambda d: _normalized(d.metadata["Name"]))


def _wheel_tag(dist: metadata.Distribution) -> str:
    text = dist.read_text("WHEEL") or ""
    tags = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Tag:")]
    parts = [sorted({tag.split("-")[i] for tag in tags}) for i in range(3)]
    return "-".join(".".join(part) for part in parts) if tags else "py3-none-any"


def repack(dist: metadata.Distribution, dest: Path) -> Path:
    """A wheel of an installed distribution: its files under site-packages and its metadata,
    with a fresh RECORD. Scripts outside site-packages are left out (pip writes them again from
    the entry points); links are never followed into the wheel."""
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"])
    path = dest / f"{name}-{dist.version}-{_wheel_tag(dist)}.whl"
    rows: list[tuple[str, str, str]] = []
    record_name = ""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        for file in dist.files or ():
            parts = file.parts
            if parts[0] == ".." or "__pycache__" in parts:
                continue
            if parts[0].endswith(".dist-info"):
                if parts[-1] == "RECORD":
                    record_name = str(file)
                if parts[-1] in _PIP_WRITTEN:
                    continue
            source = Path(str(dist.locate_file(file)))
            if source.is_symlink() or not source.is_file():
                continue
            data = source.read_bytes()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            wheel.writestr(str(file), data)
            rows.append((str(file), f"sha256={digest.decode()}", str(len(data))))
        if not record_name:
            path.unlink(missing_ok=True)
            raise EnvironmentNotReadyError(
                f"{dist.metadata['Name']} {dist.version} was not installed by pip (no RECORD), so "
                "it cannot be repacked as a wheel",
                hint="reinstall the appliance (./install.sh), or pass --wheels DIR",
            )
        record = io.StringIO()
        csv.writer(record, lineterminator="\n").writerows([*rows, (record_name, "", "")])
        wheel.writestr(record_name, record.getvalue())
    return path


def _checkout(dist: metadata.Distribution) -> Path | None:
    """The source tree of an editable install, else None."""
    try:
        direct = json.loads(dist.read_text("direct_url.json") or "{}")
    except ValueError:
        return None
    url = str(direct.get("url", ""))
    editable = bool((direct.get("dir_info") or {}).get("editable"))
    return Path(url.removeprefix("file://")) if editable and url.startswith("file://") else None


def project_wheels(dest: Path) -> list[Path]:
    """Everything `pip install --no-index --find-links dest llm-appliance` needs."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        own = metadata.distribution(PROJECT)
    except metadata.PackageNotFoundError:
        raise EnvironmentNotReadyError(
            f"{PROJECT} is not installed in this environment",
            hint="install it with ./install.sh, or pass --wheels DIR",
        ) from None
    checkout = _checkout(own)
    if checkout is None:
        repack(own, dest)
    else:
        # The backend the checkout names (pyproject's build-system) is installed with the dev
        # extra; no isolation, so nothing is fetched.
        built = subprocess.run(
            [
                sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                "--no-index", "--quiet", str(checkout), "-w", str(dest),
            ],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if built.returncode != 0:
            last = (built.stderr.strip().splitlines() or ["pip failed"])[-1]
            raise EnvironmentNotReadyError(
                f"could not build the appliance's wheel from {checkout}: {last}",
                hint="install the dev extra (./install.sh --dev), or pass --wheels DIR",
            )
    for dist in runtime_distributions():
        repack(dist, dest)
    return sorted(dest.glob("*.whl"))


__all__ = ["PROJECT", "project_wheels", "repack", "runtime_distributions"]
