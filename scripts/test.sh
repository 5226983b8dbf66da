#!/usr/bin/env bash
# Run the test suite: make sure Mosquitto, Prometheus and Chromium are installed, prepare .venv
# with the dev extras, then run pytest with ARGS (default: the whole suite, -q).
# Usage: scripts/test.sh [pytest args...]     e.g. scripts/test.sh tests/unit -x
# Exit code: pytest's; "no tests collected" (pytest's 5) is a failure too.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
say() { echo "test.sh: $*"; }
die() { echo "test.sh: ERROR: $*" >&2; exit 1; }

have_mosquitto() {
    { command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; } &&
        command -v mosquitto_passwd >/dev/null 2>&1
}

if have_mosquitto; then
    say "mosquitto found: $(command -v mosquitto || echo /usr/sbin/mosquitto)"
else
    say "mosquitto (or mosquitto_passwd) missing: installing mosquitto and mosquitto-clients with apt-get"
    command -v apt-get >/dev/null 2>&1 ||
        die "apt-get not available: install mosquitto yourself (e.g. brew install mosquitto), then rerun"
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || die "not root and no sudo: run 'apt-get install mosquitto mosquitto-clients' as root"
        SUDO="sudo"
    fi
    $SUDO apt-get update || die "apt-get update failed"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        mosquitto mosquitto-clients || die "apt-get install mosquitto mosquitto-clients failed"
    have_mosquitto || die "mosquitto is still not found after apt-get install"
    say "installed: $( (command -v mosquitto || echo /usr/sbin/mosquitto) )"
fi

# Prometheus (server + promtool): tests/integration/test_prometheus.py scrapes a live run with
# it, and the alert-rule tests run promtool. Same pattern: install if missing, never skip.
have_prometheus() {
    command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1
}

if have_prometheus; then
    say "prometheus found: $(command -v prometheus)"
else
    say "prometheus (or promtool) missing: installing prometheus with apt-get"
    command -v apt-get >/dev/null 2>&1 ||
        die "apt-get not available: install prometheus yourself (it ships promtool), then rerun"
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || die "not root and no sudo: run 'apt-get install prometheus' as root"
        SUDO="sudo"
    fi
    $SUDO apt-get update || die "apt-get update failed"
    # policy-rc.d / no systemd in containers: the package's own service may not start; the
    # tests start their own server on a free loopback port anyway.
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        prometheus || die "apt-get install prometheus failed"
    have_prometheus || die "prometheus is still not found after apt-get install"
    say "installed: $(command -v prometheus)"
fi

# Chromium + ChromeDriver (Debian's packages): tests/integration/test_dashboard_browser.py
# drives the dashboard page in headless Chromium with selenium. Same pattern: install if
# missing, never skip. (selenium is given both paths, so it never downloads a driver itself.)
have_chromium() {
    { command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; } &&
        { command -v chromedriver >/dev/null 2>&1 || [ -x /usr/bin/chromedriver ]; }
}

if have_chromium; then
    say "chromium found: $(command -v chromium || echo /usr/bin/chromium)"
else
    say "chromium (or chromedriver) missing: installing chromium and chromium-driver with apt-get"
    command -v apt-get >/dev/null 2>&1 ||
        die "apt-get not available: install Chromium and its ChromeDriver yourself, then rerun"
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || die "not root and no sudo: run 'apt-get install chromium chromium-driver' as root"
        SUDO="sudo"
    fi
    $SUDO apt-get update || die "apt-get update failed"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        chromium chromium-driver || die "apt-get install chromium chromium-driver failed"
    have_chromium || die "chromium is still not found after apt-get install"
    say "installed: $(command -v chromium || echo /usr/bin/chromium)"
fi

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
