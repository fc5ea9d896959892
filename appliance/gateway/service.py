"""The gateway as a systemd service: installed and (re)started by `appliance apply`.

The engines are containers; the gateway is the appliance's own Python process, so systemd keeps
it running across crashes and reboots. The unit runs `appliance gateway --profile` on a copy of
the applied profile kept in the state directory, so it never depends on where the operator's
file lives, and `keys` / `fallback` find the same profile by default. Secrets never enter the
unit: the remote API key's environment variable comes from an optional `EnvironmentFile`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import OperationFailedError
from appliance.gateway.files import atomic_write

UNIT_NAME = "llm-appliance-gateway.service"
SYSTEMD_DIR = Path("/etc/systemd/system")
ENV_FILE = Path("/etc/llm-appliance/gateway.env")
APPLIED_PROFILE = "profile.yaml"  # under the profile's state_dir

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


@dataclass(frozen=True)
class ServiceResult:
    unit_path: Path
    profile_copy: Path
    changed: bool  # the unit or the profile copy changed, so the service was restarted


def unit_text(appliance_bin: Path, profile_copy: Path, env_file: Path = ENV_FILE) -> str:
    return f"""\
# Written by `appliance apply`; edit the profile and apply again instead of this file.
[Unit]
Description=llm-appliance gateway (OpenAI-compatible endpoint for this box)
After=network-online.target docker.service
Wants=network-online.target

[Service]
Type=exec
ExecStart={appliance_bin} gateway --profile {profile_copy}
# The remote API key (the profile names its variable) goes here, readable by root only.
EnvironmentFile=-{env_file}
Restart=always
RestartSec=2
# Each client connection is a descriptor, and each request in flight one more to an engine;
# systemd's default soft limit (1024) is reached by a few hundred busy clients. Near the limit
# the gateway closes idle connections first (ClientLimits in appliance/gateway/config.py).
LimitNOFILE=65536
NoNewPrivileges=yes
PrivateTmp=yes

[Install]
WantedBy=multi-user.target
"""


def systemd_present() -> bool:
    """True on a box booted with systemd (not in a container or a chroot)."""
    return Path("/run/systemd/system").is_dir()


def _systemctl(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemctl", *args], capture_output=True, text=True, check=False, timeout=60
    )


def install_gateway_service(
    profile_text: str,
    state_dir: Path,
    *,
    appliance_bin: Path,
    systemd_dir: Path = SYSTEMD_DIR,
    present: Callable[[], bool] = systemd_present,
    run: Runner = _systemctl,
) -> ServiceResult | None:
    """Keep the applied profile, write the unit, and (re)start it when anything changed.

    Returns None when the box has no systemd (then `appliance gateway --profile` is run by
    whatever supervises processes there). Raises `OperationFailedError` when systemctl fails.
    """
    if not present():
        return None
    profile_copy = state_dir / APPLIED_PROFILE
    unit_path = systemd_dir / UNIT_NAME
    changed = False
    for path, text, mode in (
        (profile_copy, profile_text, 0o600),
        (unit_path, unit_text(appliance_bin, profile_copy), 0o644),
    ):
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, text.encode(), mode=mode)
            changed = True
    steps = [["daemon-reload"], ["enable", UNIT_NAME]]
    steps.append(["restart", UNIT_NAME] if changed else ["start", UNIT_NAME])
    for step in steps:
        result = run(step)
        if result.returncode != 0:
            raise OperationFailedError(
                f"systemctl {' '.join(step)} failed: {result.stderr.strip() or result.stdout}",
                hint=f"see `journalctl -u {UNIT_NAME}`",
            )
    return ServiceResult(unit_path, profile_copy, changed)


def appliance_executable() -> Path:
    """The `appliance` script of this installation (beside the running interpreter)."""
    candidate = Path(sys.executable).parent / "appliance"
    return candidate if os.access(candidate, os.X_OK) else Path("/usr/local/bin/appliance")
