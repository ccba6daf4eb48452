# shellcheck shell=bash
# deploy/install.sh --role agent (the default): the device agent. Sourced by install.sh, which
# defines the helpers used here (die, note, run, put, as_user, set_owner, set_toml_string, ...).

UNIT_NAME=edgeproof.service
USER_NAME=edgeproof
USER_COMMENT="edgeproof device agent"
# /dev/video* (cameras) and, on Jetson, the GPU nodes belong to "video".
USER_GROUP=video
CONF_DIR=/etc/edgeproof
CONF=$CONF_DIR/agent.toml
STATE_DIR=/var/lib/edgeproof
KEY=$STATE_DIR/device-key.json
EXAMPLE_SRC=$SRC/deploy/agent.example.toml
WITH_DATA=1
EXEC_START_RE="^ExecStart=$VENV_DIR/bin/edgeproof .*--config $CONF\$"
EXEC_START_WHAT="--config $CONF"

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

role_checks() {
	local bytes
	if [ -n "$COORD_KEY" ]; then
		bytes=$(base58_bytes "$COORD_KEY") || die "$PYTHON cannot check the coordinator key"
		if [ "$bytes" = invalid ]; then
			die "--coordinator-key '$COORD_KEY' is not base58 (allowed: 1-9 A-H J-N P-Z a-k m-z; no 0 O I l)" \
				"copy the coordinator's public key exactly as your coordinator publishes it"
		elif [ "$bytes" != 32 ]; then
			die "--coordinator-key '$COORD_KEY' decodes to $bytes bytes, not the 32 of an ed25519 public key" \
				"copy the coordinator's public key exactly as your coordinator publishes it"
		fi
	fi
}

# role_extras BOARD: the pip extras for this board.
role_extras() {
	case "$1" in
	arm64) echo litert ;;
	*) echo "" ;;
	esac
}

role_install() {
	local pin_source pinned
	step "config $DEST$CONF"
	if [ -e "$DEST$CONF" ]; then
		note "exists: kept (never overwritten); compare with $SHARE_DIR/agent.example.toml after upgrades"
	else
		put 0640 root "$USER_NAME" "$EXAMPLE_SRC" "$CONF"
		note "written from deploy/agent.example.toml: edit [mqtt] before relying on it"
	fi

	if [ -e "$DEST$CONF" ]; then
		pin_source=$DEST$CONF
	else
		pin_source=$EXAMPLE_SRC # --dry-run of a first install: the file it would write
	fi
	pinned=$(toml_string "$pin_source" coordinator pubkey) ||
		die "$pin_source is not valid TOML" "edgeproof config check $pin_source names the line"
	if [ -n "$COORD_KEY" ] && [ "$COORD_KEY" = "$pinned" ]; then
		note "coordinator key pinned: $COORD_KEY (unchanged)"
	elif [ -n "$COORD_KEY" ]; then
		if [ -n "$pinned" ]; then
			note "coordinator key changes from $pinned"
		fi
		if [ "$DRY_RUN" = 1 ]; then
			note "would set [coordinator] pubkey = \"$COORD_KEY\" in $DEST$CONF"
		else
			set_toml_string "$DEST$CONF" coordinator pubkey "$COORD_KEY"
			[ "$(toml_string "$DEST$CONF" coordinator pubkey)" = "$COORD_KEY" ] ||
				die "the coordinator key did not land in $DEST$CONF" "set [coordinator] pubkey by hand"
			note "coordinator key pinned: $COORD_KEY"
		fi
	elif [ -n "$pinned" ]; then
		note "coordinator key pinned: $pinned (kept; --coordinator-key changes it)"
	else
		warn "no coordinator key is pinned ([coordinator] pubkey is empty in $DEST$CONF):"
		warn "the agent refuses EVERY coordinator-signed message (beacons, challenges, verdicts,"
		warn "vouchers; reason unpinned_coordinator) until one is. It still proves and heartbeats."
		warn "Pin it: deploy/install.sh --coordinator-key <base58 key>, or set [coordinator] pubkey"
		warn "in $CONF and restart the service."
	fi
	run "$EDGEPROOF" config check "$DEST$CONF"

	step "device key $DEST$KEY"
	# Made and read by the agent's user: root never writes, reads or chowns a path in the folder
	# the agent owns. Checked again here: the agent may have planted a link since the first check.
	role_key
	if [ "$KEY_KEPT" = 1 ] && [ "$DRY_RUN" = 0 ]; then
		note "device id: $(key_id "$DEST$KEY")"
	fi
}

role_done() {
	note "check:  sudo -u $USER_NAME $VENV_DIR/bin/edgeproof doctor --config $CONF"
	note "status: systemctl status $UNIT_NAME; $VENV_DIR/bin/edgeproof status --config $CONF"
	note "logs:   journalctl -u $UNIT_NAME -f"
}
