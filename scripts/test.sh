#!/usr/bin/env bash
# The README's test command runs this: lint (as make lint), types, then every test tier.
# pytest's exit 5 ("no tests collected") is a failure here, never a pass.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here" || exit 1
py=${XPRO_VENV:-$here/.venv}/bin/python
"$py" -m ruff check . || exit 1
"$py" -m ruff format --check . || exit 1
"$py" -m mypy xpro_mesh || exit 1
"$py" -m mypy tests || exit 1
"$py" -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then echo "test.sh: pytest collected no tests" >&2; exit 1; fi
exit "$rc"
