#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian/Ubuntu machine: .venv in the repo root with the project installed.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v uv >/dev/null 2>&1; then
  python3 -m pip install --quiet uv
fi
if [ ! -x .venv/bin/python ]; then
  uv venv --quiet --python python3 .venv
fi
# --compile-bytecode: with PYTHONDONTWRITEBYTECODE set (as on CI machines) nothing would cache
# the compiled modules, and every start would recompile numpy/pyarrow (~0.2 s per command)
VIRTUAL_ENV="$PWD/.venv" uv pip install --quiet --compile-bytecode -e ".[dev]"
.venv/bin/python -m compileall -q sensors detection ingest console
