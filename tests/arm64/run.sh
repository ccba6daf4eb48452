#!/usr/bin/env bash
# `make test-arm64`: the cross-architecture checks in a Debian arm64 root under qemu-user.
#
#   tests/arm64/run.sh [HOST_PYTHON]
#
# 1. build the root once (build_root.sh; reused while tests/arm64/requirements.txt is unchanged);
# 2. on this x86 host: the reference sketches and sample results of every shipped card, and the
#    "different model" files (tests/arm64/reference.py);
# 3. copy the project into the root, pip install it into the root's venv, remove the source copy
#    of agent/ so that the tests import the installed package;
# 4. run tests/arm64 inside the root (chroot; /proc mounted, /sys deliberately NOT: binding the
#    host's /sys made onnxruntime segfault under qemu).  Any failure fails the run.
# Needs root.  ARM64_ROOT names the root's directory (default below, outside the git tree).
set -euo pipefail
cd "$(dirname "$0")/../.."
HOST_PY=${1:-.venv/bin/python}
ROOT=${ARM64_ROOT:-/var/cache/edgeproof/arm64-root-bookworm}
start=$(date +%s)

bash tests/arm64/build_root.sh "$ROOT" tests/arm64/requirements.txt

ref="$ROOT/work/x86-reference"
rm -rf "$ROOT/work"
mkdir -p "$ref" "$ROOT/work/edgeproof"
"$HOST_PY" tests/arm64/reference.py "$ref" --nonces 64

tar --exclude=./.venv --exclude=./.git --exclude=./models/build/.cache --exclude='*/__pycache__' \
    --exclude=./.mypy_cache --exclude=./.ruff_cache --exclude=./.pytest_cache --exclude='*.egg-info' \
    -cf - . | tar -xf - -C "$ROOT/work/edgeproof"

mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
trap 'umount "$ROOT/proc" 2>/dev/null || true' EXIT
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
in_root() { chroot "$ROOT" /usr/bin/env -i HOME=/root PATH=/opt/venv/bin:/usr/bin:/bin LANG=C.UTF-8 "$@"; }

echo "arm64: pip install the package into the root's venv"
in_root /opt/venv/bin/python -m pip install --quiet --no-deps --no-build-isolation /work/edgeproof
rm -rf "$ROOT/work/edgeproof/agent" "$ROOT/work/edgeproof/build"
in_root /opt/venv/bin/python -c "import agent, sys; assert '/opt/venv/' in agent.__file__, agent.__file__; print('arm64: agent from', agent.__file__)"

echo "arm64: tests/arm64 under qemu-aarch64"
in_root /bin/sh -c "cd /work/edgeproof && EDGEPROOF_X86_REFERENCE=/work/x86-reference \
    /opt/venv/bin/python -m pytest -q -s -p no:cacheprovider tests/arm64"
echo "arm64: done in $(( $(date +%s) - start )) s"
