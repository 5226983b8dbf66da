#!/usr/bin/env bash
# Run the test suite: make sure Mosquitto, Prometheus and Chromium are installed, prepare .venv
# with the dev extras, then run pytest with ARGS (default: the whole suite, -q).
# Usage: scripts/test.sh [pytest args...]     e.g. scripts/test.sh tests/unit -x
# Exit code: pytest's; "no tests collected" (pytest's 5) is a failure too.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
say() { echo "test.sh: $*"; }
die() { echo "test.sh: ERROR: $*" >&2; exit 1; }

# Mosquitto (every integration test), Prometheus (the scrape and alert-rule tests), Chromium +
# ChromeDriver (the dashboard's browser test): installed if missing, never skipped.
bash "$ROOT/scripts/install-system-packages.sh" mosquitto prometheus chromium ||
    die "the system packages the tests start are missing (above: what to install)"

bash "$ROOT/scripts/setup-venv.sh" dev

cd "$ROOT"
if [ "$#" -eq 0 ]; then
    set -- -q --durations=15  # the slowest tests, so CI time is visible where it goes
fi
say "running: .venv/bin/python -m pytest $*"
set +e
"$ROOT/.venv/bin/python" -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "test.sh: ERROR: pytest collected no tests (exit code 5): treating that as a failure" >&2
elif [ "$rc" -ne 0 ]; then
    echo "test.sh: pytest failed with exit code $rc" >&2
fi
exit "$rc"
