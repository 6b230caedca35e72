#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian/Ubuntu machine: .venv in the repo root with the project installed.
set -euo pipefail
cd "$(dirname "$0")/.."
# tshark dissects NGAP/NAS (ASN.1 PER) for the control-plane tables; libpcap compiles capture filters;
# tcpdump is the pcap capture engine; iproute2 and tcpreplay make the live-capture tests' wire;
# nft checks the containment exports' nftables scripts (in check mode: nothing is applied).
# Installed once, non-interactively.
missing=""
for tool in tshark:tshark tcpdump:tcpdump tcpreplay:tcpreplay ip:iproute2 setpriv:util-linux nft:nftables; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || missing="$missing ${tool##*:}"
done
[ -e /usr/lib/x86_64-linux-gnu/libpcap.so.0.8 ] || ldconfig -p 2>/dev/null | grep -q libpcap || missing="$missing libpcap0.8"
if [ -n "$missing" ]; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections 2>/dev/null || true
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
  else
    echo "warning: cannot install$missing (no apt-get): NGAP dissection or live-capture tests may be unavailable" >&2
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
