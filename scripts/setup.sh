#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian/Ubuntu machine: .venv in the repo root with the project installed.
set -euo pipefail
cd "$(dirname "$0")/.."
# tshark dissects NGAP/NAS (ASN.1 PER) for the control-plane tables; installed once, non-interactively
if ! command -v tshark >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections 2>/dev/null || true
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends tshark >/dev/null
  else
    echo "warning: tshark is not installed and apt-get is unavailable: NGAP will not be dissected" >&2
  fi
fi
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
