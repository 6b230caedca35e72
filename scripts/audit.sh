#!/usr/bin/env bash
# Known vulnerabilities in the installed dependencies (pip-audit against PyPI's advisory data).
# --strict: a dependency that cannot be checked is a failure, not a silent pass. Where no advisory
# service is reachable (a machine that sees only a package mirror) it says so and exits 0 unless
# LIAOWANG_AUDIT_REQUIRED=1.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! timeout 10 .venv/bin/python - <<'PY' 2>/dev/null
import importlib.metadata, json, urllib.request
version = importlib.metadata.version("pip-audit")  # pip-audit asks for each installed version's advisories
with urllib.request.urlopen(f"https://pypi.org/pypi/pip-audit/{version}/json", timeout=8) as r:
    json.load(r)["vulnerabilities"]
PY
then
    echo "pip-audit: SKIPPED: PyPI's per-release advisory data (https://pypi.org/pypi/<name>/<version>/json)" \
         "is not reachable from here"
    [ "${LIAOWANG_AUDIT_REQUIRED:-0}" = 1 ] && exit 1
    exit 0
fi
.venv/bin/pip-audit --strict --skip-editable --progress-spinner off
