# shellcheck shell=bash
# deploy/install.sh --role localnet: the local Solana ledger (LiteSVM over JSON-RPC on
# 127.0.0.1:8899) for a lab or demo network. No config and no key: the ledger keeps its state in
# the snapshot /var/lib/edgeproof-localnet/ledger.json, which the service writes itself.
# Sourced by install.sh, which defines the helpers used here.

UNIT_NAME=edgeproof-localnet.service
USER_NAME=edgeproof-localnet
USER_COMMENT="edgeproof localnet ledger"
USER_GROUP=""
CONF_DIR=""
CONF=""
STATE_DIR=/var/lib/edgeproof-localnet
KEY=""
EXAMPLE_SRC=""
WITH_DATA=0
EXEC_START_RE="^ExecStart=$VENV_DIR/bin/edgeproof .*chain localnet .*--snapshot $STATE_DIR/ledger.json\$"
EXEC_START_WHAT="chain localnet --snapshot $STATE_DIR/ledger.json"

role_checks() { :; }

role_extras() {
	echo "" # solders (LiteSVM) is a base dependency
}

role_install() {
	step "ledger $DEST$STATE_DIR/ledger.json"
	no_link "$DEST$STATE_DIR/ledger.json"
	if [ -e "$DEST$STATE_DIR/ledger.json" ]; then
		note "exists: kept (the ledger's accounts and history; remove it for a fresh ledger)"
	else
		note "made by the service at its first start (saved every 5 s and on stop)"
	fi
}

role_done() {
	note "rpc:    http://127.0.0.1:8899 (edgeproof chain bootstrap --rpc http://127.0.0.1:8899 ...)"
	note "status: systemctl status $UNIT_NAME"
	note "logs:   journalctl -u $UNIT_NAME -f"
}
