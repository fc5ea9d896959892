#!/usr/bin/env bash
# Set up llm-appliance on a Debian 12 / Ubuntu 22.04+ box.
#
#   ./install.sh          install the appliance into ./.venv and put `appliance` and
#                         `llm-appliance` on PATH; then check Docker, the NVIDIA driver and the
#                         NVIDIA Container Toolkit and print the exact commands for what is missing.
#   ./install.sh --dev    the same, editable, plus the test tools, Debian's docker.io and
#                         Debian's python3.11 (the tests build their engine doubles from it).
#   --force-links         point existing `appliance` links at this checkout even when they
#                         lead to another checkout that still exists (default: leave them).
#   --offline BUNDLE      install from the wheels inside BUNDLE (`appliance bundle create`) with
#                         no package index; each wheel is checked against the bundle's manifest.
#
# Idempotent: run it again at any time. It never changes the system Python and never installs
# GPU drivers: those need a reboot and a decision by the admin, so it prints the commands instead.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
venv=${LLM_APPLIANCE_VENV:-$here/.venv}
dev=0
force_links=0
offline=""

usage() {
    sed -n '2,16s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

while [ "$#" -gt 0 ]; do
    case $1 in
        --dev) dev=1 ;;
        --force-links) force_links=1 ;;
        --offline)
            [ "$#" -ge 2 ] || { echo "install.sh: --offline needs the bundle file" >&2; exit 2; }
            offline=$2
            shift
            ;;
        -h | --help) usage; exit 0 ;;
        *) echo "install.sh: unknown option '$1'" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
if [ -n "$offline" ]; then
    [ -f "$offline" ] || { echo "install.sh: the bundle '$offline' is not a file" >&2; exit 2; }
    [ "$dev" -eq 0 ] || { echo "install.sh: --offline does not combine with --dev" >&2; exit 2; }
fi

say() { printf '==> %s\n' "$*" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit "${2:-1}"; }

# Root, or sudo when we are not root and it is there; empty when neither (we then skip apt).
if [ "$(id -u)" -eq 0 ]; then
    as_root=""
elif command -v sudo >/dev/null 2>&1; then
    as_root="sudo"
else
    as_root="none"
fi

apt_updated=0
apt_install() {
    if [ "$as_root" = "none" ]; then
        die "need root to install Debian packages ($*); run as root or install sudo" 3
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        die "no apt-get: install $* with your distribution's package manager, then run again" 3
    fi
    if [ "$apt_updated" -eq 0 ]; then
        $as_root apt-get update -qq
        apt_updated=1
    fi
    say "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive $as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# ----------------------------------------------------------------------------- Python >= 3.11
find_python() {
    for candidate in python3.13 python3.12 python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

python=$(find_python || true)
if [ -z "$python" ]; then
    apt_install python3.11 python3.11-venv
    python=$(find_python) || die "Python 3.11 or newer is required and could not be installed" 3
fi

# ----------------------------------------------------------------------------- the virtualenv
if [ ! -x "$venv/bin/python" ]; then
    say "creating virtualenv $venv (with $python)"
    if ! "$python" -m venv "$venv" 2>/dev/null; then
        # Debian splits ensurepip out of the interpreter package.
        rm -rf "$venv"
        version=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
        apt_install "python$version-venv"
        "$python" -m venv "$venv"
    fi
fi
# pip, minus the warnings some hosts' pip configuration prints for every package it looks up.
pip_install() {
    "$venv/bin/python" -m pip install -q "$@" 2>&1 | { grep -v "^WARNING: Location '" || true; }
}
# The wheels of an air-gap bundle, each checked against the bundle's manifest (size, SHA-256,
# and the manifest's own entries digest) before pip sees it; pip then uses no index at all.
offline_wheels() {
    "$python" - "$1" "$2" <<'PY'
import hashlib, json, sys, tarfile
bundle, into = sys.argv[1], sys.argv[2]
try:
    with tarfile.open(bundle, mode="r:") as tar:
        infos = tar.getmembers()
        if not infos or infos[-1].name != "MANIFEST.json":
            sys.exit(f"{bundle}: no manifest at the end (truncated bundle?)")
        manifest = json.loads(tar.extractfile(infos[-1]).read())
        canon = json.dumps(
            {"v": manifest["appliance_version"], "t": manifest["target"], "m": manifest["members"]},
            sort_keys=True, separators=(",", ":"),
        )
        if hashlib.sha256(canon.encode()).hexdigest() != manifest["entries_sha256"]:
            sys.exit(f"{bundle}: its manifest was changed (entries do not match its digest)")
        here = f"{sys.version_info[0]}.{sys.version_info[1]}"
        if manifest["target"]["python"] != here:
            sys.exit(
                f"{bundle} holds wheels for Python {manifest['target']['python']}, and this "
                f"install uses Python {here}: create the bundle with that Python"
            )
        wheels = {m["path"]: m for m in manifest["members"] if m["kind"] == "wheel"}
        if not wheels:
            sys.exit(f"{bundle} holds no wheels (it was made with --no-wheels)")
        found = set()
        for info in infos:
            member = wheels.get(info.name)
            if member is None:
                continue
            name = info.name.rsplit("/", 1)[-1]
            if "/" in info.name[len("wheels/"):] or not name.endswith(".whl"):
                sys.exit(f"bundle member {info.name}: unsafe wheel name")
            data = tar.extractfile(info).read()
            if len(data) != member["size"] or hashlib.sha256(data).hexdigest() != member["sha256"]:
                sys.exit(f"bundle member {info.name} was altered or truncated")
            with open(f"{into}/{name}", "wb") as out:
                out.write(data)
            found.add(info.name)
        if found != set(wheels):
            sys.exit(f"bundle member {sorted(set(wheels) - found)[0]} is missing")
except (OSError, tarfile.TarError, ValueError, KeyError, EOFError) as exc:
    sys.exit(f"{bundle}: not a readable bundle ({exc})")
PY
}

if [ -n "$offline" ]; then
    wheelhouse=$(mktemp -d)
    trap 'rm -rf "$wheelhouse"' EXIT
    say "checking the wheels in $offline"
    python="$venv/bin/python" offline_wheels "$offline" "$wheelhouse" || die "the bundle's wheels cannot be used; nothing was installed" 4
    say "installing llm-appliance from the bundle (no index)"
    if ! "$venv/bin/python" -m pip install -q --no-index --find-links "$wheelhouse" llm-appliance \
        2>&1 | { grep -v "^WARNING: Location '" || true; }; then
        die "pip could not install from the bundle's wheels; see its message above" 1
    fi
elif [ "$dev" -eq 1 ]; then
    pip_install --upgrade pip
    say "installing llm-appliance (editable) with the test tools"
    pip_install -e "$here[dev]"
else
    pip_install --upgrade pip
    say "installing llm-appliance"
    pip_install "$here"
fi

# ----------------------------------------------------------------------------- dev: test engine
if [ "$dev" -eq 1 ]; then
    # The integration tests run a private dockerd, and build their engine doubles from Debian's
    # own python3.11 (copied into an image, since no registry is reachable).
    need=()
    command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
    # `compose/` is checked with Debian's docker-compose (`docker-compose config`).
    command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
    # Image pulls are tested against a private registry on 127.0.0.1.
    command -v docker-registry >/dev/null 2>&1 || need+=(docker-registry)
    command -v openssl >/dev/null 2>&1 || need+=(openssl)  # the gateway's TLS test certificate
    [ -x /usr/bin/python3.11 ] || need+=(python3.11)
    command -v ldd >/dev/null 2>&1 || need+=(libc-bin)
    if [ "${#need[@]}" -gt 0 ]; then
        apt_install "${need[@]}"
    fi
fi

# ----------------------------------------------------------------------------- PATH
kept=0
# Put a link to $1 at $2 (with $3, e.g. sudo, in front). A link that leads to another checkout
# that still exists is that checkout's, so it is left alone unless --force-links; a dangling one
# (its venv is gone) is re-pointed. Returns 1 when it left the link as it was.
place_link() {
    local target=$1 link=$2 runner=${3:-}
    if [ -L "$link" ] && [ "$(readlink "$link")" != "$target" ] && [ -e "$link" ] \
        && [ "$force_links" -eq 0 ]; then
        warn "$link leads to $(readlink "$link") (another checkout); left as it is." \
            "Run ./install.sh --force-links to point it at $target"
        return 1
    fi
    if [ -e "$link" ] && [ ! -L "$link" ] && [ "$force_links" -eq 0 ]; then
        warn "$link exists and is not a link; left as it is (./install.sh --force-links replaces it)"
        return 1
    fi
    $runner ln -sfn "$target" "$link"
}

if [ "$as_root" = "" ] || { [ "$as_root" = "sudo" ] && sudo -n true 2>/dev/null; }; then
    bin_dir=/usr/local/bin
    for tool in appliance llm-appliance; do
        place_link "$venv/bin/$tool" "$bin_dir/$tool" "$as_root" || kept=1
    done
else
    bin_dir=$HOME/.local/bin
    mkdir -p "$bin_dir"
    for tool in appliance llm-appliance; do
        place_link "$venv/bin/$tool" "$bin_dir/$tool" || kept=1
    done
    case ":$PATH:" in
        *":$bin_dir:"*) ;;
        *) warn "$bin_dir is not on PATH: add  export PATH=\"$bin_dir:\$PATH\"  to your shell profile" ;;
    esac
fi
if [ "$kept" -eq 0 ]; then
    say "installed: $bin_dir/appliance and $bin_dir/llm-appliance -> $venv/bin"
else
    say "installed into $venv/bin; $bin_dir keeps its links (see the warning above)"
fi

# ----------------------------------------------------------------------------- readiness
# The fixes for an engine that does not answer, for user id $1: the docker group only helps a
# user who is not root (as root, $USER is root and the group changes nothing).
docker_fix_lines() {
    echo "systemctl enable --now docker"
    if [ "$1" -ne 0 ]; then
        echo "usermod -aG docker \"\$USER\"        # then log in again, or run the appliance as root"
    fi
}

# What the box still needs before it can serve. Printed, never done silently.
problems=0
report() { problems=$((problems + 1)); printf '\n[%d] %s\n' "$problems" "$1" >&2; shift; for line in "$@"; do printf '      %s\n' "$line" >&2; done; }

if ! command -v docker >/dev/null 2>&1; then
    report "Docker is not installed." \
        "apt-get install -y docker.io        # Debian's engine, or Docker CE from Docker's apt repository" \
        "systemctl enable --now docker"
elif ! docker info >/dev/null 2>&1; then
    mapfile -t fixes < <(docker_fix_lines "$(id -u)")
    report "The Docker engine is not reachable (not running, or no permission on its socket)." \
        "${fixes[@]}"
fi

has_gpu=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    has_gpu=1
elif lspci 2>/dev/null | grep -qi 'nvidia'; then
    report "An NVIDIA GPU is present but its driver is not loaded." \
        "apt-get install -y nvidia-driver     # Debian (non-free); Ubuntu: ubuntu-drivers install" \
        "reboot, then check with: nvidia-smi"
else
    report "No NVIDIA GPU or driver found: nothing can be served on this machine." \
        "To explore what the appliance would do on a GPU box: llm-appliance --simulate rtx4090"
fi

if [ "$has_gpu" -eq 1 ] && command -v docker >/dev/null 2>&1; then
    if ! docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q nvidia &&
        ! ls /etc/cdi/nvidia*.yaml /var/run/cdi/nvidia*.yaml >/dev/null 2>&1; then
        report "The NVIDIA Container Toolkit is missing: containers cannot see the GPUs." \
            "curl -fsSL https://nvidia.github.io/libnvidia-container/gpgkey | gpg --dearmor -o /usr/share/keyrings/nvidia-container-toolkit-keyring.gpg" \
            "curl -fsSL https://nvidia.github.io/libnvidia-container/stable/deb/nvidia-container-toolkit.list | sed 's#deb https://#deb [signed-by=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg] https://#' > /etc/apt/sources.list.d/nvidia-container-toolkit.list" \
            "apt-get update && apt-get install -y nvidia-container-toolkit" \
            "nvidia-ctk runtime configure --runtime=docker && systemctl restart docker"
    fi
fi

if [ "$problems" -eq 0 ]; then
    say "the box is ready: run llm-appliance"
else
    printf '\n' >&2
    say "installed; $problems thing(s) above still need doing before this box can serve"
    say "llm-appliance and 'appliance detect' show the same report at any time"
fi
