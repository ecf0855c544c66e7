#!/bin/sh
# Install stress-ng, the CPU-contention generator of `leancnn latency` (issue 11).
#
# Optional: without it leancnn falls back to its built-in multiprocessing busy-loop generator and the report
# says so. This script therefore never fails the build: it installs stress-ng with apt-get when it runs as
# root on a machine with apt, and otherwise prints what to do and exits 0.
#
#   sh scripts/install_stress_ng.sh          # what `make setup` runs
#   LEANCNN_SKIP_STRESS_NG=1 make setup      # skip it
set -u

if [ "${LEANCNN_SKIP_STRESS_NG:-0}" = "1" ]; then
    echo "stress-ng: skipped (LEANCNN_SKIP_STRESS_NG=1); leancnn latency will use its Python load generator"
    exit 0
fi

if command -v stress-ng >/dev/null 2>&1; then
    echo "stress-ng: already installed ($(stress-ng --version 2>/dev/null | head -n 1))"
    exit 0
fi

if [ "$(id -u)" != "0" ]; then
    echo "stress-ng: not installed and not running as root; install it with 'sudo apt-get install -y stress-ng'"
    echo "           (or your system's package manager). Until then leancnn latency uses its Python load generator."
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "stress-ng: not installed and apt-get is not available here; install stress-ng with your system's"
    echo "           package manager. Until then leancnn latency uses its Python load generator."
    exit 0
fi

echo "stress-ng: installing with apt-get ..."
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=60 stress-ng >/dev/null 2>&1; then
    # The package lists may be missing (fresh container): refresh them once and retry.
    apt-get update -q >/dev/null 2>&1 || true
    apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=60 stress-ng >/dev/null 2>&1 || true
fi

if command -v stress-ng >/dev/null 2>&1; then
    echo "stress-ng: installed ($(stress-ng --version 2>/dev/null | head -n 1))"
else
    echo "stress-ng: apt-get could not install it (no network or no such package?); leancnn latency will use"
    echo "           its Python load generator. Retry with 'apt-get update && apt-get install -y stress-ng'."
fi
exit 0
