"""TLS for the gateway in tests: a self-signed certificate for 127.0.0.1 for the tests that run
it over HTTPS, and a profile that names TLS files for the tests that only read the profile."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from appliance.profile import Profile, TlsSpec

CERT_FILE = Path("/etc/llm-appliance/tls/cert.pem")
KEY_FILE = Path("/etc/llm-appliance/tls/key.pem")


def with_gateway_tls(profile: Profile) -> Profile:
    """`profile` with spec.gateway.tls naming CERT_FILE and KEY_FILE (neither need exist)."""
    tls = TlsSpec.model_construct(cert_file=CERT_FILE, key_file=KEY_FILE)
    gateway = profile.spec.gateway.model_copy(update={"tls": tls})
    return profile.model_copy(update={"spec": profile.spec.model_copy(update={"gateway": gateway})})


def self_signed(root: Path) -> None:
    """Write `root/cert.pem` and `root/key.pem` (0600), valid for IP 127.0.0.1."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is needed to make a test certificate (Debian package openssl)")
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(root / "key.pem"), "-out", str(root / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    (root / "key.pem").chmod(0o600)
