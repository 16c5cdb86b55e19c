#!/usr/bin/env bash
# In CI (CI=true), start the local PostgreSQL the tests need if it is installed but stopped.
# On a developer's machine this does nothing: tests against a missing server skip with a reason.
set -u
[ "${CI:-}" = "true" ] || exit 0
if command -v pg_isready >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432; then
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    echo "services: starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start || true
    for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
  fi
fi
exit 0
