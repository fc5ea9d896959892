"""Bundle create/verify throughput against plain `tar` on the same data (issue #20).

Covers the streaming core only (file members): the docker save/load comparison waits for
`bundle create/load`. Prints ratios (plain time / bundle time; target >= 0.9).
Run: .venv/bin/python bench/bundle.py [MiB]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from appliance.bundle.manifest import Target
from appliance.bundle.stream import BundleWriter, verify_into


def main() -> None:
    mib = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        src = d / "src"
        src.mkdir()
        (src / "w.safetensors").write_bytes(os.urandom(mib << 20))
        t0 = time.perf_counter()
        subprocess.run(["tar", "cf", str(d / "plain.tar"), "-C", str(src), "."], check=True)
        plain_create = time.perf_counter() - t0
        t0 = time.perf_counter()
        with (d / "b.tar").open("wb") as f:
            w = BundleWriter(f)
            w.add_file("weights/w.safetensors", "weights", src / "w.safetensors")
            w.finish("bench", Target("nvidia", "8.9", "3.12", "x"))
        bundle_create = time.perf_counter() - t0
        (d / "x").mkdir()
        t0 = time.perf_counter()
        subprocess.run(["tar", "xf", str(d / "plain.tar"), "-C", str(d / "x")], check=True)
        plain_load = time.perf_counter() - t0
        t0 = time.perf_counter()
        verify_into(d / "b.tar", d / "st")
        bundle_load = time.perf_counter() - t0
    for name, plain, ours in (
        ("create", plain_create, bundle_create),
        ("load (verify+extract)", plain_load, bundle_load),
    ):
        print(
            f"{name:22} tar {mib / plain:8.0f} MiB/s  bundle {mib / ours:8.0f} MiB/s  "
            f"ratio {plain / ours:.2f}x"
        )


if __name__ == "__main__":
    main()
