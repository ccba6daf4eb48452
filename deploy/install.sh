#!/usr/bin/env bash
# Install or upgrade one edgeproof role on Debian / Raspberry Pi OS as a systemd service: the
# device agent (default), the coordinator or the localnet ledger (--role). Idempotent: run it
# again from a newer checkout to upgrade; configs and keys are never overwritten (only the lines
# an option names: the agent's [coordinator] pubkey, the coordinator's [storage] database_url),
# and a file that is already as it should be is not touched. It never follows a symbolic link
# where it expects a file or folder of its own, and on a live system a role's key is created by
# the role's user, so nothing a daemon can plant in its state folder makes root write or chown
# another file. The role specifics are in deploy/roles/*.sh. `deploy/install.sh --help`.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

usage() {
	cat <<'EOF'
Usage: sudo deploy/install.sh [--role agent|coordinator|localnet] [OPTIONS]

Install (or upgrade) one role from the checkout this script is in:

  1. check Python >= 3.11 and python3-venv
  2. create the role's system user: "edgeproof" (supplementary group "video", for cameras and
     GPUs), "edgeproof-coordinator" or "edgeproof-localnet"
  3. create /opt/edgeproof/venv and pip-install the package into it, with the extras that fit
     the role and the board: agent: "litert" on 64-bit ARM boards (on Jetson a hint for NVIDIA's
     onnxruntime-gpu); coordinator: "coordinator,litert"; localnet: none
  4. copy models/ and firmware_profiles/ to /usr/share/edgeproof/ (agent, coordinator)
  5. the role's config and key, each only if it does not exist:
     agent:       /etc/edgeproof/agent.toml from deploy/agent.example.toml; with
                  --coordinator-key, that key pinned in its [coordinator] pubkey (also in an
                  existing one); the device key /var/lib/edgeproof/device-key.json (mode 0600)
     coordinator: /etc/edgeproof-coordinator/coordinator.toml from deploy/coordinator.example.toml;
                  with --database-url, that URL in its [storage] database_url (also in an existing
                  one); the coordinator key /var/lib/edgeproof-coordinator/coordinator-key.json
                  (mode 0600); then its database is created or migrated with
                  `edgeproof coordinator migrate`: SQLite in /var/lib/edgeproof-coordinator
                  unless a URL is set
     localnet:    the ledger's folder /var/lib/edgeproof-localnet (the snapshot ledger.json)
  6. install /etc/systemd/system/<unit> (edgeproof.service, edgeproof-coordinator.service,
     edgeproof-localnet.service), then, when systemd is PID 1, systemctl daemon-reload and
     enable --now (restart when it is already running)

Options:
  --role ROLE    agent (default), coordinator or localnet
  --root DIR     install into the root file system at DIR (an SD-card image, a chroot, a test)
                 as if it were /: users are added to DIR/etc/passwd and DIR/etc/group (useradd
                 --prefix), owners and modes are set as on a live system, the unit is enabled
                 with systemctl --root; nothing outside DIR changes. Needs root. A key made
                 there is that image's: do not flash one image onto several devices.
  --prefix DIR   stage everything under DIR (DIR/etc/edgeproof, DIR/var/lib/edgeproof, ...)
                 for tests and packaging; never runs useradd, chown or systemctl, and the
                 config keeps the real paths. A venv made under DIR hard-codes DIR in its
                 scripts, and a key made there belongs to that tree: do not ship one key to
                 several devices.
  --no-venv      do not create the venv or run pip (no network needed); edgeproof commands run
                 with $EDGEPROOF_BIN, else `edgeproof` on PATH, else the checkout's .venv
  --no-start     install and enable the unit but do not start or restart it
  --extras LIST  pip extras instead of the role's, e.g. --extras litert or --extras ""
  --coordinator-key BASE58
                 (agent) pin the coordinator's public key (base58, 32 bytes) in [coordinator]
                 pubkey; re-run with another key to change the pin. Without it an existing pin
                 is kept; with no pin at all the agent refuses every coordinator-signed message
                 (beacons, challenges, verdicts, vouchers) until one is set
  --database-url URL
                 (coordinator) use PostgreSQL: postgresql://USER[:PASSWORD]@HOST[:PORT]/DB, set in
                 [storage] database_url; the database and the user must exist (createdb); the
                 schema is created or migrated. Without it an existing URL is kept; with none,
                 SQLite
  --dry-run      print what would be done; change nothing
  -h, --help     show this help

Environment: PYTHON (default python3) is the interpreter the venv is made from;
COORDINATOR_KEY is --coordinator-key (the option wins).

A symbolic link where install.sh expects its own file or folder (the config, the state
folder, the device key, ...) is refused, never followed: remove it and run install.sh again.

After installing the agent: edit /etc/edgeproof/agent.toml ([mqtt] host, username,
password_file, [inference] source; [coordinator] pubkey unless --coordinator-key set it),
check it with
  /opt/edgeproof/venv/bin/edgeproof config check /etc/edgeproof/agent.toml
then `sudo systemctl restart edgeproof` and `journalctl -u edgeproof -f`. The coordinator:
edit /etc/edgeproof-coordinator/coordinator.toml ([mqtt]), then
`sudo systemctl restart edgeproof-coordinator`. See docs/operations.md.
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

ROLE=agent
DEST=""
ROOT_MODE=0
STAGE_MODE=0
NO_VENV=0
NO_START=0
DRY_RUN=0
EXTRAS=auto
PYTHON=${PYTHON:-python3}
COORD_KEY=${COORDINATOR_KEY:-}
COORD_KEY_OPTION=0
DB_URL=""
DB_URL_OPTION=0

while [ $# -gt 0 ]; do
	case "$1" in
	-h | --help)
		usage
		exit 0
		;;
	--role)
		[ $# -ge 2 ] || die "--role needs agent, coordinator or localnet" "deploy/install.sh --role coordinator"
		ROLE=$2
		shift 2
		;;
	--role=*)
		ROLE=${1#--role=}
		shift
		;;
	--prefix | --root)
		[ $# -ge 2 ] || die "$1 needs a directory" "deploy/install.sh $1 /tmp/stage --no-venv"
		if [ "$1" = --root ]; then ROOT_MODE=1; else STAGE_MODE=1; fi
		DEST=$2
		shift 2
		;;
	--prefix=*)
		STAGE_MODE=1
		DEST=${1#--prefix=}
		shift
		;;
	--root=*)
		ROOT_MODE=1
		DEST=${1#--root=}
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
		COORD_KEY_OPTION=1
		shift 2
		;;
	--coordinator-key=*)
		COORD_KEY=${1#--coordinator-key=}
		COORD_KEY_OPTION=1
		shift
		;;
	--database-url)
		[ $# -ge 2 ] || die "--database-url needs a postgresql:// URL" \
			"deploy/install.sh --role coordinator --database-url postgresql://edgeproof@db.example:5432/edgeproof"
		DB_URL=$2
		DB_URL_OPTION=1
		shift 2
		;;
	--database-url=*)
		DB_URL=${1#--database-url=}
		DB_URL_OPTION=1
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

case "$ROLE" in
agent | coordinator | localnet) ;;
*) die "unknown role '$ROLE' (roles: agent, coordinator, localnet)" "deploy/install.sh --role coordinator" ;;
esac
if [ "$COORD_KEY_OPTION" = 1 ] && [ "$ROLE" != agent ]; then
	die "--coordinator-key is for --role agent (it pins the coordinator's key on a device)" \
		"drop --coordinator-key; the coordinator's own key is made by --role coordinator"
fi
if [ "$ROLE" != agent ]; then
	COORD_KEY=""
fi
if [ "$DB_URL_OPTION" = 1 ] && [ "$ROLE" != coordinator ]; then
	die "--database-url is for --role coordinator" "deploy/install.sh --role coordinator --database-url URL"
fi
if [ "$ROOT_MODE" = 1 ] && [ "$STAGE_MODE" = 1 ]; then
	die "--root and --prefix do not go together" "--root DIR for an image with owners, --prefix DIR to stage files"
fi

if [ -n "$DEST" ]; then
	case "$DEST" in
	/) die "$([ "$ROOT_MODE" = 1 ] && echo --root || echo --prefix) / is a real install" \
		"run deploy/install.sh without --root or --prefix" ;;
	/*) ;;
	*) DEST="$(pwd)/$DEST" ;;
	esac
	DEST=${DEST%/}
fi

# Target paths shared by the roles (as the running system sees them; under $DEST with --root or
# --prefix). They must match deploy/systemd/*.service and the example configs.
VENV_DIR=/opt/edgeproof/venv
SHARE_DIR=/usr/share/edgeproof
DOC_DIR=/usr/share/doc/edgeproof
UNIT_DIR=/etc/systemd/system

# The role: its paths (UNIT_NAME, USER_NAME, CONF_DIR, CONF, STATE_DIR, KEY, ...) and its steps.
case "$ROLE" in
agent)
	# shellcheck source=roles/agent.sh
	. "$SCRIPT_DIR/roles/agent.sh"
	;;
coordinator)
	# shellcheck source=roles/coordinator.sh
	. "$SCRIPT_DIR/roles/coordinator.sh"
	;;
localnet)
	# shellcheck source=roles/localnet.sh
	. "$SCRIPT_DIR/roles/localnet.sh"
	;;
esac
UNIT_SRC=$SRC/deploy/systemd/$UNIT_NAME

# ------------------------------------------------------------------ checks

step "checking the checkout in $SRC (role $ROLE)"
for required in "$SRC/setup.cfg" "$SRC/agent/__init__.py" "$UNIT_SRC" ${EXAMPLE_SRC:+"$EXAMPLE_SRC"} \
	"$SRC/models" "$SRC/firmware_profiles"; do
	[ -e "$required" ] || die "$required is missing: run install.sh from a complete edgeproof checkout" \
		"git clone the repository again, then: sudo deploy/install.sh"
done
grep -q "$EXEC_START_RE" "$UNIT_SRC" ||
	die "$UNIT_SRC does not run $VENV_DIR/bin/edgeproof with $EXEC_START_WHAT" \
		"restore the unit from git: git checkout -- deploy/systemd/$UNIT_NAME"

if [ -n "${TERMUX_VERSION:-}" ]; then
	die "this is Termux: Android has no systemd" "follow deploy/termux/README.md instead"
fi

if [ -z "$DEST" ] && [ "$DRY_RUN" = 0 ] && [ "$(id -u)" != 0 ]; then
	die "a system install needs root (user, /opt, /etc, systemd)" "sudo $0 $ORIG_ARGS"
fi
if [ "$ROOT_MODE" = 1 ]; then
	[ "$(id -u)" = 0 ] || [ "$DRY_RUN" = 1 ] ||
		die "--root sets owners, which needs root" "sudo $0 $ORIG_ARGS, or --prefix DIR to stage without owners"
	{ [ -f "$DEST/etc/passwd" ] && [ -f "$DEST/etc/group" ]; } ||
		die "$DEST is not a root file system (no $DEST/etc/passwd and $DEST/etc/group)" \
			"give --root the folder that holds the image's /etc, or use --prefix DIR to stage files"
	command -v useradd >/dev/null 2>&1 || die "useradd not found" "sudo apt-get install passwd"
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

role_checks

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
	EXTRAS=$(role_extras "$BOARD")
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

if [ "$STAGE_MODE" = 1 ]; then
	step "staging under $DEST (no useradd, chown or systemctl)"
elif [ "$ROOT_MODE" = 1 ]; then
	step "installing into the root file system at $DEST (users in $DEST/etc, no systemctl start)"
fi
if [ "$DRY_RUN" = 1 ]; then
	step "dry run: nothing is changed"
fi
note "role:   $ROLE ($DEST$UNIT_DIR/$UNIT_NAME, user $USER_NAME)"
note "agent:  $DEST$VENV_DIR/bin/edgeproof"
if [ -n "$CONF" ]; then note "config: $DEST$CONF"; fi
if [ -n "$KEY" ]; then note "key:    $DEST$KEY"; fi
note "state:  $DEST$STATE_DIR"
if [ "$WITH_DATA" = 1 ]; then note "data:   $DEST$SHARE_DIR"; fi
note "unit:   $DEST$UNIT_DIR/$UNIT_NAME"

# no_link PATH...: refuse (before anything is changed) a symbolic link where install.sh expects a
# file or folder of its own. Following one would let whoever planted it (a daemon owns its state
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
no_link "$DEST/opt/edgeproof" "$DEST$VENV_DIR" "$DEST$SHARE_DIR" "$DEST$SHARE_DIR/models" \
	"$DEST$SHARE_DIR/firmware_profiles" "$DEST$DOC_DIR" "$DEST$UNIT_DIR/$UNIT_NAME" "$DEST$STATE_DIR"
if [ -n "$CONF" ]; then
	no_link "$DEST$CONF_DIR" "$DEST$CONF"
fi
if [ -n "$KEY" ]; then
	no_link "$DEST$KEY"
fi
for existing in ${CONF:+"$DEST$CONF"} ${KEY:+"$DEST$KEY"}; do
	if [ -e "$existing" ] && [ ! -f "$existing" ]; then
		die "$existing exists but is not a regular file" "move it away and run install.sh again"
	fi
done

# ------------------------------------------------------------------ users and owners

# passwd_field FILE NAME FIELD: field FIELD (1-based) of NAME's line in a passwd/group FILE.
passwd_field() {
	awk -F: -v name="$2" -v field="$3" '$1 == name { print $field; found = 1; exit } END { exit !found }' "$1"
}
# The databases users are looked up in: the image's with --root, the system's otherwise.
user_exists() {
	if [ "$ROOT_MODE" = 1 ]; then passwd_field "$DEST/etc/passwd" "$1" 1 >/dev/null; else getent passwd "$1" >/dev/null; fi
}
group_exists() {
	if [ "$ROOT_MODE" = 1 ]; then passwd_field "$DEST/etc/group" "$1" 1 >/dev/null; else getent group "$1" >/dev/null; fi
}
# in_group USER GROUP: USER is a supplementary member of GROUP.
in_group() {
	if [ "$ROOT_MODE" = 1 ]; then
		passwd_field "$DEST/etc/group" "$2" 4 | tr ',' '\n' | grep -qx "$1"
	else
		id -nG "$1" | tr ' ' '\n' | grep -qx "$2"
	fi
}
# uid_of NAME / gid_of NAME: what install -o/-g and chown get: the name on a live system, the
# number from the image's files with --root (the host may not have that user, or another id).
uid_of() {
	if [ "$ROOT_MODE" = 0 ]; then
		printf '%s\n' "$1"
	elif ! passwd_field "$DEST/etc/passwd" "$1" 3; then
		[ "$DRY_RUN" = 1 ] || die "no user $1 in $DEST/etc/passwd"
		printf '%s\n' "$1" # dry run: the user would have been added by now
	fi
}
gid_of() {
	if [ "$ROOT_MODE" = 0 ]; then
		printf '%s\n' "$1"
	elif ! passwd_field "$DEST/etc/group" "$1" 3; then
		[ "$DRY_RUN" = 1 ] || die "no group $1 in $DEST/etc/group"
		printf '%s\n' "$1"
	fi
}

# ensure_user NAME COMMENT [GROUP]: a system user NAME with its own group (and GROUP).
ensure_user() {
	local name=$1 comment=$2 extra=${3:-} where=()
	if [ "$ROOT_MODE" = 1 ]; then
		where=(--prefix "$DEST")
	else
		command -v useradd >/dev/null 2>&1 || die "useradd not found" "sudo apt-get install passwd"
	fi
	if [ -n "$extra" ] && ! group_exists "$extra"; then
		run groupadd "${where[@]}" --system "$extra"
	fi
	if ! user_exists "$name"; then
		run useradd "${where[@]}" --system --user-group --home-dir "$STATE_DIR" --no-create-home \
			--shell /usr/sbin/nologin --comment "$comment" ${extra:+--groups "$extra"} "$name"
	elif [ -n "$extra" ] && ! in_group "$name" "$extra"; then
		run usermod "${where[@]}" --append --groups "$extra" "$name"
	else
		note "exists${extra:+, in group $extra}"
	fi
}

# set_owner OWNER GROUP PATH: chown PATH (never through a link) on a live system or with --root.
set_owner() {
	if [ "$STAGE_MODE" = 0 ]; then
		run chown -h "$(uid_of "$1"):$(gid_of "$2")" "$3"
	fi
}

# as_user CMD...: run CMD as the role's user (from /, which it can read), so that what it creates
# in the user-owned state folder is the user's from the start: no chown needed. With --prefix and
# --root (no such user on this host) it runs as the caller; with --root the role's steps chown
# what it made, in an image no daemon of the role is running in.
as_user() {
	if [ -n "$DEST" ]; then
		run "$@"
	else
		run runuser -u "$USER_NAME" -- env -C / "$@"
	fi
}

# key_id FILE: the base58 public key of a Solana keypair file (its last 32 bytes), read as the
# role's user like as_user; Python's stdlib only (an edgeproof command costs a second or more).
key_id() {
	as_user "$PYTHON" -c '
import json
import sys

ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
with open(sys.argv[1], encoding="utf-8") as handle:
    raw = bytes(json.load(handle)[32:64])
number, text = int.from_bytes(raw, "big"), ""
while number:
    number, digit = divmod(number, 58)
    text = ALPHABET[digit] + text
print("1" * (len(raw) - len(raw.lstrip(b"\0"))) + text)' "$1"
}

# key_mode_check FILE: warn when the key is readable by others (the daemon refuses it then).
key_mode_check() {
	local mode
	mode=$(stat -c %a -- "$1")
	if [ "$mode" != 600 ]; then
		warn "$1 has mode $mode: the daemon refuses a key others can read; fix: chmod 600 $1"
	fi
}

# role_key: keep the role's key $DEST$KEY (KEY_KEPT=1) or have the role's user make it
# (KEY_KEPT=0). Root never writes, reads or chowns a path in the folder that user owns, and
# checks again for a planted link first. A key is never overwritten.
role_key() {
	no_link "$DEST$STATE_DIR" "$DEST$KEY"
	if [ -z "$DEST" ] && [ "$DRY_RUN" = 0 ] && ! runuser -u "$USER_NAME" -- test -x "$EDGEPROOF"; then
		die "the $USER_NAME user cannot run $EDGEPROOF" \
			"drop --no-venv, or point EDGEPROOF_BIN at an edgeproof outside /root that $USER_NAME can run"
	fi
	if [ -e "$DEST$KEY" ]; then
		[ -f "$DEST$KEY" ] || die "$DEST$KEY exists but is not a regular file" "move it away and run install.sh again"
		note "exists: kept (never overwritten)"
		KEY_KEPT=1
		if [ "$DRY_RUN" = 0 ]; then
			key_mode_check "$DEST$KEY"
		fi
	else
		KEY_KEPT=0
		as_user "$EDGEPROOF" keys init --key "$DEST$KEY"
		if [ "$ROOT_MODE" = 1 ]; then
			set_owner "$USER_NAME" "$USER_NAME" "$DEST$KEY"
		fi
	fi
}

# mkd MODE OWNER GROUP DIR: a directory with that mode (and owner/group, but with --prefix).
mkd() {
	if [ "$STAGE_MODE" = 1 ]; then
		run install -d -m "$1" "$DEST$4"
	else
		run install -d -m "$1" -o "$(uid_of "$2")" -g "$(gid_of "$3")" "$DEST$4"
	fi
}

# same_file MODE OWNER GROUP SRC TARGET: TARGET already holds SRC's bytes with that mode and owner.
same_file() {
	local want
	[ -f "$5" ] && [ ! -L "$5" ] && cmp -s -- "$4" "$5" || return 1
	if [ "$STAGE_MODE" = 1 ]; then
		[ "$(stat -c %a -- "$5")" = "${1#0}" ]
	elif [ "$ROOT_MODE" = 1 ]; then
		[ "$(stat -c '%a %u %g' -- "$5")" = "${1#0} $(uid_of "$2") $(gid_of "$3")" ]
	else
		want="${1#0} $(id -u "$2") $(getent group "$3" | cut -d: -f3)"
		[ "$(stat -c '%a %u %g' -- "$5")" = "$want" ]
	fi
}

# put MODE OWNER GROUP SRC DST: copy one file (owner/group but with --prefix), unless it is
# already there as it should be: a re-run leaves it, and its time stamps, alone.
put() {
	if same_file "$1" "$2" "$3" "$4" "$DEST$5"; then
		UNCHANGED=$((UNCHANGED + 1))
	elif [ "$STAGE_MODE" = 1 ]; then
		run install -m "$1" "$4" "$DEST$5"
	else
		run install -m "$1" -o "$(uid_of "$2")" -g "$(gid_of "$3")" "$4" "$DEST$5"
	fi
}
UNCHANGED=0

# ------------------------------------------------------------------ user

if [ "$STAGE_MODE" = 0 ]; then
	step "system user $USER_NAME"
	if [ "$ROOT_MODE" = 0 ]; then
		command -v runuser >/dev/null 2>&1 || die "runuser not found" "sudo apt-get install util-linux"
	fi
	ensure_user "$USER_NAME" "$USER_COMMENT" "$USER_GROUP"
fi

# ------------------------------------------------------------------ directories

step "directories"
mkd 0755 root root /opt/edgeproof
if [ -n "$CONF" ]; then
	mkd 0750 root "$USER_NAME" "$CONF_DIR"
fi
mkd 0750 "$USER_NAME" "$USER_NAME" "$STATE_DIR"
if [ "$WITH_DATA" = 1 ]; then
	mkd 0755 root root "$SHARE_DIR"
	mkd 0755 root root "$SHARE_DIR/models"
	mkd 0755 root root "$SHARE_DIR/firmware_profiles"
fi
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
if [ "$BOARD" = jetson ] && [ "$ROLE" = agent ]; then
	note "Jetson: the venv has the CPU onnxruntime from PyPI. For TensorRT/CUDA install NVIDIA's"
	note "onnxruntime-gpu wheel for your JetPack and Python: see deploy/jetson/README.md"
fi

# ------------------------------------------------------------------ data files

if [ "$WITH_DATA" = 1 ]; then
	step "models, firmware profiles, docs -> $DEST$SHARE_DIR"
	shopt -s nullglob
	for file in "$SRC"/models/*.toml "$SRC"/models/*.onnx "$SRC"/models/*.tflite "$SRC"/models/*.txt; do
		put 0644 root root "$file" "$SHARE_DIR/models/$(basename "$file")"
	done
	for file in "$SRC"/firmware_profiles/*.toml; do
		put 0644 root root "$file" "$SHARE_DIR/firmware_profiles/$(basename "$file")"
	done
	shopt -u nullglob
	put 0644 root root "$EXAMPLE_SRC" "$SHARE_DIR/$(basename "$EXAMPLE_SRC")"
else
	step "docs -> $DEST$DOC_DIR"
fi
if [ -e "$SRC/docs/operations.md" ]; then
	put 0644 root root "$SRC/docs/operations.md" "$DOC_DIR/operations.md"
fi

# set_toml_string FILE SECTION KEY VALUE: rewrite FILE with [SECTION] KEY = "VALUE" (the line
# replaced, or added to the section, or the section added), mode 0640 root:<role user>, by an
# atomic rename. VALUE must not hold a double quote or a backslash (the callers check).
set_toml_string() {
	local file=$1 section=$2 key=$3 value=$4 tmp
	tmp=$(mktemp "$(dirname "$file")/.$(basename "$file").XXXXXX")
	if ! awk -v section="$section" -v key="$key" -v value="$value" '
		function put() { print key " = \"" value "\""; done = 1 }
		/^[ \t]*\[/ {
			if (in_section && !done) put()
			header = $0
			sub(/^[ \t]*\[/, "", header)
			sub(/\][ \t]*(#.*)?$/, "", header)
			in_section = (header == section)
		}
		in_section && $0 ~ ("^[ \t]*" key "[ \t]*=") { if (!done) put(); next }
		{ print }
		END {
			if (in_section && !done) put()
			if (!done) { print ""; print "[" section "]"; put() }
		}' "$file" >"$tmp"; then
		rm -f -- "$tmp"
		die "cannot rewrite $file"
	fi
	chmod 0640 "$tmp"
	if [ "$STAGE_MODE" = 0 ]; then
		chown "$(uid_of root):$(gid_of "$USER_NAME")" "$tmp"
	fi
	mv -f -- "$tmp" "$file"
}

# toml_string FILE SECTION KEY: the string [SECTION] KEY of a TOML file ("" when unset).
toml_string() {
	"$PYTHON" - "$1" "$2" "$3" <<'PY'
import sys
import tomllib

with open(sys.argv[1], "rb") as handle:
    data = tomllib.load(handle)
section = data.get(sys.argv[2], {})
value = section.get(sys.argv[3], "") if isinstance(section, dict) else ""
print(value if isinstance(value, str) else "")
PY
}

# ------------------------------------------------------------------ the role's config and key

role_install

# ------------------------------------------------------------------ systemd

step "systemd unit $DEST$UNIT_DIR/$UNIT_NAME"
put 0644 root root "$UNIT_SRC" "$UNIT_DIR/$UNIT_NAME"
if [ "$STAGE_MODE" = 1 ]; then
	note "--prefix: systemctl not run"
elif [ "$ROOT_MODE" = 1 ]; then
	WANTS=$DEST$UNIT_DIR/multi-user.target.wants/$UNIT_NAME
	if [ -L "$WANTS" ] && [ "$(readlink -- "$WANTS")" = "$UNIT_DIR/$UNIT_NAME" ]; then
		note "enabled in $DEST (multi-user.target.wants)"
	elif command -v systemctl >/dev/null 2>&1; then
		run systemctl --root="$DEST" enable "$UNIT_NAME"
	else
		run mkdir -p "$DEST$UNIT_DIR/multi-user.target.wants"
		run ln -sfn "$UNIT_DIR/$UNIT_NAME" "$WANTS"
	fi
	note "--root: it starts when $DEST boots"
elif [ ! -d /run/systemd/system ] || [ "$(cat /proc/1/comm 2>/dev/null)" != systemd ]; then
	note "systemd is not PID 1 here: the unit is installed but not enabled or started."
	note "Run it by hand as the $USER_NAME user, e.g.:"
	note "  runuser -u $USER_NAME -- $(sed -n "s|^ExecStart=||p" "$UNIT_SRC")"
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
if [ "$UNCHANGED" -gt 0 ]; then
	note "$UNCHANGED file(s) already up to date: left alone"
fi
if [ -z "$DEST" ]; then
	role_done
fi
