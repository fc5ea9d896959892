"""The wheels the gateway image installs, made offline from this checkout and this virtualenv.

The Containerfile installs `dist/*.whl` with `pip install --no-index` (an operator makes them
with `pip wheel . -w dist`). No index is reachable from the tests, so here the appliance's wheel
is built from the checkout (`pip wheel --no-deps --no-build-isolation`, with the pinned
hatchling from the dev extra) and each runtime dependency is repacked from the files this
virtualenv installed for it: the same pinned versions, the same compiled extensions.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import re
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
_PIP_WRITTEN = {"INSTALLER", "REQUESTED", "direct_url.json", "RECORD"}


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_distributions(project: str = "llm-appliance") -> list[metadata.Distribution]:
    """The installed distributions `project` needs at run time (its dependencies' closure)."""
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
                found[key] = metadata.distribution(requirement.name)
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
    with a fresh RECORD (scripts outside site-packages are left to pip's entry points)."""
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
            if not source.is_file():
                continue
            data = source.read_bytes()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            wheel.writestr(str(file), data)
            rows.append((str(file), f"sha256={digest.decode()}", str(len(data))))
        assert record_name, f"{dist.metadata['Name']} has no RECORD"
        record = io.StringIO()
        csv.writer(record, lineterminator="\n").writerows([*rows, (record_name, "", "")])
        wheel.writestr(record_name, record.getvalue())
    return path


def gateway_wheels(dest: Path) -> list[Path]:
    """Everything `pip install --no-index --find-links dest llm-appliance` needs."""
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
            "--no-index", "--quiet", str(ROOT), "-w", str(dest),
        ],
        check=True,
    )  # fmt: skip
    for dist in runtime_distributions():
        repack(dist, dest)
    return sorted(dest.glob("*.whl"))
