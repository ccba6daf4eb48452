#!/usr/bin/env bash
# Make sure the kernel runs aarch64 binaries through qemu-user-static (binfmt_misc).
set -euo pipefail
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    update-binfmts --enable qemu-aarch64
fi
grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 || { echo "binfmt: qemu-aarch64 is registered but disabled"; exit 1; }
grep -q '^flags: .*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 || { echo "binfmt: qemu-aarch64 lacks flag F (fix-binary); reinstall qemu-user-static"; exit 1; }
