#!/usr/bin/env bash
# Set up the project and a separate environment for the peers, then run bench/run.py.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ ! -x bench/.venv-peers/bin/python ]; then
  uv venv --quiet --python python3 bench/.venv-peers
fi
VIRTUAL_ENV="$PWD/bench/.venv-peers" uv pip install --quiet "nfstream==6.6.0"
exec .venv/bin/python bench/run.py "$@"
