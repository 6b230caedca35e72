#!/usr/bin/env bash
# The whole test suite: set up, lint, type-check, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/chromium.sh >/dev/null  # the console's end-to-end tests drive the system's Chromium
.venv/bin/ruff check sensors detection ingest console tests bench
.venv/bin/mypy
bash scripts/audit.sh  # known-vulnerable dependencies fail the run
.venv/bin/python -m pytest -q tests
