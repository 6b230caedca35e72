#!/usr/bin/env bash
# Set up the project and a separate environment for the peers, then run bench/run.py.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ ! -x bench/.venv-peers/bin/python ]; then
  uv venv --quiet --python python3 bench/.venv-peers
fi
VIRTUAL_ENV="$PWD/bench/.venv-peers" uv pip install --quiet --compile-bytecode "nfstream==6.6.0"
# both tools start from compiled bytecode (an environment made earlier may lack it)
bench/.venv-peers/bin/python -m compileall -q -j 2 bench/.venv-peers/lib >/dev/null 2>&1 || true
.venv/bin/python -m compileall -q -j 2 .venv/lib >/dev/null 2>&1 || true
exec .venv/bin/python bench/run.py "$@"
