#!/usr/bin/env bash
# Build (once) a Debian bookworm arm64 root for `make test-arm64` and keep it for reuse.
#
#   tests/arm64/build_root.sh ROOT REQUIREMENTS
#
# debootstrap fetches arm64 packages from Debian; qemu-user-static, registered with binfmt_misc
# (flag F: the interpreter is opened at registration, so the root needs no copy of it), runs the
# root's aarch64 binaries.  Then a venv at /opt/venv in the root gets the project's dependencies
# (REQUIREMENTS, a pip requirements file): the slow part, done once.  The project itself is
# installed on every run by run.sh.  A root is complete when ROOT/.edgeproof-root-ready exists and
# holds the sha256 of REQUIREMENTS; another requirements file rebuilds the venv, not the root.
# Needs root (debootstrap, chroot, mount), as CI has.
set -euo pipefail

ROOT=${1:?usage: build_root.sh ROOT REQUIREMENTS}
REQS=${2:?usage: build_root.sh ROOT REQUIREMENTS}
SUITE=bookworm
MIRROR=${ARM64_MIRROR:-http://deb.debian.org/debian}
READY="$ROOT/.edgeproof-root-ready"
want=$(sha256sum "$REQS" | cut -d' ' -f1)

if [ -f "$READY" ] && [ "$(cat "$READY")" = "$want" ]; then
    echo "arm64 root: reusing $ROOT"
    exit 0
fi
[ "$(id -u)" = "0" ] || { echo "arm64 root: needs root (debootstrap, chroot)"; exit 1; }

"$(dirname "$0")/binfmt.sh"

if [ ! -x "$ROOT/usr/bin/python3" ] || [ ! -f "$ROOT/.edgeproof-debootstrap-done" ]; then
    echo "arm64 root: debootstrap $SUITE into $ROOT (about 5 minutes)"
    rm -rf "$ROOT"
    mkdir -p "$ROOT"
    debootstrap --arch=arm64 --variant=minbase \
        --include=python3,python3-venv,python3-pip,ca-certificates \
        "$SUITE" "$ROOT" "$MIRROR"
    touch "$ROOT/.edgeproof-debootstrap-done"
fi

cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
# pip inside the root trusts what the host trusts (a site CA, if the host has one, included)
cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/host-ca-certificates.crt"
cp "$REQS" "$ROOT/tmp/arm64-requirements.txt"
mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
trap 'umount "$ROOT/proc" 2>/dev/null || true' EXIT
echo "arm64 root: pip install of the dependencies under emulation (about 5 minutes)"
rm -rf "$ROOT/opt/venv"
pip_env=(/usr/bin/env -i HOME=/root PATH=/usr/bin:/bin LANG=C.UTF-8
    PIP_CERT=/etc/ssl/certs/host-ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180)
chroot "$ROOT" "${pip_env[@]}" /usr/bin/python3 -m venv /opt/venv
chroot "$ROOT" "${pip_env[@]}" /opt/venv/bin/python -m pip install --quiet --upgrade pip 'setuptools>=68' wheel
chroot "$ROOT" "${pip_env[@]}" /opt/venv/bin/python -m pip install --quiet --only-binary=:all: -r /tmp/arm64-requirements.txt
echo "$want" > "$READY"
echo "arm64 root: ready at $ROOT"
