#!/usr/bin/env bash
# The main job: set up, replay the bundled captures into out/replay and the store out/store, then serve the
# console on it (http://localhost:8080, LIAOWANG_PORT to change; the sign-in is printed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/chromium.sh >/dev/null || echo "liaowang: Chromium could not be installed: PDF reports are unavailable (HTML works)" >&2
.venv/bin/liaowang replay pcaps --out out/replay --store out/store "$@"
exec .venv/bin/liaowang console --store out/store --host "${LIAOWANG_HOST:-127.0.0.1}" --port "${LIAOWANG_PORT:-8080}"
