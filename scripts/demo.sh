#!/usr/bin/env bash
# `make demo`: the main demonstration (make has done the set-up).
#
# Builds the namespace lab (3 proxies with the XDP filter, 12 good clients,
# 180 bot addresses, a victim, a Redis for the paper's master), runs the
# `distributed` scenario once per mode (none, local, master, gossip,
# gossip-paper), writes the report under out/ and always tears the lab down.
#
#   XPRO_DEMO_DURATION=30     seconds of traffic per mode
#   XPRO_DEMO_SCENARIOS="distributed heavy-hitter low-and-slow flash-crowd chaos failover botnet"
#                             more scenarios (each adds ~3 minutes)
#   XPRO_DEMO_OUT=out         where the files go
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"
xpro="$here/.venv/bin/xpro-mesh"
out=${XPRO_DEMO_OUT:-out}
duration=${XPRO_DEMO_DURATION:-30}
scenarios=${XPRO_DEMO_SCENARIOS:-distributed}
modes=none,local,master,gossip,gossip-paper

if [ "$(id -u)" -ne 0 ]; then
  echo "demo.sh: must run as root (network namespaces, XDP)" >&2
  exit 1
fi
mkdir -p "$out"
"$xpro" lab down >/dev/null
trap '"$xpro" lab down' EXIT
"$xpro" lab up --proxies 3 --clients 12 --bots 180
start=$(date +%s)
for name in $scenarios; do
  "$xpro" lab scenario "$name" --modes "$modes" --duration "$duration" \
    --json-out "$out/$name.json" --png "$out/$name.png" --html "$out/$name.html"
done
echo "demo: $(( $(date +%s) - start )) s of scenarios; open $out/distributed.html"
