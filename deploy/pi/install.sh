#!/usr/bin/env bash
# Install the fedge agent on a Raspberry Pi (64-bit Raspberry Pi OS, Bookworm) as a service.
#
# Usage:  sudo ./install.sh DEVICE_FOLDER [PACKAGE]
#   DEVICE_FOLDER  the folder `fedge device add NAME --install-dir /etc/fedge ...` wrote on the
#                  broker host (agent.toml, ca.crt, signing.pub), copied to this Pi
#   PACKAGE        what pip installs (default: fedge; a path to a checkout works too)
#
# Example:
#   scp -r broker:/etc/fedge-broker/devices/pi-kitchen ~/pi-kitchen
#   sudo ./install.sh ~/pi-kitchen
set -euo pipefail

DEVICE_DIR=${1:?usage: sudo $0 DEVICE_FOLDER [PACKAGE]}
PACKAGE=${2:-fedge}
HERE=$(cd "$(dirname "$0")" && pwd)
UNIT="$HERE/../systemd/fedge-agent.service"
VENV=/opt/fedge/venv

[ "$(id -u)" -eq 0 ] || { echo "run as root (sudo)" >&2; exit 1; }
for f in agent.toml ca.crt signing.pub; do
    [ -f "$DEVICE_DIR/$f" ] || { echo "$DEVICE_DIR/$f missing: copy the whole folder from fedge device add" >&2; exit 1; }
done
[ -f "$UNIT" ] || { echo "$UNIT missing: run this script from a fedge checkout" >&2; exit 1; }
if [ "$(uname -m)" != "aarch64" ]; then
    echo "warning: $(uname -m) is not aarch64; ONNX Runtime has no wheels for 32-bit Raspberry Pi OS" >&2
fi

echo "[1/5] system packages"
apt-get update -q
apt-get install -y -q python3-venv python3-pip

echo "[2/5] user fedge"
id fedge >/dev/null 2>&1 || useradd --system --home-dir /var/lib/fedge --shell /usr/sbin/nologin fedge

echo "[3/5] $VENV: pip install '$PACKAGE[agent]' (plain onnxruntime on aarch64: ort-portable backend)"
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q "$PACKAGE[agent]"

echo "[4/5] /etc/fedge (config, CA, trusted key) and /var/lib/fedge (state)"
install -d -m 0750 -o root -g fedge /etc/fedge
install -m 0640 -o root -g fedge "$DEVICE_DIR/agent.toml" /etc/fedge/agent.toml
install -m 0644 "$DEVICE_DIR/ca.crt" "$DEVICE_DIR/signing.pub" /etc/fedge/
install -d -m 0700 -o fedge -g fedge /var/lib/fedge

echo "[5/5] systemd unit fedge-agent"
install -m 0644 "$UNIT" /etc/systemd/system/fedge-agent.service
systemctl daemon-reload
if runuser -u fedge -- "$VENV/bin/fedge" doctor --config /etc/fedge/agent.toml; then
    systemctl enable --now fedge-agent
    echo "fedge-agent running: journalctl -u fedge-agent -f"
else
    echo "fix what doctor reports, then: sudo systemctl enable --now fedge-agent" >&2
    exit 1
fi
