#!/data/data/com.termux/files/usr/bin/sh
# Install (or upgrade) the edgeproof agent under Termux on Android: no systemd, no root.
# Idempotent: re-running keeps the device key and the config, and refreshes the venv and the
# runit service. See deploy/termux/README.md.
set -eu

usage() {
	cat <<'EOF'
Usage: deploy/termux/install.sh [--no-pkg] [--boot] [--source DIR]

Installs the edgeproof agent for the current Termux user (never as root):
  * Termux packages: python, numpy, OpenCV, ONNX Runtime (Termux's own builds), termux-services,
    termux-tools (termux-wake-lock), and the Rust/C toolchain pip needs for pydantic-core/solders;
  * a venv in ~/edgeproof-venv that sees Termux's numpy/cv2/onnxruntime (--system-site-packages),
    with edgeproof installed editable from the source folder (--no-deps: the OpenCV and ONNX
    Runtime requirements are met by Termux's packages, not by PyPI wheels);
  * ~/.config/edgeproof/agent.toml (profile android-termux, state under ~/.local/state/edgeproof,
    both folders 0700) and the device key (mode 0600), each only when absent;
  * the runit service $PREFIX/var/service/edgeproof (run script + svlogger log service).

Options:
  --no-pkg       do not run `pkg install` (the packages are already there)
  --boot         also write ~/.termux/boot/edgeproof (Termux:Boot: wake lock + services at boot)
  --source DIR   the edgeproof checkout to install (default: the one holding this script)
  -h, --help     this text

Then: edit ~/.config/edgeproof/agent.toml ([mqtt], [coordinator] pubkey, device.owner_wallet),
run `edgeproof doctor --config ~/.config/edgeproof/agent.toml`, and `sv-enable edgeproof`.
EOF
}

die() {
	printf 'install.sh: error: %s\n' "$1" >&2
	exit 1
}

say() {
	printf '%s\n' "$*"
}

PKG=1
BOOT=0
SRC=$(cd "$(dirname "$0")/../.." && pwd)
while [ $# -gt 0 ]; do
	case "$1" in
	--no-pkg) PKG=0 ;;
	--boot) BOOT=1 ;;
	--source)
		[ $# -ge 2 ] || die "--source needs a folder"
		SRC=$2
		shift
		;;
	-h | --help)
		usage
		exit 0
		;;
	*) die "unknown option $1 (see --help)" ;;
	esac
	shift
done

if [ -z "${PREFIX:-}" ] || [ ! -d "$PREFIX/bin" ]; then
	die "PREFIX is not a Termux prefix (run this inside Termux; on Linux use deploy/install.sh)"
fi
if [ -z "${HOME:-}" ] || [ ! -d "$HOME" ]; then
	die "HOME is not set to a folder"
fi
if [ "$(id -u)" = 0 ]; then
	die "do not run this as root (tsu/su): Termux files must belong to the Termux user"
fi
if [ ! -f "$SRC/setup.cfg" ] || [ ! -d "$SRC/agent" ]; then
	die "$SRC is not an edgeproof checkout (no setup.cfg and agent/)"
fi

VENV=$HOME/edgeproof-venv
CONF_DIR=$HOME/.config/edgeproof
STATE_DIR=$HOME/.local/state/edgeproof
CONFIG=$CONF_DIR/agent.toml
KEY=$STATE_DIR/device-key.json
SERVICE=$PREFIX/var/service/edgeproof

if [ "$PKG" = 1 ]; then
	say "packages: pkg install"
	pkg install -y python python-numpy opencv-python python-onnxruntime termux-services termux-tools \
		rust clang binutils
fi

if [ ! -x "$VENV/bin/python" ]; then
	say "venv: $VENV"
	"$PREFIX/bin/python" -m venv --system-site-packages "$VENV"
fi
say "edgeproof: pip install --no-deps -e $SRC"
"$VENV/bin/python" -m pip install --quiet --no-deps -e "$SRC"
"$VENV/bin/python" -m pip install --quiet "paho-mqtt>=2,<3" psutil "pydantic>=2.6,<3" solders solana rich

umask 077
mkdir -p "$CONF_DIR" "$STATE_DIR"
chmod 700 "$CONF_DIR" "$STATE_DIR"

if [ -f "$KEY" ]; then
	say "key: kept $KEY"
else
	"$VENV/bin/edgeproof" keys init --key "$KEY"
	say "key: created $KEY"
fi

if [ -f "$CONFIG" ]; then
	say "config: kept $CONFIG"
else
	sed -e "s|^key = .*|key = \"$KEY\"|" \
		-e "s|^state_dir = .*|state_dir = \"$STATE_DIR\"|" \
		-e "s|^profile = .*|profile = \"android-termux\"|" \
		-e "s|^model = .*|model = \"$SRC/models/efficientnet-lite0-int8.toml\"|" \
		"$SRC/deploy/agent.example.toml" >"$CONFIG.tmp"
	chmod 600 "$CONFIG.tmp"
	mv "$CONFIG.tmp" "$CONFIG"
	say "config: created $CONFIG"
fi

umask 022
mkdir -p "$SERVICE/log"
# The run script's interpreter is this prefix's sh (the shipped one names Termux's default prefix).
sed "1s|.*|#!$PREFIX/bin/sh|" "$SRC/deploy/termux/run" >"$SERVICE/run.tmp"
chmod 755 "$SERVICE/run.tmp"
mv "$SERVICE/run.tmp" "$SERVICE/run"
ln -sf "$PREFIX/share/termux-services/svlogger" "$SERVICE/log/run"
say "service: $SERVICE (enable it with: sv-enable edgeproof)"

if [ "$BOOT" = 1 ]; then
	mkdir -p "$HOME/.termux/boot"
	cat >"$HOME/.termux/boot/edgeproof" <<EOF
#!$PREFIX/bin/sh
# Termux:Boot: keep the CPU awake and start the runit services (edgeproof among them).
termux-wake-lock
. "$PREFIX/etc/profile.d/start-services.sh"
EOF
	chmod 755 "$HOME/.termux/boot/edgeproof"
	say "boot: $HOME/.termux/boot/edgeproof"
fi

say "done. Next: edit $CONFIG ([mqtt], [coordinator] pubkey, device.owner_wallet), then"
say "  $VENV/bin/edgeproof doctor --config $CONFIG"
say "  sv-enable edgeproof"
