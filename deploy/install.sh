#!/usr/bin/env bash
# Install or upgrade the edgeproof device agent on Debian / Raspberry Pi OS as a systemd service.
# Idempotent: run it again from a newer checkout to upgrade; the config and the device key are
# never overwritten. `deploy/install.sh --help` explains the options.
set -euo pipefail

usage() {
	cat <<'EOF'
Usage: sudo deploy/install.sh [OPTIONS]

Install (or upgrade) the edgeproof device agent from the checkout this script is in:

  1. check Python >= 3.11 and python3-venv
  2. create the system user "edgeproof" (supplementary group "video", for cameras and GPUs)
  3. create /opt/edgeproof/venv and pip-install the agent into it, with the extras that fit
     the board: "litert" on 64-bit ARM boards; on Jetson a hint for NVIDIA's onnxruntime-gpu
  4. copy models/ and firmware_profiles/ to /usr/share/edgeproof/
  5. write /etc/edgeproof/agent.toml from deploy/agent.example.toml, only if it does not exist
  6. create the device key /var/lib/edgeproof/device-key.json (mode 0600), only if it does not exist
  7. install /etc/systemd/system/edgeproof.service, then, when systemd is PID 1,
     systemctl daemon-reload and enable --now (restart when it is already running)

Options:
  --prefix DIR   stage everything under DIR (DIR/etc/edgeproof, DIR/var/lib/edgeproof, ...)
                 for tests and packaging; never runs useradd, chown or systemctl, and the
                 config keeps the real paths. A venv made under DIR hard-codes DIR in its
                 scripts, and a key made there belongs to that tree: do not ship one key to
                 several devices.
  --no-venv      do not create the venv or run pip (no network needed); edgeproof commands run
                 with $EDGEPROOF_BIN, else `edgeproof` on PATH, else the checkout's .venv
  --no-start     install and enable the unit but do not start or restart it
  --extras LIST  pip extras instead of the detected ones, e.g. --extras litert or --extras ""
  --dry-run      print what would be done; change nothing
  -h, --help     show this help

Environment: PYTHON (default python3) is the interpreter the venv is made from.

After installing: edit /etc/edgeproof/agent.toml ([mqtt] host, username, password_file,
[coordinator] pubkey, [inference] source), check it with
  /opt/edgeproof/venv/bin/edgeproof config check /etc/edgeproof/agent.toml
then `sudo systemctl restart edgeproof` and `journalctl -u edgeproof -f`. See docs/operations.md.
EOF
}

die() {
	printf 'install.sh: error: %s\n' "$1" >&2
	if [ $# -ge 2 ]; then
		printf '  fix: %s\n' "$2" >&2
	fi
	exit 1
}

step() { printf '==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }

# run CMD...: execute, or only print it with --dry-run.
run() {
	if [ "$DRY_RUN" = 1 ]; then
		printf '    would run:'
		printf ' %q' "$@"
		printf '\n'
		return 0
	fi
	"$@"
}

ORIG_ARGS="$*"
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SRC=$(cd "$SCRIPT_DIR/.." && pwd)

DEST=""
NO_VENV=0
NO_START=0
DRY_RUN=0
EXTRAS=auto
PYTHON=${PYTHON:-python3}

while [ $# -gt 0 ]; do
	case "$1" in
	-h | --help)
		usage
		exit 0
		;;
	--prefix)
		[ $# -ge 2 ] || die "--prefix needs a directory" "deploy/install.sh --prefix /tmp/stage --no-venv"
		DEST=$2
		shift 2
		;;
	--prefix=*)
		DEST=${1#--prefix=}
		shift
		;;
	--extras)
		[ $# -ge 2 ] || die "--extras needs a list (may be empty)" "deploy/install.sh --extras litert"
		EXTRAS=$2
		shift 2
		;;
	--extras=*)
		EXTRAS=${1#--extras=}
		shift
		;;
	--no-venv)
		NO_VENV=1
		shift
		;;
	--no-start)
		NO_START=1
		shift
		;;
	--dry-run | -n)
		DRY_RUN=1
		shift
		;;
	*)
		die "unknown option '$1'" "deploy/install.sh --help"
		;;
	esac
done

if [ -n "$DEST" ]; then
	case "$DEST" in
	/) die "--prefix / is a real install" "run deploy/install.sh without --prefix" ;;
	/*) ;;
	*) DEST="$(pwd)/$DEST" ;;
	esac
	DEST=${DEST%/}
fi

# Target paths (as the running system sees them; staged under $DEST with --prefix).
# They must match deploy/systemd/edgeproof.service and deploy/agent.example.toml.
VENV_DIR=/opt/edgeproof/venv
CONF_DIR=/etc/edgeproof
CONF=$CONF_DIR/agent.toml
STATE_DIR=/var/lib/edgeproof
KEY=$STATE_DIR/device-key.json
SHARE_DIR=/usr/share/edgeproof
DOC_DIR=/usr/share/doc/edgeproof
UNIT_DIR=/etc/systemd/system
UNIT_NAME=edgeproof.service
USER_NAME=edgeproof

UNIT_SRC=$SRC/deploy/systemd/$UNIT_NAME
EXAMPLE_SRC=$SRC/deploy/agent.example.toml

# ------------------------------------------------------------------ checks

step "checking the checkout in $SRC"
for required in "$SRC/setup.cfg" "$SRC/agent/__init__.py" "$UNIT_SRC" "$EXAMPLE_SRC" \
	"$SRC/models" "$SRC/firmware_profiles"; do
	[ -e "$required" ] || die "$required is missing: run install.sh from a complete edgeproof checkout" \
		"git clone the repository again, then: sudo deploy/install.sh"
done
grep -q "^ExecStart=$VENV_DIR/bin/edgeproof .*--config $CONF\$" "$UNIT_SRC" ||
	die "$UNIT_SRC does not run $VENV_DIR/bin/edgeproof with --config $CONF" \
		"restore the unit from git: git checkout -- deploy/systemd/$UNIT_NAME"

if [ -n "${TERMUX_VERSION:-}" ]; then
	die "this is Termux: Android has no systemd" "follow deploy/termux/README.md instead"
fi

if [ -z "$DEST" ] && [ "$DRY_RUN" = 0 ] && [ "$(id -u)" != 0 ]; then
	die "a system install needs root (user, /opt, /etc, systemd)" "sudo $0 $ORIG_ARGS"
fi

command -v "$PYTHON" >/dev/null 2>&1 ||
	die "$PYTHON not found" "sudo apt-get install python3 python3-venv"
PY_VERSION=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) ||
	die "$PYTHON does not run" "sudo apt-get install --reinstall python3"
[[ "$PY_VERSION" =~ ^[0-9]+\.[0-9]+$ ]] || die "cannot tell the version of $PYTHON (got '$PY_VERSION')" \
	"run with PYTHON=/usr/bin/python3"
PY_MAJOR=${PY_VERSION%%.*}
PY_MINOR=${PY_VERSION#*.}
if [ "$PY_MAJOR" -lt 3 ] || { [ "$PY_MAJOR" -eq 3 ] && [ "$PY_MINOR" -lt 11 ]; }; then
	die "edgeproof needs Python >= 3.11; $PYTHON is $PY_VERSION" \
		"upgrade to Debian 12 / Raspberry Pi OS bookworm (Python 3.11), or run with PYTHON=/path/to/python3.11"
fi
note "Python $PY_VERSION ($(command -v "$PYTHON"))"

if [ "$NO_VENV" = 0 ]; then
	"$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1 ||
		die "python3-venv is missing (the venv module cannot bootstrap pip)" "sudo apt-get install python3-venv"
fi

# The board decides the pip extras. The agent itself detects its firmware profile at run time
# (edgeproof profile detect); this only needs to know ARM / Jetson / 32-bit.
ARCH=$(uname -m)
BITS=$("$PYTHON" -c 'import struct; print(struct.calcsize("P") * 8)' 2>/dev/null || echo unknown)
DT_MODEL=""
if [ -r /proc/device-tree/model ]; then
	DT_MODEL=$(tr -d '\0' </proc/device-tree/model)
fi
BOARD=other
if [ -e /etc/nv_tegra_release ] || [[ "$DT_MODEL" == *Jetson* ]]; then
	BOARD=jetson
elif [[ "$ARCH" == aarch64 || "$ARCH" == arm64 || "$ARCH" == armv* ]]; then
	if [ "$BITS" = 64 ]; then BOARD=arm64; else BOARD=arm32; fi
elif [[ "$ARCH" == x86_64 || "$ARCH" == amd64 ]]; then
	BOARD=x86_64
fi
note "board: ${DT_MODEL:-unknown model} ($ARCH, ${BITS}-bit Python) -> $BOARD"

if [ "$EXTRAS" = auto ]; then
	case "$BOARD" in
	arm64) EXTRAS=litert ;;
	*) EXTRAS="" ;;
	esac
fi
if [ "$BOARD" = arm32 ] && [ "$NO_VENV" = 0 ]; then
	die "32-bit ARM userland: onnxruntime and ai-edge-litert publish no 32-bit ARM wheels" \
		"install the 64-bit (arm64) Raspberry Pi OS, or use --no-venv with a runtime you built yourself"
fi

if [ "$NO_VENV" = 1 ]; then
	EDGEPROOF=${EDGEPROOF_BIN:-}
	if [ -z "$EDGEPROOF" ]; then
		EDGEPROOF=$(command -v edgeproof 2>/dev/null || true)
	fi
	if [ -z "$EDGEPROOF" ] && [ -x "$SRC/.venv/bin/edgeproof" ]; then
		EDGEPROOF=$SRC/.venv/bin/edgeproof
	fi
	if [ -z "$EDGEPROOF" ] || [ ! -x "$EDGEPROOF" ]; then
		die "--no-venv needs an installed edgeproof command (none in \$EDGEPROOF_BIN, on PATH or in $SRC/.venv)" \
			"EDGEPROOF_BIN=/path/to/edgeproof deploy/install.sh --no-venv ..., or drop --no-venv"
	fi
else
	EDGEPROOF=$DEST$VENV_DIR/bin/edgeproof
fi

if [ -n "$DEST" ]; then
	step "staging under $DEST (no useradd, chown or systemctl)"
fi
if [ "$DRY_RUN" = 1 ]; then
	step "dry run: nothing is changed"
fi
note "agent:  $DEST$VENV_DIR/bin/edgeproof"
note "config: $DEST$CONF"
note "key:    $DEST$KEY"
note "data:   $DEST$SHARE_DIR"
note "unit:   $DEST$UNIT_DIR/$UNIT_NAME"

# mkd MODE OWNER GROUP DIR: a directory with that mode (owner/group only on a real install).
mkd() {
	if [ -n "$DEST" ]; then
		run install -d -m "$1" "$DEST$4"
	else
		run install -d -m "$1" -o "$2" -g "$3" "$4"
	fi
}

# put MODE OWNER GROUP SRC DST: copy one file (owner/group only on a real install).
put() {
	if [ -n "$DEST" ]; then
		run install -m "$1" "$4" "$DEST$5"
	else
		run install -m "$1" -o "$2" -g "$3" "$4" "$5"
	fi
}

# ------------------------------------------------------------------ user

if [ -z "$DEST" ]; then
	step "system user $USER_NAME"
	command -v useradd >/dev/null 2>&1 || die "useradd not found" "sudo apt-get install passwd"
	if ! getent group video >/dev/null; then
		run groupadd --system video
	fi
	if ! getent passwd "$USER_NAME" >/dev/null; then
		run useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
			--shell /usr/sbin/nologin --comment "edgeproof device agent" --groups video "$USER_NAME"
	elif ! id -nG "$USER_NAME" | tr ' ' '\n' | grep -qx video; then
		run usermod --append --groups video "$USER_NAME"
	else
		note "exists, in group video"
	fi
fi

# ------------------------------------------------------------------ directories

step "directories"
mkd 0755 root root /opt/edgeproof
mkd 0750 root "$USER_NAME" "$CONF_DIR"
mkd 0750 "$USER_NAME" "$USER_NAME" "$STATE_DIR"
mkd 0755 root root "$SHARE_DIR"
mkd 0755 root root "$SHARE_DIR/models"
mkd 0755 root root "$SHARE_DIR/firmware_profiles"
mkd 0755 root root "$DOC_DIR"
if [ -n "$DEST" ]; then
	run mkdir -p "$DEST$UNIT_DIR"
fi

# ------------------------------------------------------------------ venv + package

if [ "$NO_VENV" = 1 ]; then
	step "--no-venv: using $EDGEPROOF"
	if [ -z "$DEST" ] && [ ! -x "$VENV_DIR/bin/edgeproof" ]; then
		note "warning: the unit runs $VENV_DIR/bin/edgeproof, which does not exist;"
		note "create it (drop --no-venv) or override ExecStart= with: systemctl edit $UNIT_NAME"
	fi
else
	step "venv $DEST$VENV_DIR and the edgeproof package (pip, needs network)"
	if [ ! -x "$DEST$VENV_DIR/bin/python" ]; then
		run "$PYTHON" -m venv "$DEST$VENV_DIR"
	else
		note "venv exists: upgrading the package in it"
	fi
	SPEC=$SRC
	if [ -n "$EXTRAS" ]; then
		SPEC="${SRC}[${EXTRAS}]"
	fi
	note "extras: ${EXTRAS:-none}"
	run "$DEST$VENV_DIR/bin/python" -m pip install --disable-pip-version-check --upgrade "$SPEC"
fi
if [ "$BOARD" = jetson ]; then
	note "Jetson: the venv has the CPU onnxruntime from PyPI. For TensorRT/CUDA install NVIDIA's"
	note "onnxruntime-gpu wheel for your JetPack and Python: see deploy/jetson/README.md"
fi

# ------------------------------------------------------------------ data files

step "models, firmware profiles, docs -> $DEST$SHARE_DIR"
shopt -s nullglob
for file in "$SRC"/models/*.toml "$SRC"/models/*.onnx "$SRC"/models/*.tflite "$SRC"/models/*.txt; do
	put 0644 root root "$file" "$SHARE_DIR/models/$(basename "$file")"
done
for file in "$SRC"/firmware_profiles/*.toml; do
	put 0644 root root "$file" "$SHARE_DIR/firmware_profiles/$(basename "$file")"
done
shopt -u nullglob
put 0644 root root "$EXAMPLE_SRC" "$SHARE_DIR/agent.example.toml"
if [ -e "$SRC/docs/operations.md" ]; then
	put 0644 root root "$SRC/docs/operations.md" "$DOC_DIR/operations.md"
fi

# ------------------------------------------------------------------ config

step "config $DEST$CONF"
if [ -e "$DEST$CONF" ]; then
	note "exists: kept (never overwritten); compare with $SHARE_DIR/agent.example.toml after upgrades"
else
	put 0640 root "$USER_NAME" "$EXAMPLE_SRC" "$CONF"
	note "written from deploy/agent.example.toml: edit [mqtt] and [coordinator] before relying on it"
fi
run "$EDGEPROOF" config check "$DEST$CONF"

# ------------------------------------------------------------------ device key

step "device key $DEST$KEY"
if [ -e "$DEST$KEY" ]; then
	note "exists: kept (never overwritten)"
	if [ "$DRY_RUN" = 0 ]; then
		note "device id: $("$EDGEPROOF" keys show --key "$DEST$KEY")"
	fi
else
	run "$EDGEPROOF" keys init --key "$DEST$KEY"
	if [ -z "$DEST" ]; then
		run chown "$USER_NAME:$USER_NAME" "$KEY"
	fi
fi

# ------------------------------------------------------------------ systemd

step "systemd unit $DEST$UNIT_DIR/$UNIT_NAME"
put 0644 root root "$UNIT_SRC" "$UNIT_DIR/$UNIT_NAME"
if [ -n "$DEST" ]; then
	note "--prefix: systemctl not run"
elif [ ! -d /run/systemd/system ] || [ "$(cat /proc/1/comm 2>/dev/null)" != systemd ]; then
	note "systemd is not PID 1 here: the unit is installed but not enabled or started."
	note "Run the agent by hand as the edgeproof user, e.g.:"
	note "  runuser -u $USER_NAME -- $VENV_DIR/bin/edgeproof run --config $CONF"
else
	run systemctl daemon-reload
	if [ "$NO_START" = 1 ]; then
		run systemctl enable "$UNIT_NAME"
		note "--no-start: start it with: systemctl start $UNIT_NAME"
	elif systemctl is-active --quiet "$UNIT_NAME"; then
		run systemctl enable "$UNIT_NAME"
		run systemctl restart "$UNIT_NAME"
	else
		run systemctl enable --now "$UNIT_NAME"
	fi
fi

step "done"
if [ -z "$DEST" ]; then
	note "check:  sudo -u $USER_NAME $VENV_DIR/bin/edgeproof doctor --config $CONF"
	note "status: systemctl status $UNIT_NAME; $VENV_DIR/bin/edgeproof status --config $CONF"
	note "logs:   journalctl -u $UNIT_NAME -f"
fi
