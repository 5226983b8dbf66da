#!/usr/bin/env bash
# Install, with one apt-get run, the system packages the test suites start: Mosquitto (the
# broker), Prometheus (scrape and alert-rule tests), Chromium + chromedriver (the dashboard's
# browser test) and RabbitMQ (the second-broker suite). Packages already present are skipped,
# so a warm machine pays nothing. .ci/run starts this in the background while the venv is
# built; scripts/test.sh and scripts/test-rabbitmq.sh still install what is missing when run
# on their own.
# Usage: scripts/install-system-packages.sh
set -euo pipefail
say() { echo "install-system-packages: $*"; }

missing=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/lib/rabbitmq/bin/$1" ]; }
have mosquitto && have mosquitto_passwd || missing+=(mosquitto mosquitto-clients)
have prometheus && have promtool || missing+=(prometheus)
have chromium && have chromedriver || missing+=(chromium chromium-driver)
have rabbitmq-server || missing+=(rabbitmq-server)

if [ "${#missing[@]}" -eq 0 ]; then
    say "all present"
    exit 0
fi
command -v apt-get >/dev/null 2>&1 || { say "no apt-get: the test scripts will say what to install"; exit 0; }
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
started=$(date +%s)
say "installing ${missing[*]}"
$SUDO apt-get update >/dev/null
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null
say "installed in $(($(date +%s) - started)) s"
