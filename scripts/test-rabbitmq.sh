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

bash scripts/install-system-packages.sh rabbitmq ||
    die "rabbitmq-server is missing (above: what to install)"
say "rabbitmq-server $(dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null || echo '(version unknown)')"

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
