#!/usr/bin/env bash
# Install and start what the test suite needs on this machine: PostgreSQL 15,
# headless Chromium and chromedriver. Idempotent; safe to run on every `make test`.
set -euo pipefail

need_apt=()
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
command -v pg_ctlcluster >/dev/null 2>&1 || need_apt+=(postgresql)
if ((${#need_apt[@]})); then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
    else
        echo "missing system packages: ${need_apt[*]} (run as root or install them)" >&2
    fi
fi

if command -v pg_ctlcluster >/dev/null 2>&1; then
    ver=$(ls /etc/postgresql 2>/dev/null | sort -n | tail -1)
    if [ -n "$ver" ]; then
        pg_ctlcluster "$ver" main status >/dev/null 2>&1 || pg_ctlcluster "$ver" main start
        for _ in $(seq 1 30); do
            pg_isready -q -h 127.0.0.1 && break
            sleep 0.5
        done
        su postgres -c "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname='sneakerbot'\"" | grep -q 1 ||
            su postgres -c "psql -qc \"CREATE ROLE sneakerbot LOGIN SUPERUSER PASSWORD 'sneakerbot'\""
        su postgres -c "psql -qtAc \"SELECT 1 FROM pg_database WHERE datname='sneakerbot_test'\"" | grep -q 1 ||
            su postgres -c "createdb -O sneakerbot sneakerbot_test"
    fi
fi
