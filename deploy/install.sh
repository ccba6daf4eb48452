#!/usr/bin/env bash
# Install or upgrade the edgeproof device agent on Debian / Raspberry Pi OS as a systemd service.
# Idempotent: run it again from a newer checkout to upgrade; the config and the device key are
# never overwritten (only the [coordinator] pubkey line, when --coordinator-key is given). It never
# follows a symbolic link where it expects a file or folder of its own, and the device key is
# created by the agent's user, so nothing the agent can plant in its state folder makes root
# write or chown another file. `deploy/install.sh --help` explains the options.
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
  5. write /etc/edgeproof/agent.toml from deploy/agent.example.toml, only if it does not exist;
     with --coordinator-key, pin that key in its [coordinator] pubkey (also in an existing one)
  6. create the device key /var/lib/edgeproof/device-key.json (mode 0600) as the user
     "edgeproof", only if it does not exist
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
  --coordinator-key BASE58
                 pin the coordinator's public key (base58, 32 bytes) in [coordinator] pubkey;
                 re-run with another key to change the pin. Without it an existing pin is
                 kept; with no pin at all the agent refuses every coordinator-signed message
                 (beacons, challenges, verdicts, vouchers) until one is set
  --dry-run      print what would be done; change nothing
  -h, --help     show this help

Environment: PYTHON (default python3) is the interpreter the venv is made from;
COORDINATOR_KEY is --coordinator-key (the option wins).

A symbolic link where install.sh expects its own file or folder (the config, the state
folder, the device key, ...) is refused, never followed: remove it and run install.sh again.

After installing: edit /etc/edgeproof/agent.toml ([mqtt] host, username, password_file,
[inference] source; [coordinator] pubkey unless --coordinator-key set it), check it with
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
warn() { printf 'install.sh: warning: %s\n' "$*" >&2; }

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
COORD_KEY=${COORDINATOR_KEY:-}

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
	--coordinator-key)
		[ $# -ge 2 ] || die "--coordinator-key needs the coordinator's base58 public key" \
			"deploy/install.sh --coordinator-key <base58 key your coordinator publishes>"
		COORD_KEY=$2
		shift 2
		;;
	--coordinator-key=*)
		COORD_KEY=${1#--coordinator-key=}
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

# base58_bytes KEY: how many bytes KEY decodes to in base58 (Bitcoin/Solana alphabet), or
# "invalid" when it holds a character outside the alphabet. Python's stdlib only: the agent's
# venv may not exist yet.
base58_bytes() {
	"$PYTHON" - "$1" <<'PY'
import sys

ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
text = sys.argv[1]
if not text or any(c not in ALPHABET for c in text):
    print("invalid")
    sys.exit(0)
number = 0
for c in text:
    number = number * 58 + ALPHABET.index(c)
zeros = len(text) - len(text.lstrip("1"))
print(zeros + (number.bit_length() + 7) // 8)
PY
}

if [ -n "$COORD_KEY" ]; then
	COORD_BYTES=$(base58_bytes "$COORD_KEY") || die "$PYTHON cannot check the coordinator key"
	if [ "$COORD_BYTES" = invalid ]; then
		die "--coordinator-key '$COORD_KEY' is not base58 (allowed: 1-9 A-H J-N P-Z a-k m-z; no 0 O I l)" \
			"copy the coordinator's public key exactly as your coordinator publishes it"
	elif [ "$COORD_BYTES" != 32 ]; then
		die "--coordinator-key '$COORD_KEY' decodes to $COORD_BYTES bytes, not the 32 of an ed25519 public key" \
			"copy the coordinator's public key exactly as your coordinator publishes it"
	fi
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

# no_link PATH...: refuse (before anything is changed) a symbolic link where install.sh expects a
# file or folder of its own. Following one would let whoever planted it (the agent owns its state
# folder) make this root script chmod, chown or write another file, e.g. /etc/shadow.
no_link() {
	local path
	for path in "$@"; do
		if [ -L "$path" ]; then
			die "$path is a symbolic link (to $(readlink -- "$path")); install.sh never follows one" \
				"look at what planted it, remove the link (rm -- '$path') and run install.sh again"
		fi
	done
}
no_link "$DEST/opt/edgeproof" "$DEST$VENV_DIR" "$DEST$CONF_DIR" "$DEST$CONF" "$DEST$STATE_DIR" \
	"$DEST$KEY" "$DEST$SHARE_DIR" "$DEST$SHARE_DIR/models" "$DEST$SHARE_DIR/firmware_profiles" \
	"$DEST$DOC_DIR"
for existing in "$DEST$CONF" "$DEST$KEY"; do
	if [ -e "$existing" ] && [ ! -f "$existing" ]; then
		die "$existing exists but is not a regular file" "move it away and run install.sh again"
	fi
done

# as_agent CMD...: run CMD as the agent's user (from /, which it can read), so that what it
# creates in the agent-owned state folder is the agent's from the start: no chown needed.
# With --prefix (no user is made) it runs as the caller.
as_agent() {
	if [ -n "$DEST" ]; then
		run "$@"
	else
		run runuser -u "$USER_NAME" -- env -C / "$@"
	fi
}

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
	command -v runuser >/dev/null 2>&1 || die "runuser not found" "sudo apt-get install util-linux"
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
	note "written from deploy/agent.example.toml: edit [mqtt] before relying on it"
fi

# coordinator_pin FILE: the [coordinator] pubkey of a TOML config ("" when unset).
coordinator_pin() {
	"$PYTHON" - "$1" <<'PY'
import sys
import tomllib

with open(sys.argv[1], "rb") as handle:
    data = tomllib.load(handle)
section = data.get("coordinator", {})
print(section.get("pubkey", "") if isinstance(section, dict) else "")
PY
}

# set_coordinator_pin FILE KEY: rewrite FILE with [coordinator] pubkey = KEY (the line replaced,
# or added to the section, or the section added), same owner and mode, by an atomic rename.
set_coordinator_pin() {
	local file=$1 key=$2 tmp
	tmp=$(mktemp "$(dirname "$file")/.agent.toml.XXXXXX")
	if ! awk -v key="$key" '
		function pin() { print "pubkey = \"" key "\""; done = 1 }
		/^[ \t]*\[/ {
			if (in_section && !done) pin()
			in_section = ($0 ~ /^[ \t]*\[coordinator\][ \t]*(#.*)?$/)
		}
		in_section && /^[ \t]*pubkey[ \t]*=/ { if (!done) pin(); next }
		{ print }
		END {
			if (in_section && !done) pin()
			if (!done) { print ""; print "[coordinator]"; pin() }
		}' "$file" >"$tmp"; then
		rm -f -- "$tmp"
		die "cannot rewrite $file"
	fi
	chmod 0640 "$tmp"
	if [ -z "$DEST" ]; then
		chown "root:$USER_NAME" "$tmp"
	fi
	mv -f -- "$tmp" "$file"
}

if [ -e "$DEST$CONF" ]; then
	PIN_SOURCE=$DEST$CONF
else
	PIN_SOURCE=$EXAMPLE_SRC # --dry-run of a first install: the file it would write
fi
PINNED=$(coordinator_pin "$PIN_SOURCE") ||
	die "$PIN_SOURCE is not valid TOML" "edgeproof config check $PIN_SOURCE names the line"
if [ -n "$COORD_KEY" ] && [ "$COORD_KEY" = "$PINNED" ]; then
	note "coordinator key pinned: $COORD_KEY (unchanged)"
elif [ -n "$COORD_KEY" ]; then
	if [ -n "$PINNED" ]; then
		note "coordinator key changes from $PINNED"
	fi
	if [ "$DRY_RUN" = 1 ]; then
		note "would set [coordinator] pubkey = \"$COORD_KEY\" in $DEST$CONF"
	else
		set_coordinator_pin "$DEST$CONF" "$COORD_KEY"
		[ "$(coordinator_pin "$DEST$CONF")" = "$COORD_KEY" ] ||
			die "the coordinator key did not land in $DEST$CONF" "set [coordinator] pubkey by hand"
		note "coordinator key pinned: $COORD_KEY"
	fi
elif [ -n "$PINNED" ]; then
	note "coordinator key pinned: $PINNED (kept; --coordinator-key changes it)"
else
	warn "no coordinator key is pinned ([coordinator] pubkey is empty in $DEST$CONF):"
	warn "the agent refuses EVERY coordinator-signed message (beacons, challenges, verdicts,"
	warn "vouchers; reason unpinned_coordinator) until one is. It still proves and heartbeats."
	warn "Pin it: deploy/install.sh --coordinator-key <base58 key>, or set [coordinator] pubkey"
	warn "in $CONF and restart the service."
fi
run "$EDGEPROOF" config check "$DEST$CONF"

# ------------------------------------------------------------------ device key

step "device key $DEST$KEY"
# Made and read by the agent's user: root never writes, reads or chowns a path in the folder the
# agent owns. Checked again here: the agent may have planted a link since the first check.
no_link "$DEST$STATE_DIR" "$DEST$KEY"
if [ -z "$DEST" ] && [ "$DRY_RUN" = 0 ] && ! runuser -u "$USER_NAME" -- test -x "$EDGEPROOF"; then
	die "the $USER_NAME user cannot run $EDGEPROOF" \
		"drop --no-venv, or point EDGEPROOF_BIN at an edgeproof outside /root that $USER_NAME can run"
fi
if [ -e "$DEST$KEY" ]; then
	[ -f "$DEST$KEY" ] || die "$DEST$KEY exists but is not a regular file" "move it away and run install.sh again"
	note "exists: kept (never overwritten)"
	if [ "$DRY_RUN" = 0 ]; then
		note "device id: $(as_agent "$EDGEPROOF" keys show --key "$DEST$KEY")"
	fi
else
	as_agent "$EDGEPROOF" keys init --key "$DEST$KEY"
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
