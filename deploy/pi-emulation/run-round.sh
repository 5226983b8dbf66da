#!/usr/bin/env bash
# One federated round with the agent on emulated aarch64 (Raspberry Pi), everything on loopback:
# Mosquitto and the orchestrator run on the host, the agent runs in ROOT under qemu-aarch64-static
# with the ort-portable backend (plain onnxruntime; no training wheel exists for aarch64).
#
#   deploy/pi-emulation/prepare-root.sh /tmp/pi-root    # once
#   deploy/pi-emulation/run-round.sh /tmp/pi-root [ROUNDS]   (BUNDLE=dir reuses an export)
set -euo pipefail
ROOT=${1:-/tmp/pi-root}
ROUNDS=${2:-1}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
PY=${HOST_PY:-$REPO/.venv/bin/python}
WORK=$(mktemp -d /tmp/fedge-pi-round.XXXX)
DEV=$ROOT/srv/fedge   # the device's files (seen as /srv/fedge inside the root)
t0=$(date +%s.%N)
stamp() { printf '[%6.1f s] %s\n' "$(echo "$(date +%s.%N) - $t0" | bc)" "$*"; }
pids=()
mounted=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  for m in "${mounted[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" || true; done
}
trap cleanup EXIT
[ -x "$ROOT/opt/fedge/bin/python" ] || { echo "run prepare-root.sh first"; exit 1; }
# /proc as on a real device (load average, psutil). Not /sys: onnxruntime's cpuinfo reads the
# host's x86 CPU topology there and the emulated process segfaults (without it, cpuinfo warns).
for m in proc; do
  if ! mountpoint -q "$ROOT/$m"; then mount --bind "/$m" "$ROOT/$m" && mounted+=("$ROOT/$m"); fi
done

stamp "host: export the digits MLP bundle (with portable_step.onnx)"
if [ -n "${BUNDLE:-}" ]; then cp -r "$BUNDLE" "$WORK/bundle"; else
"$PY" -m fedge export fedge.demo.models:digits_mlp --input-shape 64 --num-classes 10 \
  --optimizer sgd --lr 0.05 --out "$WORK/bundle" -q
fi
test -f "$WORK/bundle/portable_step.onnx"

stamp "host: device data (digits, 1 of 3 devices) into $DEV"
rm -rf "$DEV" && mkdir -p "$DEV"
"$PY" - "$WORK" "$DEV" <<'PYEOF'
import shutil, sys
from fedge.demo.data import make_federation
fed = make_federation(sys.argv[1] + "/data", dataset="digits", n_devices=3, alpha=0.5, seed=0)
shutil.copy(fed.device_paths[0], sys.argv[2] + "/dev-0.db")
PYEOF

PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$WORK/mosquitto.conf" <<CONF
listener $PORT 127.0.0.1
allow_anonymous true
persistence false
CONF
mosquitto -c "$WORK/mosquitto.conf" > "$WORK/mosquitto.log" 2>&1 & pids+=($!)
sleep 0.5
stamp "host: mosquitto on 127.0.0.1:$PORT"

cat > "$WORK/orch.toml" <<CONF
federation = "pi"
bundle = "$WORK/bundle"
database = "$WORK/orchestrator.db"
[mqtt]
url = "mqtt://127.0.0.1:$PORT"
[rounds]
rounds = $ROUNDS
min_devices = 1
min_reports = 1
deadline_seconds = 600
local_epochs = 2
batch_size = 32
[evaluation]
enabled = true
[evaluation.data]
path = "$WORK/data/test.db"
CONF
cat > "$DEV/agent.toml" <<CONF
id = "pi-0"
federation = "pi"
state_dir = "/srv/fedge/state"
backend = "ort-portable"
[mqtt]
url = "mqtt://127.0.0.1:$PORT"
[data]
path = "/srv/fedge/dev-0.db"
CONF

"$PY" -m fedge orchestrator --config "$WORK/orch.toml" > "$WORK/orchestrator.log" 2>&1 & orch=$!
pids+=($orch)
stamp "aarch64: agent starts under qemu-aarch64-static (backend ort-portable)"
env -i HOME=/root PATH=/usr/bin:/bin LANG=C.UTF-8 "$(command -v chroot)" "$ROOT" /usr/bin/qemu-aarch64-static \
  /opt/fedge/bin/python -c 'import platform; print("agent machine:", platform.machine())'
env -i HOME=/root PATH=/usr/bin:/bin LANG=C.UTF-8 "$(command -v chroot)" "$ROOT" /usr/bin/qemu-aarch64-static \
  /opt/fedge/bin/python -m fedge agent --config /srv/fedge/agent.toml --max-rounds "$ROUNDS" \
  > "$WORK/agent.log" 2>&1 & pids+=($!)
if ! wait "$orch"; then
  echo "orchestrator failed; logs in $WORK"; tail -20 "$WORK/orchestrator.log" "$WORK/agent.log"; exit 1
fi
stamp "orchestrator finished"
grep -E "backend|trained|accepted" "$WORK/agent.log" | sed 's/^/  agent: /'
grep -E "committed|finished" "$WORK/orchestrator.log" | sed 's/^/  orchestrator: /'
"$PY" - "$WORK/orchestrator.db" <<'PYEOF'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
rows = db.execute("SELECT round, state, reports FROM rounds ORDER BY round").fetchall()
backends = db.execute("SELECT agent_id, backend FROM devices").fetchall()
print("rounds:", rows, "devices:", backends)
assert rows and all(s == "committed" and r == 1 for _, s, r in rows), rows
assert backends == [("pi-0", "ort-portable")], backends
PYEOF
stamp "OK: a round trained on emulated aarch64 (logs in $WORK)"
