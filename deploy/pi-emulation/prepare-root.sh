#!/usr/bin/env bash
# Build an arm64 (Raspberry Pi OS-like) Debian bookworm root and install fedge[agent] in it,
# running the aarch64 interpreter under qemu-user (binfmt_misc not needed).
#
#   deploy/pi-emulation/prepare-root.sh [ROOT]      (default ROOT=/tmp/pi-root; needs root)
#
# Steps: debootstrap the first stage only (download + unpack), unpack the remaining packages
# with dpkg -x (no maintainer scripts: they would need binfmt), then install fedge[agent] into
# a venv with pip *running on aarch64*, from aarch64 wheels downloaded on the host: pip
# evaluates fedge's environment markers on aarch64 and picks plain `onnxruntime`.
set -euo pipefail
ROOT=${1:-/tmp/pi-root}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
HOST_PY=${HOST_PY:-$REPO/.venv/bin/python}
WHEELS=$ROOT/wheels
QEMU=/usr/bin/qemu-aarch64-static
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }

if ! command -v qemu-aarch64-static >/dev/null || ! command -v debootstrap >/dev/null; then
  apt-get install -y qemu-user-static debootstrap
fi
if [ ! -x "$ROOT/usr/bin/python3.11" ]; then
  stamp "debootstrap --foreign arm64 bookworm into $ROOT"
  debootstrap --arch=arm64 --foreign --variant=minbase \
    --include=python3,python3-venv,ca-certificates bookworm "$ROOT" http://deb.debian.org/debian
  for deb in "$ROOT"/var/cache/apt/archives/*.deb; do dpkg -x "$deb" "$ROOT"; done
fi
cp "$QEMU" "$ROOT/usr/bin/"
cp /etc/resolv.conf "$ROOT/etc/" 2>/dev/null || true
# A clean environment: the host's PIP_* settings must not leak into the emulated pip.
arm() { env -i HOME=/root PATH=/usr/bin:/bin LANG=C.UTF-8 "$(command -v chroot)" "$ROOT" /usr/bin/qemu-aarch64-static "$@"; }
stamp "emulated: $(arm /usr/bin/python3 -c 'import platform,sys; print(platform.machine(), sys.version.split()[0])')"

stamp "host: fedge wheel + aarch64 wheels of the agent's dependencies"
mkdir -p "$WHEELS"
rm -f "$WHEELS"/fedge-*.whl
"$HOST_PY" -m pip wheel --no-deps --no-build-isolation -q -w "$WHEELS" "$REPO"
# Markers are not evaluated for --platform, so name the aarch64 dependencies explicitly;
# the install below resolves fedge[agent] itself on aarch64.
"$HOST_PY" -m pip download -q --dest "$WHEELS" --only-binary=:all: --python-version 3.11 \
  --implementation cp --abi cp311 --abi abi3 --abi none \
  --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64 \
  --platform manylinux_2_27_aarch64 --platform manylinux_2_28_aarch64 --platform any \
  pip onnxruntime numpy safetensors cryptography paho-mqtt sqlite-utils psutil
ls "$WHEELS" | grep -i -E 'training|torch' && { echo "unexpected training/torch wheel"; exit 1; }

stamp "aarch64: python3 -m venv /opt/fedge; pip install 'fedge[agent]' (no index, aarch64 wheels only)"
rm -rf "$ROOT/opt/fedge"
arm /usr/bin/python3 -m venv --without-pip /opt/fedge
PIPWHL=$(cd "$WHEELS" && ls pip-*.whl | head -1)
FEDGEWHL=$(cd "$WHEELS" && ls fedge-*.whl | head -1)
arm /opt/fedge/bin/python "/wheels/$PIPWHL/pip" install --no-index --find-links /wheels \
  --no-compile --disable-pip-version-check -q "/wheels/$FEDGEWHL[agent]"
arm /opt/fedge/bin/python "/wheels/$PIPWHL/pip" list --path /opt/fedge/lib/python3.11/site-packages \
  2>/dev/null | grep -i -E 'onnxruntime|torch|fedge|numpy' || true
stamp "done"
