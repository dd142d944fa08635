#!/usr/bin/env bash
# Installs what the test suite needs beyond the .NET SDK (idempotent, quick when done before):
# the official openai npm client the HTTP tests drive, playwright-core for the browser tests, and Debian's
# chromium for them to drive (apt-get, as root, only when it is missing).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1 && [ -z "${FEATUREFLOW_CHROMIUM:-}" ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "tests/prepare.sh: Debian's chromium is missing; install it (apt-get install -y chromium) or set FEATUREFLOW_CHROMIUM" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
npm ci --prefix tests/openai-client --no-audit --no-fund --loglevel=error
npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error
