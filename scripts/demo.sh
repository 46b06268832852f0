#!/usr/bin/env bash
# `make demo`: the main demonstration. Until the lab lands this is the mesh
# simulator: 256 in-process nodes gossiping a botnet's counts with 10 % loss.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$here/.venv/bin/xpro-mesh" simulate --nodes 256 --fanout 3 --loss 0.1 --seed 1
