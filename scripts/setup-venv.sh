#!/usr/bin/env bash
# Create (or reuse) .venv at the repo root and install fedge in editable mode with EXTRAS.
#
# Usage: scripts/setup-venv.sh [EXTRAS]     e.g. scripts/setup-venv.sh dev
#                                                 scripts/setup-venv.sh agent,orchestrator
# Idempotent: the install is skipped when pyproject.toml (and EXTRAS) are unchanged since the
# last successful install; the hash is kept in .venv/.fedge-install-<extras>.
# Environment: PYTHON=/path/to/python picks the interpreter (3.10-3.12).
set -euo pipefail

EXTRAS="${1:-}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
say() { echo "setup-venv: $*"; }
die() { echo "setup-venv: ERROR: $*" >&2; exit 1; }

# A Python 3.10-3.12 interpreter (the ort-training wheel stops at 3.12).
python_ok() {
    "$1" -c 'import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 12) else 1)' \
        >/dev/null 2>&1
}

pick_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3.11 python3.12 python3.10 python3; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 && python_ok "$candidate"; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

if [ -x "$VENV/bin/python" ] && python_ok "$VENV/bin/python"; then
    say "using existing $VENV ($("$VENV/bin/python" --version 2>&1))"
else
    BASE_PY="$(pick_python)" || die "no Python 3.10-3.12 found (tried \$PYTHON, python3.11, python3.12, python3.10, python3); install python3.11"
    if [ -e "$VENV" ]; then
        say "$VENV exists but its python is missing or unsuitable: recreating it"
        "$BASE_PY" -m venv --clear "$VENV" || die "python -m venv failed (on Debian/Ubuntu: apt-get install python3-venv)"
    else
        say "creating $VENV with $BASE_PY ($("$BASE_PY" --version 2>&1))"
        "$BASE_PY" -m venv "$VENV" || die "python -m venv failed (on Debian/Ubuntu: apt-get install python3-venv)"
    fi
fi
PY="$VENV/bin/python"

# Editable installs from pyproject.toml need a recent pip; upgrade only when it is too old.
if ! "$PY" -c 'import sys, pip; sys.exit(0 if tuple(int(p) for p in pip.__version__.split(".")[:2]) >= (23, 0) else 1)' >/dev/null 2>&1; then
    say "pip is missing or older than 23.0: upgrading pip"
    "$PY" -m ensurepip --upgrade >/dev/null 2>&1 || true
    "$PY" -m pip install --upgrade 'pip>=23' || die "could not upgrade pip"
else
    say "pip $("$PY" -m pip --version | awk '{print $2}') is recent enough"
fi

SPEC="."
[ -n "$EXTRAS" ] && SPEC=".[$EXTRAS]"
STAMP="$VENV/.fedge-install-$(printf '%s' "${EXTRAS:-none}" | tr -c 'A-Za-z0-9_-' '_')"
HASH="$("$PY" - "$ROOT/pyproject.toml" "$EXTRAS" <<'PYEOF'
import hashlib, sys
digest = hashlib.sha256(open(sys.argv[1], "rb").read())
digest.update(b"\0extras=" + sys.argv[2].encode())
print(digest.hexdigest())
PYEOF
)"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ] && [ -x "$VENV/bin/fedge" ]; then
    say "pyproject.toml unchanged since the last install of '$SPEC': skipping pip install"
    exit 0
fi

say "installing fedge: pip install -e '$SPEC'"
rm -f "$STAMP"
(cd "$ROOT" && "$PY" -m pip install -e "$SPEC") || die "pip install -e '$SPEC' failed"
printf '%s\n' "$HASH" >"$STAMP"
say "done: $VENV ready with '$SPEC'"
