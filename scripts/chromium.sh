#!/usr/bin/env bash
# Idempotent: the Debian chromium that the console's end-to-end tests drive with Python Playwright
# (no browser download: Playwright launches /usr/bin/chromium). Prints the browser's path.
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "chromium is missing and apt-get is unavailable: install Chromium to run the console tests" >&2
    exit 1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-noto-cjk >/dev/null
fi
command -v chromium
