"""Small, self-contained images for the tests, built with no registry.

No registry is reachable from these machines, so the base image is Debian's own Python copied
into a root filesystem (the interpreter, the libraries `ldd` lists, the standard library) and
`docker import`ed: about 60 MB and two seconds. It has no shell, so images built on it use
exec-form CMD and HEALTHCHECK.
"""

from __future__ import annotations

import io
import re
import subprocess
import tarfile
from pathlib import Path

import docker  # noqa: TID251 - test setup talks to the private engine directly

PYTHON = Path("/usr/bin/python3.11")
STDLIB = Path("/usr/lib/python3.11")
BASE_REPOSITORY, BASE_TAG = "appliance-test/python-base", "3.11"
BASE_IMAGE = f"{BASE_REPOSITORY}:{BASE_TAG}"
_SKIP = {"test", "idlelib", "tkinter", "ensurepip", "__pycache__", "lib2to3", "turtledemo"}


def shared_libraries(paths: list[Path]) -> set[Path]:
    """The shared libraries `ldd` resolves for these binaries (to copy into an image)."""
    libraries: set[Path] = set()
    for path in paths:
        out = subprocess.run(["ldd", str(path)], capture_output=True, text=True, check=False)
        for match in re.finditer(r"(/\S+)\s+\(0x", out.stdout):
            libraries.add(Path(match.group(1)))
    return libraries


def _rootfs_tar() -> bytes:
    if not PYTHON.exists():
        msg = f"{PYTHON} is missing: apt-get install -y python3.11 (./install.sh --dev does it)"
        raise FileNotFoundError(msg)
    extensions = sorted((STDLIB / "lib-dynload").glob("*.so"))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:

        def add(path: Path) -> None:
            # Keep symlinked loader paths (/lib64/ld-linux…) as real files under their own name.
            tar.add(path.resolve(), arcname=str(path).lstrip("/"), recursive=False)

        add(PYTHON)
        for library in shared_libraries([PYTHON, *extensions]):
            add(library)
        for path in sorted(STDLIB.rglob("*")):
            relative = path.relative_to(STDLIB)
            if _SKIP.intersection(relative.parts) or path.is_dir():
                continue
            add(path)
        for certs in (Path("/etc/ssl/certs/ca-certificates.crt"),):
            if certs.exists():
                add(certs)
        for name, data in {"usr/bin/python3": None, "tmp/.keep": b""}.items():
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.SYMTYPE
                info.linkname = "python3.11"
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def ensure_python_base(client: docker.DockerClient) -> str:
    """Build (once per engine) the Python base image and return its tag."""
    try:
        client.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        pass
    else:
        return BASE_IMAGE
    client.api.import_image_from_data(
        _rootfs_tar(),
        repository=BASE_REPOSITORY,
        tag=BASE_TAG,
        changes=["ENV PATH=/usr/bin:/bin", 'CMD ["/usr/bin/python3"]'],
    )
    return BASE_IMAGE


def build_image(client: docker.DockerClient, tag: str, context: Path) -> str:
    """`docker build` a directory (its Dockerfile starts FROM the base image) and return the tag."""
    client.images.build(path=str(context), tag=tag, rm=True, forcerm=True)
    return tag
