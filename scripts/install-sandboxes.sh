#!/usr/bin/env bash
# Install the sandbox backends the test suite runs against: bubblewrap (bwrap) and gVisor (runsc).
# Quiet and idempotent: a no-op when both are present, and it never fails the build by itself --
# a backend still missing afterwards is reported by the tests (a failure where CI=true, a skip
# with the reason elsewhere). Installs only as root with apt-get.
set -u
missing=()
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
command -v runsc >/dev/null 2>&1 || missing+=(runsc)
[ "${#missing[@]}" -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "sandbox backends missing: ${missing[*]} (install them as root: apt-get install ${missing[*]})" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1; then
    apt-get update -qq >/dev/null 2>&1
    apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 \
        || echo "could not install ${missing[*]} with apt-get" >&2
fi
exit 0
