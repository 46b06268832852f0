#!/usr/bin/env bash
# make bench: the data path's cost per packet as ratios measured in one run
# (docs/benchmarking.md section 1), and one map-sync round trip at 100k pairs
# (section 3). Loads programs with unpinned maps only; leaves nothing behind.
#
#   scripts/bench.sh                      # defaults: repeat 1e6, 5 runs, 100k pairs
#   scripts/bench.sh --runs 7 --pairs 1000000 --json
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=${XPRO_VENV:-$here/.venv}/bin/python
if [ "$(id -u)" -ne 0 ]; then
  echo "bench.sh: must run as root (BPF_PROG_TEST_RUN)" >&2
  exit 1
fi
cd "$here"
exec "$py" -m xpro_mesh bench datapath --pairs 100000 "$@"
