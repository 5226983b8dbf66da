#!/usr/bin/env bash
# Every test-zoo model trains one local round with the ort-portable backend on emulated aarch64
# (plain newest onnxruntime, no torch) and matches the x86_64 host's result.
#
#   deploy/pi-emulation/prepare-root.sh /tmp/pi-root    # once (root, network)
#   deploy/pi-emulation/run-zoo.sh /tmp/pi-root         (ZOO_DIR=dir reuses/continues an export)
#
# On the host: export each model of tests/zoo/models.py (ZOO with export_bundle, PORTABLE_ONLY
# with add_portable_step; the portable trace cache makes re-exports fast) with deterministic
# synthetic data, and train one round (2 epochs, batch 8, a short last batch, seed 1234).
# Then the same round inside ROOT under qemu-aarch64-static, and a table comparing the two
# (max abs parameter difference <= 1e-4). Exit status 1 if any model fails. Not part of CI.
# One model at a time, one onnxruntime thread: the machine's cores are shared.
set -euo pipefail
ROOT=${1:-/tmp/pi-root}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
PY=${HOST_PY:-$REPO/.venv/bin/python}
SCRIPT=$REPO/deploy/pi-emulation/zoo_round.py
WORK=$(mktemp -d /tmp/fedge-pi-zoo.XXXX)   # both machines' results
ZOO=${ZOO_DIR:-$WORK/zoo}
DEV=$ROOT/srv/fedge-zoo   # seen as /srv/fedge-zoo inside the root
t0=$(date +%s.%N)
stamp() { printf '[%6.1f s] %s\n' "$(echo "$(date +%s.%N) - $t0" | bc)" "$*"; }
[ -x "$ROOT/opt/fedge/bin/python" ] || { echo "run prepare-root.sh $ROOT first"; exit 1; }

stamp "host: export the zoo into $ZOO"
"$PY" "$SCRIPT" export "$ZOO"
stamp "host: one round per model, ort-portable"
rm -rf "$WORK/host"
"$PY" "$SCRIPT" train "$ZOO" "$WORK/host"

stamp "aarch64: the same rounds under qemu-aarch64-static"
rm -rf "$DEV" && mkdir -p "$DEV"
cp -r "$ZOO" "$DEV/zoo"
cp "$SCRIPT" "$DEV/"
# No /proc or /sys mount: training reads neither (with /sys, onnxruntime's cpuinfo reads the
# host's x86 topology and the emulated process segfaults; see docs/raspberry-pi.md).
env -i HOME=/root PATH=/usr/bin:/bin LANG=C.UTF-8 "$(command -v chroot)" "$ROOT" \
  /usr/bin/qemu-aarch64-static /opt/fedge/bin/python -c \
  'import platform, importlib.util as u; print("machine:", platform.machine(), "torch:", u.find_spec("torch") is not None)'
env -i HOME=/root PATH=/usr/bin:/bin LANG=C.UTF-8 "$(command -v chroot)" "$ROOT" \
  /usr/bin/qemu-aarch64-static /opt/fedge/bin/python /srv/fedge-zoo/zoo_round.py \
  train /srv/fedge-zoo/zoo /srv/fedge-zoo/results
rm -rf "$WORK/pi" && cp -r "$DEV/results" "$WORK/pi"

stamp "compare (results in $WORK)"
status=0
"$PY" "$SCRIPT" compare "$WORK/host" "$WORK/pi" || status=$?
stamp "$([ "$status" = 0 ] && echo "OK: every zoo model trained on emulated aarch64" || echo FAILED)"
exit "$status"
