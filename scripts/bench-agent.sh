#!/usr/bin/env bash
# make bench-agent: the agent's control plane (docs/benchmarking.md section 3):
# one map-sync cycle at 10k/100k/1M pairs with the kernel's maps (root: the
# filter attached to lo of a throwaway namespace, removed after) and the
# in-memory maps; then five real agents on 127.0.0.1: seconds and rounds to
# converge after a burst, detection time of a killed agent, bytes per node
# per round idle and with N rows changing. Takes a few minutes.
#
#   scripts/bench-agent.sh                         # everything
#   scripts/bench-agent.sh --pairs 10000,100000 --skip-mesh --json
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=${XPRO_VENV:-$here/.venv}/bin/python
if [ "$(id -u)" -ne 0 ]; then
  echo "bench-agent.sh: not root, so the kernel maps are left out (memory backend only)" >&2
fi
cd "$here"
exec "$py" -m xpro_mesh bench agent "$@"
