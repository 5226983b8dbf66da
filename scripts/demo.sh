#!/usr/bin/env bash
# Run the zero-setup demo: prepare .venv with the demo extras, then `fedge demo ARGS...`.
# Usage: scripts/demo.sh [fedge demo args...]     e.g. scripts/demo.sh --devices 5 --rounds 10
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup-venv.sh" demo
cd "$ROOT"
exec "$ROOT/.venv/bin/fedge" demo "$@"
