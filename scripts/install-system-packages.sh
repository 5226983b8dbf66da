#!/usr/bin/env bash
# Install, with one apt-get run, the system packages the test suites start: Mosquitto (the
# broker), Prometheus (scrape and alert-rule tests), Chromium + chromedriver (the dashboard's
# browser test) and RabbitMQ (the second-broker suite). Packages already present are skipped,
# so a warm machine pays nothing. .ci/run starts it in the background (every group) while the
# venv is built; scripts/test.sh and scripts/test-rabbitmq.sh call it for the groups they need.
# Exits non-zero, saying what to install by hand, when a package is missing and cannot be
# installed (no apt-get, not root and no sudo, or still absent after apt-get).
# Usage: scripts/install-system-packages.sh [GROUP...]   GROUP: mosquitto prometheus chromium rabbitmq
#   e.g. scripts/install-system-packages.sh mosquitto chromium     (default: every group)
set -euo pipefail
say() { echo "install-system-packages: $*"; }
die() { echo "install-system-packages: ERROR: $*" >&2; exit 1; }

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/lib/rabbitmq/bin/$1" ]; }
# One line per group: the commands that must exist, then the Debian packages that bring them.
group_commands() {
    case "$1" in
        mosquitto) echo "mosquitto mosquitto_passwd" ;;
        prometheus) echo "prometheus promtool" ;;
        chromium) echo "chromium chromedriver" ;;
        rabbitmq) echo "rabbitmq-server" ;;
    esac
}
group_packages() {
    case "$1" in
        mosquitto) echo "mosquitto mosquitto-clients" ;;
        prometheus) echo "prometheus" ;;
        chromium) echo "chromium chromium-driver" ;;
        rabbitmq) echo "rabbitmq-server" ;;
    esac
}
group_present() {
    local cmd
    for cmd in $(group_commands "$1"); do have "$cmd" || return 1; done
}

[ "$#" -gt 0 ] || set -- mosquitto prometheus chromium rabbitmq
for group in "$@"; do
    case "$group" in
        mosquitto | prometheus | chromium | rabbitmq) ;;
        *) die "unknown group '$group' (known: mosquitto prometheus chromium rabbitmq)" ;;
    esac
done
missing=()
for group in "$@"; do
    if ! group_present "$group"; then
        read -r -a packages <<<"$(group_packages "$group")"
        missing+=("${packages[@]}")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    say "present: $*"
    exit 0
fi
command -v apt-get >/dev/null 2>&1 ||
    die "no apt-get here: install ${missing[*]} yourself (e.g. with brew or your distribution's packages), then rerun"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "not root and no sudo: run 'apt-get install ${missing[*]}' as root"
    SUDO="sudo"
fi
started=$(date +%s)
say "installing ${missing[*]}"
$SUDO apt-get update >/dev/null || die "apt-get update failed"
# policy-rc.d / no systemd in containers: a package's own service may not start; the tests
# start their own brokers and servers on free loopback ports anyway.
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null ||
    die "apt-get install ${missing[*]} failed"
for group in "$@"; do
    group_present "$group" || die "$(group_commands "$group") still not found after installing $(group_packages "$group")"
done
say "installed in $(($(date +%s) - started)) s"
