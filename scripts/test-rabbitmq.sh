#!/usr/bin/env bash
# The core federations on a second broker: RabbitMQ's MQTT plugin (Debian's rabbitmq-server,
# 3.10 on Debian 12: MQTT 3.1.1 only). Installs rabbitmq-server with apt if it is missing
# (the tests start their own node on free loopback ports; the package's service is not used),
# then runs the tests marked `rabbitmq` (tests/integration/test_rabbitmq_broker.py).
# Usage: scripts/test-rabbitmq.sh [pytest args...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
started=$(date +%s)
say() { echo "test-rabbitmq: $*"; }
die() { echo "test-rabbitmq: ERROR: $*" >&2; exit 1; }

if [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || command -v rabbitmq-server >/dev/null 2>&1; then
    say "rabbitmq-server found: $(dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null || echo '?')"
else
    say "rabbitmq-server missing: installing it with apt-get"
    command -v apt-get >/dev/null 2>&1 ||
        die "apt-get not available: install rabbitmq-server (3.10 or newer) yourself, then rerun"
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || die "not root and no sudo: run 'apt-get install rabbitmq-server' as root"
        SUDO="sudo"
    fi
    $SUDO apt-get update >/dev/null || die "apt-get update failed"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        rabbitmq-server >/dev/null || die "apt-get install rabbitmq-server failed"
    say "installed rabbitmq-server $(dpkg-query -W -f='${Version}' rabbitmq-server) in $(($(date +%s) - started)) s"
fi

bash scripts/setup-venv.sh dev >/dev/null
if [ "$#" -eq 0 ]; then
    set -- -q
fi
set +e
.venv/bin/python -m pytest -p no:cacheprovider -m rabbitmq tests/integration/test_rabbitmq_broker.py "$@"
rc=$?
set -e
say "done in $(($(date +%s) - started)) s (exit code $rc)"
[ "$rc" -ne 5 ] || die "pytest collected no tests"
exit "$rc"
