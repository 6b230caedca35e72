#!/usr/bin/env bash
# The main job: set up, then replay the bundled captures into out/replay.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/liaowang replay pcaps --out out/replay "$@"
