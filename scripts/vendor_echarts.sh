#!/usr/bin/env bash
# Vendor ECharts into the Python package (console/static/vendor): the console never loads
# anything from a CDN (SOCs are often air-gapped). Run when upgrading; the result is committed,
# so `pip install` gives a working console without npm.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION="${1:-6.1.0}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
curl -fsSL "https://registry.npmjs.org/echarts/-/echarts-${VERSION}.tgz" -o "$tmp/echarts.tgz"
tar -xzf "$tmp/echarts.tgz" -C "$tmp" package/dist/echarts.min.js package/LICENSE package/NOTICE
cp "$tmp/package/dist/echarts.min.js" console/static/vendor/echarts.min.js
cp "$tmp/package/LICENSE" console/static/vendor/ECHARTS-LICENSE
cp "$tmp/package/NOTICE" console/static/vendor/ECHARTS-NOTICE
echo "echarts ${VERSION}: $(sha256sum console/static/vendor/echarts.min.js | cut -c1-16)…"
